"""The wizard's diagnostics panel lists the checks of the registry (kbpg_tui.core.checks.ALL_CHECKS): a check added
there (18 backups) shows as a row with no change to the screen. The probes are replaced by instant passes and the
cluster view by made-up members: nothing is connected to."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable, Static

from kbpg_tui.core.checks import ALL_CHECKS
from kbpg_tui.core.checks.base import Probe
from kbpg_tui.core.checks.report import CheckResult, Report, Verdict
from kbpg_tui.core.checks.runner import Diagnostics
from kbpg_tui.ui.app import KbpgApp
from kbpg_tui.ui.screens import diagnostics as diagnostics_screen
from kbpg_tui.ui.screens.diagnostics import DiagnosticsDone, DiagnosticsScreen

from . import fabricated


def rows(table: DataTable) -> list[tuple[str, str, str, str]]:
    return [tuple(str(table.get_cell_at((row, column))) for column in range(4)) for row in range(table.row_count)]


async def test_every_check_of_the_registry_has_its_row(demo: Path, monkeypatch) -> None:
    monkeypatch.setattr(Diagnostics, "probes", lambda self: [
        Probe(check.number, check.name, f"target of {check.number}", lambda: "fine") for check in self.checks])
    monkeypatch.setattr(diagnostics_screen, "cluster_view", lambda ctx: fabricated.members())
    app = KbpgApp(demo)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("2")
        screen = app.screen
        assert isinstance(screen, DiagnosticsScreen)
        for _ in range(100):
            await pilot.pause(0.05)
            if screen.report is not None:
                break
        shown = rows(screen.query_one("#checks", DataTable))
        assert [int(number) for number, *_ in shown] == [check.number for check in ALL_CHECKS]
        assert ("18", "backups", "target of 18", "✓ pass") in shown


async def test_a_backup_warning_is_shown_with_the_problems_and_its_figures(demo: Path) -> None:
    reason = ("backup-01: the newest backup is 3.5 d old (backup.warn_backup_age_hours = 26): are the timers running? "
              "(systemctl list-timers 'kbpg-backup-*' on the backup host); last full 4.5 d ago (20261122-010002F)")
    results = [r for r in fabricated.report().results if r.number != 18]
    results.append(CheckResult(18, "backups", "backup-01", Verdict.WARN, reason, 1.4))
    app = KbpgApp(demo)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = DiagnosticsScreen(autorun=False)
        app.push_screen(screen)
        await pilot.pause()
        screen.post_message(DiagnosticsDone(Report(results, 1_700_000_000.0, 1.5, 1.4)))
        await pilot.pause()
        shown = rows(screen.query_one("#checks", DataTable))
        warnings = [row for row in shown if row[3] == "! warn"]
        assert [row[:3] for row in warnings] == [("10", "pgvector", "LB 198.18.0.10:6432"),
                                                 ("18", "backups", "backup-01")]
        for _ in range(shown.index(warnings[1])):
            await pilot.press("down")
        await pilot.pause()
        detail = str(screen.query_one("#check-detail", Static).render())
        assert "check 18 backups — backup-01" in detail and "3.5 d old" in detail and "20261122-010002F" in detail
