#!/usr/bin/env python3
"""Benchmark of the wizard's responsiveness, in one run:

- start-up: from launching `kbpg` in a real terminal (tmux) to the first screen drawn (goal < 1 s);
- a flood: while a lab host streams 50,000 lines of output through the real engine into the install
  screen, the time for a key press to change the screen (goal < 100 ms) and the app's memory (goal: flat).

Run as root from the repo:  .venv/bin/python scripts/bench_tui.py [--lines 50000]
The lab must be down (it is brought up for the flood and taken down after), or pass --no-flood.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from textual import events  # noqa: E402

from kbpg_tui.core.engine import Outcome, Step, Task  # noqa: E402
from kbpg_tui.ui.app import KbpgApp  # noqa: E402
from kbpg_tui.ui.screens.install import InstallScreen  # noqa: E402

DEMO = REPO / "tests" / "ui" / "demo"
SESSION = "kbpg-bench-tui"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def startup_times(rounds: int) -> list[float]:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(DEMO, Path(tmp) / "demo")
        os.chmod(Path(tmp) / "demo" / "credentials" / "postgres.env", 0o600)
        for _ in range(rounds):
            subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)
            started = time.monotonic()
            subprocess.run(["tmux", "new-session", "-d", "-s", SESSION, "-x", "100", "-y", "30",
                            f"cd {REPO} && {sys.executable} -m kbpg_tui --workdir {tmp}/demo"], check=True)
            while True:
                shown = subprocess.run(["tmux", "capture-pane", "-p", "-t", SESSION], capture_output=True, text=True).stdout
                if "First install" in shown:
                    times.append(time.monotonic() - started)
                    break
                if time.monotonic() - started > 20:
                    raise SystemExit("the wizard did not draw its first screen within 20 s")
                time.sleep(0.005)
            subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)
    return times


def flood_step(lines: int) -> Step:
    def flood(run) -> Outcome:
        run.run(f"seq -f 'flood line %g of {lines}: some apt-get-like output to fill the screen' 1 {lines}")
        return Outcome.unchanged(f"{lines} lines")

    return Step("99", "flood", [Task("flood", "db", flood)])


async def measure_flood(workdir: Path, lines: int) -> None:
    app = KbpgApp(workdir)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = InstallScreen()
        app.push_screen(screen)
        await pilot.pause()
        baseline = rss_mib()
        after_each = []
        latencies, memory = [], [baseline]
        started = time.monotonic()
        for _round in range(3):  # the same flood three times: memory must not keep growing
            screen.launch([flood_step(lines)])
            while screen.running and time.monotonic() - started < 600:
                before = screen.view
                t0 = time.perf_counter()
                # As a terminal delivers it: the driver queues a key event; the app handles it when it gets to it.
                app._driver.send_message(events.Key("right_square_bracket", "]"))
                while screen.view == before or screen.view not in str(screen.query_one("#output-title").render()):
                    await asyncio.sleep(0.001)
                latencies.append((time.perf_counter() - t0) * 1000)
                memory.append(rss_mib())
                await asyncio.sleep(0.05)
            await pilot.pause(0.5)
            after_each.append(rss_mib())
        took = time.monotonic() - started
        print(f"flood: 3 rounds × 3 hosts × {lines} lines streamed in {took:.1f} s; {len(latencies)} key presses during them")
        print(f"  key press → screen changed: median {statistics.median(latencies):.1f} ms, "
              f"p95 {sorted(latencies)[max(0, int(len(latencies) * 0.95) - 1)]:.1f} ms, max {max(latencies):.1f} ms "
              "(goal < 100 ms)")
        print(f"  memory (RSS): before {baseline:.0f} MiB, after each flood "
              f"{', '.join(f'{m:.0f}' for m in after_each)} MiB, peak {max(memory):.0f} MiB; "
              f"lines kept per host: {max(len(b) for h, b in screen.host_lines.items() if h != 'all hosts')} (bounded)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-flood", action="store_true")
    args = parser.parse_args()
    times = startup_times(args.rounds)
    print(f"start-up to the first screen in tmux: median {statistics.median(times) * 1000:.0f} ms "
          f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}; goal < 1000 ms)")
    if args.no_flood:
        return 0
    from kbpg_tui.core import lab

    if lab.status(probe_ssh=False).state != "down":
        print("the lab must be down first: kbpg lab down", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) / "lab-work"
        lab.up(workdir)
        try:
            asyncio.run(measure_flood(workdir, args.lines))
        finally:
            lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
