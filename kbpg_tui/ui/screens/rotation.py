"""Rotating the cluster's secrets (``kbpg credentials rotate`` from the wizard), opened from the credentials screen.

:class:`RotateScreen` (``flows.SIDE["rotate"]``) picks what to rotate: one checkbox per rotatable name (all ticked),
each with a password field for a typed value (empty: generated); a typed value is checked as on the credentials
screen (``credentials.check_value``; a weak one only once confirmed). Raft's password is listed as not rotatable,
with the core's reason. A confirmation says what happens; then ``rotation.begin`` records the new values under
credentials/ and :class:`RotationRunScreen` runs ``rotation.steps`` on the engine.

While a rotation is pending (killed, failed, cancelled), the same screen offers only to finish it: ``begin`` with
no name and nothing typed takes it up again with its own values.

:class:`RotationRunScreen` is the install screen (its grid of steps × hosts, output, cancel, quit) with the
rotation's steps, ``run.ctx.credentials = rotation.credentials``, and its own end: what changed, where postgres.env
and postgres.env.prev are, and ``r`` to run it again after a failure.

No value is ever shown: the fields are password fields, and the lines name variables only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Checkbox, Footer, Header, Input, Static

from ...core import credentials as creds
from ...core import events as ev
from ...core import install as inst
from ...core import rotation
from ...core.engine import LOCAL, Step
from ..text import show, strength_text, weakness
from .dialogs import ConfirmDialog
from .progress import RunDone, RunFailed, RunScreen

FAILURE_SHOWN = 120  # characters of the first failure in the summary (the output has it whole)


def short_reason(name: str, reason: str) -> str:
    """REFUSED's reason cut to one or two lines: its first clause and its last sentence (the manual procedure)."""
    first = reason.split(":", 1)[0].strip()
    if first.startswith(name):
        first = first[len(name):].strip()
    sentences = [s for s in re.split(r"(?<=[.)])\s+", reason.strip()) if s]
    last = sentences[-1] if len(sentences) > 1 else ""
    return f"{first.rstrip('.')}. {last}".strip() if last and last not in first else first


def plan_text(names: Sequence[str], typed: Sequence[str], finishing: bool) -> str:
    """What a rotation does, for the confirmation (names only: never a value)."""
    if finishing:
        what = (f"The pending rotation of {', '.join(names)} is run again with its own new values "
                "(credentials/rotation.pending); each part skips what is already done.")
    else:
        generated = [name for name in names if name not in typed]
        every = set(names) == set(rotation.ROTATABLE)
        what = f"New values for all {len(names)} rotatable secrets" if every else f"New values for {', '.join(names)}"
        if typed:
            what += f" (typed: {', '.join(typed)}; " + ("the others generated)" if generated else "nothing generated)")
        else:
            what += " (generated)"
        what += "."
    return (f"{what}\n\n"
            "They are set on every host, each where it is checked before where it is presented (roles, PgBouncer, "
            "Patroni with replicas first, HAProxy), then every secret is checked, new and old. No restart, no "
            "failover, no outage: open connections stay up.\n\n"
            "credentials/postgres.env is rewritten only once the new values work everywhere; the current one is "
            "kept as credentials/postgres.env.prev (0600). Applications must then reload postgres.env.")


class RotateScreen(Screen):
    """Which secrets to rotate, and their typed values; or, with a rotation pending, finishing it."""

    BINDINGS = [
        Binding("ctrl+r", "rotate", "Rotate…", priority=True),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.pending: tuple[str, ...] | None = None
        self.pending_problem = ""

    @property
    def finishing(self) -> bool:
        return self.pending is not None

    def compose(self) -> ComposeResult:
        state = self.app.state
        self.pending, self.pending_problem = state.pending_rotation()
        yield Header()
        if self.finishing:
            yield Static("Finish the rotation — it stopped before postgres.env was rewritten", classes="title")
            yield Static(Text(self.pending_problem or
                              f"A rotation of {', '.join(self.pending or ())} is pending: its new values are in "
                              "credentials/rotation.pending and some hosts may already hold them. Finishing runs it "
                              "again with the same values."), classes="hint", id="rotate-hint")
        else:
            yield Static("Rotate secrets — new values on every host, no restart, no failover", classes="title")
            yield Static("space ticks a name; type a new value or leave it empty (generated); tab: next",
                         classes="hint", id="rotate-hint")
        where = rotation.WHERE
        with VerticalScroll(id="rotate-names"):
            for name in rotation.ROTATABLE:
                with Horizontal(classes="rotate-name"):
                    ticked = name in self.pending if self.finishing else True
                    box = Checkbox(name, value=ticked, id=f"pick-{name}", compact=True, disabled=self.finishing)
                    if name in where:
                        box.tooltip = f"used by {where[name]}"
                    yield box
                    field = Input(password=True, compact=True, id=f"value-{name}", placeholder="empty: generated")
                    field.display = not self.finishing
                    yield field
                    yield Static("pending" if self.finishing and ticked else "", id=f"strength-{name}",
                                 classes="rotate-strength")
            for name, reason in rotation.REFUSED.items():
                with Horizontal(classes="rotate-name rotate-refused"):
                    yield Static(name, classes="rotate-refused-name")
                    line = Static(Text(f"not rotatable: {short_reason(name, reason)}"), classes="rotate-refused-reason")
                    line.tooltip = reason
                    yield line
        yield Static("", id="rotate-problem", classes="problems")
        with Horizontal(id="rotate-actions"):
            label = "Finish the rotation… (ctrl+r)" if self.finishing else "Rotate… (ctrl+r)"
            yield Button(label, id="rotate-go", variant="warning", compact=True)
            yield Button("Back (esc)", id="rotate-back", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        show(self.query_one("#rotate-problem", Static), "")
        if self.finishing:
            self.query_one("#rotate-go", Button).focus()
        else:
            self.query_one(f"#pick-{rotation.ROTATABLE[0]}", Checkbox).focus()

    # the fields

    def box(self, name: str) -> Checkbox:
        return self.query_one(f"#pick-{name}", Checkbox)

    def field(self, name: str) -> Input:
        return self.query_one(f"#value-{name}", Input)

    def on_input_changed(self, event: Input.Changed) -> None:
        name = (event.input.id or "").removeprefix("value-")
        if name not in rotation.ROTATABLE:
            return
        if event.value and not self.box(name).value:
            self.box(name).value = True  # a value typed for a name means rotating it
        if not event.value:
            text = Text("")
        else:
            text = Text(strength_text(name, event.value), style="bold red" if weakness(name, event.value) else "")
        self.query_one(f"#strength-{name}", Static).update(text)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.focus_next()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "rotate-go":
            self.action_rotate()
        elif event.button.id == "rotate-back":
            self.action_back()

    # rotating

    def chosen(self) -> tuple[list[str], dict[str, str], list[str]]:
        """The ticked names, the values typed, and the problems (one line each, naming the variable)."""
        names = [name for name in rotation.ROTATABLE if self.box(name).value]
        typed = {name: self.field(name).value for name in rotation.ROTATABLE if self.field(name).value}
        problems = []
        if not names:
            problems.append("no name is ticked: tick at least one to rotate (space)")
        for name, value in typed.items():
            if name not in names:
                problems.append(f"{name}: a value is typed but the name is not ticked: tick it or clear the value")
            elif (problem := creds.check_value(name, value)):
                problems.append(problem)
        return names, typed, problems

    def action_rotate(self) -> None:
        problem = self.query_one("#rotate-problem", Static)
        if self.finishing:
            show(problem, "")
            self.app.push_screen(ConfirmDialog("Finish the rotation", plan_text(self.pending or (), (), True),
                                               yes="Finish it"),
                                 lambda yes: self.start(None, None) if yes else None)
            return
        names, typed, problems = self.chosen()
        show(problem, "\n".join(problems))
        if problems:
            return
        weak = {name: reasons for name, value in typed.items() if (reasons := weakness(name, value))}
        if weak:
            lines = "\n".join(f"{name}: {reasons}." for name, reasons in weak.items())
            self.app.push_screen(ConfirmDialog("Weak password" + ("s" if len(weak) > 1 else ""),
                                               f"{lines}\nKeep {'them' if len(weak) > 1 else 'it'} anyway?",
                                               yes="Keep"),
                                 lambda keep: self.confirm(names, typed) if keep else None)
            return
        self.confirm(names, typed)

    def confirm(self, names: list[str], typed: dict[str, str]) -> None:
        count = f"{len(names)} secret{'s' if len(names) > 1 else ''}"
        self.app.push_screen(ConfirmDialog(f"Rotate {count}", plan_text(names, list(typed), False), yes="Rotate"),
                             lambda yes: self.start(names, typed) if yes else None)

    def start(self, names: list[str] | None, typed: dict[str, str] | None) -> None:
        """``rotation.begin`` (the new values recorded under credentials/, nothing on the hosts yet), then its run."""
        try:
            started = rotation.begin(self.app.state.workdir, names, typed)
        except (rotation.RotationError, creds.CredentialsError, OSError) as exc:
            show(self.query_one("#rotate-problem", Static), str(exc))
            return
        self.app.switch_screen(RotationRunScreen(started))

    def action_back(self) -> None:
        self.app.pop_screen()


class RotationRunScreen(RunScreen):
    """A rotation's run: the install's progress display (screens/progress.py) with the rotation's steps and end."""

    WHAT = "rotation"
    SHORT_TITLES = {"R6": "env"}  # seven columns in 80
    BINDINGS = [
        Binding("s", "start", "Run again"),
        Binding("c", "cancel", "Cancel"),
        Binding("r", "retry", "Run again", show=False),
        Binding("left_square_bracket", "previous_host", "Prev host", key_display="["),
        Binding("right_square_bracket", "next_host", "Next host", key_display="]"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, started: rotation.Rotation) -> None:
        super().__init__()
        self.rotation = started
        self.plan: list[Step] = list(rotation.steps(started))

    # what the run screen asks

    def planned_steps(self) -> Sequence[Step]:
        return self.plan

    def title_text(self, count: str) -> str:
        names = self.rotation.names
        what = f"{len(names)} secret{'s' if len(names) > 1 else ''}"
        return f"Rotation of {what}{' (resumed)' if self.rotation.resumed else ''} — {count}. c cancels (safe)"

    def prepared(self, run: inst.Run) -> None:
        run.ctx.credentials = self.rotation.credentials  # the values every step converges to

    def lock_command(self, steps: Sequence[Step]) -> str:
        return f"kbpg wizard: credentials rotate {' '.join(self.rotation.names)}"

    # its own

    def on_mount(self) -> None:  # the run screen's on_mount runs too (Textual calls each class's handler)
        self.mount(Static("", id="rotation-summary"), after="#progress-row")
        show(self.query_one("#rotation-summary", Static), "")
        self.action_start()

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        workdir = self.app.state.workdir
        return workdir / creds.ENV_FILE, workdir / rotation.PREV_FILE, workdir / rotation.PENDING_FILE

    def action_start(self) -> None:
        if self.done:
            self.notify("the rotation is done; a new one starts from the credentials screen")
            return
        show(self.query_one("#rotation-summary", Static), "")
        self.launch(list(self.plan))

    def action_retry(self) -> None:
        """Every step again, with the same values: each converges, so what is done is found unchanged."""
        if not self.running:
            self.action_start()

    def summary(self, text: str, ok: bool) -> None:
        """The end, under the progress bar, and whole in the output (the line may be cut at 80×24)."""
        line = self.query_one("#rotation-summary", Static)
        line.set_class(ok, "ok")
        line.set_class(not ok, "warnings")
        show(line, text)
        self.record(LOCAL, text)

    def not_rotated(self) -> str:
        env, prev, pending = self.paths
        return (f"{env.name} keeps the old values (a copy: {prev.name}), the new ones wait in {pending.name}, all in "
                f"{env.parent}. r runs the rotation again (later: r on the credentials screen).")

    def on_run_failed(self, message: RunFailed) -> None:  # the run screen's handler shows the status too
        self.summary(f"Nothing was run. {self.not_rotated()}", False)

    def on_run_done(self, message: RunDone) -> None:
        self.running = False
        reports = message.reports
        counts = inst.summarize(reports)
        figures = f"changed {counts['changed']}, unchanged {counts['unchanged']}, failed {counts['failed']}"
        ok = bool(reports) and all(r.status in (ev.Status.CHANGED, ev.Status.UNCHANGED) for r in reports)
        self.done = ok
        if ok:
            self.app.state.load_credentials()  # postgres.env now holds the new values
            env, prev, _pending = self.paths
            names = self.rotation.names
            what = (f"all {len(names)} rotatable secrets" if set(names) == set(rotation.ROTATABLE)
                    else ", ".join(names))
            self.set_status("rotated — escape: back")
            self.summary(f"Rotated {what} ({figures}). {env} holds the new values: applications must reload it; "
                         f"open connections stay up. The old values: {prev} (0600); delete it once every "
                         "application has reloaded.", True)
            self.notify("Rotation complete.")
            return
        if counts["cancelled"] or any(r.status == ev.Status.CANCELLED for r in reports):
            self.set_status(f"cancelled at step {self.failed_step} — r resumes")
            self.summary(f"Cancelled at step {self.failed_step} ({figures}). {self.not_rotated()}", False)
            return
        failures = [f"{t.host}: {t.detail}" for r in reports for t in r.failures]
        first = failures[0] if failures else ""
        if len(first) > FAILURE_SHOWN:
            first = first[:FAILURE_SHOWN - 1] + "…"
        self.set_status(f"step {self.failed_step} failed — r runs the rotation again")
        self.summary(f"Step {self.failed_step} failed ({figures}): {first}\n{self.not_rotated()}", False)
