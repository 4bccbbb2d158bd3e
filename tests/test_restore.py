"""`kbpg restore --time T` (kbpg_tui/core/ops/restore.py): the pending record and its resume rules, the restore's
patroni.yml, the move-aside script (run for real with bash on local directories), the order Patroni is stopped in,
nothing stopped or moved again once the restore started, and the command line's refusals. The whole restore runs on
the lab in tests/e2e/test_e2e_23_restore.py."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from kbpg_tui.core.engine import Status, TaskError, TaskRun
from kbpg_tui.core.ops import restore as rs
from kbpg_tui.core.ssh import Result

from .conftest import run_kbpg
from .fakes import result
from .test_cli_input import assert_bad_input
from .test_restore_drill import company  # noqa: F401 - the fixture
from .test_step06_backup import make_ctx

T = datetime(2026, 11, 26, 10, 15, 30, 250000, tzinfo=timezone.utc)
DB = ["db-master-01", "db-slave-01", "db-slave-02"]


# --- restore.pending ---------------------------------------------------------------------------------------------

def test_a_new_restore_is_recorded_0600_before_anything_and_resumed_with_its_own_target(tmp_path: Path) -> None:
    pending, resumed = rs.begin(tmp_path, T, None, DB)
    assert not resumed and pending.phase == "new" and pending.target == "2026-11-26T10:15:30.250000+00:00"
    path = tmp_path / rs.PENDING_FILE
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again, resumed = rs.begin(tmp_path, None, None, DB)  # no --time: the pending one
    assert resumed and again.id == pending.id and again.target_time == T
    again, resumed = rs.begin(tmp_path, T, None, DB)  # the same moment, written differently, is the same
    assert resumed and again.id == pending.id


def test_a_second_target_or_node_while_one_pends_is_refused(tmp_path: Path) -> None:
    pending, _ = rs.begin(tmp_path, T, "db-slave-01", DB)
    with pytest.raises(rs.RestoreError, match=r"a restore to 2026-11-26T10:15:30.250000\+00:00 is pending"):
        rs.begin(tmp_path, T.replace(second=31), None, DB)
    with pytest.raises(rs.RestoreError, match="runs on db-slave-01; --node db-slave-02 is refused"):
        rs.begin(tmp_path, None, "db-slave-02", DB)
    assert rs.load_pending(tmp_path) == pending


def test_no_target_and_nothing_pending_or_an_unknown_node_is_refused(tmp_path: Path) -> None:
    with pytest.raises(rs.RestoreError, match="--time T is required"):
        rs.begin(tmp_path, None, None, DB)
    with pytest.raises(rs.RestoreError, match=r"--node db-9: not a DB node of servers.tsv \(db-master-01, "):
        rs.begin(tmp_path, T, "db-9", DB)
    assert not (tmp_path / rs.PENDING_FILE).exists()


@pytest.mark.parametrize("text", ["{", '{"id": "x"}', '{"id": "x", "target": "soon"}',
                                  '{"id": "x", "target": "2026-11-26T10:15:30+00:00", "phase": "dancing"}'])
def test_an_unreadable_pending_file_is_named_never_guessed(tmp_path: Path, text: str) -> None:
    (tmp_path / rs.PENDING_FILE).write_text(text)
    with pytest.raises(rs.RestoreError, match=r"restore.pending: cannot be read"):
        rs.begin(tmp_path, T, None, DB)
    assert (tmp_path / rs.PENDING_FILE).read_text() == text


def test_a_pending_restore_refuses_installs(tmp_path: Path) -> None:
    rs.refuse_if_pending(tmp_path)  # nothing pending: nothing said
    rs.begin(tmp_path, T, None, DB)
    with pytest.raises(TaskError, match="a point-in-time restore is pending"):
        rs.refuse_if_pending(tmp_path)


# --- patroni.yml during the restore ----------------------------------------------------------------------------

def _config() -> dict:
    return {"scope": "keybuzz-pg", "bootstrap": {"dcs": {"ttl": 30}, "initdb": ["data-checksums"]},
            "postgresql": {"data_dir": "/var/lib/postgresql/17/patroni"},
            "tags": {"nofailover": False, "noloadbalance": False}}


def test_the_restore_node_bootstraps_with_pgbackrest_the_others_never_bootstrap() -> None:
    config = _config()
    restoring = rs.restore_config(config, True, "keybuzz-pg", T)
    method = restoring["bootstrap"]["method"]
    assert method == rs.BOOTSTRAP_METHOD and restoring["bootstrap"]["initdb"] == ["data-checksums"]
    assert restoring["bootstrap"][method] == {
        "command": "pgbackrest --stanza=keybuzz-pg --pg1-path=/var/lib/postgresql/17/patroni --type=time "
                   "'--target=2026-11-26 10:15:30.250000+00' --target-action=promote --log-level-console=info restore",
        "no_params": True, "keep_existing_recovery_conf": True}
    assert restoring["tags"]["nofailover"] is False
    other = rs.restore_config(config, False, "keybuzz-pg", T)
    assert other["tags"] == {"nofailover": True, "noloadbalance": False} and "method" not in other["bootstrap"]
    assert config == _config()  # the normal configuration is not changed


# --- moving aside, for real on local directories ------------------------------------------------------------------

def _aside(path: Path, stamp: str = "20261126-101530") -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", rs.aside_script(str(path), stamp)], capture_output=True, text=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to postgres needs root")
def test_a_directory_with_data_is_moved_aside_and_left_empty_an_empty_one_is_kept(tmp_path: Path) -> None:
    data = tmp_path / "17" / "patroni"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("17\n")
    done = _aside(data)
    assert done.returncode == 0 and done.stdout.strip() == "moved", done.stderr
    assert (tmp_path / "17" / "patroni.before-restore-20261126-101530" / "PG_VERSION").read_text() == "17\n"
    assert data.is_dir() and not any(data.iterdir()) and oct(data.stat().st_mode & 0o777) == "0o700"
    again = _aside(data)  # a re-run: nothing left to move
    assert again.returncode == 0 and again.stdout.strip() == "empty"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to postgres needs root")
def test_a_live_postmaster_or_an_existing_aside_copy_stops_it(tmp_path: Path) -> None:
    data = tmp_path / "patroni"
    data.mkdir()
    (data / "PG_VERSION").write_text("17\n")
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (data / "postmaster.pid").write_text(f"{sleeper.pid}\n{data}\n")
        live = _aside(data)
        assert live.returncode == 3 and "a PostgreSQL still runs in" in live.stderr
        assert (data / "PG_VERSION").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    (tmp_path / "patroni.before-restore-20261126-101530").mkdir()
    taken = _aside(data)
    assert taken.returncode == 4 and "already exists" in taken.stderr and (data / "PG_VERSION").exists()


# --- the tasks ----------------------------------------------------------------------------------------------------

def _ctx(real_inventory: Path, phase: str, tmp_path: Path):
    ctx, hosts = make_ctx(real_inventory)
    ctx.workdir = tmp_path
    pending, _ = rs.begin(tmp_path, T, "db-master-01", DB)
    pending.phase = phase
    pending.stamp = "20261126-101530"
    order: list[tuple[str, str]] = []
    for name, fake in hosts.items():
        def answer(script: str, name: str = name) -> Result:
            order.append((name, script))
            return result("active\n") if "is-active" in script else result("stopped\n")
        fake.rules.insert(0, (r"systemctl|postmaster", answer))
    return ctx, hosts, pending, order


def test_patroni_is_stopped_on_the_replicas_first_and_the_restore_node_last(real_inventory: Path,
                                                                          tmp_path: Path) -> None:
    ctx, _hosts, pending, order = _ctx(real_inventory, "drilled", tmp_path)
    outcome = rs._stop_patroni(pending)(TaskRun(ctx, "P1", None))
    assert outcome.status == Status.CHANGED
    stops = [name for name, script in order if script == "systemctl stop patroni"]
    assert sorted(stops[:2]) == ["db-slave-01", "db-slave-02"] and stops[2] == "db-master-01"
    assert rs.load_pending(tmp_path).phase == "stopped"


def test_once_started_nothing_is_stopped_or_moved_again(real_inventory: Path, tmp_path: Path) -> None:
    ctx, hosts, pending, order = _ctx(real_inventory, "started", tmp_path)
    host = ctx.db_hosts[1]
    for task in (rs._stop_watchdog(pending), rs._move_aside(pending), rs._write_config(pending)):
        assert task(TaskRun(ctx, "P2", host)).status == Status.UNCHANGED
    assert rs._stop_patroni(pending)(TaskRun(ctx, "P1", None)).status == Status.UNCHANGED
    scripts = [script for fake in hosts.values() for script in fake.scripts]
    assert not [s for s in scripts if "stop" in s or "mv " in s or "config.yml" in s], scripts


def test_a_drill_that_fails_stops_the_restore_before_anything_is_touched(real_inventory: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from kbpg_tui.core import cluster
    from kbpg_tui.core.ops import restore_drill as rd

    ctx, hosts, pending, _order = _ctx(real_inventory, "new", tmp_path)
    leader = cluster.Member("db-master-01", "198.18.0.120", "leader", "running", 4, 0)
    monkeypatch.setattr(cluster, "read_patronictl", lambda run: cluster.ClusterState((leader,)))
    failed = rd.DrillResult(id="x", started="now", backup_host="backup-01", stanza="keybuzz-pg", target=pending.target,
                            status="failed", problems=["the drill failed at restore: no backup before the target"])
    monkeypatch.setattr(rd, "run_drill", lambda ctx, target, query: failed)
    with pytest.raises(TaskError, match="so the cluster was not touched: the drill failed at restore: no backup"):
        rs._drill(pending)(TaskRun(ctx, "P0", None))
    assert rs.load_pending(tmp_path).phase == "new"
    assert not [s for fake in hosts.values() for s in fake.scripts]


# --- the command line -----------------------------------------------------------------------------------------------

def test_the_command_line_refuses_bad_input_before_anything(company: Path) -> None:  # noqa: F811
    assert_bad_input(run_kbpg("restore", workdir=company), "--time T is required")
    assert_bad_input(run_kbpg("restore", "--time", "2026-11-26T10:15:30", workdir=company), "must carry a UTC offset")
    assert_bad_input(run_kbpg("restore", "--time", "2026-11-26T10:15:30+00:00", workdir=company),
                     "pass --yes")
    assert_bad_input(run_kbpg("restore", "--time", "2026-11-26T10:15:30+00:00", "--node", "db-9", "--yes",
                              workdir=company), "--node db-9: not a DB node")
    assert not (company / rs.PENDING_FILE).exists() and not (company / "known_hosts").exists()


def test_a_pending_restore_refuses_the_other_commands(company: Path) -> None:  # noqa: F811
    rs.begin(company, T, None, DB)
    for args in (["switchover", "--yes"], ["drill", "kill", "--yes"], ["restore-drill"], ["backup", "now"]):
        found = run_kbpg(*args, workdir=company)
        assert found.returncode == 2 and "a point-in-time restore is pending" in found.stderr, (args, found.stderr)
    install = run_kbpg("install", "--yes", "--step", "02", workdir=company)
    assert install.returncode == 1 and "a point-in-time restore is pending" in install.stdout, install.stdout
    assert json.loads((company / rs.PENDING_FILE).read_text())["target"] == "2026-11-26T10:15:30.250000+00:00"
