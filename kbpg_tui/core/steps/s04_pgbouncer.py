"""Step 04: PgBouncer on the HAProxy nodes.

SCRAM-SHA-256 end to end: the auth file holds, for the app user, the very
verifier the server stores (PgBouncer can pass SCRAM through only when its
secret is byte-identical), read from the primary. The file is readable by the
PgBouncer service user alone. Transaction pooling; pool sizes such that all
PgBouncers together stay under ``max_connections``. Backend: the local HAProxy
write port by default (no hairpin through the cloud LB), the LB as an option.

With TLS: clients must use it (PgBouncer's certificate names the node and the LB),
and server connections verify PostgreSQL's certificate and address (``verify-full``
with kbpg's CA); the local backend is then the node's own address, which every DB
node's certificate carries (HAProxy passes TCP through), not 127.0.0.1. Turning it
on is a RELOAD: connected clients stay, new ones must speak TLS.
"""

from __future__ import annotations

import shlex
import time
from typing import Any

import psycopg

from .. import bouncer as console
from .. import credentials as creds
from .. import tls
from ..cluster import on_leader
from ..engine import Outcome, Step, Task, TaskError, TaskRun
from ..rto import plan_for
from ..ssh import Host
from . import rest_tls
from .packages import ensure_installed, ensure_source

CONFIG_PATH = "/etc/pgbouncer/pgbouncer.ini"
USERLIST_PATH = "/etc/pgbouncer/userlist.txt"
DROPIN_PATH = "/etc/systemd/system/pgbouncer.service.d/kbpg.conf"
TLS_CA, TLS_CERT, TLS_KEY = (f"{tls.PGBOUNCER_DIR}/{name}" for name in ("ca.crt", "node.crt", "node.key"))
CLIENT_TLS_REQUIRED = "client_tls_sslmode = require"
TLS_OFFERED_SECONDS = 1.0  # TLS turned on: offered to clients this long before it is required
# Connections kept free on the server for Patroni, replication, superuser work and monitoring.
SERVER_RESERVE = 20
# What stands between a new primary and the first pooled write after a failover (PgBouncer 1.24): see render_ini.
SERVER_CONNECT_TIMEOUT = 3  # seconds for a server connection's connect and login
TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT = 10, 5, 3  # seconds idle, seconds between probes, probes

DROPIN = """# written by kbpg: room for max_client_conn sockets, and come back whatever stopped it
[Service]
LimitNOFILE=65536
Restart=always
RestartSec=3
"""


def pool_size(run: TaskRun) -> int:
    """Server connections one PgBouncer may open: all of them together stay under max_connections."""
    settings = run.settings
    nodes = max(1, len(run.ctx.haproxy_hosts))
    budget = settings.postgresql.max_connections - SERVER_RESERVE
    chosen = settings.pgbouncer.default_pool_size
    if chosen:
        # kbpg.toml cannot check this alone: it does not know how many HAProxy nodes servers.tsv selects.
        if chosen * nodes > budget:
            raise TaskError(
                f"pgbouncer.default_pool_size = {chosen} on {nodes} PgBouncer nodes opens up to {chosen * nodes} "
                f"server connections, more than postgresql.max_connections ({settings.postgresql.max_connections}) "
                f"minus {SERVER_RESERVE} kept for Patroni and admin work; set it to at most {max(1, budget // nodes)} "
                "(or 0 to derive it)"
            )
        return chosen
    return max(2, budget // nodes)


def render_ini(run: TaskRun, address: str) -> str:
    settings, values = run.settings, run.ctx.credentials
    ports, bouncer = settings.ports, settings.pgbouncer
    if bouncer.backend == "local":
        # With TLS the address PostgreSQL's certificate names (verify-full): this node's own, never 127.0.0.1.
        local = address if settings.tls.enabled else "127.0.0.1"
        backend = f"host={local} port={ports.haproxy_write}"
    else:
        backend = f"host={settings.network.lb_address} port={ports.haproxy_write}"
    listen = f"{address},127.0.0.1" if settings.network.bind == "private" else "*"
    size = pool_size(run)
    plan = plan_for(settings)
    lines = [
        "; written by kbpg from kbpg.toml; re-run kbpg to change it",
        "[databases]",
        f"* = {backend}",
        "",
        "[pgbouncer]",
        f"listen_addr = {listen}",
        f"listen_port = {ports.pgbouncer}",
        "unix_socket_dir = /var/run/postgresql",
        "auth_type = scram-sha-256",
        f"auth_file = {USERLIST_PATH}",
        f"admin_users = {values['PGBOUNCER_ADMIN_USER']}",
        f"stats_users = {values['PGBOUNCER_STATS_USER']}",
        f"pool_mode = {bouncer.pool_mode}",
        f"max_client_conn = {bouncer.max_client_conn}",
        f"default_pool_size = {size}",
        f"max_db_connections = {size}",
        f"max_user_connections = {size}",  # the wildcard makes pools per database: cap per user as well
        "reserve_pool_size = 0",
        "; Failover: HAProxy closes the server connections to a primary it marks down; the next query opens a new",
        "; one, to whichever node HAProxy has up now.",
        "; A login that failed (no node up yet) is retried after this many seconds, the timing plan's (its",
        "; worst-case failover time counts it); meanwhile queued queries wait and new clients are turned away.",
        f"server_login_retry = {plan.login_retry:g}",
        "; A connect and login not done within this many seconds is given up and retried (the default 15 s could",
        "; leave pooled writes waiting on an attempt towards a node that stopped answering, after the new",
        "; primary is up). Logins through the local HAProxy take milliseconds.",
        f"server_connect_timeout = {SERVER_CONNECT_TIMEOUT}",
        "; A server connection idle this long runs a do-nothing query before a client gets it.",
        "server_check_delay = 10",
        "; Silent peers (a host or link gone without closing its connections; a backend through the LB): an idle",
        f"; connection is probed after {TCP_KEEPIDLE} s, and any is dropped once data or probes stay unacknowledged",
        "; for the timing plan's ttl (tcp_user_timeout, ms; Linux then ignores tcp_keepcnt): a network stall the plan",
        "; rides out without a failover does not cost clients their connections, a longer one does not hang them.",
        "tcp_keepalive = 1",
        f"tcp_keepidle = {TCP_KEEPIDLE}",
        f"tcp_keepintvl = {TCP_KEEPINTVL}",
        f"tcp_keepcnt = {TCP_KEEPCNT}",
        f"tcp_user_timeout = {plan.ttl * 1000}",
        "ignore_startup_parameters = extra_float_digits,options",
        *tls_lines(run),
        "logfile = /var/log/postgresql/pgbouncer.log",
        "pidfile = /var/run/postgresql/pgbouncer.pid",
        "",
    ]
    return "\n".join(lines)


def tls_lines(run: TaskRun) -> list[str]:
    """pgbouncer.ini's TLS settings: none with TLS off (PgBouncer's defaults: clients in plaintext, servers
    ``prefer``)."""
    if not run.settings.tls.enabled:
        return []
    return [
        "; TLS with kbpg's CA (credentials/tls/): clients must use it (a plaintext login is refused), server",
        "; connections verify PostgreSQL's certificate and the address they connect to. TLS 1.2 or newer both ways.",
        CLIENT_TLS_REQUIRED,
        f"client_tls_cert_file = {TLS_CERT}",
        f"client_tls_key_file = {TLS_KEY}",
        "client_tls_protocols = secure",
        "server_tls_sslmode = verify-full",
        f"server_tls_ca_file = {TLS_CA}",
        "server_tls_protocols = secure",
    ]


def _server_side(ini: str) -> tuple[list[str], list[str]]:
    """(the [databases] lines, the server_tls_* lines) of a pgbouncer.ini."""
    lines = [line.strip() for line in ini.splitlines()]
    return [line for line in lines if line.startswith("* =")], [line for line in lines if line.startswith("server_tls_")]


def needs_reconnect(before: str, after: str, haproxy_reloaded: bool) -> bool:
    """Whether the server connections opened under pgbouncer.ini ``before`` must be renewed (RECONNECT) once
    PgBouncer has ``after``: when the server TLS settings changed (a RELOAD applies them to new connections only),
    or HAProxy was reloaded (its old process, which runs no checks, keeps them). Never when the backend changed:
    the RELOAD itself closes every server connection as obsolete, and a RECONNECT right after it cuts the new ones
    in their login, which PgBouncer counts as a failed login and retries only after server_login_retry (measured:
    a 0.65 s stall of the pooled clients)."""
    (backend_before, tls_before), (backend_after, tls_after) = _server_side(before), _server_side(after)
    return backend_before == backend_after and (tls_before != tls_after or haproxy_reloaded)


def _parse_userlist(text: str) -> dict[str, str]:
    entries = {}
    for line in text.splitlines():
        try:
            parts = shlex.split(line, comments=False) if line.strip() and not line.startswith(";") else []
        except ValueError:  # a hand-edited line with a stray quote: ignored, the file is rewritten whole anyway
            continue
        if len(parts) == 2:
            entries[parts[0]] = parts[1]
    return entries


def _userlist_line(user: str, secret: str) -> str:
    return f'"{user.replace(chr(34), chr(34) * 2)}" "{secret.replace(chr(34), chr(34) * 2)}"'


def server_verifiers(run: TaskRun) -> dict[str, str]:
    """The app user's SCRAM verifier exactly as the primary stores it."""
    values = run.ctx.credentials
    app = values["POSTGRES_APP_USER"]
    cached = run.ctx.state.get("server_verifiers")
    if cached is None:
        out = on_leader(run, f"SELECT rolname, rolpassword FROM pg_authid WHERE rolname = '{app}';",
                        "reading the app role's verifier").stdout
        cached = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
        run.ctx.state["server_verifiers"] = cached
    verifier = cached.get(app, "")
    if not creds.scram_matches(verifier, values["POSTGRES_APP_PASS"]):
        raise TaskError(f"the role {app} on the primary has no SCRAM verifier matching postgres.env; "
                        "run step 02 again (it sets it)")
    return {app: verifier}


def render_userlist(run: TaskRun, current: dict[str, str]) -> str:
    values = run.ctx.credentials
    entries = dict(server_verifiers(run))
    # PgBouncer's own console users: keep a verifier already on the host if it matches, so re-runs change nothing.
    for user_key, pass_key in (("PGBOUNCER_ADMIN_USER", "PGBOUNCER_ADMIN_PASS"), ("PGBOUNCER_STATS_USER", "PGBOUNCER_STATS_PASS")):
        user, password = values[user_key], values[pass_key]
        existing = current.get(user, "")
        entries[user] = existing if creds.scram_matches(existing, password) else creds.scram_sha256_verifier(password)
    return "".join(_userlist_line(user, secret) + "\n" for user, secret in entries.items())


def install_pgbouncer(run: TaskRun) -> Outcome:
    changed = ensure_source(run)
    installed = ensure_installed(run, ["pgbouncer"])
    return Outcome.of(changed or bool(installed), "installed pgbouncer" if installed else "pgbouncer present")


def _service_user(run: TaskRun) -> str:
    return run.run("systemctl show -p User --value pgbouncer").stdout.strip() or "postgres"


def tls_files(run: TaskRun) -> Outcome:
    """kbpg's CA (what server connections verify PostgreSQL with), this node's certificate and its key (readable
    by the service user alone) in /etc/pgbouncer/tls. Changed files are picked up by the RELOAD of the "config"
    task: no restart, no client dropped."""
    host = run.host
    assert host is not None
    if not run.settings.tls.enabled:
        return Outcome.unchanged("TLS disabled in kbpg.toml")
    try:
        ca = tls.ca_pem(run.ctx.workdir)
        cert, key = tls.node_files(run.ctx.workdir, host.name)
    except tls.TlsError as exc:
        raise TaskError(f"{host.name}: {exc}") from None
    user = _service_user(run)
    directory = tls.PGBOUNCER_DIR
    run.run(f"if [ \"$(stat -c '%a %U %G' {directory} 2>/dev/null)\" != '750 root {user}' ]; then "
            f"install -d -o root -g {user} -m 0750 {directory}; fi", what=f"making {directory}")
    connection = run.connection()
    # The key before its certificate: a RELOAD in between would pair the old certificate with the new key.
    written = [path for path, data, mode, owner in ((TLS_CA, ca, 0o644, "root"), (TLS_KEY, key, 0o600, user),
                                                    (TLS_CERT, cert, 0o644, "root"))
               if connection.upload(path, data, mode=mode, owner=owner)]
    if written:
        run.ctx.state.setdefault("pgbouncer_tls_changed", set()).add(host.name)
    return Outcome.of(bool(written), (", ".join(written) + " written") if written else "TLS files up to date")


def configure_pgbouncer(run: TaskRun) -> Outcome:
    host = run.host
    assert host is not None
    connection = run.connection()
    service_user = _service_user(run)
    current_text = connection.read_file(USERLIST_PATH)
    current = _parse_userlist(current_text.decode("utf-8", "replace")) if current_text else {}
    details = []
    if connection.upload(DROPIN_PATH, DROPIN, mode=0o644):
        run.run("systemctl daemon-reload")
        details.append("systemd drop-in (LimitNOFILE, Restart=always)")
    # The auth file: the service user alone can read it.
    userlist_changed = connection.upload(USERLIST_PATH, render_userlist(run, current), mode=0o600,
                                         owner=service_user, group=service_user)
    before = (connection.read_file(CONFIG_PATH) or b"").decode("utf-8", "replace")
    ini = render_ini(run, host.address)
    state = run.run("systemctl is-active pgbouncer || true").stdout.strip()
    restart = state != "active" or any("drop-in" in d for d in details)
    staged = False
    if not restart and CLIENT_TLS_REQUIRED in ini.splitlines() and CLIENT_TLS_REQUIRED not in before.splitlines():
        # TLS turned on for clients: offered first, required a moment later. A client between its SSLRequest (still
        # answered "no TLS") and its login when the RELOAD makes TLS required is refused ("SSL required"; measured
        # with a connection per write); offered first, new clients are in TLS by the time it is required.
        connection.upload(CONFIG_PATH, ini.replace(CLIENT_TLS_REQUIRED, "client_tls_sslmode = prefer"), mode=0o640,
                          owner="root", group=service_user)
        run.run("systemctl reload pgbouncer", what="reloading pgbouncer (TLS offered to clients)")
        time.sleep(TLS_OFFERED_SECONDS)
        staged = True
    ini_changed = connection.upload(CONFIG_PATH, ini, mode=0o640, owner="root", group=service_user) or staged
    if userlist_changed:
        details.append(f"{USERLIST_PATH} written (0600 {service_user})")
    if ini_changed:
        details.append(f"{CONFIG_PATH} written (pool {pool_size(run)} per node)")
    if staged:
        details.append(f"TLS offered to clients, required {TLS_OFFERED_SECONDS:g} s later")
    if restart:
        run.run("systemctl enable pgbouncer >/dev/null 2>&1; systemctl restart pgbouncer", what="starting pgbouncer")
        details.append("started" if state != "active" else "restarted for the new limits")
    else:
        files_changed = host.name in run.ctx.state.get("pgbouncer_tls_changed", set())
        stale = not (userlist_changed or ini_changed or files_changed) and serves_old_certificate(run, host)
        if stale:  # a run stopped between the new files and this reload: nothing else would ever reload them
            details.append("still served an older certificate")
        if userlist_changed or ini_changed or files_changed or stale:
            # SIGHUP: clients stay connected (those already in plaintext too when TLS turns on; new ones need TLS),
            # the TLS files are read again.
            run.run("systemctl reload pgbouncer", what="reloading pgbouncer")
            details.append("reloaded")
        if needs_reconnect(before, ini, host.name in run.ctx.state.get("pgbouncer_reconnect", set())):
            # Server connections opened before (no verified TLS, an HAProxy process that was replaced) are closed
            # as their clients release them, and opened again as configured now.
            problem = console.reconnect(run.ctx, host)
            if problem:
                return Outcome.changed("; ".join(details), [f"PgBouncer's RECONNECT failed ({problem}): its server "
                                                            "connections opened before stay until they end"])
            details.append("server connections renewed (RECONNECT)")
    return Outcome.of(bool(details), "; ".join(details) or "configuration up to date, pgbouncer active")


def serves_old_certificate(run: TaskRun, host: Host) -> bool:
    """With TLS on: whether this node's running PgBouncer serves another certificate than its node.crt on disk (a run
    stopped between writing the files and reloading: the next run finds the files unchanged). Asked on the node."""
    if not run.settings.tls.enabled:
        return False
    state = rest_tls.served(run, host, pg_port=run.settings.ports.pgbouncer,
                            https_port=run.settings.ports.haproxy_stats, cert_path=TLS_CERT)
    return state["disk"].startswith("tls:") and state["pg"] != "down" and state["pg"] != state["disk"]


def stop_requiring_server_tls(run: TaskRun) -> str | None:
    """TLS being turned off (kbpg.toml) while this node's PgBouncer still verifies PostgreSQL's TLS: pgbouncer.ini as
    wanted now (no TLS: servers ``prefer``) and a RELOAD, before PostgreSQL stops offering TLS (step 02 calls this
    through :func:`rest_tls.rest_scheme_change`); else its new server logins would be refused until this step runs
    (measured: 14 s of failed pooled writes). Returns what was done, or None."""
    host = run.host
    assert host is not None
    if run.settings.tls.enabled or run.run("systemctl is-active pgbouncer || true").stdout.strip() != "active":
        return None
    connection = run.connection()
    current = (connection.read_file(CONFIG_PATH) or b"").decode("utf-8", "replace")
    if not any(line.replace(" ", "") == "server_tls_sslmode=verify-full" for line in current.splitlines()):
        return None
    connection.upload(CONFIG_PATH, render_ini(run, host.address), mode=0o640, owner="root", group=_service_user(run))
    run.run("systemctl reload pgbouncer", what="reloading pgbouncer")
    return f"PgBouncer on {host.name} stopped requiring TLS from PostgreSQL (reloaded)"


LB_WAIT_SECONDS = 30


def verify_through_lb(run: TaskRun) -> Outcome:
    """The application's path: the load balancer forwards the write port and PgBouncer's port.

    The LB is configured outside kbpg (it is the cloud's) and its health checks take a few seconds
    to see services that just started, so this waits a little; if the LB never forwards, the install
    itself is fine but the operator must fix the LB: a warning, and diagnostics will fail on it.
    """
    settings, values = run.settings, run.ctx.credentials
    lb = settings.network.lb_address
    deadline = time.monotonic() + LB_WAIT_SECONDS
    pending = {settings.ports.haproxy_write: "HAProxy write port", settings.ports.pgbouncer: "PgBouncer"}
    errors: dict[int, str] = {}
    tls_params: dict[str, Any] = dict(tls.libpq_params(run.ctx.workdir, settings))  # verify-full with TLS on
    while pending and time.monotonic() < deadline:
        run.check_cancel()
        for port in list(pending):
            try:
                with psycopg.connect(host=lb, port=port, user=values["POSTGRES_APP_USER"], password=values["POSTGRES_APP_PASS"],
                                     dbname=values["POSTGRES_DB"], connect_timeout=3, **tls_params) as conn:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                    if row and row[0]:
                        raise psycopg.OperationalError("reached a replica")
                del pending[port]
            except psycopg.Error as exc:
                errors[port] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if pending:
            time.sleep(1)
    if pending:
        failed = "; ".join(f"{lb}:{port} ({what}): {errors.get(port, 'no answer')}" for port, what in pending.items())
        return Outcome.unchanged("the load balancer does not forward yet", [
            f"through the load balancer: {failed}. Point the LB's targets and health checks at the HAProxy nodes "
            f"on ports {settings.ports.haproxy_write}, {settings.ports.haproxy_read} and {settings.ports.pgbouncer}."])
    return Outcome.unchanged(f"LB {lb}: app login on {settings.ports.haproxy_write} (primary) and {settings.ports.pgbouncer} (PgBouncer)")


STEP = Step("04", "PgBouncer", [
    Task("packages", "haproxy", install_pgbouncer),
    Task("tls files", "haproxy", tls_files),
    Task("config", "haproxy", configure_pgbouncer),
    Task("through the LB", "cluster", verify_through_lb),
])
