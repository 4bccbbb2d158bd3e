"""The failover drill's screen: reached from the diagnostics, refused with the core's reasons, started only on an
explicit yes, drawn from the drill's events, cancelled through the core's cancel event.

The core is faked (fixture ``fake_drill``): ``ops.drill.refusal`` answers with the reasons a test gives,
``ops.drill.run_drill`` emits a kill round's events (tests/ui/fabricated.py) through ``run.ctx.sink`` as the real
one does, and returns a DrillReport. Nothing touches a host.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
from textual.widgets import Button, RichLog, Static

from kbpg_tui.core import events as ev
from kbpg_tui.core.ops import drill as ops_drill
from kbpg_tui.ui import flows
from kbpg_tui.ui.app import KbpgApp
from kbpg_tui.ui.screens import drill as drill_screen
from kbpg_tui.ui.screens.diagnostics import DiagnosticsScreen
from kbpg_tui.ui.screens.dialogs import HELP, ConfirmDialog, HelpScreen
from kbpg_tui.ui.screens.drill import DRILL_GRACE_SECONDS, MODES, DrillDone, DrillEvent, DrillScreen, WriteChart
from tests.ui import fabricated

from .conftest import SIZE
from .test_quit import QUIT_SECONDS, quit_time

REPORT = ("reports/drill-20250106-104107.md", "reports/drill-20250106-104107.json")
REFUSED = ["diagnostics are not green: check 3 services FAIL on haproxy-02 (pgbouncer is inactive)",
           "cut takes a link down: only on the lab's own hosts (198.18.0.x), not on this servers.tsv"]


class FakeDrill:
    """What ops.drill does, recorded: ``refusals`` (mode, cancel) and ``drills`` (mode, rounds, checked, cancel).

    ``reasons``: what refusal() answers. ``hold``: run_drill waits for its cancel event after the first round's
    events (a drill still running), then takes ``restore_seconds`` to put the fault back (``restored`` set), or
    until ``put_back`` is set when a test holds it."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.hold = False
        self.restore_seconds = 0.2
        self.refusals: list[tuple[str, threading.Event]] = []
        self.drills: list[tuple[str, int, bool, threading.Event]] = []
        self.holding = threading.Event()
        self.restored = threading.Event()
        self.put_back: threading.Event | None = None
        self.closed = 0

    def refusal(self, run, mode: str) -> list[str]:
        self.refusals.append((mode, run.ctx.cancel))
        return list(self.reasons)

    def run_drill(self, run, mode: str, rounds: int = 1, *, checked: bool = False):
        cancel = run.ctx.cancel
        self.drills.append((mode, rounds, checked, cancel))
        done, problems = 0, []
        for number in range(1, rounds + 1):
            events = fabricated.drill_events(number)
            if self.hold:  # held after the fault, until cancelled: then the fault is put back, the round dropped
                fault = next(i for i, e in enumerate(events) if isinstance(e, ev.DrillMark) and e.what == "fault")
                for event in events[:fault + 1]:
                    run.ctx.sink(event)
                self.holding.set()
                cancel.wait(30)
                if self.put_back is not None:
                    self.put_back.wait(10)
                else:
                    time.sleep(self.restore_seconds)
                run.ctx.sink(ev.DrillMark(number, "restored", 3.2, detail="patroni started"))
                self.restored.set()
                problems.append(f"cancelled during round {number} (the fault was put back)")
                break
            for event in events:
                run.ctx.sink(event)
            done = number
        return fabricated.drill_report(done, paths=tuple(run.ctx.workdir / path for path in REPORT), problems=problems)


@pytest.fixture
def fake_drill(monkeypatch: pytest.MonkeyPatch) -> FakeDrill:
    fake = FakeDrill()
    monkeypatch.setattr(ops_drill, "refusal", fake.refusal)
    monkeypatch.setattr(ops_drill, "run_drill", fake.run_drill)

    class Run:
        def __init__(self, workdir: Path, sink, cancel: threading.Event) -> None:
            self.ctx = SimpleNamespace(workdir=workdir, sink=sink, cancel=cancel)

        def close(self) -> None:
            fake.closed += 1

    def prepare(workdir, settings, sink, prompt=None, cancel=None, selection=None) -> Run:
        return Run(workdir, sink, cancel)

    monkeypatch.setattr(drill_screen.inst, "prepare", prepare)
    return fake


async def until(pilot, check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.05)


def text_of(screen, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


def timeline(screen) -> list[str]:
    """The timeline's lines as written; the pane shows them all (wrapped to its width)."""
    drawn = " ".join(strip.text.strip() for strip in screen.query_one("#drill-timeline", RichLog).lines)
    for line in screen.timeline_lines:
        assert " ".join(line.split()) in " ".join(drawn.split()), line
    return screen.timeline_lines


async def open_drill(app: KbpgApp, pilot) -> DrillScreen:
    app.push_screen(DrillScreen())
    await pilot.pause()
    assert isinstance(app.screen, DrillScreen)
    return app.screen


async def test_the_drill_is_reached_from_diagnostics_by_its_key_and_its_button(demo: Path, fake_diagnostics) -> None:
    fake_diagnostics()
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        assert isinstance(app.screen, DiagnosticsScreen)
        await pilot.press("d")
        assert isinstance(app.screen, DrillScreen)
        await pilot.press("escape")  # back where it was opened from, not home
        assert isinstance(app.screen, DiagnosticsScreen)
        button = app.screen.query_one("#drill", Button)
        assert "Failover drill" in str(button.label)
        await pilot.click("#drill")
        assert isinstance(app.screen, DrillScreen)
        await pilot.press("escape", "question_mark")
        assert isinstance(app.screen, HelpScreen)
    assert "d  drill" in HELP and "Drill        s  start" in HELP
    assert flows.SIDE["drill"] is DrillScreen


async def test_the_modes_are_the_cores(demo: Path) -> None:
    """Each mode of the core has its line (cut: lab only), and switchover is the one picked at first."""
    assert tuple(MODES) == ops_drill.MODES and "lab only" in MODES["cut"]
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_drill(app, pilot)
        assert screen.mode() == "switchover"
        await pilot.click("#mode-kill")
        assert screen.mode() == "kill"


async def test_refusal_reasons_are_shown_and_nothing_runs(demo: Path, fake_drill: FakeDrill) -> None:
    fake_drill.reasons = REFUSED
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_drill(app, pilot)
        await pilot.click("#mode-cut")
        await pilot.press("s")
        await until(pilot, lambda: not screen.checking)
        await pilot.pause()
        assert [mode for mode, _cancel in fake_drill.refusals] == ["cut"]
        shown = text_of(screen, "#drill-refusal")
        assert "The cut drill is refused" in shown and all(reason in shown for reason in REFUSED)
        assert screen.query_one("#drill-refusal").display
        assert "not started: 2 reason(s)" in text_of(screen, "#drill-status")
        assert not isinstance(app.screen, ConfirmDialog), "a refused drill asks nothing"
        assert fake_drill.drills == [] and not screen.running
        assert fake_drill.closed == 1  # the run the check prepared is closed


async def test_no_to_the_question_runs_nothing(demo: Path, fake_drill: FakeDrill) -> None:
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_drill(app, pilot)
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        dialog = app.screen
        question = " ".join(str(w.render()) for w in dialog.query(Static))
        assert "FAILOVER on the cluster" in question and "switchover" in question
        assert app.focused is not None and app.focused.id == "no", "no is the default answer"
        await pilot.press("enter")  # the default
        await pilot.pause()
        assert app.screen is screen
        assert fake_drill.drills == [] and not screen.running
        assert "not started (you answered no)" in text_of(screen, "#drill-status")


@pytest.mark.parametrize("typed, shown", [("0", "0"), ("21", "21"), ("two", "two"), ("", "(empty)"), ("-1", "-1"),
                                          ("٣", "٣")])
async def test_rounds_outside_1_to_20_are_named_inline(demo: Path, fake_drill: FakeDrill, typed: str, shown: str) -> None:
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_drill(app, pilot)
        screen.query_one("#drill-rounds").value = typed
        await pilot.press("s")
        await pilot.pause()
        assert text_of(screen, "#drill-error") == f"rounds: {shown} is not allowed: a whole number from 1 to 20"
        assert fake_drill.refusals == [] and fake_drill.drills == []
        assert app.focused is screen.query_one("#drill-rounds")


async def test_yes_runs_the_drill_and_its_events_fill_the_chart_timeline_and_report(demo: Path,
                                                                                      fake_drill: FakeDrill) -> None:
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_drill(app, pilot)
        await pilot.click("#mode-kill")
        screen.query_one("#drill-rounds").value = "2"
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("y")
        await until(pilot, lambda: screen.report is not None and not screen.running)
        await pilot.pause()
        (mode, rounds, checked, cancel), = fake_drill.drills
        assert (mode, rounds, checked) == ("kill", 2, True)
        assert not cancel.is_set()
        # the chart: the last round's seconds, acknowledged and failed writes per second of each entry point
        chart = screen.query_one("#chart-LB-5432", WriteChart)
        samples = [e for e in fabricated.drill_events(2) if isinstance(e, ev.DrillSample) and e.entry == "LB:5432"]
        assert chart.round == 2 and chart.ok == [s.ok for s in samples] and chart.failed == [s.failed for s in samples]
        assert 0 in chart.ok and sum(chart.failed) == 3
        drawn = str(chart.render())
        assert "LB:5432" in drawn and "3 ✗" in drawn and "█" in drawn
        assert screen.query_one("#chart-LB-6432", WriteChart).ok
        # the timeline, round by round, each in time order (the core sends "last ack" and "first write after" last)
        lines = timeline(screen)
        round_1 = ["— round 1 —", "  -0.0 s  last ack LB:6432", "  -0.0 s  last ack LB:5432",
                   "  +0.0 s  fault kill on db-master-01", "  +5.6 s  new leader db-slave-01",
                   "  +7.1 s  first write after LB:5432", "  +9.4 s  first write after LB:6432",
                   " +21.0 s  old leader streaming db-master-01"]
        assert lines == round_1 + ["— round 2 —"] + round_1[1:]
        # the report: each round's figures, then the drill's over the rounds and its files
        report = text_of(screen, "#drill-report")
        assert report.count("LB:5432     7.1 s   6.9 s      3    0") == 2
        assert "2   LB:5432" in report and "new leader              +5.6 s" in report
        assert "all LB:5432    7.1/7.1   6.9/6.9    6    0" in report
        assert "all LB:6432    9.4/9.4   9.2/9.2    2    0" in report
        assert "computed RTO ≤ 24.5 s: 0 round(s) over" in report
        assert "cluster at the end: leader db-slave-01, 2 streaming replicas, timeline 2" in report
        assert REPORT[0] in report.splitlines() and REPORT[1] in report.splitlines()
        assert f"drill done: 2 round(s), no problem — report: {demo / REPORT[0]}" in text_of(screen, "#drill-status")
        assert screen.query_one("#drill-setup").display  # the choices back for another drill


async def start_drill(app, pilot) -> DrillScreen:
    screen = await open_drill(app, pilot)
    await pilot.press("s")
    await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
    await pilot.press("y")
    await until(pilot, lambda: screen.worker is not None)  # started (it may be over already)
    return screen


async def test_a_fault_not_put_back_is_said_at_the_end(demo: Path, fake_drill: FakeDrill,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    error = "drill: could not put the stop back on db-master-01: db-master-01: systemctl start patroni failed"

    def run_drill(run, mode, rounds=1, *, checked=False):
        for event in fabricated.drill_events():
            run.ctx.sink(event)
        run.ctx.sink(ev.Message(ev.Level.ERROR, error))
        return fabricated.drill_report(1, problems=["the cluster is not whole after the drill: db-master-01 stopped"])

    monkeypatch.setattr(ops_drill, "run_drill", run_drill)
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        screen = await start_drill(app, pilot)
        await until(pilot, lambda: not screen.running)
        status = screen.query_one("#drill-status", Static)
        assert f"drill done: 1 round(s), 2 problem(s): {error}" in str(status.render())
        assert status.has_class("red")
        assert f"error: {error}" in timeline(screen)
        assert "the cluster is not whole after the drill: db-master-01 stopped" in text_of(screen, "#drill-report")


@pytest.mark.parametrize("error, shown", [
    (ops_drill.DrillRefused(["diagnostics are not green: check 4 patroni cluster (cluster): no leader"]),
     "diagnostics are not green: check 4 patroni cluster (cluster): no leader"),
    (RuntimeError("the cluster is busy: kbpg install (pid 4242 on ops-01) since 10:41:07"),
     "stopped: the cluster is busy: kbpg install (pid 4242 on ops-01) since 10:41:07"),
])
async def test_a_drill_that_cannot_start_says_why(demo: Path, fake_drill: FakeDrill, monkeypatch: pytest.MonkeyPatch,
                                                  error: Exception, shown: str) -> None:
    """Refused after the question (the cluster changed since the check), or the run lock held by another run."""
    def run_drill(run, mode, rounds=1, *, checked=False):
        raise error

    monkeypatch.setattr(ops_drill, "run_drill", run_drill)
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        screen = await start_drill(app, pilot)
        await until(pilot, lambda: not screen.running)
        assert shown in text_of(screen, "#drill-status") + text_of(screen, "#drill-refusal")
        assert screen.query_one("#drill-setup").display and screen.report is None


async def test_a_lost_row_and_a_stall_over_the_bound_are_marked() -> None:
    figures = fabricated.drill_round_figures()
    figures["entries"]["LB:6432"]["lost"] = 4
    figures["over_bound"] = ["LB:5432"]
    rows = [line for line in drill_screen.report_text([figures]).split("\n") if "LB:" in line.plain]
    assert [row.plain.split()[-6:] for row in rows] == [["LB:5432", "7.1", "s!", "6.9", "s", "3", "0"][-6:],
                                                       ["LB:6432", "9.4", "s", "9.2", "s", "1", "4"][-6:]]
    for row in rows:  # both in red
        assert any("red" in str(span.style) for span in row.spans), row
    clean = [line for line in drill_screen.report_text([fabricated.drill_round_figures()]).split("\n")
             if "LB:" in line.plain]
    assert not any("red" in str(span.style) for row in clean for span in row.spans)


async def test_cancel_sets_the_core_cancel_event_and_says_the_fault_is_put_back(demo: Path, fake_drill: FakeDrill) -> None:
    fake_drill.hold = True
    fake_drill.put_back = threading.Event()
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_drill(app, pilot)
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("y")
        await until(pilot, fake_drill.holding.is_set)
        await pilot.pause()
        assert screen.running and screen.query_one("#drill-cancel", Button).display
        assert not screen.query_one("#drill-setup").display
        cancel = fake_drill.drills[0][3]
        await pilot.press("escape")  # while the drill runs, escape cancels it and stays
        assert app.screen is screen
        assert cancel.wait(1.0), "the core's cancel event was not set"
        assert "puts the fault back" in text_of(screen, "#drill-status")
        await pilot.press("escape")  # again: still there until the drill has put the fault back
        assert app.screen is screen and screen.running
        assert not fake_drill.restored.is_set()
        fake_drill.put_back.set()
        await until(pilot, lambda: not screen.running)
        assert fake_drill.restored.is_set()
        assert timeline(screen)[-2:] == ["  +0.0 s  fault kill on db-master-01", "  +3.2 s  restored patroni started"]
        assert ("cancelled after 0 round(s): cancelled during round 1 (the fault was put back)"
                in text_of(screen, "#drill-status"))
        assert "cancelled during round 1 (the fault was put back)" in text_of(screen, "#drill-report")
        await pilot.press("escape")
        assert app.screen is not screen


async def test_the_cancel_button_cancels(demo: Path, fake_drill: FakeDrill) -> None:
    fake_drill.hold = True
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_drill(app, pilot)
        await pilot.click("#drill-start")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.click("#yes")
        await until(pilot, fake_drill.holding.is_set)
        await pilot.pause()
        await pilot.click("#drill-cancel")
        assert fake_drill.drills[0][3].wait(1.0)
        await until(pilot, lambda: not screen.running)


def test_quitting_during_a_drill_waits_until_the_fault_is_put_back(demo: Path, fake_drill: FakeDrill) -> None:
    """Other work is left behind 1 s after a quit; a drill is waited for (DRILL_GRACE_SECONDS) until it has put
    its fault back: here 1.5 s, past the 1 s others get."""
    fake_drill.hold = True
    fake_drill.restore_seconds = 1.5

    async def start(app, pilot) -> None:
        screen = await open_drill(app, pilot)
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("y")
        await until(pilot, fake_drill.holding.is_set)
        assert screen.running

    seconds = quit_time(KbpgApp(demo), start)
    assert fake_drill.drills[0][3].is_set()
    assert fake_drill.restored.is_set(), "the wizard ended before the drill put its fault back"
    assert 1.5 <= seconds < 1.5 + QUIT_SECONDS
    assert DRILL_GRACE_SECONDS >= 30


async def test_the_drill_screen_fits_80x24(demo: Path, fake_drill: FakeDrill) -> None:
    app = KbpgApp(demo)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_drill(app, pilot)
        for event in fabricated.drill_events():
            screen.post_message(DrillEvent(event))
        screen.post_message(DrillDone(fabricated.drill_report(paths=tuple(demo / p for p in REPORT)), False))
        await pilot.pause()
        footer = screen.query_one("Footer")
        assert footer.region.bottom == 24 and footer.region.height == 1
        for selector in ("#drill-modes", "#drill-charts", "#drill-timeline", "#drill-report-pane"):
            region = screen.query_one(selector).region
            assert region.height > 0 and region.right <= 80 and region.bottom <= 23, selector
        width = screen.query_one("#drill-report").content_region.width
        rows = [line for line in text_of(screen, "#drill-report").splitlines() if "LB:" in line]
        assert rows and all(len(line.rstrip()) <= width for line in rows), (width, rows)


async def drill_done(pilot) -> None:
    screen = DrillScreen()
    pilot.app.push_screen(screen)
    await pilot.pause()
    await pilot.click("#mode-kill")
    for event in fabricated.drill_events():
        screen.post_message(DrillEvent(event))
    screen.post_message(DrillDone(fabricated.drill_report(paths=tuple(Path("demo") / p for p in REPORT)), False))
    await pilot.pause()


def test_snapshot_after_a_kill_drill(snap_compare, demo: Path) -> None:
    """A kill round (made-up events): each entry point's writes per second, the timeline, the report."""
    assert snap_compare(KbpgApp(demo), run_before=drill_done, terminal_size=SIZE)


def test_snapshot_after_a_kill_drill_at_80x24(snap_compare, demo: Path) -> None:
    assert snap_compare(KbpgApp(demo), run_before=drill_done, terminal_size=(80, 24))
