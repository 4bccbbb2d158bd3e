"""Step 00: credentials are generated only while no DB node has a cluster ("never regenerate silently")."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kbpg_tui.core import credentials as creds
from kbpg_tui.core import inventory as inv
from kbpg_tui.core.engine import Context, TaskError, TaskRun
from kbpg_tui.core.events import Status
from kbpg_tui.core.settings import Settings
from kbpg_tui.core.ssh import Host
from kbpg_tui.core.steps import s00_credentials as s00

from .conftest import REAL_INVENTORY
from .fakes import FakePool, ScriptedConnection, result, unreachable


def _pool(traces: dict[str, str] | None = None, down: set[str] | None = None) -> FakePool:
    """DB nodes answering the cluster probe: ``traces`` maps a node to what it reports; ``down`` nodes do not answer."""
    traces, down = traces or {}, down or set()
    hosts = [Host(s.hostname, s.ip_private, s.user_ssh) for s in inv.load_selection(REAL_INVENTORY).db_nodes]
    return FakePool({h.name: unreachable(h) if h.name in down
                     else ScriptedConnection(h, lambda script, stdin, name=h.name: result(traces.get(name, ""))) for h in hosts})


def make_run(real_inventory: Path, workdir: Path, pool: FakePool) -> TaskRun:
    ctx = Context(Settings(), creds.Credentials(), inv.load_selection(real_inventory), workdir,
                  pool=pool, sink=lambda e: None, cancel=threading.Event())  # type: ignore[arg-type]
    return TaskRun(ctx, "00", None)


LIVE = "/etc/patroni/config.yml\n/var/lib/postgresql/16/patroni/PG_VERSION\n/var/lib/patroni/raft\n"


def test_first_install_generates_after_finding_no_cluster(real_inventory: Path, tmp_path: Path) -> None:
    pool = _pool()
    run = make_run(real_inventory, tmp_path, pool)
    outcome = s00.ensure_credentials(run)
    assert outcome.status == Status.CHANGED
    assert sorted(pool.gets) == ["db-master-01", "db-slave-01", "db-slave-02"]
    assert not creds.read_env(tmp_path / creds.ENV_FILE).validate()


def test_a_missing_file_is_not_regenerated_when_a_cluster_exists(real_inventory: Path, tmp_path: Path) -> None:
    run = make_run(real_inventory, tmp_path, _pool({"db-slave-01": LIVE}))
    with pytest.raises(TaskError) as refused:
        s00.ensure_credentials(run)
    message = str(refused.value)
    assert "postgres.env is missing" in message and "db-slave-01 (/etc/patroni/config.yml" in message
    assert "Restore" in message and "Nothing was generated" in message
    assert not (tmp_path / creds.ENV_FILE).exists()


@pytest.mark.parametrize("trace", ["/var/lib/postgresql/16/patroni/PG_VERSION", "/var/lib/patroni/raft"])
def test_any_trace_of_a_cluster_counts(real_inventory: Path, tmp_path: Path, trace: str) -> None:
    run = make_run(real_inventory, tmp_path, _pool({"db-slave-02": trace}))
    with pytest.raises(TaskError, match=f"db-slave-02 \\({trace}\\)"):
        s00.ensure_credentials(run)


def test_a_file_lacking_names_is_not_completed_when_a_cluster_exists(real_inventory: Path, tmp_path: Path) -> None:
    values, _ = creds.generate()
    del values["PATRONI_RAFT_PASSWORD"]  # a lost line: a new one would differ from the cluster's
    path = tmp_path / creds.ENV_FILE
    creds.write_env(path, values)
    before = path.read_bytes()
    run = make_run(real_inventory, tmp_path, _pool({"db-master-01": LIVE}))
    with pytest.raises(TaskError, match="lacks PATRONI_RAFT_PASSWORD, but a cluster already exists: db-master-01"):
        s00.ensure_credentials(run)
    assert path.read_bytes() == before


def test_a_node_that_cannot_be_asked_stops_the_generation(real_inventory: Path, tmp_path: Path) -> None:
    run = make_run(real_inventory, tmp_path, _pool(down={"db-slave-02"}))
    with pytest.raises(TaskError, match="cannot tell whether db-slave-02 already runs a cluster .*no SSH answer"):
        s00.ensure_credentials(run)
    assert not (tmp_path / creds.ENV_FILE).exists()


def test_a_complete_file_needs_no_host(real_inventory: Path, tmp_path: Path) -> None:
    values, _ = creds.generate()
    creds.write_env(tmp_path / creds.ENV_FILE, values)
    pool = _pool({"db-master-01": LIVE})
    run = make_run(real_inventory, tmp_path, pool)
    outcome = s00.ensure_credentials(run)
    assert outcome.status == Status.UNCHANGED and pool.gets == []
    assert run.ctx.credentials == values


def test_a_file_lacking_names_is_completed_before_any_cluster(real_inventory: Path, tmp_path: Path) -> None:
    values, _ = creds.generate()
    kept = values["POSTGRES_APP_PASS"]
    del values["PGBOUNCER_STATS_PASS"]
    creds.write_env(tmp_path / creds.ENV_FILE, values)
    outcome = s00.ensure_credentials(make_run(real_inventory, tmp_path, _pool()))
    assert outcome.status == Status.CHANGED and "added PGBOUNCER_STATS_PASS" in outcome.detail
    now = creds.read_env(tmp_path / creds.ENV_FILE)
    assert now["POSTGRES_APP_PASS"] == kept and now["PGBOUNCER_STATS_PASS"]
