"""Failover drill: writers through each entry point while the leader goes; how long writes stop, what is lost.

Reached from the diagnostics screen (``d``). The operator picks a mode and a number of rounds; ``s`` asks the
core whether the cluster may take a drill (``ops.drill.refusal``: diagnostics green, cut only on the lab ...),
shows its reasons when it may not, and otherwise asks for an explicit yes (the default is no) before
``ops.drill.run_drill`` runs in a thread worker. Its events draw, live, each entry point's acknowledged and
failed writes per second, the timeline of the round (fault, last acknowledged write, new leader, first write
after, old leader streaming) and, at the end, the report.

Cancelling (``c``, escape) sets the core's cancel event: the drill puts the fault back (the service started,
the link up) before it returns, and the worker waits for that, also when the wizard quits
(``DRILL_GRACE_SECONDS``): a fault left in place is worse than a quit that takes a few seconds more.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult, RenderResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Button, Footer, Header, Input, Label, RadioButton, RadioSet, RichLog, Static
from textual.worker import Worker, WorkerState

from ...core import events as ev
from ...core import install as inst
from ..text import show
from ..workers import cancel_event, run_cancellable

log = logging.getLogger("kbpg.ui")

# The core's modes (ops.drill.MODES), each with its line on the screen.
MODES: dict[str, str] = {
    "switchover": "planned: kbpg pauses PgBouncer around Patroni's switchover",
    "kill": "SIGKILL patroni and postgres on the leader; systemd restarts",
    "stop": "stop patroni on the leader; started again after the failover",
    "cut": "the leader's network link down, then up (lab only)",
}
MAX_ROUNDS = 20
# How long the drill's worker waits, once cancelled (c, escape, quitting the wizard), for the drill to put the
# fault back and return: restarting a service or bringing a link up takes seconds, not the 1 s other work gets.
DRILL_GRACE_SECONDS = 60.0
BARS = "▁▂▃▄▅▆▇█"

INDENT = "\u00a0" * 4  # leading spaces of a line are dropped when it is shown: no-break spaces are kept


def parse_rounds(text: str) -> tuple[int | None, str]:
    """The rounds typed, or None and one line naming the field and what is allowed."""
    value = text.strip()
    if value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_ROUNDS:
        return int(value), ""
    return None, f"rounds: {value or '(empty)'} is not allowed: a whole number from 1 to {MAX_ROUNDS}"


def bars(values: list[int]) -> str:
    """One character a value, scaled from 0 to the largest: 0 is a space, anything above 0 at least ▁."""
    top = max(values, default=0)
    if top <= 0:
        return " " * len(values)
    return "".join(" " if v <= 0 else BARS[max(1, min(8, round(v * 8 / top))) - 1] for v in values)


# --- the report (ops.drill_report: a round's figures are RoundReport.to_dict(), the drill's a DrillReport) ------

def _seconds(value: Any) -> str:
    return "—" if value is None else f"{float(value):.1f} s"


def _short(value: Any) -> str:
    return "—" if value is None else f"{float(value):.1f}"


def _count(value: Any) -> str:
    return "—" if value is None else str(value)


def report_text(rounds: list[dict], report: Any = None, workdir: Path | None = None) -> Text:
    """Each round's figures per entry point (longest stall, write gap, failed writes, rows lost; a stall over the
    plan's computed worst case marked "!"), then, once the drill returned, the figures over the rounds, the
    cluster at the end, the problems and the report's files. Rows of 42 columns (the pane's width at 80×24)."""
    text = Text()
    text.append(f"{'rnd':<4}{'entry':<8}{'stall':>9}{'gap':>8}{'failed':>7}{'lost':>5}\n", style="bold")
    for figures in rounds:
        number = str(figures.get("round", "?"))
        over = set(figures.get("over_bound") or ())
        for entry, v in (figures.get("entries") or {}).items():
            lost = v.get("lost")
            stall = _seconds(v.get("longest_stall")) + ("!" if entry in over else " ")
            text.append(f"{number:<4}{entry:<8}{stall:>10}{_seconds(v.get('write_gap')):>7}"
                        f"{_count(v.get('failed')):>7}{_count(lost):>5}\n",
                        style="bold red" if lost or entry in over else "")
            number = INDENT
        for what, key in (("new leader", "time_to_new_leader"), ("old leader streaming", "time_to_old_streaming")):
            value = figures.get(key)
            text.append(f"{INDENT}{what:<21}{'not seen' if value is None else '+' + _seconds(value):>9}\n",
                        style="dim" if value is not None else "red")
        for problem in figures.get("problems") or ():
            text.append(f"{INDENT}{problem}\n", style="red")
    if report is None:
        return text
    data = report.to_dict()
    text.append("\nall rounds: median/max; failed, lost: sums\n", style="bold")
    for entry, v in (data.get("overall") or {}).items():
        stall = f"{_short(v.get('stall_median'))}/{_short(v.get('stall_max'))}"
        gap = f"{_short(v.get('gap_median'))}/{_short(v.get('gap_max'))}"
        lost = v.get("lost")
        text.append(f"{'all':<4}{entry:<8}{stall:>10}{gap:>10}{_count(v.get('failed')):>5}{_count(lost):>5}\n",
                    style="bold red" if lost or v.get("rounds_over_bound") else "bold")
        if v.get("bound") is not None:
            text.append(f"{INDENT}computed RTO ≤ {_seconds(v['bound'])}: {v.get('rounds_over_bound', 0)} "
                        "round(s) over\n", style="dim")
    if data.get("final_state"):
        text.append(f"cluster at the end: {data['final_state']}\n")
    for problem in data.get("problems") or ():
        text.append(f"{problem}\n", style="bold red")
    for path in getattr(report, "paths", None) or ():
        shown = Path(path)
        if workdir is not None:
            try:
                shown = shown.resolve().relative_to(workdir.resolve())
            except (OSError, ValueError):
                pass
        text.append(f"{shown}\n")
    return text


def mark_line(mark: ev.DrillMark) -> str:
    """``+14.2 s  new leader db-slave-01``; ``-0.1 s  last ack LB:5432``."""
    words = " ".join(part for part in (mark.what, mark.entry, mark.detail) if part)
    return f"{mark.offset:+6.1f} s  {words}"


# --- messages from the workers ---------------------------------------------------------------------------------

class DrillChecked(Message):
    """The core's answer to "may this drill start?": ``reasons`` why not (empty: it may)."""

    def __init__(self, mode: str, rounds: int, reasons: list[str]):
        super().__init__()
        self.mode, self.rounds, self.reasons = mode, rounds, reasons


class DrillEvent(Message):
    def __init__(self, event: ev.Event):
        super().__init__()
        self.event = event


class DrillDone(Message):
    def __init__(self, report: Any, cancelled: bool):
        super().__init__()
        self.report, self.cancelled = report, cancelled


class DrillFailed(Message):
    def __init__(self, error: Exception, cancelled: bool):
        super().__init__()
        self.error, self.cancelled = error, cancelled


# --- the chart -------------------------------------------------------------------------------------------------

class WriteChart(Widget):
    """One entry point's writes per second in the running round, one column a second, the latest at the right:
    acknowledged (green, scaled to the most in a second shown) above failed (red, scaled likewise)."""

    DEFAULT_CSS = "WriteChart { height: 2; }"
    LABEL = 15
    TAIL = 10

    def __init__(self, entry: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.entry = entry
        self.round = 0
        self.ok: list[int] = []
        self.failed: list[int] = []

    def add(self, sample: ev.DrillSample) -> None:
        if sample.round != self.round:  # a new round starts a new chart
            self.round, self.ok, self.failed = sample.round, [], []
        if sample.second < 0:
            return
        missing = sample.second + 1 - len(self.ok)
        if missing > 0:  # a second without a sample had no write end in it
            self.ok.extend([0] * missing)
            self.failed.extend([0] * missing)
        self.ok[sample.second], self.failed[sample.second] = sample.ok, sample.failed
        self.refresh()

    def clear(self) -> None:
        self.round, self.ok, self.failed = 0, [], []
        self.refresh()

    def render(self) -> RenderResult:
        width = max(5, self.size.width - self.LABEL - self.TAIL)
        ok, failed = self.ok[-width:], self.failed[-width:]
        first = max(0, len(self.ok) - width)
        now = f"{self.ok[-1]}/s" if self.ok else "—"
        text = Text()
        text.append(f"{self.entry:<9} ok   ", style="bold")
        text.append(f"{bars(ok):<{width}}", style="green")
        text.append(f" {now:>{self.TAIL - 1}}\n")
        where = f"s {first}–{first + len(ok) - 1}" if ok else ""
        text.append(f"{where:<9} fail ", style="dim")
        text.append(f"{bars(failed):<{width}}", style="red")
        text.append(f" {sum(self.failed):>{self.TAIL - 3}} ✗")
        return text


# --- the screen ------------------------------------------------------------------------------------------------

class DrillScreen(Screen):
    BINDINGS = [
        Binding("s", "start", "Start drill"),
        Binding("c", "cancel", "Cancel"),
        Binding("escape", "back", "Back/cancel"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.checking = False  # the core is asked whether the drill may start
        self.running = False  # the drill runs (or puts its fault back after a cancel)
        self.worker: Worker | None = None
        self.cancelling = False
        self.rounds_done: list[dict] = []
        self.report: Any = None
        self.timeline_round = 0  # the round the drill is in (its last mark or sample)
        # The timeline: (round, seconds from the fault, arrival, line), shown in time order within each round (the
        # core sends some marks late: "last ack" and "first write after" once the round's writes are counted);
        # a line that is not a mark goes after the mark that came before it.
        self.timeline_items: list[tuple[int, float, int, str]] = []
        self.timeline_lines: list[str] = []  # as shown (the pane wraps them)
        self.errors: list[str] = []  # the drill's error messages (a fault it could not put back)

    @property
    def entries(self) -> list[str]:
        ports = self.app.state.settings.ports
        return [f"LB:{ports.haproxy_write}", f"LB:{ports.pgbouncer}"]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Failover drill — how long writes stop when the leader goes, and what is lost", classes="title")
        with Vertical(id="drill-setup"):
            with RadioSet(id="drill-modes", compact=True):
                for i, (mode, line) in enumerate(MODES.items()):
                    yield RadioButton(Text(f"{mode:<11}{line}"), value=i == 0, id=f"mode-{mode}")
            with Horizontal(id="drill-rounds-row"):
                yield Label("rounds")
                yield Input("1", id="drill-rounds", compact=True, max_length=3)
                yield Label(f"1 to {MAX_ROUNDS}", classes="hint")
                yield Button("Start (s)", id="drill-start", variant="warning", compact=True)
        yield Static("", id="drill-error", classes="problems")
        yield Static("", id="drill-refusal", classes="problems")
        with Horizontal(id="drill-status-row"):
            yield Static("", id="drill-status", classes="hint")
            yield Button("Cancel (c)", id="drill-cancel", variant="error", compact=True)
        with Vertical(id="drill-charts"):
            for entry in self.entries:
                yield WriteChart(entry, id=chart_id(entry))
        with Horizontal(id="drill-results"):
            with Vertical(id="drill-timeline-pane"):
                yield Static("Timeline, s from the fault", classes="hint")
                yield RichLog(id="drill-timeline", wrap=True, markup=False, highlight=False, min_width=20)
            with VerticalScroll(id="drill-report-pane"):
                yield Static("", id="drill-report")
        yield Footer()

    def on_mount(self) -> None:
        show(self.query_one("#drill-error", Static), "")
        show(self.query_one("#drill-refusal", Static), "")
        problems = self.setup_problems()
        if problems:
            self.set_status("cannot run: " + "; ".join(problems))
        else:
            self.set_status("pick a mode and the rounds; s starts (the cluster is checked first, then you are asked)")
        self.query_one("#drill-report", Static).update(report_text([]))
        self.query_one("#drill-cancel", Button).display = False
        self.query_one(RadioSet).focus()

    def setup_problems(self) -> list[str]:
        return self.app.state.cluster_problems()

    def set_status(self, text: str) -> None:
        self.query_one("#drill-status", Static).update(Text(text))  # literal: reasons quote hosts and files

    def mode(self) -> str:
        pressed = self.query_one(RadioSet).pressed_button
        return pressed.id.removeprefix("mode-") if pressed is not None and pressed.id else "switchover"

    def set_running(self, running: bool) -> None:
        """While the drill runs: the choices hidden (the chart, timeline and report get the room), Cancel shown."""
        self.running = running
        self.refresh_bindings()
        self.query_one("#drill-setup").display = not running
        self.query_one("#drill-cancel", Button).display = running
        if not running:
            self.query_one(RadioSet).focus()

    # starting: may it? then a yes

    def action_start(self) -> None:
        if self.running or self.checking:
            self.notify("a drill is running; c cancels it" if self.running else "checking the cluster …")
            return
        problems = self.setup_problems()
        if problems:
            self.set_status("cannot run: " + "; ".join(problems))
            return
        rounds, error = parse_rounds(self.query_one("#drill-rounds", Input).value)
        show(self.query_one("#drill-error", Static), error)
        show(self.query_one("#drill-refusal", Static), "")
        if rounds is None:
            self.query_one("#drill-rounds", Input).focus()
            return
        mode = self.mode()
        self.checking = True
        self.set_status(f"checking that the cluster may take a {mode} drill (diagnostics) …")
        self.check_drill(mode, rounds)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "drill-rounds":
            self.action_start()

    @work(thread=True, exclusive=True, exit_on_error=False, group="drill-check")
    def check_drill(self, mode: str, rounds: int) -> None:
        cancel = cancel_event()
        reasons = run_cancellable(lambda: self.refusal(mode, cancel), cancel, name="kbpg-drill-check")
        if reasons is not None and not cancel.is_set():
            self.post_message(DrillChecked(mode, rounds, reasons))

    def refusal(self, mode: str, cancel: threading.Event) -> list[str]:
        from ...core.ops import drill as ops_drill  # at call time: the tests put fakes in its place

        app = self.app  # for the SSH threads, which may ask after this screen is gone (workers.py)
        state = app.state
        run = inst.prepare(state.workdir, state.settings, ev.discard, prompt=lambda e: app.ask_host_key(e, cancel),
                           cancel=cancel, selection=state.selection)
        try:
            return list(ops_drill.refusal(run, mode))
        finally:
            run.close()

    def on_drill_checked(self, message: DrillChecked) -> None:
        from .dialogs import ConfirmDialog

        self.checking = False
        if message.reasons:
            show(self.query_one("#drill-refusal", Static),
                 f"The {message.mode} drill is refused:\n" + "\n".join(f"  {r}" for r in message.reasons))
            self.set_status(f"not started: {len(message.reasons)} reason(s) above; nothing was done on the cluster")
            return
        rounds = message.rounds
        text = (f"This causes a FAILOVER on the cluster, {rounds} time(s): {message.mode} — {MODES[message.mode]}.\n\n"
                f"Writers insert rows through {' and '.join(self.entries)} (kbpg's own schema, kbpg_drill) while "
                "the leader goes; the cluster's run lock is held until the drill ends. Applications see their "
                "writes stop for as long as the drill measures. Cancelling puts the fault back first.")
        self.set_status("the cluster may take the drill: answer the question")
        self.app.push_screen(ConfirmDialog("Run a failover drill?", text, yes="Run the drill"),
                             lambda yes: self.confirmed(bool(yes), message.mode, rounds))

    def confirmed(self, yes: bool, mode: str, rounds: int) -> None:
        if not yes:
            self.set_status("not started (you answered no); nothing was done on the cluster")
            return
        self.rounds_done, self.report, self.timeline_round, self.cancelling = [], None, 0, False
        self.timeline_items, self.timeline_lines, self.errors = [], [], []
        self.query_one("#drill-status", Static).set_class(False, "red")
        for chart in self.query(WriteChart):
            chart.clear()
        self.query_one("#drill-timeline", RichLog).clear()
        self.query_one("#drill-report", Static).update(report_text([]))
        self.set_running(True)
        self.set_status(f"{mode} drill, {rounds} round(s): starting (run lock, writers) …")
        self.worker = self.run_drill(mode, rounds)

    # running

    @work(thread=True, exclusive=True, exit_on_error=False, group="drill")
    def run_drill(self, mode: str, rounds: int) -> None:
        """The drill, with the worker's cancel as the run's; once cancelled, the worker waits up to
        DRILL_GRACE_SECONDS for the drill to put its fault back and return."""
        cancel = cancel_event()
        run_cancellable(lambda: self.drill(mode, rounds, cancel), cancel, name="kbpg-drill", grace=DRILL_GRACE_SECONDS)

    def drill(self, mode: str, rounds: int, cancel: threading.Event) -> None:
        """The run, reporting its own end: DrillDone with the report, or DrillFailed (the run lock busy, refused,
        a failure); either way the fault is back in place by then (run_drill's promise)."""
        try:
            from ...core.ops import drill as ops_drill

            app = self.app
            state = app.state
            run = inst.prepare(state.workdir, state.settings, self.sink, prompt=lambda e: app.ask_host_key(e, cancel),
                               cancel=cancel, selection=state.selection)
            try:
                report = ops_drill.run_drill(run, mode, rounds, checked=True)
            finally:
                run.close()
        except Exception as exc:  # noqa: BLE001 (shown on the screen; the traceback is in the log)
            log.warning("the drill did not complete", exc_info=True)
            self.post_message(DrillFailed(exc, cancel.is_set()))
            return
        self.post_message(DrillDone(report, cancel.is_set()))

    def sink(self, event: ev.Event) -> None:
        """Called from the drill's threads: what the screen shows goes to it (the hosts' output does not)."""
        if isinstance(event, (ev.DrillSample, ev.DrillMark, ev.DrillRoundDone, ev.Progress, ev.Message,
                              ev.HostSilent, ev.HostAnswering)):
            self.post_message(DrillEvent(event))

    def on_drill_event(self, message: DrillEvent) -> None:
        event = message.event
        if isinstance(event, ev.DrillSample):
            self.timeline_round = max(self.timeline_round, event.round)
            self.chart(event.entry).add(event)
        elif isinstance(event, ev.DrillMark):
            self.timeline_round = max(self.timeline_round, event.round)
            self.timeline(event.round, mark_line(event), event.offset)
            if not self.cancelling:
                self.set_status(f"round {event.round}: {' '.join(mark_line(event).split())}")
        elif isinstance(event, ev.DrillRoundDone):
            self.rounds_done.append({"round": event.round, **event.figures})
            self.query_one("#drill-report", Static).update(report_text(self.rounds_done))
        elif isinstance(event, ev.Message):
            if event.level != ev.Level.INFO:
                self.timeline(self.timeline_round, f"{event.level}: {event.text}")
            if event.level == ev.Level.ERROR:
                self.errors.append(event.text)
            if not self.cancelling:
                self.set_status(event.text[:200])
        elif isinstance(event, ev.Progress):
            if not self.cancelling:
                self.set_status(event.text[:200])
        elif isinstance(event, ev.HostSilent):
            self.timeline(self.timeline_round, f"{event.host} is not answering ({event.silent_for:.0f} s)")
        elif isinstance(event, ev.HostAnswering):
            self.timeline(self.timeline_round, f"{event.host} answers again")

    def chart(self, entry: str) -> WriteChart:
        found = self.query(f"#{chart_id(entry)}")
        if found:
            return found.first(WriteChart)
        chart = WriteChart(entry, id=chart_id(entry))  # an entry point the screen did not expect
        self.query_one("#drill-charts").mount(chart)
        return chart

    def timeline(self, round_number: int, line: str, offset: float | None = None) -> None:
        """Add a line to the timeline (``offset``: a mark's seconds from the fault) and draw it again, in order."""
        if offset is None:  # after the last mark of its round that came before it
            offset = max((item[1] for item in self.timeline_items if item[0] == round_number), default=float("-inf"))
        self.timeline_items.append((round_number, offset, len(self.timeline_items), line))
        lines: list[str] = []
        shown_round = 0
        for number, _offset, _seq, text in sorted(self.timeline_items):
            if number and number != shown_round:
                shown_round = number
                lines.append(f"— round {number} —")
            lines.append(text)
        log_widget = self.query_one("#drill-timeline", RichLog)
        log_widget.clear()
        for text in lines:
            log_widget.write(Text(text, style="bold" if text.startswith("— round") else ""))  # wrapped to the pane
        self.timeline_lines = lines

    def on_drill_done(self, message: DrillDone) -> None:
        self.set_running(False)
        self.report = report = message.report
        self.query_one("#drill-report", Static).update(report_text(self.rounds_done, report, self.app.state.workdir))
        data = report.to_dict()
        paths = getattr(report, "paths", None) or ()
        written = f" — report: {paths[0]}" if paths else ""
        rounds = len(data.get("rounds") or ())
        # What went wrong, as the core says it (a cancel: whether the fault was put back), errors first.
        problems = self.errors + list(data.get("problems") or ()) + [
            problem for one in data.get("rounds") or () for problem in one.get("problems") or ()]
        if message.cancelled:
            self.set_status(f"cancelled after {rounds} round(s): {'; '.join(problems) or 'stopped'}{written}")
        elif problems:
            self.set_status(f"drill done: {rounds} round(s), {len(problems)} problem(s): {problems[0]}{written}")
        else:
            self.set_status(f"drill done: {rounds} round(s), no problem{written}")
        status = self.query_one("#drill-status", Static)
        status.set_class(bool(problems) and not message.cancelled, "red")

    def on_drill_failed(self, message: DrillFailed) -> None:
        self.set_running(False)
        error = message.error
        reasons = getattr(error, "reasons", None)
        if reasons:  # DrillRefused: the cluster changed since the check
            show(self.query_one("#drill-refusal", Static), "The drill is refused:\n" + "\n".join(f"  {r}" for r in reasons))
        after = "cancelled" if message.cancelled else "stopped"
        self.set_status(f"{after}: {error}"[:300])
        if not message.cancelled:
            self.notify(str(error)[:300], severity="error", timeout=15)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state != WorkerState.ERROR:
            return
        if event.worker.group == "drill-check":
            self.checking = False
            self.set_status(f"could not check the cluster: {event.worker.error}")
        elif event.worker.group == "drill":
            self.set_running(False)
            self.set_status(f"the drill could not run: {event.worker.error}")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "drill-start":
            self.action_start()
        elif event.button.id == "drill-cancel":
            self.action_cancel()

    def action_cancel(self) -> None:
        if not self.running or self.worker is None:
            return
        self.cancelling = True
        self.worker.cancel()
        self.set_status("cancelling: the drill puts the fault back (service started, link up) before it stops …")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Start while nothing runs, Cancel while the drill runs (None: shown dimmed in the footer)."""
        if action == "start":
            return None if self.running else True
        if action == "cancel":
            return True if self.running else None
        return True

    # navigation

    def action_back(self) -> None:
        if self.running:
            if self.cancelling:
                self.notify("the drill is putting the fault back; it ends by itself")
            else:
                self.action_cancel()
            return
        self.app.pop_screen()


def chart_id(entry: str) -> str:
    return "chart-" + "".join(c if c.isalnum() else "-" for c in entry)
