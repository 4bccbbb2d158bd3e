"""Step 00: credentials are generated only while no DB node has a cluster ("never regenerate silently")."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kbpg_tui.core import credentials as creds
from kbpg_tui.core import inventory as inv
from kbpg_tui.core import tls
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


def test_names_that_only_add_a_role_are_added_to_a_live_cluster(real_inventory: Path, tmp_path: Path) -> None:
    # A cluster kbpg installed before the monitoring role existed: its postgres.env lacks only that role's names.
    values, _ = creds.generate()
    kept = dict(values)
    for name in ("POSTGRES_MONITOR_USER", "POSTGRES_MONITOR_PASS"):
        del values[name]
    creds.write_env(tmp_path / creds.ENV_FILE, values)
    pool = _pool({name: LIVE for name in ("db-master-01", "db-slave-01", "db-slave-02")})
    outcome = s00.ensure_credentials(make_run(real_inventory, tmp_path, pool))
    assert outcome.status == Status.CHANGED
    assert "added POSTGRES_MONITOR_USER, POSTGRES_MONITOR_PASS" in outcome.detail
    now = creds.read_env(tmp_path / creds.ENV_FILE)
    assert now["POSTGRES_MONITOR_USER"] == "kb_monitor" and now["POSTGRES_MONITOR_PASS"]
    assert {name: now[name] for name in values} == {name: kept[name] for name in values}  # nothing else touched


def test_an_additive_name_does_not_carry_a_missing_secret_through(real_inventory: Path, tmp_path: Path) -> None:
    values, _ = creds.generate()
    for name in ("POSTGRES_MONITOR_PASS", "PGBOUNCER_STATS_PASS"):
        del values[name]
    path = tmp_path / creds.ENV_FILE
    creds.write_env(path, values)
    before = path.read_bytes()
    run = make_run(real_inventory, tmp_path, _pool({"db-slave-02": LIVE}))
    with pytest.raises(TaskError, match=r"lacks PGBOUNCER_STATS_PASS, but a cluster already exists: db-slave-02"):
        s00.ensure_credentials(run)
    assert path.read_bytes() == before


def test_additive_names_are_exactly_the_monitor_role_the_ca_path_and_the_backup_key() -> None:
    assert creds.ADDITIVE_NAMES == {"POSTGRES_MONITOR_USER", "POSTGRES_MONITOR_PASS", "POSTGRES_SSL_ROOT_CERT",
                                    "BACKUP_CIPHER_PASS"}
    assert not creds.ADDITIVE_NAMES & set(creds.REQUIRED_NAMES)


def _with_credentials(real_inventory: Path, workdir: Path, settings: Settings | None = None) -> TaskRun:
    values, _ = creds.generate()
    creds.write_env(workdir / creds.ENV_FILE, values)
    run = make_run(real_inventory, workdir, _pool())
    if settings is not None:
        run.ctx.settings = settings
    return run


def test_tls_makes_the_ca_and_a_certificate_per_host(real_inventory: Path, tmp_path: Path) -> None:
    run = _with_credentials(real_inventory, tmp_path)
    outcome = s00.ensure_certificates(run)
    assert outcome.status == Status.CHANGED
    assert "CA: made the CA" in outcome.detail
    for name in ("db-master-01", "db-slave-01", "db-slave-02", "haproxy-01", "haproxy-02"):
        assert f"{name}: issued" in outcome.detail
        cert, _key = tls.node_files(tmp_path, name)
        assert tls.cert_info(cert).subject_cn == name
    assert "PRIVATE KEY" not in outcome.detail and "BEGIN" not in outcome.detail
    root_cert = str((tmp_path / tls.CA_CERT).resolve())
    assert creds.read_env(tmp_path / creds.ENV_FILE)["POSTGRES_SSL_ROOT_CERT"] == root_cert
    assert f"added POSTGRES_SSL_ROOT_CERT in {tmp_path / creds.ENV_FILE}" in outcome.detail
    assert run.ctx.credentials["POSTGRES_SSL_ROOT_CERT"] == root_cert
    assert run.ctx.state["tls_issued"] == {"db-master-01", "db-slave-01", "db-slave-02", "haproxy-01", "haproxy-02"}
    again = s00.ensure_certificates(make_run(real_inventory, tmp_path, _pool()))
    assert again.status == Status.UNCHANGED, again.detail
    assert "CA and 5 node certificates valid, the first expires in 365 days" == again.detail


def test_tls_renews_what_expires_and_says_why(real_inventory: Path, tmp_path: Path) -> None:
    run = _with_credentials(real_inventory, tmp_path)
    s00.ensure_certificates(run)
    ctx = run.ctx
    dns, ips = tls.wanted_sans(ctx, "haproxy-01")
    short = Settings()
    short.tls.cert_days = 10
    tls.ensure_node_cert(tmp_path, "haproxy-01", dns, ips, short, force=True)  # as if issued 355 days ago
    outcome = s00.ensure_certificates(make_run(real_inventory, tmp_path, _pool()))
    assert outcome.status == Status.CHANGED
    assert outcome.detail == "haproxy-01: renewed: expires in 10 days"


def test_tls_corrects_a_stale_ca_path(real_inventory: Path, tmp_path: Path) -> None:
    run = _with_credentials(real_inventory, tmp_path)
    s00.ensure_certificates(run)
    path = tmp_path / creds.ENV_FILE
    values = creds.read_env(path)
    values["POSTGRES_SSL_ROOT_CERT"] = "/elsewhere/credentials/tls/ca.crt"  # the work directory was moved
    creds.write_env(path, values)
    outcome = s00.ensure_certificates(make_run(real_inventory, tmp_path, _pool()))
    assert outcome.status == Status.CHANGED and "updated POSTGRES_SSL_ROOT_CERT" in outcome.detail
    assert creds.read_env(path)["POSTGRES_SSL_ROOT_CERT"] == str((tmp_path / tls.CA_CERT).resolve())


def test_tls_disabled_makes_nothing(real_inventory: Path, tmp_path: Path) -> None:
    settings = Settings()
    settings.tls.enabled = False
    run = _with_credentials(real_inventory, tmp_path, settings)
    before = (tmp_path / creds.ENV_FILE).read_bytes()
    outcome = s00.ensure_certificates(run)
    assert outcome.status == Status.UNCHANGED and "TLS disabled" in outcome.detail
    assert not (tmp_path / tls.TLS_DIR).exists() and (tmp_path / creds.ENV_FILE).read_bytes() == before


def test_a_broken_ca_fails_the_task_and_is_left_alone(real_inventory: Path, tmp_path: Path) -> None:
    run = _with_credentials(real_inventory, tmp_path)
    s00.ensure_certificates(run)
    (tmp_path / tls.CA_KEY).unlink()
    ca = tls.ca_pem(tmp_path)
    with pytest.raises(TaskError, match="ca.key is missing: the CA cannot sign"):
        s00.ensure_certificates(make_run(real_inventory, tmp_path, _pool()))
    assert tls.ca_pem(tmp_path) == ca


def test_step_00_runs_the_tls_task_after_the_credentials() -> None:
    assert [(task.name, task.scope) for task in s00.STEP.tasks] == [("credentials", "local"), ("tls", "local")]
