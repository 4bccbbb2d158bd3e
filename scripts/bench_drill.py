#!/usr/bin/env python3
"""Benchmark of failover on an installed lab: `kbpg drill` rounds per mode and timing plan, figures per entry point.

For each plan (default: fast with 10 rounds, norm with 3) and each synchronous setting (default: off, then
quorum + strict), the plan is written into kbpg.toml and applied by `kbpg install --yes` (live: Patroni's dynamic
configuration, HAProxy and PgBouncer reloaded), then `kbpg drill MODE --rounds N --yes --json` runs for each mode.
Printed per mode and entry point (LB:5432 through HAProxy, LB:6432 through PgBouncer):

- longest stall (the longest time between two acknowledged writes of one writer: what an application feels),
  median and max over the rounds;
- write gap (first failed write after the fault -> first acknowledged write after it), median and max;
- failed writes and acknowledged rows lost (summed);
- time to a new leader and until the old leader streams again (median, max);
- the plan's computed worst-case RTO and how many rounds went over it.

How each figure is taken: the drill's writers insert one row per transaction every 20 ms on a connection they
keep (reopened after a failure, 2 s connect timeout); times are monotonic on this machine; the leader is watched
from each PostgreSQL every 0.1 s. See README "Failover drill".

Run as root from the repo, on a lab where kbpg installed the cluster (the lab's work dir):
  .venv/bin/python scripts/bench_drill.py --workdir lab-work [--plans fast:10,norm:3] [--modes switchover,kill,stop,cut]
                                          [--sync off,quorum-strict] [--json out.json]
Traffic goes only to the lab's own hosts (198.18.0.0/24). kbpg.toml is put back as it was at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kbpg_tui.core import settings as cfg  # noqa: E402


def kbpg(workdir: Path, *args: str, timeout: float = 7200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kbpg_tui", "--workdir", str(workdir), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def apply(workdir: Path, plan: str, sync: str) -> None:
    path = workdir / "kbpg.toml"
    settings = cfg.load_settings(path)
    settings.patroni.timing_plan = plan
    settings.patroni.synchronous_mode, settings.patroni.synchronous_mode_strict = (
        ("quorum", True) if sync == "quorum-strict" else ("off", False))
    cfg.save_settings(settings, path)
    result = kbpg(workdir, "install", "--yes")
    if result.returncode != 0:
        raise SystemExit(f"kbpg install (plan {plan}, sync {sync}) failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")
    # Patroni names its synchronous standbys within a loop or two: wait for green diagnostics.
    deadline = time.monotonic() + 120
    while kbpg(workdir, "diagnose", "--json").returncode != 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"diagnostics not green after applying plan {plan}, sync {sync}")
        time.sleep(3)


def _stats(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{statistics.median(values):6.2f} / {max(values):6.2f}"


def summarize(label: str, report: dict) -> list[str]:
    rounds = report["rounds"]
    lines = [f"\n## {label}: {len(rounds)} round(s), plan {report['plan']}, synchronous {report['synchronous_mode']}"]
    leader = [r["time_to_new_leader"] for r in rounds if r["time_to_new_leader"] is not None]
    rejoin = [r["time_to_old_streaming"] for r in rounds if r["time_to_old_streaming"] is not None]
    lines.append(f"new leader after (median / max): {_stats(leader)} s; old leader streaming after: {_stats(rejoin)} s"
                 f" ({len(rounds) - len(rejoin)} round(s) where the old leader led again or did not stream)")
    lines.append(f"{'entry':<9} {'longest stall med/max':>22} {'write gap med/max':>20} {'failed':>7} {'lost':>5} "
                 f"{'bound':>6} {'over':>5}")
    for entry in sorted({e for r in rounds for e in r["entries"]}):
        figures = [r["entries"][entry] for r in rounds if entry in r["entries"]]
        stalls = [f["longest_stall"] for f in figures]
        gaps = [f["write_gap"] for f in figures]
        bound = max((r["rto_bound"].get(entry, 0) for r in rounds), default=0)
        over = sum(1 for r in rounds if entry in r.get("over_bound", []))
        lost = sum(f["lost"] or 0 for f in figures)
        lines.append(f"{entry:<9} {_stats(stalls):>22} {_stats(gaps):>20} {sum(f['failed'] for f in figures):>7} "
                     f"{lost:>5} {bound:>6.1f} {over:>5}")
    problems = report["problems"] + [p for r in rounds for p in r["problems"] if "lost" not in p]
    for problem in problems:
        lines.append(f"! {problem}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="work dir of an installed lab")
    parser.add_argument("--plans", default="fast:10,norm:3", help="plan:rounds, comma separated")
    parser.add_argument("--modes", default="switchover,kill,stop,cut")
    parser.add_argument("--sync", default="off,quorum-strict", help="off and/or quorum-strict")
    parser.add_argument("--json", type=Path, help="also write every drill's report here")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    original = (workdir / "kbpg.toml").read_text()
    everything: dict[str, dict] = {}
    started = time.monotonic()
    try:
        for item in args.plans.split(","):
            plan, rounds = item.split(":")
            for sync in args.sync.split(","):
                apply(workdir, plan, sync)
                for mode in args.modes.split(","):
                    label = f"{mode}, plan {plan}, sync {sync}"
                    print(f"... {label}: {rounds} round(s)", flush=True)
                    result = kbpg(workdir, "drill", mode, "--rounds", rounds, "--yes", "--json")
                    try:
                        report = json.loads(result.stdout)
                    except ValueError:
                        print(f"! {label}: no report (exit {result.returncode}):\n{result.stderr[-2000:]}")
                        continue
                    everything[label] = report
                    print("\n".join(summarize(label, report)), flush=True)
    finally:
        (workdir / "kbpg.toml").write_text(original)
        restored = kbpg(workdir, "install", "--yes")
        print(f"\nkbpg.toml put back; install exit {restored.returncode}. Benchmark took "
              f"{(time.monotonic() - started) / 60:.1f} min.")
        if args.json:
            args.json.write_text(json.dumps(everything, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
