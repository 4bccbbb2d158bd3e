"""Package installs: when apt's lists need refreshing (the lab runs the real apt)."""

from __future__ import annotations

from kbpg_tui.core.ssh import Result
from kbpg_tui.core.steps import packages


class _Run:
    """A host where nothing is installed and ``apt-cache policy`` prints ``policy``."""

    def __init__(self, policy: str):
        self.policy = policy
        self.scripts: list[str] = []

    class settings:  # noqa: N801 (stands in for Settings)
        class ssh:  # noqa: N801
            command_timeout = 900

    def run(self, script: str, **kwargs) -> Result:
        self.scripts.append(script)
        if script.startswith("for p in"):
            names = script.split("for p in ", 1)[1].split(";", 1)[0].split()
            return Result(script, 0, "".join(f"{n} -\n" for n in names), "", 0.0)
        if script.startswith("apt-cache policy"):
            return Result(script, 0, self.policy, "", 0.0)
        return Result(script, 0, "", "", 0.0)

    def updates(self) -> int:
        return sum(1 for s in self.scripts if s.endswith(" update"))


def test_lists_that_know_every_package_are_not_refreshed() -> None:
    run = _Run("postgresql-16: 16.4-1\npatroni: 4.0.4-1\n")
    assert packages.ensure_installed(run, ["postgresql-16", "patroni"]) == ["postgresql-16", "patroni"]
    assert run.updates() == 0


def test_a_package_the_lists_do_not_know_refreshes_them() -> None:
    run = _Run("postgresql-16: 16.4-1\n")  # postgresql-16-pgvector: not in the (stale) lists at all
    packages.ensure_installed(run, ["postgresql-16", "postgresql-16-pgvector"])
    assert run.updates() == 1


def test_a_package_without_candidate_refreshes_them() -> None:
    run = _Run("postgresql-16: 16.4-1\npatroni: (none)\n")
    packages.ensure_installed(run, ["postgresql-16", "patroni"])
    assert run.updates() == 1
