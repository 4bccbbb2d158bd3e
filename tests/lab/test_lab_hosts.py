"""Each lab host is a real Debian host: systemd running, its own name and address, SSH, the network."""

from __future__ import annotations

import pytest

from kbpg_tui.core import lab
from kbpg_tui.core.lab.topology import HOSTS, LabHost

from .conftest import HOST_IDS, sh

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("host", HOSTS, ids=HOST_IDS)
def test_host_runs_systemd_with_its_own_name_and_address(connect, host: LabHost):
    client = connect(host)
    code, out, _ = sh(client, "systemctl is-system-running")
    assert (code, out.strip()) == (0, "running")
    _, failed, _ = sh(client, "systemctl list-units --failed --plain --no-legend")
    assert failed.strip() == ""
    _, name, _ = sh(client, "hostname")
    assert name.strip() == host.name
    _, addresses, _ = sh(client, "ip -4 -o addr show dev eth0")
    assert f"inet {host.address}/24" in addresses
    # PID 1 is the host's own systemd, in a container of its own.
    _, comm, _ = sh(client, "cat /proc/1/comm; systemd-detect-virt --container")
    assert comm.split() == ["systemd", "container-other"]


@pytest.mark.parametrize("host", HOSTS, ids=HOST_IDS)
def test_host_reaches_every_other_host(connect, host: LabHost):
    client = connect(host)
    others = [other for other in HOSTS if other.name != host.name]
    for other in others:
        code, out, err = sh(client, f"ping -c1 -W2 {other.address} >/dev/null && nc -z -w2 {other.address} 22")
        assert code == 0, f"{host.name} -> {other.name}: {out}{err}"


def test_hosts_have_no_outside_route(connect):
    """Everything the hosts install comes from the lab's repository: no default route, no Debian sources."""
    for host in HOSTS:
        client = connect(host)
        _, routes, _ = sh(client, "ip -4 route")
        assert "default" not in routes
        assert routes.strip() == "198.18.0.0/24 dev eth0 proto kernel scope link src " + host.address
        _, sources, _ = sh(client, "cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null; ls /var/lib/apt/lists/")
        assert "debian.org" not in sources and "Packages" not in sources


def test_status_lists_every_host_running(lab_workdir):
    result = lab.status(lab_workdir)
    assert result.state == "up"
    # The lab's hosts, then the spares (booted on demand: `kbpg lab start-host`).
    assert [host.name for host in result.hosts] == HOST_IDS + [host.name for host in lab.SPARE_HOSTS]
    for host in result.hosts[: len(HOSTS)]:
        assert host.running and host.ssh, host
        assert host.system_state == "running" and host.failed_units == []
        assert not host.spare and not host.stopped
    table = result.render()
    for host in HOSTS:
        assert host.name in table and host.address in table


def test_second_up_is_a_no_op(lab_workdir):
    from kbpg_tui.core.lab import hosts

    pids = {host.name: hosts.init_pid(host) for host in HOSTS}
    mtimes = {name: (lab_workdir / name).stat().st_mtime_ns for name in ("servers.tsv", "kbpg.toml", "lab_ssh_key")}
    events = []
    result = lab.up(lab_workdir, progress=events.append)
    assert result.up and not result.changed
    assert "already up" in result.message
    assert {host.name: hosts.init_pid(host) for host in HOSTS} == pids
    assert {name: (lab_workdir / name).stat().st_mtime_ns for name in mtimes} == mtimes


def test_a_host_link_can_be_cut_and_restored(connect):
    """Failover drills cut a leader's network: the host keeps running, unreachable until restored."""
    client = connect(HOSTS[-2])
    target = HOSTS[-1]
    lab.set_host_link(target.name, up=False)
    try:
        code, _, _ = sh(client, f"ping -c1 -W1 {target.address}")
        assert code != 0
    finally:
        lab.set_host_link(target.name, up=True)
    code, _, _ = sh(client, f"for i in 1 2 3 4 5; do ping -c1 -W1 {target.address} && exit 0; done; exit 1")
    assert code == 0
