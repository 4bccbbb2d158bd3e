"""14 (field failure 12). Client sessions on the primary come from where clients should connect from.

Applications pointed at a node's address instead of the LB still work today, and break at the next failover.
Read as the monitor role (member of pg_monitor, which sees every session) through the LB.
"""

from __future__ import annotations

import ipaddress

import psycopg

from .base import Check, CheckFailed, CheckWarning, lb, once
from .probe import ProbeContext, scalar

SHOWN = 5  # stray addresses named in the warning


def client_sessions(p: ProbeContext) -> str:
    """Client sessions on the primary should come from the HAProxy nodes (HAProxy, PgBouncer), the DB nodes,
    this host itself, ``network.direct_clients``, or be the monitor role from the private subnet (these
    diagnostics, the drill's and the switchover's watchers). The superuser logs in from the DB nodes only."""
    address, port = p.settings.network.lb_address, p.settings.ports.haproxy_write
    monitor = p.values.get("POSTGRES_MONITOR_USER", "")
    try:
        with p.monitor(address, port) as conn:
            server = scalar(conn.execute("SELECT host(inet_server_addr())"))
            rows = conn.execute(
                "SELECT host(client_addr), usename, count(*) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND client_addr IS NOT NULL AND pid <> pg_backend_pid() "
                "GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
    except psycopg.Error as exc:
        raise CheckFailed(f"LB {address}:{port} as {monitor}: {p.pg_error(exc)}") from None
    hosts = p.ctx.db_hosts + p.ctx.haproxy_hosts
    strays = stray_sessions([(addr, user or "", n) for addr, user, n in rows],
                            [h.address for h in hosts] + list(p.settings.network.direct_clients),
                            monitor, p.settings.network.private_subnet)
    names = {h.address: h.name for h in p.ctx.db_hosts}
    primary = names.get(server, server)
    if strays:
        shown = ", ".join(f"{addr} ({user}, {n} session{'s' if n > 1 else ''})" for addr, user, n in strays[:SHOWN])
        shown += " ..." if len(strays) > SHOWN else ""
        raise CheckWarning(f"primary {primary}: client sessions from outside the HAProxy nodes, DB nodes and "
                           f"network.direct_clients: {shown}; point those clients at the LB "
                           f"({address}), or add their network to network.direct_clients")
    return f"primary {primary}: {sum(n for _, _, n in rows)} client sessions, all from expected addresses"


def stray_sessions(sessions: list[tuple[str, str, int]], allowed: list[str], monitor: str,
                   admin_network: str) -> list[tuple[str, str, int]]:
    """The (address, role, count) of ``sessions`` that come from where clients should not connect directly.

    Expected: ``allowed`` (addresses or CIDRs: the HAProxy and DB nodes, network.direct_clients), loopback, and
    ``monitor`` (the monitor role) from ``admin_network`` (the private subnet, where pg_hba lets it in).
    """
    networks = [ipaddress.ip_network(item, strict=False) for item in allowed]
    admin = ipaddress.ip_network(admin_network, strict=False)
    strays = []
    for address, role, count in sessions:
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
        except ValueError:
            strays.append((address, role, count))
            continue
        if ip.is_loopback or any(ip in network for network in networks) or (role == monitor and ip in admin):
            continue
        strays.append((address, role, count))
    return strays


CHECK = Check(14, "client sessions", once(lb("haproxy_write"), client_sessions))
