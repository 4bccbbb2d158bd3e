"""The cluster's run lock (kbpg_tui.core.runlock) against fake hosts whose lock scripts run for real in a local bash.

Each fake host has its own directory standing for its /var/lib/kbpg; a host can be down. The lab test
(tests/e2e/test_e2e_13_run_lock.py) runs the same scripts on real hosts.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from kbpg_tui.core import events as ev
from kbpg_tui.core import runlock
from kbpg_tui.core.ssh import Host, SshError
from kbpg_tui.core.steps import install_steps

from .fakes import FakePool, local_shell_pool

HOSTS = [Host("db-3", "198.18.0.122"), Host("db-1", "198.18.0.120"), Host("db-2", "198.18.0.121")]
FIVE = HOSTS + [Host("db-4", "198.18.0.123"), Host("db-5", "198.18.0.124")]


@pytest.fixture
def pool(tmp_path: Path) -> FakePool:
    return local_shell_pool(tmp_path, HOSTS, [runlock.LOCK_DIR])


def lock_file(tmp_path: Path, host: str) -> Path:
    return tmp_path / host / runlock.LOCK_DIR.lstrip("/") / runlock.LOCK_NAME


def holder(command: str = "kbpg install --yes", **changes) -> runlock.Holder:
    current = runlock.Holder.current(command, "/work/a")
    return runlock.Holder(**{**current.__dict__, **changes})


def elsewhere(command: str = "kbpg install --yes") -> runlock.Holder:
    """A holder on another machine: only its heartbeat can tell whether it is still there."""
    return holder(command, machine="ops-laptop", user="alice", pid=4242, instance="another-boot/pid:[1]", pid_start="7")


def plant(tmp_path: Path, hosts: list[str], who: runlock.Holder, age: float = 0.0) -> None:
    """Write a holder's lock on some hosts, as another kbpg would have, with a heartbeat ``age`` seconds old."""
    for name in hosts:
        path = lock_file(tmp_path, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(who.content())
        moment = time.time() - age
        os.utime(path, (moment, moment))


def take(pool: FakePool, who: runlock.Holder | None = None, hosts=HOSTS, **kwargs) -> runlock.RunLock:
    kwargs.setdefault("start", False)
    return runlock.acquire(pool, hosts, who or holder(), **kwargs)


def test_taken_on_every_node_with_the_holder_named_then_released(pool: FakePool, tmp_path: Path) -> None:
    events = ev.EventCollector()
    me = holder()
    lock = take(pool, me, sink=events)
    assert [h.name for h in lock.held] == ["db-1", "db-2", "db-3"]  # address order, not servers.tsv order
    for name in ("db-1", "db-2", "db-3"):
        path = lock_file(tmp_path, name)
        assert json.loads(path.read_text()) == json.loads(me.content())
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700  # created on a bare host, root's only
    assert any("run lock taken on 3 of 3 DB nodes" in m.text for m in events.of_type(ev.Message))
    assert lock.release() == []
    assert not any(lock_file(tmp_path, name).exists() for name in ("db-1", "db-2", "db-3"))


def test_a_second_run_is_refused_naming_the_first(pool: FakePool, tmp_path: Path) -> None:
    first = take(pool, holder("kbpg install --yes"))
    before = {name: lock_file(tmp_path, name).read_bytes() for name in ("db-1", "db-2", "db-3")}
    with pytest.raises(runlock.LockBusy) as refused:
        take(pool, holder("kbpg install --yes --step 03"))
    message = str(refused.value)
    me = first.holder
    assert message.startswith("the cluster is busy: ")
    for part in (me.machine, me.user, "kbpg install --yes`", me.started, f"pid {me.pid}", "/work/a"):
        assert part in message
    assert {name: lock_file(tmp_path, name).read_bytes() for name in before} == before  # the first's lock intact
    first.release()
    take(pool).release()  # free again once the first is done


def test_two_runs_started_together_never_both_hold_it(pool: FakePool) -> None:
    def attempt(barrier: threading.Barrier, won: list[runlock.RunLock], refused: list[Exception]) -> None:
        barrier.wait()
        try:
            won.append(take(pool))
        except runlock.LockError as exc:
            refused.append(exc)

    for _round in range(4):
        barrier = threading.Barrier(6)
        won: list[runlock.RunLock] = []
        refused: list[Exception] = []
        threads = [threading.Thread(target=attempt, args=(barrier, won, refused)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(won) == 1 and len(refused) == 5, (won, refused)
        assert all(isinstance(exc, runlock.LockBusy) for exc in refused)
        won[0].release()


def test_a_majority_is_enough_and_needed(tmp_path: Path) -> None:
    pool = local_shell_pool(tmp_path, HOSTS, [runlock.LOCK_DIR])
    pool.connections["db-2"] = SshError("db-2 (198.18.0.121): no SSH answer within 10 s")
    lock = take(pool)
    assert [h.name for h in lock.held] == ["db-1", "db-3"]
    lock.release()
    pool.connections["db-3"] = SshError("db-3 (198.18.0.122): SSH login as root refused")
    with pytest.raises(runlock.LockUnavailable) as refused:
        take(pool)
    message = str(refused.value)
    assert "1 of 3 DB nodes took it, 2 needed" in message
    assert "db-2 (198.18.0.121): no SSH answer" in message and "db-3 (198.18.0.122): SSH login" in message
    assert not lock_file(tmp_path, "db-1").exists(), "what a failed attempt took is given back"


def test_five_nodes_need_three(tmp_path: Path) -> None:
    pool = local_shell_pool(tmp_path, FIVE, [runlock.LOCK_DIR])
    for name in ("db-1", "db-5"):
        pool.connections[name] = SshError(f"{name}: down")
    take(pool, hosts=FIVE).release()
    pool.connections["db-3"] = SshError("db-3: down")
    with pytest.raises(runlock.LockUnavailable, match="2 of 5 DB nodes took it, 3 needed"):
        take(pool, hosts=FIVE)
    assert not any(lock_file(tmp_path, name).exists() for name in ("db-2", "db-4"))


def test_a_node_held_by_another_run_gives_back_what_was_taken(pool: FakePool, tmp_path: Path) -> None:
    other = elsewhere()
    plant(tmp_path, ["db-2"], other)  # db-1 comes first and is free
    with pytest.raises(runlock.LockBusy, match="alice@ops-laptop"):
        take(pool)
    assert not lock_file(tmp_path, "db-1").exists()
    assert lock_file(tmp_path, "db-2").read_bytes() == other.content()
    assert not lock_file(tmp_path, "db-3").exists()


def test_a_stale_lock_is_named_with_its_age_and_broken_only_explicitly(pool: FakePool, tmp_path: Path) -> None:
    ghost = elsewhere()
    plant(tmp_path, ["db-1", "db-2", "db-3"], ghost, age=600)
    with pytest.raises(runlock.LockBusy) as refused:
        take(pool)
    message = str(refused.value)
    assert "alice@ops-laptop (pid 4242" in message and "heartbeat stopped 10 min ago" in message
    assert "kbpg unlock" in message
    assert lock_file(tmp_path, "db-1").read_bytes() == ghost.content(), "never broken implicitly"

    found = runlock.holdings(runlock.inspect(pool, HOSTS))
    assert len(found) == 1 and found[0].stale() and not found[0].gone
    assert found[0].holder.machine == "ops-laptop" and 590 < found[0].age < 700
    broken = runlock.break_lock(pool, HOSTS, found[0])
    assert [s.status for s in broken] == [runlock.REMOVED] * 3
    take(pool).release()


def test_a_fresh_lock_from_another_machine_is_busy_not_stale(pool: FakePool, tmp_path: Path) -> None:
    plant(tmp_path, ["db-1", "db-2", "db-3"], elsewhere(), age=30)
    with pytest.raises(runlock.LockBusy) as refused:
        take(pool)
    assert "the cluster is busy" in str(refused.value) and re.search(r"heartbeat 3\d s ago", str(refused.value))
    found = runlock.holdings(runlock.inspect(pool, HOSTS))
    assert not found[0].stale() and not found[0].gone


def test_the_freshest_heartbeat_decides(pool: FakePool, tmp_path: Path) -> None:
    ghost = elsewhere()
    plant(tmp_path, ["db-1", "db-2"], ghost, age=900)
    plant(tmp_path, ["db-3"], ghost, age=5)
    (found,) = runlock.holdings(runlock.inspect(pool, HOSTS))
    assert not found.stale() and found.age < 60


def test_a_lock_left_by_a_dead_process_of_this_machine_is_taken_over(pool: FakePool, tmp_path: Path) -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    killed = holder(pid=child.pid, pid_start="1")  # this machine, this boot; that process has ended
    assert killed.gone()
    plant(tmp_path, ["db-1", "db-2", "db-3"], killed, age=3)
    events = ev.EventCollector()
    lock = take(pool, sink=events)
    assert len(lock.held) == 3
    warnings = [m.text for m in events.of_type(ev.Message) if m.level == ev.Level.WARNING]
    assert any("took over the run lock left by" in text and f"pid {child.pid}" in text for text in warnings)
    lock.release()


def test_a_live_process_of_this_machine_is_never_taken_over(pool: FakePool, tmp_path: Path) -> None:
    alive = holder()  # this very process
    assert not alive.gone()
    reused = holder(pid_start="1")  # same pid, but a process started at another time: the pid was reused
    assert reused.gone()
    plant(tmp_path, ["db-1", "db-2", "db-3"], alive, age=600)
    with pytest.raises(runlock.LockBusy):
        take(pool)


def test_the_heartbeat_refreshes_and_notices_a_broken_lock(pool: FakePool, tmp_path: Path) -> None:
    events = ev.EventCollector()
    lost: list[str] = []
    lock = take(pool, sink=events, heartbeat=0.05, on_lost=lost.append, start=True)
    try:
        path = lock_file(tmp_path, "db-2")
        os.utime(path, (time.time() - 500, time.time() - 500))
        deadline = time.monotonic() + 10
        while time.time() - path.stat().st_mtime > 60 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert time.time() - path.stat().st_mtime < 60, "the heartbeat refreshes the lock"
        assert not lock.lost.is_set()
        other = elsewhere()
        plant(tmp_path, ["db-3"], other)  # broken and taken by another run
        assert lock.lost.wait(10)
        assert lost and "broken on db-3" in lost[0] and "alice@ops-laptop" in lost[0]
        assert any(m.level == ev.Level.ERROR and "stopping this run" in m.text for m in events.of_type(ev.Message))
    finally:
        lock.release()
    assert lock_file(tmp_path, "db-3").read_bytes() == other.content(), "the other run's lock is left alone"
    assert not lock_file(tmp_path, "db-1").exists()


def test_release_leaves_another_runs_lock_alone_and_names_a_node_it_could_not_reach(pool: FakePool,
                                                                                    tmp_path: Path) -> None:
    events = ev.EventCollector()
    lock = take(pool, sink=events)
    other = elsewhere()
    plant(tmp_path, ["db-1"], other)
    pool.connections["db-3"] = SshError("db-3 (198.18.0.122): the SSH connection was lost")
    problems = lock.release()
    assert lock_file(tmp_path, "db-1").read_bytes() == other.content()
    assert not lock_file(tmp_path, "db-2").exists()
    assert len(problems) == 1 and "could not be released on db-3" in problems[0] and "kbpg unlock" in problems[0]
    assert any(m.level == ev.Level.WARNING and "db-3" in m.text for m in events.of_type(ev.Message))


def test_break_leaves_a_lock_taken_since_alone(pool: FakePool, tmp_path: Path) -> None:
    plant(tmp_path, ["db-1", "db-2", "db-3"], elsewhere(), age=600)
    (found,) = runlock.holdings(runlock.inspect(pool, HOSTS))
    newcomer = elsewhere("kbpg install --yes --step 02")
    plant(tmp_path, ["db-2"], newcomer)
    states = runlock.break_lock(pool, HOSTS, found)
    assert [s.status for s in states] == [runlock.REMOVED, runlock.HELD, runlock.REMOVED]
    assert lock_file(tmp_path, "db-2").read_bytes() == newcomer.content()


def test_reading_creates_nothing_and_an_unreadable_lock_counts_as_held(pool: FakePool, tmp_path: Path) -> None:
    states = runlock.inspect(pool, HOSTS)
    assert [s.status for s in states] == [runlock.FREE] * 3
    assert not (tmp_path / "db-1" / runlock.LOCK_DIR.lstrip("/")).exists()
    path = lock_file(tmp_path, "db-1")
    path.parent.mkdir(parents=True)
    path.write_text("written by hand\n")
    with pytest.raises(runlock.LockBusy, match="an unreadable lock file"):
        take(pool)


def test_cancel_while_taking_leaves_nothing(pool: FakePool, tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(runlock.LockUnavailable, match="cancelled"):
        take(pool, cancel=cancel)
    assert not any(lock_file(tmp_path, name).exists() for name in ("db-1", "db-2", "db-3"))


def test_only_steps_that_touch_hosts_take_the_lock() -> None:
    assert not runlock.changes_hosts(install_steps(["00"]))
    assert runlock.changes_hosts(install_steps(["01"])) and runlock.changes_hosts(install_steps())


def test_ages_read_as_people_say_them() -> None:
    assert [runlock.age_text(s) for s in (3.4, 119, 600, 7300)] == ["3 s", "119 s", "10 min", "2 h 1 min"]


# --- `kbpg install` and `kbpg unlock` with the lock on fake hosts -----------------------------------

# servers.tsv (db-master-01, db-slave-01, db-slave-02), kbpg.toml, credentials
DEMO = Path(__file__).resolve().parent / "ui" / "demo"
DEMO_DB = ["db-master-01", "db-slave-01", "db-slave-02"]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A work dir from the wizard's demo, the lock's connections replaced by fake hosts and the engine by a recorder
    (nothing connects anywhere)."""
    import shutil

    from kbpg_tui.core import engine
    from kbpg_tui.core.engine import StepReport

    workdir = tmp_path / "work"
    shutil.copytree(DEMO, workdir)
    os.chmod(workdir / "credentials", 0o700)
    os.chmod(workdir / "credentials" / "postgres.env", 0o600)
    hosts_root = tmp_path / "hosts"
    pool = local_shell_pool(hosts_root, [Host(name, "198.18.0.1") for name in DEMO_DB], [runlock.LOCK_DIR])
    monkeypatch.setattr(runlock, "lock_pool", lambda real_pool: pool)
    runs: list[dict[str, bool]] = []

    def run(self, steps):
        runs.append({name: lock_file(hosts_root, name).exists() for name in DEMO_DB})
        return [StepReport(step, ev.Status.UNCHANGED, 0.0, []) for step in steps]

    monkeypatch.setattr(engine.Engine, "run", run)
    import kbpg_tui.cli as cli_module

    # No cluster to compare servers.tsv with (the demo's addresses are the lab's: nothing may connect to them here).
    monkeypatch.setattr(cli_module, "_install_node_changes", lambda *args: None)

    class Cli:
        root = hosts_root

        def __call__(self, *args: str) -> int:
            from kbpg_tui.cli import main
            return main(["--workdir", str(workdir), *args])

    Cli.runs = runs  # type: ignore[attr-defined]
    return Cli()


def test_install_holds_the_lock_while_the_engine_runs_and_releases_it(cli, capsys) -> None:
    assert cli("install", "--yes") == 0
    assert cli.runs == [{name: True for name in DEMO_DB}]
    assert not any(lock_file(cli.root, name).exists() for name in DEMO_DB)
    assert "note: run lock taken on 3 of 3 DB nodes (db-master-01, db-slave-01, db-slave-02)" in capsys.readouterr().out


def test_install_refused_with_exit_3_naming_the_holder(cli, capsys) -> None:
    other = elsewhere("kbpg install --yes")
    plant(cli.root, DEMO_DB, other, age=4)
    assert cli("install", "--yes") == 3
    assert cli.runs == [], "nothing ran"
    err = capsys.readouterr().err
    expected = (r"kbpg: the cluster is busy: its run lock is held by alice@ops-laptop \(pid 4242, in /work/a\) running "
                rf"`kbpg install --yes` since {re.escape(other.started)} \(heartbeat [4-9] s ago on db-master-01\)\. "
                r"Nothing done; run again when it has finished\.\n")
    assert re.fullmatch(expected, err), err
    assert all(lock_file(cli.root, name).read_bytes() == other.content() for name in DEMO_DB)


def test_install_of_step_00_alone_takes_no_lock(cli) -> None:
    plant(cli.root, DEMO_DB, elsewhere(), age=4)
    assert cli("install", "--yes", "--step", "00") == 0
    assert len(cli.runs) == 1


def test_install_without_a_majority_fails_naming_each_node(cli, capsys) -> None:
    for name in DEMO_DB[1:]:
        cli_pool = runlock.lock_pool(None)
        cli_pool.connections[name] = SshError(f"{name} (198.18.0.1): cannot connect over SSH: refused")
    assert cli("install", "--yes") == 1
    out = capsys.readouterr().out
    assert "error: cannot take the cluster's run lock: 1 of 3 DB nodes took it, 2 needed" in out
    assert "db-slave-02 (198.18.0.1): cannot connect over SSH" in out and "NOT done: nothing was changed." in out
    assert cli.runs == [] and not lock_file(cli.root, "db-master-01").exists()


def test_unlock_breaks_only_a_stale_lock(cli, capsys) -> None:
    assert cli("unlock", "--yes") == 0
    assert "No run lock" in capsys.readouterr().out
    fresh = elsewhere()
    plant(cli.root, DEMO_DB, fresh, age=20)
    assert cli("unlock", "--yes") == 3
    assert "not broken: alice@ops-laptop" in capsys.readouterr().err
    assert lock_file(cli.root, "db-slave-01").read_bytes() == fresh.content()
    plant(cli.root, DEMO_DB, fresh, age=3600)
    assert cli("unlock", "--yes") == 0
    out = capsys.readouterr().out
    assert "heartbeat stopped 60 min ago" in out and "Broken on db-master-01, db-slave-01, db-slave-02." in out
    assert cli("install", "--yes") == 0 and len(cli.runs) == 1


def test_unlock_without_a_terminal_needs_yes(cli, capsys) -> None:
    assert cli("unlock") == 2
    assert "pass --yes" in capsys.readouterr().err


def test_a_hand_edited_holder_reads_safely() -> None:
    assert runlock.Holder.parse(b'{"machine": "m", "pid": "12", "user": 5}').pid == 12
    assert runlock.Holder.parse(b'{"pid": "twelve"}').machine == "?"
    assert runlock.Holder.parse(b"[1, 2]").command.startswith("an unreadable lock file")
    assert not runlock.Holder.parse(b'{"pid": "-1", "instance": "x"}').gone()
