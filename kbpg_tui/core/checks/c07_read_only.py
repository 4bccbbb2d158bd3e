"""7. The read-only port (through the LB and each HAProxy node) lands on a replica."""

from __future__ import annotations

import psycopg

from .base import Check, CheckFailed, through_lb_and_haproxy
from .probe import ProbeContext, scalar


def read_only(p: ProbeContext, address: str, name: str) -> str:
    port = p.settings.ports.haproxy_read
    try:
        with p.app(address, port) as conn:
            in_recovery = scalar(conn.execute("SELECT pg_is_in_recovery()"))
            server = str(scalar(conn.execute("SELECT inet_server_addr()::text")))
    except psycopg.Error as exc:
        raise CheckFailed(f"{name} {address}:{port}: {p.pg_error(exc)}") from None
    if not in_recovery:
        raise CheckFailed(f"{name} {address}:{port} leads to the primary ({server}), not a replica")
    return f"{name}: lands on replica {server.split('/')[0]}"


CHECK = Check(7, "read-only port", through_lb_and_haproxy("haproxy_read", read_only))
