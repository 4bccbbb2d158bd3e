"""Spare hosts and hosts stopped for good, on the running lab (issue 16's playground).

The spares (db-spare-01, db-spare-02, haproxy-spare-01) are not booted by `up`; `start-host` boots one and kbpg's
own SSH reaches it with the host key pinned in the lab's kbpg.toml. `stop-host` takes a host down as a dead server:
its address stops answering without a word to its peers (an open session sees no FIN), nothing of it is left
running on this machine, and `start-host` brings it back with its disk as it was (or blank with --fresh). Every
host this module starts or stops is put back as it was (spares down, the others running) for the tests after it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kbpg_tui.core import install as inst
from kbpg_tui.core import lab
from kbpg_tui.core import ssh as kbpg_ssh
from kbpg_tui.core.lab import hosts as hosts_mod
from kbpg_tui.core.lab.topology import SPARE_HOSTS, host_by_name
from kbpg_tui.core.lab.util import LabError
from kbpg_tui.core.settings import load_settings

from .conftest import sh

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
TIMINGS: dict[str, float] = {}


def _kbpg_connection(lab_workdir: Path, tmp_path: Path, host, pinned: dict[str, str]) -> kbpg_ssh.Connection:
    """kbpg's own SSH as `install --yes` makes it: no prompt, pinned keys only, a known_hosts of its own."""
    options = inst.ssh_options(lab_workdir, load_settings(lab_workdir / "kbpg.toml"))
    options.pinned_host_keys = pinned
    return kbpg_ssh.Connection(kbpg_ssh.Host(host.name, host.address, host.user_ssh), options,
                               kbpg_ssh.KnownHosts(tmp_path / f"known_hosts-{host.name}"), sink=lambda event: None,
                               prompt=None, cancel=threading.Event())


def _kbpg_lab(lab_workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kbpg_tui", "--workdir", str(lab_workdir), "lab", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def spares_up(lab_workdir):
    """Every spare booted (timed), then stopped again at the end of the module."""
    assert all(not host.running and host.stopped for host in lab.status(probe_ssh=False).hosts if host.spare)
    for spare in SPARE_HOSTS:
        started = time.monotonic()
        result = lab.start_host(spare.name)
        TIMINGS[f"start-host {spare.name}"] = time.monotonic() - started
        assert result.up and result.changed, result.render()
    yield
    for spare in SPARE_HOSTS:
        lab.stop_host(spare.name)
    print("\nlab timings: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in TIMINGS.items()))


def test_up_leaves_the_spares_down_and_the_lab_up(lab_workdir):
    result = lab.status(lab_workdir, probe_ssh=False)
    assert result.state == "up"
    spares = [host for host in result.hosts if host.spare]
    assert [host.name for host in spares] == [host.name for host in SPARE_HOSTS]
    assert all(host.stopped and not host.running and not host.ssh for host in spares)
    assert "spare, not started: kbpg lab start-host db-spare-01" in result.render()


@pytest.mark.parametrize("spare", SPARE_HOSTS, ids=[host.name for host in SPARE_HOSTS])
def test_a_started_spare_answers_kbpg_ssh_with_its_pinned_key_only(spares_up, lab_workdir, tmp_path, spare):
    pinned = load_settings(lab_workdir / "kbpg.toml").ssh.pinned_host_keys
    assert spare.address in pinned
    connection = _kbpg_connection(lab_workdir, tmp_path, spare, dict(pinned))
    try:
        result = connection.run("hostname; ip -4 -o addr show dev eth0; systemctl is-system-running; "
                                "command -v patroni haproxy || echo bare")
    finally:
        connection.close()
    lines = result.stdout.splitlines()
    assert lines[0] == spare.name
    assert f"inet {spare.address}/24" in lines[1]
    assert lines[2:] == ["running", "bare"]  # a bare server: kbpg installs everything on it
    # Another pin for its address: refused before anything runs.
    wrong = dict(pinned, **{spare.address: "SHA256:" + "A" * 43})
    (tmp_path / "wrong").mkdir()
    other = _kbpg_connection(lab_workdir, tmp_path / "wrong", spare, wrong)
    try:
        with pytest.raises(kbpg_ssh.HostKeyError, match="does not match the pinned"):
            other.run("true")
    finally:
        other.close()


def test_status_shows_a_started_spare_running(spares_up, lab_workdir):
    result = lab.status(lab_workdir)
    assert result.state == "up"
    spares = {host.name: host for host in result.hosts if host.spare}
    assert all(host.running and host.ssh and not host.stopped and host.system_state == "running" for host in spares.values())
    line = next(line for line in result.render().splitlines() if line.startswith("haproxy-spare-01"))
    assert "running (spare)" in line


def test_stop_host_is_a_dead_server_and_start_host_brings_it_back(spares_up, lab_workdir, connect):
    target = host_by_name("db-spare-01")
    peer = connect(host_by_name("db-master-01"))
    client = connect(target)
    code, _, _ = sh(client, "echo kept > /root/disk-marker && sync")
    assert code == 0
    _, mac, _ = sh(client, "cat /sys/class/net/eth0/address")
    assert mac.strip() == target.mac
    transport = client.get_transport()
    assert transport is not None and transport.is_active()

    started = time.monotonic()
    stopped = _kbpg_lab(lab_workdir, "stop-host", target.name)
    TIMINGS["stop-host"] = time.monotonic() - started
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped for good" in stopped.stdout
    # A dead server says nothing: the open session got no FIN or RST (its link went before its processes).
    time.sleep(2)
    assert transport.is_active()
    # Nothing of it runs on this machine, and its address no longer answers anyone.
    assert hosts_mod.host_leftovers(target) == []
    assert hosts_mod.init_pid(target) is None
    code, _, _ = sh(peer, f"ping -c1 -W1 {target.address} || nc -z -w2 {target.address} 22")
    assert code != 0
    with pytest.raises(LabError, match="not running"):
        lab.set_host_link(target.name, up=True)
    status = _kbpg_lab(lab_workdir, "status")
    assert status.returncode == 0 and status.stdout.startswith("lab: up")
    assert f"stopped for good: kbpg lab start-host {target.name}" in status.stdout
    again = lab.stop_host(target.name)
    assert not again.changed and "already stopped" in again.message

    # Back, with its disk as it was, its host key and address unchanged.
    started = time.monotonic()
    back = _kbpg_lab(lab_workdir, "start-host", target.name)
    TIMINGS["start-host (its disk kept)"] = time.monotonic() - started
    assert back.returncode == 0, back.stderr + back.stdout
    client = connect(target)
    _, marker, _ = sh(client, "cat /root/disk-marker; systemctl is-system-running --wait; cat /sys/class/net/eth0/address")
    assert marker.split() == ["kept", "running", target.mac]  # the same MAC: its peers' ARP entries stay right
    code, _, _ = sh(peer, f"nc -z -w2 {target.address} 22")
    assert code == 0
    assert lab.status(probe_ssh=False).state == "up"

    # Stopped again and started on a blank disk: a new server with the same name, address and host key.
    lab.stop_host(target.name)
    started = time.monotonic()
    lab.start_host(target.name, fresh=True)
    TIMINGS["start-host --fresh"] = time.monotonic() - started
    client = connect(target)
    _, out, _ = sh(client, "cat /root/disk-marker 2>/dev/null || echo blank; hostname")
    assert out.split() == ["blank", target.name]


def test_a_cluster_host_stopped_for_good_comes_back_with_the_lab_whole(lab_workdir, connect, tmp_path):
    """The same on one of the lab's own hosts: the lab is `up` without it, and whole again after start-host."""
    target = host_by_name("db-slave-02")
    try:
        result = lab.stop_host(target.name)
        assert result.state == "up" and result.changed
        assert next(host for host in result.hosts if host.name == target.name).stopped
        up_again = lab.up(lab_workdir)  # a second `up` changes nothing, and names the host down
        assert not up_again.changed and f"stopped for good: {target.name}" in up_again.message
    finally:
        started = time.monotonic()
        back = lab.start_host(target.name)
        TIMINGS[f"start-host {target.name} (its disk kept)"] = time.monotonic() - started
    assert back.state == "up"
    assert all(host.running for host in back.hosts if not host.spare)
    console = tmp_path / f"{target.name}.console.log"
    console.write_bytes(hosts_mod.host_paths(target).console.read_bytes())
    print(f"\n{target.name}'s console: {console}")
    client = connect(target)
    code, out, _ = sh(client, "hostname; systemctl is-system-running --wait")
    assert (code, out.split()) == (0, [target.name, "running"])


def test_memory_of_an_idle_spare(spares_up):
    """Reported, not judged: what one more idle host costs this machine."""
    time.sleep(3)
    usage = lab.memory_usage()
    for spare in SPARE_HOSTS:
        assert usage[spare.name] > 0
    print("\nidle memory (PSS, MiB): " + ", ".join(f"{name} {value / 2**20:.0f}" for name, value in usage.items()))
