"""Step 01's task for the backup host: SSH/sudo, OS, clock, free space for /var/lib/pgbackrest, and pgBackRest's SSH
paths both ways between the backup host and every DB node. Canned answers (the company's addresses are never
connected to); the probe and facts scripts themselves run on this machine against loopback."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from kbpg_tui.core.engine import Engine, TaskError, TaskRun
from kbpg_tui.core.events import Status, TaskFinished
from kbpg_tui.core.settings import from_dict
from kbpg_tui.core.ssh import Host
from kbpg_tui.core.steps import s01_preflight as preflight

from .fakes import FakePool, LocalShellConnection, ScriptedConnection, result
from .test_patroni_config import make_run

FACTS = "os={os}\nversion={version}\ncodename=bookworm\nnow={now}\nntp=yes\nfstype=ext4\navail={avail}\n"
DB = {"db-master-01": "10.0.0.120", "db-slave-01": "10.0.0.121", "db-slave-02": "10.0.0.122"}
BACKUP = "10.0.0.153"


def _probe_lines(script: str, codes: dict[str, str]) -> str:
    """What PROBE_SCRIPT prints for the targets in ``script``: "<target> <rc> <message>", rc from ``codes``."""
    targets = script.split("for target in ", 1)[1].split("; do", 1)[0].split()
    return "".join(f"{target} {codes.get(target, '0')}\n" for target in targets)


def _run(real_inventory: Path, settings=None, os_id: str = "debian", version: str = "12", avail: int = 200 << 30,
         skew: float = 0.0, backup_codes: dict[str, str] | None = None, db_codes: dict[str, dict[str, str]] | None = None,
         silent: set[str] = frozenset()):
    run = make_run(real_inventory, settings)
    calls: dict[str, list[str]] = {}

    def answer_for(name: str):
        def answer(script: str, stdin: bytes):
            calls.setdefault(name, []).append(script)
            if name in silent:
                return result("")
            if "/dev/tcp/" in script:
                codes = backup_codes if name == "backup-01" else (db_codes or {}).get(name)
                return result(_probe_lines(script, codes or {}))
            return result(FACTS.format(os=os_id, version=version, now=time.time() + skew, avail=avail))
        return answer

    hosts = run.ctx.db_hosts + run.ctx.backup_hosts
    run.ctx.pool = FakePool({h.name: ScriptedConnection(h, answer_for(h.name)) for h in hosts})
    return TaskRun(run.ctx, "01", run.ctx.backup_host), calls


def test_a_good_backup_host_passes_with_ssh_both_ways(real_inventory: Path) -> None:
    run, calls = _run(real_inventory)
    outcome = preflight.check_backup_host(run)
    assert outcome.status == Status.UNCHANGED and outcome.warnings == []
    assert outcome.detail == ("debian 12, ssh as root, 200 GiB free for /var/lib/pgbackrest, SSH both ways with 3 DB "
                              "nodes")
    facts, probe = calls["backup-01"]
    assert "d=/var/lib/pgbackrest" in facts  # the free space of the repository's filesystem
    assert all(f"{address}:22" in probe for address in DB.values())
    for name in DB:  # each DB node was asked to reach the backup host's SSH port, and nothing else
        assert len(calls[name]) == 1 and f"for target in {BACKUP}:22; do" in calls[name][0]
    assert run.ctx.state["facts"]["backup-01"]["avail"] == str(200 << 30)


def test_the_backup_host_that_cannot_reach_a_db_node_is_named_with_both_ends(real_inventory: Path) -> None:
    run, _ = _run(real_inventory, backup_codes={"10.0.0.121:22": "124"})
    with pytest.raises(TaskError) as failed:
        preflight.check_backup_host(run)
    assert "backup-01 cannot reach db-slave-01 10.0.0.121:22 (SSH): timed out (a firewall drops it?)" in str(failed.value)
    assert "open TCP port 22 between them" in str(failed.value)


def test_a_db_node_that_cannot_reach_the_backup_host_is_named(real_inventory: Path) -> None:
    run, _ = _run(real_inventory, db_codes={"db-slave-02": {f"{BACKUP}:22": "1 connect: Connection refused"}})
    with pytest.raises(TaskError, match=r"db-slave-02 cannot reach backup-01 10\.0\.0\.153:22 \(SSH\): .*refused"):
        preflight.check_backup_host(run)


def test_a_refused_ssh_port_is_a_failure_not_an_open_path(real_inventory: Path) -> None:
    # (for the cluster's own ports a refusal proves the path open; for SSH nothing listening is the failure)
    run, _ = _run(real_inventory, backup_codes={"10.0.0.120:22": "1 bash: connect: Connection refused"})
    with pytest.raises(TaskError, match="backup-01 cannot reach db-master-01 10.0.0.120:22"):
        preflight.check_backup_host(run)


def test_a_probe_that_answers_nothing_is_not_a_pass(real_inventory: Path) -> None:
    run, _ = _run(real_inventory, silent={"db-master-01"})
    with pytest.raises(TaskError, match=r"db-master-01: no answer for backup-01 10\.0\.0\.153:22"):
        preflight.check_backup_host(run)


@pytest.mark.parametrize("avail, error", [(512 << 20, True), (5 << 30, False)])
def test_free_space_for_the_repository(real_inventory: Path, avail: int, error: bool) -> None:
    run, _ = _run(real_inventory, avail=avail)
    if error:
        with pytest.raises(TaskError, match="backup-01: only 512 MiB free for /var/lib/pgbackrest; at least 1 GiB"):
            preflight.check_backup_host(run)
    else:
        assert preflight.check_backup_host(run).warnings == ["backup-01: 5 GiB free for /var/lib/pgbackrest"]


def test_os_and_clock_are_checked_like_the_cluster_nodes(real_inventory: Path) -> None:
    run, calls = _run(real_inventory, os_id="centos", version="9", skew=120)
    with pytest.raises(TaskError) as failed:
        preflight.check_backup_host(run)
    assert "backup-01: OS centos 9 is not supported" in str(failed.value) and "clock is 120 s off" in str(failed.value)
    assert len(calls["backup-01"]) == 1  # nothing probed once the host itself fails
    run, _ = _run(real_inventory, skew=5)
    assert preflight.check_backup_host(run).warnings == ["backup-01: clock is 5.0 s off this machine's"]


def test_step_01_has_the_task_and_the_engine_runs_it_on_the_backup_host_only(real_inventory: Path) -> None:
    task = next(t for t in preflight.STEP.tasks if t.function is preflight.check_backup_host)
    assert (task.name, task.scope) == ("backup host", "backup")
    run, calls = _run(real_inventory)
    run.ctx.sink = lambda event: None
    report = Engine(run.ctx).run_step(type(preflight.STEP)("01", "Preflight", [task]))
    assert [(t.host, t.status) for t in report.tasks] == [("backup-01", Status.UNCHANGED)]
    run, calls = _run(real_inventory, settings=from_dict({"backup": {"enabled": False}}))
    seen: list = []
    run.ctx.sink = seen.append
    report = Engine(run.ctx).run_step(type(preflight.STEP)("01", "Preflight", [task]))
    assert [(t.host, t.status) for t in report.tasks] == [("cluster", Status.SKIPPED)] and calls == {}
    assert any(isinstance(e, TaskFinished) and e.status == Status.SKIPPED for e in seen)


def test_the_repository_path_is_the_one_step_06_uses() -> None:
    backup = pytest.importorskip("kbpg_tui.core.backup")
    assert preflight.BACKUP_REPO_PATH == backup.REPO_PATH


# --- the scripts themselves, on this machine (loopback only) ----------------------------------------------------


def test_the_ssh_probe_script_tells_a_listening_port_from_a_closed_one(real_inventory: Path) -> None:
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(4)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    try:
        run = make_run(real_inventory)
        here = Host("here", "127.0.0.1")
        run.ctx.pool = FakePool({"here": LocalShellConnection(here, {})})
        open_host = Host("open", "127.0.0.1", port=listening.getsockname()[1])
        shut_host = Host("shut", "127.0.0.1", port=closed.getsockname()[1])
        blocked = preflight._ssh_probe(run, here, [open_host, shut_host])
    finally:
        listening.close()
        closed.close()
    assert len(blocked) == 1 and blocked[0].startswith(f"here cannot reach shut 127.0.0.1:{shut_host.port} (SSH): ")
    assert "refused" in blocked[0].lower()


def test_the_facts_script_reads_the_free_space_of_the_nearest_existing_parent(real_inventory: Path,
                                                                              tmp_path: Path) -> None:
    run = make_run(real_inventory)
    host = run.ctx.backup_host
    run.ctx.pool = FakePool({host.name: LocalShellConnection(host, {"/var/lib/pgbackrest": tmp_path / "var/lib/pgbackrest"})})
    script = preflight.FACTS_SCRIPT.replace("{data_dir}", "/var/lib/pgbackrest")
    facts = preflight.parse_facts(run.ctx.pool.get(host).run(script).stdout)
    assert int(facts["avail"]) > 0 and facts["fstype"] and float(facts["now"]) == pytest.approx(time.time(), abs=30)
