"""Install: live progress as a grid of steps × hosts, the selected host's output, cancel, retry, resume.

The grid, the output and the worker are the run screen's (screens/progress.py); here are the install's steps,
keys and end.
"""

from __future__ import annotations

from typing import Sequence

from textual.binding import Binding

from ...core import events as ev
from ...core import install as inst
from ...core import rotation
from ...core.engine import Step, TaskError
from ...core.steps import ALL_STEPS, install_steps
from .progress import OUTPUT_LINES_PER_HOST, EngineEvent, RunDone, RunScreen

__all__ = ["OUTPUT_LINES_PER_HOST", "EngineEvent", "InstallScreen"]


class InstallScreen(RunScreen):
    WHAT = "install"
    BINDINGS = [
        Binding("s", "start", "Start/resume"),
        Binding("c", "cancel", "Cancel"),
        Binding("r", "retry", "Retry failed step"),
        Binding("left_square_bracket", "previous_host", "Prev host", key_display="["),
        Binding("right_square_bracket", "next_host", "Next host", key_display="]"),
        Binding("n", "next", "Diagnostics"),
        Binding("escape", "back", "Back"),
    ]

    def planned_steps(self) -> Sequence[Step]:
        return ALL_STEPS

    def title_text(self, count: str) -> str:
        return f"Install — {count}. s starts or resumes (each step checks first)"

    def action_start(self) -> None:
        self.launch(install_steps())

    def action_retry(self) -> None:
        if self.running:
            return
        if not self.failed_step:
            self.notify("no failed step to retry; s runs the whole install again (safely)")
            return
        steps = [step for step in self.planned_steps() if step.number >= self.failed_step]
        if all(step.number != "00" for step in steps):  # step 00 refuses while a rotation is pending; these would not
            from ...core.ops import restore

            try:
                rotation.refuse_if_pending(self.app.state.workdir)
                restore.refuse_if_pending(self.app.state.workdir)  # a restore rebuilds the cluster: not now
            except TaskError as exc:
                self.set_status(str(exc))
                self.notify(str(exc), severity="error", timeout=15)
                return
        self.launch(steps)

    def on_run_done(self, message: RunDone) -> None:
        self.running = False
        reports = message.reports
        counts = inst.summarize(reports)
        ok = bool(reports) and all(r.status in (ev.Status.CHANGED, ev.Status.UNCHANGED) for r in reports)
        self.done = ok
        if ok:
            self.set_status(f"install complete: changed {counts['changed']}, unchanged {counts['unchanged']} — n: diagnostics")
            self.notify("Install complete. Press n for diagnostics.")
        elif counts["cancelled"] or any(r.status == ev.Status.CANCELLED for r in reports):
            # (a cancel seen between two tasks ends the step cancelled with no task cancelled)
            self.set_status(f"cancelled at step {self.failed_step}: finished work stays; s or r resumes")
        else:
            failures = [f"{t.host}: {t.detail}" for r in reports for t in r.failures]
            self.set_status(f"step {self.failed_step} failed ({failures[0][:80] if failures else ''}) — r retries")

    def action_next(self) -> None:
        if self.running:
            self.notify(f"the {self.WHAT} is still running")
            return
        self.app.screen_done(self)
