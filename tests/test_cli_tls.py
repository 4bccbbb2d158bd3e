"""`kbpg tls status` and `kbpg tls renew` from the command line, on certificates made by kbpg's own CA code.

Nothing here connects anywhere: status reads credentials/tls/ only, renew is refused on bad input before connecting.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kbpg_tui.core import settings as cfg
from kbpg_tui.core import tls

from .conftest import run_kbpg
from .test_cli_input import assert_bad_input


@pytest.fixture
def workdir(tmp_path: Path, real_inventory: Path) -> Path:
    workdir = tmp_path / "w"
    workdir.mkdir()
    shutil.copy(real_inventory, workdir / "servers.tsv")
    (workdir / "kbpg.toml").write_text('[network]\nlb_address = "198.18.0.10"\n')
    tls.ensure_ca(workdir)
    return workdir


def issue(workdir: Path, name: str, days: int) -> None:
    settings = cfg.Settings()
    settings.tls.cert_days = days
    tls.ensure_node_cert(workdir, name, [name], ["198.18.0.11"], settings, force=True)


def test_status_lists_each_certificate_and_exits_0_when_none_is_due(workdir: Path) -> None:
    issue(workdir, "db-master-01", 365)
    result = run_kbpg("tls", "status", "--json", workdir=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {Path(row["file"]).name: row for row in json.loads(result.stdout)["certificates"]}
    assert set(rows) == {"ca.crt", "db-master-01.crt"}
    assert rows["db-master-01.crt"]["ip"] == ["198.18.0.11"] and not rows["db-master-01.crt"]["renew_due"]
    assert "PRIVATE KEY" not in result.stdout


def test_status_exits_1_naming_a_certificate_due_for_renewal(workdir: Path) -> None:
    issue(workdir, "db-master-01", 365)
    issue(workdir, "haproxy-01", 10)  # within renew_days (30)
    result = run_kbpg("tls", "status", workdir=workdir)
    assert result.returncode == 1, result.stdout + result.stderr
    due = [line for line in result.stdout.splitlines() if "RENEWAL DUE" in line]
    assert len(due) == 1 and due[0].startswith("haproxy-01.crt"), result.stdout


def test_renew_is_refused_when_tls_is_off(workdir: Path) -> None:
    (workdir / "kbpg.toml").write_text('[network]\nlb_address = "198.18.0.10"\n[tls]\nenabled = false\n')
    result = run_kbpg("tls", "renew", "--yes", workdir=workdir)
    assert_bad_input(result, "tls.enabled is false")
    assert not (workdir / "known_hosts").exists(), "something was connected to"


def test_diagnose_on_an_older_postgres_env_says_to_run_install_once(workdir: Path) -> None:
    assert run_kbpg("credentials", "generate", workdir=workdir).returncode == 0
    env = workdir / "credentials" / "postgres.env"
    env.write_text("".join(line + "\n" for line in env.read_text().splitlines()
                           if not line.startswith(("POSTGRES_MONITOR_USER=", "POSTGRES_MONITOR_PASS="))))
    for command in (["diagnose", "--json"], ["drill", "kill", "--yes"]):
        result = run_kbpg(*command, workdir=workdir)
        assert_bad_input(result, "lacks POSTGRES_MONITOR_USER, POSTGRES_MONITOR_PASS",
                         "names a newer kbpg adds: run `kbpg install` once to add them")
    assert not (workdir / "known_hosts").exists(), "something was connected to"
