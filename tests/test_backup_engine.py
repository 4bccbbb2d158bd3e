"""The engine and the backup host: Context.backup_hosts/backup_host/host(), task scope "backup" (skipped cleanly
without a backup host or with backups off), scope "all" still the DB and HAProxy nodes. No host, no SSH."""

from __future__ import annotations

import threading
from pathlib import Path

from kbpg_tui.core import credentials as creds
from kbpg_tui.core import inventory as inv
from kbpg_tui.core.engine import CLUSTER, Context, Engine, Outcome, Step, Task, TaskRun
from kbpg_tui.core.events import EventCollector, Status, StepStarted, TaskFinished
from kbpg_tui.core.settings import Settings, from_dict
from kbpg_tui.core.ssh import Host

from .fakes import FakePool


def _engine(selection: inv.Selection, settings: Settings | None = None) -> tuple[Engine, EventCollector]:
    events = EventCollector()
    ctx = Context(settings or Settings(), creds.Credentials(), selection, Path("/nonexistent"), FakePool(),  # type: ignore[arg-type]
                  events, threading.Event())
    return Engine(ctx), events


def _without_backup_host(real_inventory: Path, tmp_path: Path) -> inv.Selection:
    path = tmp_path / "servers.tsv"
    path.write_text("".join(line for line in real_inventory.read_text().splitlines(keepends=True)
                            if "\tbackup-01\t" not in line))
    return inv.load_selection(path)


def _where(engine: Engine) -> dict[str, list[str]]:
    ran: dict[str, list[str]] = {}

    def record(name: str):
        def task(run: TaskRun) -> Outcome:
            ran.setdefault(name, []).append(run.host.name if run.host else CLUSTER)
            return Outcome.unchanged("looked")
        return task

    engine.run_step(Step("01", "scopes", [Task(scope, scope, record(scope))
                                          for scope in ("all", "db", "haproxy", "backup", "cluster")]))
    return ran


def test_context_names_the_backup_host(real_inventory: Path) -> None:
    engine, _ = _engine(inv.load_selection(real_inventory))
    ctx = engine.ctx
    assert ctx.backup_hosts == [Host("backup-01", "10.0.0.153", "root")]
    assert ctx.backup_host == Host("backup-01", "10.0.0.153", "root")
    assert ctx.host("backup-01") == ctx.backup_host  # found by name like the cluster's nodes
    assert ctx.host("db-slave-02").address == "10.0.0.122"
    assert ctx.backup_skip_reason() is None


def test_scope_backup_runs_on_the_backup_host_only_and_all_stays_the_cluster(real_inventory: Path) -> None:
    engine, events = _engine(inv.load_selection(real_inventory))
    ran = _where(engine)
    assert ran["backup"] == ["backup-01"]
    assert ran["all"] == ["db-master-01", "db-slave-01", "db-slave-02", "haproxy-01", "haproxy-02"]
    assert "backup-01" not in ran["db"] + ran["haproxy"] and ran["cluster"] == [CLUSTER]
    assert "backup-01" in events.of_type(StepStarted)[0].hosts


def test_scope_backup_is_skipped_when_no_backup_host_is_selected(real_inventory: Path, tmp_path: Path) -> None:
    engine, events = _engine(_without_backup_host(real_inventory, tmp_path))
    assert engine.ctx.backup_hosts == [] and engine.ctx.backup_host is None
    ran = _where(engine)
    assert "backup" not in ran and len(ran["all"]) == 5  # the other tasks ran, the step went on
    skipped = [e for e in events.of_type(TaskFinished) if e.task == "backup"]
    assert [(e.host, e.status) for e in skipped] == [(CLUSTER, Status.SKIPPED)]
    assert skipped[0].detail == ("no backup host matches ENV=prod, ROLE=backup, SUBROLE=backup "
                                 "([inventory.backup_rule]): backups are not set up")
    assert "backup-01" not in events.of_type(StepStarted)[0].hosts


def test_a_skipped_backup_task_does_not_fail_or_change_the_step(real_inventory: Path, tmp_path: Path) -> None:
    engine, _ = _engine(_without_backup_host(real_inventory, tmp_path))
    never = Task("backup only", "backup", lambda run: (_ for _ in ()).throw(AssertionError("ran")))
    report = engine.run_step(Step("06", "Backups", [never, Task("after", "cluster", lambda run: Outcome.unchanged())]))
    assert report.status == Status.UNCHANGED and report.failures == []
    assert [(t.task, t.status) for t in report.tasks] == [("backup only", Status.SKIPPED), ("after", Status.UNCHANGED)]
    assert report.count(Status.SKIPPED) == 1


def test_scope_backup_is_skipped_when_backups_are_turned_off(real_inventory: Path) -> None:
    engine, events = _engine(inv.load_selection(real_inventory), from_dict({"backup": {"enabled": False}}))
    assert engine.ctx.backup_host is not None  # still selected: the inventory did not change
    ran = _where(engine)
    assert "backup" not in ran
    skipped = [e for e in events.of_type(TaskFinished) if e.task == "backup"]
    assert [(e.host, e.status) for e in skipped] == [(CLUSTER, Status.SKIPPED)]
    assert "[backup] enabled = false" in skipped[0].detail


def test_the_install_summary_counts_a_skipped_task_as_nothing_done(real_inventory: Path, tmp_path: Path) -> None:
    from kbpg_tui.core.install import summarize

    engine, _ = _engine(_without_backup_host(real_inventory, tmp_path))
    report = engine.run_step(Step("06", "Backups", [Task("x", "backup", lambda run: Outcome.changed())]))
    assert summarize([report]) == {"changed": 0, "unchanged": 0, "failed": 0, "cancelled": 0}
