"""Hosts: the nodes servers.tsv selects, its problems inline, and a per-host SSH check with host-key confirmation."""

from __future__ import annotations

import threading

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Label, Static

from ...core import install as inst
from ...core.files import resolve
from ...core.inventory import Server
from ...core.ssh import ConnectionPool, Host, KnownHosts, SshError
from ..state import AnswersInvalid
from ..text import show
from ..workers import cancel_event, run_cancellable


class SshChecked(Message):
    def __init__(self, host: str, ok: bool, text: str):
        super().__init__()
        self.host, self.ok, self.text = host, ok, text


class HostsScreen(Screen):
    BINDINGS = [
        Binding("c", "check", "Check SSH"),
        Binding("r", "reload", "Reload"),
        Binding("n", "next", "Next"),
        Binding("escape", "back", "Back"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Hosts — selected from servers.tsv by rule (never by hostname)", classes="title")
        with Horizontal(id="inventory-row"):
            yield Label("servers.tsv:")
            yield Input(str(self.app.state.settings.inventory.path), id="inventory-path", compact=True)
        yield Static("", id="problems", classes="problems")
        yield Static("", id="warnings", classes="warnings")
        table = DataTable(id="hosts", cursor_type="row", zebra_stripes=True)
        for label in ("role", "hostname", "address", "ssh user", "line", "ssh check"):
            table.add_column(label, key=label)
        yield table
        yield Footer()

    def on_mount(self) -> None:
        self.show()
        self.query_one(DataTable).focus()

    def show(self) -> None:
        state = self.app.state
        errors = [p for p in state.inventory_problems if p.severity == "error"]
        warnings = [p for p in state.inventory_problems if p.severity != "error"]
        source = str(state.inventory_path)
        show(self.query_one("#problems", Static),
             "\n".join(p.render(source) for p in errors[:8]) + (f"\n… and {len(errors) - 8} more" if len(errors) > 8 else ""))
        show(self.query_one("#warnings", Static), "\n".join(p.render(source) for p in warnings[:3]))
        table = self.query_one(DataTable)
        table.clear()
        if state.selection:
            for role, nodes in (("DB", state.selection.db_nodes), ("HAProxy", state.selection.haproxy_nodes),
                                ("backup", state.selection.backup_nodes)):
                for server in nodes:
                    table.add_row(role, server.hostname, server.ip_private, server.user_ssh, str(server.line), "—",
                                  key=server.hostname)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.app.state.settings.inventory.path = event.value.strip() or "servers.tsv"
        self.action_reload()
        self.query_one(DataTable).focus()

    def action_reload(self) -> None:
        self.app.state.load_inventory()
        self.show()

    def action_check(self) -> None:
        state = self.app.state
        if not state.selection:
            self.notify("fix servers.tsv first", severity="error")
            return
        table = self.query_one(DataTable)
        for server in state.selection.every_node:  # the backup host too: the install connects to it
            table.update_cell(server.hostname, "ssh check", "checking…")
        self.check_ssh(list(state.selection.every_node))

    @work(thread=True, exclusive=True, exit_on_error=False, group="ssh-check")
    def check_ssh(self, servers: list[Server]) -> None:
        """Every host at once. Ends with the worker (quit, leaving the screen, a new ``c``): the pool's cancel
        closes the commands and a host-key question is answered "no"."""
        app = self.app  # for the per-host threads, which may ask after this screen is gone (workers.py)
        state = app.state
        cancel = cancel_event()
        known_hosts = KnownHosts(resolve(state.workdir, state.settings.ssh.known_hosts))
        pool = ConnectionPool(inst.ssh_options(state.workdir, state.settings), known_hosts, lambda event: None,
                              prompt=lambda event: app.ask_host_key(event, cancel),
                              sudo_passwords=inst.sudo_passwords(state.workdir), cancel=cancel)

        def one(server: Server) -> None:
            host = Host(server.hostname, server.ip_private, server.user_ssh)
            try:
                connection = pool.get(host)
                result = connection.run("id -un", timeout=30)
                mode = connection.sudo_mode
                text = f"ok: {result.stdout.strip()}" + (f" via sudo ({mode})" if mode != "root" else "")
                self.post_message(SshChecked(server.hostname, True, text))
            except SshError as exc:
                self.post_message(SshChecked(server.hostname, False, str(exc).split(": ", 1)[-1].splitlines()[0]))

        def check_all() -> None:
            threads = [threading.Thread(target=one, args=(server,), daemon=True) for server in servers]
            try:
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            finally:
                pool.close()

        run_cancellable(check_all, cancel, name="kbpg-ssh-check")

    def on_ssh_checked(self, message: SshChecked) -> None:
        table = self.query_one(DataTable)
        table.update_cell(message.host, "ssh check", ("✓ " if message.ok else "✗ ") + message.text[:60], update_width=True)

    def action_next(self) -> None:
        state = self.app.state
        if not state.selection:
            self.notify("servers.tsv has errors: fix them (r reloads)", severity="error")
            return
        try:
            state.save_settings()
        except AnswersInvalid as exc:  # never over the operator's file: fix and reload, or keep a .bak first
            from .dialogs import InvalidAnswersDialog

            self.app.push_screen(InvalidAnswersDialog(exc.errors), self.invalid_answers)
            return
        except OSError as exc:
            self.notify(f"cannot write kbpg.toml: {exc}", severity="error")
            return
        self.app.screen_done(self)

    def invalid_answers(self, choice: str | None) -> None:
        state = self.app.state
        if choice == "reload":
            if not state.load_settings():
                self.notify(f"kbpg.toml is still invalid: {len(state.answers_errors)} error(s)", severity="error")
                return
            self.query_one("#inventory-path", Input).value = str(state.settings.inventory.path)
            self.action_reload()
            self.notify("kbpg.toml reloaded")
            self.action_next()
        elif choice == "backup":
            try:
                state.save_settings(backup=True)
            except OSError as exc:
                self.notify(f"kbpg.toml not saved: {exc}", severity="error")
                return
            self.notify(f"the invalid kbpg.toml is kept as {state.answers_backup}; kbpg.toml saved")
            self.action_next()

    def action_back(self) -> None:
        self.app.pop_screen()
