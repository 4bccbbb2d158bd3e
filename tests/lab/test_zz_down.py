"""Last in the session (see the ordering in tests/conftest.py): `down` leaves nothing; a crashed `up` is cleaned up too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kbpg_tui.core import lab
from kbpg_tui.core.lab import hosts

pytestmark = [pytest.mark.lab, pytest.mark.lab_teardown]

REPO = Path(__file__).resolve().parents[2]


def _lab_processes() -> list[int]:
    """Processes of this machine in a lab cgroup or a lab network namespace."""
    lab_netns = set()
    for name in hosts.netns_names():
        if name.startswith("kbpglab"):
            lab_netns.add(os.stat(f"/run/netns/{name}").st_ino)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cgroups = Path(f"/proc/{entry}/cgroup").read_text()
            netns = os.stat(f"/proc/{entry}/ns/net").st_ino
        except OSError:
            continue
        if "/kbpglab" in cgroups or netns in lab_netns:
            found.append(int(entry))
    return found


def assert_nothing_left() -> None:
    assert {kind: items for kind, items in hosts.leftovers().items() if items} == {}
    assert _lab_processes() == []
    mounts = Path("/proc/self/mounts").read_text()
    assert "kbpg-lab/hosts" not in mounts
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    assert "198.18.0." not in routes


def test_down_leaves_nothing_behind(lab_workdir):
    assert lab.status(lab_workdir, probe_ssh=False).state == "up"
    events = []
    result = lab.down(lab_workdir, progress=events.append)
    assert result.state == "down" and result.changed
    assert all(not host.running and not host.ssh for host in result.hosts)
    assert_nothing_left()
    # The work dir keeps what the operator may still use.
    for name in ("servers.tsv", "kbpg.toml", "lab_ssh_key", "lab-repo.asc"):
        assert (lab_workdir / name).exists()
    again = lab.down(lab_workdir)
    assert again.state == "down" and not again.changed


def test_down_cleans_up_after_a_crashed_up(tmp_path, monkeypatch):
    if lab.status(probe_ssh=False).state != "down":
        pytest.skip("needs the lab down")
    process = subprocess.Popen(
        [sys.executable, "-m", "kbpg_tui.core.lab.cli", "--workdir", str(tmp_path), "lab", "up"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        assert process.stdout is not None
        for line in process.stdout:
            if "boot: db-master-01" in line or time.monotonic() > deadline:
                break
        process.send_signal(signal.SIGKILL)  # a crash in the middle of booting the hosts
    finally:
        process.wait(timeout=30)
    partial = lab.status(probe_ssh=False)
    assert partial.state == "partial"
    assert any(host.running for host in partial.hosts)
    # A host whose systemd never acts on the poweroff signal (lab.md saw one hang):
    # `down` must SIGKILL it after the timeout.
    frozen = next(host for host in lab.HOSTS if hosts.init_pid(host) is not None)
    os.kill(hosts.init_pid(frozen), signal.SIGSTOP)
    monkeypatch.setattr(hosts, "STOP_TIMEOUT", 3.0)
    events = []
    result = lab.down(progress=events.append)
    assert result.state == "down"
    assert any("killed" in getattr(event, "text", "") and frozen.name in event.text for event in events)
    assert_nothing_left()
