"""The drill's measuring, apart from any fault: writers that insert numbered rows, and the figures taken from them.

One :class:`EntryWriter` per entry point (LB:5432, LB:6432) inserts one row per transaction into
``kbpg_drill.writes`` and records every attempt (:class:`Attempt`, monotonic times). After the round the
ids the cluster has are read back (:func:`read_back`) and :func:`entry_figures` turns the attempts into the
figures of the report; :func:`per_second` gives the live chart's buckets.

How each figure is taken (the same words are in the README):

- An *attempt* is one INSERT, plus the connection it needs when the previous attempt failed; it is
  *acknowledged* when the server confirmed the commit, *failed* otherwise (an error, a refused or hung
  connection, or no answer within ``attempt_timeout``: the watchdog cancels it). Each attempt has its own id.
- *Longest stall*: the longest time between two consecutive acknowledged writes of one writer, measured
  between the ends of the two acknowledged attempts, over the whole round, whatever happened in between
  (failed writes, or one write that hung). The round's edges count too: from the first attempt's start to
  the first acknowledgement, and from the last acknowledgement to the end of the last attempt when the
  writer ends on failures, so a writer that never recovers shows its whole outage.
- *Write gap*: from the start of the first failed attempt that ended after the fault to the end of the first
  acknowledged attempt after that failure (to the end of the last attempt if none was acknowledged after it);
  0 when no attempt failed after the fault (a stall without a failed write has no write gap).
- *Lost*: acknowledged ids that the cluster does not have when read back after the round.
- *Last ack before* / *first ack after*: the edges of the writer's outage after the fault, that is of the
  longest stall among those that end after the fault (offsets from the fault in seconds, the first one may
  be slightly positive when the fault took effect a little after it was issued).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import psycopg

from ..logs import redact

log = logging.getLogger(__name__)

DRILL_SCHEMA = "kbpg_drill"
DRILL_TABLE = f"{DRILL_SCHEMA}.writes"
INSERT_SQL = f"INSERT INTO {DRILL_TABLE} (run, entry, id) VALUES (%s, %s, %s)"
DEFAULT_ATTEMPT_TIMEOUT = 30.0  # seconds an attempt may take before the watchdog cancels it
CANCEL_TIMEOUT = 2.0            # seconds given to a cancel request
CANCEL_GRACE = 2.0              # seconds after the cancel before the connection's socket is shut down
TIMED_OUT = "no answer within {seconds:g} s (cancelled)"
STOPPED = "stopped before an answer"
ERROR_MAX = 200


def quote_ident(name: str) -> str:
    """``name`` as a double-quoted SQL identifier (quotes doubled); a NUL byte cannot be one."""
    if not name or "\0" in name:
        raise ValueError("a role name must be non-empty and without NUL bytes")
    return '"' + name.replace('"', '""') + '"'


def table_sql(app_role: str) -> str:
    """SQL, run by the superuser on the leader, that creates the drill's schema and table if missing (owned by
    the superuser) and lets ``app_role`` use them: USAGE on the schema, INSERT, SELECT and DELETE on the table."""
    role = quote_ident(app_role)
    return (
        f"CREATE SCHEMA IF NOT EXISTS {DRILL_SCHEMA};\n"
        f"ALTER SCHEMA {DRILL_SCHEMA} OWNER TO CURRENT_USER;\n"
        f"CREATE TABLE IF NOT EXISTS {DRILL_TABLE} (\n"
        "    run text NOT NULL,\n"
        "    entry text NOT NULL,\n"
        "    id bigint NOT NULL,\n"
        "    at timestamptz NOT NULL DEFAULT clock_timestamp(),\n"
        "    PRIMARY KEY (run, entry, id)\n"
        ");\n"
        f"ALTER TABLE {DRILL_TABLE} OWNER TO CURRENT_USER;\n"
        f"GRANT USAGE ON SCHEMA {DRILL_SCHEMA} TO {role};\n"
        f"GRANT INSERT, SELECT, DELETE ON {DRILL_TABLE} TO {role};\n"
    )


def error_line(exc: BaseException) -> str:
    """One line for an error: the first line of its message (the class name when it has none), redacted, cut.

    psycopg's "Multiple connection attempts failed. All failures were:" header is followed by the first failure."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0]
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1].lstrip('- ')}"
    return redact(text)[:ERROR_MAX]


def read_back(conn: psycopg.Connection, run_id: str, entry: str) -> set[int]:
    """The ids the cluster has for one writer of one run."""
    rows = conn.execute(f"SELECT id FROM {DRILL_TABLE} WHERE run = %s AND entry = %s", (run_id, entry)).fetchall()
    return {int(row[0]) for row in rows}


@dataclass(frozen=True)
class Attempt:
    """One write: its id, when it started and ended (``time.monotonic()`` seconds), whether it was acknowledged,
    and for a failed one the first line of its error (never a password: errors are redacted)."""

    id: int
    started: float
    ended: float
    ok: bool
    error: str = ""


class _Connecting:
    """One call of the caller's ``connect``, run in a thread of its own so that the writer can give up on it.

    A connection that arrives after the writer gave up is closed at once."""

    def __init__(self, connect: Callable[[], psycopg.Connection], name: str):
        self.done = threading.Event()
        self.conn: psycopg.Connection | None = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._abandoned = False
        self._connect = connect
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        error: BaseException | None = None
        try:
            conn = self._connect()
        except BaseException as exc:  # handed to the writer, which records it
            error = exc
        with self._lock:
            if self._abandoned:
                _close_quietly(conn)
                return
            self.conn, self.error = conn, error
        self.done.set()

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            conn, self.conn = self.conn, None
        _close_quietly(conn)


def _close_quietly(conn: psycopg.Connection | None) -> None:
    if conn is None:
        return
    try:
        conn.close()
    except Exception:  # a broken connection may fail to close; it is gone either way
        pass


class _Abandoned(Exception):
    """The attempt was given up (watchdog or stop) before it had an answer."""


class EntryWriter(threading.Thread):
    """Inserts ``(run_id, entry, id)`` rows, one per transaction, ids 1, 2, 3... until :meth:`stop`.

    ``connect`` (built by the caller with the entry point's address and the app role's credentials) is called
    for the first attempt and again after every failed one: a failure closes the connection. The connection is
    put in autocommit with ``prepare_threshold = None`` (PgBouncer's transaction pooling). Nothing about the
    connection is logged; errors are kept as :func:`error_line`.

    A watchdog bounds every attempt: one still in flight after ``attempt_timeout`` seconds is cancelled (a
    cancel request, then, if it is still in flight :data:`CANCEL_GRACE` seconds later, its socket is shut down)
    and recorded as failed; a connection that has not come within that time is given up. ``on_attempt`` is
    called in the writer's thread after each attempt is recorded.
    """

    def __init__(self, entry: str, connect: Callable[[], psycopg.Connection], run_id: str, interval: float = 0.02,
                 on_attempt: Callable[[Attempt], None] | None = None,
                 attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT):
        super().__init__(name=f"kbpg-drill-writer-{entry}", daemon=True)
        self.entry = entry
        self.run_id = run_id
        self.interval = interval
        self.attempt_timeout = attempt_timeout
        self._connect = connect
        self._on_attempt = on_attempt
        self._lock = threading.Lock()
        self._attempts: list[Attempt] = []
        self._conn: psycopg.Connection | None = None
        self._inflight: tuple[int, float] | None = None   # (id, started) of the attempt in flight
        self._timed_out: int | None = None                 # id of the attempt the watchdog acted on
        self._stop_event = threading.Event()   # no new attempt
        self._abort = threading.Event()        # give up the attempt in flight
        self._finished = threading.Event()     # the writer's loop is over

    # what was measured

    @property
    def attempts(self) -> list[Attempt]:
        """Every attempt so far, in order (a copy)."""
        with self._lock:
            return list(self._attempts)

    @property
    def acknowledged(self) -> list[int]:
        """The ids of the acknowledged attempts, in order."""
        with self._lock:
            return [a.id for a in self._attempts if a.ok]

    # the loop

    def run(self) -> None:
        watchdog = threading.Thread(target=self._watch, name=f"{self.name}-watchdog", daemon=True)
        watchdog.start()
        number = 0
        try:
            while not self._stop_event.is_set():
                number += 1
                attempt = self._attempt(number)
                with self._lock:
                    self._attempts.append(attempt)
                if self._on_attempt is not None:
                    try:
                        self._on_attempt(attempt)
                    except Exception as exc:  # a listener's bug must not stop the measuring
                        log.warning("drill writer %s: on_attempt failed: %s", self.entry, type(exc).__name__)
                if self._stop_event.wait(self.interval):
                    break
        finally:
            with self._lock:
                conn, self._conn = self._conn, None
            _close_quietly(conn)
            self._finished.set()

    def _attempt(self, number: int) -> Attempt:
        started = time.monotonic()
        with self._lock:
            self._inflight = (number, started)
        error = ""
        try:
            conn = self._conn
            if conn is None:
                conn = self._open(started)
                with self._lock:
                    self._conn = conn
            conn.execute(INSERT_SQL, (self.run_id, self.entry, number))
        except Exception as exc:  # every failure of an attempt is recorded, whatever raised it
            error = error_line(exc)
            if isinstance(exc, _Abandoned):
                error = str(exc)
        ended = time.monotonic()
        with self._lock:
            self._inflight = None
            if self._timed_out == number and error:
                error = TIMED_OUT.format(seconds=self.attempt_timeout)
            elif self._abort.is_set() and error:
                error = STOPPED
            conn, failed = self._conn, bool(error)
            if failed:
                self._conn = None
        if failed:
            _close_quietly(conn)
        return Attempt(number, started, ended, not failed, error)

    def _open(self, started: float) -> psycopg.Connection:
        connecting = _Connecting(self._connect, f"{self.name}-connect")
        deadline = started + self.attempt_timeout
        while not connecting.done.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            if self._abort.is_set():
                connecting.abandon()
                raise _Abandoned(STOPPED)
            if time.monotonic() >= deadline:
                connecting.abandon()
                raise _Abandoned(f"no connection within {self.attempt_timeout:g} s")
        if connecting.error is not None:
            raise connecting.error
        conn = connecting.conn
        assert conn is not None
        try:
            conn.autocommit = True
            conn.prepare_threshold = None
        except Exception:
            _close_quietly(conn)
            raise
        return conn

    # the watchdog

    def _watch(self) -> None:
        tick = min(0.1, max(0.01, self.attempt_timeout / 10))
        acted: tuple[int, int] | None = None   # (attempt id, 1: cancelled, 2: socket shut down)
        while not self._finished.wait(tick):
            with self._lock:
                inflight = self._inflight
            if inflight is None:
                continue
            number, started = inflight
            late = time.monotonic() - started - self.attempt_timeout
            if late < 0:
                continue
            if acted is None or acted[0] != number:
                acted = (number, 1)
                self._cancel(number)
            elif acted[1] == 1 and late >= CANCEL_GRACE:
                acted = (number, 2)
                self._sever(number)

    def _cancel(self, number: int) -> None:
        """Ask the server to cancel attempt ``number``, if it is still the one in flight on this connection.

        Under the lock: the writer cannot start the next attempt on this connection meanwhile, so the cancel
        cannot land on it."""
        with self._lock:
            if self._inflight is None or self._inflight[0] != number:
                return
            conn = self._conn
            if conn is None:
                return  # still connecting: the writer gives the connection up at its own deadline
            self._timed_out = number
            try:
                cancel_safe = getattr(conn, "cancel_safe", None)
                if cancel_safe is not None:
                    cancel_safe(timeout=CANCEL_TIMEOUT)
                else:  # psycopg < 3.2
                    conn.cancel()
            except Exception as exc:  # the socket is shut down later if the cancel did not help
                log.debug("drill writer %s: cancel failed: %s", self.entry, type(exc).__name__)

    def _sever(self, number: int | None, lock_timeout: float = -1) -> None:
        """Shut down the socket of the attempt in flight (``number``, or whichever when None): a blocked read
        returns at once, whatever the network or the server do."""
        if not self._lock.acquire(timeout=lock_timeout):
            return
        try:
            inflight, conn = self._inflight, self._conn
            if inflight is None or conn is None or (number is not None and inflight[0] != number):
                return
            if number is not None:
                self._timed_out = number
            try:
                fd = os.dup(conn.pgconn.socket)  # the same socket, even if the writer closes its own descriptor
            except Exception:  # no socket left: nothing to shut down
                return
        finally:
            self._lock.release()
        sock = socket.socket(fileno=fd)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.close()

    def stop(self, timeout: float = 10) -> None:
        """No new attempt; the one in flight may end within half of ``timeout``, then it is given up.

        Returns within ``timeout`` seconds, whatever the connection does (the thread is a daemon)."""
        deadline = time.monotonic() + timeout
        self._stop_event.set()
        if self.ident is None:  # never started
            return
        self.join(max(0.0, timeout / 2))
        if self.is_alive():
            self._abort.set()
            self._sever(None, lock_timeout=max(0.0, deadline - time.monotonic()))
            self.join(max(0.0, deadline - time.monotonic()))


# --- the figures ------------------------------------------------------------------------------------

LOST_IDS_SHOWN = 20


@dataclass
class EntryFigures:
    """One writer's figures for one round; offsets are seconds from the fault (negative: before it).

    See the module's docstring for how each one is taken."""

    entry: str = ""
    attempts: int = 0
    acknowledged: int = 0
    failed: int = 0
    longest_stall: float = 0.0
    stall_from: float | None = None
    stall_to: float | None = None
    write_gap: float = 0.0
    gap_from: float | None = None
    gap_to: float | None = None
    recovered: bool = True            # the writer's last attempt was acknowledged
    errors: dict[str, int] = field(default_factory=dict)
    lost: int | None = None           # None: not read back
    lost_ids: list[int] = field(default_factory=list)
    last_ack_before: float | None = None
    first_ack_after: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, float):
                data[key] = round(value, 3)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EntryFigures:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        figures = cls(**known)
        figures.errors = dict(figures.errors)
        figures.lost_ids = list(figures.lost_ids)
        return figures


def _longest(points: list[float]) -> tuple[float, float, float] | None:
    """(length, from, to) of the longest interval between consecutive points (the first one on ties)."""
    best: tuple[float, float, float] | None = None
    for before, after in zip(points, points[1:], strict=False):
        if best is None or after - before > best[0]:
            best = (after - before, before, after)
    return best


def entry_figures(attempts: Sequence[Attempt], fault_at: float, found_ids: set[int] | None = None,
                  entry: str = "") -> EntryFigures:
    """The figures of one writer's round from its attempts, ``fault_at`` (monotonic) and the ids read back
    (None: not read back, ``lost`` stays None)."""
    ordered = sorted(attempts, key=lambda a: a.id)
    figures = EntryFigures(entry=entry, attempts=len(ordered))
    if not ordered:
        figures.recovered = False
        if found_ids is not None:
            figures.lost = 0
        return figures
    acks = [a for a in ordered if a.ok]
    figures.acknowledged = len(acks)
    figures.failed = len(ordered) - len(acks)
    figures.recovered = ordered[-1].ok
    figures.errors = dict(Counter(a.error for a in ordered if not a.ok))

    def offset(moment: float) -> float:
        return moment - fault_at

    # Longest stall: between the ends of consecutive acknowledged attempts; the round's edges count.
    points = [ordered[0].started] + [a.ended for a in acks]
    last_end = max(a.ended for a in ordered)
    if last_end > points[-1]:
        points.append(last_end)
    longest = _longest(points)
    if longest is not None:
        figures.longest_stall, start, end = longest
        figures.stall_from, figures.stall_to = offset(start), offset(end)

    # The writer's outage after the fault: the longest of the stalls that end after it.
    after = _longest([p for p in points if p <= fault_at][-1:] + [p for p in points if p > fault_at])
    if after is not None:
        figures.last_ack_before, figures.first_ack_after = offset(after[1]), offset(after[2])

    # Write gap: first failed attempt ending after the fault -> end of the first acknowledged one after it.
    first_failed = next((i for i, a in enumerate(ordered) if not a.ok and a.ended > fault_at), None)
    if first_failed is not None:
        failure = ordered[first_failed]
        recovery = next((a for a in ordered[first_failed + 1:] if a.ok), None)
        gap_end = recovery.ended if recovery is not None else last_end
        figures.write_gap = gap_end - failure.started
        figures.gap_from, figures.gap_to = offset(failure.started), offset(gap_end)

    if found_ids is not None:
        missing = sorted(a.id for a in acks if a.id not in found_ids)
        figures.lost = len(missing)
        figures.lost_ids = missing[:LOST_IDS_SHOWN]
    return figures


def per_second(attempts: Iterable[Attempt], start: float) -> list[tuple[int, int, int]]:
    """``(second, acknowledged, failed)`` for every second from ``start`` (monotonic) to the last attempt's end,
    each attempt counted in the second it ended in (seconds with none are there, as zeros: a hang shows)."""
    buckets: dict[int, list[int]] = {}
    last = -1
    for attempt in attempts:
        second = math.floor(attempt.ended - start)
        if second < 0:
            continue
        counts = buckets.setdefault(second, [0, 0])
        counts[0 if attempt.ok else 1] += 1
        last = max(last, second)
    return [(second, buckets[second][0], buckets[second][1]) if second in buckets else (second, 0, 0)
            for second in range(last + 1)]
