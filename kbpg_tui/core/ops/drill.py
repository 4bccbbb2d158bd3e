"""``kbpg drill MODE``: cause a failover on purpose, measure what an application feels, and prove nothing was lost.

A round: one writer per entry point (LB:5432 through HAProxy, LB:6432 through PgBouncer) inserts numbered rows,
one per transaction (:mod:`.writers`, the measuring, apart from any fault); after a few seconds of steady writes
the fault is injected on the leader:

- ``switchover``: kbpg's own planned switchover (:mod:`.switchover`: PgBouncer paused around it);
- ``kill``: SIGKILL to Patroni and PostgreSQL on the leader (every process of the unit); systemd starts it again;
- ``stop``: Patroni stopped on the leader (it stops PostgreSQL and gives the leader key up); started again once
  the new leader takes writes;
- ``cut``: the leader's network link goes down, then up once the new leader takes writes (the lab only: kbpg
  cannot cut a real server's network, and refuses a servers.tsv that is not the lab's before connecting anywhere).

Meanwhile every DB node is watched from PostgreSQL itself (which one takes writes) and from Patroni (who leads,
who streams). The round ends when the old leader streams again (or leads again, when it came back within the
leader key's ttl), and every acknowledged id is read back. Figures per entry point: :func:`.writers.entry_figures`.

A drill causes a failover on the cluster: it starts only on a cluster whose diagnostics have no failure, under
the cluster's run lock, and always puts the fault back (service started, link up) before it returns, whatever
happened (an error, a cancel).
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Callable

import psycopg

from .. import cluster, raft, runlock
from ..cluster import on_leader
from ..engine import TaskError, TaskRun
from ..events import DrillMark, DrillRoundDone, DrillSample, Level, Message, Progress
from ..ssh import ConnectionPool, Host
from . import switchover as so
from .drill_report import DrillReport, RoundReport, now_iso, write_reports
from .writers import DRILL_TABLE, Attempt, EntryWriter, entry_figures, read_back, table_sql

if TYPE_CHECKING:
    from ..engine import Context
    from ..install import Run

MODES = ("switchover", "kill", "stop", "cut")
MODE_HELP = {
    "switchover": "kbpg's planned switchover (PgBouncer paused around Patroni's switchover)",
    "kill": "SIGKILL Patroni and PostgreSQL on the leader; systemd starts them again",
    "stop": "stop Patroni on the leader, start it again once the new leader takes writes",
    "cut": "the leader's network link down, then up (the local lab only)",
}
BASELINE = 3.0  # seconds of steady writes before the fault (and after the cluster is whole again)
AFTER = 2.0  # seconds of writes once the old leader streams again
HEALTHY_WAIT = 180.0  # a round starts on a healthy cluster: how long to wait for one
STREAMING_WAIT = 240.0
ATTEMPT_TIMEOUT = 30.0
WATCH_POLL = 0.1
RAFT_GRACE = 15.0  # seconds after the fault before a member's silent Raft is looked for (a killed Patroni is back in ~5)
RAFT_EVERY = 10.0  # seconds between two looks; a member silent on two looks in a row gets Patroni restarted
RAFT_RESTARTS = 3  # restarts per member and round at most


class DrillRefused(Exception):
    """The drill will not start; ``reasons`` holds one line each."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.reasons = reasons


# --- preconditions -----------------------------------------------------------------------------------

def lab_refusal(ctx: Context) -> str | None:
    """Why ``cut`` may not run here (None: every selected host is a running host of this machine's lab).

    Decided from servers.tsv and the lab's own layout only: nothing is connected to before it passes. A selected
    host is the lab host at its address, spares included, whatever servers.tsv calls it: a replaced node keeps
    its hostname and takes a spare's address (db-slave-02 at db-spare-01's 198.18.0.123).
    """
    from ..lab import hosts as lab_hosts
    from ..lab.topology import ALL_HOSTS, LB_ADDRESS

    lab = {h.address: h for h in ALL_HOSTS}
    strangers = [f"{h.name} ({h.address})" for h in ctx.db_hosts + ctx.haproxy_hosts if h.address not in lab]
    if strangers or ctx.settings.network.lb_address != LB_ADDRESS:
        shown = ", ".join(strangers[:4]) + (" ..." if len(strangers) > 4 else "")
        return ("cut: refused: it takes a network link down, which kbpg can do only to the hosts of its local lab; "
                + (f"{shown} {'is' if len(strangers) == 1 else 'are'} not lab hosts" if strangers
                   else f"the LB {ctx.settings.network.lb_address} is not the lab's {LB_ADDRESS}")
                + ". On real servers use kill or stop, or cut the link yourself")
    down = [h.name if lab[h.address].name == h.name else f"{h.name} (the lab's {lab[h.address].name})"
            for h in ctx.db_hosts if lab_hosts.init_pid(lab[h.address]) is None]
    if down:
        return f"cut: the lab hosts {', '.join(down)} are not running (kbpg lab up, kbpg lab start-host NAME)"
    return None


def refusal(run: Run, mode: str) -> list[str]:
    """Why the drill would refuse to start ([] = it may); runs the diagnostics (about a second)."""
    from ..diagnostics import Diagnostics

    if mode not in MODES:
        return [f"drill mode {mode!r}: must be one of {', '.join(MODES)}"]
    ctx = run.ctx
    if mode == "cut" and (reason := lab_refusal(ctx)):
        return [reason]
    report = Diagnostics(ctx).run(cancel=ctx.cancel)
    failed = [r for r in report.results if r.verdict.value == "fail"]
    return [f"diagnostics are not green: check {r.number} {r.check} ({r.target}): {r.reason}" for r in failed]


# --- watching the cluster ------------------------------------------------------------------------------

class LeaderWatch(threading.Thread):
    """Which DB node takes writes, seen from each PostgreSQL every 0.1 s (a connection per node, reopened when
    it fails), and the moments that matter for a round: when a writable primary is back after the fault.

    ``writable_since[name]``: since when ``name`` answers ``pg_is_in_recovery() = false`` (None: it does not).
    """

    def __init__(self, ctx: Context):
        super().__init__(daemon=True, name="kbpg-drill-watch")
        self.ctx = ctx
        self.login = cluster.login(ctx, "monitor")  # read-only: never the superuser from outside the DB nodes
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.states: dict[str, str] = {}  # name -> "primary" | "replica" | "down"
        self.history: list[tuple[float, str, str]] = []  # (when, name, state) on each change

    def run(self) -> None:
        with ThreadPoolExecutor(max_workers=len(self.ctx.db_hosts)) as pool:
            list(pool.map(self._watch, self.ctx.db_hosts))

    def _watch(self, host: Host) -> None:
        port, monitor = self.ctx.settings.ports.postgresql, self.login
        conn: psycopg.Connection | None = None
        while not self.stop_event.is_set():
            state = "down"
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(host=host.address, port=port, **monitor, dbname="postgres", autocommit=True,
                                           connect_timeout=2, application_name="kbpg-drill-watch",
                                           keepalives=1, keepalives_idle=1, keepalives_interval=1, keepalives_count=2,
                                           tcp_user_timeout=2000)
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                state = "replica" if row and row[0] else "primary"
            except psycopg.Error:
                if conn is not None:
                    try:
                        conn.close()
                    except psycopg.Error:
                        pass
                conn = None
            self._record(host.name, state)
            self.stop_event.wait(WATCH_POLL)
        if conn is not None:
            conn.close()

    def _record(self, name: str, state: str) -> None:
        with self.lock:
            if self.states.get(name) != state:
                self.states[name] = state
                self.history.append((time.monotonic(), name, state))

    def primary_after(self, moment: float, old: str) -> tuple[str, float] | None:
        """The first node seen taking writes after ``moment`` that is a new primary: another node than ``old``,
        or ``old`` itself once it had been seen down or read-only after ``moment`` (it came back)."""
        with self.lock:
            history = list(self.history)
        old_gone = False
        for when, name, state in history:
            if when < moment:
                continue
            if name == old and state != "primary":
                old_gone = True
            if state == "primary" and (name != old or old_gone):
                return name, when
        return None

    def close(self) -> None:
        self.stop_event.set()
        self.join(5)


class Seconds:
    """Acknowledged and failed writes per second per entry point, handed out as DrillSample events."""

    def __init__(self, ctx: Context, round_number: int, start: float):
        self.ctx, self.round, self.start = ctx, round_number, start
        self.counts: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
        self.sent = 0
        self.lock = threading.Lock()
        self.entries: list[str] = []

    def add(self, entry: str, attempt: Attempt) -> None:
        second = int(attempt.ended - self.start)
        with self.lock:
            self.counts[(entry, second)][0 if attempt.ok else 1] += 1
            if entry not in self.entries:
                self.entries.append(entry)

    def flush(self, final: bool = False) -> None:
        """Send every second that is over (all of them when ``final``)."""
        now = int(time.monotonic() - self.start) + (1 if final else 0)
        with self.lock:
            for second in range(self.sent, now):
                for entry in self.entries:
                    ok, failed = self.counts.get((entry, second), [0, 0])
                    self.ctx.sink(DrillSample(self.round, entry, second, ok, failed))
            self.sent = max(self.sent, now)


# --- faults --------------------------------------------------------------------------------------------

class Fault:
    """One fault on the leader, and how to put it back."""

    def __init__(self, ctx: Context, mode: str, leader: Host, mark: Callable[[str, str], None]):
        self.ctx, self.mode, self.leader, self.mark = ctx, mode, leader, mark
        self.run = TaskRun(ctx, "drill", None)
        # Putting the fault back must work after a cancel, which stops every command of the run's own pool.
        self.restore_pool = runlock.lock_pool(ctx.pool) if isinstance(ctx.pool, ConnectionPool) else ctx.pool
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.switchover: so.SwitchoverResult | None = None
        self.restored = mode == "kill"  # nothing to put back (systemd starts Patroni again)

    def inject(self) -> None:
        if self.mode == "switchover":
            self._background(lambda: setattr(self, "switchover", so.switchover(
                self.ctx, wait_streaming=False, mark=lambda what, detail: self.mark(f"switchover: {what}", detail))))
        elif self.mode == "kill":
            self.run.run("systemctl kill --signal=SIGKILL patroni", host=self.leader, what="killing patroni and postgres")
        elif self.mode == "stop":
            self._background(lambda: self.run.run("systemctl stop patroni", host=self.leader, what="stopping patroni"))
        elif self.mode == "cut":
            from ..lab import lab

            lab.set_host_link(self.leader.name, up=False, address=self.leader.address)

    def _background(self, work: Callable[[], object]) -> None:
        def target() -> None:
            try:
                work()
            except BaseException as exc:  # noqa: BLE001 (kept and reported by the round)
                self.error = exc

        self.thread = threading.Thread(target=target, daemon=True, name=f"kbpg-drill-{self.mode}")
        self.thread.start()

    def wait(self, timeout: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def restore(self) -> None:
        """Put the fault back (idempotent): the link up, Patroni started. Never raises; problems are returned
        through the mark and the round's problems by the caller."""
        if self.restored:
            return
        if self.mode == "switchover":
            # The switchover resumes PgBouncer itself; if it is still running (a cancel, a slow Patroni), it is
            # waited for, and every PgBouncer is resumed again whatever happened (RESUME of one not paused is a no-op).
            self.wait(so.PAUSE_TIMEOUT + 2 * so.SWITCHOVER_TIMEOUT + 10)
            problems = so.Bouncers(self.ctx).resume()
            if problems:
                raise TaskError("PgBouncer still paused: " + "; ".join(problems))
        elif self.mode == "cut":
            from ..lab import lab

            lab.set_host_link(self.leader.name, up=True, address=self.leader.address)
        elif self.mode == "stop":
            self.wait(60)
            result = self.restore_pool.get(self.leader).run("systemctl start patroni", timeout=120, check=False,
                                                            what="starting patroni again")
            if not result.ok:
                raise TaskError(f"systemctl start patroni on {self.leader.name}: {result.tail(2)}")
        self.restored = True

    def close(self) -> None:
        if self.restore_pool is not self.ctx.pool:
            self.restore_pool.close()


class RaftHealer:
    """After the fault, a member whose Patroni runs but whose Raft no longer answers (pysyncobj's thread died: see
    :mod:`kbpg_tui.core.raft`) on two looks in a row gets Patroni restarted, which brings it back; each member so
    healed is named in the round's problems: the drill leaves the cluster whole, and says what it had to do.

    ``look`` is called from the round's waits, as often as they like: it looks every RAFT_EVERY seconds, from
    RAFT_GRACE seconds after the fault, through connections a cancel does not close."""

    def __init__(self, ctx: Context, pool, hosts: dict[str, Host], report: RoundReport,
                 mark: Callable[[str, str], None]):
        self.ctx, self.pool, self.hosts, self.report, self.mark = ctx, pool, hosts, report, mark
        self.silent_before: set[str] = set()
        self.next_look = 0.0
        self.restarts: dict[str, int] = {}
        self.problem_at: dict[str, int] = {}  # name -> its line in report.problems

    def _ask(self, host: Host) -> raft.RaftStatus:
        try:
            return raft.ask(self.pool.get(host))
        except Exception as exc:  # noqa: BLE001 (a host down or cut is not judged)
            return raft.RaftStatus(None, f"cannot ask: {exc}")

    def look(self, since_fault: float) -> list[str]:
        """Look if it is time to; the names of the members whose Patroni was restarted now."""
        now = time.monotonic()
        if since_fault < RAFT_GRACE or now < self.next_look:
            return []
        self.next_look = now + RAFT_EVERY
        hosts = list(self.hosts.values())
        with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            statuses = dict(zip((h.name for h in hosts), pool.map(self._ask, hosts), strict=True))
        silent = {name for name, status in statuses.items() if status.answers is False}
        restarted = []
        for name in sorted(silent & self.silent_before):
            if self.restarts.get(name, 0) >= RAFT_RESTARTS:
                continue
            self.restarts[name] = self.restarts.get(name, 0) + 1
            result = self.pool.get(self.hosts[name]).run("systemctl restart patroni", timeout=120, check=False,
                                                         what="restarting patroni (its Raft stopped answering)")
            times = self.restarts[name]
            text = (raft.silent_text(name, statuses[name]) + "; the drill restarted Patroni there"
                    + (f" ({times} times)" if times > 1 else "")
                    + ("" if result.ok else f", and the restart failed: {result.tail(1)}"))
            if name in self.problem_at:
                self.report.problems[self.problem_at[name]] = text
            else:
                self.problem_at[name] = len(self.report.problems)
                self.report.problems.append(text)
            self.ctx.sink(Message(Level.WARNING, f"drill: {text}"))
            self.mark("patroni restarted (raft)", name)
            restarted.append(name)
        self.silent_before = silent - set(restarted)
        return restarted


def put_back(fault: Fault, report: RoundReport, leader: str) -> bool:
    """Put the fault back; any failure is named in the round's problems and as an error (the operator must put it
    back by hand), never raised: the round still ends with its report. True when it is back."""
    try:
        fault.restore()
        return True
    except Exception as exc:  # noqa: BLE001 (SSH, the lab's ip command, a TaskError: all reported the same way)
        text = f"could not put the {fault.mode} back on {leader}: {exc}"
        if text not in report.problems:
            report.problems.append(text)
            fault.ctx.sink(Message(Level.ERROR, f"drill: {text}"))
        return False


# --- a round -------------------------------------------------------------------------------------------

def _entries(ctx: Context) -> list[tuple[str, int]]:
    ports = ctx.settings.ports
    return [(f"LB:{ports.haproxy_write}", ports.haproxy_write), (f"LB:{ports.pgbouncer}", ports.pgbouncer)]


def _connector(ctx: Context, port: int) -> Callable[[], psycopg.Connection]:
    values, lb = ctx.credentials, ctx.settings.network.lb_address
    app = cluster.login(ctx, "app")  # over TLS, verify-full, when it is on

    def connect() -> psycopg.Connection:
        return psycopg.connect(host=lb, port=port, **app, dbname=values["POSTGRES_DB"], connect_timeout=2,
                               application_name="kbpg-drill",
                               keepalives=1, keepalives_idle=2, keepalives_interval=1, keepalives_count=3)
    return connect


def _state(ctx: Context, first: str | None = None, avoid: str | None = None) -> cluster.ClusterState:
    hosts = sorted(ctx.db_hosts, key=lambda h: (h.name == avoid, h.name != first))
    return cluster.read_cluster(ctx, hosts, timeout=1.5)


def wait_healthy(ctx: Context, timeout: float) -> tuple[cluster.ClusterState | None, cluster.Health]:
    """The cluster once it is healthy (one running leader, every other member streaming, one timeline), or the
    last verdict when ``timeout`` passes first."""
    expected = [h.name for h in ctx.db_hosts]
    deadline = time.monotonic() + timeout
    while True:
        try:
            state: cluster.ClusterState | None = _state(ctx)
            verdict = cluster.health(state, expected) if state is not None else None
        except cluster.ClusterUnreadable as exc:
            state, verdict = None, cluster.Health((str(exc),), str(exc))
        assert verdict is not None
        if verdict.ok or time.monotonic() > deadline or ctx.cancel.is_set():
            return state, verdict
        time.sleep(1)


def _wait(condition: Callable[[], bool], timeout: float, cancel: threading.Event, poll: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not cancel.is_set():
        if condition():
            return True
        time.sleep(poll)
    return False


def one_round(ctx: Context, mode: str, number: int, run_id: str, bound: dict[str, float], plan: str) -> RoundReport:
    say = ctx.sink
    report = RoundReport(mode=mode, round=number, started=now_iso(), plan=plan, rto_bound=dict(bound))
    state, verdict = wait_healthy(ctx, HEALTHY_WAIT)
    if not verdict.ok or state is None:
        report.verdict = "not run"
        report.problems.append(f"the cluster is not healthy before round {number}: {'; '.join(verdict.problems)}")
        return report
    leader = state.running_leaders[0]
    report.leader_before, report.timeline_before = leader.name, leader.timeline
    hosts = {h.name: h for h in ctx.db_hosts}
    start = time.monotonic()
    seconds = Seconds(ctx, number, start)
    def counter(entry: str) -> Callable[[Attempt], None]:
        return lambda attempt: seconds.add(entry, attempt)

    writers = {entry: EntryWriter(entry, _connector(ctx, port), f"{run_id}-r{number}", attempt_timeout=ATTEMPT_TIMEOUT,
                                  on_attempt=counter(entry))
               for entry, port in _entries(ctx)}
    watch = LeaderWatch(ctx)
    fault_at = None

    def mark(what: str, offset: float, entry: str = "", detail: str = "") -> None:
        say(DrillMark(number, what, round(offset, 3), entry, detail))

    fault = Fault(ctx, mode, hosts[leader.name],
                  lambda what, detail: mark(what, time.monotonic() - (fault_at or time.monotonic()), detail=detail))
    healer = RaftHealer(ctx, fault.restore_pool, hosts, report,
                        lambda what, detail: mark(what, time.monotonic() - (fault_at or time.monotonic()), detail=detail))
    try:
        watch.start()
        for writer in writers.values():
            writer.start()

        def steady() -> bool:
            seconds.flush()
            return all(writer.acknowledged for writer in writers.values()) and time.monotonic() - start >= BASELINE

        if not _wait(steady, 60, ctx.cancel):
            if ctx.cancel.is_set():
                report.verdict = "cancelled"
                return report
            report.problems.append("no acknowledged write through " + ", ".join(
                e for e, w in writers.items() if not w.acknowledged) + " within 60 s: the fault was not injected")
            report.verdict = "not run"
            return report
        # A real failure lands anywhere in Patroni's loop; rounds that follow each other at a steady pace would all
        # land at the same point of it (the leader key renewed the same time before the fault), so each waits a
        # random part of loop_wait first.
        from ..rto import plan_for

        phase = random.uniform(0, plan_for(ctx.settings).loop_wait)
        _wait(lambda: False, phase, ctx.cancel)
        if ctx.cancel.is_set():
            report.verdict = "cancelled"
            return report
        say(Progress(f"round {number}: {MODE_HELP[mode]} on {leader.name}"))
        fault_at = time.monotonic()
        mark("fault", 0.0, detail=f"{mode} on {leader.name}")
        fault.inject()
        # The new primary, seen from PostgreSQL; then each writer's first acknowledged write after the fault.
        new_primary: tuple[str, float] | None = None
        limit = max(bound.values() or [60.0]) * 2 + 30

        def recovered() -> bool:
            nonlocal new_primary
            seconds.flush()
            healer.look(time.monotonic() - (fault_at or 0.0))
            if fault.error is not None:
                return True
            if new_primary is None:
                new_primary = watch.primary_after(fault_at or 0.0, leader.name)
                if new_primary is not None:
                    mark("new leader", new_primary[1] - (fault_at or 0.0), detail=new_primary[0])
            return new_primary is not None and all(
                any(a.ok and a.ended > new_primary[1] for a in w.attempts[-50:]) for w in writers.values())

        _wait(recovered, limit, ctx.cancel, poll=0.1)
        if fault.error is not None:
            report.problems.append(f"{mode} failed: {fault.error}")
        if new_primary is not None:
            report.time_to_new_leader = new_primary[1] - fault_at
        elif not ctx.cancel.is_set():
            report.problems.append(f"no primary took writes within {limit:.0f} s of the fault")
        if not fault.restored and put_back(fault, report, leader.name):
            mark("restored", time.monotonic() - fault_at, detail={"cut": "link up", "stop": "patroni started"}.get(
                mode, "PgBouncer resumed"))
        # The old leader streams again (or leads again: it came back within the leader key's ttl).
        final: cluster.ClusterState | None = None

        def whole() -> bool:
            nonlocal final
            seconds.flush()
            healer.look(time.monotonic() - (fault_at or 0.0))
            try:
                final = _state(ctx, first=new_primary[0] if new_primary else None, avoid=leader.name)
            except cluster.ClusterUnreadable:
                return False
            old = final.member(leader.name)
            return old is not None and (old.is_streaming or old.is_running_leader) and \
                cluster.health(final, list(hosts)).ok

        if _wait(whole, STREAMING_WAIT, ctx.cancel, poll=0.5):
            assert final is not None
            old = final.member(leader.name)
            if old is not None and old.is_streaming:
                report.time_to_old_streaming = time.monotonic() - fault_at
                mark("old leader streaming", report.time_to_old_streaming, detail=leader.name)
        elif not ctx.cancel.is_set():
            report.problems.append(f"{leader.name} did not stream again within {STREAMING_WAIT:.0f} s "
                                   f"({final.summary() if final else 'cluster unreadable'})")
        if final is not None and final.running_leaders:
            report.leader_after = final.running_leaders[0].name
            report.timeline_after = final.running_leaders[0].timeline
        _wait(lambda: False, AFTER, ctx.cancel)
    finally:
        for writer in writers.values():
            writer.stop(timeout=10)
        watch.close()
        seconds.flush(final=True)
        try:
            put_back(fault, report, leader.name)
        finally:
            fault.close()
    if fault_at is None:
        return report
    # Every acknowledged id, read back from the primary.
    found: dict[str, set[int] | None] = {}
    try:
        with _connector(ctx, ctx.settings.ports.haproxy_write)() as conn:
            for entry in writers:
                found[entry] = read_back(conn, f"{run_id}-r{number}", entry)
    except psycopg.Error as exc:
        report.problems.append(f"acknowledged rows could not be read back: {str(exc).splitlines()[0] if str(exc) else exc}")
    for entry, writer in writers.items():
        figures = entry_figures(writer.attempts, fault_at, found.get(entry), entry=entry)
        report.entries[entry] = figures
        if figures.last_ack_before is not None:
            mark("last ack", figures.last_ack_before, entry)
        if figures.first_ack_after is not None:
            mark("first write after", figures.first_ack_after, entry)
        if figures.lost:
            report.problems.append(f"{entry}: {figures.lost} acknowledged row(s) lost")
    if fault.switchover is not None:
        for warning in fault.switchover.warnings:
            report.problems.append(f"switchover: {warning}")
    report.verdict = "ok" if not report.problems else "problems"
    return report


# --- the drill -----------------------------------------------------------------------------------------

def _bound(ctx: Context) -> tuple[str, dict[str, float]]:
    from ..rto import plan_for, worst_case_rto

    plan = plan_for(ctx.settings)
    rto = worst_case_rto(plan, synchronous=ctx.settings.patroni.synchronous_mode != "off")
    (direct, _), (pooled, _) = _entries(ctx)
    return plan.name, {direct: rto.direct, pooled: rto.pooled}


def prepare_table(run: Run) -> None:
    task = TaskRun(run.ctx, "drill", None)
    on_leader(task, table_sql(run.ctx.credentials["POSTGRES_APP_USER"]), "creating the drill's table",
              database=run.ctx.credentials["POSTGRES_DB"])


def run_drill(run: Run, mode: str, rounds: int = 1, *, checked: bool = False, command: str = "") -> DrillReport:
    """The drill; see the module's docstring. Raises DrillRefused, runlock.LockBusy / LockError."""
    ctx = run.ctx
    if mode not in MODES:
        raise DrillRefused([f"drill mode {mode!r}: must be one of {', '.join(MODES)}"])
    if not 1 <= rounds <= 100:
        raise DrillRefused([f"--rounds {rounds}: must be between 1 and 100"])
    if not checked:
        reasons = refusal(run, mode)
        if reasons:
            raise DrillRefused(reasons)
    plan, bound = _bound(ctx)
    lock = runlock.acquire_for_run(run, command or f"kbpg drill {mode} --rounds {rounds}")
    sync = ctx.settings.patroni.synchronous_mode
    report = DrillReport(mode=mode, plan=plan, synchronous_mode=str(sync) + (
        " (strict)" if getattr(ctx.settings.patroni, "synchronous_mode_strict", False) else ""), started=now_iso(),
        rounds=[])
    run_id = datetime.now().strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(3)
    try:
        prepare_table(run)
        for number in range(1, rounds + 1):
            if ctx.cancel.is_set():
                report.problems.append(f"cancelled before round {number}")
                break
            result = one_round(ctx, mode, number, run_id, bound, plan)
            if ctx.cancel.is_set():
                put_back = not any(problem.startswith("could not put") for problem in result.problems)
                report.problems.append(f"cancelled during round {number}" + (
                    " (the fault was put back)" if put_back else ": the fault was NOT put back, see the round"))
                if result.verdict == "cancelled":
                    break
            report.rounds.append(result)
            ctx.sink(DrillRoundDone(number, result.to_dict()))
            if result.verdict in ("not run", "cancelled") or ctx.cancel.is_set():
                break
        state, verdict = wait_healthy(ctx, HEALTHY_WAIT if not ctx.cancel.is_set() else 5)
        report.final_state = verdict.summary
        if not verdict.ok:
            report.problems.append("the cluster is not whole after the drill: " + "; ".join(verdict.problems))
        _clean(ctx, run_id)
    finally:
        lock.release()
    report.paths = write_reports(ctx.workdir, report)
    return report


def _clean(ctx: Context, run_id: str) -> None:
    """The drill's rows are evidence for its report only: removed once read back (the table stays)."""
    try:
        with _connector(ctx, ctx.settings.ports.haproxy_write)() as conn:
            conn.execute(f"DELETE FROM {DRILL_TABLE} WHERE run LIKE %s", (run_id + "-%",))
    except psycopg.Error:
        pass


def summary_lines(report: DrillReport) -> list[str]:
    """Plain lines for the CLI: each round, then the overall figures per entry point."""
    lines = []
    for r in report.rounds:
        lines.append(f"round {r.round}: {r.leader_before} -> {r.leader_after or '?'} (TL {r.timeline_before} -> "
                     f"{r.timeline_after}); new leader after {_sec(r.time_to_new_leader)}, old leader streaming after "
                     f"{_sec(r.time_to_old_streaming)}")
        for entry, f in r.entries.items():
            errors = "; ".join(f"{text} ×{count}" for text, count in list(f.errors.items())[:3])
            lines.append(f"  {entry}: longest stall {f.longest_stall:.2f} s, write gap {f.write_gap:.2f} s, "
                         f"failed {f.failed}, lost {f.lost if f.lost is not None else '?'}, "
                         f"bound {r.rto_bound.get(entry, 0):.0f} s" + (f" — {errors}" if errors else ""))
        for problem in r.problems:
            lines.append(f"  ! {problem}")
    overall = report.overall()
    if overall:
        lines.append("overall:")
        for entry, o in overall.items():
            lines.append(f"  {entry}: longest stall median {_sec(o.stall_median)} max {_sec(o.stall_max)}; write gap "
                         f"median {_sec(o.gap_median)} max {_sec(o.gap_max)}; failed {o.failed}; lost {o.lost}; "
                         f"rounds over the computed bound: {o.rounds_over_bound}")
    for problem in report.problems:
        lines.append(f"! {problem}")
    return lines


def _sec(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


__all__ = ["MODES", "MODE_HELP", "DrillRefused", "refusal", "run_drill", "summary_lines", "lab_refusal"]
