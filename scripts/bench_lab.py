#!/usr/bin/env python3
"""Benchmark of the local lab: cold image build, `up` with a cached image, `down`, idle memory.

Run as root from the repo:  .venv/bin/python scripts/bench_lab.py [--skip-cold] [--rounds N]

--skip-cold keeps the cached image (no rebuild, no Debian mirror traffic).
The lab must be down when this starts; it is down again when this ends.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kbpg_tui.core import lab  # noqa: E402
from kbpg_tui.core.lab import image  # noqa: E402
from kbpg_tui.core.lab.util import LabError, Reporter  # noqa: E402

UP_GOAL_SECONDS = 30.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-cold", action="store_true", help="do not rebuild the image (use the cache)")
    parser.add_argument("--rounds", type=int, default=3, help="up/down rounds with the cached image (default 3)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds the lab idles before memory is measured")
    args = parser.parse_args()

    try:
        lab.check_environment(need_build=not args.skip_cold)
    except LabError as exc:
        print(f"bench_lab: {exc}", file=sys.stderr)
        return exc.exit_code
    if lab.status(probe_ssh=False).state != "down":
        print("bench_lab: the lab is up; run `kbpg lab down` first", file=sys.stderr)
        return 2

    results: list[tuple[str, str]] = []
    if args.skip_cold:
        cached = image.cached_image()
        results.append(("image build (cold)", "skipped" + (f" (cached build took {cached.info()['build_seconds']} s)" if cached else "")))
    else:
        started = time.monotonic()
        built = image.ensure_image(Reporter(None), rebuild=True)
        cold = time.monotonic() - started
        results.append(("image build (cold)", f"{cold:.1f} s ({built.info()['repo_packages']} .deb in the repository)"))
        print(f"image build (cold): {cold:.1f} s", flush=True)

    up_times, down_times, memory_totals = [], [], []
    with tempfile.TemporaryDirectory(prefix="kbpg-lab-bench-") as workdir:
        for round_number in range(1, args.rounds + 1):
            started = time.monotonic()
            status = lab.up(Path(workdir))
            up_times.append(time.monotonic() - started)
            if not status.up:
                print(status.render(), file=sys.stderr)
                lab.down(Path(workdir))
                return 1
            if round_number == 1:
                time.sleep(args.settle)
                usage = lab.memory_usage()
                memory_totals.append(sum(usage.values()))
                per_host = ", ".join(f"{name} {value / 2**20:.0f}" for name, value in usage.items())
                print(f"idle memory (PSS, MiB): {per_host}", flush=True)
            started = time.monotonic()
            lab.down(Path(workdir))
            down_times.append(time.monotonic() - started)
            print(f"round {round_number}: up {up_times[-1]:.1f} s, down {down_times[-1]:.1f} s", flush=True)

    def summary(values: list[float]) -> str:
        return f"median {statistics.median(values):.1f} s (min {min(values):.1f}, max {max(values):.1f}, {len(values)} runs)"

    results.append(("up, cached image", summary(up_times) + f"; goal < {UP_GOAL_SECONDS:.0f} s"))
    results.append(("down", summary(down_times)))
    results.append(("idle lab memory", f"{memory_totals[0] / 2**20:.0f} MiB PSS for {len(lab.HOSTS)} hosts"))
    print()
    for name, value in results:
        print(f"{name:<20} {value}")
    return 0 if max(up_times) < UP_GOAL_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
