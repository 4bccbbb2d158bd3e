"""The lab's layout and the files it writes, checked without a running lab: its servers.tsv selects exactly the lab's
hosts (backup-01 the only backup host, the decoys never), and its kbpg.toml pins every host and carries the lab's
[backup] settings."""

from __future__ import annotations

import csv
import ipaddress
from pathlib import Path

from kbpg_tui.core.inventory import load_selection
from kbpg_tui.core.lab import workdir as lab_files
from kbpg_tui.core.lab.topology import ALL_HOSTS, CLUSTER_HOSTS, HOSTS, PINNED_HOSTS, SUBNET, host_by_name
from kbpg_tui.core.settings import BackupSettings, load_settings

FINGERPRINTS = {host.address: lab_files.new_key_pair(host.name).fingerprint for host in ALL_HOSTS}


def _rows(tmp_path: Path) -> list[list[str]]:
    path = lab_files.write_servers_tsv(tmp_path)
    with path.open(encoding="utf-8", newline="") as handle:
        return [row for row in csv.reader(handle, delimiter="\t") if row]


def test_the_lab_has_a_backup_host():
    backup = host_by_name("backup-01")
    assert (backup.address, backup.kind, backup.user_ssh, backup.fqdn) == ("198.18.0.153", "backup", "root", "backup.lab.kbpg.test")
    assert backup in CLUSTER_HOSTS
    assert len({host.address for host in HOSTS}) == len({host.veth_host for host in HOSTS}) == len(HOSTS) == 7


def test_servers_tsv_selects_backup_01_as_the_only_backup_host(tmp_path):
    _rows(tmp_path)
    selection = load_selection(tmp_path / "servers.tsv")
    assert [(s.hostname, s.ip_private, s.user_ssh) for s in selection.backup_nodes] == [("backup-01", "198.18.0.153", "root")]
    assert sorted(s.hostname for s in selection.db_nodes) == ["db-master-01", "db-slave-01", "db-slave-02"]
    assert sorted(s.hostname for s in selection.haproxy_nodes) == ["haproxy-01", "haproxy-02"]
    assert not [w for w in selection.warnings if w.severity == "error"]


def test_the_backup_decoys_are_near_misses_of_the_rule_where_nothing_runs(tmp_path):
    """Each decoy differs from the backup rule (ENV=prod ROLE=backup SUBROLE=backup) by one column only, so the rule
    is what keeps it out; and its address is in the lab's range, where no host answers."""
    rows = {row[2]: row for row in _rows(tmp_path)[1:]}
    staging, minio_sync = rows["backup-staging-01"], rows["minio-sync-01"]
    assert (staging[0], staging[7], staging[8]) == ("staging", "backup", "backup")
    assert (minio_sync[0], minio_sync[7], minio_sync[8]) == ("prod", "backup", "minio-sync")
    running = {host.address for host in HOSTS}
    for row in (staging, minio_sync):
        assert ipaddress.ip_address(row[3]) in ipaddress.ip_network(SUBNET) and int(row[3].rsplit(".", 1)[1]) >= 200
        assert row[3] not in running
    selected = {s.hostname for s in load_selection(tmp_path / "servers.tsv").every_node}
    assert selected == {host.name for host in CLUSTER_HOSTS}


def test_the_lab_kbpg_toml_pins_backup_01_and_has_the_lab_backup_settings(tmp_path):
    assert lab_files.write_kbpg_toml(tmp_path, FINGERPRINTS)
    settings = load_settings(tmp_path / "kbpg.toml")
    assert settings.ssh.pinned_host_keys["198.18.0.153"] == FINGERPRINTS["198.18.0.153"]
    assert set(settings.ssh.pinned_host_keys) == {host.address for host in PINNED_HOSTS}  # the spares' too
    # The defaults, but a shorter archive lag warning and drill time limit: the lab's cluster is small and idle.
    expected = BackupSettings()
    expected.warn_archive_lag_seconds = 90
    expected.drill_timeout = 1200
    assert settings.backup == expected
    text = (tmp_path / "kbpg.toml").read_text()
    assert "[backup]" in text and "warn_archive_lag_seconds = 90" in text and "drill_timeout = 1200" in text
