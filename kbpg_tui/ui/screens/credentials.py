"""Credentials: generate or type each value, see its strength, reveal/hide, export to credentials/postgres.env."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static

from ...core import credentials as creds
from ..text import show

MASK = "••••••••••••"
NAMES = list(dict.fromkeys((*creds.REQUIRED_NAMES, *creds.USER_NAMES, *creds.PASSWORD_NAMES)))


def strength_text(name: str, value: str | None) -> str:
    if value is None:
        return "missing"
    if not creds.is_secret_name(name):
        return ""
    strength = creds.password_strength(value)
    return f"{strength.label} (~{strength.bits:.0f} bits)"


class CredentialsScreen(Screen):
    BINDINGS = [
        Binding("g", "generate", "Generate missing"),
        Binding("e", "edit", "Edit"),
        Binding("v", "reveal", "Reveal/hide"),
        Binding("x", "export", "Export"),
        Binding("n", "next", "Next"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.revealed = False
        self.editing: str | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Credentials — written to credentials/postgres.env (0600); names are read by later modules.",
                     classes="title")
        yield Static("", id="cred-problem", classes="problems")
        table = DataTable(id="credentials", cursor_type="row", zebra_stripes=True)
        table.add_columns("name", "value", "strength", "origin")
        yield table
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
        self.query_one(DataTable).focus()

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
        if creds.is_secret_name(name) and creds.password_strength(value).weak:
            from .dialogs import ConfirmDialog

            reasons = "; ".join(creds.password_strength(value).reasons)
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
