"""`kbpg install` lists every warning in its summary with a count; --strict turns any warning into exit 1.

Field failure 6: a filesystem check that silently passes in unattended mode. The engine is replaced by one
that returns prepared reports, so the CLI's own summary and exit code are what is tested here (the lab test
runs the real preflight: the lab's filesystem is not XFS).
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from kbpg_tui import cli
from kbpg_tui.core import install as inst
from kbpg_tui.core import inventory as inv
from kbpg_tui.core import runlock
from kbpg_tui.core import settings as cfg
from kbpg_tui.core.engine import Step, StepReport, TaskReport
from kbpg_tui.core.events import Status

XFS = "db-master-01: the data directory /var/lib/postgresql/16/patroni is on ext4; XFS is recommended"


def _reports(warnings: dict[str, list[str]], status: Status = Status.UNCHANGED) -> list[StepReport]:
    tasks = [TaskReport("01", host, "host", status, "", 0.1, texts) for host, texts in warnings.items()]
    return [StepReport(Step("01", "Preflight", []), status, 0.2, tasks)]


@pytest.fixture
def fake_install(real_inventory: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cfg.save_settings(cfg.Settings(), tmp_path / "kbpg.toml")
    selection = inv.load_selection(real_inventory)

    monkeypatch.setattr(runlock, "changes_hosts", lambda steps: False)  # the run lock lives on DB nodes: none here
    monkeypatch.setattr(cli, "_install_node_changes", lambda *a: None)  # no cluster to compare servers.tsv with

    def use(reports: list[StepReport]) -> Path:
        engine = SimpleNamespace(run=lambda steps: reports)
        ctx = SimpleNamespace(selection=selection, cancel=threading.Event())
        monkeypatch.setattr(inst, "prepare", lambda *a, **k: SimpleNamespace(ctx=ctx, engine=engine, close=lambda: None))
        return tmp_path

    return use


def test_every_warning_is_listed_with_its_host_and_counted(fake_install, capsys) -> None:
    workdir = fake_install(_reports({"db-master-01": [XFS], "db-slave-01": ["the clock is not reported as NTP-synchronised"],
                                     "cluster": ["restart pending on db-slave-02"]}))
    assert cli.main(["--workdir", str(workdir), "install", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "Warnings (3):\n" in out
    assert f"  - {XFS}\n" in out  # already naming its host: not named twice
    assert "  - db-slave-01: the clock is not reported as NTP-synchronised\n" in out
    assert "  - cluster: restart pending on db-slave-02\n" in out
    assert "warnings 3 in" in out and "all hosts done." in out


def test_strict_exits_1_on_any_warning_after_the_work(fake_install, capsys) -> None:
    workdir = fake_install(_reports({"db-master-01": [XFS]}))
    assert cli.main(["--workdir", str(workdir), "install", "--yes", "--strict"]) == 1
    out = capsys.readouterr().out
    assert "Warnings (1):" in out and "all hosts done." in out and "--strict: 1 warning(s), exit 1." in out


def test_strict_without_warnings_exits_0(fake_install, capsys) -> None:
    workdir = fake_install(_reports({"db-master-01": []}))
    assert cli.main(["--workdir", str(workdir), "install", "--yes", "--strict"]) == 0
    assert "Warnings: none" in capsys.readouterr().out


def test_a_failed_run_still_lists_its_warnings(fake_install, capsys) -> None:
    workdir = fake_install(_reports({"db-master-01": [XFS]}, Status.FAILED))
    assert cli.main(["--workdir", str(workdir), "install", "--yes"]) == 1
    assert f"  - {XFS}" in capsys.readouterr().out


def test_inventory_warnings_are_in_the_summary(real_inventory: Path) -> None:
    selection = inv.load_selection(real_inventory)
    one_haproxy = inv.Selection(selection.source, selection.db_nodes, selection.haproxy_nodes[:1],
                                (inv.Problem(0, "only 1 HAProxy node matches", severity="warning"),))
    lines = cli.install_warnings(_reports({"db-master-01": [XFS, XFS]}), one_haproxy)
    assert lines == [f"{selection.source}: warning: only 1 HAProxy node matches", XFS]


def test_strict_is_documented_in_help(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["install", "--help"])
    assert "--strict" in capsys.readouterr().out
