"""16. TLS on every hop: each certificate a client meets verifies with kbpg's CA (``credentials/tls/ca.crt``) for the
address the client asked for, and is not about to expire; plaintext is refused.

Targets: the CA itself; PostgreSQL on each DB node (PostgreSQL's SSLRequest, then the handshake), where a plaintext
login (``sslmode=disable``) must also be refused by pg_hba; the entry points LB:5432 and LB:5433 (HAProxy passes TCP
through: the DB node's certificate, which carries the LB's address), LB:6432 and each HAProxy node's 6432
(PgBouncer's); Patroni's REST API on each DB node, where plain HTTP must get no answer; HAProxy's stats page on each
HAProxy node. A certificate expiring within ``[tls] renew_days`` is a warning (``kbpg install`` or ``kbpg tls renew``
reissues it); one that does not verify, has expired, or is not there is a failure. With ``[tls] enabled = false``
the check passes saying so: there is nothing to verify.
"""

from __future__ import annotations

from functools import partial

import psycopg

from .. import tls
from ..cluster import NoAnswer
from ..ssh import Host
from .base import Check, CheckFailed, CheckWarning, Target
from .probe import ProbeContext, hba_verdict, throwaway_password


def judge(p: ProbeContext, label: str, postgres: bool, address: str, port: int, wanted: Host | None = None) -> str:
    """The certificate at ``address:port`` (verified for ``address``; ``postgres``: after PostgreSQL's SSLRequest),
    against ``[tls] renew_days`` and, for a node's own certificate (``wanted``), the SANs kbpg issues it now."""
    try:
        info = p.certificate(address, port, postgres)
    except tls.TlsProbeError as exc:
        hint = "; re-run `kbpg install` to turn TLS on there" if exc.kind == "refused" else ""
        raise CheckFailed(f"{label}: {exc.reason}{hint}") from None
    except tls.TlsError as exc:
        raise CheckFailed(f"{label}: {exc}") from None
    renew = p.settings.tls.renew_days
    if info.days_left <= 0:
        raise CheckFailed(f"{label}: certificate {info.subject_cn!r} expired on {info.not_after:%Y-%m-%d}; run "
                          "`kbpg tls renew` or `kbpg install`")
    said = (f"{label}: {info.subject_cn!r} verifies with ca.crt for {address}, "
            f"{info.days_left:.0f} days left (until {info.not_after:%Y-%m-%d})")
    if info.days_left < renew:
        raise CheckWarning(f"{said}: under renew_days ({renew}); run `kbpg install` or `kbpg tls renew`")
    if wanted is not None:
        dns, ips = tls.wanted_sans(p.ctx, wanted.name)
        if {d.lower() for d in dns} != {d.lower() for d in info.sans_dns} or set(ips) != set(info.sans_ip):
            raise CheckWarning(f"{said}; its SANs ({', '.join([*info.sans_dns, *info.sans_ip])}) are not those kbpg "
                               f"issues now ({', '.join([*dns, *ips])}): re-run `kbpg install`")
    return said


def ca(p: ProbeContext) -> str:
    path = tls.ca_path(p.ctx.workdir)
    try:
        info = tls.cert_info(tls.ca_pem(p.ctx.workdir))
    except tls.TlsError as exc:
        raise CheckFailed(str(exc)) from None
    if info.days_left <= 0:
        raise CheckFailed(f"{path}: the CA {info.subject_cn!r} expired on {info.not_after:%Y-%m-%d}; run `kbpg install`")
    said = f"{path}: CA {info.subject_cn!r}, {info.days_left:.0f} days left"
    if info.days_left < p.settings.tls.renew_days:
        raise CheckWarning(f"{said}: under renew_days; `kbpg install` makes a new one once it has expired, and every "
                           "client must then be given the new ca.crt")
    return said


def plaintext_refused(p: ProbeContext, host: Host, port: int) -> str:
    """A login without TLS (``sslmode=disable``) to a DB node: pg_hba must refuse it before any password.

    Tried with a throwaway password, never the role's own: on a plaintext connection whatever answers for the node's
    address could ask libpq for the password in clear. pg_hba's refusal comes before any password; a "password
    authentication failed" means the plaintext login got that far."""
    user = p.values.get("POSTGRES_MONITOR_USER") or p.values["POSTGRES_APP_USER"]
    try:
        with p.pg(host.address, port, user, throwaway_password(), dbname="postgres", sslmode="disable"):
            pass
    except psycopg.OperationalError as exc:
        verdict = hba_verdict(exc)
        if verdict == "refused":
            return "plaintext refused"
        if verdict == "unclear":
            raise CheckWarning(f"{host.name}: cannot tell whether a plaintext login is refused: "
                               f"{p.pg_error(exc)}") from None
    raise CheckFailed(f"{host.name}:{port}: a plaintext login (sslmode=disable) as {user} is accepted; pg_hba must "
                      "accept remote logins over TLS only (hostssl): re-run `kbpg install`")


def db_node(p: ProbeContext, host: Host) -> str:
    port = p.settings.ports.postgresql
    said = judge(p, f"{host.name}:{port}", True, host.address, port, wanted=host)
    return f"{said}; {plaintext_refused(p, host, port)}"


def plain_http_refused(p: ProbeContext, label: str, address: str, port: int) -> str:
    try:
        status, _ = p.request(f"http://{address}:{port}/")
    except NoAnswer:
        return "plain HTTP gets no answer"
    raise CheckFailed(f"{label}: plain HTTP answered {status}: it must speak HTTPS only; re-run `kbpg install`")


def rest(p: ProbeContext, host: Host) -> str:
    port = p.settings.ports.patroni_rest
    label = f"{host.name} REST :{port}"
    said = judge(p, label, False, host.address, port, wanted=host)
    return f"{said}; {plain_http_refused(p, label, host.address, port)}"


def stats(p: ProbeContext, host: Host) -> str:
    port = p.settings.ports.haproxy_stats
    label = f"{host.name} stats :{port}"
    said = judge(p, label, False, host.address, port, wanted=host)
    return f"{said}; {plain_http_refused(p, label, host.address, port)}"


def entry(p: ProbeContext, label: str, address: str, port: int, wanted: Host | None) -> str:
    return judge(p, label, True, address, port, wanted=wanted)


def disabled(p: ProbeContext) -> str:
    return "TLS disabled in kbpg.toml ([tls] enabled = false): every hop is plaintext, nothing to verify"


def targets(p: ProbeContext) -> list[Target]:
    if not p.settings.tls.enabled:
        return [("cluster", partial(disabled, p))]
    ports, lb = p.settings.ports, p.settings.network.lb_address
    found: list[Target] = [("CA", partial(ca, p))]
    found += [(f"{h.name}:{ports.postgresql}", partial(db_node, p, h)) for h in p.ctx.db_hosts]
    for port in (ports.haproxy_write, ports.haproxy_read, ports.pgbouncer):
        found.append((f"LB {lb}:{port}", partial(entry, p, f"LB {lb}:{port}", lb, port, None)))
    found += [(f"{h.name}:{ports.pgbouncer}", partial(entry, p, f"{h.name}:{ports.pgbouncer}", h.address,
                                                      ports.pgbouncer, h)) for h in p.ctx.haproxy_hosts]
    found += [(f"{h.name} REST :{ports.patroni_rest}", partial(rest, p, h)) for h in p.ctx.db_hosts]
    found += [(f"{h.name} stats :{ports.haproxy_stats}", partial(stats, p, h)) for h in p.ctx.haproxy_hosts]
    return found


CHECK = Check(16, "tls", targets)
