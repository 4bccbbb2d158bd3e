"""Checks through PostgreSQL and PgBouncer: 6 writes, 7 read-only port, 8 pgbouncer, 9 roles and database,
10 pgvector, 14 client sessions."""

from __future__ import annotations

import re

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

LSN = "0/3000148"


def writes(replayed_on: set[str], in_recovery: bool = False, primaries: set[str] = frozenset({PRIMARY})):
    """The write port leads to the primary (or a replica); the nodes ``replayed_on`` have replayed the write's WAL;
    ``primaries``: the nodes taking writes."""
    made: list[FakePgConnection] = []

    def databases(host, port, user, password, dbname):
        if port == 5432 and host in (LB, "198.18.0.11", "198.18.0.12"):
            connection = FakePgConnection({"pg_is_in_recovery": [(in_recovery,)],
                                           "inet_server_addr": [(f"{PRIMARY}/32",)],
                                           "pg_current_wal_insert_lsn": [(LSN,)]})
        else:
            connection = FakePgConnection({"pg_last_wal_replay_lsn": [(host not in primaries, host in replayed_on)]})
        made.append(connection)
        return connection

    return databases, made


def test_a_write_seen_on_every_node_passes(make) -> None:
    databases, made = writes({"198.18.0.121", "198.18.0.122"})
    p = make(databases=databases)
    assert c06_writes.write(p, LB, "LB") == f"LB: write on the primary ({PRIMARY}) seen on every replica"
    insert = next(params for sql, params in made[0].executed if sql.startswith("INSERT"))
    assert insert == (p.marker, "LB")
    assert p.connections[0] == (LB, 5432, p.values["POSTGRES_APP_USER"], "keybuzz")
    assert {c[0] for c in p.connections[1:]} == {PRIMARY, "198.18.0.121", "198.18.0.122"}  # straight to each node
    assert all(c[2] == p.values["POSTGRES_MONITOR_USER"] for c in p.connections[1:])  # never the superuser
    assert all(params == (LSN,) for c in made[1:] for _, params in c.executed)  # the write's own LSN


def test_a_write_not_replicated_fails_naming_the_replica(make) -> None:
    databases, _ = writes({"198.18.0.121"})
    p = make(databases=databases, timeout=0.5)
    with pytest.raises(CheckFailed, match=rf"^write via haproxy-01 reached {PRIMARY}/32 but not the replicas "
                                          r"db-slave-02 within 0 s$"):
        c06_writes.write(p, "198.18.0.11", "haproxy-01")


def test_a_second_primary_has_not_got_the_write(make) -> None:
    databases, _ = writes({"198.18.0.121"}, primaries={PRIMARY, "198.18.0.122"})
    p = make(databases=databases, timeout=0.5)
    with pytest.raises(CheckFailed, match=r"but not the replicas db-slave-02 within"):
        c06_writes.write(p, LB, "LB")


def test_a_write_port_leading_to_a_replica_fails(make) -> None:
    databases, _ = writes(set(), in_recovery=True)
    with pytest.raises(CheckFailed, match=r"^LB 198.18.0.10:5432 leads to a replica \(pg_is_in_recovery = true\)$"):
        c06_writes.write(make(databases=databases), LB, "LB")


def test_the_table_is_created_once_for_all_the_write_probes(make) -> None:
    databases, made = writes({"198.18.0.121", "198.18.0.122"})
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
            console: Exception | None = None, db_down: bool = False):
    def databases(host, port, user, password, dbname):
        if port == 6432 and password.startswith("wrong-") and not wrong_accepted:
            raise psycopg.OperationalError(f'password authentication failed for user "{user}"')
        if dbname == "pgbouncer":
            return FakePgConnection({"SHOW POOLS": console or [("keybuzz", user)] * pools})
        return FakePgConnection({"SELECT 1": [(1,)]})

    def proxy(script: str, stdin: bytes):
        assert script == "cat /etc/pgbouncer/userlist.txt"
        return result(f'"kb_app" "{userlist_secret}"\n"kb_pgbouncer" "SCRAM-SHA-256$4096:x$y:z"\n')

    def db_node(script: str, stdin: bytes):  # the server's verifier: the superuser on the node itself
        if db_down:
            return result(stderr="psql: error: connection to server on socket failed", exit_status=2)
        assert script.startswith("runuser -u postgres -- psql ") and "-h /var/run/postgresql" in script
        assert stdin == b"SELECT rolpassword FROM pg_authid WHERE rolname = 'kb_app';"
        return result(VERIFIER + "\n")

    probe = make(databases=databases)
    probe.values["POSTGRES_APP_USER"] = "kb_app"
    probe.ctx.pool = FakePool({**{h.name: ScriptedConnection(h, proxy) for h in probe.ctx.haproxy_hosts},
                               **{h.name: ScriptedConnection(h, db_node) for h in probe.ctx.db_hosts}})
    return probe


def test_pgbouncer_passes_with_scram_the_console_and_the_servers_secret(make) -> None:
    p = bouncer(make)
    assert c08_pgbouncer.pgbouncer(p, LB, "LB") == \
        "LB: SCRAM login ok, wrong password refused, SHOW POOLS (2 pools), secret = server's"
    # through the LB: every node's auth file; the verifier read once, on the first DB node
    assert sorted(p.ctx.pool.gets) == ["db-master-01", "haproxy-01", "haproxy-02"]
    assert all(c[2] != p.values["POSTGRES_SUPERUSER"] for c in p.connections)  # never the superuser over TCP
    p = bouncer(make)
    c08_pgbouncer.pgbouncer(p, "198.18.0.12", "haproxy-02")
    assert p.ctx.pool.gets == ["haproxy-02", "db-master-01"]  # through one node: that node's


def test_pgbouncer_fails_naming_the_db_nodes_when_the_verifier_cannot_be_read(make) -> None:
    with pytest.raises(CheckFailed, match=r"^haproxy-02: cannot read kb_app's verifier on a DB node: db-master-01"):
        c08_pgbouncer.pgbouncer(bouncer(make, db_down=True), "198.18.0.12", "haproxy-02")


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

SUPERUSER_REFUSED = psycopg.OperationalError(
    'connection to server at "198.18.0.10", port 5432 failed: FATAL:  pg_hba.conf rejects connection for host '
    '"198.18.0.1", user "kb_admin", database "postgres", SSL encryption')


def roles_db(present: list[tuple] | None = None, owner: str | None = "kb_app",
             superuser: Exception | None = SUPERUSER_REFUSED):
    """Through the LB: the app role reads the catalogs (pg_roles: name, super, createrole, in pg_monitor); the
    superuser's login raises ``superuser`` (pg_hba's refusal by default; None lets it in)."""
    rows = present if present is not None else [
        ("kb_admin", True, True, True), ("kb_repl", False, False, False), ("kb_app", False, False, False),
        ("kb_monitor", False, False, True)]

    def databases(host, port, user, password, dbname):
        if user == "kb_admin":
            if superuser is not None:
                raise superuser
            return FakePgConnection()
        return FakePgConnection({"FROM pg_roles": rows, "FROM pg_database": [(owner,)] if owner else []})

    return databases, rows


def named(p):
    for name, value in (("POSTGRES_SUPERUSER", "kb_admin"), ("POSTGRES_REPL_USER", "kb_repl"),
                        ("POSTGRES_APP_USER", "kb_app"), ("POSTGRES_MONITOR_USER", "kb_monitor")):
        p.values[name] = value
    return p


def test_roles_pass_with_least_privilege_and_the_superuser_refused_through_the_lb(make) -> None:
    databases, _ = roles_db()
    p = named(make(databases=databases))
    assert c09_roles.roles(p) == ("roles kb_admin, kb_repl, kb_app, kb_monitor and database keybuzz (owned by kb_app) "
                                  "exist; kb_app is neither superuser nor createrole; kb_monitor in pg_monitor; "
                                  "kb_admin refused through the LB")
    # read as the app role, then the superuser tried once (refused): never read as the superuser
    assert p.connections == [(LB, 5432, "kb_app", "keybuzz"), (LB, 5432, "kb_admin", "postgres")]


def test_roles_name_what_is_missing(make) -> None:
    databases, rows = roles_db(owner=None)
    rows.pop(1)
    with pytest.raises(CheckFailed, match="^missing: kb_repl; missing: database keybuzz; re-run `kbpg install`$"):
        c09_roles.roles(named(make(databases=databases)))


@pytest.mark.parametrize("app, owner, monitor, reason", [
    ((True, False), "kb_app", True, "kb_app has SUPERUSER (the app role must have neither)"),
    ((False, True), "kb_app", True, "kb_app has CREATEROLE (the app role must have neither)"),
    ((False, False), "kb_admin", True, "database keybuzz is owned by kb_admin, not kb_app"),
    ((False, False), "kb_app", False, "kb_monitor is not a member of pg_monitor"),
])
def test_roles_fail_on_privileges_beyond_the_least(make, app, owner, monitor, reason: str) -> None:
    rows = [("kb_admin", True, True, True), ("kb_repl", False, False, False), ("kb_app", *app, False),
            ("kb_monitor", False, False, monitor)]
    databases, _ = roles_db(rows, owner=owner)
    with pytest.raises(CheckFailed, match=f"^{re.escape(reason)}; re-run `kbpg install`$"):
        c09_roles.roles(named(make(databases=databases)))


def test_the_superuser_logging_in_through_the_lb_fails(make) -> None:
    databases, _ = roles_db(superuser=None)
    with pytest.raises(CheckFailed, match=r"^kb_admin \(the superuser\) can log in through the LB 198.18.0.10:5432"):
        c09_roles.roles(named(make(databases=databases)))
    wrong = psycopg.OperationalError('FATAL:  password authentication failed for user "kb_admin"')
    databases, _ = roles_db(superuser=wrong)
    with pytest.raises(CheckFailed, match=r"^kb_admin \(the superuser\) gets as far as its password through the LB"):
        c09_roles.roles(named(make(databases=databases)))
    databases, _ = roles_db(superuser=psycopg.OperationalError("timeout expired"))
    with pytest.raises(CheckWarning, match=r"^LB 198.18.0.10:5432: cannot tell whether kb_admin is refused through "
                                           r"the LB: timeout expired$"):
        c09_roles.roles(named(make(databases=databases)))


def test_the_superuser_is_tried_through_the_lb_with_a_throwaway_password_only(make) -> None:
    databases, _ = roles_db()
    sent: dict[str, str] = {}

    def recording(host, port, user, password, dbname):
        sent[user] = password
        return databases(host, port, user, password, dbname)

    p = named(make(databases=recording))
    c09_roles.roles(p)
    assert sent[p.values["POSTGRES_SUPERUSER"]] != p.values["POSTGRES_SUPERPASS"]
    assert sent[p.values["POSTGRES_SUPERUSER"]].startswith("kbpg-not-a-password-")


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
    rows = [("198.18.0.11", "kb_app", 3), ("198.18.0.12", "kb_app", 2), ("198.18.0.50", "kb_monitor", 1),
            ("198.18.0.121", "kb_admin", 1)]
    p = make(databases=sessions(rows))
    p.values["POSTGRES_MONITOR_USER"] = "kb_monitor"
    assert c14_client_sessions.client_sessions(p) == \
        "primary db-master-01: 7 client sessions, all from expected addresses"
    assert p.connections == [(LB, 5432, "kb_monitor", "postgres")]  # read as the monitor role, never the superuser


def test_stray_sessions_warn_naming_the_address(make) -> None:
    rows = [("198.18.0.11", "kb_app", 3), ("198.18.0.77", "kb_app", 2), ("198.18.0.77", "kb_monitor", 1)]
    p = make(databases=sessions(rows))
    p.values["POSTGRES_MONITOR_USER"] = "kb_monitor"
    with pytest.raises(CheckWarning, match=r"^primary db-master-01: .*198\.18\.0\.77 \(kb_app, 2 sessions\); point "
                                           r"those clients at the LB \(198.18.0.10\)"):
        c14_client_sessions.client_sessions(p)
    p.settings.network.direct_clients = ["198.18.0.77/32"]
    assert "all from expected addresses" in c14_client_sessions.client_sessions(p)


def test_the_superuser_from_the_private_subnet_is_a_stray(make) -> None:
    rows = [("198.18.0.50", "kb_admin", 1)]  # only the DB nodes may log in as the superuser
    p = make(databases=sessions(rows))
    p.values.update(POSTGRES_SUPERUSER="kb_admin", POSTGRES_MONITOR_USER="kb_monitor")
    with pytest.raises(CheckWarning, match=r"198\.18\.0\.50 \(kb_admin, 1 session\)"):
        c14_client_sessions.client_sessions(p)


def test_sessions_unreadable_fail_naming_the_lb(make) -> None:
    p = make()  # no database answers
    p.values["POSTGRES_MONITOR_USER"] = "kb_monitor"
    with pytest.raises(CheckFailed, match=r"^LB 198.18.0.10:5432 as kb_monitor: connection to server"):
        c14_client_sessions.client_sessions(p)


def test_without_the_monitor_role_in_postgres_env_the_sessions_fail_saying_so(make) -> None:
    p = make(databases=sessions([]))
    del p.values["POSTGRES_MONITOR_USER"]
    with pytest.raises(CheckFailed, match=r"^POSTGRES_MONITOR_USER not in credentials/postgres.env: run `kbpg install`"):
        c14_client_sessions.client_sessions(p)
    assert p.connections == []
