"""Credentials: generate or type each value, see its strength, reveal/hide, export to credentials/postgres.env.

Once postgres.env exists, ``r`` (or the button) opens the rotation of the cluster's secrets (screens/rotation.py,
``flows.SIDE["rotate"]``); while a rotation is pending, the same key finishes it.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, Static

from ...core import credentials as creds
from ..text import show, strength_text, weakness

MASK = "••••••••••••"
NAMES = list(dict.fromkeys((*creds.REQUIRED_NAMES, *creds.USER_NAMES, *creds.PASSWORD_NAMES)))


class CredentialsScreen(Screen):
    BINDINGS = [
        Binding("g", "generate", "Generate missing"),
        Binding("e", "edit", "Edit"),
        Binding("v", "reveal", "Reveal/hide"),
        Binding("x", "export", "Export"),
        Binding("n", "next", "Next"),
        Binding("r", "rotate", "Rotate secrets…"),
        Binding("r", "finish_rotation", "Finish the rotation"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.revealed = False
        self.editing: str | None = None
        self.rotation_kind = "none"  # "none" | "rotate" | "finish", as of the last refresh_rotation()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Credentials — written to credentials/postgres.env (0600); names are read by later modules.",
                     classes="title")
        yield Static("", id="cred-problem", classes="problems")
        table = DataTable(id="credentials", cursor_type="row", zebra_stripes=True)
        table.add_columns("name", "value", "strength", "origin")
        yield table
        with Horizontal(id="rotate-row"):
            yield Static("", id="rotate-hint", classes="hint")
            yield Button("Rotate secrets… (r)", id="rotate", compact=True)
        with Vertical(id="editor"):
            yield Static("", id="editor-label")
            yield Input(password=True, id="editor-input")
            yield Static("", id="editor-strength", classes="hint")
        yield Footer()

    def on_mount(self) -> None:
        state = self.app.state
        show(self.query_one("#cred-problem", Static), f"{state.credentials_error}\nFix or move the file: kbpg never "
             "overwrites credentials it cannot read." if state.credentials_error else "")
        self.refresh_table()
        self.refresh_rotation()
        self.query_one(DataTable).focus()

    def on_screen_resume(self) -> None:
        """Back from a rotation: postgres.env may hold new values, a rotation may be pending or done."""
        self.refresh_table()
        self.refresh_rotation()

    # rotation (screens/rotation.py)

    def refresh_rotation(self) -> None:
        """The rotation's row: none without postgres.env (nothing installed to rotate), "Rotate secrets…", or
        "Finish the rotation" while credentials/rotation.pending exists."""
        state = self.app.state
        names, problem = state.pending_rotation() if state.env_path.exists() else (None, "")
        self.rotation_kind = "none" if not state.env_path.exists() else "rotate" if names is None else "finish"
        self.query_one("#rotate-row").display = self.rotation_kind != "none"
        button = self.query_one("#rotate", Button)
        hint = self.query_one("#rotate-hint", Static)
        if self.rotation_kind == "finish":
            button.label, button.variant = "Finish the rotation… (r)", "warning"
            hint.update(Text(problem or f"A rotation of {', '.join(names or ())} is pending: finish it (kbpg install "
                                        "refuses to run until then)."))
        else:
            button.label, button.variant = "Rotate secrets… (r)", "default"
            hint.update("Passwords changed on every host, no outage:")
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """r is "Rotate secrets…" or "Finish the rotation", as the case is; neither without postgres.env."""
        if action == "rotate":
            return self.rotation_kind == "rotate"
        if action == "finish_rotation":
            return self.rotation_kind == "finish"
        return True

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "rotate":
            self.action_rotate()

    def action_finish_rotation(self) -> None:
        self.action_rotate()  # the rotation's view sees the pending rotation and offers to finish it

    def action_rotate(self) -> None:
        state = self.app.state
        if self.editing:
            return
        if not state.env_path.exists():
            self.notify("no credentials/postgres.env: nothing to rotate before a cluster is installed", severity="error")
            return
        if state.credentials_error:
            self.notify("postgres.env is unreadable: fix it first", severity="error")
            return
        if not state.credentials_saved:
            from .dialogs import ConfirmDialog

            self.app.push_screen(ConfirmDialog(
                "Unsaved values", "Values edited here are not saved in postgres.env. A rotation starts from "
                "postgres.env, the values the cluster uses, and takes its new values in its own view.\n"
                "Drop the values edited here?", yes="Drop them"), self._drop_edits_and_rotate)
            return
        self.app.open_side("rotate")

    def _drop_edits_and_rotate(self, drop: bool | None) -> None:
        if not drop:
            return
        self.app.state.load_credentials()
        self.refresh_table()
        self.app.open_side("rotate")

    # table

    def refresh_table(self) -> None:
        state = self.app.state
        table = self.query_one(DataTable)
        row = table.cursor_row
        table.clear()
        for name in NAMES:
            value = state.credentials.get(name)
            if value is None:
                shown = "—"
            elif creds.is_secret_name(name) and not self.revealed:
                shown = MASK
            else:
                shown = value
            table.add_row(name, shown, strength_text(name, value), state.origins.get(name, "missing" if value is None else ""),
                          key=name)
        if row is not None and 0 <= row < table.row_count:
            table.move_cursor(row=row)

    def selected_name(self) -> str:
        table = self.query_one(DataTable)
        return NAMES[table.cursor_row]

    # actions

    def action_generate(self) -> None:
        state = self.app.state
        if state.credentials_error:
            self.notify("postgres.env is unreadable: fix it first", severity="error")
            return
        values, generated = creds.generate(state.credentials)
        state.credentials = values
        for name in generated:
            state.origins[name] = "generated"
        if generated:
            state.credentials_saved = False
        self.notify(f"generated {len(generated)} value(s); existing values kept" if generated else "nothing missing")
        self.refresh_table()

    def action_reveal(self) -> None:
        self.revealed = not self.revealed
        self.refresh_table()

    def action_edit(self) -> None:
        name = self.selected_name()
        self.editing = name
        editor = self.query_one("#editor")
        editor.add_class("visible")
        field = self.query_one("#editor-input", Input)
        field.password = creds.is_secret_name(name)
        field.value = ""
        existing = " (a cluster already uses the current value: changing it here does not rotate it)" \
            if self.app.state.origins.get(name) == "kept" else ""
        self.query_one("#editor-label", Static).update(f"New value for {name}{existing}; enter to keep, escape to cancel")
        self.query_one("#editor-strength", Static).update("")
        field.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if self.editing and creds.is_secret_name(self.editing):
            strength = creds.password_strength(event.value) if event.value else None
            text = "" if strength is None else f"strength: {strength.label}, ~{strength.bits:.0f} bits" + (
                f" — {'; '.join(strength.reasons)}" if strength.reasons else "")
            self.query_one("#editor-strength", Static).update(text)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        name, value = self.editing, event.value
        if not name:
            return
        problem = creds.check_value(name, value)
        if problem:
            self.query_one("#editor-strength", Static).update(f"refused: {problem}")
            return
        if (reasons := weakness(name, value)):
            from .dialogs import ConfirmDialog

            self.app.push_screen(ConfirmDialog("Weak password", f"{name}: {reasons}.\nKeep it anyway?", yes="Keep it"),
                                 lambda keep: self._store(name, value) if keep else None)
            return
        self._store(name, value)

    def _store(self, name: str, value: str) -> None:
        state = self.app.state
        state.credentials[name] = value
        state.origins[name] = "typed"
        state.credentials_saved = False
        self._close_editor()
        self.refresh_table()

    def _close_editor(self) -> None:
        self.editing = None
        self.query_one("#editor-input", Input).value = ""
        self.query_one("#editor").remove_class("visible")
        self.query_one(DataTable).focus()

    def action_back(self) -> None:
        if self.editing:
            self._close_editor()
        else:
            self.app.pop_screen()

    def action_export(self) -> bool:
        state = self.app.state
        if state.credentials_error:
            self.notify("postgres.env is unreadable: fix it first", severity="error")
            return False
        problems = state.credentials.validate()
        if problems:
            self.notify("; ".join(problems[:3]) + " — press g to generate what is missing", severity="error")
            return False
        try:
            written = creds.write_env(state.env_path, state.credentials)
        except (creds.CredentialsError, OSError) as exc:
            self.notify(str(exc), severity="error")
            return False
        state.credentials_saved = True
        self.notify(f"{state.env_path} {'written' if written else 'unchanged'} (0600)")
        return True

    def action_next(self) -> None:
        if self.editing:
            return
        if not self.action_export():
            return
        self.app.screen_done(self)
