"""The kbpg wizard: welcome → credentials → hosts → plan → install → diagnostics → summary.

The order of each flow is in flows.py; screens say they are done (``screen_done``) and the app goes on.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from textual.app import App
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen

from ..core.events import HostKeyUnknown
from .flows import FLOWS, HOME, SIDE, next_screen
from .state import WizardState


class AskHostKey(Message):
    """A worker asks the operator about an unknown host key; ``done(answer)`` is called with the answer."""

    def __init__(self, event: HostKeyUnknown, cancel: threading.Event, done: Callable[[bool | None], None]):
        super().__init__()
        self.event, self.cancel, self.done = event, cancel, done


class KbpgApp(App):
    """The wizard. ``start`` is "welcome", or the flow to start in (``kbpg diagnose``: "diagnostics")."""

    CSS_PATH = "kbpg.tcss"
    TITLE = "kbpg"
    SUB_TITLE = "PostgreSQL HA installer"
    BINDINGS = [
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, workdir: Path, start: str = "welcome"):
        super().__init__()
        self.state = WizardState.load(workdir)
        self.start = start
        self.flow: str | None = None  # the flow running now (flows.FLOWS)

    def on_mount(self) -> None:
        self.push_screen(HOME())  # always at the bottom: every flow goes back to it
        if self.start in FLOWS:
            self.start_flow(self.start)

    # the flows (flows.py)

    def start_flow(self, name: str) -> None:
        self.flow = name
        self.push_screen(FLOWS[name][0]())

    def screen_done(self, screen: Screen) -> None:
        """``screen`` is done: the next screen of the running flow, or home after the flow's last one."""
        following = next_screen(self.flow, type(screen))
        if following is not None:
            self.push_screen(following())
            return
        while len(self.screen_stack) > 1 and not isinstance(self.screen, HOME):
            self.pop_screen()
        if not isinstance(self.screen, HOME):
            self.push_screen(HOME())

    def open_side(self, name: str) -> None:
        """A screen apart from the flows (flows.SIDE), over the current one; leaving it comes back here."""
        self.push_screen(SIDE[name]())

    def _fatal_error(self) -> None:
        """Textual's crash report shows local variables, which can hold passwords: show the traceback without them.

        (Overrides Textual's private hook of the same name; the traceback also goes to the log, redacted.)
        """
        import logging
        import sys

        import rich
        from rich.segment import Segments
        from rich.traceback import Traceback

        logging.getLogger("kbpg.ui").error("the wizard crashed", exc_info=sys.exc_info())
        self.bell()
        traceback = Traceback(show_locals=False, width=None, suppress=[rich])
        self._exit_renderables.append(Segments(self.console.render(traceback, self.console.options)))
        self._close_messages_no_wait()

    def action_help(self) -> None:
        from .screens.dialogs import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def ask_host_key(self, event: HostKeyUnknown, cancel: threading.Event) -> bool:
        """Called from a worker thread: show the fingerprint and wait for the operator's explicit answer.

        ``cancel`` is the worker's (quitting, leaving the screen): then the answer is "no", at once, and the
        dialog closes by itself. Never blocks on the app's loop, which may be closing.
        """
        if cancel.is_set():
            return False
        answered = threading.Event()
        answer: list[bool] = [False]

        def done(accepted: bool | None) -> None:
            answer[0] = bool(accepted)
            answered.set()

        if not self.post_message(AskHostKey(event, cancel, done)):  # the app is closing
            return False
        while not answered.wait(0.05):
            if cancel.is_set():
                return False
        return answer[0]

    def on_ask_host_key(self, message: AskHostKey) -> None:
        from .screens.dialogs import HostKeyDialog

        if message.cancel.is_set():
            message.done(False)
            return
        self.push_screen(HostKeyDialog(message.event, cancel=message.cancel), message.done)
