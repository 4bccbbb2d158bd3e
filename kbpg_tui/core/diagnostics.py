"""Diagnostics: the 12 checks of design.md, and those of the field failures (13, 14), as small, independent probes.

Each probe checks one thing on one target (a host, a port through the LB, the
cluster) and returns pass / warn / fail with a one-line reason naming the host,
and its duration. All probes run at once, each with its own timeouts; a probe
that does not answer in time is failed while the rest finish, and the run never
stops at the first failure. Probes talk to the real services: psycopg through
the LB and through each node, Patroni's REST API, HAProxy's stats, SSH.
"""

from __future__ import annotations

import base64
import enum
import ipaddress
import json
import secrets
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import psycopg

from . import credentials as creds
from .engine import Context
from .files import atomic_write, resolve
from .inventory import InventoryError, load_selection
from .logs import redact
from .ssh import Host, SshError

DEFAULT_TIMEOUT = 8.0


def direct_opener() -> urllib.request.OpenerDirector:
    """An opener that goes straight to the hosts, never through a proxy named in the environment (http_proxy,
    https_proxy, all_proxy...): the HAProxy stats and Patroni passwords travel in these requests."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


MAX_LAG_BYTES = 16 * 1024 * 1024


class Verdict(str, enum.Enum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"

    def __str__(self) -> str:
        return self.value


@dataclass
class CheckResult:
    number: int
    check: str
    target: str
    verdict: Verdict
    reason: str
    duration: float = 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["verdict"] = self.verdict.value
        return data


class CheckFailed(Exception):
    """The probe found the condition broken; the message is the one-line reason."""


class CheckWarning(Exception):
    """The probe passed with a reservation."""


@dataclass
class Probe:
    number: int
    check: str
    target: str
    function: Callable[[], str]  # returns the pass reason; raises CheckFailed/CheckWarning


CHECK_NAMES = {
    1: "inventory",
    2: "ssh and sudo",
    3: "services",
    4: "patroni cluster",
    5: "patroni timing",
    6: "writes through the LB",
    7: "read-only port",
    8: "pgbouncer",
    9: "roles and database",
    10: "pgvector",
    11: "haproxy",
    12: "secret files",
    13: "patroni rest auth",
    14: "client sessions",
}


@dataclass
class Report:
    results: list[CheckResult]
    started: float
    elapsed: float
    slowest: float = field(default=0.0)

    @property
    def failed(self) -> bool:
        return any(r.verdict == Verdict.FAIL for r in self.results)

    def counts(self) -> dict[str, int]:
        return {v.value: sum(1 for r in self.results if r.verdict == v) for v in Verdict}

    def to_dict(self) -> dict:
        return {
            "ok": not self.failed,
            "counts": self.counts(),
            "elapsed": round(self.elapsed, 3),
            "slowest_check": round(self.slowest, 3),
            "results": [r.to_dict() for r in self.results],
        }

    def markdown(self) -> str:
        counts = self.counts()
        lines = [
            "# kbpg diagnostics",
            "",
            f"- run at: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))}",
            f"- result: {'FAIL' if self.failed else 'PASS'} ({counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail)",
            f"- wall time: {self.elapsed:.2f} s (slowest check {self.slowest:.2f} s)",
            "",
            "| # | check | target | verdict | reason | time |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.results:
            reason = r.reason.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {r.number} | {r.check} | {r.target} | {r.verdict.value.upper()} | {reason} | {r.duration:.2f}s |")
        return "\n".join(lines) + "\n"


# --- helpers -----------------------------------------------------------------------------

class Diagnostics:
    """Builds and runs the probes for a prepared context (see ``install.prepare``)."""

    def __init__(self, ctx: Context, timeout: float = DEFAULT_TIMEOUT):
        self.ctx = ctx
        self.timeout = timeout
        self.values = ctx.credentials
        self.settings = ctx.settings
        self.marker = f"kbpg-{int(time.time())}-{secrets.token_hex(4)}"
        self._table_lock = threading.Lock()
        self._table_ready = False

    # connections

    def pg(self, host: str, port: int, user: str, password: str, dbname: str | None = None) -> psycopg.Connection:
        return psycopg.connect(host=host, port=port, user=user, password=password,
                               dbname=dbname or self.values["POSTGRES_DB"], connect_timeout=max(1, int(self.timeout)),
                               autocommit=True, application_name="kbpg-diagnose")

    def app(self, host: str, port: int) -> psycopg.Connection:
        return self.pg(host, port, self.values["POSTGRES_APP_USER"], self.values["POSTGRES_APP_PASS"])

    def admin(self, host: str, port: int, dbname: str | None = None) -> psycopg.Connection:
        return self.pg(host, port, self.values["POSTGRES_SUPERUSER"], self.values["POSTGRES_SUPERPASS"], dbname)

    def http(self, url: str, auth: tuple[str, str] | None = None, method: str = "GET") -> tuple[int, bytes]:
        request = urllib.request.Request(url, method=method)
        if auth:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with direct_opener().open(request, timeout=self.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read() if exc.fp else b""
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CheckFailed(f"{url}: no answer ({reason})") from None

    def ssh(self, host: Host, script: str, stdin: str | None = None, timeout: float | None = None) -> str:
        connection = self.ctx.pool.get(host)
        return connection.run(script, stdin=stdin, timeout=timeout or self.timeout).stdout

    @staticmethod
    def _pg_error(exc: Exception) -> str:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return redact(text)[:200]  # redacted whole, then cut

    # --- probes -------------------------------------------------------------------------

    def probes(self) -> list[Probe]:
        ctx, ports = self.ctx, self.settings.ports
        lb = self.settings.network.lb_address
        probes: list[Probe] = [Probe(1, CHECK_NAMES[1], "servers.tsv", self.check_inventory)]
        for host in ctx.db_hosts + ctx.haproxy_hosts:
            probes.append(Probe(2, CHECK_NAMES[2], host.name, lambda h=host: self.check_ssh(h)))
            probes.append(Probe(12, CHECK_NAMES[12], host.name, lambda h=host: self.check_host_secrets(h)))
        for host in ctx.db_hosts:
            probes.append(Probe(3, CHECK_NAMES[3], host.name, lambda h=host: self.check_services(h, ["patroni"])))
        for host in ctx.haproxy_hosts:
            probes.append(Probe(3, CHECK_NAMES[3], host.name, lambda h=host: self.check_services(h, ["haproxy", "pgbouncer"])))
        probes.append(Probe(4, CHECK_NAMES[4], "cluster", self.check_patroni_cluster))
        probes.append(Probe(5, CHECK_NAMES[5], "cluster", self.check_timing))
        for name, address in [("LB", lb)] + [(h.name, h.address) for h in ctx.haproxy_hosts]:
            label = f"{name} {address}:{ports.haproxy_write}" if name == "LB" else f"{name}:{ports.haproxy_write}"
            probes.append(Probe(6, CHECK_NAMES[6], label, lambda a=address, n=name: self.check_write(a, n)))
            label = f"{name} {address}:{ports.haproxy_read}" if name == "LB" else f"{name}:{ports.haproxy_read}"
            probes.append(Probe(7, CHECK_NAMES[7], label, lambda a=address, n=name: self.check_read_only(a, n)))
            label = f"{name} {address}:{ports.pgbouncer}" if name == "LB" else f"{name}:{ports.pgbouncer}"
            probes.append(Probe(8, CHECK_NAMES[8], label, lambda a=address, n=name: self.check_pgbouncer(a, n)))
        probes.append(Probe(9, CHECK_NAMES[9], f"LB {lb}:{ports.haproxy_write}", self.check_roles))
        probes.append(Probe(10, CHECK_NAMES[10], f"LB {lb}:{ports.pgbouncer}", self.check_pgvector))
        for host in ctx.haproxy_hosts:
            probes.append(Probe(11, CHECK_NAMES[11], host.name, lambda h=host: self.check_haproxy(h)))
        probes.append(Probe(12, CHECK_NAMES[12], "credentials/postgres.env", self.check_local_secrets))
        for host in ctx.db_hosts:
            probes.append(Probe(13, CHECK_NAMES[13], host.name, lambda h=host: self.check_rest_auth(h)))
        probes.append(Probe(14, CHECK_NAMES[14], f"LB {lb}:{ports.haproxy_write}", self.check_client_sessions))
        return probes

    # 1
    def check_inventory(self) -> str:
        settings = self.settings
        path = resolve(self.ctx.workdir, settings.inventory.path)
        try:
            selection = load_selection(path, settings.inventory.db_rule, settings.inventory.haproxy_rule)
        except InventoryError as exc:
            raise CheckFailed(f"{len(exc.errors)} error(s): " + exc.errors[0].render(exc.source)) from None
        now = [s.hostname for s in selection.all_nodes]
        then = [s.hostname for s in self.ctx.selection.all_nodes]
        if now != then:
            raise CheckFailed(f"selection changed since this run started: {', '.join(now)}")
        if selection.warnings:
            raise CheckWarning(selection.warnings[0].render(selection.source))
        return f"{len(selection.db_nodes)} DB + {len(selection.haproxy_nodes)} HAProxy nodes, addresses unique"

    # 2
    def check_ssh(self, host: Host) -> str:
        out = self.ssh(host, "id -un")
        if out.strip() != "root":
            raise CheckFailed(f"{host.name}: commands run as {out.strip()!r}, not root")
        mode = self.ctx.pool.get(host).sudo_mode
        return f"{host.name}: ssh as {host.user}" + (f", sudo ({mode})" if mode != "root" else "")

    # 3
    def check_services(self, host: Host, units: list[str]) -> str:
        out = self.ssh(host, " ; ".join(
            f"echo {u} $(systemctl show -p ActiveState --value {u}) $(systemctl show -p NRestarts --value {u}) "
            f"$(( $(cut -d' ' -f1 /proc/uptime | cut -d. -f1) - $(systemctl show -p ActiveEnterTimestampMonotonic --value {u}) / 1000000 ))"
            for u in units))
        problems, warnings, fine = [], [], []
        for line in out.splitlines():
            parts = line.split()
            if len(parts) < 4:
                continue
            unit, state, restarts, up_for = parts[0], parts[1], parts[2], parts[3]
            if state != "active":
                problems.append(f"{unit} is {state}")
            elif restarts.isdigit() and int(restarts) > 0 and up_for.lstrip("-").isdigit() and int(up_for) < 60:
                warnings.append(f"{unit} restarted {restarts} time(s), up for {up_for} s")
            else:
                fine.append(unit)
        if problems:
            raise CheckFailed(f"{host.name}: " + "; ".join(problems))
        if warnings:
            raise CheckWarning(f"{host.name}: " + "; ".join(warnings))
        return f"{host.name}: {', '.join(fine)} active"

    # 4
    def check_patroni_cluster(self) -> str:
        ports = self.settings.ports
        cluster = None
        errors = []
        primaries = []
        for host in self.ctx.db_hosts:
            try:
                status, _ = self.http(f"http://{host.address}:{ports.patroni_rest}/primary", method="OPTIONS")
                if status == 200:
                    primaries.append(host.name)
                if cluster is None:
                    status, body = self.http(f"http://{host.address}:{ports.patroni_rest}/cluster")
                    if status == 200:
                        cluster = json.loads(body)
            except CheckFailed as exc:
                errors.append(f"{host.name}: {exc}")
        if cluster is None:
            raise CheckFailed("no DB node answered /cluster: " + "; ".join(errors))
        members = cluster.get("members", [])
        leaders = [m for m in members if m.get("role") == "leader" and m.get("state") == "running"]
        replicas = [m for m in members if m.get("role") in ("replica", "sync_standby", "quorum_standby")]
        streaming = [m for m in replicas if m.get("state") == "streaming"]
        expected = len(self.ctx.db_hosts)
        problems = []
        if len(leaders) != 1:
            problems.append(f"{len(leaders)} running leaders")
        for member in members:
            if member not in leaders and member not in streaming:
                problems.append(f"{member.get('name')} is {member.get('role')}/{member.get('state')}")
        missing = {h.name for h in self.ctx.db_hosts} - {m.get("name") for m in members}
        if missing:
            problems.append(f"{', '.join(sorted(missing))} not in the cluster")
        timelines = {m.get("timeline") for m in leaders + streaming}
        if len(timelines) > 1:
            problems.append(f"timelines differ: {sorted(timelines)}")
        lagging = [f"{m.get('name')} lag {m.get('lag')}" for m in streaming
                   if isinstance(m.get("lag"), int) and m["lag"] > MAX_LAG_BYTES]
        problems += lagging
        if len(primaries) != 1:
            problems.append(f"/primary is 200 on {len(primaries)} nodes ({', '.join(primaries) or 'none'})")
        if errors:
            problems += errors
        if problems:
            raise CheckFailed("; ".join(problems))
        leader = leaders[0]
        return (f"leader {leader['name']}, {len(streaming)}/{expected - 1} replicas streaming, "
                f"timeline {leader.get('timeline')}, /primary only on {primaries[0]}")

    # 5
    def check_timing(self) -> str:
        ports = self.settings.ports
        errors = []
        for host in self.ctx.db_hosts:
            try:
                status, body = self.http(f"http://{host.address}:{ports.patroni_rest}/config")
            except CheckFailed as exc:
                errors.append(str(exc))
                continue
            if status != 200:
                errors.append(f"{host.name}: /config answered {status}")
                continue
            config = json.loads(body)
            ttl, loop_wait, retry = config.get("ttl", 30), config.get("loop_wait", 10), config.get("retry_timeout", 10)
            if loop_wait + 2 * retry > ttl:
                raise CheckFailed(f"running config breaks loop_wait + 2*retry_timeout <= ttl ({loop_wait} + 2*{retry} > {ttl})")
            # Patroni 4 quietly shrinks loop_wait to keep the rule: the timing then is not the one planned.
            planned = self.settings.patroni
            if (ttl, loop_wait, retry) != (planned.ttl, planned.loop_wait, planned.retry_timeout):
                raise CheckWarning(f"running ttl/loop_wait/retry_timeout {ttl}/{loop_wait}/{retry} differ from kbpg.toml's "
                                   f"{planned.ttl}/{planned.loop_wait}/{planned.retry_timeout}; re-run `kbpg install`")
            return f"ttl {ttl}, loop_wait {loop_wait}, retry_timeout {retry} (from {host.name}), as planned"
        raise CheckFailed("; ".join(errors))

    # 6
    def check_write(self, address: str, name: str) -> str:
        port = self.settings.ports.haproxy_write
        try:
            with self.app(address, port) as conn:
                if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    raise CheckFailed(f"{name} {address}:{port} leads to a replica (pg_is_in_recovery = true)")
                server = conn.execute("SELECT inet_server_addr()::text").fetchone()[0]
                with self._table_lock:  # concurrent CREATE TABLE IF NOT EXISTS can still collide in the catalog
                    if not self._table_ready:
                        conn.execute("CREATE TABLE IF NOT EXISTS kbpg_diagnostics "
                                     "(marker text, via text, at timestamptz DEFAULT now())")
                        self._table_ready = True
                conn.execute("INSERT INTO kbpg_diagnostics (marker, via) VALUES (%s, %s)", (self.marker, name))
                conn.execute("DELETE FROM kbpg_diagnostics WHERE at < now() - interval '1 day'")
        except psycopg.Error as exc:
            raise CheckFailed(f"{name} {address}:{port}: {self._pg_error(exc)}") from None
        missing = self._replicated(name)
        if missing:
            raise CheckFailed(f"write via {name} reached {server} but not the replicas {', '.join(missing)} within {self.timeout:.0f} s")
        return f"{name}: write on the primary ({server.split('/')[0]}) seen on every replica"

    def _replicated(self, via: str) -> list[str]:
        """Replicas on which this run's row written via ``via`` is not visible (after waiting a little)."""
        port = self.settings.ports.postgresql
        deadline = time.monotonic() + self.timeout
        pending = {h.name: h for h in self.ctx.db_hosts}
        while pending and time.monotonic() < deadline:
            for name, host in list(pending.items()):
                try:
                    # Straight to each node, past HAProxy: as the superuser (pg_hba lets it in from the private
                    # subnet; the app role only comes through the HAProxy nodes).
                    with self.admin(host.address, port) as conn:
                        found = conn.execute("SELECT count(*) FROM kbpg_diagnostics WHERE marker = %s AND via = %s",
                                             (self.marker, via)).fetchone()[0]
                    if found:
                        del pending[name]
                except psycopg.Error:
                    pass
            if pending:
                time.sleep(0.2)
        return sorted(pending)

    # 7
    def check_read_only(self, address: str, name: str) -> str:
        port = self.settings.ports.haproxy_read
        try:
            with self.app(address, port) as conn:
                in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
                server = conn.execute("SELECT inet_server_addr()::text").fetchone()[0]
        except psycopg.Error as exc:
            raise CheckFailed(f"{name} {address}:{port}: {self._pg_error(exc)}") from None
        if not in_recovery:
            raise CheckFailed(f"{name} {address}:{port} leads to the primary ({server}), not a replica")
        return f"{name}: lands on replica {server.split('/')[0]}"

    # 8
    def check_pgbouncer(self, address: str, name: str) -> str:
        port = self.settings.ports.pgbouncer
        try:
            with self.app(address, port) as conn:
                conn.execute("SELECT 1").fetchone()
        except psycopg.Error as exc:
            raise CheckFailed(f"{name} {address}:{port}: app login failed: {self._pg_error(exc)}") from None
        try:
            with self.pg(address, port, self.values["POSTGRES_APP_USER"], "wrong-" + secrets.token_hex(8)):
                pass
            raise CheckFailed(f"{name} {address}:{port}: a wrong password was accepted")
        except psycopg.OperationalError as exc:
            if "password authentication failed" not in str(exc) and "SASL" not in str(exc):
                raise CheckFailed(f"{name} {address}:{port}: wrong password refused oddly: {self._pg_error(exc)}") from None
        try:
            with self.pg(address, port, self.values["PGBOUNCER_ADMIN_USER"], self.values["PGBOUNCER_ADMIN_PASS"],
                         dbname="pgbouncer") as conn:
                # The admin console speaks only the simple query protocol: PQexec, not PQexecParams.
                result = conn.pgconn.exec_(b"SHOW POOLS")
                if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
                    raise psycopg.OperationalError((result.error_message or b"SHOW POOLS failed").decode(errors="replace"))
                pools = range(result.ntuples)
        except psycopg.Error as exc:
            raise CheckFailed(f"{name} {address}:{port}: SHOW POOLS as {self.values['PGBOUNCER_ADMIN_USER']} failed: "
                              f"{self._pg_error(exc)}") from None
        hosts = [h for h in self.ctx.haproxy_hosts if h.name == name] or self.ctx.haproxy_hosts
        for host in hosts:
            self._check_pgbouncer_secret(host)
        return f"{name}: SCRAM login ok, wrong password refused, SHOW POOLS ({len(pools)} pools), secret = server's"

    def _server_verifier(self) -> str:
        with self._table_lock:
            if not hasattr(self, "_verifier"):
                lb, port = self.settings.network.lb_address, self.settings.ports.haproxy_write
                with self.admin(lb, port, dbname="postgres") as conn:
                    row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                                       (self.values["POSTGRES_APP_USER"],)).fetchone()
                self._verifier = row[0] if row else ""
            return self._verifier

    def _check_pgbouncer_secret(self, host: Host) -> None:
        """Pooled server connections hide a stale secret until the next server login: compare the secrets themselves."""
        app = self.values["POSTGRES_APP_USER"]
        userlist = self.ssh(host, "cat /etc/pgbouncer/userlist.txt")
        entry = next((line.split('" "', 1)[1].rstrip('"') for line in userlist.splitlines()
                      if line.startswith(f'"{app}" "')), "")
        try:
            server = self._server_verifier()
        except psycopg.Error as exc:
            raise CheckFailed(f"{host.name}: cannot read {app}'s verifier on the primary: {self._pg_error(exc)}") from None
        if not entry:
            raise CheckFailed(f"{host.name}: {app} is missing from PgBouncer's auth file")
        if entry != server:
            raise CheckFailed(f"{host.name}: PgBouncer's secret for {app} differs from the server's; new server logins "
                              "will fail (re-run `kbpg install`)")

    # 9
    def check_roles(self) -> str:
        lb, port = self.settings.network.lb_address, self.settings.ports.haproxy_write
        values = self.values
        roles = [values["POSTGRES_SUPERUSER"], values["POSTGRES_REPL_USER"], values["POSTGRES_APP_USER"]]
        try:
            with self.admin(lb, port, dbname="postgres") as conn:
                found = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (roles,))}
                database = conn.execute("SELECT datname FROM pg_database WHERE datname = %s",
                                        (values["POSTGRES_DB"],)).fetchone()
        except psycopg.Error as exc:
            raise CheckFailed(f"LB {lb}:{port} as {values['POSTGRES_SUPERUSER']}: {self._pg_error(exc)}") from None
        missing = [r for r in roles if r not in found] + ([] if database else [f"database {values['POSTGRES_DB']}"])
        if missing:
            raise CheckFailed("missing: " + ", ".join(missing))
        return f"roles {', '.join(roles)} and database {values['POSTGRES_DB']} exist"

    # 10
    def check_pgvector(self) -> str:
        lb, port = self.settings.network.lb_address, self.settings.ports.pgbouncer
        try:
            with self.app(lb, port) as conn:
                row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
                if not row:
                    raise CheckFailed(f"the vector extension is not in {self.values['POSTGRES_DB']}")
                distance = conn.execute("SELECT '[1,2,3]'::vector <-> '[1,2,4]'::vector").fetchone()[0]
        except psycopg.Error as exc:
            raise CheckFailed(f"LB {lb}:{port}: {self._pg_error(exc)}") from None
        if abs(float(distance) - 1.0) > 1e-9:
            raise CheckFailed(f"distance query returned {distance}, expected 1")
        return f"vector {row[0]}; distance query returned 1"

    # 11
    def check_haproxy(self, host: Host) -> str:
        ports, values = self.settings.ports, self.values
        url = f"http://{host.address}:{ports.haproxy_stats}/;csv"
        status, _ = self.http(url)
        if status != 401:
            raise CheckFailed(f"{host.name}: stats answered {status} without a password (expected 401)")
        status, body = self.http(url, auth=(values["HAPROXY_STATS_USER"], values["HAPROXY_STATS_PASSWORD"]))
        if status != 200:
            raise CheckFailed(f"{host.name}: stats with the password answered {status}")
        rows = [line.split(",") for line in body.decode("utf-8", "replace").splitlines() if line and not line.startswith("#")]
        up = [r[1] for r in rows if r[0] == "postgres_write" and r[1] not in ("FRONTEND", "BACKEND") and r[17].startswith("UP")]
        if len(up) != 1:
            raise CheckFailed(f"{host.name}: {len(up)} servers UP in the write backend ({', '.join(up) or 'none'}); expected exactly 1")
        return f"{host.name}: write backend → {up[0]} only; stats need a password"

    # 12
    def check_local_secrets(self) -> str:
        path = self.ctx.workdir / creds.ENV_FILE
        if not path.exists():
            raise CheckFailed(f"{path} is missing")
        problem = creds.file_mode_problem(path)
        if problem:
            raise CheckFailed(problem)
        return f"{creds.ENV_FILE} is 0600 in a 0700 directory"

    SECRET_SCAN = r"""
umask 077; shm=/dev/shm; [ -d "$shm" ] || shm=/tmp
patterns=$(mktemp -p "$shm"); trap 'rm -f "$patterns"' EXIT; cat > "$patterns"   # in memory, never on disk
find /etc /var/lib/postgresql /var/lib/patroni /var/log /root /home /tmp -xdev -type f -perm -o+r -size -2M 2>/dev/null \
  | grep -v '^/etc/ssl/' | xargs -r -d '\n' grep -lF -f "$patterns" 2>/dev/null || true
"""

    def check_host_secrets(self, host: Host) -> str:
        secret_values = [v for k, v in self.values.items() if creds.is_secret_name(k) and len(v) >= 8]
        if not secret_values:
            # An empty pattern list would be one empty line, and grep -F matches every file with it.
            raise CheckWarning(f"{host.name}: no secret of 8 characters or more to look for")
        # A walk over /etc, /var/log and /home takes longer than a query on a big host: a larger budget.
        found = self.ssh(host, self.SECRET_SCAN, stdin="\n".join(secret_values) + "\n", timeout=self.timeout * 3).split()
        if found:
            raise CheckFailed(f"{host.name}: a secret is in world-readable {', '.join(found[:3])}")
        return f"{host.name}: no secret in a world-readable file"

    # 13
    def check_rest_auth(self, host: Host) -> str:
        """Field failure 14: Patroni's unsafe endpoints must refuse a request without credentials.

        The probe is ``PATCH /config`` with no body, the endpoint that matters most (whoever may patch the dynamic
        configuration can set any PostgreSQL parameter cluster-wide, archive_command included) and the most harmless
        one to knock on: Patroni checks the credentials first (401), and even without them it would answer 400 to
        an empty body before touching the DCS. ``POST /reload`` or ``/restart`` would act if they were open.
        """
        url = f"http://{host.address}:{self.settings.ports.patroni_rest}/config"
        status, _ = self.http(url, method="PATCH")
        if status != 401:
            accepted = " (it reached the handler: unsafe endpoints take requests from anyone)" if status in (200, 400) else ""
            raise CheckFailed(f"{host.name}: PATCH /config without credentials answered {status}, expected 401{accepted}; "
                              "re-run `kbpg install` to restore restapi.authentication")
        return f"{host.name}: unsafe REST endpoints refuse requests without credentials (401)"

    # 14
    def check_client_sessions(self) -> str:
        """Field failure 12: applications pointed at a node's address instead of the LB.

        Client sessions on the primary should come from the HAProxy nodes (HAProxy, PgBouncer), the DB nodes,
        this host itself, ``network.direct_clients``, or be the superuser from the private subnet (administrators,
        these diagnostics). Anything else still works today, and breaks at the next failover.
        """
        lb, port = self.settings.network.lb_address, self.settings.ports.haproxy_write
        try:
            with self.admin(lb, port, dbname="postgres") as conn:
                server = conn.execute("SELECT host(inet_server_addr())").fetchone()[0]
                rows = conn.execute(
                    "SELECT host(client_addr), usename, count(*) FROM pg_stat_activity "
                    "WHERE backend_type = 'client backend' AND client_addr IS NOT NULL AND pid <> pg_backend_pid() "
                    "GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
        except psycopg.Error as exc:
            raise CheckFailed(f"LB {lb}:{port} as {self.values['POSTGRES_SUPERUSER']}: {self._pg_error(exc)}") from None
        hosts = self.ctx.db_hosts + self.ctx.haproxy_hosts
        strays = stray_sessions([(addr, user or "", n) for addr, user, n in rows],
                                [h.address for h in hosts] + list(self.settings.network.direct_clients),
                                self.values["POSTGRES_SUPERUSER"], self.settings.network.private_subnet)
        names = {h.address: h.name for h in self.ctx.db_hosts}
        primary = names.get(server, server)
        if strays:
            shown = ", ".join(f"{addr} ({user}, {n} session{'s' if n > 1 else ''})" for addr, user, n in strays[:5]) + (" ..." if len(strays) > 5 else "")
            raise CheckWarning(f"primary {primary}: client sessions from outside the HAProxy nodes, DB nodes and "
                               f"network.direct_clients: {shown}; point those clients at the LB "
                               f"({lb}), or add their network to network.direct_clients")
        return f"primary {primary}: {sum(n for _, _, n in rows)} client sessions, all from expected addresses"

    # --- running ---------------------------------------------------------------------------

    def run(self, on_result: Callable[[CheckResult], None] | None = None, only: set[int] | None = None,
            cancel: threading.Event | None = None) -> Report:
        """Run every probe in parallel; a probe still running after its budget is failed and left behind.

        ``cancel`` (the wizard's worker quitting, its screen left): the run returns at once, the probes still
        running failed as cancelled and left behind (they are daemon threads bounded by their own timeouts).
        """
        probes = [p for p in self.probes() if not only or p.number in only]
        results: list[CheckResult | None] = [None] * len(probes)
        done = threading.Event()
        remaining = [len(probes)]
        lock = threading.Lock()
        started = time.time()
        clock = time.monotonic()

        def work(index: int, probe: Probe) -> None:
            began = time.monotonic()
            try:
                verdict, reason = Verdict.PASS, probe.function()
            except CheckWarning as exc:
                verdict, reason = Verdict.WARN, str(exc)
            except CheckFailed as exc:
                verdict, reason = Verdict.FAIL, str(exc)
            except SshError as exc:
                verdict, reason = Verdict.FAIL, str(exc).splitlines()[0]
            except Exception as exc:  # a probe's bug is that probe's failure, not the run's
                verdict, reason = Verdict.FAIL, f"{probe.target}: {type(exc).__name__}: {exc}"
            reason = redact(reason)  # whole, before the cut below: reports, the panel and the CLI show no secret
            result = CheckResult(probe.number, probe.check, probe.target, verdict, reason.splitlines()[0] if reason else "",
                                 time.monotonic() - began)
            with lock:
                if results[index] is not None:
                    return  # already failed for taking too long
                results[index] = result
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()
            if on_result:
                on_result(result)

        for index, probe in enumerate(probes):
            threading.Thread(target=work, args=(index, probe), daemon=True, name=f"kbpg-check-{probe.number}").start()
        # Every probe bounds its own I/O; this is the backstop for one that hangs anyway.
        budget = self.timeout * 3 + 5
        deadline = time.monotonic() + budget
        while not done.wait(0.1):
            if time.monotonic() >= deadline or (cancel is not None and cancel.is_set()):
                break
        cancelled = cancel is not None and cancel.is_set() and not done.is_set()
        with lock:
            for index, probe in enumerate(probes):
                if results[index] is None:
                    waited = time.monotonic() - clock
                    reason = (f"{probe.target}: cancelled after {waited:.1f} s" if cancelled
                              else f"{probe.target}: no answer within {budget:.0f} s")
                    results[index] = CheckResult(probe.number, probe.check, probe.target, Verdict.FAIL, reason,
                                                 waited if cancelled else budget)
                    if on_result:
                        on_result(results[index])
        final = sorted((r for r in results if r is not None), key=lambda r: (r.number, r.target))
        return Report(final, started, time.monotonic() - clock, max((r.duration for r in final), default=0.0))


def stray_sessions(sessions: list[tuple[str, str, int]], allowed: list[str], superuser: str,
                   admin_network: str) -> list[tuple[str, str, int]]:
    """The (address, role, count) of ``sessions`` that come from where clients should not connect directly.

    Expected: ``allowed`` (addresses or CIDRs: the HAProxy and DB nodes, network.direct_clients), loopback, and
    ``superuser`` from ``admin_network`` (the private subnet, where pg_hba lets administrators in).
    """
    networks = [ipaddress.ip_network(item, strict=False) for item in allowed]
    admin = ipaddress.ip_network(admin_network, strict=False)
    strays = []
    for address, role, count in sessions:
        try:
            ip = ipaddress.ip_address(address)
            if ip.version == 6 and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
        except ValueError:
            strays.append((address, role, count))
            continue
        if ip.is_loopback or any(ip in network for network in networks) or (role == superuser and ip in admin):
            continue
        strays.append((address, role, count))
    return strays


def write_reports(workdir: Path, report: Report) -> tuple[Path, Path]:
    """Markdown and JSON reports in ``workdir/reports`` (no secret is ever in a result)."""
    directory = Path(workdir) / "reports"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(report.started))
    markdown_path = directory / f"diagnostics-{stamp}.md"
    json_path = directory / f"diagnostics-{stamp}.json"
    atomic_write(markdown_path, report.markdown().encode("utf-8"), mode=0o644)
    atomic_write(json_path, (json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n").encode("utf-8"), mode=0o644)
    return markdown_path, json_path


@dataclass(frozen=True)
class Member:
    """One Patroni member as the live cluster view shows it."""

    name: str
    host: str
    role: str
    state: str
    timeline: int | None
    lag: int | None  # bytes behind the leader, for replicas


def cluster_view(ctx: Context, timeout: float = 3.0) -> list[Member]:
    """The cluster as Patroni sees it now (REST ``/cluster`` of the first DB node that answers).

    Raises :class:`CheckFailed` when no DB node answers.
    """
    errors = []
    for host in ctx.db_hosts:
        url = f"http://{host.address}:{ctx.settings.ports.patroni_rest}/cluster"
        try:
            with direct_opener().open(url, timeout=timeout) as response:
                data = json.loads(response.read())
        except (OSError, ValueError) as exc:
            errors.append(f"{host.name}: {getattr(exc, 'reason', exc)}")
            continue
        members = []
        for member in data.get("members", []):
            lag = member.get("lag")
            members.append(Member(member.get("name", "?"), str(member.get("host", "")), member.get("role", "?"),
                                  member.get("state", "?"), member.get("timeline"),
                                  lag if isinstance(lag, int) else None))
        return sorted(members, key=lambda m: (m.role != "leader", m.name))
    raise CheckFailed("no DB node answers Patroni's REST API: " + "; ".join(errors))
