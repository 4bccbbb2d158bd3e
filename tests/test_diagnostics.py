"""Diagnostics probes that can be checked without a cluster (the e2e tests run them all for real)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kbpg_tui.core import credentials as creds
from kbpg_tui.core import inventory as inv
from kbpg_tui.core.diagnostics import CheckWarning, Diagnostics
from kbpg_tui.core.engine import Context
from kbpg_tui.core.settings import Settings


def _diagnostics(real_inventory: Path, values: creds.Credentials) -> Diagnostics:
    ctx = Context(Settings(), values, inv.load_selection(real_inventory), Path("/nonexistent"),
                  pool=None, sink=lambda e: None, cancel=threading.Event())  # type: ignore[arg-type]
    return Diagnostics(ctx)


def test_the_secret_scan_sends_every_secret_on_stdin(real_inventory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values, _ = creds.generate()
    diagnostics = _diagnostics(real_inventory, values)
    sent: list[str] = []
    monkeypatch.setattr(diagnostics, "ssh", lambda host, script, stdin=None, timeout=None: sent.append(stdin) or "")
    diagnostics.check_host_secrets(diagnostics.ctx.db_hosts[0])
    patterns = sent[0].splitlines()
    assert "" not in patterns
    assert values["POSTGRES_SUPERPASS"] in patterns


def test_no_secret_to_look_for_is_a_warning_not_a_scan_that_matches_every_file(real_inventory: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    values = creds.Credentials({"POSTGRES_SUPERUSER": "kb_admin", "POSTGRES_SUPERPASS": "short"})
    diagnostics = _diagnostics(real_inventory, values)
    monkeypatch.setattr(diagnostics, "ssh", lambda *a, **k: pytest.fail("scanned with an empty pattern list"))
    with pytest.raises(CheckWarning, match="no secret"):
        diagnostics.check_host_secrets(diagnostics.ctx.db_hosts[0])
