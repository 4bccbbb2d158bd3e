"""Welcome: what to do, and what the work directory already holds."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Static

from ..text import show

ANSWERS_ERRORS_SHOWN = 6


class WelcomeScreen(Screen):
    BINDINGS = [
        Binding("1", "install", "First install"),
        Binding("2", "diagnostics", "Diagnostics"),
        Binding("3", "export", "Export credentials"),
        Binding("q", "app.quit", "Quit"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("kbpg installs a highly available PostgreSQL cluster on your servers over SSH, then proves it works:\n"
                     "Patroni with Raft on the DB nodes, HAProxy and PgBouncer on the proxy nodes, pgvector.",
                     classes="hint")
        yield Static(Text(self.status_text()), id="status")
        yield Static("", id="answers-problems", classes="problems")
        with Vertical(id="menu"):
            yield Button("1  First install: credentials, hosts, plan, install, diagnostics", id="install", variant="primary")
            yield Button("2  Diagnostics only: check a cluster kbpg installed", id="diagnostics")
            yield Button("3  Export credentials to credentials/postgres.env", id="export")
        yield Footer()

    def status_text(self) -> str:
        state = self.app.state
        lines = [f"Work directory  {state.workdir}"]
        if state.answers_errors:
            lines.append(f"kbpg.toml       INVALID, {len(state.answers_errors)} error(s): the wizard will not write over it")
        else:
            lines.append(f"kbpg.toml       {'present' if state.answers_path.exists() else 'not yet (defaults)'}")
        if state.selection:
            backup = state.selection.backup_nodes
            lines.append(f"servers.tsv     {len(state.selection.db_nodes)} DB + {len(state.selection.haproxy_nodes)} HAProxy nodes"
                         + (f", backup host {backup[0].hostname}" if backup else ", no backup host"))
        else:
            errors = [p for p in state.inventory_problems if p.severity == "error"]
            lines.append(f"servers.tsv     {state.inventory_path}: {len(errors)} problem(s), see Hosts")
        lines.append(f"credentials     {'credentials/postgres.env present' if state.env_path.exists() else 'not yet'}"
                     + (" — UNREADABLE" if state.credentials_error else ""))
        return "\n".join(lines)

    def on_mount(self) -> None:
        self.show_status()

    def on_screen_resume(self) -> None:
        self.show_status()

    def show_status(self) -> None:
        """What the work directory holds, and every error of an invalid kbpg.toml with its key."""
        state = self.app.state
        self.query_one("#status", Static).update(Text(self.status_text()))
        errors = state.answers_errors
        text = "\n".join(errors[:ANSWERS_ERRORS_SHOWN])
        if len(errors) > ANSWERS_ERRORS_SHOWN:
            text += f"\n… and {len(errors) - ANSWERS_ERRORS_SHOWN} more: `kbpg answers check` lists them all"
        show(self.query_one("#answers-problems", Static), text)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.app.start_flow(event.button.id)  # each button's id names its flow (flows.FLOWS)

    def action_install(self) -> None:
        self.app.start_flow("install")

    def action_diagnostics(self) -> None:
        self.app.start_flow("diagnostics")

    def action_export(self) -> None:
        self.app.start_flow("export")
