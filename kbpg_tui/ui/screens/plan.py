"""Plan and settings: what will happen on which host, and the answers that shape it (saved to kbpg.toml)."""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Label, Select, Static

from ...core import settings as cfg
from ...core.backup import REPO_PATH
from ...core.rto import TIMING_PLANS, plan_for, worst_case_rto
from ...core.steps import install_steps
from ..state import AnswersInvalid
from ..text import backup_plan, show

# (kbpg.toml key, label) of each field, in order. What a field accepts (its choices, bounds and help) is
# declared once, with the setting (core/settings.py); the form reads it from there (plan_fields).
FIELDS: list[tuple[str, str]] = [
    ("postgresql.version", "PostgreSQL version"),
    ("packages.source", "Package source"),
    ("packages.url", "  custom: URL"),
    ("packages.suite", "  custom: suite"),
    ("packages.key_file", "  custom: key file"),
    ("network.lb_address", "LB address"),
    ("network.private_subnet", "Private subnet"),
    ("postgresql.max_connections", "max_connections"),
    ("postgresql.shared_buffers", "shared_buffers"),
    ("patroni.timing_plan", "Failover timing"),
    ("patroni.synchronous_mode", "Synchronous repl."),
    ("patroni.synchronous_mode_strict", "  sync: strict"),
    ("patroni.apply_pending_restarts", "Apply restarts"),
    ("tls.enabled", "TLS on every hop"),
    ("pgbouncer.pool_mode", "Pooling"),
    ("pgbouncer.backend", "PgBouncer backend"),
    ("ports.haproxy_write", "Port: write"),
    ("ports.haproxy_read", "Port: read-only"),
    ("ports.pgbouncer", "Port: PgBouncer"),
    ("ports.postgresql", "Port: PostgreSQL"),
    ("ports.patroni_rest", "Port: Patroni REST"),
    ("ports.raft", "Port: Raft"),
    ("ports.haproxy_stats", "Port: HAProxy stats"),
    ("backup.enabled", "Backups"),
    ("backup.full_schedule", "  full: schedule"),
    ("backup.diff_schedule", "  diff: schedule"),
    ("backup.retention_full", "  full: kept"),
    ("backup.retention_diff", "  diff: kept"),
]


@dataclass(frozen=True)
class PlanField:
    key: str
    label: str
    kind: type  # the setting's type: int fields are read as integers
    choices: tuple | None  # a Select of these; None: free text
    help: str  # the setting's doc and what it accepts (the field's tooltip)


def setting_field(key: str, label: str) -> PlanField:
    """A form field from the setting's own declaration (its type, and _opt's choices, min, max and doc)."""
    section, name = key.split(".")
    section_class = typing.get_type_hints(cfg.Settings)[section]
    spec = {f.name: f for f in dataclasses.fields(section_class)}[name]
    kind = typing.get_type_hints(section_class)[name]
    meta = spec.metadata
    choices = tuple(meta["choices"]) if meta.get("choices") else ((False, True) if kind is bool else None)
    accepts = ""
    if choices:
        accepts = "one of " + ", ".join(str(choice).lower() for choice in choices)
    elif meta.get("min") is not None or meta.get("max") is not None:
        low, high = meta.get("min"), meta.get("max")
        accepts = f"{'' if low is None else low}..{'' if high is None else high}"
    help_text = f"{key}" + (f": {meta['doc']}" if meta.get("doc") else "") + (f" ({accepts})" if accepts else "")
    return PlanField(key, label, kind, choices, help_text)


def plan_fields() -> list[PlanField]:
    return [setting_field(key, label) for key, label in FIELDS]


def field_id(key: str) -> str:
    return "f-" + key.replace(".", "-")


def get_value(settings: cfg.Settings, key: str):
    section, name = key.split(".")
    return getattr(getattr(settings, section), name)


RTO_FIELD = "patroni.timing_plan"  # the field the plans' worst-case failover times are shown under
RTO_CASE = "worst case without writes, the primary lost without releasing its leader key"


def rto_lines(settings: cfg.Settings) -> str:
    """Each plan's computed worst-case time without writes, the chosen one marked (a custom plan: its own)."""
    chosen = plan_for(settings)
    plans = list(TIMING_PLANS.values()) + ([chosen] if chosen.name not in TIMING_PLANS else [])
    lines = []
    for plan in plans:
        bound = worst_case_rto(plan)
        mark = "▸" if plan.name == chosen.name else " "
        lines.append(f"{mark} {plan.name}: ≤ {bound.direct:g} s, ≤ {bound.pooled:g} s pooled")
    return "\n".join(lines)


def rto_help() -> str:
    """The tooltip under the timing plan: each plan's bound with what adds up to it."""
    return RTO_CASE + ":\n" + "\n".join(worst_case_rto(plan).text() for plan in TIMING_PLANS.values())


class RtoPlans(Static):
    """The timing plans' worst-case failover times, under the timing plan's field."""

    DEFAULT_CSS = """
    RtoPlans {
        height: auto;
        padding: 0 1 0 22;
        color: $text-muted;
    }
    """


def plan_text(state) -> str:
    settings, selection = state.settings, state.selection
    db = ", ".join(s.hostname for s in selection.db_nodes) if selection else "?"
    proxies = ", ".join(s.hostname for s in selection.haproxy_nodes) if selection else "?"
    backup_host, schedule = backup_plan(settings, selection)
    where = {"00": "this machine", "01": "every host", "02": f"DB: {db}", "03": f"HAProxy: {proxies}",
             "04": f"HAProxy: {proxies}", "05": "the primary",
             "06": f"backup host {selection.backup_nodes[0].hostname}, DB: {db}" if schedule else "skipped (no backups)"}
    lines = ["What will happen:"]
    for step in install_steps():
        names = dict.fromkeys(task.name for task in step.tasks)  # a task on two kinds of host: named once
        lines.append(f"{step.label} — {where.get(step.number, '?')}: " + ", ".join(names))
    p = settings.patroni
    timing = plan_for(settings)
    strict = ", strict" if p.synchronous_mode_strict else ""
    lines += [f"PostgreSQL {settings.postgresql.version} from {settings.packages.source}",
              f"Patroni timing: ttl {timing.ttl}, loop_wait {timing.loop_wait}, retry_timeout {timing.retry_timeout}",
              f"Worst case, {worst_case_rto(timing).text()}",
              f"Synchronous replication: {p.synchronous_mode}{strict}",
              f"Apps connect to {settings.network.lb_address}:{settings.ports.haproxy_write} (write), "
              f":{settings.ports.haproxy_read} (read-only), :{settings.ports.pgbouncer} (pooled)",
              ("TLS on every hop with kbpg's own CA (credentials/tls/ca.crt): clients use sslmode=verify-full; "
               f"certificates renewed within {settings.tls.renew_days} days of expiry" if settings.tls.enabled else
               "TLS off: every connection in plaintext (turning it on later is a rolling change)"),
              f"Backups (pgBackRest): {backup_host}" + (f", repository {REPO_PATH}" if schedule else ""),
              *schedule,
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
                for spec in plan_fields():
                    value = get_value(settings, spec.key)
                    with Horizontal():
                        yield Label(spec.label)
                        widget: Select | Input
                        if spec.choices:
                            widget = Select([(str(c).lower(), c) for c in spec.choices], value=value,
                                            allow_blank=False, id=field_id(spec.key), compact=True)
                        else:
                            widget = Input(str(value), id=field_id(spec.key), compact=True)
                        widget.tooltip = spec.help
                        yield widget
                    if spec.key == RTO_FIELD:
                        rto = RtoPlans(rto_lines(settings), id="rto-plans")
                        rto.tooltip = rto_help()
                        yield rto
            with VerticalScroll(id="plan-pane"):  # longer than the screen: it scrolls
                yield Static(plan_text(self.app.state), id="plan", markup=False)  # "[backup] enabled" is text
        yield Footer()

    def on_mount(self) -> None:
        show(self.query_one("#settings-errors", Static), self.app.state.settings_error)
        for note in cfg.settings_notes(self.app.state.settings):  # an older kbpg.toml's renamed values
            self.notify(note, timeout=10)

    def collect(self) -> cfg.Settings:
        """The form's values on top of the current settings, validated (raises SettingsError naming the keys)."""
        data = cfg.to_dict(copy.deepcopy(self.app.state.settings))
        for spec in plan_fields():
            key = spec.key
            section, name = key.split(".")
            widget = self.query_one(f"#{field_id(key)}")
            raw = widget.value
            if spec.choices is None and spec.kind is int:
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
        self.query_one("#rto-plans", Static).update(rto_lines(state.settings))
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
            for spec in plan_fields():  # the file's values, for the operator to review
                value = get_value(state.settings, spec.key)
                self.query_one(f"#{field_id(spec.key)}").value = value if spec.choices else str(value)
            show(errors, "")
            self.query_one("#plan", Static).update(plan_text(state))
            self.query_one("#rto-plans", Static).update(rto_lines(state.settings))
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
            settings = self.collect()
        except cfg.SettingsError:
            return
        self.query_one("#plan", Static).update(plan_text(_with(self.app.state, settings)))
        self.query_one("#rto-plans", Static).update(rto_lines(settings))

    def action_next(self) -> None:
        if not self.action_save(then_install=True):
            return
        warnings = cfg.settings_warnings(self.app.state.settings)
        if not warnings:
            self.app.screen_done(self)
            return
        # The same confirmation `kbpg install` asks for (and `--yes` refuses without --allow-wide-subnet).
        from .dialogs import ConfirmDialog

        text = "\n".join(warnings) + "\n\nInstall with it anyway? (No: narrow it in kbpg.toml, then come back.)"
        self.app.push_screen(ConfirmDialog("A network wider than /16", text, yes="Install anyway"),
                             lambda confirmed: self.app.screen_done(self) if confirmed else None)

    def action_back(self) -> None:
        self.app.pop_screen()


def _with(state, settings: cfg.Settings):
    preview = copy.copy(state)
    preview.settings = settings
    return preview
