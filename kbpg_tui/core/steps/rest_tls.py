"""Patroni's REST API changing scheme (http <-> https) under a running HAProxy, without an outage.

HAProxy asks each DB node's Patroni ``OPTIONS /primary`` (write port) and ``/replica`` (read port). The moment a
node's REST API turns HTTPS, HAProxy's plain HTTP checks fail, and after ``fall`` failures the server is marked
DOWN (its sessions shut): every node turning HTTPS would take the write port down until HAProxy gets ``check-ssl``.
So, around the Patroni reloads that change the scheme (:func:`rest_scheme_change`):

1. HAProxy's checks of the nodes that change are paused through its runtime API (``disable health``): each server
   keeps the state it has (the primary UP on the write port, the replicas DOWN), and HAProxy routes as before;
2. Patroni is reloaded (step 02), its REST API turns HTTPS (or back);
3. HAProxy's configuration is rendered for the scheme each node serves now (``check-ssl verify required`` with
   kbpg's CA for a node that speaks HTTPS) and HAProxy reloaded. The reload keeps each server's state (step 03's
   systemd drop-in saves it just before, ``load-server-state-from-file``), the pause included: the new process
   routes like the old one from its first connection, instead of taking every server UP until its first check;
4. the checks resume (``enable health``), now over TLS.

TLS turned off: the same reload makes PostgreSQL stop offering TLS, so PgBouncer first stops requiring it from its
servers (step 04's configuration, reloaded), else its new server logins would fail until step 04 runs.

Measured on the lab (a plaintext cluster turned TLS by re-running ``kbpg install``, 12 writers through LB:6432,
LB:5432 and each HAProxy node, half of them with a connection per write): 0 failed writes, no failover, longest
stall 0.08 s on a kept connection, 0.14 s with a connection per write; back to plaintext the same.

If kbpg dies in the middle, HAProxy keeps routing as it did (the checks stay paused: no failover would be
followed); the next ``kbpg install`` renders HAProxy for what each node serves and resumes every paused check
(step 03 always does), and ``kbpg diagnose`` fails on a paused check meanwhile (no server "UP" in the stats).
"""

from __future__ import annotations

import contextlib
import shlex
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from ..engine import TaskError, TaskRun
from ..events import Level
from ..ops.switchover import HAPROXY_SOCKET, RUNTIME_API
from ..ssh import Cancelled, Host, SshError

if TYPE_CHECKING:
    from ..engine import Context
    from ..settings import Settings

BACKENDS = ("postgres_write", "postgres_read")
PROBE_TIMEOUT = 2.0
NEW_PROCESS_WAIT = 15.0  # seconds for a reloaded HAProxy's new process to answer on the runtime socket
# HAProxy's check state bits (``show servers state``, srv_check_state): configured, enabled (not paused).
CHK_ST_CONFIGURED, CHK_ST_ENABLED = 0x2, 0x4


def wanted_scheme(settings: Settings) -> str:
    """The scheme kbpg.toml wants Patroni's REST API to speak."""
    return "https" if settings.tls.enabled else "http"


# --- what a node's REST API speaks --------------------------------------------------------------------------------

def _try_http(address: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.sendall(b"OPTIONS /liveness HTTP/1.0\r\n\r\n")
            return sock.recv(5) == b"HTTP/"
    except OSError:
        return False  # a TLS server drops a plaintext request


def _try_https(address: str, port: int, timeout: float) -> bool:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock, context.wrap_socket(sock):
            return True
    except (OSError, ssl.SSLError):
        return False


def probe_scheme(address: str, port: int, timeout: float = PROBE_TIMEOUT, first: str = "https") -> str | None:
    """"http" when an HTTP request gets an HTTP answer, "https" when a TLS handshake succeeds (nothing verified: only
    the scheme is asked), None when nothing answers either way (the node or its Patroni is down).

    ``first``: the scheme tried first, the one kbpg.toml wants: a node that already speaks it is asked once, and
    Patroni logs nothing (a plaintext request to its HTTPS port, or a handshake to its HTTP port, costs a traceback
    or an error line in its journal)."""
    tries = [("https", _try_https), ("http", _try_http)]
    for scheme, attempt in sorted(tries, key=lambda item: item[0] != first):
        if attempt(address, port, timeout):
            return scheme
    return None


# The same probe, run on the DB node itself (python3: Patroni's own interpreter) when this machine gets no answer from
# the REST port (a firewall between them): argv address, port, the scheme to try first; prints http, https or none.
PROBE_ON_NODE = r"""
import socket, ssl, sys
address, port, first = sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "https"

def http():
    try:
        with socket.create_connection((address, port), timeout=2) as sock:
            sock.sendall(b"OPTIONS /liveness HTTP/1.0\r\n\r\n")
            return sock.recv(5) == b"HTTP/"
    except OSError:
        return False

def https():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((address, port), timeout=2) as sock, context.wrap_socket(sock):
            return True
    except (OSError, ssl.SSLError):
        return False

order = [("https", https), ("http", http)]
order.sort(key=lambda item: item[0] != first)
print(next((name for name, attempt in order if attempt()), "none"))
"""


def rest_scheme(ctx: Context, host: Host) -> str | None:
    """What ``host``'s Patroni REST API speaks now: "https", "http", or None (no answer). Asked from this machine,
    else from the node itself over SSH (what matters is what HAProxy sees; this machine may not reach the port)."""
    port = ctx.settings.ports.patroni_rest
    first = wanted_scheme(ctx.settings)
    scheme = probe_scheme(host.address, port, first=first)
    if scheme is not None:
        return scheme
    try:
        answer = ctx.pool.get(host).run(f"python3 - {shlex.quote(host.address)} {port} {first}", stdin=PROBE_ON_NODE,
                                        check=False, timeout=20, what="asking the REST API's scheme").stdout.strip()
    except (SshError, Cancelled):
        return None
    return answer if answer in ("http", "https") else None


def rest_schemes(ctx: Context, names: list[str] | None = None) -> dict[str, str | None]:
    """{node: rest_scheme} for ``names`` (default: every DB node), probed in parallel."""
    hosts = [h for h in ctx.db_hosts if names is None or h.name in names]
    if not hosts:
        return {}
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        return dict(zip([h.name for h in hosts], pool.map(lambda h: rest_scheme(ctx, h), hosts), strict=True))


def check_schemes(ctx: Context) -> dict[str, str]:
    """The scheme HAProxy's checks must use for each DB node: what it serves now, else what kbpg.toml wants (a node
    that does not answer is checked as it will be once it is back)."""
    wanted = wanted_scheme(ctx.settings)
    return {name: scheme or wanted for name, scheme in rest_schemes(ctx).items()}


# Run on a node with python3: which certificate a PostgreSQL-protocol port (PostgreSQL, PgBouncer) and an HTTPS port
# (Patroni's REST API, HAProxy's stats) serve now, and the certificate in a file on disk. "plain" (no TLS), "down"
# (nothing answers), or "tls:<sha256 of the certificate>". Nothing is verified here: only which certificate is served
# (kbpg's checks verify the chain and the names).
SERVED_SCRIPT = r"""
import hashlib, re, socket, ssl, struct, sys
address, pg_port, rest_port, cert_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def handshake(sock):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with context.wrap_socket(sock) as wrapped:
        served = "tls:" + hashlib.sha256(wrapped.getpeercert(binary_form=True)).hexdigest()
        try:  # a close_notify, and what the server still sends read: else PostgreSQL logs a reset
            wrapped.settimeout(1)
            wrapped.unwrap()
        except (OSError, ValueError):
            pass
        return served

def connect(port):
    return socket.create_connection((address, port), timeout=5)

def rest():
    try:
        sock = connect(rest_port)
    except OSError:
        return "down"
    try:
        return handshake(sock)
    except (ssl.SSLError, OSError):
        return "plain"  # an HTTP server answers a TLS hello with "400 Bad request"
    finally:
        sock.close()

def pg():
    try:
        sock = connect(pg_port)
    except OSError:
        return "down"
    try:
        sock.sendall(struct.pack("!II", 8, 80877103))  # SSLRequest
        answer = sock.recv(1)
        if answer != b"S":
            return "plain" if answer == b"N" else "down"
        return handshake(sock)
    except (ssl.SSLError, OSError):
        return "down"
    finally:
        sock.close()

try:
    with open(cert_path) as f:
        pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", f.read(), re.S)
    disk = "tls:" + hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.group(0))).hexdigest() if pem else "none"
except (OSError, ValueError):
    disk = "none"
print("rest", rest())
print("pg", pg())
print("disk", disk)
"""


def served(run: TaskRun, host: Host, pg_port: int, https_port: int, cert_path: str) -> dict[str, str]:
    """{"rest": what ``https_port`` serves, "pg": what ``pg_port`` serves, "disk": ``cert_path``} on ``host``
    (see SERVED_SCRIPT), asked on the node itself."""
    args = " ".join(shlex.quote(str(a)) for a in (host.address, pg_port, https_port, cert_path))
    output = run.run(f"python3 - {args}", host=host, stdin=SERVED_SCRIPT, on_line=None,
                     what="reading which certificates are served").stdout
    found = dict(line.split(" ", 1) for line in output.splitlines() if line.count(" ") == 1)
    return {key: found.get(key, "down") for key in ("rest", "pg", "disk")}


# --- HAProxy's runtime API ----------------------------------------------------------------------------------------

def runtime(run: TaskRun, host: Host, commands: str, timeout: float = 10) -> str:
    """Send ``commands`` (one a line) to the HAProxy of ``host`` through its stats socket; its answer."""
    result = run.run(RUNTIME_API, host=host, stdin=commands if commands.endswith("\n") else commands + "\n",
                     check=False, on_line=None, timeout=timeout)
    if not result.ok:
        raise TaskError(f"{host.name}: HAProxy's runtime API ({HAPROXY_SOCKET}) did not answer: "
                        f"{(result.stderr or result.stdout).strip()[:200] or 'exit ' + str(result.exit_status)}")
    return result.stdout


def parse_servers_state(text: str) -> list[dict[str, str]]:
    """``show servers state``: one dict per server (be_name, srv_name, srv_op_state, srv_check_state ...)."""
    lines = text.splitlines()
    header: list[str] = []
    rows = []
    for line in lines:
        if line.startswith("# "):
            header = line[2:].split()
        elif line.strip() and header and not line.startswith("#"):
            fields = line.split()
            if len(fields) >= len(header):
                rows.append(dict(zip(header, fields, strict=False)))
    return rows


def paused(rows: list[dict[str, str]]) -> list[str]:
    """``backend/server`` of every server whose health check is configured but paused (``disable health``)."""
    found = []
    for row in rows:
        try:
            state = int(row.get("srv_check_state", "0"))
        except ValueError:
            continue
        if state & CHK_ST_CONFIGURED and not state & CHK_ST_ENABLED:
            found.append(f"{row.get('be_name')}/{row.get('srv_name')}")
    return found


def servers_state(run: TaskRun, host: Host) -> list[dict[str, str]]:
    return parse_servers_state(runtime(run, host, "show servers state"))


def worker_pid(run: TaskRun, host: Host) -> str:
    """The pid of the HAProxy process answering the runtime socket now ("" if none answers)."""
    try:
        info = runtime(run, host, "show info", timeout=5)
    except TaskError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("Pid:")), "")


def pause_checks(run: TaskRun, host: Host, names: list[str]) -> None:
    """``disable health`` of ``names`` in both backends of ``host``'s HAProxy; raises TaskError if any stays on."""
    commands = "; ".join(f"disable health {backend}/{name}" for backend in BACKENDS for name in names)
    answer = runtime(run, host, commands).strip()
    left = [s for s in (f"{b}/{n}" for b in BACKENDS for n in names) if s not in paused(servers_state(run, host))]
    if left:
        raise TaskError(f"{host.name}: HAProxy's checks of {', '.join(left)} could not be paused"
                        + (f" ({answer[:200]})" if answer else ""))


def resume_checks(run: TaskRun, host: Host) -> list[str]:
    """``enable health`` of every paused server of ``host``'s HAProxy; returns those that were paused.

    Raises TaskError when a check stays paused."""
    were = paused(servers_state(run, host))
    if not were:
        return []
    runtime(run, host, "; ".join(f"enable health {server}" for server in were))
    still = paused(servers_state(run, host))
    if still:
        raise TaskError(f"{host.name}: HAProxy's checks of {', '.join(still)} are still paused after `enable health`")
    return were


def wait_new_process(run: TaskRun, host: Host, before: str) -> bool:
    """After a reload: until a process other than ``before`` answers on the runtime socket (the new one has read
    its configuration and the saved state by then). False if none did within NEW_PROCESS_WAIT."""
    deadline = time.monotonic() + NEW_PROCESS_WAIT
    while time.monotonic() < deadline:
        run.check_cancel()
        now = worker_pid(run, host)
        if now and now != before:
            return True
        time.sleep(0.2)
    return False


def active_proxies(run: TaskRun) -> list[Host]:
    """The HAProxy nodes whose HAProxy runs now (the others have nothing to keep)."""
    def active(host: Host) -> bool:
        try:
            return run.run("systemctl is-active haproxy || true", host=host, on_line=None,
                           timeout=30).stdout.strip() == "active"
        except SshError:
            return False

    hosts = run.ctx.haproxy_hosts
    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        return [h for h, up in zip(hosts, pool.map(active, hosts), strict=True) if up]


# --- the change ---------------------------------------------------------------------------------------------------

@dataclass
class SchemeChange:
    """What :func:`rest_scheme_change` did: the nodes whose scheme changed (empty: nothing was done), and, once the
    ``with`` block is left, what HAProxy did (details) and what went wrong without failing (warnings), for the
    caller's outcome."""

    changing: list[str] = field(default_factory=list)
    proxies: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@contextlib.contextmanager
def rest_scheme_change(run: TaskRun, names: list[str]) -> Iterator[SchemeChange]:
    """Around Patroni reloads of ``names``: keeps HAProxy routing right while their REST API changes scheme.

    Before: the REST API of ``names`` is probed; if any will change scheme (kbpg.toml's tls.enabled against what it
    serves) and HAProxy runs, its checks of those nodes are paused on every HAProxy node. After, whatever happened
    inside (a failed reload too): HAProxy rendered for the scheme each node serves then, reloaded keeping its
    servers' state, its checks resumed. A cancelled run leaves the checks paused (HAProxy routes as before; the next
    ``kbpg install`` resumes them); a failure to follow is a TaskError (when the block itself succeeded) naming it.
    """
    change = SchemeChange()
    if not run.settings.tls.enabled:
        _pgbouncers_stop_requiring_tls(run, change)
    wanted = wanted_scheme(run.settings)
    now = rest_schemes(run.ctx, names)
    changing = [name for name in names if now.get(name) not in (None, wanted)]
    proxies = active_proxies(run) if changing else []
    if not changing or not proxies:
        yield change
        return
    from . import s03_haproxy  # s03 uses this module's helpers

    change.changing, change.proxies = changing, [h.name for h in proxies]
    with ThreadPoolExecutor(max_workers=len(proxies)) as pool:
        paused_on = list(pool.map(lambda host: _try(pause_checks, run, host, changing), proxies))
    problems = [problem for problem in paused_on if problem]
    if problems:  # nothing was reloaded yet: the pauses that worked are undone, and the run stops here
        with ThreadPoolExecutor(max_workers=len(proxies)) as pool:
            list(pool.map(lambda host: _try(resume_checks, run, host), proxies))
        raise TaskError("HAProxy's checks could not be paused before Patroni's REST API changes scheme ("
                        + "; ".join(problems) + "): nothing was reloaded")
    run.say(f"HAProxy's checks of {', '.join(changing)} paused on {', '.join(change.proxies)} while their REST API "
            f"turns {wanted.upper()}")
    failed: BaseException | None = None
    try:
        yield change
    except BaseException as exc:
        failed = exc
        raise
    finally:
        if isinstance(failed, (Cancelled, KeyboardInterrupt)) or run.ctx.cancel.is_set():
            text = (f"cancelled with HAProxy's checks of {', '.join(changing)} paused on {', '.join(change.proxies)}: "
                    "HAProxy routes as before, without following a failover, until `kbpg install` is run again")
            change.warnings.append(text)
            run.say(text, Level.WARNING)
        else:
            _follow(run, proxies, s03_haproxy, change, raise_errors=failed is None)


def _try(function: Any, run: TaskRun, host: Host, *args: Any) -> str | None:
    """``function(run, host, *args)``; the problem as text (naming the host), or None."""
    try:
        function(run, host, *args)
        return None
    except (TaskError, SshError) as exc:
        text = str(exc)
        return text if text.startswith(host.name) else f"{host.name}: {text}"


def _pgbouncers_stop_requiring_tls(run: TaskRun, change: SchemeChange) -> None:
    """TLS turned off: PostgreSQL stops offering it at this reload; PgBouncer must stop requiring it first."""
    from . import s04_pgbouncer

    hosts = run.ctx.haproxy_hosts
    if not hosts:
        return
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        done = list(pool.map(lambda host: s04_pgbouncer.stop_requiring_server_tls(TaskRun(run.ctx, run.step, host)),
                             hosts))
    for detail in done:
        if detail:
            change.details.append(detail)
            run.say(detail)


def _follow(run: TaskRun, proxies: list[Host], s03: Any, change: SchemeChange, raise_errors: bool) -> None:
    """HAProxy rendered for what each node serves now, reloaded, its checks resumed, on every node of ``proxies``."""
    schemes = check_schemes(run.ctx)

    def one(host: Host) -> tuple[str, Any]:
        try:
            return host.name, s03.apply(TaskRun(run.ctx, run.step, host), schemes, expected_paused=True)
        except (TaskError, SshError) as exc:
            return host.name, exc

    with ThreadPoolExecutor(max_workers=len(proxies)) as pool:
        done = list(pool.map(one, proxies))
    problems = []
    for name, outcome in done:
        if isinstance(outcome, Exception):
            problems.append(f"{name}: {outcome}")
            continue
        change.details.append(f"HAProxy on {name}: {outcome.detail}")
        change.warnings += [f"{name}: {warning}" for warning in outcome.warnings]
        run.say(change.details[-1])
    for warning in change.warnings:
        run.say(warning, Level.WARNING)
    if problems:
        text = ("HAProxy could not follow the REST API's new scheme (" + "; ".join(problems) + "); its checks may "
                "stay paused there: run kbpg install again")
        if raise_errors:
            raise TaskError(text)
        change.warnings.append(text)
        run.say(text, Level.WARNING)
