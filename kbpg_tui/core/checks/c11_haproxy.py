"""11. HAProxy's stats need a password (and are served over HTTPS, verified with kbpg's CA, when TLS is on), and its
write backend has exactly one server UP (the primary)."""

from __future__ import annotations

from ..ssh import Host
from .base import Check, CheckFailed, on_hosts
from .probe import ProbeContext


def haproxy(p: ProbeContext, host: Host) -> str:
    ports, values = p.settings.ports, p.values
    url = f"{p.scheme}://{host.address}:{ports.haproxy_stats}/;csv"
    status, _ = p.http(url)
    if status != 401:
        raise CheckFailed(f"{host.name}: stats answered {status} without a password (expected 401)")
    status, body = p.http(url, auth=(values["HAPROXY_STATS_USER"], values["HAPROXY_STATS_PASSWORD"]))
    if status != 200:
        raise CheckFailed(f"{host.name}: stats with the password answered {status}")
    rows = [line.split(",") for line in body.decode("utf-8", "replace").splitlines()
            if line and not line.startswith("#")]
    servers = [r for r in rows if len(r) > 17 and r[0] in ("postgres_write", "postgres_read")
               and r[1] not in ("FRONTEND", "BACKEND")]
    unchecked = sorted({r[1] for r in servers if r[17] == "no check"})
    if unchecked:  # steps.rest_tls pauses them around a REST scheme change; a run stopped there leaves them paused
        raise CheckFailed(f"{host.name}: HAProxy's health checks of {', '.join(unchecked)} are paused (a kbpg run "
                          "stopped while Patroni's REST API changed scheme): HAProxy routes as before but would not "
                          "follow a failover; re-run `kbpg install` to resume them")
    up = [r[1] for r in servers if r[0] == "postgres_write" and r[17].startswith("UP")]
    if len(up) != 1:
        raise CheckFailed(f"{host.name}: {len(up)} servers UP in the write backend ({', '.join(up) or 'none'}); "
                          "expected exactly 1")
    return f"{host.name}: write backend → {up[0]} only; stats need a password"


CHECK = Check(11, "haproxy", on_hosts("haproxy", haproxy))
