"""Checks through PostgreSQL and PgBouncer: 6 writes, 7 read-only port, 8 pgbouncer, 9 roles and database,
10 pgvector, 14 client sessions."""

from __future__ import annotations

import psycopg
import pytest

from kbpg_tui.core.checks import c06_writes, c07_read_only, c08_pgbouncer, c09_roles, c10_pgvector, c14_client_sessions
from kbpg_tui.core.checks.base import CheckFailed, CheckWarning
from kbpg_tui.core.checks.report import Verdict
from kbpg_tui.core.checks.runner import run_probes

from ..fakes import FakePgConnection, FakePool, ScriptedConnection, result

LB = "198.18.0.10"
PRIMARY = "198.18.0.120"


# --- 6 writes through the LB -------------------------------------------------------------------------------

def writes(seen_on: set[str], in_recovery: bool = False):
    """The write port leads to the primary (or a replica); this run's row is visible on the nodes ``seen_on``."""
    made: list[FakePgConnection] = []

    def databases(host, port, user, password, dbname):
        if port == 5432 and host in (LB, "198.18.0.11", "198.18.0.12"):
            connection = FakePgConnection({"pg_is_in_recovery": [(in_recovery,)],
                                           "inet_server_addr": [(f"{PRIMARY}/32",)]})
        else:
            connection = FakePgConnection({"SELECT count(*) FROM kbpg_diagnostics": [(1 if host in seen_on else 0,)]})
        made.append(connection)
        return connection

    return databases, made


def test_a_write_seen_on_every_node_passes(make) -> None:
    databases, made = writes({PRIMARY, "198.18.0.121", "198.18.0.122"})
    p = make(databases=databases)
    assert c06_writes.write(p, LB, "LB") == f"LB: write on the primary ({PRIMARY}) seen on every replica"
    insert = next(params for sql, params in made[0].executed if sql.startswith("INSERT"))
    assert insert == (p.marker, "LB")
    assert p.connections[0] == (LB, 5432, p.values["POSTGRES_APP_USER"], "keybuzz")
    assert {c[0] for c in p.connections[1:]} == {PRIMARY, "198.18.0.121", "198.18.0.122"}  # straight to each node
    assert all(c[2] == p.values["POSTGRES_SUPERUSER"] for c in p.connections[1:])


def test_a_write_not_replicated_fails_naming_the_replica(make) -> None:
    databases, _ = writes({PRIMARY, "198.18.0.121"})
    p = make(databases=databases, timeout=0.5)
    with pytest.raises(CheckFailed, match=rf"^write via haproxy-01 reached {PRIMARY}/32 but not the replicas "
                                          r"db-slave-02 within 0 s$"):
        c06_writes.write(p, "198.18.0.11", "haproxy-01")


def test_a_write_port_leading_to_a_replica_fails(make) -> None:
    databases, _ = writes(set(), in_recovery=True)
    with pytest.raises(CheckFailed, match=r"^LB 198.18.0.10:5432 leads to a replica \(pg_is_in_recovery = true\)$"):
        c06_writes.write(make(databases=databases), LB, "LB")


def test_the_table_is_created_once_for_all_the_write_probes(make) -> None:
    databases, made = writes({PRIMARY, "198.18.0.121", "198.18.0.122"})
    p = make(databases=databases)
    report = run_probes(c06_writes.CHECK.probes(p), budget=10)
    assert [(r.target, r.verdict) for r in report.results] == [
        ("LB 198.18.0.10:5432", Verdict.PASS), ("haproxy-01:5432", Verdict.PASS), ("haproxy-02:5432", Verdict.PASS)]
    creates = [sql for c in made for sql, _ in c.executed if sql.startswith("CREATE TABLE")]
    assert len(creates) == 1


# --- 7 read-only port --------------------------------------------------------------------------------------

def read_port(in_recovery: bool):
    return lambda host, port, user, password, dbname: FakePgConnection(
        {"pg_is_in_recovery": [(in_recovery,)], "inet_server_addr": [("198.18.0.122/32",)]})


def test_the_read_port_lands_on_a_replica(make) -> None:
    p = make(databases=read_port(True))
    assert c07_read_only.read_only(p, LB, "LB") == "LB: lands on replica 198.18.0.122"
    assert p.connections == [(LB, 5433, p.values["POSTGRES_APP_USER"], "keybuzz")]


def test_the_read_port_leading_to_the_primary_fails(make) -> None:
    with pytest.raises(CheckFailed, match=r"^haproxy-02 198.18.0.12:5433 leads to the primary \(198.18.0.122/32\), "
                                          "not a replica$"):
        c07_read_only.read_only(make(databases=read_port(False)), "198.18.0.12", "haproxy-02")


# --- 8 pgbouncer -------------------------------------------------------------------------------------------

VERIFIER = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"


def bouncer(make, *, wrong_accepted: bool = False, userlist_secret: str = VERIFIER, pools: int = 2,
            console: Exception | None = None):
    def databases(host, port, user, password, dbname):
        if port == 6432 and password.startswith("wrong-") and not wrong_accepted:
            raise psycopg.OperationalError(f'password authentication failed for user "{user}"')
        if dbname == "pgbouncer":
            return FakePgConnection({"SHOW POOLS": console or [("keybuzz", user)] * pools})
        if port == 5432:  # the server's verifier, as the superuser through the LB
            return FakePgConnection({"SELECT rolpassword FROM pg_authid": [(VERIFIER,)]})
        return FakePgConnection({"SELECT 1": [(1,)]})

    def proxy(script: str, stdin: bytes):
        assert script == "cat /etc/pgbouncer/userlist.txt"
        return result(f'"kb_app" "{userlist_secret}"\n"kb_pgbouncer" "SCRAM-SHA-256$4096:x$y:z"\n')

    probe = make(databases=databases)
    probe.values["POSTGRES_APP_USER"] = "kb_app"
    probe.ctx.pool = FakePool({h.name: ScriptedConnection(h, proxy) for h in probe.ctx.haproxy_hosts})
    return probe


def test_pgbouncer_passes_with_scram_the_console_and_the_servers_secret(make) -> None:
    p = bouncer(make)
    assert c08_pgbouncer.pgbouncer(p, LB, "LB") == \
        "LB: SCRAM login ok, wrong password refused, SHOW POOLS (2 pools), secret = server's"
    assert sorted(p.ctx.pool.gets) == ["haproxy-01", "haproxy-02"]  # through the LB: every node's auth file
    p = bouncer(make)
    c08_pgbouncer.pgbouncer(p, "198.18.0.12", "haproxy-02")
    assert p.ctx.pool.gets == ["haproxy-02"]  # through one node: that node's


def test_pgbouncer_fails_when_a_wrong_password_gets_in(make) -> None:
    with pytest.raises(CheckFailed, match="^LB 198.18.0.10:6432: a wrong password was accepted$"):
        c08_pgbouncer.pgbouncer(bouncer(make, wrong_accepted=True), LB, "LB")


def test_pgbouncer_fails_on_a_stale_secret_or_a_broken_console(make) -> None:
    with pytest.raises(CheckFailed, match="^haproxy-01: PgBouncer's secret for kb_app differs from the server's"):
        c08_pgbouncer.pgbouncer(bouncer(make, userlist_secret="SCRAM-SHA-256$4096:old$a:b"), "198.18.0.11",
                                "haproxy-01")
    console = psycopg.OperationalError("not allowed")
    with pytest.raises(CheckFailed, match=r"^LB 198.18.0.10:6432: SHOW POOLS as kb_pgbouncer failed: not allowed$"):
        c08_pgbouncer.pgbouncer(bouncer(make, console=console), LB, "LB")


def test_pgbouncer_down_fails_naming_the_port(make) -> None:
    p = make()  # no database answers
    with pytest.raises(CheckFailed, match=r'^haproxy-02 198.18.0.12:6432: app login failed: connection to server '
                                          r'at "198.18.0.12", port 6432 failed: Connection refused$'):
        c08_pgbouncer.pgbouncer(p, "198.18.0.12", "haproxy-02")


# --- 9 roles and database, 10 pgvector ---------------------------------------------------------------------

def test_roles_and_database_pass_and_name_what_is_missing(make) -> None:
    present = [("kb_admin",), ("kb_repl",), ("kb_app",)]
    database = [("keybuzz",)]
    p = make(databases=lambda *a: FakePgConnection({"FROM pg_roles": present, "FROM pg_database": database}))
    for name, value in (("POSTGRES_SUPERUSER", "kb_admin"), ("POSTGRES_REPL_USER", "kb_repl"),
                        ("POSTGRES_APP_USER", "kb_app")):
        p.values[name] = value
    assert c09_roles.roles(p) == "roles kb_admin, kb_repl, kb_app and database keybuzz exist"
    assert p.connections == [(LB, 5432, "kb_admin", "postgres")]
    present.pop(1)
    database.clear()
    with pytest.raises(CheckFailed, match="^missing: kb_repl, database keybuzz$"):
        c09_roles.roles(p)


def test_pgvector_passes_on_a_distance_of_one_and_fails_without_the_extension(make) -> None:
    answers: dict = {"FROM pg_extension": [("0.8.0",)], "vector <-> ": [(1.0,)]}
    p = make(databases=lambda *a: FakePgConnection(answers))
    assert c10_pgvector.pgvector(p) == "vector 0.8.0; distance query returned 1"
    assert p.connections == [(LB, 6432, p.values["POSTGRES_APP_USER"], "keybuzz")]
    answers["vector <-> "] = [(2.0,)]
    with pytest.raises(CheckFailed, match="^distance query returned 2.0, expected 1$"):
        c10_pgvector.pgvector(p)
    answers["FROM pg_extension"] = []
    with pytest.raises(CheckFailed, match="^the vector extension is not in keybuzz$"):
        c10_pgvector.pgvector(p)


# --- 14 client sessions ----------------------------------------------------------------------------------------

def sessions(rows: list[tuple]):
    return lambda *a: FakePgConnection({"inet_server_addr": [(PRIMARY,)], "FROM pg_stat_activity": rows})


def test_sessions_from_expected_addresses_pass(make) -> None:
    rows = [("198.18.0.11", "kb_app", 3), ("198.18.0.12", "kb_app", 2), ("198.18.0.50", "kb_admin", 1)]
    p = make(databases=sessions(rows))
    p.values["POSTGRES_SUPERUSER"] = "kb_admin"
    assert c14_client_sessions.client_sessions(p) == \
        "primary db-master-01: 6 client sessions, all from expected addresses"


def test_stray_sessions_warn_naming_the_address(make) -> None:
    rows = [("198.18.0.11", "kb_app", 3), ("198.18.0.77", "kb_app", 2), ("198.18.0.77", "kb_admin", 1)]
    p = make(databases=sessions(rows))
    p.values["POSTGRES_SUPERUSER"] = "kb_admin"
    with pytest.raises(CheckWarning, match=r"^primary db-master-01: .*198\.18\.0\.77 \(kb_app, 2 sessions\); point "
                                           r"those clients at the LB \(198.18.0.10\)"):
        c14_client_sessions.client_sessions(p)
    p.settings.network.direct_clients = ["198.18.0.77/32"]
    assert "all from expected addresses" in c14_client_sessions.client_sessions(p)


def test_sessions_unreadable_fail_naming_the_lb(make) -> None:
    p = make()  # no database answers
    p.values["POSTGRES_SUPERUSER"] = "kb_admin"
    with pytest.raises(CheckFailed, match=r"^LB 198.18.0.10:5432 as kb_admin: connection to server"):
        c14_client_sessions.client_sessions(p)
