#!/usr/bin/env python3
"""How long a credential rotation takes, and what the application's writers feel meanwhile, on an installed lab.

Each round runs `kbpg credentials rotate --yes [NAME ...]` (every rotatable name by default) while one writer per
entry point (LB:6432 through PgBouncer, LB:5432 through HAProxy) inserts one row per transaction every 20 ms on a
connection it keeps, logged in before the rotation with the values of that moment (the drill's writers:
kbpg_tui/core/ops/writers.py, the same figures and words). Prints, per round: the command's wall time and each
step's, and per entry point the failed writes and the longest stall (the longest time between two acknowledged
writes); then the median and max over the rounds. --json for the figures as data.

Run as root from the repo, on a lab where kbpg has installed the cluster:
  .venv/bin/python scripts/bench_rotate.py --workdir lab-work [--rounds 3] [NAME ...]
Traffic goes only to the lab's own hosts (198.18.0.0/24). Every round really rotates the secrets (postgres.env is
rewritten each time, postgres.env.prev holds the values before the last round).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kbpg_tui.core import install as inst  # noqa: E402
from kbpg_tui.core.ops import drill  # noqa: E402
from kbpg_tui.core.ops.writers import EntryWriter, entry_figures  # noqa: E402
from kbpg_tui.core.settings import load_settings  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
STEP_LINE = re.compile(r"^== (R\d) (.+?): \w+ \(.*\) in ([\d.]+)s$")


def one_round(workdir: Path, names: list[str], number: int) -> dict:
    run = inst.prepare(workdir, load_settings(workdir / "kbpg.toml"), lambda event: None)  # this round's values
    try:
        drill.prepare_table(run)
        run_id = f"bench-rotate-{uuid.uuid4().hex[:8]}"
        ports = {"LB:6432": run.ctx.settings.ports.pgbouncer, "LB:5432": run.ctx.settings.ports.haproxy_write}
        writers = {entry: EntryWriter(entry, drill._connector(run.ctx, port), f"{run_id}-{entry}")
                   for entry, port in ports.items()}
        for writer in writers.values():
            writer.start()
        time.sleep(3)
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "kbpg_tui", "--workdir", str(workdir), "credentials", "rotate",
                                 "--yes", *names], capture_output=True, text=True, cwd=REPO)
        wall = time.monotonic() - started
        time.sleep(3)
        for writer in writers.values():
            writer.stop()
        if result.returncode != 0:
            raise SystemExit(f"round {number}: kbpg credentials rotate failed:\n{result.stdout[-3000:]}{result.stderr[-1000:]}")
        steps = {m.group(1): float(m.group(3)) for line in result.stdout.splitlines() if (m := STEP_LINE.match(line))}
        entries = {}
        for entry, writer in writers.items():
            figures = entry_figures(writer.attempts, started, entry=entry)
            entries[entry] = {"acknowledged": figures.acknowledged, "failed": figures.failed,
                              "longest_stall": round(figures.longest_stall, 3), "errors": figures.errors}
        drill._clean(run.ctx, run_id)
        return {"round": number, "seconds": round(wall, 1), "steps": steps, "entries": entries}
    finally:
        run.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("names", nargs="*", help="the secrets to rotate (default: every rotatable one)")
    args = parser.parse_args()
    rounds = []
    for number in range(1, args.rounds + 1):
        figures = one_round(args.workdir, args.names, number)
        rounds.append(figures)
        if not args.json:
            per_entry = "; ".join(f"{entry}: {f['failed']} failed, longest stall {f['longest_stall']:.3f} s"
                                  for entry, f in figures["entries"].items())
            steps = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in figures["steps"].items())
            print(f"round {number}: {figures['seconds']:.1f} s ({steps}); {per_entry}")
    walls = [r["seconds"] for r in rounds]
    stalls = {entry: [r["entries"][entry]["longest_stall"] for r in rounds] for entry in rounds[0]["entries"]}
    failed = {entry: sum(r["entries"][entry]["failed"] for r in rounds) for entry in rounds[0]["entries"]}
    summary = {"rounds": len(rounds), "names": args.names or "all", "seconds_median": statistics.median(walls),
               "seconds_max": max(walls), "failed": failed,
               "longest_stall_median": {e: statistics.median(v) for e, v in stalls.items()},
               "longest_stall_max": {e: max(v) for e, v in stalls.items()}}
    if args.json:
        print(json.dumps({"summary": summary, "rounds": rounds}, indent=2))
    else:
        print(f"{len(rounds)} rounds ({', '.join(args.names) or 'every rotatable name'}): median {summary['seconds_median']:.1f} s, "
              f"max {summary['seconds_max']:.1f} s; failed writes {failed}; longest stall median "
              f"{summary['longest_stall_median']}, max {summary['longest_stall_max']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
