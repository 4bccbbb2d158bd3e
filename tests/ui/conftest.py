"""Wizard tests: the real app on a copy of a demo work directory. Nothing here connects to a host
(diagnostics and SSH checks are exercised for real by the tmux test on the lab)."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest

from kbpg_tui.core.checks.report import CheckResult, Report
from kbpg_tui.core.cluster import Member
from kbpg_tui.ui.screens import diagnostics as diagnostics_screen

from . import fabricated

DEMO = Path(__file__).resolve().parent / "demo"
SIZE = (100, 30)


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A work dir with servers.tsv, kbpg.toml and postgres.env (fixed fake values), as the relative path "demo"."""
    shutil.copytree(DEMO, tmp_path / "demo")
    os.chmod(tmp_path / "demo" / "credentials", 0o700)
    os.chmod(tmp_path / "demo" / "credentials" / "postgres.env", 0o600)
    monkeypatch.chdir(tmp_path)
    return Path("demo")


@pytest.fixture
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A first install: servers.tsv only, no kbpg.toml, no credentials."""
    (tmp_path / "fresh").mkdir()
    shutil.copy(DEMO / "servers.tsv", tmp_path / "fresh" / "servers.tsv")
    monkeypatch.chdir(tmp_path)
    return Path("fresh")


# --- the diagnostics screen's core, faked ---------------------------------------------------------------------

Checks = Callable[[Callable[[CheckResult], None], threading.Event], Report]  # (on_result, cancel) -> report


def report_each(on_result: Callable[[CheckResult], None], cancel: threading.Event) -> Report:
    """The default checks: fabricated.report()'s results reported one by one, in probe order, then the report."""
    report = fabricated.report()
    for result in report.results:
        on_result(result)
    return report


class FakeDiagnostics:
    """What the diagnostics screen runs, in place of the core (fixture ``fake_diagnostics``): ``inst.prepare`` gives
    a run whose context holds only its cancel event (the one its SSH pool would cancel with);
    ``Diagnostics(ctx).run`` calls ``checks(on_result, cancel)``; ``cluster_view(ctx)`` calls ``cluster()``.
    ``cancels`` records the cancel event the checks were given ("checks") and the one their run was prepared
    with ("prepared")."""

    def __init__(self, checks: Checks = report_each, cluster: Callable[[], list[Member]] = fabricated.members):
        self.checks, self.cluster = checks, cluster
        self.cancels: dict[str, threading.Event | None] = {}


@pytest.fixture
def fake_diagnostics(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeDiagnostics]:
    """``fake_diagnostics(checks=..., cluster=...)`` puts a :class:`FakeDiagnostics` in the screen's module."""

    def install(checks: Checks = report_each, cluster: Callable[[], list[Member]] = fabricated.members) -> FakeDiagnostics:
        fake = FakeDiagnostics(checks, cluster)

        class Run:
            def __init__(self, cancel: threading.Event | None) -> None:
                self.ctx = SimpleNamespace(cancel=cancel)

            def close(self) -> None:
                pass

        class Diagnostics:
            def __init__(self, ctx: SimpleNamespace) -> None:
                self.ctx = ctx

            def run(self, on_result=None, only=None, cancel=None) -> Report:
                fake.cancels["checks"], fake.cancels["prepared"] = cancel, self.ctx.cancel
                return fake.checks(on_result, cancel)

        monkeypatch.setattr(diagnostics_screen.inst, "prepare", lambda *args, cancel=None, **kwargs: Run(cancel))
        monkeypatch.setattr(diagnostics_screen, "Diagnostics", Diagnostics)
        monkeypatch.setattr(diagnostics_screen, "cluster_view", lambda ctx: fake.cluster())
        return fake

    return install
