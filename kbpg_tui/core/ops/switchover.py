"""A planned switchover that pooled clients do not see fail: ``kbpg switchover [--to NODE]``.

Patroni moves the leader; around it kbpg does what Patroni cannot see:

1. the cluster must be healthy (the one rule of :func:`cluster.health`), and ``--to`` a streaming replica;
2. every PgBouncer is PAUSEd (its admin console): in transaction pooling it waits for running transactions
   to end, then holds new queries instead of sending them to a primary that is about to stop;
3. Patroni's REST ``POST /switchover`` on the leader (authenticated), which returns once the new leader holds
   the leader key;
4. as soon as the new leader answers ``/primary``, each HAProxy is told through its runtime API (the stats
   socket, over SSH) that the new leader is up and the old one down, instead of waiting for its checks
   (they confirm it on their next round);
5. every PgBouncer is RESUMEd: the queries held meanwhile go to the new primary. RESUME is sent whatever
   happened (failure, cancel), and a PgBouncer kbpg could not resume is named.

The old leader is then waited for until it streams from the new one (it rejoins by itself; pg_rewind if needed).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import psycopg

from .. import cluster
from ..bouncer import command, console, error_text
from ..cluster import NoAnswer, http_request
from ..engine import TaskError, TaskRun
from ..events import Level, Message, Progress
from ..logs import redact
from ..ssh import Cancelled, Host, SshError

if TYPE_CHECKING:
    from ..engine import Context

REST_USER = "patroni"  # the user of Patroni's REST API (step 02 writes it into patroni.yml)
PAUSE_TIMEOUT = 10.0  # a transaction longer than this holds PAUSE: the switchover is not started
SWITCHOVER_TIMEOUT = 60.0
PRIMARY_WAIT = 30.0
STREAMING_WAIT = 180.0
POLL = 0.1
HAPROXY_SOCKET = "/run/haproxy/admin.sock"
# The stats socket, from whatever the node has: socat, else Python (the HAProxy nodes of the lab and of Debian's
# cloud images have python3). Commands come on stdin: nothing of them in argv.
RUNTIME_API = (
    f"if command -v socat >/dev/null 2>&1; then socat -t 2 - UNIX-CONNECT:{HAPROXY_SOCKET}; "
    "elif command -v python3 >/dev/null 2>&1; then python3 -c '"
    "import socket, sys; s = socket.socket(socket.AF_UNIX); s.settimeout(5); "
    f's.connect("{HAPROXY_SOCKET}"); s.sendall(sys.stdin.buffer.read()); s.shutdown(socket.SHUT_WR); '
    "sys.stdout.write(s.makefile().read())'; "
    "else echo 'neither socat nor python3 on this node' >&2; exit 3; fi"
)


class SwitchoverError(TaskError):
    """The switchover was not done, or not completely; the message says what state the cluster is in."""


@dataclass
class SwitchoverResult:
    old: str
    new: str
    timeline_before: int | None
    timeline_after: int | None
    paused: list[str] = field(default_factory=list)  # the PgBouncer nodes that held queries
    pause_seconds: float = 0.0  # how long they held them (PAUSE returned → RESUME returned)
    phases: list[tuple[str, float]] = field(default_factory=list)  # (what, seconds from the start)
    streaming_after: float | None = None  # seconds until the old leader streamed again; None: not seen
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"old_leader": self.old, "new_leader": self.new, "timeline_before": self.timeline_before,
                "timeline_after": self.timeline_after, "pgbouncer_paused": self.paused,
                "pgbouncer_pause_seconds": round(self.pause_seconds, 3),
                "phases": [{"what": what, "at": round(at, 3)} for what, at in self.phases],
                "old_leader_streaming_after": None if self.streaming_after is None else round(self.streaming_after, 3),
                "warnings": self.warnings}


def _rest_auth(ctx: Context) -> tuple[str, str]:
    return REST_USER, ctx.credentials["PATRONI_API_PASSWORD"]


def read_state(ctx: Context, first: str | None = None, timeout: float = 2.0) -> cluster.ClusterState:
    """REST /cluster, asking ``first`` first (a node known to answer), the node named last never first."""
    hosts = sorted(ctx.db_hosts, key=lambda h: h.name != first) if first else ctx.db_hosts
    return cluster.read_cluster(ctx, hosts, timeout)


def check_target(state: cluster.ClusterState, to: str | None, expected: list[str]) -> cluster.Member:
    """The leader to switch from, after checking the cluster is healthy and ``to`` a streaming replica."""
    verdict = cluster.health(state, expected)
    if not verdict.ok:
        raise SwitchoverError(f"the cluster is not healthy ({'; '.join(verdict.problems)}): no switchover; "
                              "run `kbpg diagnose` and fix it first")
    leader = state.running_leaders[0]
    if to is not None:
        member = state.member(to)
        if member is None:
            raise SwitchoverError(f"--to {to}: not a member of the cluster ({', '.join(m.name for m in state.members)})")
        if member.is_leader:
            raise SwitchoverError(f"--to {to}: it is the leader already")
        if not member.is_streaming or (member.lag is not None and member.lag > cluster.MAX_LAG_BYTES):
            raise SwitchoverError(f"--to {to}: not a healthy streaming replica ({member.label()}, lag {member.lag})")
        synchronous = [m.name for m in state.members if m.role in ("sync_standby", "quorum_standby")]
        if synchronous and to not in synchronous:
            raise SwitchoverError(f"--to {to}: not a synchronous standby; with synchronous replication Patroni "
                                  f"switches over only to one of {', '.join(synchronous)}")
    return leader


# --- PgBouncer's admin console ------------------------------------------------------------------

class Bouncers:
    """The PgBouncer consoles of every HAProxy node, paused and resumed together."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.conns: dict[str, psycopg.Connection] = {}
        self.paused: list[str] = []

    def open(self) -> None:
        errors = []
        for host in self.ctx.haproxy_hosts:
            try:
                self.conns[host.name] = console(self.ctx, host, 5)
            except psycopg.Error as exc:
                errors.append(f"{host.name}: {error_text(exc)}")
        if errors:
            self.close()
            raise SwitchoverError("PgBouncer's admin console does not answer (" + "; ".join(errors) + "): no switchover")

    def pause(self) -> None:
        """PAUSE on every PgBouncer at once; one that does not return within PAUSE_TIMEOUT cancels it all."""
        def one(name: str) -> str | None:
            try:
                command(self.conns[name], "PAUSE")
                return None
            except psycopg.Error as exc:
                return f"{name}: {error_text(exc)}"

        with ThreadPoolExecutor(max_workers=max(1, len(self.conns))) as pool:
            futures = {name: pool.submit(one, name) for name in self.conns}
            deadline = time.monotonic() + PAUSE_TIMEOUT
            errors = []
            for name, future in futures.items():
                remaining = max(0.0, deadline - time.monotonic())
                try:
                    problem = future.result(timeout=remaining)
                except TimeoutError:
                    self.conns[name].cancel_safe(timeout=2)  # PAUSE still waits for a transaction: give it up
                    problem = (f"{name}: PAUSE did not return within {PAUSE_TIMEOUT:.0f} s (a transaction holds a "
                               "server connection)")
                if problem:
                    errors.append(problem)
                else:
                    self.paused.append(name)
        if errors:
            raise SwitchoverError("PgBouncer could not be paused (" + "; ".join(errors) + "): no switchover, "
                                  "every PgBouncer resumed")

    def resume(self) -> list[str]:
        """RESUME every PgBouncer that was paused (and any that may be: a failed PAUSE may have half-happened).

        Returns the problems, one per node that could not be resumed (a fresh console connection is tried once).
        """
        problems = []
        for host in self.ctx.haproxy_hosts:
            name = host.name
            for attempt in range(2):
                try:
                    if attempt or name not in self.conns:
                        self.conns[name] = console(self.ctx, host, 5)
                    command(self.conns[name], "RESUME")
                    break
                except psycopg.Error as exc:
                    text = error_text(exc)
                    if "not paused" in text or "not suspended" in text:
                        break
                    if attempt:
                        problems.append(f"{name}: RESUME failed ({text}); run `RESUME;` in its admin console "
                                        f"(psql -h {host.address} -p {self.ctx.settings.ports.pgbouncer} pgbouncer)")
        return problems

    def close(self) -> None:
        for conn in self.conns.values():
            try:
                conn.close()
            except psycopg.Error:
                pass
        self.conns = {}


# --- HAProxy's runtime API ------------------------------------------------------------------------

def tell_haproxy(ctx: Context, up: str | None, down: str | None) -> list[str]:
    """Tell every HAProxy that ``up`` is up and ``down`` down in the write backend (their checks confirm it).

    Best effort: a node that cannot be told is named in the returned problems and finds out by its own checks.
    """
    parts = [f"set server postgres_write/{name} health {state}" for name, state in ((up, "up"), (down, "down")) if name]
    commands = "; ".join(parts) + "\n"
    run = TaskRun(ctx, "switchover", None)

    def one(host: Host) -> str | None:
        try:
            result = run.run(RUNTIME_API, host=host, stdin=commands, check=False, on_line=None, timeout=10)
        except (SshError, Cancelled) as exc:
            return f"{host.name}: {str(exc).splitlines()[0]}"
        if not result.ok or result.stdout.strip():  # the runtime API answers nothing when all went well
            return f"{host.name}: {(result.stdout + result.stderr).strip()[:200] or 'exit ' + str(result.exit_status)}"
        return None

    with ThreadPoolExecutor(max_workers=max(1, len(ctx.haproxy_hosts))) as pool:
        return [problem for problem in pool.map(one, ctx.haproxy_hosts) if problem]


def prepare(ctx: Context) -> None:
    """What shortens the switchover before it starts: SSH to the HAProxy nodes already open (HAProxy is told over
    it at the critical moment), and a CHECKPOINT on every DB node: the leader's shutdown checkpoint and the new
    primary's end-of-recovery checkpoint (which Patroni waits for before it reports the new primary) then have
    little left to write."""
    run = TaskRun(ctx, "switchover", None)

    def warm(host: Host) -> None:
        if host in ctx.haproxy_hosts:
            run.run("true", host=host, check=False, on_line=None, timeout=15)
        else:
            cluster.psql(run, host, "CHECKPOINT;", "checkpoint before the switchover")

    targets = ctx.haproxy_hosts + ctx.db_hosts
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        list(pool.map(warm, targets))


# --- the switchover --------------------------------------------------------------------------------

def wait_for(condition: Callable[[], bool], timeout: float, cancel, poll: float = POLL) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cancel.is_set():
            return False
        try:
            if condition():
                return True
        except (NoAnswer, cluster.ClusterUnreadable):
            pass
        time.sleep(poll)
    return False


class PromotionWatch:
    """Which candidate takes writes first, seen from PostgreSQL itself (``pg_is_in_recovery()`` every 20 ms on a
    connection opened before the switchover): Patroni's ``/primary`` turns 200 only on its next loop, about a
    second after the promoted server accepts writes. A candidate whose connection fails is asked ``/primary``.
    It logs in as the monitor role (never the superuser, who logs in only on the DB nodes themselves)."""

    def __init__(self, ctx: Context, candidates: list[Host]):
        self.ctx = ctx
        self.candidates = candidates
        self.conns: dict[str, psycopg.Connection | None] = {}

    def __enter__(self) -> PromotionWatch:
        port = self.ctx.settings.ports.postgresql
        monitor = cluster.login(self.ctx, "monitor")
        for host in self.candidates:
            try:
                self.conns[host.name] = psycopg.connect(
                    host=host.address, port=port, **monitor, dbname="postgres", autocommit=True, connect_timeout=3,
                    application_name="kbpg-switchover")
            except psycopg.Error:
                self.conns[host.name] = None
        return self

    def writable(self) -> str | None:
        for host in self.candidates:
            conn = self.conns.get(host.name)
            if conn is not None:
                try:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                    if row is not None and row[0] is False:
                        return host.name
                    continue
                except psycopg.Error:
                    self.conns[host.name] = None
            try:
                if is_primary(self.ctx, host):
                    return host.name
            except NoAnswer:
                pass
        return None

    def __exit__(self, *exc: object) -> None:
        for conn in self.conns.values():
            if conn is not None:
                try:
                    conn.close()
                except psycopg.Error:
                    pass


def is_primary(ctx: Context, host: Host) -> bool:
    status, _ = http_request(cluster.rest_url(ctx, host, "/primary"), 1.0, context=cluster.rest_context(ctx))
    return status == 200


def switchover(ctx: Context, to: str | None = None, *, wait_streaming: bool = True,
               mark: Callable[[str, str], None] | None = None) -> SwitchoverResult:
    """Switch the leader over with PgBouncer paused around it; see the module's docstring.

    ``mark(what, detail)`` is called at each moment ("paused", "switched", "haproxy told", "resumed",
    "old leader streaming") for the drill's timeline. Raises SwitchoverError when it is not done.
    """
    started = time.monotonic()
    say = ctx.sink
    expected = [h.name for h in ctx.db_hosts]
    state = read_state(ctx)
    leader = check_target(state, to, expected)
    hosts = {h.name: h for h in ctx.db_hosts}
    result = SwitchoverResult(old=leader.name, new="", timeline_before=leader.timeline, timeline_after=None)

    def phase(what: str, detail: str = "") -> None:
        result.phases.append((what, time.monotonic() - started))
        if mark is not None:
            mark(what, detail)

    try:
        rest_context = cluster.rest_context(ctx)
    except NoAnswer as exc:
        raise SwitchoverError(f"{exc}: no switchover") from None
    cluster.login(ctx, "monitor")  # the promotion's watch logs in as it: a name missing stops here, before any PAUSE
    bouncers = Bouncers(ctx)
    bouncers.open()
    prepare(ctx)
    paused_at = None
    resumed = False

    def resume() -> None:
        nonlocal resumed
        if resumed:
            return
        resumed = True
        problems = bouncers.resume()
        if paused_at is not None:
            result.pause_seconds = time.monotonic() - paused_at
        bouncers.close()
        for problem in problems:
            result.warnings.append(problem)
            say(Message(Level.ERROR, f"PgBouncer still paused: {problem}"))
        if paused_at is not None:
            phase("resumed", f"held {result.pause_seconds:.2f} s" + (f"; NOT resumed: {'; '.join(problems)}" if problems else ""))

    try:
        say(Progress(f"pausing PgBouncer on {', '.join(bouncers.conns)}"))
        bouncers.pause()
        paused_at = time.monotonic()
        result.paused = list(bouncers.paused)
        phase("paused", ", ".join(result.paused))
        body: dict = {"leader": leader.name}
        if to:
            body["candidate"] = to
        say(Progress(f"switching over from {leader.name}" + (f" to {to}" if to else "")))
        url = cluster.rest_url(ctx, hosts[leader.name], "/switchover")
        # Patroni answers once the new leader holds the key; its promotion is watched meanwhile, so that HAProxy
        # is told the moment the new primary takes writes.
        watch = PromotionWatch(ctx, [hosts[n] for n in ([to] if to else hosts) if n != leader.name])
        with watch, ThreadPoolExecutor(max_workers=2) as pool:
            asked = pool.submit(http_request, url, SWITCHOVER_TIMEOUT, _rest_auth(ctx), method="POST", body=body,
                                context=rest_context)
            # The old primary stops within milliseconds: HAProxy refuses new sessions at once instead of retrying a
            # server that is shutting down (a client would hang in its connect timeout).
            drained = pool.submit(tell_haproxy, ctx, None, leader.name)
            new_name = None

            def promoted() -> bool:
                nonlocal new_name
                if asked.done() and asked.exception() is None and asked.result()[0] != 200:
                    return True  # refused: stop watching
                new_name = watch.writable()
                return new_name is not None

            wait_for(promoted, SWITCHOVER_TIMEOUT, ctx.cancel, poll=0.02)
            if new_name is not None:  # HAProxy first: Patroni answers the request about a second after the promotion
                phase("new leader", new_name)
                drained.result()
                problems = tell_haproxy(ctx, new_name, leader.name)
                for problem in problems:
                    result.warnings.append(f"HAProxy not told at once (its checks will find {new_name}): {problem}")
                phase("haproxy told", "" if not problems else "; ".join(problems))
                resume()  # the queries PgBouncer held go to the new primary now
            try:
                status, answer = asked.result(timeout=SWITCHOVER_TIMEOUT)
            except NoAnswer as exc:
                if new_name is None:
                    raise SwitchoverError(f"Patroni's REST API did not answer the switchover ({exc}); "
                                          "check `kbpg diagnose`") from None
                status, answer = 200, f"no answer from Patroni ({exc}), but {new_name} took writes".encode()
        text = answer.decode("utf-8", "replace").strip()
        if new_name is None:
            # The old primary was marked down in HAProxy as the request went: it leads still, so it goes back up
            # at once rather than after its checks.
            undone = tell_haproxy(ctx, leader.name, None)
            back = "" if not undone else f" (HAProxy not told it is up again: {'; '.join(undone)}; its checks will)"
            if ctx.cancel.is_set():
                raise SwitchoverError(f"cancelled before a new primary took writes{back}; check `kbpg diagnose`")
            if status != 200:
                raise SwitchoverError(f"Patroni refused the switchover ({status}: {redact(text)[:200]}); nothing "
                                      f"switched{back}")
            raise SwitchoverError(f"Patroni said the switchover was done ({text[:120]}) but no replica took writes "
                                  f"within {SWITCHOVER_TIMEOUT:.0f} s{back}")
        result.new = new_name
        phase("switched", text[:200])
    finally:
        resume()
    try:
        after = read_state(ctx, first=result.new).member(result.new)
        result.timeline_after = after.timeline if after is not None else None
    except cluster.ClusterUnreadable:
        pass
    if wait_streaming:
        say(Progress(f"waiting for {leader.name} to stream from {result.new}"))

        def old_streams() -> bool:
            member = read_state(ctx, first=result.new).member(leader.name)
            return member is not None and member.is_streaming

        if wait_for(old_streams, STREAMING_WAIT, ctx.cancel, poll=0.5):
            result.streaming_after = time.monotonic() - started
            phase("old leader streaming", leader.name)
        elif not ctx.cancel.is_set():
            result.warnings.append(f"{leader.name} does not stream from {result.new} after {STREAMING_WAIT:.0f} s; "
                                   f"look at `journalctl -u patroni` on {leader.name}")
    return result


def describe(result: SwitchoverResult) -> list[str]:
    """Plain lines for the CLI."""
    lines = [f"switched over: {result.old} -> {result.new} (timeline {result.timeline_before} -> {result.timeline_after})"]
    if result.paused:
        lines.append(f"PgBouncer held queries for {result.pause_seconds:.2f} s on {', '.join(result.paused)} "
                     "(paused before, resumed after: pooled clients waited instead of failing)")
    lines.append("timeline: " + ", ".join(f"{what} +{at:.2f}s" for what, at in result.phases))
    if result.streaming_after is not None:
        lines.append(f"{result.old} streams from {result.new} again ({result.streaming_after:.1f} s after the start)")
    return lines

