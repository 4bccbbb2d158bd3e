"""Shared fixtures. Tests that connect anywhere use the lab's own files, never the real inventory's addresses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
REAL_INVENTORY = FIXTURES / "keybuzz-servers.tsv"  # a copy of the company's inventory, kept in the repository


@pytest.fixture
def real_inventory() -> Path:
    if not REAL_INVENTORY.exists():
        pytest.fail(f"the company's inventory fixture is missing: {REAL_INVENTORY}")
    return REAL_INVENTORY


def run_kbpg(*args: str, workdir: Path | None = None, env: dict | None = None, input: str | None = None):
    """Run the real ``kbpg`` entry point in a subprocess, as an operator would."""
    command = [sys.executable, "-m", "kbpg_tui"]
    if workdir is not None:
        command += ["--workdir", str(workdir)]
    command += list(args)
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=full_env, input=input, timeout=120)


# --- the lab, shared by the lab tests and the end-to-end tests --------------------------------

@pytest.fixture(scope="session")
def lab_workdir(tmp_path_factory) -> Path:
    """A work dir with the lab up in it, once per session; taken down at the end (or by the teardown tests)."""
    from kbpg_tui.core import lab

    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    before = lab.status(probe_ssh=False)
    if before.state != "down":
        pytest.fail(
            f"a lab is already {before.state} on this machine (work dir {before.workdir or '?'}): "
            "run `kbpg lab down` before the lab tests"
        )
    workdir = tmp_path_factory.mktemp("lab-work")
    result = lab.up(workdir, progress=lambda event: None)
    assert result.up, result.render()
    yield workdir
    lab.down(workdir)


def _order(item: pytest.Item) -> int:
    """Unit tests, then the lab's own tests on bare hosts, then installs on it, then the tests that restart the lab
    on bare hosts (``fresh_lab``: whatever the installed cluster's tests are named, they run before), then taking it
    down."""
    if item.get_closest_marker("lab_teardown"):
        return 4
    if "fresh_lab" in getattr(item, "fixturenames", ()):
        return 3
    if item.get_closest_marker("e2e"):
        return 2
    if item.get_closest_marker("lab"):
        return 1
    return 0


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=_order)  # stable: file and definition order is kept within each group
