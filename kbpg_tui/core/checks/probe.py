"""What every check gets: the run's context and timeout, and the helpers that reach the services.

psycopg to PostgreSQL and PgBouncer (through the LB, an HAProxy node or a DB node), HTTP to Patroni's REST API
and HAProxy's stats (never through a proxy), SSH to the hosts. Each helper bounds its own I/O by ``timeout``.
Tests put a fake in its place (tests/fakes.py FakeProbeContext): the checks only talk through these.

With ``[tls] enabled`` every psycopg connection is ``sslmode=verify-full`` with kbpg's CA and every https:// request
verifies the server with it. Logins are the app role and the monitor role (member of pg_monitor); the superuser
logs in only on the DB nodes themselves (:meth:`ProbeContext.local_sql`, over SSH and the local socket).
"""

from __future__ import annotations

import json
import logging
import secrets
import shlex
import ssl
import threading
import time
from typing import Any, Callable, TypeVar

import psycopg

from .. import cluster, tls
from ..cluster import PSQL, NoAnswer, http_request
from ..engine import Context
from ..logs import redact
from ..ssh import ConnectionLost, Host
from .base import CheckFailed

log = logging.getLogger("kbpg.diagnose")

DEFAULT_TIMEOUT = 8.0

T = TypeVar("T")


def throwaway_password() -> str:
    """A password no role has, for logins whose only question is whether pg_hba lets them as far as a password: a
    role's own password is never sent where its answer does not matter."""
    return "kbpg-not-a-password-" + secrets.token_hex(16)


HBA_REFUSED = ("pg_hba.conf rejects connection", "no pg_hba.conf entry")  # the server's words for a pg_hba refusal


def hba_verdict(exc: BaseException) -> str:
    """What a failed login (tried with :func:`throwaway_password`) says of pg_hba: "refused" (pg_hba said no before
    any password), "password" (pg_hba let it as far as a password), or "unclear"."""
    text = str(exc)
    if any(words in text for words in HBA_REFUSED):
        return "refused"
    return "password" if "password authentication failed" in text else "unclear"


def scalar(cursor: psycopg.Cursor) -> Any:
    """The first column of a query's first row (None without a row)."""
    row = cursor.fetchone()
    return row[0] if row else None


class ProbeContext:
    def __init__(self, ctx: Context, timeout: float = DEFAULT_TIMEOUT):
        self.ctx = ctx
        self.timeout = timeout
        self.values = ctx.credentials
        self.settings = ctx.settings
        self.marker = f"kbpg-{int(time.time())}-{secrets.token_hex(4)}"  # this run's rows (check 6)
        self._lock = threading.Lock()
        self._memo: dict[str, Any] = {}

    # PostgreSQL and PgBouncer

    def pg(self, host: str, port: int, user: str, password: str, dbname: str | None = None,
           sslmode: str | None = None) -> psycopg.Connection:
        """A connection, over TLS verified with kbpg's CA when TLS is on (``sslmode`` overrides it: "disable" to
        prove a plaintext login is refused)."""
        params: dict[str, Any] = dict(cluster.tls_params(self.ctx))
        if sslmode is not None:
            params["sslmode"] = sslmode
        return psycopg.connect(host=host, port=port, user=user, password=password,
                               dbname=dbname or self.values["POSTGRES_DB"], connect_timeout=max(1, int(self.timeout)),
                               autocommit=True, application_name="kbpg-diagnose", **params)

    def app(self, host: str, port: int) -> psycopg.Connection:
        return self.pg(host, port, self.values["POSTGRES_APP_USER"], self.values["POSTGRES_APP_PASS"])

    def monitor(self, host: str, port: int, dbname: str | None = "postgres") -> psycopg.Connection:
        """The monitor role (member of pg_monitor): everything read-only, on the nodes and through the LB."""
        user, password = cluster.LOGINS["monitor"]
        missing = [name for name in (user, password) if not self.values.get(name)]
        if missing:
            raise CheckFailed(f"{', '.join(missing)} not in credentials/postgres.env: run `kbpg install` (step 00 "
                              "adds the monitor role's names)")
        return self.pg(host, port, self.values[user], self.values[password], dbname)

    def local_sql(self, host: Host, sql: str, database: str = "postgres") -> str:
        """SQL as the superuser on a DB node itself (SSH, then psql over the local socket: the only place the
        superuser logs in); the SQL goes on stdin. Its output, unaligned and tuples only."""
        command = PSQL.format(port=self.settings.ports.postgresql, user=shlex.quote(self.values["POSTGRES_SUPERUSER"]),
                              database=shlex.quote(database))
        return self.ssh(host, command, stdin=sql)

    @staticmethod
    def pg_error(exc: Exception) -> str:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return redact(text)[:200]  # redacted whole, then cut

    _pg_error = pg_error

    # HTTP

    def rest_url(self, host: Host | str, path: str) -> str:
        """``path`` on the Patroni REST API of ``host``: https:// when TLS is on."""
        return cluster.rest_url(self.settings, host, path)

    @property
    def scheme(self) -> str:
        """"https" when TLS is on (Patroni's REST API and HAProxy's stats page), else "http"."""
        return cluster.rest_scheme(self.settings)

    def tls_context(self) -> ssl.SSLContext | None:
        """What verifies an https:// server: kbpg's CA (NoAnswer naming ca.crt when it cannot be read)."""
        return cluster.rest_context(self.ctx)

    def request(self, url: str, auth: tuple[str, str] | None = None, method: str = "GET") -> tuple[int, bytes]:
        """(status, body); no answer at all raises NoAnswer naming the URL. An https:// server is verified with
        kbpg's CA (its address checked against the certificate)."""
        context = self.tls_context() if url.startswith("https://") else None
        return http_request(url, self.timeout, auth, method, context=context)

    def http(self, url: str, auth: tuple[str, str] | None = None, method: str = "GET") -> tuple[int, bytes]:
        """:meth:`request`, with no answer a CheckFailed (the probe's failure, naming the URL)."""
        try:
            return self.request(url, auth, method)
        except NoAnswer as exc:
            raise CheckFailed(str(exc)) from None

    # TLS

    def certificate(self, address: str, port: int, postgres: bool) -> tls.CertInfo:
        """The certificate served at ``address:port``, verified with kbpg's CA for ``address`` (PostgreSQL's
        SSLRequest first when ``postgres``: PostgreSQL and PgBouncer). Raises tls.TlsProbeError when it does not
        verify or nothing answers, tls.TlsError when the CA cannot be read."""
        probe = tls.pg_tls_probe if postgres else tls.tls_probe
        return probe(address, port, tls.ca_path(self.ctx.workdir), address, self.timeout)

    # SSH

    def ssh(self, host: Host, script: str, stdin: str | None = None, timeout: float | None = None) -> str:
        """The output of ``script`` run on ``host`` (a non-zero exit raises RemoteCommandError).

        Every check's command only reads, so one whose SSH connection was lost under it (ConnectionLost: the
        connection is dropped, the pool's next ``get`` connects afresh) is run once more, on a new connection; a
        second loss is the probe's failure. A timeout, a non-zero exit, a silent host or a cancel is not retried.
        """
        try:
            return self.ctx.pool.get(host).run(script, stdin=stdin, timeout=timeout or self.timeout).stdout
        except ConnectionLost as exc:
            if self.ctx.cancel.is_set():
                raise
            log.warning("%s; running the same read-only command once more on a new connection",
                        redact(str(exc).splitlines()[0] if str(exc) else host.name))
        return self.ctx.pool.get(host).run(script, stdin=stdin, timeout=timeout or self.timeout).stdout

    def sudo_mode(self, host: Host) -> str | None:
        return self.ctx.pool.get(host).sudo_mode

    # shared between probes

    def once(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()`` the first time ``key`` is asked for (one probe at a time), its value ever after; a
        computation that raises is tried again by the next probe."""
        with self._lock:
            if key not in self._memo:
                self._memo[key] = compute()
            return self._memo[key]


def patroni_config(p: ProbeContext) -> tuple[dict, str]:
    """The dynamic configuration from the first DB node that answers /config, and that node's name."""
    errors = []
    for host in p.ctx.db_hosts:
        try:
            status, body = p.http(p.rest_url(host, "/config"))
        except CheckFailed as exc:
            errors.append(str(exc))
            continue
        if status != 200:
            errors.append(f"{host.name}: /config answered {status}")
            continue
        try:
            config = json.loads(body)
        except ValueError:
            config = None
        if not isinstance(config, dict):
            errors.append(f"{host.name}: /config is not Patroni's JSON")
            continue
        return config, host.name
    raise CheckFailed("; ".join(errors) or "no DB node to ask")
