"""Package installs: when apt's lists need refreshing (the lab runs the real apt)."""

from __future__ import annotations

from pathlib import Path

from kbpg_tui.core.engine import TaskRun
from kbpg_tui.core.steps import packages

from .fakes import FakePool, ScriptedConnection, result
from .test_patroni_config import make_run


def bare_host(real_inventory: Path, policy: str) -> tuple[TaskRun, ScriptedConnection]:
    """A host where nothing is installed and ``apt-cache policy`` prints ``policy``."""

    def answer(script: str, stdin: bytes):
        if script.startswith("for p in"):
            names = script.split("for p in ", 1)[1].split(";", 1)[0].split()
            return result("".join(f"{n} -\n" for n in names))
        if script.startswith("apt-cache policy"):
            return result(policy)
        return result("")

    run = make_run(real_inventory)
    host = run.ctx.db_hosts[0]
    connection = ScriptedConnection(host, answer)
    run.ctx.pool = FakePool({host.name: connection})
    return TaskRun(run.ctx, "02", host), connection


def updates(host: ScriptedConnection) -> int:
    return sum(1 for s in host.scripts if s.endswith(" update"))


def test_lists_that_know_every_package_are_not_refreshed(real_inventory: Path) -> None:
    run, host = bare_host(real_inventory, "postgresql-16: 16.4-1\npatroni: 4.0.4-1\n")
    assert packages.ensure_installed(run, ["postgresql-16", "patroni"]) == ["postgresql-16", "patroni"]
    assert updates(host) == 0


def test_a_package_the_lists_do_not_know_refreshes_them(real_inventory: Path) -> None:
    run, host = bare_host(real_inventory, "postgresql-16: 16.4-1\n")  # postgresql-16-pgvector: not in the (stale) lists at all
    packages.ensure_installed(run, ["postgresql-16", "postgresql-16-pgvector"])
    assert updates(host) == 1


def test_a_package_without_candidate_refreshes_them(real_inventory: Path) -> None:
    run, host = bare_host(real_inventory, "postgresql-16: 16.4-1\npatroni: (none)\n")
    packages.ensure_installed(run, ["postgresql-16", "patroni"])
    assert updates(host) == 1
