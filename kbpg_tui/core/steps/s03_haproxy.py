"""Step 03: HAProxy on the HAProxy nodes.

Write port: only the server whose Patroni answers ``OPTIONS /primary`` with 200
(never ``/master``, gone in Patroni 4; never a plain TCP check, which keeps
sending writes to the old primary after a failover). Read-only port: the servers
answering ``/replica``. Fast checks, and sessions to a server marked down are
shut, so clients reconnect to the new primary at once. Stats behind a password.
``haproxy -c`` checks every new file before it replaces the old one; a running
HAProxy is reloaded, never restarted.
"""

from __future__ import annotations

from .. import bouncer
from ..engine import Outcome, Step, Task, TaskRun
from ..rto import TimingPlan, plan_for
from .packages import ensure_installed, ensure_source

CONFIG_PATH = "/etc/haproxy/haproxy.cfg"
SERVER_KEEPALIVE_IDLE, SERVER_KEEPALIVE_INTERVAL, SERVER_KEEPALIVE_COUNT = 10, 2, 3  # seconds, seconds, probes


def server_user_timeout(plan: TimingPlan) -> int:
    """Seconds a query sent to a DB node may go unacknowledged before HAProxy drops the session: the plan's
    retry_timeout (a network stall Patroni rides out), at least 5 s."""
    return max(5, plan.retry_timeout)


def _quoted(text: str) -> str:
    """An HAProxy quoted argument (backslash escapes inside double quotes).

    HAProxy expands environment variables inside double quotes: a typed ``$`` must be ``\\$``,
    or ``pa$HOME`` would become another password.
    """
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def render(run: TaskRun, address: str) -> str:
    settings, values = run.settings, run.ctx.credentials
    ports = settings.ports
    bind = address if settings.network.bind == "private" else "0.0.0.0"
    servers = run.ctx.db_hosts
    # How often each node's Patroni is asked, and how many answers turn a server up or down: the timing plan's
    # (kbpg_tui.core.rto), which counts it in the plan's worst-case failover time.
    plan = plan_for(settings)

    def backend(name: str, port: int, check: str, extra_bind: str = "") -> list[str]:
        lines = [
            f"listen {name}",
            f"    bind {bind}:{port}",
        ]
        if extra_bind:
            lines.append(f"    bind {extra_bind}:{port}")
        lines += [
            "    mode tcp",
            "    balance roundrobin" if check == "/replica" else "    balance first",
            f"    option httpchk OPTIONS {check}",
            "    http-check expect status 200",
            # After a reload the old HAProxy process keeps the sessions it had, and runs no checks: it never shuts
            # the ones to a primary that is gone. TCP keepalives (idle sessions) and a TCP user timeout (a query
            # sent and never acknowledged) end them there too, instead of a client waiting for `timeout server`.
            "    option srvtcpka",
            f"    srvtcpka-idle {SERVER_KEEPALIVE_IDLE}s",
            f"    srvtcpka-intvl {SERVER_KEEPALIVE_INTERVAL}s",
            f"    srvtcpka-cnt {SERVER_KEEPALIVE_COUNT}",
            f"    default-server {plan.haproxy_check()} on-marked-down shutdown-sessions tcp-ut {server_user_timeout(plan)}s",
        ]
        lines += [f"    server {h.name} {h.address}:{ports.postgresql} check port {ports.patroni_rest}" for h in servers]
        return lines + [""]

    lines = [
        "# written by kbpg from kbpg.toml; re-run kbpg to change it",
        "global",
        "    log /dev/log local0",
        "    maxconn 8000",
        "    user haproxy",
        "    group haproxy",
        "    stats socket /run/haproxy/admin.sock mode 660 level admin",
        "",
        "defaults",
        "    log global",
        "    mode tcp",
        # No retry: HAProxy waits a turn-around second before each retry of a refused connection, and the server
        # refusing is a primary that is stopping (a switchover, a crash). The client is told at once and reconnects
        # to whichever node is up by then (measured: a switchover's longest stall on LB:5432 2.1 s -> 1.2 s).
        "    retries 0",
        # The DB nodes are on the private network: a connection that takes more than 2 s goes to a node that is gone.
        "    timeout connect 2s",
        "    timeout client 30m",
        "    timeout server 30m",
        # A session one side has closed is finished within seconds, not kept for 30 minutes (by an old process too).
        "    timeout client-fin 10s",
        "    timeout server-fin 10s",
        f"    timeout check {plan.haproxy_check_timeout()}",
        "",
    ]
    # PgBouncer on this node reaches the primary through 127.0.0.1 (no hairpin through the cloud LB).
    lines += backend("postgres_write", ports.haproxy_write, "/primary", extra_bind="127.0.0.1" if bind != "0.0.0.0" else "")
    lines += backend("postgres_read", ports.haproxy_read, "/replica")
    auth = f"{values['HAPROXY_STATS_USER']}:{values['HAPROXY_STATS_PASSWORD']}"
    lines += [
        "listen stats",
        f"    bind {bind}:{ports.haproxy_stats}",
        "    mode http",
        "    stats enable",
        "    stats uri /",
        "    stats refresh 5s",
        f"    stats auth {_quoted(auth)}",
        "",
    ]
    return "\n".join(lines)


def install_haproxy(run: TaskRun) -> Outcome:
    changed = ensure_source(run)
    installed = ensure_installed(run, ["haproxy"])
    return Outcome.of(changed or bool(installed), ("installed haproxy" if installed else "haproxy present"))


def configure_haproxy(run: TaskRun) -> Outcome:
    host = run.host
    assert host is not None
    written = run.connection().upload(CONFIG_PATH, render(run, host.address), mode=0o640, owner="root",
                                      group="haproxy", validate="haproxy -c -q -f {path}")
    state = run.run("systemctl is-active haproxy || true").stdout.strip()
    enabled = run.run("systemctl is-enabled haproxy || true").stdout.strip()
    details = []
    if written:
        details.append(f"{CONFIG_PATH} written (checked with haproxy -c)")
    if state != "active":
        run.run("systemctl enable haproxy >/dev/null 2>&1; systemctl start haproxy", what="starting haproxy")
        details.append("started")
    elif written:
        run.run("systemctl reload haproxy", what="reloading haproxy")  # reload keeps established sessions
        details.append("reloaded")
        # The old process keeps PgBouncer's server connections and runs no checks: move them to the new one.
        if run.run("systemctl is-active pgbouncer || true").stdout.strip() == "active":
            problem = bouncer.reconnect(run.ctx, host)
            if problem:
                return Outcome.changed("; ".join(details), [f"PgBouncer's RECONNECT after the reload failed "
                                                            f"({problem}): its server connections stay on the old "
                                                            "HAProxy process until they end"])
            details.append("PgBouncer reconnected")
    if enabled != "enabled" and state == "active":
        run.run("systemctl enable haproxy")
        details.append("enabled")
    return Outcome.of(bool(details), "; ".join(details) or "configuration up to date, haproxy active")


STEP = Step("03", "HAProxy", [
    Task("packages", "haproxy", install_haproxy),
    Task("config", "haproxy", configure_haproxy),
])
