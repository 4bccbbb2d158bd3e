"""The step engine with fake tasks: no host, no SSH, real threads."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from kbpg_tui.core import credentials as creds
from kbpg_tui.core.engine import Context, Engine, Outcome, Step, Task, TaskError, TaskRun
from kbpg_tui.core.events import EventCollector, Level, Message, OutputLine, Status, StepFinished, TaskFinished
from kbpg_tui.core.logs import REDACTED, register_secret
from kbpg_tui.core.settings import Settings
from kbpg_tui.core.ssh import Cancelled

from .fakes import FakePool


def _node(name: str, address: str) -> SimpleNamespace:
    return SimpleNamespace(hostname=name, ip_private=address, user_ssh="root")


def make_engine(events: EventCollector | None = None) -> tuple[Engine, EventCollector]:
    events = events if events is not None else EventCollector()
    selection = SimpleNamespace(
        db_nodes=[_node("db-1", "198.51.100.1"), _node("db-2", "198.51.100.2"), _node("db-3", "198.51.100.3")],
        haproxy_nodes=[_node("lb-1", "198.51.100.4"), _node("lb-2", "198.51.100.5")],
        warnings=[], source="servers.tsv")
    ctx = Context(Settings(), creds.Credentials(), selection, Path("/nonexistent"), FakePool(),  # type: ignore[arg-type]
                  events, threading.Event())
    return Engine(ctx), events


def finished(events: EventCollector) -> dict[tuple[str, str], TaskFinished]:
    return {(e.host, e.task): e for e in events.of_type(TaskFinished)}


def test_a_serial_task_stops_at_the_first_failure() -> None:
    engine, events = make_engine()
    ran: list[str] = []

    def rolling(run: TaskRun) -> Outcome:
        ran.append(run.host.name)
        if run.host.name == "db-2":
            raise TaskError("db-2: restart failed")
        return Outcome.changed()

    after = Task("after", "db", lambda run: ran.append("after") or Outcome.changed())
    report = engine.run_step(Step("02", "rolling", [Task("restart", "db", rolling, serial=True), after]))
    assert ran == ["db-1", "db-2"]  # db-3 is never touched, nor the next task
    assert report.status == Status.FAILED
    assert [(t.host, t.status) for t in report.tasks] == [("db-1", Status.CHANGED), ("db-2", Status.FAILED)]
    assert events.of_type(StepFinished)[0].detail == "db-2: db-2: restart failed"


def test_one_hosts_internal_error_leaves_the_others_work_intact() -> None:
    engine, events = make_engine()
    done: list[str] = []

    def work(run: TaskRun) -> Outcome:
        if run.host.name == "db-2":
            raise KeyError("bug")
        time.sleep(0.05)
        done.append(run.host.name)
        return Outcome.changed("configured")

    report = engine.run_step(Step("02", "parallel", [Task("configure", "all", work), Task("next", "all", work)]))
    assert sorted(done) == ["db-1", "db-3", "lb-1", "lb-2"]  # every other host finished its own work
    statuses = {t.host: t.status for t in report.tasks}
    assert statuses == {"db-1": Status.CHANGED, "db-2": Status.FAILED, "db-3": Status.CHANGED,
                        "lb-1": Status.CHANGED, "lb-2": Status.CHANGED}
    assert [t.host for t in report.tasks] == ["db-1", "db-2", "db-3", "lb-1", "lb-2"]  # in host order
    assert finished(events)[("db-2", "configure")].detail.startswith("internal error: KeyError")
    assert report.status == Status.FAILED and not any(t.task == "next" for t in report.tasks)


def test_warnings_become_message_events() -> None:
    engine, events = make_engine()
    task = Task("disk", "db", lambda run: Outcome.unchanged("ok", warnings=[f"{run.host.name}: /var is on XFS"]))
    report = engine.run_step(Step("01", "preflight", [task]))
    messages = events.of_type(Message)
    assert sorted((m.level, m.host, m.text) for m in messages) == [
        (Level.WARNING, f"db-{i}", f"db-{i}: /var is on XFS") for i in (1, 2, 3)]
    assert all(t.warnings for t in report.tasks)
    assert report.status == Status.UNCHANGED


def test_the_pool_is_told_which_step_runs() -> None:
    engine, _ = make_engine()
    seen: list[str] = []
    engine.run_step(Step("03", "haproxy", [Task("look", "haproxy", lambda run: seen.append(run.ctx.pool.step)
                                                or Outcome.unchanged())]))
    assert seen == ["03", "03"]


def test_cancel_ends_the_step_and_the_run() -> None:
    engine, events = make_engine()
    started = threading.Event()

    def cooperative(run: TaskRun) -> Outcome:
        started.set()
        while True:  # a remote command: the cancel closes its channel at once
            run.check_cancel()
            time.sleep(0.01)

    later = Task("later", "all", lambda run: pytest.fail("ran after the cancel"))
    steps = [Step("02", "one", [Task("wait", "all", cooperative), later]), Step("03", "two", [later])]
    threading.Thread(target=lambda: (started.wait(5), engine.ctx.cancel.set()), daemon=True).start()
    began = time.monotonic()
    reports = engine.run(steps)
    assert time.monotonic() - began < 1.0
    assert len(reports) == 1 and reports[0].status == Status.CANCELLED
    assert {t.status for t in reports[0].tasks} == {Status.CANCELLED}
    assert len(events.of_type(TaskFinished)) == 5


def test_cancel_returns_within_2_s_even_when_tasks_ignore_it() -> None:
    """A task stuck where no cancel reaches (a TCP connect, a sleep) is reported cancelled and left behind."""
    engine, events = make_engine()
    release = threading.Event()

    def stuck(run: TaskRun) -> Outcome:
        release.wait(30)
        return Outcome.changed("finished late")

    threading.Timer(0.2, engine.ctx.cancel.set).start()
    began = time.monotonic()
    report = engine.run_step(Step("02", "stuck", [Task("connect", "all", stuck)]))
    elapsed = time.monotonic() - began
    assert elapsed < 2.0, elapsed
    assert report.status == Status.CANCELLED
    assert [t.status for t in report.tasks] == [Status.CANCELLED] * 5
    assert all("re-run to continue" in t.detail for t in report.tasks)
    release.set()  # the abandoned tasks end now: they must not report a second time
    time.sleep(0.3)
    assert len(events.of_type(TaskFinished)) == 5


def test_a_serial_task_is_cancelled_too() -> None:
    engine, _ = make_engine()
    threading.Timer(0.2, engine.ctx.cancel.set).start()
    began = time.monotonic()
    report = engine.run_step(Step("02", "rolling", [Task("restart", "db", lambda run: time.sleep(30), serial=True)]))
    assert time.monotonic() - began < 2.0
    assert [(t.host, t.status) for t in report.tasks] == [("db-1", Status.CANCELLED)]


def test_a_cancelled_task_reports_itself_cancelled() -> None:
    engine, events = make_engine()

    def cancelled(run: TaskRun) -> Outcome:
        raise Cancelled(f"{run.host.name}: cancelled")

    report = engine.run_step(Step("02", "x", [Task("t", "db", cancelled)]))
    assert report.status == Status.CANCELLED
    assert all("may still finish" in t.detail for t in report.tasks)


def test_secrets_in_details_warnings_and_output_are_redacted_before_any_screen() -> None:
    secret = "Engine-secret-7Hq2kLm9"
    register_secret(secret)
    engine, events = make_engine()

    def leaky(run: TaskRun) -> Outcome:
        run.ctx.sink(OutputLine("02", run.host.name, "stdout", f"password={secret}"))  # raw, straight to the sink
        if run.host.name == "db-1":
            raise TaskError(f"psql failed: password {secret} rejected")
        return Outcome.changed(f"set to {secret}", warnings=[f"weak {secret}"])

    report = engine.run_step(Step("02", "x", [Task("t", "db", leaky)]))
    for event in events.events:
        assert secret not in repr(event), event
    assert any(REDACTED in e.text for e in events.of_type(OutputLine))
    for task in report.tasks:
        assert secret not in task.detail and all(secret not in w for w in task.warnings)


# --- Ctrl-C during `kbpg install` -------------------------------------------------------------------------

_INSTALL_WITH_STUCK_HOSTS = r'''
import sys, threading, time
from pathlib import Path
from types import SimpleNamespace
from kbpg_tui import cli
from kbpg_tui.core import credentials as creds, install as inst, runlock, steps as steps_module
from kbpg_tui.core.engine import Context, Engine, Outcome, Step, Task
from tests.fakes import FakePool

def node(name, address):
    return SimpleNamespace(hostname=name, ip_private=address, user_ssh="root")

def prepare(workdir, settings, sink, prompt=None, cancel=None, selection=None):
    selection = SimpleNamespace(db_nodes=[node("db-1", "198.51.100.1"), node("db-2", "198.51.100.2"),
                                          node("db-3", "198.51.100.3")],
                                haproxy_nodes=[node("lb-1", "198.51.100.4")], backup_nodes=[], warnings=[],
                                source="servers.tsv")
    ctx = Context(settings, creds.Credentials(), selection, workdir, FakePool(), sink, cancel or threading.Event())
    return inst.Run(ctx, Engine(ctx))

def stuck(run):  # where no cancel reaches: a TCP connect to a host that went away, a long sleep
    time.sleep(120)
    return Outcome.changed()

inst.prepare = prepare
runlock.changes_hosts = lambda steps: False
steps_module.install_steps = lambda only=None: [Step("01", "Slow", [Task("quick", "all", lambda run: Outcome.unchanged()),
                                                                    Task("stuck", "all", stuck)])]
sys.exit(cli.main(["--workdir", sys.argv[1], "install", "--yes"]))
'''


def test_sigint_during_install_cancels_every_host_within_2_s_prints_the_summary_and_exits_130(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from kbpg_tui.core.settings import save_settings

    save_settings(Settings(), tmp_path / "kbpg.toml")
    process = subprocess.Popen([sys.executable, "-c", _INSTALL_WITH_STUCK_HOSTS, str(tmp_path)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "quick" in line and "lb-1" in line:  # the first task is done on every host; all four are now stuck
            break
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    try:
        code = process.wait(timeout=10)
    finally:
        process.kill()
    elapsed = time.monotonic() - interrupted
    output = "".join(lines) + process.stdout.read()
    assert code == 130, output + process.stderr.read()
    assert elapsed < 2.0, f"{elapsed:.1f} s\n{output}"
    assert "Summary: changed 0, unchanged 4, failed 0, cancelled 4" in output
    assert "NOT done: interrupted (Ctrl-C); run the same command again to continue." in output
    assert output.count(" stuck ") == 4 and output.count("cancelled ") >= 4
