"""6. A write through the LB (and through each HAProxy node) lands on the primary and reaches every replica.

The write is the app role's; that it reached each replica is read as the monitor role, straight from each DB node:
the replica has replayed the WAL up to the write's commit (the superuser logs in only on the DB nodes themselves).
"""

from __future__ import annotations

import time

import psycopg

from .base import Check, CheckFailed, through_lb_and_haproxy
from .probe import ProbeContext, scalar

TABLE = ("CREATE TABLE IF NOT EXISTS kbpg_diagnostics "
         "(marker text, via text, at timestamptz DEFAULT now())")
WRITTEN = "SELECT pg_current_wal_insert_lsn()::text"  # after the INSERT's commit: the WAL holding it ends here
REPLAYED = "SELECT pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn() >= %s::pg_lsn, false)"


def write(p: ProbeContext, address: str, name: str) -> str:
    port = p.settings.ports.haproxy_write
    try:
        with p.app(address, port) as conn:
            if scalar(conn.execute("SELECT pg_is_in_recovery()")):
                raise CheckFailed(f"{name} {address}:{port} leads to a replica (pg_is_in_recovery = true)")
            server = str(scalar(conn.execute("SELECT inet_server_addr()::text")))
            # Concurrent CREATE TABLE IF NOT EXISTS can still collide in the catalog: one probe creates it.
            p.once("kbpg_diagnostics table", lambda: bool(conn.execute(TABLE)))
            conn.execute("INSERT INTO kbpg_diagnostics (marker, via) VALUES (%s, %s)", (p.marker, name))
            conn.execute("DELETE FROM kbpg_diagnostics WHERE at < now() - interval '1 day'")
            lsn = str(scalar(conn.execute(WRITTEN)))
    except psycopg.Error as exc:
        raise CheckFailed(f"{name} {address}:{port}: {p.pg_error(exc)}") from None
    missing = replicated(p, server.split("/")[0], lsn)
    if missing:
        raise CheckFailed(f"write via {name} reached {server} but not the replicas {', '.join(missing)} "
                          f"within {p.timeout:.0f} s")
    return f"{name}: write on the primary ({server.split('/')[0]}) seen on every replica"


def replicated(p: ProbeContext, primary: str, lsn: str) -> list[str]:
    """DB nodes that have not replayed the WAL up to ``lsn`` (the write's, on ``primary``'s address) after waiting
    a little; a node taking writes that is not ``primary`` has not (a second primary)."""
    port = p.settings.ports.postgresql
    deadline = time.monotonic() + p.timeout
    pending = {h.name: h for h in p.ctx.db_hosts}
    while pending and time.monotonic() < deadline:
        for name, host in list(pending.items()):
            try:
                # Straight to each node, past HAProxy, as the monitor role (pg_hba lets it in from the private
                # subnet; the app role only comes through the HAProxy nodes).
                with p.monitor(host.address, port) as conn:
                    row = conn.execute(REPLAYED, (lsn,)).fetchone()
                in_recovery, replayed = row if row else (True, False)
                if (in_recovery and replayed) or (not in_recovery and host.address == primary):
                    del pending[name]
            except psycopg.Error:
                pass
        if pending:
            time.sleep(0.2)
    return sorted(pending)


CHECK = Check(6, "writes through the LB", through_lb_and_haproxy("haproxy_write", write))
