"""9. The roles and the app database exist (as the superuser, through the LB)."""

from __future__ import annotations

import psycopg

from .base import Check, CheckFailed, lb, once
from .probe import ProbeContext


def roles(p: ProbeContext) -> str:
    address, port = p.settings.network.lb_address, p.settings.ports.haproxy_write
    values = p.values
    names = [values["POSTGRES_SUPERUSER"], values["POSTGRES_REPL_USER"], values["POSTGRES_APP_USER"]]
    try:
        with p.admin(address, port, dbname="postgres") as conn:
            found = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (names,))}
            database = conn.execute("SELECT datname FROM pg_database WHERE datname = %s",
                                    (values["POSTGRES_DB"],)).fetchone()
    except psycopg.Error as exc:
        raise CheckFailed(f"LB {address}:{port} as {values['POSTGRES_SUPERUSER']}: {p.pg_error(exc)}") from None
    missing = [r for r in names if r not in found] + ([] if database else [f"database {values['POSTGRES_DB']}"])
    if missing:
        raise CheckFailed("missing: " + ", ".join(missing))
    return f"roles {', '.join(names)} and database {values['POSTGRES_DB']} exist"


CHECK = Check(9, "roles and database", once(lb("haproxy_write"), roles))
