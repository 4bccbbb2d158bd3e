"""Issue 16 through the install, without a host: ``kbpg install`` showing the node plan and carrying it out with the
operator's yes (cli._install_node_changes), step 02's refusal of node changes (s02_patroni.refuse_node_changes),
Raft's membership change asked again while Raft refuses (nodes_apply.change_membership), and the script that moves
aside what kbpg's removal of a node left before it joins again (nodes_apply.rejoin_script) with the Applier's use of
its answer."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from kbpg_tui import cli
from kbpg_tui.core import credentials as creds
from kbpg_tui.core import install as inst
from kbpg_tui.core import nodes, raft, runlock
from kbpg_tui.core.engine import Context, Engine, StepReport, TaskError, TaskRun
from kbpg_tui.core.events import EventCollector, Status
from kbpg_tui.core.ops import nodes_apply
from kbpg_tui.core.settings import Settings
from kbpg_tui.core.ssh import Host
from kbpg_tui.core.steps import s02_patroni

from .fakes import FakePool, LocalShellConnection, ScriptedConnection, result
from .test_nodes_apply import REPLACED, Cluster, target
from .test_nodes_plan import DB3, membership, workdir  # noqa: F401 (a fixture)

SWAPPED = {"db-master-01": "198.18.0.120", "db-spare-01": "198.18.0.123", "db-spare-02": "198.18.0.124"}


# --- kbpg install: the node plan before the install's steps ------------------------------------------------------

class Install:
    """``kbpg install`` in-process with install.prepare faked: servers.tsv's selection is ``db``; the running cluster
    (nodes.read_membership) is ``running`` (None: no cluster); every call worth seeing lands in ``log``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, workdir: Path, db: dict[str, str],  # noqa: F811
                 running: nodes.Membership | None, ok: bool = True, later: nodes.Membership | None = None):
        """``later``: what the cluster reads from the second read on (under the lock); default ``running``."""
        self.workdir = workdir
        self.log: list[tuple] = []
        self.applied_with: list[nodes.Membership] = []
        self.reads = 0
        self.ok = ok
        self.selection = target(db)
        self.ctx = SimpleNamespace(selection=self.selection, cancel=threading.Event(), state={}, workdir=workdir)
        engine = SimpleNamespace(run=lambda steps: self.log.append(("engine", [s.number for s in steps])) or [
            StepReport(step, Status.UNCHANGED, 0.0, []) for step in steps])
        self.run = SimpleNamespace(ctx=self.ctx, engine=engine, close=lambda: self.log.append(("close",)))
        unread = nodes.Membership(7000, [], [], [], False, None)

        def read_membership(ctx, timeout: float = 20.0) -> nodes.Membership:  # noqa: ANN001
            self.log.append(("read", ctx is self.ctx))
            self.reads += 1
            if later is not None and self.reads > 1:
                return later
            return running if running is not None else unread

        def acquire_for_run(run, command: str):  # noqa: ANN001, ANN202
            self.log.append(("lock", run is self.run, command))
            return SimpleNamespace(release=lambda: self.log.append(("release",)))

        def apply(run, found, plan):  # noqa: ANN001, ANN202
            self.log.append(("apply", run is self.run, found is (later or running),
                             [(a.kind, a.node) for a in plan.actions]))
            self.applied_with.append(found)
            return nodes_apply.ApplyResult(plan, after=nodes.Plan() if self.ok else None,
                                           error="" if self.ok else "step 1 (remove ...) did not end: refused")

        real_plan = nodes.plan

        def plan(selection, found):  # noqa: ANN001, ANN202
            self.log.append(("plan",))
            return real_plan(selection, found)

        monkeypatch.setattr(inst, "prepare", lambda *a, **k: self.run)
        monkeypatch.setattr(nodes, "plan", plan)
        monkeypatch.setattr(nodes, "read_membership", read_membership)
        monkeypatch.setattr(runlock, "acquire_for_run", acquire_for_run)
        monkeypatch.setattr(runlock, "changes_hosts", lambda steps: False)  # the install's own lock: not this test's
        monkeypatch.setattr(nodes_apply, "apply", apply)

    def main(self, *args: str) -> int:
        return cli.main(["--workdir", str(self.workdir), "install", *args])

    def kinds(self) -> list[str]:
        return [entry[0] for entry in self.log]


def test_no_cluster_yet_the_install_goes_on(workdir: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                            capsys) -> None:
    fake = Install(monkeypatch, workdir, REPLACED, running=None)
    assert cli._install_node_changes(SimpleNamespace(step=None, yes=True, workdir=workdir), fake.run, False) is None
    assert fake.main("--yes") == 0
    assert fake.kinds() == ["read", "read", "engine", "close"]  # not even planned; nothing locked or applied
    assert "servers.tsv changes the running cluster's nodes" not in capsys.readouterr().out


def test_nothing_to_change_the_install_goes_on(workdir: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                               capsys) -> None:
    fake = Install(monkeypatch, workdir, DB3, running=membership(DB3))
    assert cli._install_node_changes(SimpleNamespace(step=None, yes=True, workdir=workdir), fake.run, False) is None
    assert fake.main("--yes") == 0
    assert fake.kinds() == ["read", "plan", "read", "plan", "engine", "close"]
    assert "servers.tsv changes" not in capsys.readouterr().out


def test_a_refused_plan_exits_2_with_the_reason_and_nothing_applied(workdir: Path,  # noqa: F811
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys) -> None:
    fake = Install(monkeypatch, workdir, SWAPPED, running=membership(DB3))
    assert fake.main("--yes") == 2
    captured = capsys.readouterr()
    assert "servers.tsv changes the running cluster's nodes:" in captured.out
    assert "kbpg install: refused: 2 of the 3 Raft members would leave in one plan" in captured.err
    assert fake.kinds() == ["read", "plan", "close"]  # no lock, no apply, no install


def test_install_step_02_with_node_changes_exits_2_naming_nodes_apply(workdir: Path,  # noqa: F811
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys) -> None:
    fake = Install(monkeypatch, workdir, REPLACED, running=membership(DB3))
    assert fake.main("--yes", "--step", "02") == 2
    captured = capsys.readouterr()
    assert "run `kbpg nodes apply`" in captured.err and "kbpg install --step" in captured.err
    assert "2. add db-slave-01 (198.18.0.123)" in captured.out  # the plan is shown
    assert fake.kinds() == ["read", "plan", "close"]


@pytest.mark.parametrize("step", ["03", "04", "05", "06", "1,3"])
def test_install_step_03_to_06_with_node_changes_exits_2_naming_nodes_apply(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys, step: str) -> None:  # noqa: F811
    # Any step from 02 on writes what names the nodes (patroni.yml, HAProxy's backends, PgBouncer, pgBackRest).
    fake = Install(monkeypatch, workdir, REPLACED, running=membership(DB3))
    assert fake.main("--yes", "--step", step) == 2
    captured = capsys.readouterr()
    assert "run `kbpg nodes apply`" in captured.err and "kbpg install --step" in captured.err
    assert fake.kinds() == ["read", "plan", "close"]  # nothing locked, applied or run


@pytest.mark.parametrize("step", ["00", "01", "0,1"])
def test_install_step_00_or_01_does_not_look_for_node_changes(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, step: str) -> None:  # noqa: F811
    fake = Install(monkeypatch, workdir, REPLACED, running=membership(DB3))
    called: list[object] = []
    monkeypatch.setattr(cli, "_install_node_changes", lambda *a: called.append(a))
    assert fake.main("--yes", "--step", step) == 0
    assert called == [] and fake.kinds() == ["engine", "close"]
    assert fake.log[0] == ("engine", sorted({"00": ["00"], "01": ["01"], "0,1": ["00", "01"]}[step]))
    assert fake.main("--yes", "--step", "01,03") == 0  # with a step from 02 on among them it is asked
    assert len(called) == 1


@pytest.mark.parametrize("pending", ["credentials/rotation.pending", "restore.pending"])
def test_a_full_install_with_a_rotation_or_restore_pending_does_not_look_for_node_changes(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, pending: str) -> None:  # noqa: F811
    # Step 00 refuses first, naming what pends: no switchover or removal before that.
    from kbpg_tui.core import rotation
    from kbpg_tui.core.ops import restore

    assert pending in (str(rotation.PENDING_FILE), str(restore.PENDING_FILE))
    fake = Install(monkeypatch, workdir, REPLACED, running=membership(DB3))
    (workdir / pending).write_text("{}\n")
    assert cli._install_node_changes(SimpleNamespace(step=None, yes=True, workdir=workdir), fake.run, False) is None
    assert fake.main("--yes") == 0  # the engine is faked: its step 00 would refuse
    assert "read" not in fake.kinds() and "apply" not in fake.kinds()
    assert fake.kinds() == ["engine", "close"]


@pytest.mark.parametrize("ok, code", [(True, 0), (False, 1)])
def test_install_yes_takes_the_lock_applies_the_plan_and_exits_by_its_result(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys, ok: bool, code: int) -> None:  # noqa: F811
    running = membership(DB3)
    fake = Install(monkeypatch, workdir, REPLACED, running=running, ok=ok)
    assert fake.main("--yes") == code
    assert fake.log == [("read", True), ("plan",), ("lock", True, "kbpg install --yes (nodes apply)"),
                        ("read", True), ("plan",),  # under the lock: the cluster read and the plan made again
                        ("apply", True, True, [("remove", "db-slave-01"), ("add", "db-slave-01")]),
                        ("release",), ("close",)]  # the apply ends with the whole install: no second run of it
    out = capsys.readouterr().out
    assert ("Done in " in out) if ok else ("NOT done after" in out)


@pytest.mark.parametrize("answer", ["n", "y"])
def test_at_a_terminal_the_plan_is_carried_out_only_with_the_operators_yes(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys, answer: str) -> None:  # noqa: F811
    import builtins
    import sys

    fake = Install(monkeypatch, workdir, REPLACED, running=membership(DB3))
    questions: list[str] = []
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(isatty=lambda: True))
    monkeypatch.setattr(builtins, "input", lambda prompt="": questions.append(prompt) or answer)
    assert fake.main() == 0
    assert len(questions) == 1 and questions[0].startswith("Carry out these 2 steps, then the install")
    if answer == "n":
        assert fake.kinds() == ["read", "plan", "close"] and "Nothing done." in capsys.readouterr().out
    else:
        assert fake.kinds() == ["read", "plan", "lock", "read", "plan", "apply", "release", "close"]


def test_the_lock_is_released_when_the_apply_raises(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    fake = Install(monkeypatch, workdir, REPLACED, running=membership(DB3))

    def broken(run, found, plan):  # noqa: ANN001, ANN202
        fake.log.append(("apply",))
        raise RuntimeError("boom")

    monkeypatch.setattr(nodes_apply, "apply", broken)
    assert fake.main("--yes") == 1  # cli.main: one line naming the error, its traceback in the log
    assert fake.kinds() == ["read", "plan", "lock", "read", "plan", "apply", "release", "close"]


# --- locked_apply: the cluster read again under the lock ------------------------------------------------------------

def test_a_plan_that_changed_under_the_lock_is_not_carried_out_and_exits_1(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # noqa: F811
    # A failover while the operator read the plan: the replica that leaves now leads (a switchover first now).
    fake = Install(monkeypatch, workdir, REPLACED, running=membership(DB3), later=membership(DB3, leader="db-slave-01"))
    assert fake.main("--yes") == 1
    assert fake.kinds() == ["read", "plan", "lock", "read", "plan", "release", "close"]  # nothing applied
    err = capsys.readouterr().err
    assert "kbpg install --yes (nodes apply): the cluster changed since the plan was shown; nothing was done" in err
    assert "1. switch over: Patroni's leader db-slave-01" in err  # the plan now


def test_a_plan_refused_under_the_lock_is_not_carried_out_and_exits_2(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # noqa: F811
    fake = Install(monkeypatch, workdir, REPLACED, running=membership(DB3),
                   later=membership(DB3, dead=("db-master-01", "db-slave-02")))
    assert fake.main("--yes") == 2
    assert "apply" not in fake.kinds() and fake.kinds()[-2:] == ["release", "close"]
    err = capsys.readouterr().err
    assert "the cluster changed since the plan was shown; nothing was done" in err and "Raft has no quorum now" in err


def test_the_same_plan_under_the_lock_is_carried_out_with_the_membership_read_then(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    running, later = membership(DB3), membership(DB3)
    fake = Install(monkeypatch, workdir, REPLACED, running=running, later=later)
    assert fake.main("--yes") == 0
    assert fake.applied_with == [later] and fake.applied_with[0] is later and later is not running


def test_nodes_apply_under_the_lock_with_a_changed_plan_applies_nothing(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # noqa: F811
    fake = Install(monkeypatch, workdir, REPLACED, running=membership(DB3), later=membership(DB3, leader="db-slave-01"))
    assert cli.main(["--workdir", str(workdir), "nodes", "apply", "--yes"]) == 1
    assert "apply" not in fake.kinds() and ("release",) in fake.log
    assert "kbpg nodes apply: the cluster changed since the plan was shown" in capsys.readouterr().err


# --- nodes.pending: a run stopped after its last membership step ------------------------------------------------

def test_nodes_apply_with_an_empty_plan_and_the_pending_file_runs_the_install_and_removes_it(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # noqa: F811
    real_apply = nodes_apply.apply
    fake = Install(monkeypatch, workdir, DB3, running=membership(DB3))
    monkeypatch.setattr(nodes_apply, "apply", real_apply)  # the Applier, with an empty plan
    pending = workdir / nodes_apply.PENDING_FILE
    pending.write_text('{"steps": ["add db-slave-03"]}\n')
    assert cli.main(["--workdir", str(workdir), "nodes", "apply", "--yes"]) == 0
    assert fake.kinds() == ["read", "plan", "lock", "read", "plan", "engine", "read", "plan", "release", "close"]
    assert ("engine", ["00", "01", "02", "03", "04", "05", "06"]) in fake.log  # the whole install on the new set
    assert not pending.exists()
    out = capsys.readouterr().out
    assert "did not finish" in out and "Done in " in out


def test_nodes_apply_with_the_pending_file_keeps_it_when_the_install_fails(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    real_apply = nodes_apply.apply
    fake = Install(monkeypatch, workdir, DB3, running=membership(DB3))
    monkeypatch.setattr(nodes_apply, "apply", real_apply)
    fake.run.engine.run = lambda steps: [StepReport(steps[0], Status.FAILED, 0.0, [])]
    pending = workdir / nodes_apply.PENDING_FILE
    pending.write_text("{}\n")
    assert cli.main(["--workdir", str(workdir), "nodes", "apply", "--yes"]) == 1
    assert pending.exists()


def test_nodes_apply_with_an_empty_plan_and_no_pending_file_runs_nothing(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # noqa: F811
    fake = Install(monkeypatch, workdir, DB3, running=membership(DB3))
    assert cli.main(["--workdir", str(workdir), "nodes", "apply", "--yes"]) == 0
    assert fake.kinds() == ["read", "plan", "close"]  # no lock, no apply, no install
    assert "did not finish" not in capsys.readouterr().out


def test_a_busy_lock_exits_3_and_nothing_is_applied(workdir: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                                    capsys) -> None:
    fake = Install(monkeypatch, workdir, REPLACED, running=membership(DB3))

    def busy(run, command: str):  # noqa: ANN001, ANN202
        raise runlock.LockBusy(SimpleNamespace(refusal=lambda: "the cluster is locked by kbpg install elsewhere"))

    monkeypatch.setattr(runlock, "acquire_for_run", busy)
    assert fake.main("--yes") == cli.EXIT_BUSY
    assert "locked by kbpg install" in capsys.readouterr().err
    assert "apply" not in fake.kinds() and "engine" not in fake.kinds()


# --- step 02's refusal -----------------------------------------------------------------------------------------

def task_run(db: dict[str, str], state: dict | None = None) -> TaskRun:
    ctx = SimpleNamespace(selection=target(db), state=dict(state or {}), cancel=threading.Event())
    return TaskRun(ctx, "02", None)  # type: ignore[arg-type]


def reads(monkeypatch: pytest.MonkeyPatch, running: nodes.Membership | None) -> list[str]:
    asked: list[str] = []

    def read_membership(ctx, timeout: float = 20.0) -> nodes.Membership:  # noqa: ANN001
        asked.append("read")
        if running is None:
            return nodes.Membership(7000, [], [], [], False, None)
        return running

    real_plan = nodes.plan

    def plan(selection, found):  # noqa: ANN001, ANN202
        asked.append("plan")
        return real_plan(selection, found)

    monkeypatch.setattr(nodes, "read_membership", read_membership)
    monkeypatch.setattr(nodes, "plan", plan)
    return asked


def test_step_02_does_not_look_during_kbpg_nodes_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = reads(monkeypatch, membership(DB3))
    outcome = s02_patroni.refuse_node_changes(task_run(REPLACED, {s02_patroni.NODES_APPLY: True}))
    assert outcome.status == Status.UNCHANGED and asked == []


@pytest.mark.parametrize("db, running, asks", [(REPLACED, None, ["read"]), (DB3, membership(DB3), ["read", "plan"])])
def test_step_02_goes_on_without_a_cluster_or_without_changes(monkeypatch: pytest.MonkeyPatch, db: dict[str, str],
                                                               running: nodes.Membership | None,
                                                               asks: list[str]) -> None:
    asked = reads(monkeypatch, running)
    assert s02_patroni.refuse_node_changes(task_run(db)).status == Status.UNCHANGED
    assert asked == asks  # no cluster: nothing planned (servers.tsv against nothing is no change)


def test_step_02_refuses_node_changes_naming_each_step_and_kbpg_nodes_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    reads(monkeypatch, membership(DB3))
    with pytest.raises(TaskError) as caught:
        s02_patroni.refuse_node_changes(task_run(REPLACED))
    text = str(caught.value)
    assert "1. remove db-slave-01's old address 198.18.0.121:7000" in text and "2. add db-slave-01 (198.18.0.123)" in text
    assert "`kbpg nodes apply`" in text and "nothing was written" in text
    assert "refused now" not in text


def test_step_02_names_why_the_plan_would_be_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    reads(monkeypatch, membership(DB3))
    with pytest.raises(TaskError) as caught:
        s02_patroni.refuse_node_changes(task_run(SWAPPED))
    assert "it would be refused now: 2 of the 3 Raft members would leave in one plan" in str(caught.value)
    assert "`kbpg nodes apply`" in str(caught.value)


def test_step_02_refuses_before_anything_is_written(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert s02_patroni.STEP.tasks[0].function is s02_patroni.refuse_node_changes
    reads(monkeypatch, membership(DB3))
    scripts: list[str] = []
    wanted = target(REPLACED)
    pool = FakePool({s.hostname: ScriptedConnection(Host(s.hostname, s.ip_private),
                                                    lambda script, stdin: scripts.append(script) or result(""))
                     for s in (*wanted.db_nodes, *wanted.haproxy_nodes)})
    ctx = Context(Settings(), creds.Credentials(), wanted, tmp_path, pool, EventCollector(),  # type: ignore[arg-type]
                  threading.Event())
    report = Engine(ctx).run_step(s02_patroni.STEP)
    assert report.status == Status.FAILED
    assert [t.task for t in report.tasks] == ["nodes"] and scripts == []  # not one script ran on a host


# --- change_membership: Raft asked again while it refuses -------------------------------------------------------

NEW = "198.18.0.123:7000"
MASTER, SLAVE1, SLAVE2 = (Host(n, DB3[n]) for n in ("db-master-01", "db-slave-01", "db-slave-02"))
JOINING = Host("db-slave-03", "198.18.0.123")


class RaftFake:
    """A run whose Raft answers ``answers`` in turn (the last one for ever); the change is in effect once
    ``applied`` (set by an answer marked ``+``); membership_views faked from it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: list[str], command: str = "add",
                 address: str = NEW, applied: bool = False, wait: float = 10.0):
        self.answers, self.sent, self.applied, self.asked = list(answers), [], applied, 0
        self.ctx = SimpleNamespace(sink=lambda event: None)
        base = {f"{ip}:7000" for ip in DB3.values()}

        def views(run, hosts: list[Host]) -> dict[str, set[str] | None]:  # noqa: ANN001
            self.asked += 1
            has = self.applied == (command == "add")
            members = base | {address} if has else base - {address}
            # the joining node already lists itself (its Patroni started with the members as partners)
            return {h.name: (members | {address} if h is JOINING else members) for h in hosts}

        monkeypatch.setattr(nodes_apply, "membership_views", views)
        monkeypatch.setattr(nodes_apply, "RAFT_WAIT", wait)
        monkeypatch.setattr(nodes_apply, "POLL", 0.001)

    def check_cancel(self) -> None:
        pass

    def run(self, script: str, host: Host | None = None, **kwargs) -> SimpleNamespace:  # noqa: ANN003
        assert host is not None and "change_raft(" in script
        self.sent.append(host.name)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer.startswith("+"):
            self.applied, answer = True, answer[1:]
        return SimpleNamespace(stdout=answer.replace("#", str(len(self.sent))) + "\n", stderr="", exit_status=0)


REFUSED = f"r:refused add {NEW} FAILED ADD {NEW} try-#;"


def test_raft_refusing_twice_then_committing_is_a_success_after_the_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = RaftFake(monkeypatch, [REFUSED, REFUSED, f"+r:changed add {NEW}"])
    text = nodes_apply.change_membership(fake, [MASTER, SLAVE1], "add", NEW)  # type: ignore[arg-type]
    assert fake.sent == ["db-master-01", "db-slave-01", "db-master-01"]  # asked again, round after round
    assert text == f"Raft add {NEW}: committed (sent on db-master-01) after 2 refusal(s)"


def test_a_refusal_whose_change_is_in_effect_all_the_same_is_a_success(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = RaftFake(monkeypatch, [f"+r:refused remove {SLAVE2.address}:7000 timed out"], command="remove",
                    address=f"{SLAVE2.address}:7000")
    text = nodes_apply.change_membership(fake, [MASTER, SLAVE1], "remove", f"{SLAVE2.address}:7000")  # type: ignore
    assert fake.sent == ["db-master-01"]
    assert text == f"Raft remove {SLAVE2.address}:7000: in effect (sent on db-master-01, whose answer was refused)"


def test_raft_refusing_until_the_wait_ends_names_the_last_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = RaftFake(monkeypatch, [REFUSED], wait=0.3)
    with pytest.raises(TaskError) as caught:
        nodes_apply.change_membership(fake, [MASTER, SLAVE1], "add", NEW)  # type: ignore[arg-type]
    text = str(caught.value)
    rounds = len(fake.sent)
    assert rounds >= 4 and rounds % 2 == 0  # asked on both members, round after round, until RAFT_WAIT
    assert text.startswith(f"Raft's membership change (add {NEW}) was not taken: ")
    assert f"db-master-01: refused add {NEW} FAILED ADD {NEW} try-{rounds - 1};" in text
    assert f"db-slave-01: refused add {NEW} FAILED ADD {NEW} try-{rounds};" in text
    assert f"try-{rounds - 2};" not in text  # only the last round's answers
    assert "run `kbpg nodes plan`" in text


def test_a_change_already_in_effect_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = RaftFake(monkeypatch, [f"r:changed add {NEW}"], applied=True)
    text = nodes_apply.change_membership(fake, [MASTER, SLAVE1, SLAVE2], "add", NEW)  # type: ignore[arg-type]
    assert fake.sent == [] and text == f"{NEW} already in Raft's membership (nothing sent)"


def test_an_add_is_never_sent_on_the_joining_node_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    # The joining node answers first and lists itself: it neither takes the change nor counts as having it.
    fake = RaftFake(monkeypatch, [REFUSED, f"+r:changed add {NEW}"])
    text = nodes_apply.change_membership(fake, [JOINING, MASTER, SLAVE1], "add", NEW)  # type: ignore[arg-type]
    assert fake.sent == ["db-master-01", "db-slave-01"]
    assert "committed (sent on db-slave-01) after 1 refusal(s)" in text
    # Only the joining node answering: nothing to send it on, a TaskError.
    alone = RaftFake(monkeypatch, [f"+r:changed add {NEW}"])
    with pytest.raises(TaskError, match="no member that stays answered"):
        nodes_apply.change_membership(alone, [JOINING], "add", NEW)  # type: ignore[arg-type]
    assert alone.sent == []


# --- rejoin_script: what kbpg's removal left, moved aside before the node joins again ---------------------------

STAMP = "20261126-201500"


def rejoin_node(tmp_path: Path, patroni_active: bool, removed: bool,
                data_files: bool = True, raft_files: bool = True) -> tuple[LocalShellConnection, Path, Path, Path]:
    """A node's shell with systemctl faked on PATH (``is-active`` by ``patroni_active``), its patroni.yml's
    directory in tmp (a ``config.yml.removed-*`` there when ``removed``), a data directory and a Raft journal."""
    bin_dir, etc = tmp_path / "bin", tmp_path / "etc"
    bin_dir.mkdir()
    etc.mkdir()
    log = tmp_path / "systemctl.log"
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {log}\nexit {0 if patroni_active else 3}\n')
    (bin_dir / "systemctl").chmod(0o755)
    if removed:
        (etc / "config.yml.removed-20261120-101010").write_text("raft:\n  self_addr: 198.18.0.121:7000\n")
    data, journal = tmp_path / "data dir", tmp_path / "raft"  # a space: the script quotes its paths
    data.mkdir()
    journal.mkdir()
    if data_files:
        (data / "PG_VERSION").write_text("16\n")
    if raft_files:
        (journal / "journal").write_text("old log\n")
    connection = LocalShellConnection(Host("db-slave-01", "198.18.0.121"), {raft.PATRONI_CONFIG: etc / "config.yml"})
    handler = connection.handler
    connection.handler = lambda script, stdin: handler(f'export PATH="{bin_dir}:$PATH"\n' + script, stdin)
    return connection, data, journal, log


def names(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name not in ("bin", "etc", "systemctl.log"))


def test_rejoin_when_patroni_runs_says_active_and_moves_nothing(tmp_path: Path) -> None:
    connection, data, journal, log = rejoin_node(tmp_path, patroni_active=True, removed=True)
    done = connection.run(nodes_apply.rejoin_script(str(data), str(journal), STAMP))
    assert done.stdout.split() == ["active"] and done.exit_status == 0
    assert names(tmp_path) == ["data dir", "raft"] and (data / "PG_VERSION").exists()
    assert "is-active --quiet patroni" in log.read_text()


def test_rejoin_of_a_node_kbpg_never_removed_moves_nothing(tmp_path: Path) -> None:
    connection, data, journal, _log = rejoin_node(tmp_path, patroni_active=False, removed=False)
    done = connection.run(nodes_apply.rejoin_script(str(data), str(journal), STAMP))
    assert done.stdout == "" and done.exit_status == 0
    assert names(tmp_path) == ["data dir", "raft"] and (journal / "journal").exists()


def test_rejoin_of_a_removed_node_renames_its_data_and_raft_journal_aside_without_deleting(tmp_path: Path) -> None:
    connection, data, journal, _log = rejoin_node(tmp_path, patroni_active=False, removed=True)
    done = connection.run(nodes_apply.rejoin_script(str(data), str(journal), STAMP))
    assert done.stdout.splitlines() == [f"moved {data}", f"moved {journal}"]
    assert names(tmp_path) == [f"data dir.before-join-{STAMP}", f"raft.before-join-{STAMP}"]
    assert (tmp_path / f"data dir.before-join-{STAMP}" / "PG_VERSION").read_text() == "16\n"  # kept, not deleted
    assert (tmp_path / f"raft.before-join-{STAMP}" / "journal").read_text() == "old log\n"
    # the marker acted on is renamed (kept, not deleted): a later add of this node does not move aside what it holds
    assert sorted(p.name for p in (tmp_path / "etc").iterdir()) == [
        f"config.yml.joined-{STAMP}-was-removed-20261120-101010"]
    assert (tmp_path / "etc" / f"config.yml.joined-{STAMP}-was-removed-20261120-101010").read_text() == \
        "raft:\n  self_addr: 198.18.0.121:7000\n"


def test_a_second_rejoin_moves_nothing_the_node_holds_by_then(tmp_path: Path) -> None:
    connection, data, journal, _log = rejoin_node(tmp_path, patroni_active=False, removed=True)
    first = connection.run(nodes_apply.rejoin_script(str(data), str(journal), STAMP))
    assert first.stdout.splitlines() == [f"moved {data}", f"moved {journal}"]
    data.mkdir()  # the node joined: its new data directory and Raft journal
    journal.mkdir()
    (data / "PG_VERSION").write_text("16 new\n")
    (journal / "journal").write_text("new log\n")
    again = connection.run(nodes_apply.rejoin_script(str(data), str(journal), "20261127-090000"))
    assert again.stdout == "" and again.exit_status == 0
    assert (data / "PG_VERSION").read_text() == "16 new\n" and (journal / "journal").read_text() == "new log\n"
    assert names(tmp_path) == ["data dir", f"data dir.before-join-{STAMP}", "raft", f"raft.before-join-{STAMP}"]


def test_rejoin_whose_move_fails_says_nothing_moved_and_keeps_the_marker(tmp_path: Path) -> None:
    connection, data, journal, _log = rejoin_node(tmp_path, patroni_active=False, removed=True)
    mv = tmp_path / "bin" / "mv"  # the data directory is a mount point: mv refuses it
    mv.write_text('#!/bin/sh\ncase "$1" in *"data dir") echo "mv: cannot move $1: Device or resource busy" >&2; '
                  'exit 1;; esac\nexec /bin/mv "$@"\n')
    mv.chmod(0o755)
    done = connection.run(nodes_apply.rejoin_script(str(data), str(journal), STAMP), check=False)
    assert (data / "PG_VERSION").exists()  # (the fake refused it)
    assert f"moved {data}" not in done.stdout.splitlines()
    assert (tmp_path / "etc" / "config.yml.removed-20261120-101010").exists()  # a re-run tries again


def test_rejoin_stops_this_clusters_own_patroni_of_an_earlier_join_but_never_another(tmp_path: Path) -> None:
    # A join whose ask Raft did not take leaves this cluster's Patroni running at this address: stopped (step 02
    # starts it again). A Patroni of another scope, or at another address, is left alone and refused.
    connection, data, journal, log = rejoin_node(tmp_path, patroni_active=True, removed=False)
    (tmp_path / "etc" / "config.yml").write_text("scope: keybuzz-pg\nraft:\n  self_addr: 198.18.0.121:7000\n")
    done = connection.run(nodes_apply.rejoin_script(str(data), str(journal), STAMP, "keybuzz-pg", "198.18.0.121:7000"))
    assert done.stdout.split() == ["stopped-own"] and "stop patroni" in log.read_text()
    for scope, address in (("another-cluster", "198.18.0.121:7000"), ("keybuzz-pg", "198.18.0.99:7000")):
        log.write_text("")
        done = connection.run(nodes_apply.rejoin_script(str(data), str(journal), STAMP, scope, address))
        assert done.stdout.split() == ["active"] and "stop" not in log.read_text()


def test_a_directory_the_rejoin_could_not_move_fails_the_add_naming_it(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    fake = dead_replica_replaced(monkeypatch, tmp_path, "moved /var/lib/patroni/raft\nfailed /var/lib/postgresql/17/x")
    done = fake.apply()
    assert not done.ok and not any(entry[0] == "install" for entry in fake.log)
    assert "/var/lib/postgresql/17/x (left by kbpg's removal of this node) could not be moved aside" in done.error


def test_rejoin_leaves_an_empty_directory_where_it_is(tmp_path: Path) -> None:
    connection, data, journal, _log = rejoin_node(tmp_path, patroni_active=False, removed=True, data_files=False)
    done = connection.run(nodes_apply.rejoin_script(str(data), str(journal), STAMP))
    assert done.stdout.splitlines() == [f"moved {journal}"]
    assert names(tmp_path) == ["data dir", f"raft.before-join-{STAMP}"]
    os.rmdir(tmp_path / "data dir")  # still there, still empty


# --- the Applier's add uses the rejoin script's answer ----------------------------------------------------------

def dead_replica_replaced(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, answer: str) -> Cluster:
    """db-slave-01's old host dead, its new one (198.18.0.123) answering ``answer`` to every script."""
    return Cluster(monkeypatch, tmp_path, target(REPLACED), membership(DB3, dead=("db-slave-01",)),
                   after=membership(REPLACED), stop_answer=answer)


def test_an_added_node_whose_patroni_runs_fails_the_step_naming_it(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    fake = dead_replica_replaced(monkeypatch, tmp_path, "active")
    done = fake.apply()
    assert not done.ok
    first_line = nodes_apply.rejoin_script("/d", "/r", "x").splitlines()[0]
    assert ("ssh", "db-slave-01", "198.18.0.123", first_line) in fake.log  # asked on the NEW host
    assert not any(entry[0] == "install" for entry in fake.log)  # nothing installed on it
    assert done.error.startswith("step 2 (add db-slave-01 (198.18.0.123)")
    assert "db-slave-01 (198.18.0.123) runs a Patroni already: it is not a new node" in done.error


def test_what_the_rejoin_moved_aside_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = dead_replica_replaced(monkeypatch, tmp_path, "moved /var/lib/postgresql/16/patroni\nmoved /var/lib/raft")
    done = fake.apply()
    assert done.ok, done.error
    select = next(t for r in done.reports for t in r.tasks if t.task == "select")
    assert "what kbpg's removal left there moved aside: /var/lib/postgresql/16/patroni, /var/lib/raft" in select.detail
    assert ".before-join-" in select.detail
    quiet = dead_replica_replaced(monkeypatch, tmp_path, "")
    detail = next(t for r in quiet.apply().reports for t in r.tasks if t.task == "select").detail
    assert "moved aside" not in detail


# --- kbpg tls renew --all runs the install: its node plan, and its flag -------------------------------------------

def test_tls_renew_with_a_node_change_pending_refuses_and_applies_nothing(workdir: Path,  # noqa: F811
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys) -> None:
    # kbpg tls renew runs the install's steps: not the moment for switchovers and removals (nor would the apply's own
    # installs keep its "renew every certificate" flag): refused, naming the command that carries the plan out.
    fake = Install(monkeypatch, workdir, REPLACED, running=membership(DB3))
    applied: list[object] = []
    monkeypatch.setattr(nodes_apply, "apply", lambda *a: applied.append(a))
    assert cli.main(["--workdir", str(workdir), "tls", "renew", "--all", "--yes"]) == 2
    err = capsys.readouterr().err
    assert "kbpg tls renew --all: the nodes change; run `kbpg nodes apply`" in err
    assert applied == [] and not any(entry[0] == "lock" for entry in fake.log)
