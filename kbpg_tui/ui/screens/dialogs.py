"""Modal dialogs: an unknown host key, a confirmation, the help screen."""

from __future__ import annotations

import threading

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from ...core.events import HostKeyUnknown


class HostKeyDialog(ModalScreen[bool]):
    """An SSH host key kbpg has never seen: accepted only by an explicit yes.

    ``cancel``: the asking worker's cancel event; once it is set (the worker is gone: the wizard quits, its
    screen was left) the question is moot and the dialog closes itself, as declined.
    """

    BINDINGS = [
        Binding("a", "accept", "Accept key"),
        Binding("d,escape", "decline", "Decline"),
    ]

    def __init__(self, event: HostKeyUnknown, cancel: threading.Event | None = None):
        super().__init__()
        self.event = event
        self.cancel = cancel

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
        if self.cancel is not None:
            self.set_interval(0.2, self.check_cancelled)

    def check_cancelled(self) -> None:
        if self.cancel is not None and self.cancel.is_set() and self.is_current:
            self.dismiss(False)

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


class InvalidAnswersDialog(ModalScreen[str | None]):
    """kbpg.toml is invalid: every error with its key, and what the operator may do. Saving over the file is
    never the default: it needs the explicit "b", and then the file is kept as kbpg.toml.bak first.

    Dismissed with "reload" (read the file again, once fixed), "backup" (keep it as .bak and save), or None.
    """

    BINDINGS = [
        Binding("r", "reload", "Reload kbpg.toml"),
        Binding("b", "backup", "Keep .bak and save"),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, errors: list[str]):
        super().__init__()
        self.errors = errors

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(f"kbpg.toml is invalid: {len(self.errors)} error(s)", classes="title")
            with VerticalScroll(id="answers-errors"):
                yield Static(Text("\n".join(self.errors)), classes="problems")  # literal: no markup
            yield Static("The wizard does not write over it (its LB address, data directory, pinned keys … would be "
                         "lost). Fix it in an editor (`kbpg answers check` lists the same errors) and reload, or "
                         "keep it as kbpg.toml.bak and save the wizard's settings: the defaults and what you "
                         "changed here.")
            with Horizontal():
                yield Button("Reload (r)", id="reload", variant="primary")
                yield Button("Keep .bak, save (b)", id="backup", variant="warning")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#reload", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "cancel" else event.button.id)

    def action_reload(self) -> None:
        self.dismiss("reload")

    def action_backup(self) -> None:
        self.dismiss("backup")

    def action_cancel(self) -> None:
        self.dismiss(None)


HELP = """\
welcome → credentials → hosts → plan → install → diagnostics
→ summary. Answers go to kbpg.toml (kbpg install --answers).

Everywhere   ?  this help      ctrl+q  quit      escape  back
Welcome      1  first install  2  diagnostics    3  export
Credentials  g  generate       e  edit selected  v  reveal/hide
             x  export         n  next           r  rotate secrets
Hosts        c  check SSH      r  reload         n  next
Plan         s  save           n  save, then install
Install      s  start/resume   c  cancel (safe)  r  retry failed
             [ ]  previous/next host's output    n  diagnostics
Diagnostics  r  run again      e  export report  n  summary  d  drill
             ↑ ↓  problems first; a row's whole reason below
Drill        s  start (asks)   c  esc  cancel (puts the fault back)
Summary      q  quit
kbpg.toml    when invalid: r reloads it, b keeps a .bak and saves
Tables: arrows or the mouse; enter presses the focused button.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static("Keys", classes="title")
            with VerticalScroll():
                yield Static(Text(HELP))

    def action_close(self) -> None:
        self.dismiss(None)
