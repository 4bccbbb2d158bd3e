"""A run of engine steps on the cluster, live: a grid of steps × hosts, the selected host's output, cancel.

The install (screens/install.py) and the credential rotation (screens/rotation.py) are such runs: each is a
:class:`RunScreen` with its own steps, title, keys and end (the hooks under "what a screen of a run says").

The engine runs in a thread worker and reports through core events. Output lines
arrive at any rate: they are queued by the worker and drained into bounded
per-host buffers ten times a second, so a flood never blocks the screen.
"""

from __future__ import annotations

import collections
import itertools
import logging
import textwrap
import threading
from typing import Sequence

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Log, ProgressBar, Static
from textual.worker import Worker

from ...core import events as ev
from ...core import install as inst
from ...core import runlock
from ...core.engine import CLUSTER, LOCAL, Step, StepReport
from ..workers import cancel_event, run_cancellable

log = logging.getLogger("kbpg.ui")

OUTPUT_LINES_PER_HOST = 2000
DRAW_LINES_PER_FLUSH = 200
REDRAW_LINES = 500


def step_header(step, short: dict[str, str] | None = None) -> str:
    """A step's column header on two lines: its number, then the first word of its title ("02\npatroni"), or the
    screen's short title for it (``RunScreen.SHORT_TITLES``)."""
    title = step.label.split(" ", 1)[-1]
    return f"{step.number}\n{(SHORT_TITLES if short is None else short).get(step.number, title.split()[0].lower())}"


# Seven steps and six hosts in 80 columns: every header at most 7 wide, as wide as a finished cell ("✓ 31.4s").
SHORT_TITLES = {"00": "creds", "01": "checks", "04": "bouncer", "05": "vector"}


def _text(item: "str | ev.OutputLine") -> str:
    """A line of a host's buffer is text; a line of the all-hosts buffer is the event, tagged when drawn."""
    return item if isinstance(item, str) else f"{item.host}| {item.text}"
FLUSH_SECONDS = 0.1
ALL_HOSTS = "all hosts"


class EngineEvent(Message):
    """A core event, carried to the screen (never an output line: those are batched)."""

    def __init__(self, event: ev.Event):
        super().__init__()
        self.event = event


class RunDone(Message):
    def __init__(self, reports: list[StepReport]):
        super().__init__()
        self.reports = reports


class RunFailed(Message):
    """The run could not run (bad input, the cluster busy): nothing was done."""

    def __init__(self, error: Exception):
        super().__init__()
        self.error = error


CELL_WIDTH = 10  # "… packages", "silent 35s": only the running step's column is this wide


def no_answer(seconds: float) -> str:
    """A host that does not answer, in its cell (its output says it in full): "silent 35s", "silent 4m"."""
    return f"silent {seconds:.0f}s" if seconds < 99.5 else f"silent {seconds / 60:.0f}m"


def duration(seconds: float) -> str:
    """A finished cell's time, at most 5 wide so that the cell fits its 7-wide column: 0.4s, 31.4s, 312s, 21m."""
    if seconds < 99.95:
        return f"{seconds:.1f}s"
    return f"{seconds:.0f}s" if seconds < 999.5 else f"{seconds / 60:.0f}m"


SYMBOL = {ev.Status.CHANGED: "✓", ev.Status.UNCHANGED: "=", ev.Status.FAILED: "✗", ev.Status.CANCELLED: "■",
          ev.Status.SKIPPED: "-"}


class RunScreen(Screen):
    """The progress of a run of engine steps. A subclass gives its steps (``planned_steps``), title, keys (its own
    BINDINGS: ``c`` cancel, ``[`` ``]`` hosts' output, escape back are actions of this class), how it starts
    (``action_start``, calling :meth:`launch`) and its end (``on_run_done``; ``on_run_failed`` here shows why a run
    could not start)."""

    WHAT = "run"  # the run, as the screen's lines name it ("the install is running")
    SHORT_TITLES = SHORT_TITLES  # a step's column header, where the first word of its title is too long

    def __init__(self) -> None:
        super().__init__()
        self.worker: Worker | None = None  # the running run; cancelling it (c, quit, leaving) stops the engine
        self.running = False
        self.done = False
        self.failed_step: str | None = None
        self.tasks: dict[tuple[str, str], dict[str, tuple[ev.Status, float]]] = collections.defaultdict(dict)
        self.pending_lines: collections.deque[ev.OutputLine] = collections.deque()
        self.host_lines: dict[str, collections.deque] = collections.defaultdict(
            lambda: collections.deque(maxlen=OUTPUT_LINES_PER_HOST))
        self.view = ALL_HOSTS
        self.finished_tasks = 0
        self.silent: dict[str, tuple[str, float]] = {}  # host -> (step, seconds) while it does not answer
        self.current_step = ""

    # layout

    @property
    def hosts(self) -> list[str]:
        """The cluster's nodes, and the backup host when a planned step has work there (the install's 01 and 06)."""
        selection = self.app.state.selection
        if not selection:
            return []
        backup = any(task.scope == "backup" for step in self.planned_steps() for task in step.tasks)
        return [s.hostname for s in selection.all_nodes + (selection.backup_nodes if backup else ())]

    @property
    def rows(self) -> list[str]:
        """The grid's rows: this machine, the cluster as a whole, then each host."""
        return [LOCAL, CLUSTER, *self.hosts]

    def compose(self) -> ComposeResult:
        yield Header()
        selection = self.app.state.selection
        count = f"{len(selection.db_nodes)} DB + {len(selection.haproxy_nodes)} HAProxy nodes" if selection else "no hosts"
        yield Static(self.title_text(count), classes="title", id="install-title")
        yield Static("✓ changed   = unchanged   ✗ failed   ■ cancelled   … running", classes="hint")
        # Hosts as rows and steps as columns (two-line headers): six hosts and seven steps fit in 80 columns.
        grid = DataTable(id="grid", cursor_type="none", zebra_stripes=True, header_height=2)
        grid.add_column("\nhost", key="host")
        planned = self.planned_steps()
        for step in planned:
            grid.add_column(step_header(step, self.SHORT_TITLES), key=step.number)
        for row in self.rows:
            grid.add_row(row, *["·"] * len(planned), key=row)
        yield grid
        with Horizontal(id="progress-row"):
            yield ProgressBar(total=self.total_tasks(), show_eta=False, id="progress")
            yield Static("  ready", id="install-status")
        yield Static(f"Output: {self.view}", id="output-title", classes="hint")
        yield Log(id="output", max_lines=OUTPUT_LINES_PER_HOST, highlight=False)
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(FLUSH_SECONDS, self.flush_output)

    # what a screen of a run says

    def planned_steps(self) -> Sequence[Step]:
        """The grid's columns: every step this screen may run."""
        raise NotImplementedError

    def title_text(self, count: str) -> str:
        """The title line; ``count`` says how many nodes ("3 DB + 2 HAProxy nodes")."""
        raise NotImplementedError

    def prepared(self, run: inst.Run) -> None:
        """Called in the worker with the prepared run, before the run lock is taken."""

    def lock_command(self, steps: Sequence[Step]) -> str:
        """The run, as the cluster's run lock names its holder."""
        return f"kbpg wizard: {self.WHAT} steps {steps[0].number}-{steps[-1].number}"

    def total_tasks(self) -> int:
        selection = self.app.state.selection
        if not selection:
            return 1
        counts = {"db": len(selection.db_nodes), "haproxy": len(selection.haproxy_nodes),
                  "all": len(selection.all_nodes), "cluster": 1, "local": 1,
                  "backup": 1}  # the backup host (at most one), or one "skipped" report for the cluster
        return sum(counts[task.scope] for step in self.planned_steps() for task in step.tasks)

    # running

    def launch(self, steps) -> None:
        if self.running:
            self.notify(f"the {self.WHAT} is running; c cancels it")
            return
        if not self.app.state.selection:
            self.notify("servers.tsv has errors: go back to Hosts", severity="error")
            return
        self.running, self.done, self.failed_step = True, False, None
        self.finished_tasks = 0
        self.silent.clear()
        progress = self.query_one(ProgressBar)
        progress.update(total=self.total_tasks(), progress=0)
        for step in steps:
            for column in [LOCAL, CLUSTER, *self.hosts]:
                self.tasks.pop((step.number, column), None)
                self.set_cell(step.number, column, "·")
        self.set_status(f"running steps {steps[0].number}–{steps[-1].number} …")
        self.worker = self.run_engine(steps)

    @work(thread=True, exclusive=True, exit_on_error=False, group="install")
    def run_engine(self, steps) -> None:
        """The engine, with the worker's cancel as the run's: ``c``, quitting or leaving the screen stops it (the
        run's SSH pool closes the commands) and the run lock is released; the worker waits for that at most
        workers.GRACE_SECONDS (then leaves it behind), so that a quit wizard exits at once."""
        cancel = cancel_event()
        run_cancellable(lambda: self.install(steps, cancel), cancel, name="kbpg-install")

    def install(self, steps, cancel: threading.Event) -> None:
        """The run, reporting its own end (also when the worker has stopped waiting for it): RunDone, or
        RunFailed when it could not run (a refusal of the cluster's run lock naming its holder: shown as
        "could not start: the cluster is busy: <holder> ...")."""
        try:
            self.post_message(RunDone(self.run_steps(steps, cancel)))
        except Exception as exc:  # noqa: BLE001 (shown on the screen; the traceback is in the log)
            log.warning("the %s could not run", self.WHAT, exc_info=True)
            self.post_message(RunFailed(exc))

    def run_steps(self, steps, cancel: threading.Event) -> list[StepReport]:
        app = self.app  # for the engine's threads, which may ask after this screen is gone (workers.py)
        state = app.state
        run = inst.prepare(state.workdir, state.settings, self.sink, prompt=lambda e: app.ask_host_key(e, cancel),
                           cancel=cancel, selection=state.selection)
        try:  # the cluster's run lock (core/runlock.py)
            self.prepared(run)
            lock = runlock.acquire_for_run(run, self.lock_command(steps)) if runlock.changes_hosts(steps) else None
        except BaseException:
            run.close()
            raise
        try:
            reports = run.engine.run(steps)
        finally:
            if lock is not None:
                lock.release()
            run.close()
        return reports

    def sink(self, event: ev.Event) -> None:
        """Called from the worker thread."""
        if isinstance(event, ev.OutputLine):
            self.pending_lines.append(event)  # deque.append is thread-safe; drained by the timer
        else:
            self.post_message(EngineEvent(event))

    def on_run_failed(self, message: RunFailed) -> None:
        self.running = False
        self.set_status(f"could not start: {message.error}")
        self.notify(str(message.error), severity="error", timeout=15)

    def action_cancel(self) -> None:
        if self.running and self.worker is not None:
            self.worker.cancel()
            self.set_status("cancelling: the running commands are stopped, finished work stays …")

    # events

    def on_engine_event(self, message: EngineEvent) -> None:
        event = message.event
        if isinstance(event, ev.TaskStarted):
            self.tasks[(event.step, event.host)][event.task] = (ev.Status.RUNNING, 0.0)
            if event.host not in self.silent:
                self.set_cell(event.step, event.host, f"… {event.task}")
            self.set_status(f"{event.step} {event.host}: {event.task} …")
        elif isinstance(event, ev.TaskFinished):
            self.tasks[(event.step, event.host)][event.task] = (event.status, event.elapsed)
            if self.silent.get(event.host, ("",))[0] == event.step:
                del self.silent[event.host]
            self.set_cell(event.step, event.host, self.cell(event.step, event.host))
            self.finished_tasks += 1
            self.query_one(ProgressBar).update(progress=self.finished_tasks)
            if event.status == ev.Status.FAILED:
                self.record(event.host, f"FAILED {event.task}: {event.detail}")
        elif isinstance(event, ev.StepFinished):
            if event.status in (ev.Status.FAILED, ev.Status.CANCELLED):
                self.failed_step = event.step
            for host, (step, _seconds) in list(self.silent.items()):  # the step is over: so is its waiting
                if step == event.step:
                    del self.silent[host]
                    self.set_cell(step, host, self.cell(step, host))
        elif isinstance(event, ev.StepStarted):
            self.current_step = event.step
        elif isinstance(event, ev.HostSilent):
            step = event.step or self.current_step  # a command outside a step's bookkeeping: the running step
            first = event.host not in self.silent
            self.silent[event.host] = (step, event.silent_for)
            self.set_cell(step, event.host, Text(no_answer(event.silent_for), style="bold yellow"))
            self.set_status(f"{event.host} is not answering ({event.silent_for:.0f} s)")
            if first:
                self.record(event.host, f"{event.host} is not answering (no reply for {event.silent_for:.0f} s"
                                        f"{f' in step {step}' if step else ''}); waiting for it, the other hosts go on")
        elif isinstance(event, ev.HostAnswering):
            step = self.silent.pop(event.host, (event.step, 0.0))[0]
            self.set_cell(step, event.host, self.cell(step, event.host))
            self.record(event.host, f"{event.host} answers again" + (f" (step {step})" if step else ""))
        elif isinstance(event, ev.Message) and event.level != ev.Level.INFO:
            self.record(event.host or CLUSTER, f"{event.level}: {event.text}")
        elif isinstance(event, ev.Progress):
            self.set_status(event.text[:120])

    def set_cell(self, step: str, host: str, text: str | Text) -> None:
        """The cell of a host (row) in a step (column); at most CELL_WIDTH wide, so that the grid fits 80 columns."""
        grid = self.query_one("#grid", DataTable)
        if host in grid.rows and step in grid.columns:  # a step or host outside the plan has no cell
            if len(text) > CELL_WIDTH:
                text = text[:CELL_WIDTH - 1] + "…"
            grid.update_cell(host, step, text, update_width=True)

    def cell(self, step: str, host: str) -> str | Text:
        tasks = self.tasks[(step, host)].values()
        if not tasks:
            return "·"
        statuses = [status for status, _ in tasks]
        elapsed = sum(seconds for _, seconds in tasks)
        if ev.Status.RUNNING in statuses:
            return "…"
        if ev.Status.FAILED in statuses:
            return Text(f"{SYMBOL[ev.Status.FAILED]} {duration(elapsed)}", style="bold red")
        for status in (ev.Status.CANCELLED, ev.Status.CHANGED):
            if status in statuses:
                return f"{SYMBOL[status]} {duration(elapsed)}"
        return f"= {duration(elapsed)}"

    # output

    def record(self, host: str, line: str) -> None:
        """kbpg's own line about a host (a failure, a warning, a silence): wrapped to the width, so that the
        whole of it reads at 80 columns (the hosts' output is not wrapped: it can come by the thousand)."""
        log = self.query_one(Log)
        width = max(30, (log.scrollable_content_region.width or 80) - 1)
        own = textwrap.wrap(line, width, subsequent_indent="  ", break_on_hyphens=False) or [""]
        tagged = textwrap.wrap(f"{host}| {line}", width, subsequent_indent=" " * min(len(host) + 2, 20),
                               break_on_hyphens=False) or [""]
        self.host_lines[host].extend(own)
        self.host_lines[ALL_HOSTS].extend(tagged)  # already tagged: drawn as they are
        if self.view == host:
            log.write_lines(own)
        elif self.view == ALL_HOSTS:
            log.write_lines(tagged)

    def flush_output(self) -> None:
        """Drain the queued output into the per-host buffers; show the tail of what the current view gets.

        Only the last screenful or so of a batch is drawn: in a flood, lines that would scroll past
        within the same tenth of a second are kept in the buffers but not rendered.
        """
        pending = self.pending_lines
        count = len(pending)
        if not count:
            return
        batch = [pending.popleft() for _ in range(count)]
        view = self.view
        everything = self.host_lines[ALL_HOSTS]
        shown = []
        for line in batch:
            self.host_lines[line.host].append(line.text)
            everything.append(line)  # tagged with its host only when drawn
            if view == line.host:
                shown.append(line.text)
            elif view == ALL_HOSTS:
                shown.append(line)
        if shown:
            log = self.query_one(Log)
            if len(shown) > DRAW_LINES_PER_FLUSH:
                log.write_line(f"[… {len(shown) - DRAW_LINES_PER_FLUSH} lines scrolled past; [ ] shows a host's last "
                               f"{OUTPUT_LINES_PER_HOST}]")
                shown = shown[-DRAW_LINES_PER_FLUSH:]
            log.write_lines(_text(item) for item in shown)

    def show_view(self) -> None:
        log = self.query_one(Log)
        log.clear()
        lines = self.host_lines[self.view]
        # The visible tail and some scrollback; the rest of the buffer stays for the next switch.
        log.write_lines(_text(item) for item in itertools.islice(lines, max(0, len(lines) - REDRAW_LINES), None))
        self.query_one("#output-title", Static).update(f"Output: {self.view}  ([ ] to switch)")

    def cycle(self, step: int) -> None:
        views = [ALL_HOSTS, *self.hosts, CLUSTER]
        self.view = views[(views.index(self.view) + step) % len(views)] if self.view in views else ALL_HOSTS
        self.show_view()

    def action_previous_host(self) -> None:
        self.cycle(-1)

    def action_next_host(self) -> None:
        self.cycle(1)

    def set_status(self, text: str) -> None:
        self.query_one("#install-status", Static).update("  " + text)

    # navigation

    def action_back(self) -> None:
        if self.running:
            self.notify(f"the {self.WHAT} is running: c cancels it first")
            return
        self.app.pop_screen()
