"""Summary: how applications connect (through the LB), and where credentials and reports are."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from ...core import backup
from ..text import backup_plan


def summary_text(state) -> str:
    settings, values = state.settings, state.credentials
    lb, ports = settings.network.lb_address, settings.ports
    user, db = values.get("POSTGRES_APP_USER", "kb_app"), values.get("POSTGRES_DB", "keybuzz")
    tls = settings.tls.enabled
    url = "postgresql://{user}:$POSTGRES_APP_PASS@{lb}:{port}/{db}" + (
        "?sslmode=verify-full&sslrootcert=$POSTGRES_SSL_ROOT_CERT" if tls else "")
    lines = [
        "Connection strings — always through the load balancer, never a node's own address",
        "(the password is $POSTGRES_APP_PASS from credentials/postgres.env):",
        "",
        f"  writes     {url.format(user=user, lb=lb, port=ports.haproxy_write, db=db)}",
        f"  read-only  {url.format(user=user, lb=lb, port=ports.haproxy_read, db=db)}",
        f"  pooled     {url.format(user=user, lb=lb, port=ports.pgbouncer, db=db)}   (transaction pooling)",
        "",
        f"Credentials  {state.env_path}  (0600; load with: set -a; . credentials/postgres.env; set +a)",
        (f"TLS          {state.workdir / 'credentials' / 'tls' / 'ca.crt'}  (kbpg's CA: give it to applications; "
         "`kbpg tls status` shows each certificate's days left)" if tls else
         "TLS          off ([tls] enabled = false): every connection travels in plaintext"),
        f"Answers      {state.answers_path}  (replay: kbpg install --answers kbpg.toml --yes)",
        f"Reports      {state.workdir / 'reports'}",
        f"Logs         {state.workdir / 'logs'}",
        *backup_lines(state),
        "",
        "Re-run the checks any time with `kbpg diagnose` (or --no-tui / --json for scripts).",
    ]
    return "\n".join(lines)


def backup_lines(state) -> list[str]:
    """Where the backups are (the backup host, the repository, the stanza, the schedule), the commands that list and
    prove them, and the one file without which none can be read: credentials/postgres.env (BACKUP_CIPHER_PASS)."""
    host, schedule = backup_plan(state.settings, state.selection)
    if not schedule:
        return [f"Backups      {host}"]
    try:
        stanza = backup.stanza(state.credentials)
    except backup.BackupError as exc:
        stanza = f"? ({exc})"
    settings = state.settings.backup
    return [f"Backups      {host}: pgBackRest repository {backup.REPO_PATH}, stanza {stanza}",
            f"Schedule     full {settings.full_schedule}, diff {settings.diff_schedule}; keeps "
            f"{settings.retention_full} full, {settings.retention_diff} diff",
            "Restores     `kbpg backup list` lists them; `kbpg restore-drill` restores one on a scratch copy",
            f"Keep a copy of credentials/postgres.env OFF the backup host: its {backup.CIPHER_NAME} encrypts the "
            "backups; without it no backup can be read (and it cannot be changed)."]


class SummaryScreen(Screen):
    BINDINGS = [
        Binding("q", "app.quit", "Quit"),
        Binding("escape", "back", "Back"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Summary", classes="title")
        yield Static(summary_text(self.app.state), id="summary", markup=False)  # "[tls] enabled" is text
        yield Footer()

    def action_back(self) -> None:
        self.app.pop_screen()
