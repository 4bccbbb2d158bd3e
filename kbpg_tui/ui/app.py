"""The kbpg wizard: welcome → credentials → hosts → plan → install → diagnostics → summary."""

from __future__ import annotations

import threading
from pathlib import Path

from textual.app import App
from textual.binding import Binding

from ..core.events import HostKeyUnknown
from .state import WizardState


class KbpgApp(App):
    """The wizard. ``start`` is "welcome" or "diagnostics" (``kbpg diagnose``)."""

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

    def on_mount(self) -> None:
        from .screens.diagnostics import DiagnosticsScreen
        from .screens.welcome import WelcomeScreen

        self.push_screen(DiagnosticsScreen() if self.start == "diagnostics" else WelcomeScreen())

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

    def ask_host_key(self, event: HostKeyUnknown, cancel: threading.Event | None = None) -> bool:
        """Called from a worker thread: show the fingerprint and wait for the operator's explicit answer."""
        from .screens.dialogs import HostKeyDialog

        answered = threading.Event()
        answer: list[bool] = [False]

        def done(accepted: bool | None) -> None:
            answer[0] = bool(accepted)
            answered.set()

        self.call_from_thread(self.push_screen, HostKeyDialog(event), done)
        while not answered.wait(0.2):
            if cancel is not None and cancel.is_set():
                return False
        return answer[0]
