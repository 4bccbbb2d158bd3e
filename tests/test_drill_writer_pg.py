"""The drill's writer against a real PostgreSQL started here: acknowledged rows are read back, a server down for
~2 s shows as failed writes and a stall of that length, and the watchdog bounds an attempt blocked by a lock."""

from __future__ import annotations

import time
from typing import Iterator

import psycopg
import pytest

from kbpg_tui.core.ops.writers import (
    DRILL_TABLE,
    TIMED_OUT,
    EntryWriter,
    entry_figures,
    read_back,
    table_sql,
)

from .pg_local import LocalPostgres

pytestmark = pytest.mark.pg

APP_ROLE = 'kb drill "app"'   # a name that must be quoted
APP_PASSWORD = "drill-app-password-éà"


@pytest.fixture(scope="module")
def server() -> Iterator[LocalPostgres]:
    pg = LocalPostgres()
    try:
        pg.start()
        with pg.admin() as conn:
            conn.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                psycopg.sql.Identifier(APP_ROLE), psycopg.sql.Literal(APP_PASSWORD)))
            conn.execute(table_sql(APP_ROLE))
            conn.execute(table_sql(APP_ROLE))  # idempotent
        yield pg
    finally:
        pg.remove()


def app_connect(pg: LocalPostgres):
    def connect() -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=pg.port, user=APP_ROLE, password=APP_PASSWORD,
                               dbname="postgres", connect_timeout=2)
    return connect


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_table_and_the_app_roles_rights(server: LocalPostgres) -> None:
    with server.admin() as conn:
        owners = conn.execute("SELECT nspowner::regrole::text, (SELECT tableowner FROM pg_tables "
                              "WHERE schemaname = 'kbpg_drill' AND tablename = 'writes') "
                              "FROM pg_namespace WHERE nspname = 'kbpg_drill'").fetchone()
    assert owners == ("postgres", "postgres")
    with app_connect(server)() as conn:
        conn.autocommit = True
        conn.execute(f"INSERT INTO {DRILL_TABLE} (run, entry, id) VALUES ('rights', 'x', 1)")
        assert read_back(conn, "rights", "x") == {1}
        conn.execute(f"DELETE FROM {DRILL_TABLE} WHERE run = 'rights'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"UPDATE {DRILL_TABLE} SET id = 2")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE kbpg_drill.other (x int)")


def test_acknowledged_rows_are_read_back(server: LocalPostgres) -> None:
    writer = EntryWriter("LB:5432", app_connect(server), "run-ack", interval=0.005)
    writer.start()
    wait_for(lambda: len(writer.acknowledged) >= 50)
    writer.stop()
    acked = writer.acknowledged
    assert acked == list(range(1, len(acked) + 1)) and all(a.ok for a in writer.attempts)
    with server.admin() as conn:
        assert read_back(conn, "run-ack", "LB:5432") == set(acked)
        assert read_back(conn, "run-ack", "LB:6432") == set()
        at = conn.execute(f"SELECT min(at) < max(at) FROM {DRILL_TABLE} WHERE run = 'run-ack'").fetchone()[0]
    assert at  # one transaction per row: clock_timestamp() moves


def test_a_server_down_for_two_seconds(server: LocalPostgres) -> None:
    writer = EntryWriter("LB:5432", app_connect(server), "run-down", interval=0.01)
    writer.start()
    try:
        wait_for(lambda: len(writer.acknowledged) >= 20)
        fault_at = time.monotonic()
        server.stop("fast")
        time.sleep(2.0)
        server.start()
        back = time.monotonic()
        count = len(writer.acknowledged)
        wait_for(lambda: len(writer.acknowledged) >= count + 20)
    finally:
        writer.stop()
    with server.admin() as conn:
        found = read_back(conn, "run-down", "LB:5432")
    figures = entry_figures(writer.attempts, fault_at, found, entry="LB:5432")
    assert figures.failed > 0 and figures.recovered and figures.lost == 0
    # The server refused writes for at least the 2 s it was down, and the writer came back soon after it.
    assert 2.0 <= figures.longest_stall <= (back - fault_at) + 1.5
    assert figures.stall_from == pytest.approx(figures.last_ack_before) and figures.stall_from <= 0.1
    assert 0 < figures.write_gap <= figures.longest_stall
    for error in figures.errors:
        assert "\n" not in error and APP_PASSWORD not in error
    assert any("connection" in error for error in figures.errors), figures.errors


def test_the_watchdog_bounds_an_attempt_blocked_by_a_lock(server: LocalPostgres) -> None:
    writer = EntryWriter("LB:6432", app_connect(server), "run-lock", interval=0.01, attempt_timeout=1.0)
    holder = server.admin()
    try:
        writer.start()
        wait_for(lambda: len(writer.acknowledged) >= 10)
        holder.execute("BEGIN")
        holder.execute(f"LOCK TABLE {DRILL_TABLE} IN ACCESS EXCLUSIVE MODE")
        wait_for(lambda: any(not a.ok for a in writer.attempts))
        holder.execute("ROLLBACK")
        count = len(writer.acknowledged)
        wait_for(lambda: len(writer.acknowledged) >= count + 10)
    finally:
        holder.close()
        writer.stop()
    failed = [a for a in writer.attempts if not a.ok]
    assert failed and all(a.error == TIMED_OUT.format(seconds=1.0) for a in failed)
    assert all(1.0 <= a.ended - a.started < 2.0 for a in failed)
    with server.admin() as conn:
        assert read_back(conn, "run-lock", "LB:6432") >= set(writer.acknowledged)
        # The cancelled INSERT is not left waiting on the server.
        waiting = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").fetchone()[0]
    assert waiting == 0
