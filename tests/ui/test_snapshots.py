"""SVG snapshots of every wizard screen at a fixed size (update with: scripts/test tests/ui --snapshot-update)."""

from __future__ import annotations

from pathlib import Path

from kbpg_tui.core.events import HostKeyUnknown
from kbpg_tui.ui.app import KbpgApp
from kbpg_tui.ui.screens.diagnostics import ClusterSeen, DiagnosticsDone, DiagnosticsScreen
from kbpg_tui.ui.screens.dialogs import HostKeyDialog
from kbpg_tui.ui.screens.install import EngineEvent, InstallScreen

from . import fabricated
from .conftest import SIZE


def test_welcome(snap_compare, demo: Path) -> None:
    assert snap_compare(KbpgApp(demo), terminal_size=SIZE)


def test_credentials(snap_compare, demo: Path) -> None:
    assert snap_compare(KbpgApp(demo), press=["1"], terminal_size=SIZE)


def test_rotate_secrets_at_80x24(snap_compare, demo: Path) -> None:
    """From the credentials screen (r): every rotatable name ticked, a password field each, Raft's refused."""
    assert snap_compare(KbpgApp(demo), press=["1", "r"], terminal_size=(80, 24))


def test_hosts(snap_compare, demo: Path) -> None:
    assert snap_compare(KbpgApp(demo), press=["1", "n"], terminal_size=SIZE)


def test_hosts_with_a_broken_inventory(snap_compare, demo: Path) -> None:
    path = demo / "servers.tsv"
    path.write_text(path.read_text().replace("\t198.18.0.121\t", "\t198.18.0.300\t").replace("\tkbops\t", "\t\t"))
    assert snap_compare(KbpgApp(demo), press=["1", "n"], terminal_size=SIZE)


def test_plan(snap_compare, demo: Path) -> None:
    assert snap_compare(KbpgApp(demo), press=["1", "n", "n"], terminal_size=SIZE)


def test_plan_scrolled_to_the_backups(snap_compare, demo: Path) -> None:
    """The plan's end: the backup host, the schedule and the retention of kbpg.toml's [backup]."""
    async def scroll(pilot) -> None:
        await pilot.press("1", "n", "n")
        pilot.app.screen.query_one("#plan-pane").scroll_end(animate=False)
        await pilot.pause()

    assert snap_compare(KbpgApp(demo), run_before=scroll, terminal_size=SIZE)


def test_install_before_start(snap_compare, demo: Path) -> None:
    assert snap_compare(KbpgApp(demo), press=["1", "n", "n", "n"], terminal_size=SIZE)


def test_host_key_question(snap_compare, demo: Path) -> None:
    async def ask(pilot) -> None:
        event = HostKeyUnknown("db-master-01", "198.18.0.120", "ssh-ed25519", "SHA256:uKq2cVg2h3ZxY8m0XbR4mJ3l5Sg7n1oP6dT9wE0aBcD")
        pilot.app.push_screen(HostKeyDialog(event))
        await pilot.pause()

    assert snap_compare(KbpgApp(demo), run_before=ask, terminal_size=SIZE)


def test_help(snap_compare, demo: Path) -> None:
    assert snap_compare(KbpgApp(demo), press=["question_mark"], terminal_size=SIZE)


def test_summary(snap_compare, demo: Path) -> None:
    async def open_summary(pilot) -> None:
        from kbpg_tui.ui.screens.summary import SummaryScreen

        pilot.app.push_screen(SummaryScreen())
        await pilot.pause()

    assert snap_compare(KbpgApp(demo), run_before=open_summary, terminal_size=SIZE)


def test_welcome_at_80x24(snap_compare, demo: Path) -> None:
    assert snap_compare(KbpgApp(demo), terminal_size=(80, 24))


def test_diagnostics_with_failures_at_80x24(snap_compare, demo: Path) -> None:
    """PgBouncer stopped on haproxy-02 (made-up results): problems first, the second one's whole reason below."""
    async def show(pilot) -> None:
        screen = DiagnosticsScreen(autorun=False)
        pilot.app.push_screen(screen)
        await pilot.pause()
        screen.post_message(ClusterSeen(fabricated.members()))
        screen.post_message(DiagnosticsDone(fabricated.report()))
        await pilot.pause()
        await pilot.press("down")

    assert snap_compare(KbpgApp(demo), run_before=show, terminal_size=(80, 24))


async def install_with_a_failure_and_a_silent_host(pilot) -> None:
    screen = InstallScreen()
    pilot.app.push_screen(screen)
    await pilot.pause()
    for event in fabricated.install_events():
        screen.post_message(EngineEvent(event))
    await pilot.pause()


def test_install_with_a_failure_at_80x24(snap_compare, demo: Path) -> None:
    """Step 02 failed on db-slave-02 while db-slave-01 does not answer (made-up events): hosts as rows, 80 columns."""
    assert snap_compare(KbpgApp(demo), run_before=install_with_a_failure_and_a_silent_host, terminal_size=(80, 24))


def test_install_with_a_failure_at_100x30(snap_compare, demo: Path) -> None:
    assert snap_compare(KbpgApp(demo), run_before=install_with_a_failure_and_a_silent_host, terminal_size=SIZE)


def test_invalid_kbpg_toml_at_80x24(snap_compare, demo: Path) -> None:
    """An invalid kbpg.toml: its errors with their keys, and the choice the wizard offers instead of saving."""
    path = demo / "kbpg.toml"
    path.write_text(path.read_text().replace("version = 17", "version = 18")
                    .replace('lb_address = "198.18.0.10"', 'lb_adress = "198.18.0.10"'))

    async def open_dialog(pilot) -> None:
        from kbpg_tui.ui.screens.hosts import HostsScreen

        pilot.app.push_screen(HostsScreen())  # straight there: no "postgres.env unchanged" toast over the dialog
        await pilot.pause()
        await pilot.press("n")

    assert snap_compare(KbpgApp(demo), run_before=open_dialog, terminal_size=(80, 24))
