"""Rotating the secrets from the wizard's credentials screen (screens/rotation.py).

The core is replaced by stand-ins (``rotation.begin`` records what it is asked and returns a made-up rotation,
``rotation.steps`` gives one local step, run by the real engine): nothing touches a host. The core's rotation has
its own tests.
"""

from __future__ import annotations

import html
import re
import time
from pathlib import Path
from typing import Callable

import pytest
from textual.widgets import Button, Checkbox, Input, Static

from kbpg_tui.core import credentials as creds
from kbpg_tui.core import events as ev
from kbpg_tui.core import rotation, runlock
from kbpg_tui.core.engine import Engine, Outcome, Step, StepReport, Task, TaskError, TaskReport
from kbpg_tui.ui.app import KbpgApp
from kbpg_tui.ui.screens.credentials import CredentialsScreen
from kbpg_tui.ui.screens.dialogs import ConfirmDialog
from kbpg_tui.ui.screens.rotation import RotateScreen, RotationRunScreen, short_reason

from ..fakes import SlowWork
from .conftest import SIZE
from .test_quit import QUIT_SECONDS, FakeLock, quit_time, until

STRONG = "Quartz7-Meadow-Lantern-Violet-93"  # typed in the tests: never on the screen
WEAK = "password123"
NEW = {name: f"NewValue{i}xKq8Zr3Tm5Wv2Yp7" for i, name in enumerate(rotation.ROTATABLE)}  # the stand-in's "generated"


class FakeRotation:
    """``begin``'s and ``steps``' stand-ins. ``outcomes``: what each run of the step does in turn (an Outcome, or an
    exception to raise); ``seen`` records each run's ``ctx.credentials``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.calls: list[tuple[tuple[str, ...] | None, dict[str, str] | None]] = []
        self.started: rotation.Rotation | None = None
        self.outcomes: list[Callable[[], Outcome]] = []
        self.seen: list[object] = []
        self.error: Exception | None = None

    def begin(self, workdir: Path, names=None, typed=None) -> rotation.Rotation:
        self.calls.append((None if names is None else tuple(names), None if typed is None else dict(typed)))
        if self.error is not None:
            raise self.error
        current = creds.read_env(workdir / creds.ENV_FILE)
        chosen = tuple(names) if names else rotation.ROTATABLE
        values = {name: (typed or {}).get(name, NEW[name]) for name in chosen}
        self.started = rotation.Rotation(chosen, creds.Credentials({**current, **values}), current,
                                         resumed=names is None and (workdir / rotation.PENDING_FILE).exists())
        return self.started

    def steps(self, started: rotation.Rotation) -> list[Step]:
        def finish(run) -> Outcome:
            self.seen.append(run.ctx.credentials)
            outcome = self.outcomes.pop(0)() if self.outcomes else Outcome.changed("postgres.env written")
            creds.write_env(run.ctx.workdir / creds.ENV_FILE, started.credentials)  # as R6 does
            return outcome

        return [Step("R6", "postgres.env", [Task("postgres.env", "local", finish)])]


@pytest.fixture
def fake_rotation(demo: Path, monkeypatch: pytest.MonkeyPatch) -> FakeRotation:
    fake = FakeRotation(demo)
    monkeypatch.setattr(rotation, "begin", fake.begin)
    monkeypatch.setattr(rotation, "steps", fake.steps)
    return fake


def screen_text(app: KbpgApp) -> str:
    """Everything the screen shows, as text (the SVG screenshot without its markup)."""
    return html.unescape(re.sub(r"<[^>]+>", "", app.export_screenshot())).replace("\xa0", " ")


def secrets_of(demo: Path) -> list[str]:
    return [value for name, value in creds.read_env(demo / creds.ENV_FILE).items() if creds.is_secret_name(name)]


async def open_rotation(app: KbpgApp, pilot) -> RotateScreen:
    await pilot.press("1", "r")
    await pilot.pause()
    assert isinstance(app.screen, RotateScreen)
    return app.screen


async def type_into(pilot, screen: RotateScreen, name: str, value: str) -> None:
    screen.field(name).focus()
    await pilot.pause()
    await pilot.press(*value)


async def confirm_and_run(app: KbpgApp, pilot) -> RotationRunScreen:
    """The rotation's confirmation answered yes; waits for its run to end."""
    assert isinstance(app.screen, ConfirmDialog) and app.screen.title_text.startswith(("Rotate", "Finish"))
    await pilot.press("y")
    await until(pilot, lambda: isinstance(app.screen, RotationRunScreen))
    screen = app.screen
    await until(pilot, lambda: screen.worker is not None and not screen.running)
    return screen


def summary(screen: RotationRunScreen) -> str:
    return str(screen.query_one("#rotation-summary", Static).render())


# --- the action on the credentials screen ------------------------------------------------------------------------

async def test_no_rotation_without_postgres_env(fresh: Path) -> None:
    app = KbpgApp(fresh)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1")
        screen = app.screen
        assert isinstance(screen, CredentialsScreen)
        assert not screen.query_one("#rotate-row").display
        assert "r" not in screen.active_bindings
        await pilot.press("r")
        assert app.screen is screen


async def test_with_postgres_env_r_opens_the_rotation_of_every_rotatable_name(demo: Path) -> None:
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1")
        credentials = app.screen
        assert credentials.query_one("#rotate-row").display
        assert "Rotate secrets" in str(credentials.query_one("#rotate", Button).label)
        assert credentials.active_bindings["r"].binding.description == "Rotate secrets…"
        screen = await open_rotation_from(app, pilot)
        assert [box.label.plain for box in screen.query(Checkbox)] == list(rotation.ROTATABLE)
        assert all(box.value for box in screen.query(Checkbox)), "every name is ticked at first"
        assert all(field.password for field in screen.query(Input))
        text = screen_text(app)
        assert "PATRONI_RAFT_PASSWORD" in text and "not rotatable: cannot be rotated on a live cluster" in text
        assert not screen.query("#pick-PATRONI_RAFT_PASSWORD"), "Raft's password has no checkbox"
        await pilot.press("escape")
        assert app.screen is credentials


async def open_rotation_from(app: KbpgApp, pilot) -> RotateScreen:
    await pilot.press("r")
    await pilot.pause()
    assert isinstance(app.screen, RotateScreen)
    return app.screen


async def test_values_edited_on_the_credentials_screen_are_dropped_only_when_asked(demo: Path) -> None:
    """A rotation starts from postgres.env: values typed on the credentials screen and not exported would be
    silently lost, so the operator is asked first."""
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1")
        credentials = app.screen
        before = app.state.credentials["POSTGRES_APP_PASS"]
        app.state.credentials["POSTGRES_APP_PASS"], app.state.credentials_saved = STRONG, False  # edited (e)
        await pilot.press("r")
        assert isinstance(app.screen, ConfirmDialog) and app.screen.title_text == "Unsaved values"
        await pilot.press("n")
        assert app.screen is credentials and app.state.credentials["POSTGRES_APP_PASS"] == STRONG
        await pilot.press("r", "y")
        await pilot.pause()
        assert isinstance(app.screen, RotateScreen)
        assert app.state.credentials["POSTGRES_APP_PASS"] == before, "postgres.env read again"


async def test_an_unreadable_pending_file_is_named_on_the_credentials_screen(demo: Path) -> None:
    path = demo / rotation.PENDING_FILE
    path.write_text("POSTGRES_APP_PASS='never closed\n")
    path.chmod(0o600)
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1")
        hint = str(app.screen.query_one("#rotate-hint", Static).render())
        assert "rotation.pending" in hint and "never closed" not in hint
        assert "Finish the rotation" in str(app.screen.query_one("#rotate", Button).label)


def test_the_refusal_is_shortened_to_its_first_clause_and_its_procedure() -> None:
    reason = rotation.REFUSED["PATRONI_RAFT_PASSWORD"]
    short = short_reason("PATRONI_RAFT_PASSWORD", reason)
    assert short.startswith("cannot be rotated on a live cluster") and "README" in short
    assert len(short) < len(reason) and len(short) <= 160


# --- what begin() is asked --------------------------------------------------------------------------------------

async def test_unticked_names_are_not_asked_for(fake_rotation: FakeRotation) -> None:
    app = KbpgApp(fake_rotation.workdir)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_rotation(app, pilot)
        await pilot.press("space")  # the first name: POSTGRES_APP_PASS
        await pilot.press("tab", "tab", "space")  # past its field, the second: POSTGRES_SUPERPASS
        assert not screen.box("POSTGRES_APP_PASS").value and not screen.box("POSTGRES_SUPERPASS").value
        await pilot.press("ctrl+r")
        assert "POSTGRES_APP_PASS" not in app.screen.text and "Rotate 6 secrets" == app.screen.title_text
        await confirm_and_run(app, pilot)
    assert fake_rotation.calls == [(rotation.ROTATABLE[2:], {})]


async def test_every_name_ticked_asks_for_every_name(fake_rotation: FakeRotation) -> None:
    app = KbpgApp(fake_rotation.workdir)
    async with app.run_test(size=SIZE) as pilot:
        await open_rotation(app, pilot)
        await pilot.press("ctrl+r")
        await confirm_and_run(app, pilot)
    assert fake_rotation.calls == [(rotation.ROTATABLE, {})]


async def test_a_typed_value_is_asked_for_and_the_others_generated(fake_rotation: FakeRotation) -> None:
    app = KbpgApp(fake_rotation.workdir)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_rotation(app, pilot)
        await type_into(pilot, screen, "PGBOUNCER_ADMIN_PASS", STRONG)
        assert "strong" in str(screen.query_one("#strength-PGBOUNCER_ADMIN_PASS", Static).render())
        await pilot.press("ctrl+r")
        assert "typed: PGBOUNCER_ADMIN_PASS; the others generated" in app.screen.text
        await confirm_and_run(app, pilot)
    assert fake_rotation.calls == [(rotation.ROTATABLE, {"PGBOUNCER_ADMIN_PASS": STRONG})]


async def test_declining_the_confirmation_starts_nothing(fake_rotation: FakeRotation) -> None:
    app = KbpgApp(fake_rotation.workdir)
    async with app.run_test(size=SIZE) as pilot:
        await open_rotation(app, pilot)
        await pilot.press("ctrl+r", "n")
        assert isinstance(app.screen, RotateScreen)
    assert fake_rotation.calls == []


async def test_a_weak_typed_value_is_refused_unless_confirmed(fake_rotation: FakeRotation) -> None:
    app = KbpgApp(fake_rotation.workdir)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_rotation(app, pilot)
        await type_into(pilot, screen, "POSTGRES_APP_PASS", WEAK)
        assert "weak" in str(screen.query_one("#strength-POSTGRES_APP_PASS", Static).render())
        await pilot.press("ctrl+r")
        dialog = app.screen
        assert isinstance(dialog, ConfirmDialog) and dialog.title_text == "Weak password"
        assert dialog.text.startswith("POSTGRES_APP_PASS: ") and WEAK not in dialog.text
        await pilot.press("n")  # not kept: nothing starts
        assert app.screen is screen and fake_rotation.calls == []
        await pilot.press("ctrl+r", "y")  # kept: then the rotation's own confirmation
        await confirm_and_run(app, pilot)
    assert fake_rotation.calls == [(rotation.ROTATABLE, {"POSTGRES_APP_PASS": WEAK})]


async def test_a_value_that_cannot_be_stored_is_refused_naming_the_variable(fake_rotation: FakeRotation) -> None:
    app = KbpgApp(fake_rotation.workdir)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_rotation(app, pilot)
        screen.field("HAPROXY_STATS_PASSWORD").value = "Quartz7-Meadow\tLantern-Violet"  # a pasted tab
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert app.screen is screen, "no dialog: refused at once"
        problem = str(screen.query_one("#rotate-problem", Static).render())
        assert problem.startswith("HAPROXY_STATS_PASSWORD contains a control character")
    assert fake_rotation.calls == []


async def test_a_value_typed_for_an_unticked_name_is_refused(fake_rotation: FakeRotation) -> None:
    app = KbpgApp(fake_rotation.workdir)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_rotation(app, pilot)
        await type_into(pilot, screen, "POSTGRES_REPL_PASS", STRONG)
        assert screen.box("POSTGRES_REPL_PASS").value, "typing a value ticks its name"
        screen.box("POSTGRES_REPL_PASS").value = False
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert app.screen is screen
        assert "POSTGRES_REPL_PASS: a value is typed but the name is not ticked" in str(
            screen.query_one("#rotate-problem", Static).render())
    assert fake_rotation.calls == []


async def test_nothing_ticked_is_refused(fake_rotation: FakeRotation) -> None:
    app = KbpgApp(fake_rotation.workdir)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_rotation(app, pilot)
        for box in screen.query(Checkbox):
            box.value = False
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert app.screen is screen and "no name is ticked" in str(screen.query_one("#rotate-problem", Static).render())
    assert fake_rotation.calls == []


async def test_the_cores_refusal_is_shown_and_nothing_runs(fake_rotation: FakeRotation) -> None:
    fake_rotation.error = rotation.RotationError("POSTGRES_APP_PASS: the new value is the current one")
    app = KbpgApp(fake_rotation.workdir)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_rotation(app, pilot)
        await pilot.press("ctrl+r", "y")
        await pilot.pause()
        assert app.screen is screen
        assert str(screen.query_one("#rotate-problem", Static).render()) == str(fake_rotation.error)


# --- a pending rotation ----------------------------------------------------------------------------------------

def plant_pending(demo: Path) -> None:
    path = demo / rotation.PENDING_FILE
    path.write_text(f"POSTGRES_APP_PASS='{NEW['POSTGRES_APP_PASS']}'\n")
    path.chmod(0o600)


async def test_a_pending_rotation_is_finished_with_the_same_command(fake_rotation: FakeRotation) -> None:
    plant_pending(fake_rotation.workdir)
    app = KbpgApp(fake_rotation.workdir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1")
        credentials = app.screen
        assert "Finish the rotation" in str(credentials.query_one("#rotate", Button).label)
        assert "A rotation of POSTGRES_APP_PASS is pending" in str(credentials.query_one("#rotate-hint", Static).render())
        assert credentials.active_bindings["r"].binding.description == "Finish the rotation"
        screen = await open_rotation_from(app, pilot)
        assert screen.finishing
        assert not any(field.display for field in screen.query(Input)), "nothing can be typed"
        assert [box.label.plain for box in screen.query(Checkbox) if box.value] == ["POSTGRES_APP_PASS"]
        assert all(box.disabled for box in screen.query(Checkbox))
        await pilot.press("ctrl+r")
        assert app.screen.title_text == "Finish the rotation"
        run = await confirm_and_run(app, pilot)
        assert run.done and "(resumed)" in str(run.query_one("#install-title", Static).render())
    assert fake_rotation.calls == [(None, None)], "begin() with no name and nothing typed: the pending one"


# --- the run --------------------------------------------------------------------------------------------------

async def test_the_run_converges_to_the_rotations_values_and_says_where_the_files_are(
        fake_rotation: FakeRotation) -> None:
    app = KbpgApp(fake_rotation.workdir)
    async with app.run_test(size=SIZE) as pilot:
        await open_rotation(app, pilot)
        await pilot.press("ctrl+r")
        run = await confirm_and_run(app, pilot)
        assert run.done
        assert fake_rotation.seen == [fake_rotation.started.credentials]
        assert fake_rotation.seen[0] is fake_rotation.started.credentials
        text = summary(run)
        assert "changed 1, unchanged 0, failed 0" in text
        assert "demo/credentials/postgres.env holds the new values: applications must reload it" in text
        assert "demo/credentials/postgres.env.prev (0600)" in text
        assert app.state.credentials["POSTGRES_APP_PASS"] == NEW["POSTGRES_APP_PASS"], "the wizard reads the new file"
        await pilot.press("escape")
        assert isinstance(app.screen, CredentialsScreen)


async def test_a_failed_rotation_says_what_is_kept_and_r_runs_it_again(fake_rotation: FakeRotation) -> None:
    def fails() -> Outcome:
        raise TaskError("haproxy-02: PgBouncer refuses the new POSTGRES_APP_PASS")

    fake_rotation.outcomes = [fails]
    app = KbpgApp(fake_rotation.workdir)
    async with app.run_test(size=SIZE) as pilot:
        await open_rotation(app, pilot)
        await pilot.press("ctrl+r")
        run = await confirm_and_run(app, pilot)
        assert not run.done
        text = summary(run)
        assert "Step R6 failed (changed 0, unchanged 0, failed 1): local: haproxy-02: PgBouncer refuses the new " \
               "POSTGRES_APP_PASS" in text
        assert "postgres.env keeps the old values (a copy: postgres.env.prev), the new ones wait in rotation.pending, " \
               "all in demo/credentials. r runs the rotation again" in text
        await pilot.press("r")
        await until(pilot, lambda: not run.running and run.done)
        assert "changed 1, unchanged 0, failed 0" in summary(run)
    assert len(fake_rotation.calls) == 1 and len(fake_rotation.seen) == 2


async def test_no_value_is_ever_on_the_screen(fake_rotation: FakeRotation) -> None:
    shown: list[str] = []
    app = KbpgApp(fake_rotation.workdir)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_rotation(app, pilot)
        await type_into(pilot, screen, "POSTGRES_APP_PASS", STRONG)
        await type_into(pilot, screen, "POSTGRES_SUPERPASS", WEAK)
        shown.append(screen_text(app))
        assert "•" * len(STRONG) in shown[-1], "the typed value is drawn, masked"
        await pilot.press("ctrl+r")
        shown.append(screen_text(app))  # the weak password's question
        await pilot.press("y")
        shown.append(screen_text(app))  # the confirmation
        run = await confirm_and_run(app, pilot)
        assert run.done
        shown.append(screen_text(app))
        await pilot.press("escape")
        shown.append(screen_text(app))  # the credentials screen, after the rotation
    secrets = [*secrets_of(fake_rotation.workdir), *secrets_of(Path(__file__).parent / "demo"), STRONG, WEAK,
               *NEW.values()]
    for text in shown:
        for secret in secrets:
            assert secret not in text


# --- cancel and quit, as the install screen ---------------------------------------------------------------------

@pytest.fixture
def long_rotation(fake_rotation: FakeRotation, monkeypatch: pytest.MonkeyPatch):
    """A rotation step on the DB nodes that runs for 30 s unless cancelled; the run lock is a recorder."""
    work = SlowWork(30)
    lock = FakeLock()
    commands: list[str] = []

    def steps(started):
        return [Step("R1", "Roles", [Task("roles", "db", lambda run: Outcome.changed())])]

    def run(self, steps):
        step = steps[0]
        status = ev.Status.CANCELLED if work.wait(self.ctx.cancel) else ev.Status.UNCHANGED
        self.ctx.sink(ev.StepFinished(step.number, step.title, status))
        return [StepReport(step, status, 0.1, [TaskReport(step.number, "db-master-01", "roles", status, "", 0.1, [])])]

    def acquire(run, command):
        commands.append(command)
        return lock

    monkeypatch.setattr(rotation, "steps", steps)
    monkeypatch.setattr(Engine, "run", run)
    monkeypatch.setattr(runlock, "acquire_for_run", acquire)
    return work, lock, commands


def test_quit_during_a_rotation_cancels_it_and_releases_the_lock(fake_rotation: FakeRotation, long_rotation) -> None:
    work, lock, commands = long_rotation

    async def start(app, pilot) -> None:
        await open_rotation(app, pilot)
        await pilot.press("ctrl+r", "y")
        await until(pilot, work.started.is_set)

    seconds = quit_time(KbpgApp(fake_rotation.workdir), start)
    assert seconds < QUIT_SECONDS
    assert work.cancelled_at is not None, "the engine never saw the cancel"
    assert lock.released == 1
    assert commands == [f"kbpg wizard: credentials rotate {' '.join(rotation.ROTATABLE)}"]


async def test_c_cancels_the_rotation_and_says_how_to_resume(fake_rotation: FakeRotation, long_rotation) -> None:
    work, lock, _commands = long_rotation
    app = KbpgApp(fake_rotation.workdir)
    async with app.run_test(size=SIZE) as pilot:
        await open_rotation(app, pilot)
        await pilot.press("ctrl+r", "y")
        await until(pilot, work.started.is_set)
        run = app.screen
        await pilot.press("escape")
        assert app.screen is run, "escape does not leave a running rotation"
        pressed = time.monotonic()
        await pilot.press("c")
        await until(pilot, lambda: not run.running)
        assert work.cancelled_at is not None and work.cancelled_at - pressed < 1.0
        assert "Cancelled at step R1" in summary(run) and "postgres.env keeps the old values" in summary(run)
        assert lock.released == 1


# --- with the core's own begin() and steps() (the engine and the run lock stand-ins: no host) ----------------------

async def test_the_cores_rotation_is_run_with_its_values(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = demo / creds.ENV_FILE
    current = creds.read_env(env)
    creds.write_env(env, creds.Credentials({**current, "POSTGRES_MONITOR_USER": "kb_monitor",
                                            "POSTGRES_MONITOR_PASS": "Mon1tor-Quartz-Lantern-77"}))
    given: list[tuple[list[str], creds.Credentials]] = []
    commands: list[str] = []

    def run(self, steps):
        given.append(([step.number for step in steps], self.ctx.credentials))
        return [StepReport(step, ev.Status.UNCHANGED, 0.0, []) for step in steps]

    def acquire(run, command):
        commands.append(command)
        return FakeLock()

    monkeypatch.setattr(Engine, "run", run)
    monkeypatch.setattr(runlock, "acquire_for_run", acquire)
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_rotation(app, pilot)
        for name in rotation.ROTATABLE:
            screen.box(name).value = name == "POSTGRES_APP_PASS"
        await type_into(pilot, screen, "POSTGRES_APP_PASS", STRONG)
        await pilot.press("ctrl+r")
        run_screen = await confirm_and_run(app, pilot)
        assert run_screen.done
        assert screen_text(app).count(STRONG) == 0
    [(numbers, credentials)] = given
    assert numbers[0] == "R0" and numbers[-2:] == ["R5", "R6"] and "R1" in numbers and "R4" not in numbers
    assert credentials["POSTGRES_APP_PASS"] == STRONG
    assert credentials["POSTGRES_SUPERPASS"] == current["POSTGRES_SUPERPASS"], "only the ticked name changes"
    assert commands == ["kbpg wizard: credentials rotate POSTGRES_APP_PASS"]
    assert rotation.pending_names(demo) == ("POSTGRES_APP_PASS",), "recorded before any host is touched"
