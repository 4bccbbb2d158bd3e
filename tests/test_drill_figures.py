"""The drill's figures, from synthetic attempts: longest stall, write gap, lost rows, the outage's edges, per second."""

from __future__ import annotations

import pytest

from kbpg_tui.core.ops.writers import Attempt, EntryFigures, entry_figures, per_second

INTERVAL = 0.02


def writer(script: list[tuple], start: float = 100.0) -> list[Attempt]:
    """Attempts one after another, ``INTERVAL`` apart: each item is (duration, ok) or (duration, ok, error)."""
    attempts, moment = [], start
    for number, item in enumerate(script, 1):
        duration, ok = item[0], item[1]
        error = "" if ok else (item[2] if len(item) > 2 else "connection refused")
        attempts.append(Attempt(number, moment, moment + duration, ok, error))
        moment += duration + INTERVAL
    return attempts


def steady(count: int, duration: float = 0.01) -> list[tuple]:
    return [(duration, True)] * count


def test_no_failure() -> None:
    attempts = writer(steady(100))
    figures = entry_figures(attempts, fault_at=100.5, found_ids={a.id for a in attempts}, entry="LB:5432")
    assert figures.entry == "LB:5432"
    assert (figures.attempts, figures.acknowledged, figures.failed) == (100, 100, 0)
    assert figures.longest_stall == pytest.approx(0.03)  # end to end: interval + one attempt
    assert figures.write_gap == 0.0 and figures.gap_from is None
    assert figures.errors == {} and figures.lost == 0 and figures.lost_ids == []
    assert figures.recovered


def test_a_hang_without_failure_is_a_stall_but_no_write_gap() -> None:
    # 50 quick writes (1.5 s), one that hangs 5 s and then succeeds, 50 more.
    attempts = writer(steady(50) + [(5.0, True)] + steady(50))
    hung = attempts[50]
    fault_at = hung.started + 0.1
    figures = entry_figures(attempts, fault_at, found_ids={a.id for a in attempts})
    assert figures.failed == 0
    assert figures.longest_stall == pytest.approx(5.0 + INTERVAL)  # from the end of the write before to its end
    assert figures.stall_from == pytest.approx(attempts[49].ended - fault_at)
    assert figures.stall_to == pytest.approx(hung.ended - fault_at)
    assert figures.write_gap == 0.0
    # The outage after the fault is that stall.
    assert figures.last_ack_before == pytest.approx(figures.stall_from)
    assert figures.first_ack_after == pytest.approx(figures.stall_to)


def test_failures_then_recovery() -> None:
    script = steady(50) + [(0.005, False, "connection refused")] * 30 + [(0.01, False, "read-only transaction")] * 5 \
        + [(0.2, True)] + steady(20)
    attempts = writer(script)
    first_failure, recovery = attempts[50], attempts[85]
    fault_at = attempts[49].ended + 0.005  # the fault, just after the last good write ended
    figures = entry_figures(attempts, fault_at, found_ids={a.id for a in attempts})
    assert (figures.acknowledged, figures.failed) == (71, 35)
    assert figures.errors == {"connection refused": 30, "read-only transaction": 5}
    assert figures.write_gap == pytest.approx(recovery.ended - first_failure.started)
    assert figures.gap_from == pytest.approx(first_failure.started - fault_at)
    assert figures.gap_to == pytest.approx(recovery.ended - fault_at)
    # The stall runs from the last acknowledged write's end, before the first failure's start.
    assert figures.longest_stall == pytest.approx(recovery.ended - attempts[49].ended)
    assert figures.longest_stall > figures.write_gap
    assert figures.last_ack_before == pytest.approx(-0.005)
    assert figures.first_ack_after == pytest.approx(recovery.ended - fault_at)
    assert figures.recovered and figures.lost == 0


def test_failures_before_the_fault_do_not_start_the_write_gap() -> None:
    script = steady(10) + [(0.01, False, "early")] + steady(40) + [(0.01, False, "late")] * 10 + steady(10)
    attempts = writer(script)
    fault_at = attempts[50].ended + 0.001
    figures = entry_figures(attempts, fault_at)
    late = attempts[51]
    assert figures.gap_from == pytest.approx(late.started - fault_at)
    assert figures.write_gap == pytest.approx(attempts[61].ended - late.started)
    assert figures.errors == {"early": 1, "late": 10}


def test_a_failure_in_flight_at_the_fault_counts() -> None:
    # An attempt started before the fault that fails after it (a hang cut short) starts the write gap at its start.
    attempts = writer(steady(20) + [(3.0, False, "server closed the connection unexpectedly")] + steady(5))
    fault_at = attempts[20].started + 1.0
    figures = entry_figures(attempts, fault_at)
    assert figures.write_gap == pytest.approx(attempts[21].ended - attempts[20].started)
    assert figures.gap_from == pytest.approx(-1.0)


def test_a_writer_that_never_recovers_shows_its_whole_outage() -> None:
    attempts = writer(steady(30) + [(0.005, False)] * 400)
    fault_at = attempts[29].ended + 0.001
    figures = entry_figures(attempts, fault_at)
    assert not figures.recovered
    assert figures.longest_stall == pytest.approx(attempts[-1].ended - attempts[29].ended)
    assert figures.longest_stall > 10
    assert figures.write_gap == pytest.approx(attempts[-1].ended - attempts[30].started)
    assert figures.first_ack_after == pytest.approx(attempts[-1].ended - fault_at)


def test_lost_ids() -> None:
    script = steady(10) + [(0.01, False)] * 3 + steady(40)
    attempts = writer(script)
    acked = [a.id for a in attempts if a.ok]
    missing = set(acked[-25:])  # the last 25 acknowledged writes are not on the new leader
    found = {a.id for a in attempts} - missing  # failed attempts may be there or not: never "lost"
    figures = entry_figures(attempts, attempts[12].ended, found_ids=found)
    assert figures.lost == 25
    assert figures.lost_ids == sorted(missing)[:20]
    # Ids found that were never acknowledged are not lost, and not read back means unknown, not 0.
    assert entry_figures(attempts, attempts[12].ended, found_ids={a.id for a in attempts if a.ok}).lost == 0
    assert entry_figures(attempts, attempts[12].ended, found_ids=None).lost is None


def test_no_attempt_at_all() -> None:
    figures = entry_figures([], fault_at=5.0, found_ids=set())
    assert figures.attempts == 0 and not figures.recovered and figures.lost == 0
    assert figures.longest_stall == 0.0 and figures.stall_from is None


def test_order_of_the_list_does_not_matter() -> None:
    attempts = writer(steady(10) + [(0.01, False)] * 5 + steady(10))
    assert entry_figures(list(reversed(attempts)), attempts[9].ended) == entry_figures(attempts, attempts[9].ended)


def test_figures_dict_round_trip() -> None:
    figures = EntryFigures(entry="LB:6432", attempts=10, acknowledged=8, failed=2, longest_stall=1.5,
                           stall_from=-0.25, stall_to=1.25, write_gap=1.0, gap_from=0.0, gap_to=1.0,
                           errors={"x": 2}, lost=1, lost_ids=[7], last_ack_before=-0.25, first_ack_after=1.25)
    assert EntryFigures.from_dict(figures.to_dict()) == figures


def test_per_second_buckets() -> None:
    start = 50.0
    attempts = [
        Attempt(1, 49.5, 49.9, True),      # before the start: not counted
        Attempt(2, 50.0, 50.1, True),
        Attempt(3, 50.2, 50.99, False, "x"),
        Attempt(4, 51.0, 51.0, True),
        Attempt(5, 51.1, 54.2, True),      # a hang: seconds 2 and 3 have nothing
        Attempt(6, 54.3, 54.4, False, "y"),
    ]
    assert per_second(attempts, start) == [(0, 1, 1), (1, 1, 0), (2, 0, 0), (3, 0, 0), (4, 1, 1)]
    assert per_second([], start) == []
