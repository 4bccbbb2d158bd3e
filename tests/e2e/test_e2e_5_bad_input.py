"""Bad input on real hosts: each run ends quickly with a message naming the host and what to do."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from kbpg_tui.core import settings as cfg

from .conftest import HAPROXY_HOSTS, Installed, kbpg, on_host

pytestmark = [pytest.mark.lab, pytest.mark.e2e]


def copy_workdir(installed: Installed, tmp_path: Path) -> Path:
    workdir = tmp_path / "work"
    shutil.copytree(installed.workdir, workdir, ignore=shutil.ignore_patterns("logs", "reports", ".kbpg-lab"))
    return workdir


def edit_settings(workdir: Path, change) -> None:
    settings = cfg.load_settings(workdir / "kbpg.toml")
    change(settings)
    cfg.save_settings(settings, workdir / "kbpg.toml")


def test_unknown_host_key_is_refused_without_a_prompt(installed: Installed, tmp_path: Path) -> None:
    workdir = copy_workdir(installed, tmp_path)
    edit_settings(workdir, lambda s: s.ssh.pinned_host_keys.clear())
    (workdir / "known_hosts").unlink(missing_ok=True)
    result = kbpg(workdir, "install", "--yes", "--step", "01", timeout=120)
    assert result.returncode == 1
    assert re.search(r"unknown host key ssh-ed25519 SHA256:\S+", result.stdout)
    assert "[ssh.pinned_host_keys]" in result.stdout
    assert "db-master-01 (198.18.0.120)" in result.stdout
    assert not (workdir / "known_hosts").exists() or "198.18.0.120" not in (workdir / "known_hosts").read_text()


def test_changed_host_key_is_refused(installed: Installed, tmp_path: Path) -> None:
    workdir = copy_workdir(installed, tmp_path)
    edit_settings(workdir, lambda s: s.ssh.pinned_host_keys.update({"198.18.0.121": "SHA256:" + "A" * 43}))
    (workdir / "known_hosts").unlink(missing_ok=True)
    result = kbpg(workdir, "install", "--yes", "--step", "01", timeout=120)
    assert result.returncode == 1
    assert "db-slave-01 (198.18.0.121): host key" in result.stdout and "does not match the pinned" in result.stdout


def test_wrong_sudo_password_names_the_host(installed: Installed, tmp_path: Path) -> None:
    workdir = copy_workdir(installed, tmp_path)
    (workdir / "credentials" / "sudo.env").write_text("KBPG_SUDO_PASSWORD='certainly-not-it'\n")
    started = time.monotonic()
    result = kbpg(workdir, "install", "--yes", "--step", "01", timeout=120)
    assert result.returncode == 1
    assert "haproxy-02: wrong sudo password for kbops" in result.stdout
    assert "certainly-not-it" not in result.stdout + result.stderr
    assert time.monotonic() - started < 60


def test_unreachable_host_fails_within_the_timeout(installed: Installed, tmp_path: Path) -> None:
    workdir = copy_workdir(installed, tmp_path)
    servers = (workdir / "servers.tsv").read_text().replace("\t198.18.0.122\t", "\t198.18.0.99\t")
    (workdir / "servers.tsv").write_text(servers)
    edit_settings(workdir, lambda s: setattr(s.ssh, "connect_timeout", 3))
    started = time.monotonic()
    result = kbpg(workdir, "install", "--yes", "--step", "01", timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "db-slave-02 (198.18.0.99)" in result.stdout
    assert "check the address in servers.tsv" in result.stdout or "cannot connect over SSH" in result.stdout
    assert elapsed < 40, f"took {elapsed:.1f} s"
    # The other hosts were still checked.
    assert re.search(r"01 db-master-01\s+host\s+unchanged", result.stdout)


def test_port_already_taken_names_host_port_and_process(installed: Installed, tmp_path: Path) -> None:
    workdir = copy_workdir(installed, tmp_path)
    edit_settings(workdir, lambda s: setattr(s.ports, "haproxy_stats", 9999))
    host = HAPROXY_HOSTS[0]
    on_host(installed.workdir, host.address,
            f"systemd-run --unit kbpg-test-squatter python3 -m http.server 9999 --bind {host.address} && sleep 1")
    try:
        result = kbpg(workdir, "install", "--yes", "--step", "01", timeout=120)
    finally:
        on_host(installed.workdir, host.address, "systemctl stop kbpg-test-squatter")
    assert result.returncode == 1
    assert re.search(r"haproxy-01: port 9999 \(ports.haproxy_stats\) is already taken by python3 \(pid \d+\)", result.stdout)
