"""`kbpg drill` and `kbpg switchover` on bad input: refused before anything is connected to.

The company's inventory (10.0.0.x, production servers elsewhere) is only parsed here: `cut` must be refused from
servers.tsv alone, naming the hosts that are not the lab's, with nothing connected to (no known_hosts written,
no SSH attempted).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from kbpg_tui.core.lab import hosts as lab_hosts
from kbpg_tui.core.ops.drill import lab_refusal
from kbpg_tui.core.ssh import Host

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


# --- lab_refusal on a lab whose node was replaced by a spare -------------------------------------------
# A replaced node keeps its hostname and takes the spare's address (issue 16): `cut` must take it for the lab
# host at that address (whatever servers.tsv calls it) and ask that host whether it runs.

LAB_DB = {"db-master-01": "198.18.0.120", "db-slave-01": "198.18.0.121", "db-slave-02": "198.18.0.122"}
LAB_HAPROXY = {"haproxy-01": "198.18.0.11", "haproxy-02": "198.18.0.12"}


def _ctx(db: dict[str, str], haproxy: dict[str, str] | None = None, lb: str = "198.18.0.10") -> SimpleNamespace:
    """What lab_refusal reads of a Context: the selected hosts (as servers.tsv names them) and the LB."""
    return SimpleNamespace(
        db_hosts=[Host(name, address) for name, address in db.items()],
        haproxy_hosts=[Host(name, address) for name, address in (haproxy or LAB_HAPROXY).items()],
        settings=SimpleNamespace(network=SimpleNamespace(lb_address=lb)))


@pytest.fixture
def lab_running(monkeypatch) -> tuple[set[str], list[str]]:
    """(names of the lab hosts that run, names of the lab hosts asked): no real cgroup is read."""
    running: set[str] = set()
    asked: list[str] = []

    def init_pid(host) -> int | None:
        asked.append(host.name)
        return 4242 if host.name in running else None

    monkeypatch.setattr(lab_hosts, "init_pid", init_pid)
    return running, asked


def test_cut_takes_a_replaced_node_for_the_spare_at_its_address(lab_running) -> None:
    running, asked = lab_running
    # db-slave-02's lab host (198.18.0.122) was stopped for good; db-spare-01 runs as db-slave-02 now.
    running.update({"db-master-01", "db-slave-01", "db-spare-01", "haproxy-01", "haproxy-02"})
    assert lab_refusal(_ctx({**LAB_DB, "db-slave-02": "198.18.0.123"})) is None
    assert "db-spare-01" in asked and "db-slave-02" not in asked


def test_cut_takes_a_replaced_haproxy_node_for_the_haproxy_spare(lab_running) -> None:
    running, _asked = lab_running
    running.update(LAB_DB)
    assert lab_refusal(_ctx(LAB_DB, {"haproxy-01": "198.18.0.11", "haproxy-02": "198.18.0.13"})) is None


def test_cut_asks_whether_the_spare_runs_and_names_it(lab_running) -> None:
    running, _asked = lab_running
    running.update({"db-master-01", "db-slave-01", "db-slave-02"})  # the old host runs, the spare does not
    reason = lab_refusal(_ctx({**LAB_DB, "db-slave-02": "198.18.0.123"}))
    assert reason is not None and "db-slave-02 (the lab's db-spare-01)" in reason and "not running" in reason
    assert "start-host" in reason


@pytest.mark.parametrize("address", ["10.0.0.123", "10.0.0.122", "198.18.0.200"])
def test_cut_still_refuses_an_address_that_is_no_lab_host_s(lab_running, address: str) -> None:
    running, asked = lab_running
    running.update({*LAB_DB, "db-spare-01", *LAB_HAPROXY})
    reason = lab_refusal(_ctx({**LAB_DB, "db-slave-02": address}))
    assert reason is not None and reason.startswith("cut: refused")
    assert f"db-slave-02 ({address}) is not lab hosts" in reason and "use kill or stop" in reason
    assert asked == [], "a host was looked at before the inventory passed"


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
