"""Running the checks: every probe at once, each bounded by its own timeouts, a backstop for one that hangs
anyway, and a cancel that ends the run at once. A probe's failure (or its bug) is that probe's, never the run's."""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

from ..engine import Context
from ..logs import redact
from ..ssh import SshError
from . import ALL_CHECKS
from .base import Check, CheckFailed, CheckWarning, Probe
from .probe import DEFAULT_TIMEOUT, ProbeContext
from .report import CheckResult, Report, Verdict


class Diagnostics(ProbeContext):
    """Builds and runs the probes of ``checks`` (all of them by default) for a prepared context
    (see ``install.prepare``)."""

    def __init__(self, ctx: Context, timeout: float = DEFAULT_TIMEOUT, checks: Sequence[Check] = ALL_CHECKS):
        super().__init__(ctx, timeout)
        self.checks = tuple(checks)

    def probes(self) -> list[Probe]:
        return [probe for check in self.checks for probe in check.probes(self)]

    def run(self, on_result: Callable[[CheckResult], None] | None = None, only: set[int] | None = None,
            cancel: threading.Event | None = None) -> Report:
        """Every probe (of the checks numbered in ``only``, if given) in parallel; see :func:`run_probes`."""
        probes = [p for p in self.probes() if not only or p.number in only]
        return run_probes(probes, self.timeout * 3 + 5, on_result, cancel)


def run_probes(probes: list[Probe], budget: float, on_result: Callable[[CheckResult], None] | None = None,
               cancel: threading.Event | None = None) -> Report:
    """Run every probe in parallel; a probe still running after ``budget`` seconds is failed and left behind.

    ``cancel`` (the wizard's worker quitting, its screen left): the run returns at once, the probes still
    running failed as cancelled and left behind (they are daemon threads bounded by their own timeouts).
    Results are sorted by check number and target; ``on_result`` hears of each as it comes.
    """
    results: list[CheckResult | None] = [None] * len(probes)
    done = threading.Event()
    remaining = [len(probes)]
    lock = threading.Lock()
    started = time.time()
    clock = time.monotonic()
    if not probes:
        done.set()

    def work(index: int, probe: Probe) -> None:
        began = time.monotonic()
        try:
            verdict, reason = Verdict.PASS, probe.function()
        except CheckWarning as exc:
            verdict, reason = Verdict.WARN, str(exc)
        except CheckFailed as exc:
            verdict, reason = Verdict.FAIL, str(exc)
        except SshError as exc:
            verdict, reason = Verdict.FAIL, str(exc).splitlines()[0]
        except Exception as exc:  # a probe's bug is that probe's failure, not the run's
            verdict, reason = Verdict.FAIL, f"{probe.target}: {type(exc).__name__}: {exc}"
        reason = redact(reason)  # whole, before the cut below: reports, the panel and the CLI show no secret
        result = CheckResult(probe.number, probe.check, probe.target, verdict,
                             reason.splitlines()[0] if reason else "", time.monotonic() - began)
        with lock:
            if results[index] is not None:
                return  # already failed for taking too long
            results[index] = result
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()
        if on_result:
            on_result(result)

    for index, probe in enumerate(probes):
        threading.Thread(target=work, args=(index, probe), daemon=True, name=f"kbpg-check-{probe.number}").start()
    # Every probe bounds its own I/O; this is the backstop for one that hangs anyway.
    deadline = time.monotonic() + budget
    while not done.wait(0.1):
        if time.monotonic() >= deadline or (cancel is not None and cancel.is_set()):
            break
    cancelled = cancel is not None and cancel.is_set() and not done.is_set()
    with lock:
        for index, probe in enumerate(probes):
            if results[index] is None:
                waited = time.monotonic() - clock
                reason = (f"{probe.target}: cancelled after {waited:.1f} s" if cancelled
                          else f"{probe.target}: no answer within {budget:.0f} s")
                late = CheckResult(probe.number, probe.check, probe.target, Verdict.FAIL, reason,
                                   waited if cancelled else budget)
                results[index] = late
                if on_result:
                    on_result(late)
    final = sorted((r for r in results if r is not None), key=lambda r: (r.number, r.target))
    return Report(final, started, time.monotonic() - clock, max((r.duration for r in final), default=0.0))
