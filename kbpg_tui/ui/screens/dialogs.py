"""Modal dialogs: an unknown host key, a confirmation, the help screen."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from ...core.events import HostKeyUnknown


class HostKeyDialog(ModalScreen[bool]):
    """An SSH host key kbpg has never seen: accepted only by an explicit yes."""

    BINDINGS = [
        Binding("a", "accept", "Accept key"),
        Binding("d,escape", "decline", "Decline"),
    ]

    def __init__(self, event: HostKeyUnknown):
        super().__init__()
        self.event = event

    def compose(self) -> ComposeResult:
        event = self.event
        with Vertical(id="dialog"):
            yield Static("Unknown SSH host key", classes="title")
            yield Static(
                f"{event.host} ({event.address}) presents a key kbpg has never seen:\n\n"
                f"  {event.key_type}  {event.fingerprint}\n\n"
                "Compare it with the key on the server (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub "
                "on its console) before accepting. An accepted key is kept in kbpg's known_hosts; "
                "a key that changes later is refused."
            )
            with Horizontal():
                yield Button("Accept (a)", id="accept", variant="warning")
                yield Button("Decline (d)", id="decline", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#decline", Button).focus()  # the safe answer is the default

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "accept")

    def action_accept(self) -> None:
        self.dismiss(True)

    def action_decline(self) -> None:
        self.dismiss(False)


class ConfirmDialog(ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "yes", "Yes"),
        Binding("n,escape", "no", "No"),
    ]

    def __init__(self, title: str, text: str, yes: str = "Yes"):
        super().__init__()
        self.title_text, self.text, self.yes = title, text, yes

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.title_text, classes="title")
            yield Static(self.text)
            with Horizontal():
                yield Button(f"{self.yes} (y)", id="yes", variant="warning")
                yield Button("No (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_yes(self) -> None:
        self.dismiss(True)

    def action_no(self) -> None:
        self.dismiss(False)


HELP = """\
kbpg walks through: welcome → credentials → hosts → plan → install → diagnostics → summary.
Every screen's answers go to kbpg.toml; `kbpg install --answers kbpg.toml --yes` replays them.

Everywhere     ?  this help        ctrl+q  quit          escape  back
Welcome        1  first install    2  diagnostics only   3  export credentials
Credentials    g  generate missing e  edit selected      v  reveal/hide   x  export   n  next
Hosts          c  check SSH        r  reload servers.tsv n  next
Plan           s  save kbpg.toml   n  save and go to the install
Install        s  start / resume   c  cancel (safe)      r  retry from the failed step
               [ ]  previous/next host's output          n  diagnostics (when done)
Diagnostics    r  run again        e  export the report  n  summary
Summary        q  quit

Arrows and the mouse move in tables; enter presses the focused button.
Nothing here prints a password; secrets live only in credentials/postgres.env (0600).
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static("Keys", classes="title")
            yield Static(HELP)

    def action_close(self) -> None:
        self.dismiss(None)
