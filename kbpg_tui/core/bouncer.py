"""PgBouncer's admin console, from this machine: PAUSE/RESUME around a switchover, RECONNECT after HAProxy reloads.

The console is the ``pgbouncer`` database on each HAProxy node's PgBouncer port, logged into as
``PGBOUNCER_ADMIN_USER``; it speaks only the simple query protocol (PQexec).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg

from .cluster import login
from .logs import redact
from .ssh import Host

if TYPE_CHECKING:
    from .engine import Context


def console(ctx: Context, host: Host, timeout: float = 5) -> psycopg.Connection:
    """The admin console of ``host``'s PgBouncer (over TLS, its certificate verified, when TLS is on)."""
    return psycopg.connect(host=host.address, port=ctx.settings.ports.pgbouncer, **login(ctx, "pgbouncer"),
                           dbname="pgbouncer", autocommit=True, connect_timeout=max(1, int(timeout)),
                           application_name="kbpg")


def command(conn: psycopg.Connection, text: str) -> None:
    """One admin command (PQexec: the console refuses the extended protocol)."""
    result = conn.pgconn.exec_(text.encode())
    if result.status not in (psycopg.pq.ExecStatus.COMMAND_OK, psycopg.pq.ExecStatus.TUPLES_OK):
        raise psycopg.OperationalError((result.error_message or f"{text} failed".encode()).decode(errors="replace"))


def error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redact(text)[:200]


def reconnect(ctx: Context, host: Host) -> str | None:
    """RECONNECT: PgBouncer closes each server connection once its client releases it and opens new ones, so that
    none stays on an HAProxy process that was replaced (an old process runs no checks). No client is dropped.
    Returns the problem, or None."""
    try:
        with console(ctx, host) as conn:
            command(conn, "RECONNECT")
    except psycopg.Error as exc:
        return error_text(exc)
    return None
