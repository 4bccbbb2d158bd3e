"""Step 03: HAProxy on the HAProxy nodes.

Write port: only the server whose Patroni answers ``OPTIONS /primary`` with 200
(never ``/master``, gone in Patroni 4; never a plain TCP check, which keeps
sending writes to the old primary after a failover). Read-only port: the servers
answering ``/replica``. Fast checks, and sessions to a server marked down are
shut, so clients reconnect to the new primary at once. Stats behind a password.
``haproxy -c`` checks every new file before it replaces the old one; a running
HAProxy is reloaded, never restarted, and keeps each server's state across the
reload (a systemd drop-in saves it just before; ``load-server-state-from-file``):
the new process routes like the old one from its first connection, instead of
taking every server UP until its first check (a write sent to a replica).

With TLS: the checks of a node whose REST API speaks HTTPS verify its certificate
(``check-ssl verify required`` with kbpg's CA, the node's name checked), and the
stats page is served over HTTPS. The check scheme follows what each node serves
(:mod:`.rest_tls`, which also keeps HAProxy right while it changes).
"""

from __future__ import annotations

from collections.abc import Mapping

from .. import bouncer, tls
from ..engine import Outcome, Step, Task, TaskError, TaskRun
from ..rto import TimingPlan, plan_for
from ..ssh import Host
from . import rest_tls
from .packages import ensure_installed, ensure_source

CONFIG_PATH = "/etc/haproxy/haproxy.cfg"
TLS_CA, STATS_PEM = f"{tls.HAPROXY_DIR}/ca.crt", f"{tls.HAPROXY_DIR}/stats.pem"
STATE_FILE = "/var/lib/haproxy/server-state"
FRESH_FLAG = "/run/kbpg-haproxy-fresh-state"  # the next reload saves no state (a server moved)
SAVE_STATE_PATH = "/usr/local/sbin/kbpg-haproxy-save-state"
DROPIN_PATH = "/etc/systemd/system/haproxy.service.d/kbpg.conf"

# Run by `systemctl reload haproxy` (the drop-in below) with the old process still answering.
SAVE_STATE = r"""#!/bin/sh
# written by kbpg: run by `systemctl reload haproxy` just before the new process starts. Saves each server's state
# (UP/DOWN, paused checks) for it (load-server-state-from-file): it routes like the old process from its first
# connection, instead of taking every server UP until its first check. HAProxy not answering: no file at all (an
# old state is never loaded).
state=@STATE@
rm -f "$state.tmp"
# kbpg moved a server (another address or port): the old state would put the old ports back; no state this time.
if [ -e @FRESH@ ]; then rm -f @FRESH@ "$state"; exit 0; fi
if command -v socat >/dev/null 2>&1; then
  echo "show servers state" | socat -t 5 - UNIX-CONNECT:@SOCKET@ > "$state.tmp" 2>/dev/null
elif command -v python3 >/dev/null 2>&1; then
  python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect("@SOCKET@")
s.sendall(b"show servers state\n")
s.shutdown(socket.SHUT_WR)
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode())
' > "$state.tmp" 2>/dev/null
fi
if [ "$(head -n 1 "$state.tmp" 2>/dev/null)" = "1" ]; then mv -f "$state.tmp" "$state"; else rm -f "$state" "$state.tmp"; fi
exit 0
""".replace("@STATE@", STATE_FILE).replace("@SOCKET@", rest_tls.HAPROXY_SOCKET).replace("@FRESH@", FRESH_FLAG)

DROPIN = f"""# written by kbpg: a reload keeps each server's state ({SAVE_STATE_PATH}); a start never loads an old one
[Service]
ExecStartPre=-/bin/rm -f {STATE_FILE}
ExecReload=
ExecReload=/usr/sbin/haproxy -Ws -f $CONFIG -c $EXTRAOPTS
ExecReload=-{SAVE_STATE_PATH}
ExecReload=/bin/kill -USR2 $MAINPID
"""
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


def server_line(run: TaskRun, host: Host, scheme: str) -> str:
    """One server of a backend: its PostgreSQL port, checked on its Patroni REST API (over TLS when it speaks
    HTTPS: the certificate must be signed by kbpg's CA and name the node)."""
    ports = run.settings.ports
    line = f"server {host.name} {host.address}:{ports.postgresql} check port {ports.patroni_rest}"
    if scheme == "https":
        name = host.name.lower()
        line += f" check-ssl verify required ca-file {TLS_CA} check-sni {name} verifyhost {name}"
    return line


def server_endpoints(config: str) -> set[tuple[str, str, str]]:
    """Each ``server`` line's name, address:port and check port: what HAProxy's saved state would carry over a reload
    (``srv_port``, ``srv_check_port``), whatever the new configuration says."""
    found = set()
    for line in config.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "server":
            check_port = words[words.index("port") + 1] if "port" in words[:-1] else ""
            found.add((words[1], words[2], check_port))
    return found


def render(run: TaskRun, address: str, schemes: Mapping[str, str] | None = None) -> str:
    """haproxy.cfg for the HAProxy node at ``address``. ``schemes``: the scheme each DB node's REST API speaks
    ("http"/"https"; :func:`rest_tls.check_schemes`), default the one kbpg.toml wants for all."""
    settings, values = run.settings, run.ctx.credentials
    wanted = rest_tls.wanted_scheme(settings)
    schemes = schemes or {}
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
        lines += ["    " + server_line(run, h, schemes.get(h.name, wanted)) for h in servers]
        return lines + [""]

    lines = [
        "# written by kbpg from kbpg.toml; re-run kbpg to change it",
        "global",
        "    log /dev/log local0",
        "    maxconn 8000",
        "    user haproxy",
        "    group haproxy",
        f"    stats socket {rest_tls.HAPROXY_SOCKET} mode 660 level admin",
        # Saved by the systemd drop-in just before a reload, read by the new process (see SAVE_STATE).
        f"    server-state-file {STATE_FILE}",
        "",
        "defaults",
        "    load-server-state-from-file global",
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
    stats_tls = f" ssl crt {STATS_PEM} ssl-min-ver TLSv1.2" if settings.tls.enabled else ""
    lines += [
        "listen stats",
        f"    bind {bind}:{ports.haproxy_stats}{stats_tls}",
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


def upload_tls_files(run: TaskRun, need_ca: bool = False) -> list[str]:
    """kbpg's CA (what the checks verify the REST API with) and the stats page's certificate (this node's, with its
    key) in /etc/haproxy/tls; returns the files written. With TLS off, only the CA, when ``need_ca`` (a node still
    speaks HTTPS). A file that changed under a running HAProxy is picked up by its next reload (the "config"
    task reloads it)."""
    host = run.host
    assert host is not None
    if not (run.settings.tls.enabled or need_ca):
        return []
    try:
        ca = tls.ca_pem(run.ctx.workdir)
        cert, key = tls.node_files(run.ctx.workdir, host.name) if run.settings.tls.enabled else (b"", b"")
    except tls.TlsError as exc:
        raise TaskError(f"{host.name}: {exc}") from None
    directory = tls.HAPROXY_DIR
    run.run(f"if [ \"$(stat -c '%a %U %G' {directory} 2>/dev/null)\" != '750 root haproxy' ]; then "
            f"install -d -o root -g haproxy -m 0750 {directory}; fi", what=f"making {directory}")
    connection = run.connection()
    written = [TLS_CA] if connection.upload(TLS_CA, ca, mode=0o644) else []
    if run.settings.tls.enabled and connection.upload(STATS_PEM, cert.rstrip(b"\n") + b"\n" + key, mode=0o640,
                                                      owner="root", group="haproxy"):
        written.append(STATS_PEM)
    if written:
        run.ctx.state.setdefault("haproxy_tls_changed", set()).add(host.name)
    return written


def tls_files(run: TaskRun) -> Outcome:
    if not run.settings.tls.enabled:
        return Outcome.unchanged("TLS disabled in kbpg.toml")
    written = upload_tls_files(run)
    return Outcome.of(bool(written), (", ".join(written) + " written") if written else "TLS files up to date")


def _reconnect_pgbouncer(run: TaskRun) -> tuple[str, list[str]]:
    """After a reload the old process keeps PgBouncer's server connections and runs no checks: RECONNECT moves them
    to the new one. A PgBouncer that does not speak TLS yet while kbpg's clients want it (TLS being turned on) is
    left to step 04, which reconnects it once its TLS is on."""
    host = run.host
    assert host is not None
    if run.run("systemctl is-active pgbouncer || true").stdout.strip() != "active":
        return "", []
    if run.settings.tls.enabled:
        try:
            tls.pg_tls_probe(host.address, run.settings.ports.pgbouncer, tls.ca_path(run.ctx.workdir), host.address)
        except tls.TlsProbeError as exc:
            if exc.kind == "refused":
                run.ctx.state.setdefault("pgbouncer_reconnect", set()).add(host.name)
                return "PgBouncer reconnects in step 04 (its TLS is not on yet)", []
        except tls.TlsError:
            pass  # no CA here: the console says what is wrong
    problem = bouncer.reconnect(run.ctx, host)
    if problem:
        return "", [f"PgBouncer's RECONNECT after the reload failed ({problem}): its server connections stay on the "
                    "old HAProxy process until they end"]
    return "PgBouncer reconnected", []


def apply(run: TaskRun, schemes: Mapping[str, str], expected_paused: bool = False,
          reconnect_pgbouncer: bool = True) -> Outcome:
    """This node's HAProxy as kbpg wants it, its checks following ``schemes`` (see :func:`render`): the TLS files,
    the drop-in that keeps the servers' state across reloads, haproxy.cfg (checked with ``haproxy -c``), started
    or reloaded (waiting for the new process), and every paused check resumed (``expected_paused``: paused by
    this run; otherwise a pause found is reported as a warning). ``reconnect_pgbouncer`` false (a credential rotation):
    no RECONNECT after the reload (see below)."""
    host = run.host
    assert host is not None
    connection = run.connection()
    details: list[str] = []
    warnings: list[str] = []
    files = upload_tls_files(run, need_ca="https" in schemes.values())
    if files:
        details.append(", ".join(files) + " written")
    unit = connection.upload(SAVE_STATE_PATH, SAVE_STATE, mode=0o755)
    unit = connection.upload(DROPIN_PATH, DROPIN, mode=0o644) or unit
    if unit:
        run.run("systemctl daemon-reload")
        details.append("systemd drop-in (a reload keeps each server's state)")
    wanted = render(run, host.address, schemes)
    current = connection.read_file(CONFIG_PATH)
    moved = current is not None and server_endpoints(current.decode("utf-8", "replace")) != server_endpoints(wanted)
    written = connection.upload(CONFIG_PATH, wanted, mode=0o640, owner="root", group="haproxy",
                                validate="haproxy -c -q -f {path}")
    state = run.run("systemctl is-active haproxy || true").stdout.strip()
    enabled = run.run("systemctl is-enabled haproxy || true").stdout.strip()
    if written:
        https = sorted(name for name, scheme in schemes.items() if scheme == "https")
        details.append(f"{CONFIG_PATH} written (checked with haproxy -c" + (f"; checks over TLS: {', '.join(https)}"
                                                                            if https else "") + ")")
    if state != "active":
        run.run("systemctl enable haproxy >/dev/null 2>&1; systemctl start haproxy", what="starting haproxy")
        details.append("started")
    elif written or host.name in run.ctx.state.get("haproxy_tls_changed", set()) or stats_serves_old(run, host):
        before = rest_tls.worker_pid(run, host)
        if moved and written:  # the saved state would bring the old ports back over the new configuration
            run.run(f"touch {FRESH_FLAG}")
            details.append("servers moved: reloaded without the saved state")
        run.run("systemctl reload haproxy", what="reloading haproxy")  # reload keeps established sessions
        if before and not rest_tls.wait_new_process(run, host, before):
            warnings.append(f"HAProxy's new process did not answer on {rest_tls.HAPROXY_SOCKET} within "
                            f"{rest_tls.NEW_PROCESS_WAIT:.0f} s after the reload")
        details.append("reloaded (each server's state kept)")
        run.ctx.state.get("haproxy_tls_changed", set()).discard(host.name)  # read by the new process
        if not reconnect_pgbouncer:
            # A credential rotation: PgBouncer opens a server connection with the SCRAM keys of the client that
            # needs it, so after the roles changed, a client that logged in before would fail on a new one; the old
            # HAProxy process keeps PgBouncer's open server connections until they end.
            details.append("PgBouncer's server connections left open (credential rotation)")
        else:
            detail, more = _reconnect_pgbouncer(run)
            details += [detail] if detail else []
            warnings += more
    try:
        resumed = rest_tls.resume_checks(run, host)
    except TaskError as exc:
        warnings.append(f"{exc}: a paused check cannot be seen or resumed; kbpg diagnose shows its server not UP")
        resumed = []
    if resumed:
        names = sorted({server.split("/", 1)[1] for server in resumed})
        details.append(f"checks of {', '.join(names)} resumed")
        if not expected_paused:
            warnings.append(f"HAProxy's checks of {', '.join(resumed)} were paused (a kbpg run interrupted while "
                            "Patroni's REST API changed scheme, or by hand): resumed")
    if enabled != "enabled" and state == "active":
        run.run("systemctl enable haproxy")
        details.append("enabled")
    return Outcome.of(bool(details), "; ".join(details) or "configuration up to date, haproxy active", warnings)


def stats_serves_old(run: TaskRun, host: Host) -> bool:
    """With TLS on: whether the running HAProxy's stats page serves another certificate than stats.pem on disk (a run
    stopped between writing the file and the reload: the next run finds it unchanged). Asked on the node."""
    if not run.settings.tls.enabled:
        return False
    state = rest_tls.served(run, host, pg_port=run.settings.ports.pgbouncer,
                            https_port=run.settings.ports.haproxy_stats, cert_path=STATS_PEM)
    stale = state["disk"].startswith("tls:") and state["rest"] not in ("down", state["disk"])
    if stale:
        run.say(f"{host.name}: HAProxy's stats page still serves an older certificate: reloading")
    return stale


def configure_haproxy(run: TaskRun, reconnect_pgbouncer: bool = True) -> Outcome:
    return apply(run, rest_tls.check_schemes(run.ctx), reconnect_pgbouncer=reconnect_pgbouncer)


STEP = Step("03", "HAProxy", [
    Task("packages", "haproxy", install_haproxy),
    Task("tls files", "haproxy", tls_files),
    Task("config", "haproxy", configure_haproxy),
])
