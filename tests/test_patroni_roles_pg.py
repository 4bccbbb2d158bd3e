"""Step 02's roles and pg_hba.conf against a real PostgreSQL started here (issue 13, least privilege): the SQL of
ensure_roles as the leader runs it, and every line of the rendered pg_hba.conf as PostgreSQL parses it."""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from kbpg_tui.core import credentials as creds
from kbpg_tui.core import inventory as inv
from kbpg_tui.core import tls
from kbpg_tui.core.engine import Context, Status, TaskRun
from kbpg_tui.core.settings import Settings
from kbpg_tui.core.steps import s02_patroni as patroni

from .fakes import FakePool, ScriptedConnection, result
from .pg_local import LocalPostgres

pytestmark = pytest.mark.pg


@pytest.fixture(scope="module")
def server() -> Iterator[LocalPostgres]:
    server = LocalPostgres()
    try:
        server.start()
        yield server
    finally:
        server.remove()


def _leader_psql(server: LocalPostgres):
    """A leader whose psql (as kbpg runs it: SQL on stdin, -At) goes to the local server, as its superuser."""
    def answer(script: str, stdin: bytes):
        if "list -f json" in script:
            return result(json.dumps([{"Member": "db-master-01", "Role": "Leader", "State": "running", "TL": 1}]))
        if "psql" in script:
            database = re.search(r"-d (\S+)", script).group(1)  # type: ignore[union-attr]
            done = subprocess.run([str(server.bindir / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h",
                                   str(server.sockets), "-p", str(server.port), "-U", "postgres", "-d", database],
                                  input=stdin, capture_output=True)
            return result(done.stdout.decode(), done.returncode, done.stderr.decode())
        raise AssertionError(f"unexpected command: {script}")
    return answer


def _run(real_inventory: Path, server: LocalPostgres, values: creds.Credentials) -> TaskRun:
    ctx = Context(Settings(), values, inv.load_selection(real_inventory), Path("/nonexistent"),
                  pool=FakePool(), sink=lambda e: None, cancel=threading.Event())  # type: ignore[arg-type]
    ctx.pool = FakePool({h.name: ScriptedConnection(h, _leader_psql(server)) for h in ctx.db_hosts})  # type: ignore[assignment]
    return TaskRun(ctx, "02", None)


def _login(server: LocalPostgres, user: str, password: str, database: str) -> psycopg.Connection:
    return psycopg.connect(host="127.0.0.1", port=server.port, user=user, password=password, dbname=database,
                           connect_timeout=5, autocommit=True)


def test_roles_least_privilege_on_a_cluster_installed_before(real_inventory: Path, server: LocalPostgres) -> None:
    values, _ = creds.generate()
    values.update(POSTGRES_DB="keybuzz_pg", POSTGRES_APP_USER="kb_app_pg", POSTGRES_MONITOR_USER="kb_monitor_pg")
    app, monitor, admin = values["POSTGRES_APP_USER"], values["POSTGRES_MONITOR_USER"], values["POSTGRES_SUPERUSER"]
    with server.admin() as conn:
        # What Patroni bootstrapped, and an app role that once had too much, its database owned by the superuser.
        conn.execute(f'CREATE ROLE "{admin}" LOGIN SUPERUSER')
        conn.execute(f'CREATE ROLE "{values["POSTGRES_REPL_USER"]}" LOGIN REPLICATION')
        conn.execute(f'CREATE ROLE "{app}" LOGIN SUPERUSER CREATEROLE')
        conn.execute(f'CREATE DATABASE "{values["POSTGRES_DB"]}" OWNER "{admin}"')
    run = _run(real_inventory, server, values)

    outcome = patroni.ensure_roles(run)
    assert outcome.status is Status.CHANGED
    assert f"role {app}: SUPERUSER taken away, CREATEROLE taken away" in outcome.detail
    assert f"role {monitor} created (member of pg_monitor)" in outcome.detail
    assert f"database keybuzz_pg: owner {admin} -> {app}" in outcome.detail
    with server.admin() as conn:
        assert conn.execute("SELECT rolsuper, rolcreaterole, rolcanlogin FROM pg_roles WHERE rolname = %s",
                            (app,)).fetchone() == (False, False, True)
        assert conn.execute("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = %s",
                            (admin,)).fetchone() == (True, False)  # the superuser keeps what it is
        assert conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'keybuzz_pg'"
                            ).fetchone() == (app,)
    with _login(server, monitor, values["POSTGRES_MONITOR_PASS"], "postgres") as conn:
        assert conn.execute("SELECT pg_has_role('pg_monitor', 'MEMBER'), rolsuper FROM pg_roles "
                            "WHERE rolname = current_user").fetchone() == (True, False)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE not_mine (id int)")  # read only: public schema of postgres is not its own
    with _login(server, app, values["POSTGRES_APP_PASS"], "keybuzz_pg") as conn:
        conn.execute("CREATE TABLE t (id int)")  # the owner of its database works in it
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE ROLE sneaky")

    assert patroni.ensure_roles(run).status is Status.UNCHANGED
    with server.admin() as conn:
        conn.execute(f'REVOKE pg_monitor FROM "{monitor}"')
    outcome = patroni.ensure_roles(run)
    assert outcome.status is Status.CHANGED and f"role {monitor} made a member of pg_monitor" in outcome.detail


@pytest.fixture(scope="module")
def ssl_server(server: LocalPostgres, tmp_path_factory: pytest.TempPathFactory) -> LocalPostgres:
    """The local server with ssl = on (kbpg's CA, a node certificate), so that hostssl lines are valid there; the
    reload done before any test writes pg_hba.conf (a reload still pending would load the test's file)."""
    workdir = tmp_path_factory.mktemp("tls")
    tls.ensure_ca(workdir)
    tls.ensure_node_cert(workdir, "local-pg", ["localhost"], ["127.0.0.1"], Settings())
    cert, key = tls.node_files(workdir, "local-pg")
    (server.data / "kbpg.crt").write_bytes(cert)
    (server.data / "kbpg.key").write_bytes(key)
    os.chmod(server.data / "kbpg.key", 0o600)
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        for name in ("kbpg.crt", "kbpg.key"):
            os.chown(server.data / name, account.pw_uid, account.pw_gid)
    with server.admin() as conn:
        conn.execute("ALTER SYSTEM SET ssl_cert_file = 'kbpg.crt'")
        conn.execute("ALTER SYSTEM SET ssl_key_file = 'kbpg.key'")
        conn.execute("ALTER SYSTEM SET ssl = on")
        conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 10
    while True:
        with server.admin() as conn:  # a new backend: the postmaster's configuration once it has reloaded
            if conn.execute("SHOW ssl").fetchone() == ("on",):
                return server
        assert time.monotonic() < deadline, "the local server did not turn ssl on"
        time.sleep(0.1)


@pytest.mark.parametrize("enabled", [True, False])
def test_every_hba_line_parses(real_inventory: Path, ssl_server: LocalPostgres, enabled: bool) -> None:
    values, _ = creds.generate()
    settings = Settings()
    settings.tls.enabled = enabled
    settings.network.direct_clients = ["10.0.5.0/24"]
    ctx = Context(settings, values, inv.load_selection(real_inventory), Path("/nonexistent"),
                  pool=FakePool(), sink=lambda e: None, cancel=threading.Event())  # type: ignore[arg-type]
    rules = patroni.hba_rules(TaskRun(ctx, "02", None))
    server = ssl_server
    hba_file = server.data / "pg_hba.conf"
    kept = hba_file.read_bytes()
    try:
        hba_file.write_text("\n".join(rules) + "\n")
        with server.admin() as conn:
            rows = conn.execute("SELECT line_number, type, database, user_name, address, auth_method, error "
                                "FROM pg_hba_file_rules ORDER BY line_number").fetchall()
    finally:
        hba_file.write_bytes(kept)
    assert [row for row in rows if row[-1] is not None] == []
    assert len(rows) == len(rules)
    admin = values["POSTGRES_SUPERUSER"]
    rejects = [row for row in rows if row[5] == "reject"]
    assert [(row[1], row[3]) for row in rejects] == [("host", [admin]), ("host", [admin])]
    assert {row[1] for row in rows if row[4] not in (None, "127.0.0.1")} == {"hostssl" if enabled else "host", "host"}
