"""Thread workers whose work ends with them: quitting, leaving the screen, or ``c`` stops it.

Textual runs a thread worker in asyncio's default executor, and the process waits for those threads when
it exits: a worker still blocked (a host-key question nobody will answer, an engine finishing its
commands, a probe waiting for its timeout) keeps a quit wizard alive on a blank screen. So:

- the core gets the worker's own ``cancelled_event`` as its cancel event (:func:`cancel_event`): Textual
  sets it when the worker is cancelled, which it does when the app quits, when the worker's screen is
  left, and on ``worker.cancel()`` (``c``); the run's SSH pool then closes its remote commands, the
  engine stops, a host-key question is answered "no";
- the work itself runs in a daemon thread the worker waits for (:func:`run_cancellable`); once cancelled,
  the worker waits at most ``GRACE_SECONDS`` more (for the work to stop and release what it holds, such
  as the cluster's run lock), then returns. The process then exits within two seconds, whatever a host
  does; work still running is left behind (a daemon thread, with its cancel event set).

Work left behind must never reach the app through a screen: a screen's ``self.app`` is Textual's context
variable ``active_app``, which only Textual's own threads carry, and otherwise the screen's link to the app,
which Textual cuts when the screen is removed (at quit, on leaving it): ``self.app`` then raises
NoActiveAppError in that thread. So :func:`run_cancellable` runs the work in the worker's context, and a
thread the work starts itself (one per host, the engine's) is given the app, taken in the worker
(``app = self.app``), never the screen's ``self.app``. The app's own methods are safe from any thread at any
time: ``ask_host_key`` answers "no" once cancelled, ``post_message`` returns False once the app is closing.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from typing import Callable, TypeVar

from textual.worker import get_current_worker

GRACE_SECONDS = 1.0
POLL_SECONDS = 0.05

T = TypeVar("T")
log = logging.getLogger("kbpg.ui")


def cancel_event() -> threading.Event:
    """The running thread worker's cancel event (a plain threading.Event), for the core."""
    return get_current_worker().cancelled_event


def run_cancellable(work: Callable[[], T], cancel: threading.Event, name: str = "kbpg-work",
                    grace: float = GRACE_SECONDS) -> T | None:
    """``work()`` in a daemon thread, in the caller's context (the worker's: ``self.app`` resolves there even once
    the screen is removed): its result (or its exception, raised here), or None when ``cancel`` was set and the
    work had not ended ``grace`` seconds later."""
    outcome: dict[str, object] = {}
    finished = threading.Event()

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 (raised again in the worker below)
            outcome["error"] = exc
        finally:
            finished.set()

    threading.Thread(target=contextvars.copy_context().run, args=(target,), daemon=True, name=name).start()
    while not finished.wait(POLL_SECONDS):
        if cancel.is_set():
            if not finished.wait(grace):
                log.info("%s: still running %.1f s after its cancel; no longer waited for", name, grace)
                return None
            break
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome.get("value")  # type: ignore[return-value]
