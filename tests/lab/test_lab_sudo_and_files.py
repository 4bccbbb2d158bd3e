"""What the lab writes for kbpg: keys, sudo password, servers.tsv, kbpg.toml; and the sudo user."""

from __future__ import annotations

import csv
import json
import stat

import pytest

from kbpg_tui.core.credentials import read_env
from kbpg_tui.core.lab.topology import ALL_HOSTS, CLUSTER_HOSTS, HOSTS, LB_ADDRESS, PINNED_HOSTS, REPO_URL, host_by_name

from .conftest import sh

pytestmark = pytest.mark.lab


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_and_secret_files_are_private(lab_workdir):
    assert _mode(lab_workdir / "lab_ssh_key") == 0o600
    assert _mode(lab_workdir / "credentials") == 0o700
    assert _mode(lab_workdir / "credentials" / "sudo.env") == 0o600
    assert _mode(lab_workdir / ".kbpg-lab" / "host-keys") == 0o700
    fingerprints = json.loads((lab_workdir / "lab_host_keys.json").read_text())
    assert set(fingerprints) == {host.address for host in ALL_HOSTS}  # the spares' too
    assert all(value.startswith("SHA256:") for value in fingerprints.values())
    assert "BEGIN PGP PUBLIC KEY BLOCK" in (lab_workdir / "lab-repo.asc").read_text()


def test_sudo_user_needs_its_password(connect, lab_workdir):
    password = read_env(lab_workdir / "credentials" / "sudo.env")["KBPG_SUDO_PASSWORD"]
    host = host_by_name("haproxy-02")
    assert host.user_ssh == "kbops"
    client = connect(host, user="kbops")
    _, whoami, _ = sh(client, "id -un")
    assert whoami.strip() == "kbops"
    # The password goes on stdin, never in argv.
    code, out, _ = sh(client, "sudo -S -p '' id -u", stdin_text=password + "\n")
    assert (code, out.strip()) == (0, "0")
    code, out, _ = sh(client, "sudo -S -p '' id -u", stdin_text="not-the-password\n")
    assert code != 0 and out.strip() != "0"
    code, _, _ = sh(client, "sudo -n true")
    assert code != 0, "sudo must require a password"


def test_servers_tsv_has_the_real_format(lab_workdir):
    path = lab_workdir / "servers.tsv"
    with path.open(encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.reader(handle, delimiter="\t") if row]
    assert rows[0] == ["ENV", "IP_PUBLIQUE", "HOSTNAME", "IP_PRIVEE", "FQDN", "USER_SSH", "POOL", "ROLE", "SUBROLE", "DOCKER_STACK", "CORE", "NOTES"]
    assert all(len(row) == 12 for row in rows)
    running = {host.address for host in HOSTS}
    decoys = [row for row in rows[1:] if row[2] not in {host.name for host in CLUSTER_HOSTS}]
    assert len(decoys) >= 4
    # Decoys point at addresses where nothing runs, and stay in the lab's range.
    for row in decoys:
        assert row[3] not in running and row[3].startswith("198.18.0.")


def test_inventory_selects_exactly_the_six_hosts(lab_workdir):
    from kbpg_tui.core.inventory import load_selection

    selection = load_selection(lab_workdir / "servers.tsv")
    assert sorted(s.hostname for s in selection.db_nodes) == ["db-master-01", "db-slave-01", "db-slave-02"]
    assert sorted(s.hostname for s in selection.haproxy_nodes) == ["haproxy-01", "haproxy-02"]
    assert [s.hostname for s in selection.backup_nodes] == ["backup-01"]
    by_name = {s.hostname: s for s in [*selection.all_nodes, *selection.backup_nodes]}
    for host in CLUSTER_HOSTS:
        assert by_name[host.name].ip_private == host.address
        assert by_name[host.name].user_ssh == host.user_ssh
    assert not [w for w in selection.warnings if w.severity == "error"]


def test_kbpg_toml_points_at_the_lab(lab_workdir):
    from kbpg_tui.core.settings import load_settings

    settings = load_settings(lab_workdir / "kbpg.toml")
    assert settings.postgresql.version == 17
    assert settings.packages.source == "custom"
    assert settings.packages.url == REPO_URL
    assert settings.packages.key_file and (lab_workdir / "lab-repo.asc").samefile(settings.packages.key_file)
    assert settings.network.lb_address == LB_ADDRESS
    assert settings.network.private_subnet == "198.18.0.0/24"
    assert (lab_workdir / "lab_ssh_key").samefile(settings.ssh.key_file)
    fingerprints = json.loads((lab_workdir / "lab_host_keys.json").read_text())
    assert settings.ssh.pinned_host_keys == {host.address: fingerprints[host.address] for host in PINNED_HOSTS}
    assert "198.18.0.153" in settings.ssh.pinned_host_keys  # backup-01
    assert (settings.backup.enabled, settings.backup.warn_archive_lag_seconds, settings.backup.drill_timeout) == (True, 90, 1200)
    text = (lab_workdir / "kbpg.toml").read_text()
    password = read_env(lab_workdir / "credentials" / "sudo.env")["KBPG_SUDO_PASSWORD"]
    assert password not in text
