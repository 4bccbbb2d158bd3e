"""The lab's spare hosts and its stopped hosts, without a running lab: the layout (spares pinned, never in
servers.tsv), `status` telling a host down on purpose from a broken lab, and `kbpg lab stop-host|start-host`
refusing what it must before anything is touched.

Nothing here reaches a real lab host: every function that would act on one is replaced by a fake that fails the
test if it is called, and the lab's state and lock files are redirected to a temporary directory.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
from pathlib import Path

import pytest

from kbpg_tui.core.inventory import load_selection
from kbpg_tui.core.lab import cli as lab_cli
from kbpg_tui.core.lab import hosts as hosts_mod
from kbpg_tui.core.lab import lab as lab_mod
from kbpg_tui.core.lab import workdir as lab_files
from kbpg_tui.core.lab.topology import ALL_HOSTS, CLUSTER_HOSTS, HOSTS, PINNED_HOSTS, SPARE_HOSTS, SUBNET, host_by_name
from kbpg_tui.core.lab.util import LabError
from kbpg_tui.core.settings import load_settings, save_settings

FINGERPRINTS = {host.address: lab_files.new_key_pair(host.name).fingerprint for host in ALL_HOSTS}
SPARES = {"db-spare-01": "198.18.0.123", "db-spare-02": "198.18.0.124", "haproxy-spare-01": "198.18.0.13"}


# --- layout ---------------------------------------------------------------------------------------


def test_the_spares_are_the_brief_s_hosts_and_kept_apart_from_the_cluster_hosts():
    assert {host.name: host.address for host in SPARE_HOSTS} == SPARES
    assert [host.kind for host in SPARE_HOSTS] == ["db", "db", "haproxy"]
    assert all(host.user_ssh == "root" for host in SPARE_HOSTS)
    # HOSTS (what the e2e suite, the LB stand-in's config and the image recipe read) is unchanged: 7 hosts.
    assert len(HOSTS) == 7 and not set(SPARE_HOSTS) & set(HOSTS)
    assert ALL_HOSTS == HOSTS + SPARE_HOSTS and PINNED_HOSTS == CLUSTER_HOSTS + SPARE_HOSTS
    # Every name, address, veth and netns unique; every address in the lab's own range.
    for attribute in ("name", "address", "veth_host", "veth_peer", "netns", "fqdn"):
        values = [getattr(host, attribute) for host in ALL_HOSTS]
        assert len(set(values)) == len(values), attribute
    assert all(len(host.veth_host) < 16 and len(host.veth_peer) < 16 for host in ALL_HOSTS)
    import ipaddress

    assert all(ipaddress.ip_address(host.address) in ipaddress.ip_network(SUBNET) for host in ALL_HOSTS)
    assert host_by_name("db-spare-02").address == "198.18.0.124"


def test_servers_tsv_has_no_spare_and_selects_what_it_did(tmp_path):
    path = lab_files.write_servers_tsv(tmp_path)
    text = path.read_text()
    for name, address in SPARES.items():
        assert name not in text and f"\t{address}\t" not in text
    with path.open(encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.reader(handle, delimiter="\t") if row]
    assert not {row[3] for row in rows[1:]} & set(SPARES.values())  # no decoy on a spare's address either
    selection = load_selection(path)
    assert sorted(s.hostname for s in selection.db_nodes) == ["db-master-01", "db-slave-01", "db-slave-02"]
    assert sorted(s.hostname for s in selection.haproxy_nodes) == ["haproxy-01", "haproxy-02"]


def test_the_spares_keys_are_pinned_in_kbpg_toml_and_known_to_the_lab(tmp_path):
    assert lab_files.write_kbpg_toml(tmp_path, FINGERPRINTS)
    pinned = load_settings(tmp_path / "kbpg.toml").ssh.pinned_host_keys
    assert pinned == {host.address: FINGERPRINTS[host.address] for host in PINNED_HOSTS}
    for address in SPARES.values():
        assert pinned[address] == FINGERPRINTS[address]
    keys = lab_files.host_keys(tmp_path)
    assert set(keys) == {host.name for host in ALL_HOSTS}
    lab_files.write_host_key_files(tmp_path, keys)
    known = json.loads((tmp_path / lab_files.HOST_KEYS_JSON).read_text())
    assert {known[address] for address in SPARES.values()} == {keys[name].fingerprint for name in SPARES}
    lines = (tmp_path / lab_files.KNOWN_HOSTS_NAME).read_text().splitlines()
    assert {line.split()[0] for line in lines} >= set(SPARES.values())


def test_an_older_kbpg_toml_gets_the_spares_pins_and_keeps_the_operators(tmp_path):
    path = tmp_path / "kbpg.toml"
    settings = lab_files.lab_settings(tmp_path, FINGERPRINTS)
    operator_pin = "SHA256:" + "A" * 43
    settings.ssh.pinned_host_keys = {host.address: FINGERPRINTS[host.address] for host in CLUSTER_HOSTS}
    settings.ssh.pinned_host_keys["198.18.0.124"] = operator_pin  # the operator's own pin for one spare
    settings.postgresql.max_connections = 77  # an operator's edit
    save_settings(settings, path)
    assert lab_files.add_spare_pins(tmp_path, FINGERPRINTS) == ["198.18.0.123", "198.18.0.13"]
    again = load_settings(path)
    assert again.ssh.pinned_host_keys["198.18.0.123"] == FINGERPRINTS["198.18.0.123"]
    assert again.ssh.pinned_host_keys["198.18.0.13"] == FINGERPRINTS["198.18.0.13"]
    assert again.ssh.pinned_host_keys["198.18.0.124"] == operator_pin
    assert again.postgresql.max_connections == 77
    assert lab_files.add_spare_pins(tmp_path, FINGERPRINTS) == []


def test_a_kbpg_toml_that_does_not_load_is_left_as_it_is(tmp_path):
    path = tmp_path / "kbpg.toml"
    path.write_text("[postgresql]\nversion = 'eleven'\n")
    assert lab_files.add_spare_pins(tmp_path, FINGERPRINTS) == []
    assert path.read_text() == "[postgresql]\nversion = 'eleven'\n"


# --- status: hosts down on purpose ------------------------------------------------------------------


@pytest.fixture
def fake_machine(tmp_path, monkeypatch):
    """The lab's state and lock in tmp_path, and a machine where the hosts named in ``running`` run.

    Every call that would act on a real host fails the test.
    """
    run_root = tmp_path / "run"
    monkeypatch.setattr(lab_mod, "RUN_ROOT", run_root)
    monkeypatch.setattr(lab_mod, "STATE_FILE", run_root / "state.json")
    monkeypatch.setattr(lab_mod, "LOCK_FILE", run_root / "lock")
    running: set[str] = set()
    monkeypatch.setattr(hosts_mod, "init_pid", lambda host: 4242 if host.name in running else None)
    monkeypatch.setattr(hosts_mod, "link_names", lambda: ["lo", "kbpglab0"])
    monkeypatch.setattr(hosts_mod, "leftovers", lambda: {"netns": [], "links": ["kbpglab0"]})
    monkeypatch.setattr(lab_mod.ssh_mod, "ssh_answers", lambda address, timeout=1.0: True)

    def refuse(*args, **kwargs):
        raise AssertionError("a real lab host was about to be touched")

    for name in ("kill_host", "start", "create_network", "stop_hosts", "sweep", "kill_cgroup", "ensure_bridge"):
        monkeypatch.setattr(hosts_mod, name, refuse)
    monkeypatch.setattr(os, "geteuid", lambda: 0)

    def record(names: list[str], stopped: list[str] | None = None, phase: str = "up") -> None:
        run_root.mkdir(parents=True, exist_ok=True)
        state = {"phase": phase, "workdir": str(tmp_path), "image_key": "k",
                 "hosts": {name: {"address": host_by_name(name).address} for name in names}}
        if stopped is not None:
            state["stopped"] = stopped
        (run_root / "state.json").write_text(json.dumps(state))

    return running, record


BASE = [host.name for host in HOSTS]


def test_the_lab_is_up_with_its_spares_not_started(fake_machine):
    running, record = fake_machine
    running.update(BASE)
    record(BASE)  # as `up` records it (a state file of a lab from before the spares reads the same)
    result = lab_mod.status(probe_ssh=False)
    assert result.state == "up"
    by_name = {host.name: host for host in result.hosts}
    assert list(by_name) == [host.name for host in ALL_HOSTS]
    for name in SPARES:
        assert by_name[name].spare and by_name[name].stopped and by_name[name].never_started
        assert not by_name[name].running
    assert not any(by_name[name].spare or by_name[name].stopped for name in BASE)
    table = result.render()
    assert "spare, not started: kbpg lab start-host haproxy-spare-01" in table
    assert json.loads(json.dumps(result.to_dict()))["hosts"][-1]["spare"] is True


def test_a_host_stopped_for_good_keeps_the_lab_up_and_shows_as_stopped(fake_machine):
    running, record = fake_machine
    running.update(set(BASE) - {"db-slave-01"})
    running.add("db-spare-01")
    record(BASE + ["db-spare-01"], stopped=["db-slave-01"])
    result = lab_mod.status(probe_ssh=False)
    assert result.state == "up"
    by_name = {host.name: host for host in result.hosts}
    assert by_name["db-slave-01"].stopped and not by_name["db-slave-01"].running
    assert by_name["db-spare-01"].running and not by_name["db-spare-01"].stopped
    table = result.render()
    assert "stopped for good: kbpg lab start-host db-slave-01" in table
    line = next(line for line in table.splitlines() if line.startswith("db-spare-01"))
    assert "(spare)" in line


def test_a_spare_stopped_after_it_ran_shows_as_stopped_not_as_never_started(fake_machine):
    running, record = fake_machine
    running.update(BASE)
    record(BASE + ["db-spare-01"], stopped=["db-spare-01"])
    result = lab_mod.status(probe_ssh=False)
    assert result.state == "up"
    spare = next(host for host in result.hosts if host.name == "db-spare-01")
    assert spare.stopped and not spare.never_started
    line = next(line for line in result.render().splitlines() if line.startswith("db-spare-01"))
    assert "stopped for good: kbpg lab start-host db-spare-01" in line


def test_a_host_that_died_unasked_is_still_a_partial_lab(fake_machine):
    """Only hosts stopped on purpose are allowed down: a host missing otherwise is not an "up" lab."""
    running, record = fake_machine
    running.update(set(BASE) - {"db-slave-01"})
    record(BASE)
    assert lab_mod.status(probe_ssh=False).state == "partial"
    # ... nor is a stopped host that runs again behind the lab's back.
    running.add("db-slave-01")
    record(BASE, stopped=["db-slave-01"])
    assert lab_mod.status(probe_ssh=False).state == "partial"


def test_a_second_up_names_the_hosts_stopped_for_good(fake_machine, tmp_path, monkeypatch):
    running, record = fake_machine
    running.update(set(BASE) - {"db-slave-02"})
    record(BASE, stopped=["db-slave-02"])
    monkeypatch.setattr(lab_mod, "check_environment", lambda need_build: None)
    monkeypatch.setattr(lab_mod.image_mod, "cached_image", lambda key=None: object())
    result = lab_mod.up(tmp_path)
    assert result.up and not result.changed
    assert "already up" in result.message and "stopped for good: db-slave-02" in result.message


# --- stop-host / start-host: refusals -------------------------------------------------------------------


def _cli(*argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="kbpg")
    parser.add_argument("--workdir", type=Path, default=Path.cwd())
    lab_cli.add_lab_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["lab", *argv])
    out, err = io.StringIO(), io.StringIO()
    import contextlib

    with contextlib.redirect_stderr(err):
        code = lab_cli.run_lab(args, out=out)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("action", ["stop-host", "start-host"])
@pytest.mark.parametrize("name", ["nope", "db-spare-03", "DB-SLAVE-01", "db-slave-01\x1b[2J", ""])
def test_an_unknown_host_name_is_refused_naming_the_known_ones(fake_machine, action, name):
    running, record = fake_machine
    running.update(BASE)
    record(BASE)
    code, out, err = _cli(action, name)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"kbpg lab {action}: no lab host called {name!r}: the lab's hosts are ")
    assert "\x1b" not in err
    for host in ALL_HOSTS:
        assert host.name in err


@pytest.mark.parametrize("action", ["stop-host", "start-host"])
def test_a_host_of_a_lab_that_is_not_up_is_refused(fake_machine, action, monkeypatch):
    monkeypatch.setattr(lab_mod, "check_environment", lambda need_build: None)
    code, out, err = _cli(action, "db-spare-01")
    assert code == 2 and out == ""
    assert err == f"kbpg lab {action}: the lab is not up: `kbpg lab up` first\n"


@pytest.mark.parametrize("action", ["stop-host", "start-host"])
def test_not_root_is_refused_before_anything_is_made(fake_machine, action, monkeypatch):
    running, record = fake_machine
    record(BASE)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code, _out, err = _cli(action, "db-spare-01")
    assert code == 2 and "needs root" in err and f"kbpg lab {action}" in err


def test_stopping_a_stopped_host_changes_nothing(fake_machine, monkeypatch):
    running, record = fake_machine
    running.update(BASE)
    record(BASE, stopped=["db-spare-02"])
    monkeypatch.setattr(hosts_mod, "host_leftovers", lambda host: [])
    result = lab_mod.stop_host("db-spare-02")
    assert not result.changed and "already stopped: nothing changed" in result.message


def test_stop_host_records_the_host_before_it_kills_it(fake_machine, monkeypatch):
    """A crash halfway through must leave a state file that expects the host down."""
    running, record = fake_machine
    running.update(BASE)
    record(BASE)
    seen = []

    def kill(host):
        seen.append(json.loads(lab_mod.STATE_FILE.read_text())["stopped"])
        raise LabError("simulated crash")

    monkeypatch.setattr(hosts_mod, "kill_host", kill)
    with pytest.raises(LabError):
        lab_mod.stop_host("haproxy-spare-01")
    assert seen == [["haproxy-spare-01"]]


def test_starting_a_running_host_changes_nothing(fake_machine, monkeypatch):
    running, record = fake_machine
    running.update(BASE)
    record(BASE)
    monkeypatch.setattr(lab_mod, "check_environment", lambda need_build: None)
    result = lab_mod.start_host("db-master-01")
    assert not result.changed and "already running: nothing changed" in result.message


@pytest.mark.parametrize("with_spares", [False, True])
def test_up_boots_the_spares_only_when_asked_and_pins_their_keys_either_way(fake_machine, tmp_path, monkeypatch, with_spares):
    running, _record = fake_machine
    repo_key = tmp_path / "repo.asc"
    repo_key.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n")

    class Image:
        key = "k"

    Image.repo_key = repo_key  # type: ignore[attr-defined]
    monkeypatch.setattr(lab_mod, "check_environment", lambda need_build: None)
    monkeypatch.setattr(lab_mod.image_mod, "cached_image", lambda key=None: Image())
    monkeypatch.setattr(lab_mod.image_mod, "ensure_image", lambda reporter, rebuild=False: Image())
    booted: list[str] = []

    def boot(image, host_keys, operator, sudo_password, reporter, state, hosts):
        for host in hosts:
            state["hosts"][host.name] = {"address": host.address}
            booted.append(host.name)
            running.add(host.name)

    monkeypatch.setattr(lab_mod, "_boot", boot)
    monkeypatch.setattr(lab_mod, "_wait_ready", lambda workdir, reporter, hosts: None)
    monkeypatch.setattr(hosts_mod, "leftovers", lambda: {"netns": [], "links": []})  # nothing of a lab yet
    workdir = tmp_path / "work"
    result = lab_mod.up(workdir, with_spares=with_spares)
    assert result.up and result.changed
    assert booted == [host.name for host in (ALL_HOSTS if with_spares else HOSTS)]
    keys = json.loads((workdir / lab_files.HOST_KEYS_JSON).read_text())
    pinned = load_settings(workdir / "kbpg.toml").ssh.pinned_host_keys
    assert pinned == {host.address: keys[host.address] for host in PINNED_HOSTS}
    spares = [host for host in result.hosts if host.spare]
    assert all(host.stopped == (not with_spares) for host in spares)


def test_every_host_has_a_fixed_mac_of_its_own_and_gets_it(monkeypatch):
    """A host started again keeps its MAC: its peers' ARP entries stay right (a new one cost ~30 s of silence)."""
    macs = [host.mac for host in ALL_HOSTS]
    assert len(set(macs)) == len(macs)
    for mac in macs:
        first = int(mac.split(":")[0], 16)
        assert first & 0x02 and not first & 0x01  # locally administered, unicast
    assert host_by_name("db-spare-01").mac == "02:6b:62:12:00:7b"
    commands: list[list[str]] = []
    monkeypatch.setattr(hosts_mod, "run", lambda argv, **kwargs: commands.append([str(a) for a in argv]))
    host = host_by_name("db-slave-02")
    hosts_mod.create_network(host)
    assert ["ip", "-n", host.netns, "link", "set", "eth0", "address", host.mac] in commands
    assert commands.index(["ip", "-n", host.netns, "link", "set", "eth0", "address", host.mac]) < commands.index(
        ["ip", "-n", host.netns, "link", "set", "eth0", "up"])


@pytest.mark.parametrize("argv, expected", [(["up"], False), (["up", "--with-spares"], True)])
def test_lab_up_with_spares_reaches_up(monkeypatch, tmp_path, argv, expected):
    seen: list[bool] = []

    def fake_up(workdir, progress=None, rebuild_image=False, with_spares=False):
        seen.append(with_spares)
        raise LabError("stop here", 2)

    monkeypatch.setattr(lab_cli, "up", fake_up)
    code, _out, err = _cli(*argv)
    assert (code, seen) == (2, [expected]) and "stop here" in err


def test_stop_and_start_host_reach_the_lab_with_the_name_and_fresh(monkeypatch):
    calls: list[tuple] = []

    def stop(name, progress=None):
        calls.append(("stop", name))
        return _fake_up()

    def start(name, progress=None, fresh=False):
        calls.append(("start", name, fresh))
        return _fake_up()

    monkeypatch.setattr(lab_cli, "stop_host", stop)
    monkeypatch.setattr(lab_cli, "start_host", start)
    assert _cli("stop-host", "db-slave-01")[0] == 0
    assert _cli("start-host", "db-slave-01")[0] == 0
    assert _cli("start-host", "--fresh", "haproxy-spare-01")[0] == 0
    assert calls == [("stop", "db-slave-01"), ("start", "db-slave-01", False), ("start", "haproxy-spare-01", True)]


def _fake_up() -> lab_mod.LabStatus:
    return lab_mod.LabStatus("up", [])
