"""kbpg_tui/ui/workers.py: the work of a thread worker, run in a thread of its own."""

from __future__ import annotations

import contextvars
import threading

from textual._context import active_app

from kbpg_tui.ui.workers import run_cancellable


def test_the_work_sees_the_app_as_its_worker_does() -> None:
    """A screen's ``self.app`` is Textual's ``active_app`` where it is set (a worker's thread), else the screen's link
    to the app, which is cut once the screen is removed: work left behind must still find the app there."""
    app = object()

    def worker() -> object:
        active_app.set(app)  # type: ignore[arg-type]
        return run_cancellable(lambda: active_app.get(None), threading.Event())

    assert contextvars.copy_context().run(worker) is app
    assert active_app.get(None) is None  # set in the worker's context only
