"""Plan and settings: what will happen on which host, and the answers that shape it (saved to kbpg.toml)."""

from __future__ import annotations

import copy

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Label, Select, Static

from ...core import settings as cfg
from ...core.steps import install_steps
from ..state import AnswersInvalid
from ..text import show

# (kbpg.toml key, label, choices or None for free text)
FIELDS: list[tuple[str, str, tuple | None]] = [
    ("postgresql.version", "PostgreSQL version", cfg.SUPPORTED_PG_VERSIONS),
    ("packages.source", "Package source", ("pgdg", "distro", "custom")),
    ("packages.url", "  custom: URL", None),
    ("packages.suite", "  custom: suite", None),
    ("packages.key_file", "  custom: key file", None),
    ("network.lb_address", "LB address", None),
    ("network.private_subnet", "Private subnet", None),
    ("postgresql.max_connections", "max_connections", None),
    ("postgresql.shared_buffers", "shared_buffers", None),
    ("patroni.timing_plan", "Failover timing", ("standard", "fast", "custom")),
    ("patroni.apply_pending_restarts", "Apply restarts", (False, True)),
    ("pgbouncer.pool_mode", "Pooling", ("transaction", "session", "statement")),
    ("pgbouncer.backend", "PgBouncer backend", ("local", "lb")),
    ("ports.haproxy_write", "Port: write", None),
    ("ports.haproxy_read", "Port: read-only", None),
    ("ports.pgbouncer", "Port: PgBouncer", None),
    ("ports.postgresql", "Port: PostgreSQL", None),
    ("ports.patroni_rest", "Port: Patroni REST", None),
    ("ports.raft", "Port: Raft", None),
    ("ports.haproxy_stats", "Port: HAProxy stats", None),
]


def field_id(key: str) -> str:
    return "f-" + key.replace(".", "-")


def get_value(settings: cfg.Settings, key: str):
    section, name = key.split(".")
    return getattr(getattr(settings, section), name)


def plan_text(state) -> str:
    settings, selection = state.settings, state.selection
    db = ", ".join(s.hostname for s in selection.db_nodes) if selection else "?"
    proxies = ", ".join(s.hostname for s in selection.haproxy_nodes) if selection else "?"
    where = {"00": "this machine", "01": "every host", "02": f"DB: {db}", "03": f"HAProxy: {proxies}",
             "04": f"HAProxy: {proxies}", "05": "the primary"}
    lines = ["What will happen:"]
    for step in install_steps():
        lines.append(f"{step.label} — {where.get(step.number, '?')}: " + ", ".join(task.name for task in step.tasks))
    p = settings.patroni
    lines += [f"PostgreSQL {settings.postgresql.version} from {settings.packages.source}",
              f"Patroni timing: ttl {p.ttl}, loop_wait {p.loop_wait}, retry_timeout {p.retry_timeout}",
              f"Apps connect to {settings.network.lb_address}:{settings.ports.haproxy_write} (write), "
              f":{settings.ports.haproxy_read} (read-only), :{settings.ports.pgbouncer} (pooled)",
              "Every step checks, changes only what differs, and verifies: a re-run is safe."]
    return "\n".join(lines)


class PlanScreen(Screen):
    BINDINGS = [
        Binding("s", "save", "Save kbpg.toml"),
        Binding("n", "next", "Save and install"),
        Binding("escape", "back", "Back"),
    ]

    def compose(self) -> ComposeResult:
        settings = self.app.state.settings
        yield Header()
        yield Static("Plan and settings — saved to kbpg.toml, replayable with `kbpg install --answers kbpg.toml --yes`",
                     classes="title")
        yield Static(id="settings-errors", classes="problems")
        with Horizontal():
            with VerticalScroll(id="form"):
                for key, label, choices in FIELDS:
                    value = get_value(settings, key)
                    with Horizontal():
                        yield Label(label)
                        if choices:
                            yield Select([(str(c).lower(), c) for c in choices], value=value, allow_blank=False,
                                         id=field_id(key), compact=True)
                        else:
                            yield Input(str(value), id=field_id(key), compact=True)
            yield Static(plan_text(self.app.state), id="plan")
        yield Footer()

    def on_mount(self) -> None:
        show(self.query_one("#settings-errors", Static), self.app.state.settings_error)

    def collect(self) -> cfg.Settings:
        """The form's values on top of the current settings, validated (raises SettingsError naming the keys)."""
        data = cfg.to_dict(copy.deepcopy(self.app.state.settings))
        for key, _label, choices in FIELDS:
            section, name = key.split(".")
            widget = self.query_one(f"#{field_id(key)}")
            raw = widget.value
            if choices is None and isinstance(get_value(self.app.state.settings, key), int):
                try:
                    raw = int(str(raw).strip())
                except ValueError:
                    raise cfg.SettingsError("kbpg.toml", [f"{key}: must be an integer (got {raw!r})"]) from None
            elif isinstance(raw, str):
                raw = raw.strip()
            data.setdefault(section, {})[name] = raw
        if data["patroni"].get("timing_plan") != "custom":
            for name in ("ttl", "loop_wait", "retry_timeout"):
                data["patroni"].pop(name, None)
        return cfg.from_dict(data)

    def action_save(self, then_install: bool = False) -> bool:
        errors = self.query_one("#settings-errors", Static)
        try:
            settings = self.collect()
        except cfg.SettingsError as exc:
            show(errors, "\n".join(exc.errors))
            return False
        state = self.app.state
        if state.answers_errors:  # the file on disk is invalid: never written over without a .bak
            from .dialogs import InvalidAnswersDialog

            show(errors, state.settings_error)
            self.app.push_screen(InvalidAnswersDialog(state.answers_errors),
                                 lambda choice: self.invalid_answers(choice, settings, then_install))
            return False
        state.settings = settings
        state.settings_error = ""
        show(errors, "")
        try:
            written = state.save_settings()
        except AnswersInvalid:
            return False
        except OSError as exc:
            show(errors, f"cannot write kbpg.toml: {exc}")
            return False
        self.query_one("#plan", Static).update(plan_text(state))
        self.notify(f"{state.answers_path} {'saved' if written else 'unchanged'}")
        return True

    def invalid_answers(self, choice: str | None, settings: cfg.Settings, then_install: bool) -> None:
        state = self.app.state
        errors = self.query_one("#settings-errors", Static)
        if choice == "reload":
            if not state.load_settings():
                show(errors, state.settings_error)
                self.notify(f"kbpg.toml is still invalid: {len(state.answers_errors)} error(s)", severity="error")
                return
            state.load_inventory()
            for key, _label, choices in FIELDS:  # the file's values, for the operator to review
                value = get_value(state.settings, key)
                self.query_one(f"#{field_id(key)}").value = value if choices else str(value)
            show(errors, "")
            self.query_one("#plan", Static).update(plan_text(state))
            self.notify("kbpg.toml reloaded into the form: s saves, n saves and goes on")
        elif choice == "backup":
            state.settings = settings
            try:
                state.save_settings(backup=True)
            except OSError as exc:
                show(errors, f"kbpg.toml not saved: {exc}")
                return
            show(errors, "")
            self.notify(f"the invalid kbpg.toml is kept as {state.answers_backup}; kbpg.toml saved")
            if then_install:
                self.action_next()

    def on_select_changed(self, event: Select.Changed) -> None:
        try:
            self.query_one("#plan", Static).update(plan_text(_with(self.app.state, self.collect())))
        except cfg.SettingsError:
            pass

    def action_next(self) -> None:
        if not self.action_save(then_install=True):
            return
        from .install import InstallScreen

        self.app.push_screen(InstallScreen())

    def action_back(self) -> None:
        self.app.pop_screen()


def _with(state, settings: cfg.Settings):
    preview = copy.copy(state)
    preview.settings = settings
    return preview
