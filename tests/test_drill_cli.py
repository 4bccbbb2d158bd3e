"""`kbpg drill` and `kbpg switchover` on bad input: refused before anything is connected to.

The company's inventory (10.0.0.x, production servers elsewhere) is only parsed here: `cut` must be refused from
servers.tsv alone, naming the hosts that are not the lab's, with nothing connected to (no known_hosts written,
no SSH attempted).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .conftest import run_kbpg
from .test_cli_input import assert_bad_input


@pytest.fixture
def company(tmp_path: Path, real_inventory: Path) -> Path:
    workdir = tmp_path / "company"
    workdir.mkdir()
    shutil.copy(real_inventory, workdir / "servers.tsv")
    # An LB address of the lab's own range: even a bug could not send a probe to the company's 10.0.0.10.
    (workdir / "kbpg.toml").write_text('[network]\nlb_address = "198.18.0.10"\nprivate_subnet = "10.0.0.0/16"\n')
    assert run_kbpg("credentials", "generate", workdir=workdir).returncode == 0
    return workdir


def test_cut_is_refused_on_an_inventory_that_is_not_the_labs(company: Path) -> None:
    result = run_kbpg("drill", "cut", "--yes", workdir=company)
    assert_bad_input(result, "cut: refused", "not lab hosts", "db-master-01 (10.0.0.120)", "use kill or stop")
    assert not (company / "known_hosts").exists(), "something was connected to"


@pytest.mark.parametrize("args, fragments", [
    (["drill", "cut"], ["not a terminal: pass --yes"]),
    (["drill", "kill", "--yes", "--rounds", "0"], ["--rounds 0: must be between 1 and 100"]),
    (["drill", "kill", "--yes", "--rounds", "101"], ["--rounds 101: must be between 1 and 100"]),
    (["switchover"], ["not a terminal: pass --yes"]),
])
def test_drill_and_switchover_refuse_bad_input_before_connecting(company: Path, args: list[str],
                                                                 fragments: list[str]) -> None:
    result = run_kbpg(*args, workdir=company)
    assert_bad_input(result, *fragments)
    assert not (company / "known_hosts").exists()


def test_an_unknown_drill_mode_is_named_with_the_modes(company: Path) -> None:
    result = run_kbpg("drill", "explode", "--yes", workdir=company)
    assert result.returncode == 2
    assert "invalid choice: 'explode'" in result.stderr and "switchover, kill, stop, cut" in result.stderr.replace("'", "")


def test_drill_without_credentials_is_refused(tmp_path: Path, real_inventory: Path) -> None:
    workdir = tmp_path / "bare"
    workdir.mkdir()
    shutil.copy(real_inventory, workdir / "servers.tsv")
    (workdir / "kbpg.toml").write_text('[network]\nlb_address = "198.18.0.10"\n')
    result = run_kbpg("drill", "kill", "--yes", workdir=workdir)
    assert_bad_input(result, "postgres.env: not found")


def test_an_older_timing_plan_name_is_read_and_noted(tmp_path: Path) -> None:
    workdir = tmp_path / "old"
    workdir.mkdir()
    (workdir / "kbpg.toml").write_text('[patroni]\ntiming_plan = "standard"\n')
    result = run_kbpg("answers", "check", workdir=workdir)
    assert result.returncode == 0, result.stderr
    assert "note: patroni.timing_plan: the 'standard' timing plan is now called 'norm'" in result.stderr
