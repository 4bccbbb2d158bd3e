"""The drill's writer with fake connections: failures reconnect, the watchdog bounds a hung attempt (cancel, then
the socket shut down), stop() returns within its timeout, errors are one redacted line, the table's SQL."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from kbpg_tui.core import logs
from kbpg_tui.core.ops import writers
from kbpg_tui.core.ops.writers import EntryWriter, error_line, table_sql


class FakePgConn:
    def __init__(self, sock: socket.socket | None):
        self._sock = sock

    @property
    def socket(self) -> int:
        if self._sock is None:
            raise OSError("no socket")
        return self._sock.fileno()


class FakeConn:
    """``behaviour(conn, params)`` runs for each execute: return to acknowledge, raise to fail."""

    def __init__(self, behaviour, cancellable: bool = True, with_socket: bool = False):
        self.behaviour = behaviour
        self.autocommit = False
        self.prepare_threshold: int | None = 5
        self.closed = False
        self.cancelled = threading.Event()
        self.cancellable = cancellable
        self.executed: list[tuple] = []
        self.ours: socket.socket | None = None
        theirs = None
        if with_socket:
            self.ours, theirs = socket.socketpair()
        self.pgconn = FakePgConn(self.ours)
        self._theirs = theirs

    def execute(self, sql, params):
        assert self.autocommit and self.prepare_threshold is None
        self.executed.append(params)
        return self.behaviour(self, params)

    def cancel_safe(self, timeout: float) -> None:
        if self.cancellable:
            self.cancelled.set()

    def close(self) -> None:
        self.closed = True


def hang_until_cancelled(conn: FakeConn, params) -> None:
    if not conn.cancelled.wait(30):
        raise AssertionError("never cancelled")
    raise RuntimeError("canceling statement due to user request")


def hang_on_socket(conn: FakeConn, params) -> None:
    assert conn.ours is not None
    conn.ours.settimeout(30)
    if conn.ours.recv(1) == b"":
        raise RuntimeError("server closed the connection unexpectedly")
    raise AssertionError("unexpected byte")


def run_for(writer: EntryWriter, seconds: float) -> None:
    writer.start()
    time.sleep(seconds)
    started = time.monotonic()
    writer.stop(timeout=5)
    assert time.monotonic() - started < 5.5
    assert not writer.is_alive()


def test_ids_count_up_and_each_failure_reconnects() -> None:
    outcomes = iter([True, True, False, True, False, False] + [True] * 1000)
    conns: list[FakeConn] = []

    def behaviour(conn, params):
        if not next(outcomes):
            raise RuntimeError("terminating connection due to administrator command\nDETAIL: more")

    def connect():
        conns.append(FakeConn(behaviour))
        return conns[-1]

    writer = EntryWriter("LB:5432", connect, "run-1", interval=0.005)
    run_for(writer, 0.3)
    attempts = writer.attempts
    assert [a.id for a in attempts] == list(range(1, len(attempts) + 1))
    assert [a.ok for a in attempts[:6]] == [True, True, False, True, False, False]
    assert attempts[2].error == "terminating connection due to administrator command"
    assert writer.acknowledged == [a.id for a in attempts if a.ok]
    # one connection for attempts 1-3, a new one for 4-5, one for 6, one for the rest
    assert len(conns) == 4
    assert all(c.closed for c in conns)
    assert [p[2] for p in conns[1].executed] == [4, 5]
    assert all(p[:2] == ("run-1", "LB:5432") for c in conns for p in c.executed)


def test_connect_errors_are_failed_attempts() -> None:
    calls = []

    def connect():
        calls.append(1)
        if len(calls) <= 3:
            raise OSError("")  # no message: the class name is kept
        return FakeConn(lambda conn, params: None)

    writer = EntryWriter("LB:6432", connect, "run-2", interval=0.005)
    run_for(writer, 0.2)
    attempts = writer.attempts
    assert [a.ok for a in attempts[:4]] == [False, False, False, True]
    assert attempts[0].error == "OSError"


def test_the_watchdog_cancels_a_hung_attempt() -> None:
    conns: list[FakeConn] = []

    def connect():
        conns.append(FakeConn(hang_until_cancelled if not conns else (lambda conn, params: None)))
        return conns[-1]

    writer = EntryWriter("LB:5432", connect, "run-3", interval=0.005, attempt_timeout=0.5)
    run_for(writer, 1.2)
    first = writer.attempts[0]
    assert not first.ok
    assert first.error == "no answer within 0.5 s (cancelled)"
    assert 0.5 <= first.ended - first.started < 1.0
    assert writer.attempts[1].ok  # and the writer goes on, on a new connection
    assert conns[0].closed and len(conns) == 2


def test_without_the_watchdog_a_hung_attempt_is_not_bounded(monkeypatch) -> None:
    # The counterpart of the test above: with the watchdog's cancel disabled, the attempt stays in flight.
    monkeypatch.setattr(EntryWriter, "_cancel", lambda self, number: None)
    monkeypatch.setattr(EntryWriter, "_sever", lambda self, number, lock_timeout=-1: None)
    conn = FakeConn(hang_until_cancelled)
    writer = EntryWriter("LB:5432", lambda: conn, "run-3b", interval=0.005, attempt_timeout=0.2)
    writer.start()
    time.sleep(0.8)
    assert writer.attempts == []
    conn.cancelled.set()
    writer.stop(timeout=2)


def test_a_cancel_that_does_not_help_ends_with_the_socket_shut_down(monkeypatch) -> None:
    monkeypatch.setattr(writers, "CANCEL_GRACE", 0.3)
    conns: list[FakeConn] = []

    def connect():
        if not conns:
            conns.append(FakeConn(hang_on_socket, cancellable=False, with_socket=True))
        else:
            conns.append(FakeConn(lambda conn, params: None))
        return conns[-1]

    writer = EntryWriter("LB:6432", connect, "run-4", interval=0.005, attempt_timeout=0.3)
    run_for(writer, 1.3)
    first = writer.attempts[0]
    assert not first.ok and first.error == "no answer within 0.3 s (cancelled)"
    assert 0.6 <= first.ended - first.started < 1.2   # timeout + grace
    assert writer.attempts[1].ok


def test_a_connection_that_never_comes_is_given_up() -> None:
    never = threading.Event()
    calls = []

    def connect():
        calls.append(1)
        if len(calls) == 1:
            never.wait(30)
            raise AssertionError("released")
        return FakeConn(lambda conn, params: None)

    writer = EntryWriter("LB:5432", connect, "run-5", interval=0.005, attempt_timeout=0.3)
    run_for(writer, 0.8)
    first = writer.attempts[0]
    assert not first.ok and first.error == "no connection within 0.3 s"
    assert 0.3 <= first.ended - first.started < 0.6
    assert writer.attempts[1].ok
    never.set()


def test_stop_returns_within_its_timeout_whatever_the_connection_does() -> None:
    never = threading.Event()

    def stuck(conn, params):
        never.wait(60)  # ignores cancel and has no socket to shut down

    conn = FakeConn(stuck, cancellable=False)
    writer = EntryWriter("LB:5432", lambda: conn, "run-6", interval=0.005, attempt_timeout=60)
    writer.start()
    time.sleep(0.2)
    started = time.monotonic()
    writer.stop(timeout=1.0)
    assert time.monotonic() - started < 1.3
    assert writer.is_alive()  # a daemon, left behind
    never.set()
    writer.join(2)
    assert not writer.is_alive()


def test_stop_gives_up_a_hanging_connect() -> None:
    never = threading.Event()
    writer = EntryWriter("LB:5432", lambda: never.wait(60), "run-7", interval=0.005, attempt_timeout=60)
    writer.start()
    time.sleep(0.2)
    started = time.monotonic()
    writer.stop(timeout=1.0)
    assert time.monotonic() - started < 1.3
    assert not writer.is_alive()
    assert [(a.ok, a.error) for a in writer.attempts] == [(False, writers.STOPPED)]
    never.set()


def test_stop_before_start_and_a_failing_listener() -> None:
    EntryWriter("x", lambda: None, "r").stop(timeout=0.1)  # never started: returns

    seen = []

    def listener(attempt):
        seen.append(attempt)
        raise ValueError("listener bug")

    writer = EntryWriter("LB:5432", lambda: FakeConn(lambda conn, params: None), "run-8", interval=0.005,
                         on_attempt=listener)
    run_for(writer, 0.2)
    assert len(seen) == len(writer.attempts) > 3


def test_error_line_is_one_redacted_line() -> None:
    logs.register_secret("hunter2-very-secret")
    assert error_line(RuntimeError("FATAL: bad hunter2-very-secret\nDETAIL: x")) == f"FATAL: bad {logs.REDACTED}"
    assert error_line(ValueError("")) == "ValueError"
    assert error_line(RuntimeError("x" * 500)) == "x" * 200
    multi = RuntimeError("Multiple connection attempts failed. All failures were:\n"
                         "- host: '127.0.0.1', port: '1', hostaddr: '127.0.0.1': connection refused\n"
                         "- host: '::1', port: '1': connection refused")
    assert error_line(multi) == ("Multiple connection attempts failed. All failures were: "
                                 "host: '127.0.0.1', port: '1', hostaddr: '127.0.0.1': connection refused")


def test_table_sql_quotes_the_role() -> None:
    text = table_sql('app"; DROP TABLE x; --')
    assert 'TO "app""; DROP TABLE x; --";' in text
    assert "GRANT INSERT, SELECT, DELETE ON kbpg_drill.writes" in text
    assert "PRIMARY KEY (run, entry, id)" in text and "DEFAULT clock_timestamp()" in text
    with pytest.raises(ValueError):
        table_sql("a\0b")
    with pytest.raises(ValueError):
        table_sql("")
