"""The wizard's own workers against real hosts: a declined host key, and cancel then resume of an install."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable

from kbpg_tui.core import settings as cfg
from kbpg_tui.ui.app import KbpgApp
from kbpg_tui.ui.screens.dialogs import HostKeyDialog
from kbpg_tui.ui.screens.install import InstallScreen

from .conftest import Installed

pytestmark = [pytest.mark.lab, pytest.mark.e2e]


async def wait_until(pilot, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.2)


async def test_unknown_host_key_declined_in_the_wizard(installed: Installed, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    shutil.copytree(installed.workdir, workdir, ignore=shutil.ignore_patterns("logs", "reports", ".kbpg-lab", "known_hosts"))
    settings = cfg.load_settings(workdir / "kbpg.toml")
    settings.ssh.pinned_host_keys = {}
    cfg.save_settings(settings, workdir / "kbpg.toml")
    app = KbpgApp(workdir)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("1", "n")
        table = app.screen.query_one(DataTable)
        hosts = table.row_count
        assert hosts == 6  # 3 DB, 2 HAProxy and the backup host: each is connected to, each key asked about
        await pilot.press("c")
        for _ in range(hosts):  # one question per host, one at a time
            await wait_until(pilot, lambda: isinstance(app.screen, HostKeyDialog), 30)
            assert "SHA256:" in " ".join(str(w.render()) for w in app.screen.query("Static"))
            await pilot.press("d")
            await pilot.pause(0.3)
        await wait_until(pilot, lambda: all("declined" in str(table.get_cell_at((row, 5))) for row in range(hosts)), 30)
    assert not (workdir / "known_hosts").exists() or "198.18.0." not in (workdir / "known_hosts").read_text()


async def test_cancel_leaves_things_safe_and_resume_finishes(installed: Installed) -> None:
    app = KbpgApp(installed.workdir)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = InstallScreen()
        app.push_screen(screen)
        await pilot.pause()
        await pilot.press("s")
        await wait_until(pilot, lambda: screen.current_step == "02", 60)  # into step 02 (8 tasks may still be 01)
        await pilot.press("c")
        await wait_until(pilot, lambda: not screen.running, 60)
        status = str(screen.query_one("#install-status").render())
        assert "cancelled at step" in status, status
        assert not screen.done
        await pilot.press("s")  # resume: the same install again, every step checking first
        await wait_until(pilot, lambda: not screen.running, 300)
        await asyncio.sleep(0)
        assert screen.done, str(screen.query_one("#install-status").render())
        assert "install complete: changed 0" in str(screen.query_one("#install-status").render())
