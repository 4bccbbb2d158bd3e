"""Diagnostics.run takes a cancel event: a cancelled run returns at once, the probes still running failed as
cancelled (the wizard's worker ends with its screen, or when the wizard quits)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from kbpg_tui.core import credentials as creds
from kbpg_tui.core.diagnostics import Diagnostics, Probe, Verdict
from kbpg_tui.core.engine import Context
from kbpg_tui.core.settings import Settings

from .fakes import FakePool


def slow_diagnostics(release: threading.Event) -> Diagnostics:
    ctx = Context(Settings(), creds.Credentials(), None, Path("/nonexistent"),  # type: ignore[arg-type]
                  pool=FakePool(), sink=lambda e: None, cancel=threading.Event())  # type: ignore[arg-type]
    diagnostics = Diagnostics(ctx, timeout=5)  # a backstop of 3 * 5 + 5 = 20 s

    def slow() -> str:
        release.wait(30)
        return "late"

    diagnostics.probes = lambda: [Probe(1, "inventory", "servers.tsv", lambda: "quick"),  # type: ignore[method-assign]
                                  Probe(4, "patroni cluster", "cluster", slow)]
    return diagnostics


def test_a_cancelled_run_returns_at_once_with_the_unfinished_probes_failed() -> None:
    release, cancel = threading.Event(), threading.Event()
    diagnostics = slow_diagnostics(release)
    seen = []
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    try:
        report = diagnostics.run(on_result=seen.append, cancel=cancel)
    finally:
        release.set()
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"the run went on {elapsed:.1f} s after its cancel"
    verdicts = {r.number: (r.verdict, r.reason) for r in report.results}
    assert verdicts[1] == (Verdict.PASS, "quick")
    assert verdicts[4][0] == Verdict.FAIL and verdicts[4][1].startswith("cluster: cancelled after")
    assert {r.number for r in seen} == {1, 4}  # the panel hears of every probe, the cancelled one included


def test_without_a_cancel_a_run_waits_for_its_probes() -> None:
    release = threading.Event()
    diagnostics = slow_diagnostics(release)
    threading.Timer(0.3, release.set).start()
    report = diagnostics.run(cancel=threading.Event())
    assert [r.verdict for r in report.results] == [Verdict.PASS, Verdict.PASS]
