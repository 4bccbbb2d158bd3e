"""Putting a drill's fault back, and refusing a switchover Patroni would refuse: the parts that need no lab.

The lab tests (tests/e2e/test_e2e_15_drill.py) run every fault for real; these pin the rules that a fault which
cannot be put back is named (never raised, so the round still ends with its report), that `stop` is put back
through connections a cancel does not close, and that a second Ctrl-C during a drill does not interrupt it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kbpg_tui import cli
from kbpg_tui.core import cluster
from kbpg_tui.core import credentials as creds
from kbpg_tui.core.engine import Context
from kbpg_tui.core.events import EventCollector, Level, Message
from kbpg_tui.core.inventory import load_selection
from kbpg_tui.core.ops import drill
from kbpg_tui.core.ops import switchover as so
from kbpg_tui.core.ops.drill_report import RoundReport
from kbpg_tui.core.settings import Settings
from kbpg_tui.core.ssh import Host

from .fakes import FakePool, ScriptedConnection, result
from .test_cluster import write_servers_tsv


def context(tmp_path: Path, pool: FakePool, events: EventCollector, cancel: threading.Event) -> Context:
    write_servers_tsv(tmp_path)
    return Context(Settings(), creds.generate()[0], load_selection(tmp_path / "servers.tsv"), tmp_path,
                   pool=pool, sink=events, cancel=cancel)  # type: ignore[arg-type]


def test_stop_is_put_back_after_a_cancel_and_a_failure_to_is_named_not_raised(tmp_path: Path) -> None:
    commands: list[str] = []

    def patroni(script: str, stdin) -> object:
        commands.append(script)
        return result("", 1, "Job for patroni.service failed")

    leader = Host("db-master-01", "198.18.0.120")
    pool = FakePool({"db-master-01": ScriptedConnection(leader, patroni)})
    events, cancel = EventCollector(), threading.Event()
    ctx = context(tmp_path, pool, events, cancel)
    fault = drill.Fault(ctx, "stop", leader, lambda what, detail: None)
    fault.restore_pool = pool  # what a cancel-free pool of the run's hosts would be
    cancel.set()  # the operator pressed Ctrl-C: the run's own commands are being closed
    report = RoundReport(mode="stop", round=1, started="now")
    assert drill.put_back(fault, report, leader.name) is False
    assert commands == ["systemctl start patroni"]
    assert report.problems == ["could not put the stop back on db-master-01: systemctl start patroni on "
                               "db-master-01: Job for patroni.service failed"]
    errors = [e for e in events.of_type(Message) if e.level == Level.ERROR]
    assert len(errors) == 1 and "could not put the stop back on db-master-01" in errors[0].text
    # Asked again (the round's finally), it is tried again and named once.
    assert drill.put_back(fault, report, leader.name) is False
    assert len(report.problems) == 1 and len(commands) == 2


def test_the_restore_pool_is_not_the_runs_own(tmp_path: Path) -> None:
    from kbpg_tui.core.ssh import ConnectionPool, KnownHosts, SshOptions

    cancel = threading.Event()
    pool = ConnectionPool(SshOptions(), KnownHosts(tmp_path / "known_hosts"), lambda e: None, None,
                          lambda host: None, cancel)
    ctx = context(tmp_path, pool, EventCollector(), cancel)  # type: ignore[arg-type]
    fault = drill.Fault(ctx, "stop", Host("db-master-01", "198.18.0.120"), lambda what, detail: None)
    assert fault.restore_pool is not pool and fault.restore_pool.cancel is None


def members(*rows: tuple[str, str, str]) -> cluster.ClusterState:
    return cluster.ClusterState(tuple(cluster.Member(name, "198.18.0.1", role, state, 3, 0) for name, role, state in rows))


def test_a_switchover_to_a_replica_patroni_would_refuse_is_refused_first() -> None:
    names = ["db-master-01", "db-slave-01", "db-slave-02"]
    state = members(("db-master-01", "leader", "running"), ("db-slave-01", "sync_standby", "streaming"),
                    ("db-slave-02", "replica", "streaming"))
    assert so.check_target(state, "db-slave-01", names).name == "db-master-01"
    with pytest.raises(so.SwitchoverError, match="--to db-slave-02: not a synchronous standby; .* only to one of "
                                                 "db-slave-01"):
        so.check_target(state, "db-slave-02", names)
    with pytest.raises(so.SwitchoverError, match="--to db-master-01: it is the leader already"):
        so.check_target(state, "db-master-01", names)
    with pytest.raises(so.SwitchoverError, match="--to db-x: not a member"):
        so.check_target(state, "db-x", names)
    unhealthy = members(("db-master-01", "leader", "running"), ("db-slave-01", "replica", "starting"),
                        ("db-slave-02", "replica", "streaming"))
    with pytest.raises(so.SwitchoverError, match="not healthy"):
        so.check_target(unhealthy, None, names)


def test_a_second_ctrl_c_does_not_interrupt_a_drill_putting_its_fault_back(capfd) -> None:
    cancel = threading.Event()
    held = cli._SigintCancels(cancel, hold="stopping: the fault is put back first")
    try:
        held._handle(2, None)
        assert cancel.is_set() and held.hit
        held._handle(2, None)  # no KeyboardInterrupt
        assert "kbpg: stopping: the fault is put back first" in capfd.readouterr().err
    finally:
        held.restore()
    plain = cli._SigintCancels(threading.Event())
    try:
        plain._handle(2, None)
        with pytest.raises(KeyboardInterrupt):  # an install's second Ctrl-C still interrupts
            plain._handle(2, None)
    finally:
        plain.restore()


def test_a_member_whose_raft_stays_silent_gets_patroni_restarted_and_is_named(tmp_path: Path) -> None:
    """pysyncobj's thread can die after a kill (kbpg_tui.core.raft): the round restarts Patroni on a member whose
    Raft is silent on two looks in a row, only there, at most RAFT_RESTARTS times, and names it."""
    answers = {"db-master-01": 'r:unit active 300\nr:status {"leader": "198.18.0.122:7000", "raft_term": 4}\n',
               "db-slave-01": "r:unit active 300\nr:silent 198.18.0.121:7000 connection lost\n",
               "db-slave-02": "r:unit inactive 0\n"}  # a stopped Patroni (the stop drill's fault) is left alone
    restarts: list[str] = []

    def handler(name: str):
        def run(script: str, stdin) -> object:
            if script == "systemctl restart patroni":
                restarts.append(name)
                return result("")
            return result(answers[name])
        return run

    db = [Host("db-master-01", "198.18.0.120"), Host("db-slave-01", "198.18.0.121"), Host("db-slave-02", "198.18.0.122")]
    pool = FakePool({h.name: ScriptedConnection(h, handler(h.name)) for h in db})
    events = EventCollector()
    ctx = context(tmp_path, pool, events, threading.Event())
    report = RoundReport(mode="kill", round=1, started="now")
    marks: list[tuple[str, str]] = []
    healer = drill.RaftHealer(ctx, pool, {h.name: h for h in db}, report, lambda what, detail: marks.append((what, detail)))

    assert healer.look(drill.RAFT_GRACE - 1) == []  # too early: a killed Patroni is still coming back
    assert len(pool.gets) == 0
    assert healer.look(drill.RAFT_GRACE) == []  # silent once: looked again later
    assert healer.look(drill.RAFT_GRACE + 1) == []  # not before RAFT_EVERY
    healer.next_look = 0.0
    assert healer.look(drill.RAFT_GRACE + drill.RAFT_EVERY) == ["db-slave-01"]
    assert restarts == ["db-slave-01"] and marks == [("patroni restarted (raft)", "db-slave-01")]
    (problem,) = report.problems
    assert problem.startswith("Patroni's Raft stopped answering on db-slave-01 (patroni active for 300 s, its Raft "
                              "port 198.18.0.121:7000 does not answer: connection lost)")
    assert problem.endswith("; the drill restarted Patroni there")
    assert any(e.level == Level.WARNING and "db-slave-01" in e.text for e in events.of_type(Message))
    # Still silent after its restart: silent twice again before the next restart, one line in the report.
    for _ in range(2 * drill.RAFT_RESTARTS + 2):
        healer.next_look = 0.0
        healer.look(drill.RAFT_GRACE + 60)
    assert restarts == ["db-slave-01"] * drill.RAFT_RESTARTS
    assert len(report.problems) == 1 and report.problems[0].endswith(f"({drill.RAFT_RESTARTS} times)")


def test_a_round_whose_cluster_does_not_come_back_looks_for_silent_rafts_meanwhile(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """The wiring: both of a round's waits after the fault (a new primary, then the cluster whole) ask the healer."""
    from kbpg_tui.core.ops.writers import Attempt

    def member(name: str, role: str, state: str) -> cluster.Member:
        return cluster.Member(name, name, role, state, 1, 0)

    healthy = cluster.ClusterState((member("db-master-01", "leader", "running"),
                                    member("db-slave-01", "replica", "streaming"),
                                    member("db-slave-02", "replica", "streaming")))
    stuck = cluster.ClusterState((member("db-master-01", "replica", "stopped"),
                                  member("db-slave-01", "leader", "running"),
                                  member("db-slave-02", "replica", "stopped")))

    class Writer:
        def __init__(self, entry: str, *args, **kwargs):
            self.acknowledged = True
            self.attempts = [Attempt(1, 0.0, 1e12, True)]

        def start(self) -> None:
            pass

        def stop(self, timeout: float) -> None:
            pass

    class Watch:
        def __init__(self, ctx) -> None:
            pass

        def start(self) -> None:
            pass

        def close(self) -> None:
            pass

        def primary_after(self, moment: float, old: str):
            self.asked = getattr(self, "asked", 0) + 1
            return ("db-slave-01", moment + 0.01) if self.asked > 3 else None

    looks: list[float | str] = []
    monkeypatch.setattr(drill, "wait_healthy", lambda ctx, timeout: (healthy, cluster.Health((), "healthy")))
    monkeypatch.setattr(drill, "_state", lambda ctx, first=None, avoid=None: looks.append("whole?") or stuck)
    monkeypatch.setattr(drill, "EntryWriter", Writer)
    monkeypatch.setattr(drill, "LeaderWatch", Watch)
    monkeypatch.setattr(drill.random, "uniform", lambda a, b: 0.0)
    monkeypatch.setattr(drill, "BASELINE", 0.0)
    monkeypatch.setattr(drill, "AFTER", 0.0)
    monkeypatch.setattr(drill, "STREAMING_WAIT", 1.5)
    monkeypatch.setattr(drill.RaftHealer, "look", lambda self, since_fault: looks.append(since_fault) or [])

    def connect_fails() -> object:
        raise drill.psycopg.OperationalError("no database here")

    monkeypatch.setattr(drill, "_connector", lambda ctx, port: connect_fails)
    db = [Host("db-master-01", "198.18.0.120"), Host("db-slave-01", "198.18.0.121"), Host("db-slave-02", "198.18.0.122")]
    pool = FakePool({h.name: ScriptedConnection(h, lambda script, stdin: result("")) for h in db})
    ctx = context(tmp_path, pool, EventCollector(), threading.Event())
    report = drill.one_round(ctx, "kill", 1, "run", {"LB:5432": 20.0, "LB:6432": 20.0}, "fast")
    assert any("did not stream again" in problem for problem in report.problems), report.problems
    first_whole = looks.index("whole?")
    assert first_whole >= 3  # asked while waiting for a new primary
    assert sum(1 for x in looks[first_whole:] if x != "whole?") >= 2  # and while waiting for the cluster whole


# --- cut on a lab whose node was replaced by a spare ----------------------------------------------------
# A replaced node keeps its hostname and takes a spare's address (issue 16): servers.tsv's db-slave-02 at
# 198.18.0.123 is the lab host db-spare-01. The cut and its restore act on the lab host at the leader's address;
# by name they would cut the old db-slave-02 (198.18.0.122), or fail on it being stopped for good.


@pytest.fixture
def lab_links(monkeypatch) -> tuple[set[str], list[str], list[tuple[list[str], str]]]:
    """(names of the lab hosts that run, names asked whether they run, `ip` commands run with their `what`):
    no real cgroup is read and no link is touched."""
    from kbpg_tui.core.lab import hosts as lab_hosts
    from kbpg_tui.core.lab import lab

    running: set[str] = set()
    asked: list[str] = []
    commands: list[tuple[list[str], str]] = []

    def init_pid(host) -> int | None:
        asked.append(host.name)
        return 4242 if host.name in running else None

    monkeypatch.setattr(lab_hosts, "init_pid", init_pid)
    monkeypatch.setattr(lab, "run", lambda argv, what=None, **kwargs: commands.append((list(argv), what)))
    return running, asked, commands


def test_cut_and_its_restore_act_on_the_spare_a_replaced_leader_runs_on(tmp_path: Path, lab_links) -> None:
    from kbpg_tui.core.lab.topology import host_by_name

    running, asked, commands = lab_links
    running.update({"db-master-01", "db-slave-01", "db-spare-01"})  # the old db-slave-02 was stopped for good
    leader = Host("db-slave-02", "198.18.0.123")
    ctx = context(tmp_path, FakePool({}), EventCollector(), threading.Event())
    fault = drill.Fault(ctx, "cut", leader, lambda what, detail: None)
    fault.inject()
    fault.restore()
    spare = host_by_name("db-spare-01").veth_host
    assert spare != host_by_name("db-slave-02").veth_host
    assert [argv for argv, _ in commands] == [["ip", "link", "set", spare, "down"], ["ip", "link", "set", spare, "up"]]
    assert commands[0][1] == "set db-slave-02 (the lab's db-spare-01)'s link down"
    assert set(asked) == {"db-spare-01"}
    assert fault.restored


def test_cut_of_a_replaced_leader_whose_spare_is_down_is_named_and_touches_no_link(tmp_path: Path, lab_links) -> None:
    from kbpg_tui.core.lab import LabError

    running, asked, commands = lab_links
    running.update({"db-master-01", "db-slave-01", "db-slave-02"})  # the old host runs, the spare does not
    ctx = context(tmp_path, FakePool({}), EventCollector(), threading.Event())
    fault = drill.Fault(ctx, "cut", Host("db-slave-02", "198.18.0.123"), lambda what, detail: None)
    with pytest.raises(LabError, match=r"db-slave-02 \(the lab's db-spare-01\) is not running"):
        fault.inject()
    assert commands == [] and asked == ["db-spare-01"]


def test_set_host_link_by_address_and_still_by_name(lab_links) -> None:
    from kbpg_tui.core.lab import LabError, lab
    from kbpg_tui.core.lab.topology import host_by_name

    running, _asked, commands = lab_links
    running.update({"db-slave-02", "db-spare-01"})
    lab.set_host_link("db-slave-02", up=False)  # the lab's own callers (tests/lab) name the lab host
    lab.set_host_link("db-slave-02", up=False, address="198.18.0.122")  # not replaced: the same host
    assert [argv[3] for argv, _ in commands] == [host_by_name("db-slave-02").veth_host] * 2
    assert commands[1][1] == "set db-slave-02's link down"
    with pytest.raises(LabError, match="no lab host at 10.0.0.123: the lab's hosts are .*db-spare-01 198.18.0.123") as caught:
        lab.set_host_link("db-slave-02", up=False, address="10.0.0.123")
    assert caught.value.exit_code == 2 and len(commands) == 2
    assert lab.lab_host_at("198.18.0.13").name == "haproxy-spare-01"
