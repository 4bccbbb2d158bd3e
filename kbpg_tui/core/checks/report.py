"""What a diagnostics run gives: a result per probe, the report, and its Markdown and JSON forms on disk."""

from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..files import write_report_pair


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
        verdict = "FAIL" if self.failed else "PASS"
        result = f"{verdict} ({counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail)"
        lines = [
            "# kbpg diagnostics",
            "",
            f"- run at: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))}",
            f"- result: {result}",
            f"- wall time: {self.elapsed:.2f} s (slowest check {self.slowest:.2f} s)",
            "",
            "| # | check | target | verdict | reason | time |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.results:
            reason = r.reason.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {r.number} | {r.check} | {r.target} | {r.verdict.value.upper()} | {reason} | "
                         f"{r.duration:.2f}s |")
        return "\n".join(lines) + "\n"


def write_reports(workdir: Path, report: Report) -> tuple[Path, Path]:
    """Markdown and JSON reports in ``workdir/reports`` (no secret is ever in a result)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(report.started))
    return write_report_pair(workdir, f"diagnostics-{stamp}", report.markdown(), report.to_dict())
