"""What a drill gives: a report per round, the drill's report over its rounds, and their Markdown and JSON on disk.

The figures per entry point come from :func:`.writers.entry_figures`; the plan's computed worst-case RTO per
entry point is given by the caller (``kbpg_tui.core.rto``). No secret is ever in a report.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..files import write_report_pair
from .writers import EntryFigures


def now_iso() -> str:
    """The wall-clock time now, ISO 8601 with the local offset, to the second (a report's ``started``)."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _s(value: float | None, signed: bool = False) -> str:
    """Seconds for a table cell; "—" for unknown."""
    if value is None:
        return "—"
    return f"{value:+.2f} s" if signed else f"{value:.2f} s"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


@dataclass
class RoundReport:
    """One round: the cluster before and after the fault, and each entry point's figures.

    ``time_to_new_leader`` and ``time_to_old_streaming`` are seconds from the fault (None: not seen);
    ``rto_bound`` is the plan's computed worst-case RTO per entry point ("LB:5432", "LB:6432")."""

    mode: str
    round: int
    started: str
    leader_before: str = ""
    leader_after: str = ""
    timeline_before: int | None = None
    timeline_after: int | None = None
    time_to_new_leader: float | None = None
    time_to_old_streaming: float | None = None
    entries: dict[str, EntryFigures] = field(default_factory=dict)
    plan: str = ""
    rto_bound: dict[str, float] = field(default_factory=dict)
    verdict: str = ""
    problems: list[str] = field(default_factory=list)

    def over_bound(self) -> list[str]:
        """The entry points whose longest stall was over the plan's computed worst case."""
        return [name for name, figures in self.entries.items()
                if name in self.rto_bound and figures.longest_stall > self.rto_bound[name]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "round": self.round,
            "started": self.started,
            "leader_before": self.leader_before,
            "leader_after": self.leader_after,
            "timeline_before": self.timeline_before,
            "timeline_after": self.timeline_after,
            "time_to_new_leader": _r(self.time_to_new_leader),
            "time_to_old_streaming": _r(self.time_to_old_streaming),
            "entries": {name: figures.to_dict() for name, figures in self.entries.items()},
            "plan": self.plan,
            "rto_bound": {name: round(value, 3) for name, value in self.rto_bound.items()},
            "over_bound": self.over_bound(),
            "verdict": self.verdict,
            "problems": list(self.problems),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundReport:
        return cls(
            mode=data["mode"], round=data["round"], started=data["started"],
            leader_before=data.get("leader_before", ""), leader_after=data.get("leader_after", ""),
            timeline_before=data.get("timeline_before"), timeline_after=data.get("timeline_after"),
            time_to_new_leader=data.get("time_to_new_leader"), time_to_old_streaming=data.get("time_to_old_streaming"),
            entries={name: EntryFigures.from_dict(figures) for name, figures in data.get("entries", {}).items()},
            plan=data.get("plan", ""), rto_bound=dict(data.get("rto_bound", {})),
            verdict=data.get("verdict", ""), problems=list(data.get("problems", [])),
        )


@dataclass
class EntryOverall:
    """One entry point over every round of a drill."""

    entry: str
    rounds: int
    stall_median: float
    stall_max: float
    gap_median: float
    gap_max: float
    failed: int
    lost: int | None            # None: no round was read back
    rounds_over_bound: int
    bound: float | None         # the plan's computed worst case (the largest given, if rounds differ)

    def to_dict(self) -> dict[str, Any]:
        return {
            "entry": self.entry, "rounds": self.rounds,
            "stall_median": round(self.stall_median, 3), "stall_max": round(self.stall_max, 3),
            "gap_median": round(self.gap_median, 3), "gap_max": round(self.gap_max, 3),
            "failed": self.failed, "lost": self.lost, "rounds_over_bound": self.rounds_over_bound,
            "bound": _r(self.bound),
        }


@dataclass
class DrillReport:
    """A drill: its mode, the plan and synchronous mode it ran with, its rounds, and the cluster at the end."""

    mode: str
    plan: str
    synchronous_mode: str
    started: str
    rounds: list[RoundReport] = field(default_factory=list)
    final_state: str = ""
    problems: list[str] = field(default_factory=list)
    paths: tuple[Path, ...] = ()  # where write_reports put it (Markdown, JSON); not part of the report itself

    def entries(self) -> list[str]:
        """The entry points of the rounds, in the order first seen."""
        names: list[str] = []
        for one in self.rounds:
            names += [name for name in one.entries if name not in names]
        return names

    def overall(self) -> dict[str, EntryOverall]:
        """Per entry point over the rounds that have it: median and max of the longest stall and of the write
        gap, failed writes and lost rows summed, rounds whose longest stall was over the computed bound."""
        result: dict[str, EntryOverall] = {}
        for name in self.entries():
            rounds = [one for one in self.rounds if name in one.entries]
            figures = [one.entries[name] for one in rounds]
            stalls = [f.longest_stall for f in figures]
            gaps = [f.write_gap for f in figures]
            read = [f.lost for f in figures if f.lost is not None]
            bounds = [one.rto_bound[name] for one in rounds if name in one.rto_bound]
            result[name] = EntryOverall(
                entry=name, rounds=len(rounds),
                stall_median=statistics.median(stalls), stall_max=max(stalls),
                gap_median=statistics.median(gaps), gap_max=max(gaps),
                failed=sum(f.failed for f in figures),
                lost=sum(read) if read else None,
                rounds_over_bound=sum(1 for one in rounds if name in one.over_bound()),
                bound=max(bounds) if bounds else None,
            )
        return result

    @property
    def ok(self) -> bool:
        """No problem in the drill or any of its rounds, and no acknowledged row lost."""
        if self.problems or any(one.problems for one in self.rounds):
            return False
        return not any(f.lost for one in self.rounds for f in one.entries.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "mode": self.mode,
            "plan": self.plan,
            "synchronous_mode": self.synchronous_mode,
            "started": self.started,
            "overall": {name: item.to_dict() for name, item in self.overall().items()},
            "rounds": [one.to_dict() for one in self.rounds],
            "final_state": self.final_state,
            "problems": list(self.problems),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DrillReport:
        return cls(
            mode=data["mode"], plan=data["plan"], synchronous_mode=data["synchronous_mode"], started=data["started"],
            rounds=[RoundReport.from_dict(one) for one in data.get("rounds", [])],
            final_state=data.get("final_state", ""), problems=list(data.get("problems", [])),
        )

    def markdown(self) -> str:
        problems = len(self.problems) + sum(len(one.problems) for one in self.rounds)
        overall = self.overall()
        bounds = ", ".join(f"{name} ≤ {item.bound:.1f} s" for name, item in overall.items() if item.bound is not None)
        lines = [
            f"# kbpg drill: {self.mode}",
            "",
            f"- started: {self.started}",
            f"- timing plan: {self.plan}" + (f" (computed worst-case RTO: {bounds})" if bounds else ""),
            f"- synchronous mode: {self.synchronous_mode}",
            f"- rounds: {len(self.rounds)}",
            f"- cluster at the end: {_cell(self.final_state) or '—'}",
            f"- result: {'OK' if self.ok else 'NOT OK'}"
            + (f" ({problems} problem{'s' if problems != 1 else ''})" if problems else ""),
            "",
            "## Overall, per entry point",
            "",
            "| entry point | rounds | longest stall median | longest stall max | write gap median | write gap max "
            "| failed writes | rows lost | rounds over the computed RTO |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, item in overall.items():
            lost = "not read back" if item.lost is None else str(item.lost)
            bound = f" (> {item.bound:.1f} s)" if item.bound is not None else ""
            lines.append(f"| {_cell(name)} | {item.rounds} | {_s(item.stall_median)} | {_s(item.stall_max)} | "
                         f"{_s(item.gap_median)} | {_s(item.gap_max)} | {item.failed} | {lost} | "
                         f"{item.rounds_over_bound}{bound} |")
        lines += [
            "",
            "## Rounds",
            "",
            "| round | started | leader before → after | timeline | new leader | old leader streaming | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for one in self.rounds:
            timeline = f"{one.timeline_before if one.timeline_before is not None else '?'} → " \
                       f"{one.timeline_after if one.timeline_after is not None else '?'}"
            lines.append(f"| {one.round} | {_cell(one.started)} | {_cell(one.leader_before or '?')} → "
                         f"{_cell(one.leader_after or '?')} | {timeline} | {_s(one.time_to_new_leader)} | "
                         f"{_s(one.time_to_old_streaming)} | {_cell(one.verdict) or '—'} |")
        lines += [
            "",
            "## Writers, per round",
            "",
            "Offsets are from the fault. Longest stall: longest time between two acknowledged writes (failed or hung "
            "writes in between). Write gap: first failed write after the fault → first acknowledged write after it.",
            "",
            "| round | entry point | longest stall | from → to | write gap | acknowledged | failed | lost "
            "| last ack → first ack after | computed RTO |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for one in self.rounds:
            for name, f in one.entries.items():
                span = f"{_s(f.stall_from, True)} → {_s(f.stall_to, True)}"
                outage = f"{_s(f.last_ack_before, True)} → {_s(f.first_ack_after, True)}"
                stall = _s(f.longest_stall) + ("" if f.recovered else " (not recovered)")
                lost = "—" if f.lost is None else str(f.lost)
                if f.lost_ids:
                    lost += f" (ids {', '.join(map(str, f.lost_ids))}{'…' if (f.lost or 0) > len(f.lost_ids) else ''})"
                limit = one.rto_bound.get(name)
                verdict = "—" if limit is None else f"{limit:.1f} s" + (" OVER" if name in one.over_bound() else "")
                lines.append(f"| {one.round} | {_cell(name)} | {stall} | {span} | {_s(f.write_gap)} | "
                             f"{f.acknowledged} | {f.failed} | {lost} | {outage} | {verdict} |")
        errors = [(one.round, name, text, count) for one in self.rounds for name, f in one.entries.items()
                  for text, count in sorted(f.errors.items(), key=lambda item: -item[1])]
        if errors:
            lines += ["", "## Failed writes, by error", "", "| round | entry point | error | count |", "|---|---|---|---|"]
            lines += [f"| {r} | {_cell(name)} | {_cell(text)} | {count} |" for r, name, text, count in errors]
        all_problems = [(None, p) for p in self.problems] + [(one.round, p) for one in self.rounds for p in one.problems]
        if all_problems:
            lines += ["", "## Problems", ""]
            lines += [f"- {'round ' + str(r) + ': ' if r is not None else ''}{_cell(p)}" for r, p in all_problems]
        return "\n".join(lines) + "\n"


def _stamp(started: str) -> str:
    try:
        return datetime.fromisoformat(started).strftime("%Y%m%d-%H%M%S")
    except ValueError:
        return datetime.now().strftime("%Y%m%d-%H%M%S")


def write_reports(workdir: Path, report: DrillReport) -> tuple[Path, Path]:
    """Markdown and JSON reports in ``workdir/reports`` (0700), files 0644: drill-<stamp>.md and .json."""
    return write_report_pair(workdir, f"drill-{_stamp(report.started)}", report.markdown(), report.to_dict())
