"""8. PgBouncer (through the LB and each HAProxy node): SCRAM login, a wrong password refused, its admin
console, and its secret for the app role the very verifier the server stores."""

from __future__ import annotations

import secrets

import psycopg

from ..ssh import Host, SshError
from .base import Check, CheckFailed, through_lb_and_haproxy
from .probe import ProbeContext


def pgbouncer(p: ProbeContext, address: str, name: str) -> str:
    port = p.settings.ports.pgbouncer
    try:
        with p.app(address, port) as conn:
            conn.execute("SELECT 1").fetchone()
    except psycopg.Error as exc:
        raise CheckFailed(f"{name} {address}:{port}: app login failed: {p.pg_error(exc)}") from None
    try:
        with p.pg(address, port, p.values["POSTGRES_APP_USER"], "wrong-" + secrets.token_hex(8)):
            pass
        raise CheckFailed(f"{name} {address}:{port}: a wrong password was accepted")
    except psycopg.OperationalError as exc:
        if "password authentication failed" not in str(exc) and "SASL" not in str(exc):
            raise CheckFailed(f"{name} {address}:{port}: wrong password refused oddly: {p.pg_error(exc)}") from None
    try:
        with p.pg(address, port, p.values["PGBOUNCER_ADMIN_USER"], p.values["PGBOUNCER_ADMIN_PASS"],
                  dbname="pgbouncer") as conn:
            # The admin console speaks only the simple query protocol: PQexec, not PQexecParams.
            result = conn.pgconn.exec_(b"SHOW POOLS")
            if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
                raise psycopg.OperationalError((result.error_message or b"SHOW POOLS failed").decode(errors="replace"))
            pools = range(result.ntuples)
    except psycopg.Error as exc:
        raise CheckFailed(f"{name} {address}:{port}: SHOW POOLS as {p.values['PGBOUNCER_ADMIN_USER']} failed: "
                          f"{p.pg_error(exc)}") from None
    hosts = [h for h in p.ctx.haproxy_hosts if h.name == name] or p.ctx.haproxy_hosts
    for host in hosts:
        pgbouncer_secret(p, host)
    return f"{name}: SCRAM login ok, wrong password refused, SHOW POOLS ({len(pools)} pools), secret = server's"


def server_verifier(p: ProbeContext) -> str:
    """The app role's SCRAM verifier as the server stores it (read once per run), as the superuser on a DB node
    itself (pg_authid is the superuser's only; the catalog is the same on every node)."""
    def read() -> str:
        app = p.values["POSTGRES_APP_USER"].replace("'", "''")
        errors = []
        for host in p.ctx.db_hosts:
            try:
                return p.local_sql(host, f"SELECT rolpassword FROM pg_authid WHERE rolname = '{app}';").strip()
            except SshError as exc:
                errors.append(str(exc).splitlines()[0])
        raise SshError("; ".join(errors) or "no DB node to ask")
    return p.once("app verifier", read)


def pgbouncer_secret(p: ProbeContext, host: Host) -> None:
    """Pooled server connections hide a stale secret until the next server login: compare the secrets themselves."""
    app = p.values["POSTGRES_APP_USER"]
    userlist = p.ssh(host, "cat /etc/pgbouncer/userlist.txt")
    entry = next((line.split('" "', 1)[1].rstrip('"') for line in userlist.splitlines()
                  if line.startswith(f'"{app}" "')), "")
    try:
        server = server_verifier(p)
    except SshError as exc:
        raise CheckFailed(f"{host.name}: cannot read {app}'s verifier on a DB node: {exc}") from None
    if not entry:
        raise CheckFailed(f"{host.name}: {app} is missing from PgBouncer's auth file")
    if entry != server:
        raise CheckFailed(f"{host.name}: PgBouncer's secret for {app} differs from the server's; new server logins "
                          "will fail (re-run `kbpg install`)")


CHECK = Check(8, "pgbouncer", through_lb_and_haproxy("pgbouncer", pgbouncer))
