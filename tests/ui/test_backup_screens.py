"""The wizard and the backups (issue 15): the plan shows the backup host chosen by [inventory.backup_rule] and the
schedule and retention of kbpg.toml's [backup]; the hosts screen lists the backup host; the install grid has step
06 and the backup host's row and still fits 80 columns; the summary says where the backups are and which file
must be kept off the backup host. Nothing here connects to a host."""

from __future__ import annotations

import tomllib
from pathlib import Path

from textual.widgets import DataTable, Input, Select, Static

from kbpg_tui.core import events as ev
from kbpg_tui.core.steps import ALL_STEPS
from kbpg_tui.ui.app import KbpgApp
from kbpg_tui.ui.screens.hosts import HostsScreen
from kbpg_tui.ui.screens.install import EngineEvent, InstallScreen
from kbpg_tui.ui.screens.plan import PlanScreen
from kbpg_tui.ui.screens.progress import CELL_WIDTH, duration, no_answer
from kbpg_tui.ui.screens.summary import SummaryScreen

from .conftest import SIZE

BACKUP_ROW = "\tbackup-01\t198.18.0.153\t"


def text_of(app, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def without_backup_host(demo: Path) -> None:
    path = demo / "servers.tsv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line for line in lines if BACKUP_ROW not in line))


def with_backup_settings(demo: Path, **values) -> None:
    """The demo's kbpg.toml with a [backup] table of these values (TOML literals)."""
    table = "\n".join(f"{key} = {value}" for key, value in values.items())
    with (demo / "kbpg.toml").open("a") as out:
        out.write(f"\n[backup]\n{table}\n")


async def test_the_plan_shows_the_backup_host_and_the_schedule_and_retention_of_kbpg_toml(demo: Path) -> None:
    with_backup_settings(demo, full_schedule='"Sat *-*-* 03:30:00"', diff_schedule='"Sun..Fri *-*-* 02:15:00"',
                         retention_full=4, retention_diff=9, archive_timeout=45)
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "n", "n")
        assert isinstance(app.screen, PlanScreen)
        plan = text_of(app, "#plan")
        assert "Backups (pgBackRest): backup-01 (198.18.0.153), repository /var/lib/pgbackrest" in plan
        assert "Backup schedule: full Sat *-*-* 03:30:00, differential Sun..Fri *-*-* 02:15:00" in plan
        assert "Backups kept: 4 full, 9 differential; WAL archived continuously (archive_timeout 45 s)" in plan
        # step 06 from the steps registry, where it runs, each task named once
        line = next(line for line in plan.splitlines() if line.startswith("06 Backups"))
        assert line.startswith("06 Backups — backup host backup-01, DB: db-master-01, db-slave-01, db-slave-02: host, ")
        assert line.count("packages") == 1 and line.endswith("timers, first backup")
        # the decoys are not the backup host
        assert "backup-staging-01" not in plan and "minio-sync-01" not in plan
        # the form holds the same values, read from kbpg.toml
        assert app.screen.query_one("#f-backup-full_schedule", Input).value == "Sat *-*-* 03:30:00"
        assert app.screen.query_one("#f-backup-retention_full", Input).value == "4"


async def test_the_plan_says_when_no_backup_host_is_selected(demo: Path) -> None:
    without_backup_host(demo)
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "n", "n")
        plan = text_of(app, "#plan")
        assert ("Backups (pgBackRest): none selected: backups are not set up (no row of servers.tsv matches "
                "ENV=prod, ROLE=backup, SUBROLE=backup)") in plan
        assert "06 Backups — skipped (no backups)" in plan
        assert "schedule" not in plan and "/var/lib/pgbackrest" not in plan


async def test_backups_turned_off_in_the_form_are_said_as_written_and_saved(demo: Path) -> None:
    """The plan reads "[backup] enabled = false" literally (a Static would take "[backup]" for markup and drop it)."""
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "n", "n")
        app.screen.query_one("#f-backup-enabled", Select).value = False
        await pilot.pause()
        assert ("Backups (pgBackRest): off: [backup] enabled = false in kbpg.toml (backup-01 (198.18.0.153) selected, "
                "unused)") in text_of(app, "#plan")
        await pilot.press("s")
        assert tomllib.loads((demo / "kbpg.toml").read_text())["backup"]["enabled"] is False


async def test_the_plans_backup_fields_are_checked_and_saved(demo: Path) -> None:
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "n", "n")
        before = (demo / "kbpg.toml").read_text()
        app.screen.query_one("#f-backup-full_schedule", Input).value = "Sun 01:00; rm -rf /"
        await pilot.press("s")
        assert "backup.full_schedule" in text_of(app, "#settings-errors")
        assert (demo / "kbpg.toml").read_text() == before
        app.screen.query_one("#f-backup-full_schedule", Input).value = "Sat *-*-* 02:00:00"
        app.screen.query_one("#f-backup-retention_full", Input).value = "100"
        await pilot.press("s")
        assert "backup.retention_full" in text_of(app, "#settings-errors")
        app.screen.query_one("#f-backup-retention_full", Input).value = "3"
        await pilot.press("s")
        saved = tomllib.loads((demo / "kbpg.toml").read_text())["backup"]
        assert saved["full_schedule"] == "Sat *-*-* 02:00:00" and saved["retention_full"] == 3
        assert "Backup schedule: full Sat *-*-* 02:00:00" in text_of(app, "#plan")


async def test_the_hosts_screen_lists_the_backup_host_and_not_its_decoys(demo: Path) -> None:
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "n")
        assert isinstance(app.screen, HostsScreen)
        table = app.screen.query_one("#hosts", DataTable)
        rows = [[str(table.get_cell_at((row, column))) for column in range(3)] for row in range(table.row_count)]
        assert rows[-1] == ["backup", "backup-01", "198.18.0.153"]
        assert [row[0] for row in rows] == ["DB"] * 3 + ["HAProxy"] * 2 + ["backup"]


async def test_the_install_grid_has_step_06_and_the_backup_host(demo: Path) -> None:
    app = KbpgApp(demo)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("1", "n", "n", "n")
        screen = app.screen
        assert isinstance(screen, InstallScreen)
        grid = screen.query_one("#grid", DataTable)
        assert [str(key.value) for key in grid.columns][1:] == [step.number for step in ALL_STEPS]
        assert "backup-01" in grid.rows
        for event in (ev.TaskFinished("01", "backup-01", "backup host", ev.Status.CHANGED, "", 2.4),
                      ev.TaskFinished("06", "backup-01", "packages", ev.Status.CHANGED, "", 41.2),
                      ev.TaskFinished("06", "backup-01", "timers", ev.Status.UNCHANGED, "", 1.1),
                      ev.TaskStarted("06", "db-master-01", "ssh keys")):
            screen.post_message(EngineEvent(event))
        await pilot.pause()
        assert str(grid.get_cell("backup-01", "01")) == "✓ 2.4s"
        assert str(grid.get_cell("backup-01", "06")) == "✓ 42.3s"
        assert str(grid.get_cell("db-master-01", "06")) == "… ssh keys"


async def test_without_a_backup_host_step_06_is_there_and_no_backup_row(demo: Path) -> None:
    without_backup_host(demo)
    app = KbpgApp(demo)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("1", "n", "n", "n")
        grid = app.screen.query_one("#grid", DataTable)
        assert "06" in grid.columns and "backup-01" not in grid.rows
        assert grid.row_count == 2 + 5


def test_a_cell_is_never_wider_than_its_column_allows() -> None:
    """Finished cells stay 7 wide (symbol, space, 5) however long a task took; a silence fits the running width."""
    for seconds in (0.04, 9.96, 99.94, 99.96, 312.4, 999.4, 999.6, 4000.0, 86400.0):
        assert len(duration(seconds)) <= 5, seconds
    assert (duration(31.44), duration(150.0), duration(1260.0)) == ("31.4s", "150s", "21m")
    for seconds in (30.0, 99.4, 99.6, 3600.0):
        assert len(no_answer(seconds)) <= CELL_WIDTH, seconds
    assert (no_answer(35.4), no_answer(240.0)) == ("silent 35s", "silent 4m")


async def test_the_install_grid_fits_80_columns_with_every_cell_at_its_widest(demo: Path) -> None:
    """Seven steps and six hosts: every finished cell at its widest, and the running cell (a long task's name, or a
    silent host) in each column in turn: never any sideways scrolling at 80 columns."""
    app = KbpgApp(demo)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("1", "n", "n", "n")
        screen = app.screen
        grid = screen.query_one("#grid", DataTable)
        for step in ALL_STEPS:
            for host in screen.rows:
                screen.post_message(EngineEvent(ev.TaskFinished(step.number, host, "t", ev.Status.FAILED, "x", 99.9)))
        await pilot.pause()
        assert str(grid.get_cell("backup-01", "06")) == "✗ 99.9s"
        assert grid.virtual_size.width <= grid.size.width <= 80
        for step in ALL_STEPS:
            screen.post_message(EngineEvent(ev.TaskStarted(step.number, "db-slave-01", "first backup")))
            screen.post_message(EngineEvent(ev.HostSilent(step.number, "haproxy-02", 3599.0)))
            await pilot.pause()
            assert str(grid.get_cell("haproxy-02", step.number)) == "silent 60m"
            assert grid.virtual_size.width <= grid.size.width, step.number
            screen.post_message(EngineEvent(ev.TaskFinished(step.number, "db-slave-01", "first backup",
                                                            ev.Status.FAILED, "x", 0.0)))
            screen.post_message(EngineEvent(ev.HostAnswering(step.number, "haproxy-02")))
            await pilot.pause()
            assert str(grid.get_cell("haproxy-02", step.number)) == "✗ 99.9s"


async def test_the_summary_says_where_the_backups_are_and_what_to_keep_off_the_backup_host(demo: Path) -> None:
    with_backup_settings(demo, full_schedule='"Sat *-*-* 03:30:00"', retention_full=4)
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(SummaryScreen())
        await pilot.pause()
        summary = text_of(app, "#summary")
        assert ("Backups      backup-01 (198.18.0.153): pgBackRest repository /var/lib/pgbackrest, stanza keybuzz-pg"
                in summary)
        assert "Schedule     full Sat *-*-* 03:30:00, diff Mon..Sat *-*-* 01:00:00; keeps 4 full, 6 diff" in summary
        assert "`kbpg backup list`" in summary and "`kbpg restore-drill`" in summary
        warning = " ".join(summary.split("Keep a copy of credentials/postgres.env OFF the backup host:", 1)[1].split())
        assert warning.startswith("its BACKUP_CIPHER_PASS encrypts the backups; without it no backup can be read")


async def test_the_summary_without_a_backup_host_says_so_and_nothing_about_a_cipher(demo: Path) -> None:
    without_backup_host(demo)
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(SummaryScreen())
        await pilot.pause()
        summary = text_of(app, "#summary")
        assert ("Backups      none selected: backups are not set up (no row of servers.tsv matches ENV=prod, "
                "ROLE=backup, SUBROLE=backup)") in summary
        assert "BACKUP_CIPHER_PASS" not in summary and "restore-drill" not in summary


async def test_the_summary_reads_tls_off_as_written(demo: Path) -> None:
    with (demo / "kbpg.toml").open("a") as out:
        out.write("\n[tls]\nenabled = false\n")
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(SummaryScreen())
        await pilot.pause()
        assert "TLS          off ([tls] enabled = false)" in text_of(app, "#summary")


async def test_the_plan_scrolls_down_to_the_backups(demo: Path) -> None:
    """The plan is longer than the screen at 100x30: its pane scrolls, so its last lines (the backups) can be read."""
    from textual.containers import VerticalScroll

    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "n", "n")
        pane = app.screen.query_one("#plan-pane", VerticalScroll)
        plan = app.screen.query_one("#plan", Static)
        assert plan.region.height > pane.region.height  # longer than its pane: without the scroll, clipped
        pane.scroll_end(animate=False)
        await pilot.pause()
        assert pane.scroll_y == pane.max_scroll_y > 0
        assert plan.region.bottom - pane.scroll_y <= pane.region.bottom


async def test_the_welcome_screen_names_the_backup_host_or_its_absence(demo: Path) -> None:
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE):
        assert "servers.tsv     3 DB + 2 HAProxy nodes, backup host backup-01" in text_of(app, "#status")
    without_backup_host(demo)
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE):
        assert "servers.tsv     3 DB + 2 HAProxy nodes, no backup host" in text_of(app, "#status")
