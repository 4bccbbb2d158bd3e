"""Summary: how applications connect (through the LB), and where credentials and reports are."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header, Static


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
        "",
        "Re-run the checks any time with `kbpg diagnose` (or --no-tui / --json for scripts).",
    ]
    return "\n".join(lines)


class SummaryScreen(Screen):
    BINDINGS = [
        Binding("q", "app.quit", "Quit"),
        Binding("escape", "back", "Back"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Summary", classes="title")
        yield Static(summary_text(self.app.state), id="summary")
        yield Footer()

    def action_back(self) -> None:
        self.app.pop_screen()
