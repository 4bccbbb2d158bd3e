"""The drill's report: overall figures per entry point, its JSON and Markdown forms, and the files on disk."""

from __future__ import annotations

import json
import stat

import pytest

from kbpg_tui.core.ops.drill_report import DrillReport, RoundReport, now_iso, write_reports
from kbpg_tui.core.ops.writers import EntryFigures

BOUND = {"LB:5432": 21.0, "LB:6432": 22.0}


def figures(entry: str, stall: float, gap: float, failed: int = 0, lost: int | None = 0, **more) -> EntryFigures:
    return EntryFigures(entry=entry, attempts=500, acknowledged=500 - failed, failed=failed, longest_stall=stall,
                        stall_from=-0.5, stall_to=stall - 0.5, write_gap=gap, lost=lost,
                        last_ack_before=-0.5, first_ack_after=stall - 0.5, **more)


def round_report(number: int, direct: EntryFigures, pooled: EntryFigures, problems: list[str] | None = None) -> RoundReport:
    return RoundReport(mode="kill", round=number, started="2025-01-02T03:04:05+01:00", leader_before="db1",
                       leader_after="db2", timeline_before=3, timeline_after=4, time_to_new_leader=5.5,
                       time_to_old_streaming=12.25, entries={"LB:5432": direct, "LB:6432": pooled}, plan="fast",
                       rto_bound=dict(BOUND), verdict="one leader, 2 streaming on timeline 4", problems=problems or [])


def drill() -> DrillReport:
    rounds = [
        round_report(1, figures("LB:5432", 7.0, 6.0, failed=30), figures("LB:6432", 9.0, 0.0)),
        round_report(2, figures("LB:5432", 5.0, 4.5, failed=20, errors={"connection refused": 20}),
                     figures("LB:6432", 23.5, 22.0, failed=1, errors={"server conn crashed? | x": 1})),
        round_report(3, figures("LB:5432", 6.0, 0.0), figures("LB:6432", 8.0, 2.0, failed=2, lost=3, lost_ids=[4, 5, 6])),
    ]
    return DrillReport(mode="kill", plan="fast", synchronous_mode="quorum (strict)", started="2025-01-02T03:04:05+01:00",
                       rounds=rounds, final_state="db2 leader; db1, db3 streaming on timeline 6")


def test_overall_per_entry_point() -> None:
    overall = drill().overall()
    direct, pooled = overall["LB:5432"], overall["LB:6432"]
    assert (direct.rounds, direct.stall_median, direct.stall_max) == (3, 6.0, 7.0)
    assert (direct.gap_median, direct.gap_max, direct.failed, direct.lost) == (4.5, 6.0, 50, 0)
    assert direct.rounds_over_bound == 0 and direct.bound == 21.0
    assert (pooled.stall_median, pooled.stall_max, pooled.gap_median, pooled.gap_max) == (9.0, 23.5, 2.0, 22.0)
    assert (pooled.failed, pooled.lost, pooled.rounds_over_bound) == (3, 3, 1)


def test_lost_unknown_when_no_round_was_read_back() -> None:
    report = drill()
    for one in report.rounds:
        one.entries["LB:5432"].lost = None
    assert report.overall()["LB:5432"].lost is None
    assert report.overall()["LB:6432"].lost == 3


def test_ok_only_without_problems_or_lost_rows() -> None:
    report = drill()
    assert not report.ok  # 3 rows lost in round 3
    report.rounds[2].entries["LB:6432"].lost = 0
    assert report.ok
    report.rounds[1].problems.append("db3 not streaming after 120 s")
    assert not report.ok
    report.rounds[1].problems.clear()
    report.problems.append("the cluster has two leaders")
    assert not report.ok


def test_json_round_trip() -> None:
    report = drill()
    data = json.loads(json.dumps(report.to_dict()))
    again = DrillReport.from_dict(data)
    assert again == report
    assert again.to_dict() == data
    assert data["overall"]["LB:6432"]["rounds_over_bound"] == 1
    assert data["rounds"][1]["over_bound"] == ["LB:6432"]
    assert data["ok"] is False


def test_markdown_tables() -> None:
    text = drill().markdown()
    assert text.startswith("# kbpg drill: kill\n")
    assert "computed worst-case RTO: LB:5432 ≤ 21.0 s, LB:6432 ≤ 22.0 s" in text
    assert "- synchronous mode: quorum (strict)" in text
    assert "| LB:5432 | 3 | 6.00 s | 7.00 s | 4.50 s | 6.00 s | 50 | 0 | 0 (> 21.0 s) |" in text
    assert "| LB:6432 | 3 | 9.00 s | 23.50 s | 2.00 s | 22.00 s | 3 | 3 | 1 (> 22.0 s) |" in text
    assert "| 2 | LB:6432 | 23.50 s | -0.50 s → +23.00 s | 22.00 s | 499 | 1 | 0 | -0.50 s → +23.00 s | 22.0 s OVER |" in text
    assert "| 3 | LB:6432 | 8.00 s | -0.50 s → +7.50 s | 2.00 s | 498 | 2 | 3 (ids 4, 5, 6) |" in text
    assert "| 1 | 2025-01-02T03:04:05+01:00 | db1 → db2 | 3 → 4 | 5.50 s | 12.25 s |" in text
    assert "| 2 | LB:6432 | server conn crashed? \\| x | 1 |" in text  # a pipe in an error does not break the table
    assert "- result: NOT OK" in text
    for line in text.splitlines():
        if line.startswith("|"):
            assert line.endswith("|")


def test_markdown_says_not_recovered_and_problems() -> None:
    report = drill()
    report.rounds[0].entries["LB:5432"].recovered = False
    report.rounds[0].problems.append("db1 not streaming")
    text = report.markdown()
    assert "7.00 s (not recovered)" in text
    assert "- round 1: db1 not streaming" in text


def test_write_reports(tmp_path) -> None:
    report = drill()
    markdown_path, json_path = write_reports(tmp_path, report)
    assert markdown_path == tmp_path / "reports" / "drill-20250102-030405.md"
    assert json_path == tmp_path / "reports" / "drill-20250102-030405.json"
    assert stat.S_IMODE((tmp_path / "reports").stat().st_mode) == 0o700
    for path in (markdown_path, json_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert markdown_path.read_text(encoding="utf-8") == report.markdown()
    assert DrillReport.from_dict(json.loads(json_path.read_text(encoding="utf-8"))) == report
    assert [p.name for p in (tmp_path / "reports").iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_now_iso_is_a_stamp() -> None:
    from datetime import datetime

    moment = datetime.fromisoformat(now_iso())
    assert moment.tzinfo is not None


@pytest.mark.parametrize("started", ["not a time", ""])
def test_a_bad_started_still_writes(tmp_path, started: str) -> None:
    report = drill()
    report.started = started
    markdown_path, _ = write_reports(tmp_path, report)
    assert markdown_path.name.startswith("drill-") and markdown_path.exists()
