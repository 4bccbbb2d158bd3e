"""The install screen takes the cluster's run lock in its worker.

Fake hosts; the engine is a recorder: nothing connects.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Static

from kbpg_tui.core import events as ev
from kbpg_tui.core import runlock
from kbpg_tui.core.engine import Engine, StepReport
from kbpg_tui.core.ssh import Host
from kbpg_tui.ui.app import KbpgApp
from kbpg_tui.ui.screens.install import InstallScreen

from ..fakes import local_shell_pool
from ..test_runlock import DEMO_DB, elsewhere, lock_file, plant
from .conftest import SIZE


@pytest.fixture
def hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "hosts"
    pool = local_shell_pool(root, [Host(name, "198.18.0.1") for name in DEMO_DB], [runlock.LOCK_DIR])
    monkeypatch.setattr(runlock, "lock_pool", lambda real_pool: pool)
    runs: list[dict[str, bool]] = []

    def run(self, steps):
        runs.append({name: lock_file(root, name).exists() for name in DEMO_DB})
        return [StepReport(step, ev.Status.UNCHANGED, 0.0, []) for step in steps]

    monkeypatch.setattr(Engine, "run", run)
    return root, runs


async def start_install(app: KbpgApp, pilot) -> InstallScreen:
    await pilot.press("1", "n", "n", "n")
    screen = app.screen
    assert isinstance(screen, InstallScreen)
    await pilot.press("s")
    for _ in range(200):
        await pilot.pause(0.05)
        if not screen.running:
            break
    assert not screen.running
    return screen


async def test_a_busy_cluster_is_a_failed_start_naming_the_holder(demo: Path, hosts) -> None:
    root, runs = hosts
    other = elsewhere("kbpg install --yes")
    plant(root, DEMO_DB, other, age=3)
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        screen = await start_install(app, pilot)
        status = str(screen.query_one("#install-status", Static).render())
        assert "the cluster is busy" in status and "alice@ops-laptop" in status
        assert not screen.done
    assert runs == [], "the engine never ran"
    assert lock_file(root, "db-slave-01").read_bytes() == other.content()


async def test_the_install_runs_under_the_lock_and_releases_it(demo: Path, hosts) -> None:
    root, runs = hosts
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        screen = await start_install(app, pilot)
        assert screen.done
    assert runs == [{name: True for name in DEMO_DB}]
    assert not any(lock_file(root, name).exists() for name in DEMO_DB)


async def test_retrying_a_later_step_refuses_while_a_rotation_is_pending(demo: Path, hosts) -> None:
    """r retries from the failed step, without step 00 (where the install refuses while a rotation is pending):
    it must refuse too, or steps 02-04 would put postgres.env's old values back."""
    from kbpg_tui.core import rotation

    root, runs = hosts
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        screen = await start_install(app, pilot)
        assert len(runs) == 1
        (demo / rotation.PENDING_FILE).write_text("POSTGRES_APP_PASS='a-pending-new-value-0123456789'\n")
        screen.failed_step = "02"
        await pilot.press("r")
        for _ in range(20):
            await pilot.pause(0.05)
        assert not screen.running
        assert "kbpg credentials rotate" in str(screen.query_one("#install-status", Static).render())
    assert len(runs) == 1, "the engine ran steps 02-05 with the old values"
