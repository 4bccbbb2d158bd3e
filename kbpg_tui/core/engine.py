"""The step engine: steps made of tasks, each task check → change → verify on its hosts.

A task runs on every host of its scope in parallel (or one host after another
when ``serial``), or once for the cluster. Each reports changed, unchanged or
failed through events. One failing host fails the step after the others have
finished their own work, which stays intact; a re-run checks again and continues
from where things are. Cancellation is a ``threading.Event`` passed down to every
remote command; once it is set, the engine waits at most ``CANCEL_GRACE_SECONDS``
for the running tasks to stop and reports those still running as cancelled (their
threads are daemons, abandoned: an interrupted ``kbpg install`` ends at once).
Every text an event carries is redacted before it leaves the engine.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .credentials import Credentials
from .events import EventSink, Level, Message, Status, StepFinished, StepStarted, TaskFinished, TaskStarted
from .inventory import Selection, rule_text
from .logs import redact, redacting_sink
from .settings import Settings
from .ssh import Cancelled, Connection, ConnectionPool, Host, LineCallback, Result, SshError, output_sink

log = logging.getLogger("kbpg.engine")

CLUSTER = "cluster"  # the pseudo-host of tasks that run once for the whole cluster
LOCAL = "local"  # the pseudo-host of tasks that run on this machine
CANCEL_GRACE_SECONDS = 0.5  # after a cancel, how long running tasks get to stop on their own (commands close at once)
_WAIT_SECONDS = 0.05


class TaskError(Exception):
    """A task failed for a reason the operator can act on; the message says which and what to do."""


@dataclass
class Outcome:
    status: Status
    detail: str = ""
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def changed(cls, detail: str = "", warnings: Iterable[str] = ()) -> "Outcome":
        return cls(Status.CHANGED, detail, list(warnings))

    @classmethod
    def unchanged(cls, detail: str = "", warnings: Iterable[str] = ()) -> "Outcome":
        return cls(Status.UNCHANGED, detail, list(warnings))

    @classmethod
    def of(cls, changed: bool, detail: str = "", warnings: Iterable[str] = ()) -> "Outcome":
        return cls(Status.CHANGED if changed else Status.UNCHANGED, detail, list(warnings))


@dataclass
class Context:
    """Everything a run needs, shared by its steps."""

    settings: Settings
    credentials: Credentials
    selection: Selection
    workdir: Path
    pool: ConnectionPool
    sink: EventSink
    cancel: threading.Event = field(default_factory=threading.Event)
    state: dict = field(default_factory=dict)  # facts found by one task for the next (leader, changed configs)

    def __post_init__(self) -> None:
        self.sink = redacting_sink(self.sink)  # whatever a task or a remote command says, no secret reaches a screen

    @property
    def db_hosts(self) -> list[Host]:
        return [Host(s.hostname, s.ip_private, s.user_ssh) for s in self.selection.db_nodes]

    @property
    def haproxy_hosts(self) -> list[Host]:
        return [Host(s.hostname, s.ip_private, s.user_ssh) for s in self.selection.haproxy_nodes]

    @property
    def backup_hosts(self) -> list[Host]:
        """The backup host selected by [inventory.backup_rule] (0 or 1), whether or not [backup] is enabled."""
        nodes = getattr(self.selection, "backup_nodes", ())  # a selection made by hand in a test may have none
        return [Host(s.hostname, s.ip_private, s.user_ssh) for s in nodes]

    @property
    def backup_host(self) -> Host | None:
        """The backup host, or None when none is selected."""
        return next(iter(self.backup_hosts), None)

    def backup_skip_reason(self) -> str | None:
        """Why the tasks of scope "backup" do not run (no backup host, or backups turned off), or None."""
        if not self.backup_hosts:
            return (f"no backup host matches {rule_text(self.settings.inventory.backup_rule)} "
                    "([inventory.backup_rule]): backups are not set up")
        if not self.settings.backup.enabled:
            return f"backups are turned off in kbpg.toml ([backup] enabled = false): {self.backup_hosts[0].name} unused"
        return None

    def host(self, name: str) -> Host:
        return next(h for h in self.db_hosts + self.haproxy_hosts + self.backup_hosts if h.name == name)


@dataclass
class TaskRun:
    """What a task function gets: the context, its step, its host, and helpers bound to them."""

    ctx: Context
    step: str
    host: Host | None

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    def connection(self, host: Host | None = None) -> Connection:
        target = host or self.host
        assert target is not None, "a cluster task must name its host"
        return self.ctx.pool.get(target)

    def lines(self, host: Host) -> LineCallback:
        return output_sink(self.ctx.sink, self.step, host)

    def run(self, script: str, host: Host | None = None, **kwargs) -> Result:
        """Run a script as root on ``host`` (default: this task's host), streaming its output as events."""
        target = host or self.host
        assert target is not None
        kwargs.setdefault("on_line", self.lines(target))
        return self.connection(target).run(script, **kwargs)

    def say(self, text: str, level: Level = Level.INFO) -> None:
        self.ctx.sink(Message(level, text, self.host.name if self.host else ""))

    def check_cancel(self) -> None:
        if self.ctx.cancel.is_set():
            raise Cancelled("cancelled")


TaskFunction = Callable[[TaskRun], Outcome]


@dataclass
class Task:
    name: str
    scope: str  # "db" | "haproxy" | "all" (DB + HAProxy) | "backup" | "cluster" | "local"
    function: TaskFunction
    serial: bool = False


@dataclass
class Step:
    number: str
    title: str
    tasks: list[Task]

    @property
    def label(self) -> str:
        return f"{self.number} {self.title}"


@dataclass
class TaskReport:
    step: str
    host: str
    task: str
    status: Status
    detail: str
    elapsed: float
    warnings: list[str]


@dataclass
class StepReport:
    step: Step
    status: Status
    elapsed: float
    tasks: list[TaskReport]

    def count(self, status: Status) -> int:
        return sum(1 for task in self.tasks if task.status == status)

    @property
    def failures(self) -> list[TaskReport]:
        return [task for task in self.tasks if task.status in (Status.FAILED, Status.CANCELLED)]


class _Worker:
    """One task on one host, in a daemon thread; the engine may stop waiting for it (cancel)."""

    def __init__(self, engine: "Engine", step: Step, task: Task, host: Host | None, finished: threading.Event):
        self.host = host
        self.report: TaskReport | None = None
        self.started = time.monotonic()
        self.done = threading.Event()
        self._claimed = False
        self._lock = threading.Lock()
        self._finished = finished
        where = host.name if host else task.scope
        self.thread = threading.Thread(target=self._work, args=(engine, step, task), daemon=True,
                                       name=f"kbpg-{step.number}-{task.name}-{where}")

    def _work(self, engine: "Engine", step: Step, task: Task) -> None:
        try:
            report = engine._run_task(step, task, self.host, self.claim)
        except BaseException as exc:  # _run_task catches every Exception; this is the last resort
            where = self.host.name if self.host else task.scope
            report = TaskReport(step.number, where, task.name, Status.FAILED, f"internal error: {type(exc).__name__}",
                                0.0, [])
        with self._lock:
            if self.report is None:  # else the engine gave up waiting and reported it cancelled
                self.report = report
        self.done.set()
        self._finished.set()

    def give_up(self, report: Callable[[], TaskReport]) -> None:
        """Report the task cancelled now, unless it has just reported its own end."""
        if self.claim():
            with self._lock:
                self.report = report()
        else:
            self.done.wait(0.5)  # it is returning its report this very moment

    def claim(self) -> bool:
        """True once: for whoever reports this task's end first (the task itself, or the engine giving up on it)."""
        with self._lock:
            if self._claimed:
                return False
            self._claimed = True
            return True


class Engine:
    """Runs steps against a context, emitting events; never prints."""

    def __init__(self, ctx: Context, max_workers: int = 8):
        self.ctx = ctx
        self.max_workers = max_workers

    def _hosts(self, scope: str) -> list[Host | None]:
        if scope == "db":
            return list(self.ctx.db_hosts)
        if scope == "haproxy":
            return list(self.ctx.haproxy_hosts)
        if scope == "all":
            return [*self.ctx.db_hosts, *self.ctx.haproxy_hosts]
        if scope == "backup":  # none (no backup host, backups off): the task is reported skipped
            return [] if self.ctx.backup_skip_reason() else list(self.ctx.backup_hosts)
        if scope in ("cluster", "local"):
            return [None]
        raise ValueError(f"unknown task scope {scope!r}")

    def _run_task(self, step: Step, task: Task, host: Host | None,
                  claim: Callable[[], bool] = lambda: True) -> TaskReport:
        where = host.name if host else (LOCAL if task.scope == "local" else CLUSTER)
        sink = self.ctx.sink
        sink(TaskStarted(step.number, where, task.name))
        started = time.monotonic()
        try:
            if self.ctx.cancel.is_set():
                raise Cancelled("cancelled")
            outcome = task.function(TaskRun(self.ctx, step.number, host))
        except Cancelled:
            outcome = Outcome(Status.CANCELLED, "cancelled; the command running on the host may still finish on its "
                                                "own; every step checks first, so re-run to continue")
        except (TaskError, SshError) as exc:
            outcome = Outcome(Status.FAILED, str(exc))
        except Exception as exc:  # a bug must not take the other hosts down with it
            log.exception("%s %s on %s: unexpected error", step.label, task.name, where)
            outcome = Outcome(Status.FAILED, f"internal error: {type(exc).__name__}: {exc} (details in the log)")
        elapsed = time.monotonic() - started
        outcome.detail, outcome.warnings = redact(outcome.detail), [redact(w) for w in outcome.warnings]
        if not claim():  # the engine stopped waiting (cancel) and already reported it cancelled
            log.info("%s %s %s: %s after the run stopped waiting, in %.1fs %s", step.number, where, task.name,
                     outcome.status, elapsed, outcome.detail)
            return TaskReport(step.number, where, task.name, outcome.status, outcome.detail, elapsed, outcome.warnings)
        for warning in outcome.warnings:
            sink(Message(Level.WARNING, warning, where))
        sink(TaskFinished(step.number, where, task.name, outcome.status, outcome.detail, elapsed))
        log.info("%s %s %s: %s in %.1fs %s", step.number, where, task.name, outcome.status, elapsed, outcome.detail)
        return TaskReport(step.number, where, task.name, outcome.status, outcome.detail, elapsed, outcome.warnings)

    def _run_batch(self, step: Step, task: Task, targets: list[Host | None]) -> list[TaskReport]:
        """Run a task on its targets (in parallel, or one after another for a serial task).

        Every task runs in a worker thread so that a cancel is never stuck behind one: once the cancel
        is set, the running ones get ``CANCEL_GRACE_SECONDS`` to stop (remote commands are closed at
        once), then are reported cancelled and left behind.
        """
        serial = task.serial or len(targets) == 1
        limit = 1 if serial else max(1, self.max_workers)
        pending = list(targets)
        running: list[_Worker] = []
        finished: list[_Worker] = []
        woken = threading.Event()
        give_up_at: float | None = None
        while pending or running:
            if self.ctx.cancel.is_set():
                pending.clear()  # nothing new starts
                if give_up_at is None:
                    give_up_at = time.monotonic() + CANCEL_GRACE_SECONDS
            while pending and len(running) < limit:
                worker = _Worker(self, step, task, pending.pop(0), woken)
                running.append(worker)
                worker.thread.start()
            woken.wait(_WAIT_SECONDS)
            woken.clear()
            for worker in [w for w in running if w.done.is_set()]:
                running.remove(worker)
                finished.append(worker)
                if serial and worker.report is not None and worker.report.status in (Status.FAILED, Status.CANCELLED):
                    pending.clear()  # a rolling change stops at the first host that fails
            if give_up_at is not None and running and time.monotonic() >= give_up_at:
                for worker in running:
                    worker.give_up(functools.partial(self._abandoned, step, task, worker))
                    finished.append(worker)
                running.clear()
        order = {id(host): index for index, host in enumerate(targets)}
        finished.sort(key=lambda w: order[id(w.host)])
        return [w.report for w in finished if w.report is not None]

    def _skipped(self, step: Step, task: Task) -> TaskReport:
        """A task of scope "backup" with no backup host to run on: reported skipped, once, for the cluster."""
        detail = redact(self.ctx.backup_skip_reason() or "no host to run on")
        self.ctx.sink(TaskStarted(step.number, CLUSTER, task.name))
        self.ctx.sink(TaskFinished(step.number, CLUSTER, task.name, Status.SKIPPED, detail, 0.0))
        log.info("%s %s %s: skipped: %s", step.number, CLUSTER, task.name, detail)
        return TaskReport(step.number, CLUSTER, task.name, Status.SKIPPED, detail, 0.0, [])

    def _abandoned(self, step: Step, task: Task, worker: _Worker) -> TaskReport:
        host, elapsed = worker.host, time.monotonic() - worker.started
        where = host.name if host else (LOCAL if task.scope == "local" else CLUSTER)
        detail = ("cancelled; it was still running when the run stopped (a command on the host may still finish "
                  "on its own); every step checks first, so re-run to continue")
        self.ctx.sink(TaskFinished(step.number, where, task.name, Status.CANCELLED, detail, elapsed))
        log.info("%s %s %s: abandoned after the cancel, in %.1fs", step.number, where, task.name, elapsed)
        return TaskReport(step.number, where, task.name, Status.CANCELLED, detail, elapsed, [])

    def run_step(self, step: Step) -> StepReport:
        hosts = [h.name for h in self.ctx.db_hosts + self.ctx.haproxy_hosts]
        if any(task.scope == "backup" for task in step.tasks):
            hosts += [h.name for h in self._hosts("backup") if h is not None]
        if self.ctx.pool is not None:
            self.ctx.pool.step = step.number  # named by the events of a host that stops answering
        self.ctx.sink(StepStarted(step.number, step.title, tuple(hosts)))
        started = time.monotonic()
        reports: list[TaskReport] = []
        status = Status.UNCHANGED
        for task in step.tasks:
            targets = self._hosts(task.scope)
            if not targets and task.scope == "backup":
                batch = [self._skipped(step, task)]
            else:
                batch = self._run_batch(step, task, targets)
            reports += batch
            if self.ctx.cancel.is_set() or any(r.status == Status.CANCELLED for r in batch):
                status = Status.CANCELLED
                break
            if any(r.status == Status.FAILED for r in batch):
                status = Status.FAILED
                break
            if any(r.status == Status.CHANGED for r in batch):
                status = Status.CHANGED
        elapsed = time.monotonic() - started
        report = StepReport(step, status, elapsed, reports)
        detail = "; ".join(f"{r.host}: {r.detail}" for r in report.failures)
        self.ctx.sink(StepFinished(step.number, step.title, status, report.count(Status.CHANGED),
                                   report.count(Status.UNCHANGED), len(report.failures), elapsed, detail))
        return report

    def run(self, steps: Iterable[Step]) -> list[StepReport]:
        """Run steps in order; stop at the first that does not end well."""
        reports = []
        for step in steps:
            report = self.run_step(step)
            reports.append(report)
            if report.status in (Status.FAILED, Status.CANCELLED):
                break
        return reports
