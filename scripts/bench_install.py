#!/usr/bin/env python3
"""Benchmark of kbpg on the local lab, in one run:

- first install from bare hosts: time per step, and per host within each step (do hosts overlap?);
- the no-op re-run: total time against the first install (goal: under 10 %);
- diagnostics: wall time against the slowest single check (goals: under 1.5x, under 3 s).

Run as root from the repo:  .venv/bin/python scripts/bench_install.py [--diagnose-rounds N]
The lab must be down when this starts (it brings it up on bare hosts); it is down again at the end
unless --keep is given.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kbpg_tui.core import events as ev  # noqa: E402
from kbpg_tui.core import install as inst  # noqa: E402
from kbpg_tui.core import lab  # noqa: E402
from kbpg_tui.core.diagnostics import Diagnostics  # noqa: E402
from kbpg_tui.core.settings import load_settings  # noqa: E402
from kbpg_tui.core.steps import install_steps  # noqa: E402


class StepTimes:
    def __init__(self) -> None:
        self.steps: dict[str, float] = {}
        self.titles: dict[str, str] = {}
        self.host_busy: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.statuses: dict[str, int] = defaultdict(int)

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.StepFinished):
            self.steps[event.step] = event.elapsed
            self.titles[event.step] = event.title
        elif isinstance(event, ev.TaskFinished):
            self.host_busy[event.step][event.host] += event.elapsed
            self.statuses[event.status.value] += 1


def run_install(workdir: Path) -> tuple[float, StepTimes]:
    times = StepTimes()
    run = inst.prepare(workdir, load_settings(workdir / "kbpg.toml"), times)
    started = time.monotonic()
    try:
        reports = run.engine.run(install_steps())
    finally:
        run.close()
    elapsed = time.monotonic() - started
    failed = [r for r in reports if r.status in (ev.Status.FAILED, ev.Status.CANCELLED)]
    if failed:
        raise SystemExit(f"install failed: {[t.detail for r in failed for t in r.failures]}")
    return elapsed, times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diagnose-rounds", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    args = parser.parse_args()
    if lab.status(probe_ssh=False).state != "down":
        print("the lab must be down first: kbpg lab down", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="kbpg-bench-"))
    try:
        started = time.monotonic()
        lab.up(workdir)
        print(f"lab up (bare hosts): {time.monotonic() - started:.1f} s")

        first, times = run_install(workdir)
        print(f"\nfirst install from bare hosts: {first:.1f} s")
        print(f"  {'step':<22} {'time':>7}  {'sum of hosts':>12}  {'slowest host':>12}  overlap")
        for step, elapsed in times.steps.items():
            busy = times.host_busy[step]
            hosts = {h: t for h, t in busy.items() if h not in ("cluster", "local")}
            total = sum(hosts.values())
            slowest = max(hosts.values(), default=0.0)
            overlap = f"{total / elapsed:.1f}x" if hosts and elapsed else "-"
            print(f"  {step} {times.titles[step]:<19} {elapsed:6.1f}s  {total:11.1f}s  {slowest:11.1f}s  {overlap}")
        print(f"  tasks: {dict(times.statuses)}")

        rerun, rerun_times = run_install(workdir)
        print(f"\nno-op re-run: {rerun:.1f} s = {100 * rerun / first:.1f} % of the first install (goal < 10 %)"
              f"; tasks: {dict(rerun_times.statuses)}")

        settings = load_settings(workdir / "kbpg.toml")
        walls, slowest = [], []
        for _ in range(args.diagnose_rounds):
            run = inst.prepare(workdir, settings, lambda event: None)
            try:
                report = Diagnostics(run.ctx).run()
            finally:
                run.close()
            if report.failed:
                print("diagnostics failed:", [r.reason for r in report.results if r.verdict.value == "fail"])
            walls.append(report.elapsed)
            slowest.append(report.slowest)
        wall, slow = statistics.median(walls), statistics.median(slowest)
        print(f"\ndiagnostics ({len(report.results)} probes, median of {len(walls)}): wall {wall:.2f} s, "
              f"slowest check {slow:.2f} s, ratio {wall / slow:.2f}x (goals: < 1.5x and < 3 s)")
    finally:
        if not args.keep:
            lab.down(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
