#!/usr/bin/env python3
"""Regenerate screens/*.svg: a screenshot of every wizard screen, taken from the real app at 100×30
(the *-80x24 ones at 80×24, with made-up failures from tests/ui/fabricated.py: no host is touched).

  .venv/bin/python scripts/screenshots.py          # the screens that need no hosts (demo work dir)
  .venv/bin/python scripts/screenshots.py --lab    # also a real install and diagnostics on the lab (root;
                                                   # the lab must be down: it is brought up and down again)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kbpg_tui.core.events import HostKeyUnknown  # noqa: E402
from kbpg_tui.ui.app import KbpgApp  # noqa: E402
from kbpg_tui.ui.screens.diagnostics import ClusterSeen, DiagnosticsDone, DiagnosticsScreen  # noqa: E402
from kbpg_tui.ui.screens.dialogs import HostKeyDialog  # noqa: E402
from kbpg_tui.ui.screens.drill import DrillDone, DrillEvent, DrillScreen  # noqa: E402
from kbpg_tui.ui.screens.hosts import HostsScreen  # noqa: E402
from kbpg_tui.ui.screens.install import EngineEvent, InstallScreen  # noqa: E402
from kbpg_tui.ui.screens.summary import SummaryScreen  # noqa: E402
from tests.ui import fabricated  # noqa: E402

SIZE = (100, 30)
OUT = REPO / "screens"
DEMO = REPO / "tests" / "ui" / "demo"


async def shoot(app: KbpgApp, name: str, pilot) -> None:
    await pilot.pause()
    app.save_screenshot(filename=f"{name}.svg", path=str(OUT))
    print(f"screens/{name}.svg")


async def offline(workdir: Path) -> None:
    app = KbpgApp(workdir)
    async with app.run_test(size=SIZE) as pilot:
        await shoot(app, "01-welcome", pilot)
        await pilot.press("question_mark")
        await shoot(app, "00-help", pilot)
        await pilot.press("escape", "1")
        await shoot(app, "02-credentials", pilot)
        await pilot.press("r")
        await shoot(app, "02-credentials-rotate", pilot)
        await pilot.press("escape")
        await pilot.press("n")
        await shoot(app, "03-hosts", pilot)
        await pilot.press("n")
        await shoot(app, "04-plan", pilot)
        await pilot.press("n")
        await shoot(app, "05-install", pilot)
        app.push_screen(HostKeyDialog(HostKeyUnknown("db-master-01", "198.18.0.120", "ssh-ed25519",
                                                     "SHA256:uKq2cVg2h3ZxY8m0XbR4mJ3l5Sg7n1oP6dT9wE0aBcD")))
        await shoot(app, "03-hosts-host-key", pilot)
        await pilot.press("d")
        app.push_screen(SummaryScreen())
        await shoot(app, "08-summary", pilot)


async def failures_at_80x24(workdir: Path) -> None:
    """What the operator reads at 80×24 when things go wrong (made-up events and results)."""
    app = KbpgApp(workdir)
    async with app.run_test(size=(80, 24)) as pilot:
        install = InstallScreen()
        app.push_screen(install)
        await pilot.pause()
        for event in fabricated.install_events():
            install.post_message(EngineEvent(event))
        await shoot(app, "06-install-failure-80x24", pilot)
        app.pop_screen()
        diagnostics = DiagnosticsScreen(autorun=False)
        app.push_screen(diagnostics)
        await pilot.pause()
        diagnostics.post_message(ClusterSeen(fabricated.members()))
        diagnostics.post_message(DiagnosticsDone(fabricated.report()))
        await pilot.pause()
        await pilot.press("down")
        await shoot(app, "07-diagnostics-failures-80x24", pilot)


async def invalid_answers_at_80x24(workdir: Path) -> None:
    path = workdir / "kbpg.toml"
    original = path.read_text()
    path.write_text(original.replace("version = 17", "version = 18").replace('lb_address = "198.18.0.10"',
                                                                           'lb_adress = "198.18.0.10"'))
    try:
        app = KbpgApp(workdir)
        async with app.run_test(size=(80, 24)) as pilot:
            await shoot(app, "01-welcome-invalid-answers-80x24", pilot)
            app.push_screen(HostsScreen())
            await pilot.pause()
            await pilot.press("n")
            await shoot(app, "03-hosts-invalid-answers-80x24", pilot)
    finally:
        path.write_text(original)


async def drill(workdir: Path) -> None:
    """The failover drill during and after a kill round (made-up events: no host is touched)."""
    events = fabricated.drill_events()
    during = events[:next(i for i, e in enumerate(events) if getattr(e, "second", -1) == 13)]
    paths = (workdir / "reports" / "drill-20250106-104107.md", workdir / "reports" / "drill-20250106-104107.json")
    for size, name, shown, done in ((SIZE, "09-drill-running", during, False), (SIZE, "09-drill", events, True),
                                    ((80, 24), "09-drill-80x24", events, True)):
        app = KbpgApp(workdir)
        async with app.run_test(size=size) as pilot:
            screen = DrillScreen()
            app.push_screen(screen)
            await pilot.pause()
            await pilot.click("#mode-kill")
            screen.set_running(not done)
            for event in shown:
                screen.post_message(DrillEvent(event))
            if done:
                screen.post_message(DrillDone(fabricated.drill_report(paths=paths), False))
            await shoot(app, name, pilot)


async def wait_until(pilot, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for the wizard")
        await pilot.pause(0.5)


async def on_lab(workdir: Path) -> None:
    app = KbpgApp(workdir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "g", "n", "c")
        table = app.screen.query_one("DataTable")
        await wait_until(pilot, lambda: all("✓" in str(table.get_cell_at((row, 5))) for row in range(table.row_count)), 60)
        await shoot(app, "03-hosts-ssh-checked", pilot)
        await pilot.press("n", "n", "s")
        await pilot.pause(20)
        await shoot(app, "06-install-running", pilot)
        await wait_until(pilot, lambda: app.screen.done, 400)
        await shoot(app, "06-install-done", pilot)
        await pilot.press("n")
        await wait_until(pilot, lambda: getattr(app.screen, "report", None) is not None, 90)
        await pilot.pause(6)  # the live cluster view refreshes
        await shoot(app, "07-diagnostics", pilot)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lab", action="store_true")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(DEMO, Path(tmp) / "demo")
        os.chmod(Path(tmp) / "demo" / "credentials" / "postgres.env", 0o600)
        os.chdir(tmp)
        asyncio.run(offline(Path("demo")))
        asyncio.run(failures_at_80x24(Path("demo")))
        asyncio.run(invalid_answers_at_80x24(Path("demo")))
        asyncio.run(drill(Path("demo")))
    if args.lab:
        from kbpg_tui.core import lab

        if lab.status(probe_ssh=False).state != "down":
            print("the lab must be down first: kbpg lab down", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)
            workdir = Path("lab-work")
            lab.up(Path(tmp) / "lab-work")
            try:
                asyncio.run(on_lab(workdir))
            finally:
                lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
