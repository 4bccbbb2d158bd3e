"""Pilot tests of each wizard screen and the transitions between them, bad input included."""

from __future__ import annotations

import copy
import stat
import tomllib
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Log, Static

from kbpg_tui.core import credentials as creds
from kbpg_tui.core import events as ev
from kbpg_tui.ui.app import KbpgApp
from kbpg_tui.ui.screens.credentials import MASK, CredentialsScreen
from kbpg_tui.ui.screens.diagnostics import DiagnosticsScreen
from kbpg_tui.ui.screens.dialogs import ConfirmDialog, HelpScreen, HostKeyDialog
from kbpg_tui.ui.screens.hosts import HostsScreen
from kbpg_tui.ui.screens.install import OUTPUT_LINES_PER_HOST, EngineEvent, InstallScreen
from kbpg_tui.ui.screens.plan import PlanScreen
from kbpg_tui.ui.screens.summary import SummaryScreen
from kbpg_tui.ui.screens.welcome import WelcomeScreen

from .conftest import SIZE


def text_of(app, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def cell(table: DataTable, row: int, column: int) -> str:
    return str(table.get_cell_at((row, column)))


def select_credential(app, name: str) -> int:
    """Put the credentials table's cursor on ``name``; returns its row."""
    table = app.screen.query_one(DataTable)
    row = [cell(table, r, 0) for r in range(table.row_count)].index(name)
    table.move_cursor(row=row)
    return row


async def test_welcome_shows_the_work_directory_and_leads_everywhere(fresh: Path) -> None:
    app = KbpgApp(fresh)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, WelcomeScreen)
        status = text_of(app, "#status")
        assert "3 DB + 2 HAProxy nodes" in status and "not yet" in status
        await pilot.press("1")
        assert isinstance(app.screen, CredentialsScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, WelcomeScreen)
        await pilot.press("2")
        await pilot.pause()
        assert isinstance(app.screen, DiagnosticsScreen)
        assert "cannot run" in text_of(app, "#diag-status") and "no credentials/postgres.env" in text_of(app, "#diag-status")
        await pilot.press("escape")
        await pilot.press("3")
        assert isinstance(app.screen, CredentialsScreen)
        await pilot.press("g", "n")  # export credentials: written, then back home (not on to the hosts)
        assert isinstance(app.screen, WelcomeScreen)
        assert (fresh / "credentials" / "postgres.env").exists()


async def test_credentials_generate_reveal_export(fresh: Path) -> None:
    app = KbpgApp(fresh)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "g")
        table = app.screen.query_one(DataTable)
        names = [cell(table, row, 0) for row in range(table.row_count)]
        superpass = names.index("POSTGRES_SUPERPASS")
        assert cell(table, superpass, 1) == MASK
        assert cell(table, superpass, 3) == "generated"
        secret = app.state.credentials["POSTGRES_SUPERPASS"]
        await pilot.press("v")
        assert cell(table, superpass, 1) == secret
        await pilot.press("v")
        assert cell(table, superpass, 1) == MASK
        await pilot.press("x")
        env = fresh / "credentials" / "postgres.env"
        assert stat.S_IMODE(env.stat().st_mode) == 0o600
        assert creds.read_env(env)["POSTGRES_SUPERPASS"] == secret
        await pilot.press("n")
        assert isinstance(app.screen, HostsScreen)


async def test_next_refuses_without_credentials(fresh: Path) -> None:
    app = KbpgApp(fresh)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "n")
        assert isinstance(app.screen, CredentialsScreen)
        assert not (fresh / "credentials" / "postgres.env").exists()


async def test_weak_typed_password_needs_confirmation(fresh: Path) -> None:
    app = KbpgApp(fresh)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "g")
        select_credential(app, "POSTGRES_APP_PASS")
        before = app.state.credentials["POSTGRES_APP_PASS"]
        await pilot.press("e")
        assert app.screen.query_one("#editor-input", Input).password
        await pilot.press(*"password1", "enter")
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("n")  # refuse the weak one
        assert app.state.credentials["POSTGRES_APP_PASS"] == before
        await pilot.press("enter")
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("y")  # keep it anyway, knowingly
        assert app.state.credentials["POSTGRES_APP_PASS"] == "password1"
        assert app.state.origins["POSTGRES_APP_PASS"] == "typed"


async def test_strength_is_shown_while_typing(fresh: Path) -> None:
    app = KbpgApp(fresh)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "g")
        select_credential(app, "PATRONI_API_PASSWORD")
        await pilot.press("e", *"aaaa")
        assert "weak" in text_of(app, "#editor-strength")
        await pilot.press(*"-Tr0ub4dor&3-correct-horse")
        assert "strong" in text_of(app, "#editor-strength") or "fair" in text_of(app, "#editor-strength")
        await pilot.press("enter")
        assert app.state.credentials["PATRONI_API_PASSWORD"] == "aaaa-Tr0ub4dor&3-correct-horse"


async def test_broken_servers_tsv_shows_its_errors_and_blocks_next(demo: Path) -> None:
    servers = (demo / "servers.tsv").read_text().replace("\t198.18.0.121\t", "\t198.18.0.300\t")
    (demo / "servers.tsv").write_text(servers)
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "n")
        assert isinstance(app.screen, HostsScreen)
        problems = text_of(app, "#problems")
        assert "servers.tsv:3: column IP_PRIVEE (4): error: '198.18.0.300' is not a valid IP address" in problems
        assert app.screen.query_one(DataTable).row_count == 0
        await pilot.press("n")
        assert isinstance(app.screen, HostsScreen)
        # Fixed on disk, reloaded with r: the hosts appear and next works.
        (demo / "servers.tsv").write_text(servers.replace("\t198.18.0.300\t", "\t198.18.0.121\t"))
        await pilot.press("r")
        assert app.screen.query_one(DataTable).row_count == 6  # 3 DB, 2 HAProxy, the backup host
        assert not app.screen.query_one("#problems", Static).display
        await pilot.press("n")
        assert isinstance(app.screen, PlanScreen)


async def test_plan_names_the_bad_key_and_saves_good_answers(demo: Path) -> None:
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "n", "n")
        assert isinstance(app.screen, PlanScreen)
        before = (demo / "kbpg.toml").read_text()
        field = app.screen.query_one("#f-network-lb_address", Input)
        field.value = "10.0.0"
        await pilot.press("s")
        assert "network.lb_address: must be an IP address" in text_of(app, "#settings-errors")
        assert (demo / "kbpg.toml").read_text() == before
        field.value = "198.18.0.10"
        app.screen.query_one("#f-ports-pgbouncer", Input).value = "6433"
        await pilot.press("s")
        saved = tomllib.loads((demo / "kbpg.toml").read_text())
        assert saved["ports"]["pgbouncer"] == 6433
        assert "password" not in (demo / "kbpg.toml").read_text().lower()
        await pilot.press("n")
        assert isinstance(app.screen, InstallScreen)


async def test_install_screen_lays_out_hosts_by_steps(demo: Path) -> None:
    app = KbpgApp(demo)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("1", "n", "n", "n")
        assert isinstance(app.screen, InstallScreen)
        grid = app.screen.query_one("#grid", DataTable)
        assert [cell(grid, row, 0) for row in range(grid.row_count)] == [
            "local", "cluster", "db-master-01", "db-slave-01", "db-slave-02", "haproxy-01", "haproxy-02", "backup-01"]
        headers = [str(column.label) for column in grid.columns.values()]
        assert headers == ["\nhost", "00\ncreds", "01\nchecks", "02\npatroni", "03\nhaproxy", "04\nbouncer",
                           "05\nvector", "06\nbackups"]
        assert grid.virtual_size.width <= grid.size.width <= 80  # every step's column on screen, no sideways scrolling
        assert grid.region.height == 2 + 8  # the two-line header and every row
        await pilot.press("r")  # nothing failed yet: retry says so instead of running
        assert not app.screen.running


async def test_install_output_is_bounded_however_much_comes(demo: Path) -> None:
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "n", "n", "n")
        screen = app.screen
        for i in range(50_000):
            screen.pending_lines.append(ev.OutputLine("02", "db-slave-01", "stdout", f"line {i}"))
        screen.flush_output()
        await pilot.pause()
        log = screen.query_one(Log)
        assert len(log.lines) <= OUTPUT_LINES_PER_HOST
        assert len(screen.host_lines["db-slave-01"]) == OUTPUT_LINES_PER_HOST
        assert screen.host_lines["db-slave-01"][-1] == "line 49999"
        await pilot.press("right_square_bracket")  # view: db-master-01 (nothing), then on to db-slave-01
        await pilot.press("right_square_bracket")
        assert screen.view == "db-slave-01"
        assert "Output: db-slave-01" in text_of(app, "#output-title")


async def test_engine_events_fill_the_grid(demo: Path) -> None:
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "n", "n", "n")
        screen = app.screen
        screen.post_message(EngineEvent(ev.TaskStarted("02", "db-slave-01", "packages")))
        await pilot.pause()
        grid = screen.query_one("#grid", DataTable)
        assert str(grid.get_cell("db-slave-01", "02")) == "… packages"
        screen.post_message(EngineEvent(ev.TaskFinished("02", "db-slave-01", "packages", ev.Status.FAILED, "boom", 1.5)))
        screen.post_message(EngineEvent(ev.StepFinished("02", "Patroni cluster", ev.Status.FAILED, failed=1)))
        await pilot.pause()
        assert str(grid.get_cell("db-slave-01", "02")) == "✗ 1.5s"
        assert screen.failed_step == "02"


async def test_host_key_dialog_defaults_to_decline(demo: Path) -> None:
    app = KbpgApp(demo)
    answers: list[bool] = []
    async with app.run_test(size=SIZE) as pilot:
        event = ev.HostKeyUnknown("db-master-01", "198.18.0.120", "ssh-ed25519", "SHA256:" + "x" * 43)
        app.push_screen(HostKeyDialog(event), answers.append)
        await pilot.pause()
        shown = " ".join(str(widget.render()) for widget in app.screen.query(Static))
        assert "SHA256:" + "x" * 43 in shown and "db-master-01 (198.18.0.120)" in shown
        await pilot.press("enter")  # the focused button is Decline
        app.push_screen(HostKeyDialog(event), answers.append)
        await pilot.pause()
        await pilot.press("a")
    assert answers == [False, True]


async def test_help_and_summary(demo: Path) -> None:
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, WelcomeScreen)
        app.push_screen(SummaryScreen())
        await pilot.pause()
        summary = text_of(app, "#summary")
        assert "postgresql://kb_app:$POSTGRES_APP_PASS@198.18.0.10:6432/keybuzz" in summary
        assert "DemoOnlyNotASecret" not in summary


async def test_every_screen_fits_80x24(demo: Path) -> None:
    app = KbpgApp(demo)
    async with app.run_test(size=(80, 24)) as pilot:
        for key, kind in (("1", CredentialsScreen), ("n", HostsScreen), ("n", PlanScreen), ("n", InstallScreen)):
            await pilot.press(key)
            await pilot.pause()
            assert isinstance(app.screen, kind)
            footer = app.screen.query_one("Footer")
            assert footer.region.bottom == 24 and footer.region.height == 1


async def test_plan_toggles_rolling_restarts(demo: Path) -> None:
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "n", "n")
        from textual.widgets import Select

        app.screen.query_one("#f-patroni-apply_pending_restarts", Select).value = True
        await pilot.press("s")
        assert tomllib.loads((demo / "kbpg.toml").read_text())["patroni"]["apply_pending_restarts"] is True


async def test_plan_shows_each_timing_plans_worst_case_and_follows_the_choice(demo: Path) -> None:
    from textual.widgets import Select

    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "n", "n")
        assert text_of(app, "#rto-plans").splitlines() == [  # the demo's kbpg.toml chooses fast
            "▸ fast: ≤ 24.5 s, ≤ 25 s pooled", "  norm: ≤ 37 s, ≤ 39 s pooled", "  safe: ≤ 70 s, ≤ 73 s pooled"]
        tooltip = str(app.screen.query_one("#rto-plans", Static).tooltip)
        assert "norm: ≤ 37 s (LB:5432), ≤ 39 s (LB:6432) = ttl 30 + race 2 + promotion 2 + HAProxy 3 " \
               "(+ PgBouncer 2)" in tooltip
        assert "Worst case, fast: ≤ 24.5 s (LB:5432), ≤ 25 s (LB:6432)" in text_of(app, "#plan").replace("\n", " ")
        timing = app.screen.query_one("#f-patroni-timing_plan", Select)
        assert [value for _label, value in timing._options] == ["fast", "norm", "safe", "custom"]
        timing.value = "safe"
        await pilot.pause()
        assert text_of(app, "#rto-plans").splitlines()[2] == "▸ safe: ≤ 70 s, ≤ 73 s pooled"
        assert "Patroni timing: ttl 60, loop_wait 10, retry_timeout 20" in text_of(app, "#plan")
        await pilot.press("s")
        assert tomllib.loads((demo / "kbpg.toml").read_text())["patroni"]["timing_plan"] == "safe"


async def test_plan_sets_synchronous_replication_and_refuses_strict_without_it(demo: Path) -> None:
    from textual.widgets import Select

    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "n", "n")
        mode = app.screen.query_one("#f-patroni-synchronous_mode", Select)
        assert [value for _label, value in mode._options] == ["off", "on", "quorum"]
        assert "quorum: any one of the standbys" in str(mode.tooltip)
        strict = app.screen.query_one("#f-patroni-synchronous_mode_strict", Select)
        strict.value = True
        before = (demo / "kbpg.toml").read_text()
        await pilot.press("s")
        assert "patroni.synchronous_mode_strict: true needs patroni.synchronous_mode" in text_of(app, "#settings-errors")
        assert (demo / "kbpg.toml").read_text() == before
        mode.value = "quorum"
        await pilot.pause()
        assert "Synchronous replication: quorum, strict" in text_of(app, "#plan")
        await pilot.press("s")
        saved = tomllib.loads((demo / "kbpg.toml").read_text())["patroni"]
        assert (saved["synchronous_mode"], saved["synchronous_mode_strict"]) == ("quorum", True)


async def test_plan_tells_an_older_standard_plan_is_now_norm(demo: Path) -> None:
    path = demo / "kbpg.toml"
    path.write_text(path.read_text().replace('timing_plan = "fast"', 'timing_plan = "standard"')
                    .replace('synchronous_mode = "off"', "synchronous_mode = false"))
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "n", "n")
        assert isinstance(app.screen, PlanScreen)
        await pilot.pause()
        assert any("'standard' timing plan is now called 'norm'" in str(n.message) for n in app._notifications)
        assert text_of(app, "#rto-plans").splitlines()[1] == "▸ norm: ≤ 37 s, ≤ 39 s pooled"
        await pilot.press("s")
        saved = tomllib.loads(path.read_text())["patroni"]
        assert (saved["timing_plan"], saved["synchronous_mode"]) == ("norm", "off")


# An invalid kbpg.toml is the operator's work: the wizard shows every error with its key and never writes over it.

INVALID_ANSWERS = {
    "bad value": (lambda text: text.replace("version = 17", "version = 18"),
                  ["kbpg.toml: postgresql.version: must be one of 13, 14, 15, 16, 17 (got 18)"]),
    "unknown key": (lambda text: text.replace('lb_address = "198.18.0.10"', 'lb_adress = "198.18.0.10"'),
                    ["kbpg.toml: network.lb_adress: unknown key; allowed keys in [network]:"]),
    "not TOML": (lambda text: text.replace("[network]", "[network"),
                 ["kbpg.toml: not valid TOML:", "(at line 42, column 9)"]),
}


def break_answers(demo: Path, case: str) -> tuple[bytes, list[str]]:
    edit, expected = INVALID_ANSWERS[case]
    path = demo / "kbpg.toml"
    path.write_text(edit(path.read_text()))
    return path.read_bytes(), expected


def shown_text(app) -> str:
    return "\n".join(str(widget.render()) for widget in app.screen.query(Static) if widget.display)


@pytest.mark.parametrize("case", sorted(INVALID_ANSWERS))
async def test_an_invalid_kbpg_toml_is_shown_and_never_overwritten(demo: Path, case: str) -> None:
    from kbpg_tui.ui.screens.dialogs import InvalidAnswersDialog

    before, expected = break_answers(demo, case)
    app = KbpgApp(demo)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        welcome = text_of(app, "#answers-problems")
        assert all(line in welcome for line in expected), welcome
        assert "INVALID, 1 error(s)" in text_of(app, "#status")
        await pilot.press("1", "n")
        assert isinstance(app.screen, HostsScreen)
        await pilot.press("n")  # saving would write the defaults over the file: refused, the errors shown
        assert isinstance(app.screen, InvalidAnswersDialog)
        assert all(line in shown_text(app) for line in expected)
        await pilot.press("escape")
        assert isinstance(app.screen, HostsScreen)
        await pilot.press("n", "r")  # reloaded, still invalid: stays
        assert isinstance(app.screen, HostsScreen)
        # The plan screen refuses too (whatever leads there), and so does going on to the install.
        app.push_screen(PlanScreen())
        await pilot.pause()
        assert all(line in text_of(app, "#settings-errors") for line in expected)
        await pilot.press("s")
        assert isinstance(app.screen, InvalidAnswersDialog)
        await pilot.press("escape", "n")
        assert isinstance(app.screen, InvalidAnswersDialog)
        await pilot.press("escape", "escape", "escape", "escape")
        assert isinstance(app.screen, WelcomeScreen)
        await pilot.press("2")  # diagnostics does not run on defaults either
        await pilot.pause()
        assert "cannot run" in text_of(app, "#diag-status") and expected[0] in text_of(app, "#diag-status")
    assert (demo / "kbpg.toml").read_bytes() == before
    assert not list(demo.glob("kbpg.toml.bak*"))


async def test_a_fixed_kbpg_toml_is_reloaded_from_the_dialog(demo: Path) -> None:
    from kbpg_tui.ui.screens.dialogs import InvalidAnswersDialog

    valid = (demo / "kbpg.toml").read_text().replace('"198.18.0.10"', '"198.18.0.99"')
    break_answers(demo, "unknown key")
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "n", "n")
        assert isinstance(app.screen, InvalidAnswersDialog)
        (demo / "kbpg.toml").write_text(valid)  # the operator fixes it in an editor
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, PlanScreen)
        assert app.screen.query_one("#f-network-lb_address", Input).value == "198.18.0.99"
    assert tomllib.loads((demo / "kbpg.toml").read_text())["network"]["lb_address"] == "198.18.0.99"
    assert not list(demo.glob("kbpg.toml.bak*"))


async def test_saving_over_an_invalid_kbpg_toml_keeps_it_as_bak_first(demo: Path) -> None:
    before, _expected = break_answers(demo, "bad value")
    (demo / "kbpg.toml.bak").write_text("an older backup, kept\n")
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "n", "n", "b")  # the explicit choice
        await pilot.pause()
        assert isinstance(app.screen, PlanScreen)
    assert (demo / "kbpg.toml.bak").read_text() == "an older backup, kept\n"
    assert (demo / "kbpg.toml.bak.1").read_bytes() == before
    assert tomllib.loads((demo / "kbpg.toml").read_text())["postgresql"]["version"] == 16  # the defaults now


# Diagnostics: problems first, and the selected row's whole reason readable at 80×24. The results are made up
# (tests/ui/fabricated.py): no probe runs against anything here.


def check_rows(table: DataTable) -> list[tuple[int, str, str]]:
    return [(int(cell(table, row, 0)), cell(table, row, 2), cell(table, row, 3)) for row in range(table.row_count)]


def assert_problems_first(rows: list[tuple[int, str, str]]) -> None:
    verdicts = [verdict for _n, _target, verdict in rows]
    rank = {"✗ FAIL": 0, "! warn": 1, "✓ pass": 2}
    assert verdicts == sorted(verdicts, key=rank.__getitem__), verdicts
    for group in rank:
        numbers = [n for n, _target, verdict in rows if verdict == group]
        assert numbers == sorted(numbers), (group, numbers)


async def test_diagnostics_show_problems_first_and_the_whole_reason_at_80x24(demo: Path) -> None:
    from kbpg_tui.ui.screens.diagnostics import DiagnosticsDone
    from tests.ui import fabricated

    app = KbpgApp(demo)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = DiagnosticsScreen(autorun=False)
        app.push_screen(screen)
        await pilot.pause()
        screen.post_message(DiagnosticsDone(fabricated.report()))
        await pilot.pause()
        table = screen.query_one("#checks", DataTable)
        rows = check_rows(table)
        assert len(rows) == 33
        assert rows[:3] == [(3, "haproxy-02", "✗ FAIL"), (8, "haproxy-02:6432", "✗ FAIL"), (10, "LB 198.18.0.10:6432", "! warn")]
        assert_problems_first(rows)
        assert "2 fail, 1 warn, 30 pass" in text_of(app, "#diag-status")
        detail = screen.query_one("#check-detail", Static)
        assert "check 3 services — haproxy-02" in str(detail.render()) and fabricated.PGBOUNCER_DOWN in str(detail.render())
        await pilot.press("down")  # the cursor moves: the pane follows, with the long reason in full and on screen
        await pilot.pause()
        shown = str(detail.render())
        assert "✗ FAIL" in shown and "check 8 pgbouncer — haproxy-02:6432" in shown and fabricated.PGBOUNCER_REFUSED in shown
        lines_needed = 1 + -(-len(fabricated.PGBOUNCER_REFUSED) // (detail.content_region.width - 1))
        assert detail.region.height >= lines_needed and detail.region.bottom <= 23  # above the footer
        assert table.region.right <= 80
        await pilot.press("down")
        await pilot.pause()
        assert "! warn" in str(detail.render()) and "no HNSW index" in str(detail.render())


async def test_diagnostics_run_sorts_results_as_they_arrive(demo: Path, fake_diagnostics) -> None:
    """The screen's own worker, with the core's probes and cluster view replaced by made-up results."""
    import random

    from tests.ui import fabricated

    def shuffled(on_result, cancel):
        report = fabricated.report()
        for result in random.Random(7).sample(report.results, len(report.results)):
            on_result(result)
        return report

    fake_diagnostics(shuffled)
    app = KbpgApp(demo)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        screen = app.screen
        assert isinstance(screen, DiagnosticsScreen)
        for _ in range(50):
            await pilot.pause(0.05)
            if screen.report is not None:
                break
        await pilot.pause()
        rows = check_rows(screen.query_one("#checks", DataTable))
        assert len(rows) == 33 and rows[0] == (3, "haproxy-02", "✗ FAIL")
        assert_problems_first(rows)
        assert screen.query_one("#members", DataTable).row_count == 3
        assert "FAILURES" in text_of(app, "#diag-status")


async def test_a_host_that_stops_answering_is_named_in_its_cell_and_the_output(demo: Path) -> None:
    app = KbpgApp(demo)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("1", "n", "n", "n")
        screen = app.screen
        grid = screen.query_one("#grid", DataTable)
        for event in (ev.TaskStarted("02", "db-slave-01", "packages"), ev.TaskStarted("02", "db-slave-02", "packages"),
                      ev.HostSilent("02", "db-slave-01", 31.0), ev.HostSilent("02", "db-slave-01", 35.4)):
            screen.post_message(EngineEvent(event))
        await pilot.pause()
        assert str(grid.get_cell("db-slave-01", "02")) == "silent 35s"
        assert str(grid.get_cell("db-slave-02", "02")) == "… packages"
        assert grid.virtual_size.width <= grid.size.width  # still no sideways scrolling
        log = screen.query_one(Log)
        silent_lines = [line for line in log.lines if "not answering" in line]
        assert len(silent_lines) == 1 and silent_lines[0].startswith("db-slave-01| db-slave-01 is not answering")
        assert "db-slave-01 is not answering (35 s)" in text_of(app, "#install-status")
        await pilot.press("right_square_bracket", "right_square_bracket")  # db-slave-01's own output names it too
        assert screen.view == "db-slave-01"
        assert any(line.startswith("db-slave-01 is not answering") for line in screen.query_one(Log).lines)
        screen.post_message(EngineEvent(ev.HostAnswering("02", "db-slave-01")))
        await pilot.pause()
        assert str(grid.get_cell("db-slave-01", "02")) == "…"
        assert any("db-slave-01 answers again" in line for line in screen.query_one(Log).lines)
        # Silent again until the step gives up on it: the cell shows the failure, not the silence.
        screen.post_message(EngineEvent(ev.HostSilent("02", "db-slave-01", 30.0)))
        screen.post_message(EngineEvent(ev.TaskFinished("02", "db-slave-01", "packages", ev.Status.FAILED,
                                                        "db-slave-01 did not answer for 120 s", 150.0)))
        await pilot.pause()
        assert str(grid.get_cell("db-slave-01", "02")) == "✗ 150s"
        assert not screen.silent
        # An event without its step (a command outside a task) lands in the step that is running.
        for event in (ev.StepStarted("03", "HAProxy"), ev.HostSilent("", "haproxy-01", 42.0)):
            screen.post_message(EngineEvent(event))
        await pilot.pause()
        assert str(grid.get_cell("haproxy-01", "03")) == "silent 42s"


async def test_a_long_failure_is_wrapped_whole_in_the_output_at_80_columns(demo: Path) -> None:
    from tests.ui import fabricated

    app = KbpgApp(demo)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("1", "n", "n", "n")
        screen = app.screen
        for event in fabricated.install_events():
            screen.post_message(EngineEvent(event))
        await pilot.pause()
        log = screen.query_one(Log)
        assert all(len(line) <= log.scrollable_content_region.width for line in log.lines)
        joined = " ".join(line.strip() for line in log.lines)
        assert "E: Unable to locate package postgresql-17-pgvector" in joined


# The plan screen's fields come from the settings' own declaration (core/settings.py, _opt choices= and doc=).


def redeclare(monkeypatch: pytest.MonkeyPatch, section_class: type, name: str, **metadata) -> None:
    """Change what one setting declares (as an edit of core/settings.py would), for this test only."""
    import dataclasses
    import types

    fields = dict(section_class.__dataclass_fields__)
    changed = copy.copy(fields[name])
    changed.metadata = types.MappingProxyType({**fields[name].metadata, **metadata})
    fields[name] = changed
    monkeypatch.setattr(section_class, "__dataclass_fields__", fields)
    assert dataclasses.fields(section_class)  # still a dataclass


async def test_plan_fields_follow_the_settings_declaration(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from textual.widgets import Select

    from kbpg_tui.core import settings as cfg

    redeclare(monkeypatch, cfg.PgbouncerSettings, "pool_mode", choices=("transaction", "session"),
              doc="how PgBouncer shares server connections")
    redeclare(monkeypatch, cfg.PostgresqlSettings, "version", choices=(16, 17))
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "n", "n")
        assert isinstance(app.screen, PlanScreen)
        pooling = app.screen.query_one("#f-pgbouncer-pool_mode", Select)
        assert [value for _label, value in pooling._options] == ["transaction", "session"]
        assert "how PgBouncer shares server connections" in str(pooling.tooltip)
        version = app.screen.query_one("#f-postgresql-version", Select)
        assert [value for _label, value in version._options] == [16, 17]
        restarts = app.screen.query_one("#f-patroni-apply_pending_restarts", Select)  # a bool: false or true
        assert [value for _label, value in restarts._options] == [False, True]
        port = app.screen.query_one("#f-ports-pgbouncer", Input)
        assert "1..65535" in str(port.tooltip)


async def test_a_wide_subnet_needs_a_yes_before_the_install(demo: Path) -> None:
    path = demo / "kbpg.toml"
    text = path.read_text()
    assert 'private_subnet = "198.18.0.0/24"' in text
    path.write_text(text.replace('private_subnet = "198.18.0.0/24"', 'private_subnet = "198.0.0.0/8"'))
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1", "n", "n")
        assert isinstance(app.screen, PlanScreen)
        await pilot.press("n")
        assert isinstance(app.screen, ConfirmDialog)
        assert "network.private_subnet: 198.0.0.0/8 is wider than /16" in shown_text(app)
        await pilot.press("n")  # not confirmed: back on the plan, no install
        assert isinstance(app.screen, PlanScreen)
        await pilot.press("n", "y")
        assert isinstance(app.screen, InstallScreen)
