"""The Patroni cluster, one model of it: members, leader, replicas, timelines, lag, pending restarts.

- :class:`Member` and :class:`ClusterState`: the cluster as Patroni sees it at one moment, whatever it was read from.
- :func:`health`: the one rule for a healthy cluster, used by step 02 (waiting for the cluster, after each restart)
  and by diagnostics check 4.
- Two readers that map onto the same model: :func:`read_patronictl` (``patronictl list -f json`` over SSH, what the
  install steps use) and :func:`read_rest` (Patroni's REST ``/cluster``, what the diagnostics and the wizard's live
  view use; never through a proxy, see :func:`direct_opener`). Patroni's REST API is HTTPS when ``[tls] enabled``
  (:func:`rest_url`), verified with kbpg's own CA (:func:`rest_context`); :func:`read_cluster` does both.
- :func:`login`: kbpg's own logins (app, monitor, PgBouncer console) with TLS verify-full when it is on.
- :func:`leader_host` and :func:`psql`: SQL run as the superuser on the leader, over SSH.

Roles are kept in the REST API's spelling (``leader``, ``replica``, ``sync_standby``...); patronictl's
("Leader", "Sync Standby") are turned into it. Lag is in bytes behind the leader; patronictl gives it in MB.
"""

from __future__ import annotations

import base64
import json
import shlex
import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, cast

from . import tls
from .engine import TaskError
from .ssh import Cancelled, Host, Result, SshError

if TYPE_CHECKING:
    from .engine import Context, TaskRun
    from .settings import Settings

CONFIG_PATH = "/etc/patroni/config.yml"
PATRONICTL = f"patronictl -c {CONFIG_PATH}"
PSQL = ("runuser -u postgres -- psql -X -q -At -v ON_ERROR_STOP=1 -h /var/run/postgresql "
        "-p {port} -U {user} -d {database}")

MAX_LAG_BYTES = 16 * 1024 * 1024  # a streaming replica further behind than this is not healthy
MB = 1024 * 1024
REPLICA_ROLES = ("replica", "sync_standby", "quorum_standby")


# --- the model -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    """One Patroni member."""

    name: str
    host: str
    role: str  # leader, replica, sync_standby, quorum_standby, standby_leader
    state: str  # running, streaming, starting, stopped, ...
    timeline: int | None
    lag: int | None  # bytes behind the leader (replicas); None when unknown
    pending_restart: bool = False  # a changed parameter waits for a PostgreSQL restart

    @property
    def is_leader(self) -> bool:
        return self.role == "leader"

    @property
    def is_replica(self) -> bool:
        return self.role in REPLICA_ROLES

    @property
    def is_running_leader(self) -> bool:
        return self.is_leader and self.state == "running"

    @property
    def is_streaming(self) -> bool:
        return self.is_replica and self.state == "streaming"

    def label(self) -> str:
        return f"{self.name}={self.role}/{self.state}/TL{self.timeline}"


@dataclass(frozen=True)
class ClusterState:
    """The cluster at one moment; ``source`` says where it was read (``patronictl on db-slave-01``...)."""

    members: tuple[Member, ...]
    source: str = ""

    @property
    def leader(self) -> Member | None:
        """The member Patroni names leader (whatever its state); None when there is none."""
        return next((m for m in self.members if m.is_leader), None)

    @property
    def running_leaders(self) -> list[Member]:
        return [m for m in self.members if m.is_running_leader]

    @property
    def replicas(self) -> list[Member]:
        return [m for m in self.members if m.is_replica]

    @property
    def streaming(self) -> list[Member]:
        return [m for m in self.members if m.is_streaming]

    @property
    def timelines(self) -> set[int | None]:
        """The timelines of the running leader(s) and the streaming replicas."""
        return {m.timeline for m in self.running_leaders + self.streaming}

    @property
    def pending_restart(self) -> list[Member]:
        """Members waiting for a restart, replicas first and the leader last (the order to restart them in)."""
        return sorted((m for m in self.members if m.pending_restart), key=lambda m: m.is_leader)

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)

    def leader_first(self) -> list[Member]:
        return sorted(self.members, key=lambda m: (not m.is_leader, m.name))

    def summary(self) -> str:
        return ", ".join(m.label() for m in self.members) or "no members yet"


@dataclass(frozen=True)
class Health:
    """The verdict of :func:`health`: healthy when no problem was found; each problem names the member."""

    problems: tuple[str, ...]
    summary: str

    @property
    def ok(self) -> bool:
        return not self.problems


def health(state: ClusterState, expected: Sequence[str] | int, max_lag: int = MAX_LAG_BYTES) -> Health:
    """The one rule for a healthy cluster.

    One running leader; every other member a streaming replica; the members exactly the DB nodes ``expected``
    (their names from servers.tsv, or only how many there are); the leader and the replicas on one timeline; no
    replica more than ``max_lag`` bytes behind (a lag Patroni does not know is not judged).
    """
    problems = []
    leaders = state.running_leaders
    if len(leaders) != 1:
        problems.append(f"{len(leaders)} running leaders")
    for member in state.members:
        if not member.is_running_leader and not member.is_streaming:
            problems.append(f"{member.name} is {member.role}/{member.state}")
    names = [m.name for m in state.members]
    if isinstance(expected, int):
        if len(names) != expected:
            problems.append(f"{len(names)} members, {expected} expected")
    else:
        missing = sorted(set(expected) - set(names))
        if missing:
            problems.append(f"{', '.join(missing)} not in the cluster")
        strangers = sorted(set(names) - set(expected))
        if strangers:
            problems.append(f"{', '.join(strangers)} in the cluster but not a DB node of servers.tsv")
    timelines = state.timelines
    if len(timelines) > 1:
        problems.append(f"timelines differ: {sorted(timelines, key=lambda t: (t is None, t or 0))}")
    problems += [f"{m.name} lag {m.lag}" for m in state.streaming if m.lag is not None and m.lag > max_lag]
    return Health(tuple(problems), state.summary())


# --- reading the cluster ----------------------------------------------------------------------

def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _first_int(item: dict, keys: Sequence[str], scale: int = 1) -> int | None:
    for key in keys:
        value = _int(item.get(key))
        if value is not None:
            return value * scale
    return None


def _role(text: Any) -> str:
    """patronictl's "Sync Standby" as the REST API's "sync_standby"."""
    return str(text or "?").strip().lower().replace(" ", "_")


def _host(text: Any) -> str:
    """patronictl shows "host:port" when a port is not 5432; the model keeps the host."""
    host = str(text or "")
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host


def from_patronictl(rows: list[dict], source: str = "") -> ClusterState:
    """``patronictl list -f json``: Patroni 3's "Lag in MB", Patroni 4's "Receive Lag"/"Replay Lag" (MB)."""
    members = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        members.append(Member(
            name=str(row.get("Member", "?")),
            host=_host(row.get("Host")),
            role=_role(row.get("Role")),
            state=str(row.get("State") or "?"),
            timeline=_int(row.get("TL")),
            lag=_first_int(row, ("Lag in MB", "Receive Lag", "Replay Lag"), MB),
            pending_restart=bool(row.get("Pending restart")),
        ))
    return ClusterState(tuple(members), source)


def from_rest(data: dict, source: str = "") -> ClusterState:
    """Patroni's REST ``/cluster``: lag in bytes (``lag``, or Patroni 4's ``receive_lag``/``replay_lag``)."""
    members = []
    for item in data.get("members", []) if isinstance(data, dict) else []:
        if not isinstance(item, dict):
            continue
        members.append(Member(
            name=str(item.get("name", "?")),
            host=str(item.get("host", "")),
            role=_role(item.get("role")),
            state=str(item.get("state") or "?"),
            timeline=_int(item.get("timeline")),
            lag=_first_int(item, ("lag", "receive_lag", "replay_lag")),
            pending_restart=bool(item.get("pending_restart")),
        ))
    return ClusterState(tuple(members), source)


def read_patronictl(run: TaskRun, via: Host | None = None) -> ClusterState:
    """``patronictl list`` asked on the first DB node that answers (or on ``via``); TaskError naming each node."""
    errors = []
    for host in ([via] if via else run.ctx.db_hosts):
        try:
            result = run.run(f"{PATRONICTL} list -f json", host=host, check=False, on_line=None, timeout=30)
        except Cancelled:
            raise
        except SshError as exc:  # a node that is down (often the old leader) must not hide the others' answer
            errors.append(str(exc).splitlines()[0])
            continue
        if result.ok:
            try:
                rows = json.loads(result.stdout or "[]")
            except json.JSONDecodeError:
                errors.append(f"{host.name}: unreadable patronictl output")
                continue
            if isinstance(rows, list):
                return from_patronictl(rows, f"patronictl on {host.name}")
            errors.append(f"{host.name}: unreadable patronictl output")
        else:
            errors.append(f"{host.name}: {result.tail(2)}")
    raise TaskError("cannot read the cluster state: " + "; ".join(errors))


class NoAnswer(OSError):
    """An HTTP request that got no answer at all (refused, timed out); the message names the URL."""


class ClusterUnreadable(Exception):
    """No DB node told the cluster's state; ``errors`` holds each node's reason (the message joins them)."""

    def __init__(self, errors: list[str]):
        super().__init__("no DB node answers Patroni's REST API: " + "; ".join(errors))
        self.errors = errors


def direct_opener(context: ssl.SSLContext | None = None) -> urllib.request.OpenerDirector:
    """An opener that goes straight to the hosts, never through a proxy named in the environment (http_proxy,
    https_proxy, all_proxy...): the HAProxy stats and Patroni passwords travel in these requests. ``context``:
    what verifies an https:// server (kbpg's CA, see :func:`rest_context`)."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def http_request(url: str, timeout: float, auth: tuple[str, str] | None = None,
                 method: str = "GET", body: dict | None = None,
                 context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    """(status, body) of one request straight to a host; an HTTP error status is an answer, no answer is NoAnswer.

    ``body``: sent as JSON (Patroni's unsafe endpoints: /switchover, /config ...). ``context``: how an https://
    server is verified (:func:`rest_context`); a certificate that does not verify is no answer, naming why.
    """
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, method=method, data=data)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with direct_opener(context).open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read() if exc.fp else b""
    except OSError as exc:  # URLError (refused, unreachable...), timeouts, a connection reset while reading
        reason = getattr(exc, "reason", exc)
        raise NoAnswer(f"{url}: no answer ({reason})") from None


Request = Callable[[str], tuple[int, bytes]]  # url -> (status, body), raising NoAnswer


def rest_scheme(settings: Settings) -> str:
    """"https" when ``[tls] enabled`` (Patroni's REST API speaks only TLS then), else "http"."""
    return "https" if settings.tls.enabled else "http"


def rest_url(where: Context | Settings, host: Host | str, path: str) -> str:
    """The URL of ``path`` on the REST API of ``host`` (a Host or an address): https:// when TLS is on."""
    settings = cast("Settings", getattr(where, "settings", where))
    address = host.address if isinstance(host, Host) else host
    return f"{rest_scheme(settings)}://{address}:{settings.ports.patroni_rest}/{path.lstrip('/')}"


_contexts: dict[tuple[str, int, int], ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def rest_context(ctx: Context) -> ssl.SSLContext | None:
    """What verifies Patroni's REST API and HAProxy's stats page over HTTPS: kbpg's CA (``credentials/tls/ca.crt``),
    the host's address checked; None when TLS is off. Made once per version of ca.crt (the drill asks often).
    A CA that cannot be read is NoAnswer naming the file (nothing can be asked without it)."""
    if not ctx.settings.tls.enabled:
        return None
    path = Path(tls.ca_path(ctx.workdir))
    try:
        found = path.stat()
        key = (str(path), found.st_mtime_ns, found.st_size)
    except OSError:
        key = (str(path), 0, -1)
    with _contexts_lock:
        if key in _contexts:
            return _contexts[key]
    try:
        context = tls.client_context(ctx.workdir)
    except tls.TlsError as exc:
        raise NoAnswer(f"no HTTPS request without the CA: {exc}") from None
    with _contexts_lock:
        _contexts.clear()  # one ca.crt at a time
        _contexts[key] = context
    return context


def read_rest(hosts: Sequence[Host], port: int, timeout: float = 3.0, request: Request | None = None,
              scheme: str = "http", context: ssl.SSLContext | None = None) -> ClusterState:
    """REST ``/cluster`` of the first of ``hosts`` that answers; ClusterUnreadable naming each node otherwise.

    ``scheme`` and ``context``: see :func:`rest_url` and :func:`rest_context` (:func:`read_cluster` passes both)."""
    get: Request = request or (lambda url: http_request(url, timeout, context=context))
    errors = []
    for host in hosts:
        try:
            status, body = get(f"{scheme}://{host.address}:{port}/cluster")
        except NoAnswer as exc:
            errors.append(f"{host.name}: {exc}")
            continue
        if status != 200:
            errors.append(f"{host.name}: /cluster answered {status}")
            continue
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            errors.append(f"{host.name}: /cluster is not Patroni's JSON")
            continue
        return from_rest(data, f"/cluster of {host.name}")
    raise ClusterUnreadable(errors or ["no DB node to ask"])


def read_cluster(ctx: Context, hosts: Sequence[Host] | None = None, timeout: float = 3.0) -> ClusterState:
    """:func:`read_rest` on ``hosts`` (default: the DB nodes) with the run's scheme and CA (HTTPS when TLS is on)."""
    try:
        context = rest_context(ctx)
    except NoAnswer as exc:
        raise ClusterUnreadable([str(exc)]) from None
    return read_rest(ctx.db_hosts if hosts is None else hosts, ctx.settings.ports.patroni_rest, timeout,
                     scheme=rest_scheme(ctx.settings), context=context)


def cluster_view(ctx: Context, timeout: float = 3.0) -> list[Member]:
    """The cluster as Patroni sees it now, leader first (the wizard's live view). Raises ClusterUnreadable."""
    return read_cluster(ctx, timeout=timeout).leader_first()


# --- kbpg's own logins to PostgreSQL and PgBouncer --------------------------------------------------

LOGINS = {  # role -> (user name, password) in postgres.env
    "app": ("POSTGRES_APP_USER", "POSTGRES_APP_PASS"),
    "monitor": ("POSTGRES_MONITOR_USER", "POSTGRES_MONITOR_PASS"),
    "pgbouncer": ("PGBOUNCER_ADMIN_USER", "PGBOUNCER_ADMIN_PASS"),
}


def tls_params(ctx: Context) -> dict[str, str]:
    """libpq's TLS keywords for every connection kbpg opens: verify-full with kbpg's CA when TLS is on."""
    return tls.libpq_params(ctx.workdir, ctx.settings)


def login(ctx: Context, role: str) -> dict[str, Any]:
    """psycopg keywords (user, password, TLS) for kbpg's own login as ``role``: "app" (writes through the LB),
    "monitor" (everything read-only: diagnostics, the drill's and the switchover's watchers) or "pgbouncer" (the
    admin console). Never the superuser: it logs in only on the DB nodes themselves (:func:`psql`). A name missing
    from postgres.env is a TaskError saying how to add it."""
    user, password = LOGINS[role]
    values = ctx.credentials
    missing = [name for name in (user, password) if not values.get(name)]
    if missing:
        raise TaskError(f"{', '.join(missing)} not in credentials/postgres.env: run `kbpg install` (step 00 adds "
                        "it to an existing cluster's file)")
    return {"user": values[user], "password": values[password], **tls_params(ctx)}


# --- the leader, and SQL on it -----------------------------------------------------------------

def leader_host(run: TaskRun) -> Host:
    """The DB node that leads now (remembered for the rest of the run in ``ctx.state["leader"]``)."""
    name = run.ctx.state.get("leader")
    if not name:
        leader = read_patronictl(run).leader
        if leader is None:
            raise TaskError("the cluster has no leader right now")
        name = leader.name
        run.ctx.state["leader"] = name
    hosts = {h.name: h for h in run.ctx.db_hosts}
    if name not in hosts:
        raise TaskError(f"the cluster's leader is {name}, which is not a DB node selected in servers.tsv "
                        f"({', '.join(hosts)}); was a host renamed? Check `{PATRONICTL} list` on a DB node")
    return hosts[name]


def psql(run: TaskRun, host: Host, sql: str, what: str, database: str = "postgres") -> Result:
    """Run SQL as the superuser over the local socket (peer-mapped); the SQL, secrets included, goes through stdin."""
    values = run.ctx.credentials
    command = PSQL.format(port=run.settings.ports.postgresql, user=shlex.quote(values["POSTGRES_SUPERUSER"]),
                          database=shlex.quote(database))
    return run.run(command, host=host, stdin=sql, on_line=None, what=what)


def on_leader(run: TaskRun, sql: str, what: str, database: str = "postgres") -> Result:
    """:func:`psql` on the leader."""
    return psql(run, leader_host(run), sql, what, database)
