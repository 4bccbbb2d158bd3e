"""9. The roles and the app database, with least privilege (through the LB, as the app role): every role exists,
the app role is neither superuser nor createrole and owns its database, the monitor role is a member of pg_monitor,
and the superuser is refused through the LB (it logs in only over local sockets and from the DB nodes)."""

from __future__ import annotations

import psycopg

from .base import Check, CheckFailed, CheckWarning, lb, once
from .probe import ProbeContext, hba_verdict, throwaway_password

ROLES = ("SELECT rolname, rolsuper, rolcreaterole, pg_has_role(rolname, 'pg_monitor', 'MEMBER') "
         "FROM pg_roles WHERE rolname = ANY(%s)")
OWNER = "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s"


def roles(p: ProbeContext) -> str:
    address, port = p.settings.network.lb_address, p.settings.ports.haproxy_write
    values = p.values
    superuser, app, monitor = values["POSTGRES_SUPERUSER"], values["POSTGRES_APP_USER"], values.get("POSTGRES_MONITOR_USER")
    names = [superuser, values["POSTGRES_REPL_USER"], app] + ([monitor] if monitor else [])
    try:
        with p.app(address, port) as conn:
            found = {r[0]: r for r in conn.execute(ROLES, (names,))}
            owner = conn.execute(OWNER, (values["POSTGRES_DB"],)).fetchone()
    except psycopg.Error as exc:
        raise CheckFailed(f"LB {address}:{port} as {app}: {p.pg_error(exc)}") from None
    problems = [f"missing: {', '.join(missing)}"] if (missing := [r for r in names if r not in found]) else []
    if not owner:
        problems.append(f"missing: database {values['POSTGRES_DB']}")
    elif owner[0] != app:
        problems.append(f"database {values['POSTGRES_DB']} is owned by {owner[0]}, not {app}")
    if app in found:
        _, is_super, creates_roles, _ = found[app]
        granted = [what for what, has in (("SUPERUSER", is_super), ("CREATEROLE", creates_roles)) if has]
        if granted:
            problems.append(f"{app} has {' and '.join(granted)} (the app role must have neither)")
    if not monitor:
        problems.append("POSTGRES_MONITOR_USER is not in credentials/postgres.env")
    elif monitor in found and not found[monitor][3]:
        problems.append(f"{monitor} is not a member of pg_monitor")
    let_in, unsure = superuser_through_lb(p, address, port)
    problems += let_in
    if problems:
        raise CheckFailed("; ".join(problems) + "; re-run `kbpg install`")
    if unsure:
        raise CheckWarning(unsure)
    return (f"roles {', '.join(names)} and database {values['POSTGRES_DB']} (owned by {app}) exist; {app} is "
            f"neither superuser nor createrole; {monitor} in pg_monitor; {superuser} refused through the LB")


def superuser_through_lb(p: ProbeContext, address: str, port: int) -> tuple[list[str], str | None]:
    """([], None) when pg_hba refuses the superuser through the LB; ([problem], None) when it logs in or gets as far
    as a password; ([], warning) when the error says neither. Tried with a throwaway password, never the superuser's
    own (pg_hba's verdict comes before any password, and nothing of the superuser's goes through the LB)."""
    superuser = p.values["POSTGRES_SUPERUSER"]
    try:
        with p.pg(address, port, superuser, throwaway_password(), dbname="postgres"):
            pass
    except psycopg.OperationalError as exc:
        verdict = hba_verdict(exc)
        if verdict == "refused":
            return [], None
        if verdict == "password":
            return [f"{superuser} (the superuser) gets as far as its password through the LB {address}:{port}: "
                    "pg_hba must refuse it there"], None
        return [], (f"LB {address}:{port}: cannot tell whether {superuser} is refused through the LB: "
                    f"{p.pg_error(exc)}")
    return [f"{superuser} (the superuser) can log in through the LB {address}:{port}: it must log in only on the "
            "DB nodes"], None


CHECK = Check(9, "roles and database", once(lb("haproxy_write"), roles))
