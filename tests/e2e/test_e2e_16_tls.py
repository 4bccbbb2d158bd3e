"""Issue 13 on the lab: TLS on every hop and least privilege, as a client sees them.

- psql ``host=LB port=5432|5433|6432 sslmode=verify-full sslrootcert=credentials/tls/ca.crt`` works (the real psql,
  from the work directory, as the issue writes it; and psycopg the same way); the same without TLS is refused;
- ``pg_stat_ssl`` shows TLS for every replication connection and every client connection that crosses the network;
- Patroni's REST API over plain HTTP gets no answer; over HTTPS (verified with kbpg's CA) its unsafe endpoints answer
  401 without credentials; HAProxy's stats page is HTTPS only too;
- the superuser (kb_admin) is refused through the LB and the HAProxy nodes and from this machine, and still logs in
  from a DB node (pg_rewind, a DBA there); the monitoring role reads pg_stat_activity (every session, its query
  included) and nothing else; the app role is neither superuser nor createrole and owns its database;
- diagnostics are green, check 16 included, and a planned switchover works with kbpg's REST calls over HTTPS and its
  watch logged in as the monitoring role.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from kbpg_tui.core import cluster, tls

from .conftest import (
    DB_HOSTS,
    HAPROXY_HOSTS,
    LB,
    Installed,
    connect,
    kbpg,
    leader_host,
    on_host,
    superuser_sql,
    wait_healthy,
)

pytestmark = [pytest.mark.lab, pytest.mark.e2e]

ENTRY_PORTS = (5432, 5433, 6432)
PSQL = shutil.which("psql")


def values(installed: Installed) -> dict:
    return dict(installed.credentials)


def refused_words(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# --- clients of the LB: verify-full works, plaintext is refused ----------------------------------------------------

@pytest.mark.skipif(PSQL is None, reason="no psql on this machine (scripts/setup installs it)")
@pytest.mark.parametrize("port", ENTRY_PORTS)
def test_psql_verify_full_with_credentials_tls_ca_crt_works_through_the_lb(installed: Installed, port: int) -> None:
    v = values(installed)
    # Literally the command line, run from the work directory (sslrootcert is relative to it); the password
    # in the environment, never in argv.
    dsn = (f"host={LB.address} port={port} sslmode=verify-full sslrootcert=credentials/tls/ca.crt "
           f"user={v['POSTGRES_APP_USER']} dbname={v['POSTGRES_DB']} connect_timeout=10")
    assert PSQL is not None
    done = subprocess.run([PSQL, dsn, "-XAtc", "SELECT 'tls ok'"], cwd=installed.workdir, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PGPASSWORD": v["POSTGRES_APP_PASS"]})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "tls ok"


@pytest.mark.parametrize("port", ENTRY_PORTS)
@pytest.mark.parametrize("where", ["LB"] + [h.name for h in HAPROXY_HOSTS])
def test_the_app_role_over_verify_full_reaches_every_entry_point(installed: Installed, where: str, port: int) -> None:
    address = LB.address if where == "LB" else next(h.address for h in HAPROXY_HOSTS if h.name == where)
    with connect(installed.workdir, "app", address, port) as conn:
        assert conn.pgconn.ssl_in_use  # this hop: TLS, the certificate verified for the address asked
        # 5432/5433: HAProxy passes TCP through, the server sees this very TLS session; 6432: PgBouncer's own server
        # connection to PostgreSQL is TLS too.
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0] is True


@pytest.mark.parametrize("port", ENTRY_PORTS)
def test_a_client_trusting_another_ca_is_refused_by_verify_full(installed: Installed, port: int,
                                                                tmp_path: Path) -> None:
    tls.ensure_ca(tmp_path)  # a CA of its own, not the cluster's
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        connect(installed.workdir, "app", LB.address, port, sslrootcert=str(tls.ca_path(tmp_path)))


@pytest.mark.parametrize("port", ENTRY_PORTS)
def test_the_same_login_without_tls_is_refused(installed: Installed, port: int) -> None:
    with pytest.raises(psycopg.OperationalError) as refused:
        connect(installed.workdir, "app", LB.address, port, sslmode="disable")
    words = refused_words(refused.value)
    if port == 6432:  # PgBouncer: client_tls_sslmode = require
        assert "SSL required" in words, words
    else:  # the DB node behind HAProxy: every remote pg_hba line is hostssl
        assert "no pg_hba.conf entry" in words and "no encryption" in words, words


@pytest.mark.parametrize("host", DB_HOSTS, ids=[h.name for h in DB_HOSTS])
def test_a_plaintext_login_to_a_db_node_is_refused(installed: Installed, host) -> None:
    with pytest.raises(psycopg.OperationalError) as refused:
        connect(installed.workdir, "monitor", host.address, 5432, sslmode="disable")
    words = refused_words(refused.value)
    assert "no pg_hba.conf entry" in words and "no encryption" in words, words
    with connect(installed.workdir, "monitor", host.address, 5432) as conn:  # the same over TLS: in
        assert conn.pgconn.ssl_in_use


# --- pg_stat_ssl: every replication and client connection --------------------------------------------------------

SESSIONS = ("SELECT a.backend_type, a.usename, host(a.client_addr), s.ssl, coalesce(s.version, '') "
            "FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.client_addr IS NOT NULL "
            "AND a.pid <> pg_backend_pid() ORDER BY 1, 2, 3;")


def test_pg_stat_ssl_shows_tls_for_every_replication_and_client_connection(installed: Installed) -> None:
    wait_healthy(installed.workdir)
    leader = leader_host(installed.workdir)
    # Client sessions of every kind first: the app through each entry point, the monitoring role straight to a node.
    sessions = [connect(installed.workdir, "app", LB.address, port) for port in ENTRY_PORTS]
    sessions += [connect(installed.workdir, "app", h.address, 6432) for h in HAPROXY_HOSTS]
    sessions += [connect(installed.workdir, "monitor", h.address, 5432) for h in DB_HOSTS]
    try:
        for conn in sessions:
            conn.execute("SELECT 1").fetchone()
        seen: dict[str, list[list[str]]] = {}
        for host in DB_HOSTS:
            rows = [line.split("|") for line in superuser_sql(installed.workdir, SESSIONS, host=host).splitlines()]
            seen[host.name] = rows
    finally:
        for conn in sessions:
            conn.close()
    walsenders = [r for r in seen[leader.name] if r[0] == "walsender"]
    assert len(walsenders) == len(DB_HOSTS) - 1, seen[leader.name]  # one per replica
    # Loopback (a node's own Patroni, its own tools) never crosses the network; everything else must be TLS.
    crossing = {name: [r for r in rows if r[2] not in ("127.0.0.1", "::1")] for name, rows in seen.items()}
    plaintext = {name: [r for r in rows if r[3] != "t"] for name, rows in crossing.items()}
    assert not any(plaintext.values()), plaintext
    assert all(r[4].startswith("TLSv1.") and r[4] >= "TLSv1.2" for rows in crossing.values() for r in rows), crossing
    # and they are there: replication, PgBouncer's and HAProxy's clients, the monitoring role
    users = {r[1] for rows in crossing.values() for r in rows}
    v = values(installed)
    assert {v["POSTGRES_REPL_USER"], v["POSTGRES_APP_USER"], v["POSTGRES_MONITOR_USER"]} <= users, users


# --- Patroni's REST API and HAProxy's stats ----------------------------------------------------------------------

def plain_http(url: str) -> str:
    """What a plain HTTP request gets: "no answer: ..." or "answered NNN"."""
    try:
        with cluster.direct_opener().open(url, timeout=10) as response:
            return f"answered {response.status}"
    except urllib.error.HTTPError as exc:
        return f"answered {exc.code}"
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        return f"no answer: {exc}"


def https(workdir: Path, url: str, method: str = "GET", auth: tuple[str, str] | None = None) -> int:
    status, _ = cluster.http_request(url, 10, auth, method, context=tls.client_context(workdir))
    return status


@pytest.mark.parametrize("host", DB_HOSTS, ids=[h.name for h in DB_HOSTS])
def test_patroni_rest_refuses_plain_http_and_unsafe_endpoints_need_credentials_over_https(installed: Installed,
                                                                                         host) -> None:
    assert plain_http(f"http://{host.address}:8008/health").startswith("no answer"), "REST answers plain HTTP"
    workdir = installed.workdir
    assert https(workdir, f"https://{host.address}:8008/health") == 200  # reads stay open (HAProxy's checks)
    assert https(workdir, f"https://{host.address}:8008/config", "PATCH") == 401
    assert https(workdir, f"https://{host.address}:8008/restart", "POST") == 401
    assert https(workdir, f"https://{host.address}:8008/config", "PATCH", ("patroni", "not-the-password")) == 401
    # the certificate: kbpg's CA, for the node's address; another CA's client refuses it
    info = tls.tls_probe(host.address, 8008, tls.ca_path(workdir), host.address, 10)
    assert host.address in info.sans_ip and info.days_left > 30
    with pytest.raises(cluster.NoAnswer, match="certificate verify failed"):
        cluster.http_request(f"https://{host.address}:8008/health", 10,
                             context=ssl.create_default_context())  # the system's CAs do not know kbpg's


@pytest.mark.parametrize("host", HAPROXY_HOSTS, ids=[h.name for h in HAPROXY_HOSTS])
def test_haproxy_stats_are_https_only_with_a_password(installed: Installed, host) -> None:
    assert plain_http(f"http://{host.address}:8404/;csv").startswith("no answer")
    v = values(installed)
    assert https(installed.workdir, f"https://{host.address}:8404/;csv") == 401
    assert https(installed.workdir, f"https://{host.address}:8404/;csv",
                 auth=(v["HAPROXY_STATS_USER"], v["HAPROXY_STATS_PASSWORD"])) == 200


def test_haproxy_checks_verify_the_patroni_certificate(installed: Installed) -> None:
    for host in HAPROXY_HOSTS:
        code, out, err = on_host(installed.workdir, host.address, "cat /etc/haproxy/haproxy.cfg")
        assert code == 0, err
        assert "check-ssl" in out and "verify required" in out and "ca-file /etc/haproxy/tls/ca.crt" in out, out
        assert "verify none" not in out


# --- least privilege ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("port", (5432, 5433))
@pytest.mark.parametrize("where", ["LB"] + [h.name for h in HAPROXY_HOSTS] + ["direct"])
def test_the_superuser_is_refused_through_the_lb_the_haproxy_nodes_and_from_here(installed: Installed, where: str,
                                                                                 port: int) -> None:
    v = values(installed)
    if where == "direct":
        if port != 5432:
            pytest.skip("a DB node listens on 5432 only")
        address = leader_host(installed.workdir).address
    else:
        address = LB.address if where == "LB" else next(h.address for h in HAPROXY_HOSTS if h.name == where)
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(host=address, port=port, user=v["POSTGRES_SUPERUSER"], password=v["POSTGRES_SUPERPASS"],
                        dbname="postgres", connect_timeout=10, sslmode="verify-full",
                        sslrootcert=str(tls.ca_path(installed.workdir)))
    words = refused_words(refused.value)
    assert "pg_hba.conf rejects connection" in words and f'user "{v["POSTGRES_SUPERUSER"]}"' in words, words


def test_the_superuser_through_pgbouncer_is_refused(installed: Installed) -> None:
    v = values(installed)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host=LB.address, port=6432, user=v["POSTGRES_SUPERUSER"], password=v["POSTGRES_SUPERPASS"],
                        dbname=v["POSTGRES_DB"], connect_timeout=10, sslmode="verify-full",
                        sslrootcert=str(tls.ca_path(installed.workdir)))


def test_the_superuser_still_logs_in_from_a_db_node_over_tls(installed: Installed) -> None:
    v = values(installed)
    leader = leader_host(installed.workdir)
    other = next(h for h in DB_HOSTS if h.name != leader.name)
    # From another DB node, as pg_rewind does: over TLS verified with the CA on the node; the password on stdin.
    command = ("IFS= read -r PGPASSWORD; export PGPASSWORD; "
               f"psql -XAt 'host={leader.address} port=5432 dbname=postgres user={v['POSTGRES_SUPERUSER']} "
               f"sslmode=verify-full sslrootcert={tls.DB_DIR}/ca.crt connect_timeout=10' "
               "-c 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'")
    code, out, err = on_host(installed.workdir, other.address, command, stdin_text=v["POSTGRES_SUPERPASS"] + "\n")
    assert code == 0, err
    assert out.strip() == "t"


def test_the_monitor_role_reads_pg_stat_activity_and_nothing_else(installed: Installed) -> None:
    v = values(installed)
    marker = "SELECT 'kbpg-e2e-16-visible', pg_sleep(30)"
    with connect(installed.workdir, "app", LB.address, 5432) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kbpg_e2e_16_private (secret text)")
    app = connect(installed.workdir, "app", LB.address, 5432)
    try:
        app.pgconn.send_query(marker.encode())  # a session of another role, its query running
        with connect(installed.workdir, "monitor", LB.address, 5432) as conn:
            rows = conn.execute("SELECT usename, query FROM pg_stat_activity WHERE query LIKE %s",
                                ("%kbpg-e2e-16-visible%",)).fetchall()
            hidden = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query = '<insufficient privilege>'")
            assert hidden.fetchone()[0] == 0  # pg_monitor sees every session's query
            flags = conn.execute("SELECT rolsuper, rolcreaterole, rolcreatedb, pg_has_role(current_user, 'pg_monitor', "
                                 "'MEMBER') FROM pg_roles WHERE rolname = current_user").fetchone()
            assert flags == (False, False, False, True)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("CREATE TABLE kbpg_monitor_may_not (x int)")
        assert any(user == v["POSTGRES_APP_USER"] and "kbpg-e2e-16-visible" in query for user, query in rows), rows
    finally:
        app.cancel()
        app.close()
    with connect(installed.workdir, "monitor", LB.address, 5432, dbname=v["POSTGRES_DB"]) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # the application's data is not the monitor's
            conn.execute("SELECT count(*) FROM kbpg_e2e_16_private").fetchone()


def test_the_app_role_is_neither_superuser_nor_createrole_and_owns_its_database(installed: Installed) -> None:
    v = values(installed)
    with connect(installed.workdir, "app", LB.address, 5432) as conn:
        flags = conn.execute("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user").fetchone()
        owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()")
        assert flags == (False, False)
        assert owner.fetchone()[0] == v["POSTGRES_APP_USER"]


# --- diagnostics and kbpg's own REST calls --------------------------------------------------------------------------

def test_diagnostics_are_green_with_every_tls_target_verified(installed: Installed) -> None:
    result = kbpg(installed.workdir, "diagnose", "--json", timeout=180)
    report = json.loads(result.stdout)
    failed = [r for r in report["results"] if r["verdict"] == "fail"]
    assert result.returncode == 0 and not failed, failed
    tls_results = {r["target"]: r for r in report["results"] if r["number"] == 16}
    assert len(tls_results) == 1 + len(DB_HOSTS) * 2 + 3 + len(HAPROXY_HOSTS) * 2, tls_results
    assert all(r["verdict"] == "pass" for r in tls_results.values()), tls_results
    for host in DB_HOSTS:
        assert tls_results[f"{host.name}:5432"]["reason"].endswith("plaintext refused")
        assert tls_results[f"{host.name} REST :8008"]["reason"].endswith("plain HTTP gets no answer")
    roles = [r for r in report["results"] if r["number"] == 9]
    assert [r["verdict"] for r in roles] == ["pass"] and "refused through the LB" in roles[0]["reason"], roles


def test_a_planned_switchover_over_https_with_the_monitor_roles_watch(installed: Installed) -> None:
    before = leader_host(installed.workdir)
    result = kbpg(installed.workdir, "switchover", "--yes", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    after = leader_host(installed.workdir)
    assert after.name != before.name
    assert "switched over" in result.stdout
