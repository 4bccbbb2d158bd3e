"""Shared test fakes: a connection and a pool that look like kbpg's (kbpg_tui.core.ssh) to the code under test.

- :class:`ScriptedConnection` answers each ``run`` with a function of (script, stdin): canned results,
  or anything a test wants to check or provoke; every call is recorded.
- :class:`LocalShellConnection` runs the script for real with the local bash, after rewriting the
  remote paths it names to a directory of the test's (``paths``): the real shell scripts of a module
  run, with no host.
- :class:`FakePool` hands out one connection per host name; a host mapped to an exception is
  "down" (``get`` raises it, as ConnectionPool.get raises SshError).
- :class:`HostKeyPool` stands in for a ConnectionPool (same constructor) whose hosts all present an
  unknown host key: ``get`` asks the prompt, as the real pool's host-key policy does.
- :class:`SlowWork` is work that takes long unless cancelled (a long install, a probe that hangs), and
  records when it saw its cancel event.
- :class:`FakeProbeContext` (built by :func:`lab_probe_context`) is what the diagnostics' checks talk through,
  with fake REST answers, fake PostgreSQL/PgBouncer connections (:class:`FakePgConnection`) and SSH through a
  FakePool.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Mapping

import psycopg

from kbpg_tui.core.checks.probe import ProbeContext
from kbpg_tui.core.cluster import NoAnswer
from kbpg_tui.core.events import HostKeyUnknown
from kbpg_tui.core.ssh import Connection, Host, HostKeyError, RemoteCommandError, Result, SshError

Handler = Callable[[str, bytes], Result]


def result(stdout: str = "", exit_status: int = 0, stderr: str = "", command: str = "") -> Result:
    return Result(command, exit_status, stdout, stderr, 0.0)


class ScriptedConnection:
    """A connection whose commands are answered by ``handler(script, stdin)``; its commands run as root
    (``sudo_mode``, as a real Connection names how it became root). ``upload`` and ``read_file`` are the real
    Connection's: their scripts go to the handler like any other command."""

    sudo_mode: str | None = "root"
    upload = Connection.upload
    read_file = Connection.read_file

    def __init__(self, host: Host, handler: Handler):
        self.host = host
        self.handler = handler
        self.calls: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()

    def connect(self) -> "ScriptedConnection":
        return self

    def run(self, script: str, stdin: bytes | str | None = None, timeout: float | None = None,
            on_line: Callable[[str, str], None] | None = None, check: bool = True, what: str = "") -> Result:
        data = stdin.encode() if isinstance(stdin, str) else (stdin or b"")
        with self._lock:
            self.calls.append((script, data))
        outcome = self.handler(script, data)
        outcome.command = script
        if on_line is not None:
            for line in outcome.stdout.splitlines():
                on_line("stdout", line)
        if check and not outcome.ok:
            raise RemoteCommandError(self.host, outcome, what)
        return outcome

    @property
    def scripts(self) -> list[str]:
        """The scripts run so far, in order."""
        return [script for script, _stdin in self.calls]

    def close(self) -> None:
        pass


class LocalShellConnection(ScriptedConnection):
    """Runs each script with the local bash; ``paths`` maps remote paths to local ones (rewritten in the script)."""

    def __init__(self, host: Host, paths: Mapping[str, str | Path], timeout: float = 30):
        super().__init__(host, self._bash)
        self.paths = {remote: str(local) for remote, local in paths.items()}
        self.timeout = timeout

    def _bash(self, script: str, stdin: bytes) -> Result:
        for remote, local in self.paths.items():
            script = script.replace(remote, local)
        started = time.monotonic()
        done = subprocess.run(["bash", "-c", "set -o pipefail; " + script], input=stdin, capture_output=True,
                              timeout=self.timeout)
        return Result(script, done.returncode, done.stdout.decode(errors="replace"),
                      done.stderr.decode(errors="replace"), time.monotonic() - started)


def unreachable(host: Host) -> SshError:
    """What ConnectionPool.get raises for a host that does not answer: put it in a FakePool in place of a connection."""
    return SshError(f"{host.name} ({host.address}): no SSH answer within 10 s")


class FakePool:
    """One connection per host name; an exception instead of a connection makes ``get`` raise it (a host down)."""

    def __init__(self, connections: Mapping[str, ScriptedConnection | Exception] | None = None):
        self.connections: dict[str, ScriptedConnection | Exception] = dict(connections or {})
        self.gets: list[str] = []
        self.closed = 0
        self.step = ""  # the step running now: the engine sets it, as on a ConnectionPool

    def get(self, host: Host) -> ScriptedConnection:
        self.gets.append(host.name)
        connection = self.connections.get(host.name)
        if connection is None:
            raise SshError(f"{host.name} ({host.address}): no fake connection for this host")
        if isinstance(connection, Exception):
            raise connection
        return connection

    def close(self) -> None:
        self.closed += 1


def local_shell_pool(root: Path, hosts: list[Host], remote_dirs: list[str]) -> FakePool:
    """A pool of :class:`LocalShellConnection`, one per host, each with its own copy of ``remote_dirs`` under
    ``root/<host name>/`` (e.g. /var/lib/kbpg -> root/db-1/var/lib/kbpg): hosts with their own filesystems."""
    connections: dict[str, ScriptedConnection | Exception] = {}
    for host in hosts:
        base = root / host.name
        base.mkdir(parents=True, exist_ok=True)
        connections[host.name] = LocalShellConnection(host, {d: base / d.lstrip("/") for d in remote_dirs})
    return FakePool(connections)


class HostKeyPool(FakePool):
    """A ConnectionPool (same constructor, so a test can put it in its place) whose every host presents a key
    kbpg has never seen: ``get`` asks ``prompt``, one host at a time as the real pool does, and raises
    HostKeyError on a "no", as the real policy does. ``answers`` records (host, answer); an accepted host
    answers every command with ``handler``."""

    FINGERPRINT = "SHA256:" + "k" * 43

    def __init__(self, options=None, known_hosts=None, sink=None, prompt=None, sudo_passwords=None,  # noqa: ANN001
                 cancel: threading.Event | None = None, handler: Handler | None = None):
        super().__init__()
        self.prompt, self.cancel = prompt, cancel
        self.handler: Handler = handler or (lambda script, stdin: result("root\n"))
        self.answers: list[tuple[str, bool]] = []
        self._prompt_lock = threading.Lock()

    def get(self, host: Host) -> ScriptedConnection:
        self.gets.append(host.name)
        with self._prompt_lock:
            accepted = bool(self.prompt and self.prompt(HostKeyUnknown(host.name, host.address, "ssh-ed25519",
                                                                        self.FINGERPRINT)))
        self.answers.append((host.name, accepted))
        if not accepted:
            raise HostKeyError(f"{host.name} ({host.address}): host key declined by the operator ({self.FINGERPRINT})")
        return ScriptedConnection(host, self.handler)


class SlowWork:
    """Work that takes ``seconds`` unless its cancel event is set first (``wait(cancel)``): ``started`` is set
    when it begins, ``cancelled_at`` (time.monotonic) when it saw the cancel, None if it never did."""

    def __init__(self, seconds: float = 30.0):
        self.seconds = seconds
        self.started = threading.Event()
        self.cancelled_at: float | None = None

    def wait(self, cancel: threading.Event) -> bool:
        self.started.set()
        if cancel.wait(self.seconds):
            self.cancelled_at = time.monotonic()
            return True
        return False


# --- diagnostics: a probe context whose services are fakes ------------------------------------------------------
#
# FakeProbeContext stands for kbpg_tui.core.checks.probe.ProbeContext (what every check talks through): REST answers
# from a table, PostgreSQL/PgBouncer connections from a function, SSH through ctx.pool (a FakePool of
# ScriptedConnection). lab_probe_context builds one on the lab's own inventory (198.18.0.x: nothing is reached).

class FakeCursor:
    def __init__(self, rows: list[tuple]):
        self.rows = rows

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[tuple]:
        return list(self.rows)

    def __iter__(self):
        return iter(self.rows)


class FakePgConnection:
    """A psycopg connection (a context manager, like psycopg's) whose queries are answered from ``answers``: the
    first key found in the SQL gives the rows, or the exception to raise (a psycopg.Error, say); any other
    statement gives no rows. Every statement is recorded in ``executed`` as (sql, params). PgBouncer's admin
    console (``pgconn.exec_``) is answered from the same table."""

    def __init__(self, answers: Mapping[str, list[tuple] | Exception] | None = None):
        self.answers = dict(answers or {})
        self.executed: list[tuple[str, object]] = []
        self.pgconn = _FakePgConn(self)

    def __enter__(self) -> "FakePgConnection":
        return self

    def __exit__(self, *exc: object) -> bool:
        return False

    def answer(self, sql: str, params: object = None) -> list[tuple]:
        self.executed.append((sql, params))
        for key, rows in self.answers.items():
            if key in sql:
                if isinstance(rows, Exception):
                    raise rows
                return rows
        return []

    def execute(self, sql: str, params: object = None) -> FakeCursor:
        return FakeCursor(self.answer(sql, params))


class _FakePgConn:
    def __init__(self, connection: FakePgConnection):
        self.connection = connection

    def exec_(self, query: bytes) -> SimpleNamespace:
        try:
            rows = self.connection.answer(query.decode())
        except psycopg.Error as exc:
            return SimpleNamespace(status=psycopg.pq.ExecStatus.FATAL_ERROR, ntuples=0, error_message=str(exc).encode())
        return SimpleNamespace(status=psycopg.pq.ExecStatus.TUPLES_OK, ntuples=len(rows), error_message=None)


Databases = Callable[[str, int, str, str, str], FakePgConnection]  # (host, port, user, password, dbname)


def _no_database(host: str, port: int, user: str, password: str, dbname: str) -> FakePgConnection:
    raise psycopg.OperationalError(f'connection to server at "{host}", port {port} failed: Connection refused')


def hostssl_only(host: str, port: int, user: str, password: str, dbname: str) -> FakePgConnection:
    """What a server whose remote pg_hba lines are all hostssl answers a plaintext login."""
    raise psycopg.OperationalError(f'connection to server at "{host}", port {port} failed: FATAL:  no pg_hba.conf '
                                   f'entry for host "198.18.0.1", user "{user}", database "{dbname}", no encryption')


class FakeProbeContext(ProbeContext):
    """A ProbeContext whose REST answers come from ``rest`` ({url: answer} or {(method, url): answer}: a
    (status, body) pair, the body bytes/str or JSON-able; an exception to raise; or a function of the basic
    auth sent), unknown URLs not answering (NoAnswer); whose connections come from ``databases(host, port,
    user, password, dbname)``, those without TLS (``sslmode="disable"``) from ``plaintext`` (default: refused as
    by hostssl lines); whose TLS certificates come from ``certs`` ({(address, port): CertInfo or the exception
    to raise}, nothing answering elsewhere). ``requests`` records (method, url, auth), ``connections`` (host, port,
    user, dbname), ``plaintext_logins`` the same for the connections without TLS, ``cert_probes`` (address, port,
    postgres)."""

    def __init__(self, ctx, rest: Mapping | None = None, databases: Databases | None = None,
                 timeout: float = 1.0, plaintext: Databases | None = None, certs: Mapping | None = None):
        super().__init__(ctx, timeout)
        self.certs = dict(certs or {})
        self.cert_probes: list[tuple[str, int, bool]] = []
        self.rest = dict(rest or {})
        self.databases = databases or _no_database
        self.plaintext = plaintext or hostssl_only
        self.requests: list[tuple[str, str, tuple[str, str] | None]] = []
        self.connections: list[tuple[str, int, str, str]] = []
        self.plaintext_logins: list[tuple[str, int, str, str]] = []

    def request(self, url: str, auth: tuple[str, str] | None = None, method: str = "GET") -> tuple[int, bytes]:
        self.requests.append((method, url, auth))
        answer = self.rest.get((method, url), self.rest.get(url))
        if answer is None:
            raise NoAnswer(f"{url}: no answer ([Errno 111] Connection refused)")
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            answer = answer(auth)
        status, body = answer
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        return status, body.encode() if isinstance(body, str) else body

    def pg(self, host: str, port: int, user: str, password: str, dbname: str | None = None,
           sslmode: str | None = None):
        database = dbname or self.values["POSTGRES_DB"]
        if sslmode == "disable":
            self.plaintext_logins.append((host, port, user, database))
            return self.plaintext(host, port, user, password, database)
        self.connections.append((host, port, user, database))
        return self.databases(host, port, user, password, database)

    def sudo_mode(self, host: Host) -> str | None:
        return getattr(self.ctx.pool.get(host), "sudo_mode", "root")

    def certificate(self, address: str, port: int, postgres: bool):
        from kbpg_tui.core import tls

        self.cert_probes.append((address, port, postgres))
        answer = self.certs.get((address, port))
        if answer is None:
            raise tls.TlsProbeError(f"{address}:{port}: cannot connect: Connection refused", "unreachable")
        if isinstance(answer, Exception):
            raise answer
        return answer


def lab_probe_context(workdir: Path, pool: FakePool | None = None, rest: Mapping | None = None,
                      databases: Databases | None = None, values: Mapping[str, str] | None = None,
                      timeout: float = 1.0, plaintext: Databases | None = None,
                      certs: Mapping | None = None) -> FakeProbeContext:
    """A FakeProbeContext on the lab's inventory and addresses (servers.tsv written to ``workdir``), the lab's
    network settings, and freshly generated credentials (or ``values``)."""
    from kbpg_tui.core import credentials as creds
    from kbpg_tui.core.engine import Context
    from kbpg_tui.core.inventory import load_selection
    from kbpg_tui.core.lab.topology import LB_ADDRESS, SUBNET
    from kbpg_tui.core.lab.workdir import write_servers_tsv
    from kbpg_tui.core.settings import Settings

    write_servers_tsv(workdir)
    settings = Settings()
    settings.inventory.path = "servers.tsv"
    settings.network.lb_address = LB_ADDRESS
    settings.network.private_subnet = SUBNET
    credentials = creds.Credentials(dict(values)) if values is not None else creds.generate()[0]
    ctx = Context(settings, credentials, load_selection(workdir / "servers.tsv"), workdir,
                  pool=pool or FakePool(), sink=lambda event: None, cancel=threading.Event())  # type: ignore[arg-type]
    return FakeProbeContext(ctx, rest=rest, databases=databases, timeout=timeout, plaintext=plaintext, certs=certs)


# --- HTTPS: a local server with a certificate of kbpg's own CA ---------------------------------------------------

def serve_tls(server, workdir: Path, name: str = "db-local", ips: tuple[str, ...] = ("127.0.0.1",)) -> None:
    """Make ``server`` (an http.server on 127.0.0.1, not yet serving) speak HTTPS with a certificate for ``ips``
    issued by the CA kbpg makes in ``workdir`` (credentials/tls/), as a node's Patroni REST API does."""
    import ssl

    from kbpg_tui.core import tls
    from kbpg_tui.core.settings import Settings

    tls.ensure_ca(workdir)
    tls.ensure_node_cert(workdir, name, [name], list(ips), Settings())
    cert, key = tls.node_paths(workdir, name)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
