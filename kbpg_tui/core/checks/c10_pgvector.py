"""10. pgvector is in the app database and computes a distance (as the app role, through PgBouncer on the LB)."""

from __future__ import annotations

import psycopg

from .base import Check, CheckFailed, lb, once
from .probe import ProbeContext, scalar


def pgvector(p: ProbeContext) -> str:
    address, port = p.settings.network.lb_address, p.settings.ports.pgbouncer
    try:
        with p.app(address, port) as conn:
            version = scalar(conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'"))
            if not version:
                raise CheckFailed(f"the vector extension is not in {p.values['POSTGRES_DB']}")
            distance = scalar(conn.execute("SELECT '[1,2,3]'::vector <-> '[1,2,4]'::vector"))
    except psycopg.Error as exc:
        raise CheckFailed(f"LB {address}:{port}: {p.pg_error(exc)}") from None
    if abs(float(distance) - 1.0) > 1e-9:
        raise CheckFailed(f"distance query returned {distance}, expected 1")
    return f"vector {version}; distance query returned 1"


CHECK = Check(10, "pgvector", once(lb("pgbouncer"), pgvector))
