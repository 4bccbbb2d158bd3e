"""backup-01, the lab's pgBackRest repository host: reached by kbpg with its pinned key, listed by `lab status`,
and able to install pgbackrest from the lab's own repository (no outside network)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kbpg_tui.core import install as inst
from kbpg_tui.core import ssh as kbpg_ssh
from kbpg_tui.core.lab import lab as lab_mod
from kbpg_tui.core.lab.topology import CLUSTER_HOSTS, REPO_URL, host_by_name
from kbpg_tui.core.settings import load_settings

from .conftest import sh

pytestmark = pytest.mark.lab

BACKUP = host_by_name("backup-01")
SOURCE_FILE = "/etc/apt/sources.list.d/kbpg-lab-test.list"
KEY_FILE = "/etc/apt/keyrings/kbpg-lab-test.asc"


def test_backup_01_is_a_cluster_host_of_the_lab():
    assert (BACKUP.address, BACKUP.kind, BACKUP.user_ssh) == ("198.18.0.153", "backup", "root")
    assert BACKUP in CLUSTER_HOSTS  # so its host key is pinned in kbpg.toml like the others'


def _connection(lab_workdir: Path, tmp_path: Path, pinned: dict[str, str]) -> kbpg_ssh.Connection:
    """kbpg's own SSH to backup-01 as `install --yes` makes it: no prompt, a known_hosts of its own (empty)."""
    options = inst.ssh_options(lab_workdir, load_settings(lab_workdir / "kbpg.toml"))
    options.pinned_host_keys = pinned
    return kbpg_ssh.Connection(kbpg_ssh.Host(BACKUP.name, BACKUP.address, BACKUP.user_ssh), options,
                               kbpg_ssh.KnownHosts(tmp_path / "known_hosts"), sink=lambda event: None, prompt=None,
                               cancel=threading.Event())


def test_kbpg_reaches_backup_01_with_its_pinned_key_only(lab_workdir, tmp_path):
    pinned = load_settings(lab_workdir / "kbpg.toml").ssh.pinned_host_keys
    assert BACKUP.address in pinned
    connection = _connection(lab_workdir, tmp_path, dict(pinned))
    try:
        result = connection.run("hostname; command -v pgbackrest || echo none")
        assert result.stdout.split() == ["backup-01", "none"]  # a bare host: kbpg installs pgbackrest
    finally:
        connection.close()
    assert BACKUP.address in (tmp_path / "known_hosts").read_text()
    # Another pin: refused before anything runs.
    wrong = dict(pinned, **{BACKUP.address: "SHA256:" + "A" * 43})
    (tmp_path / "known_hosts").unlink()
    connection = _connection(lab_workdir, tmp_path, wrong)
    try:
        with pytest.raises(kbpg_ssh.HostKeyError, match="does not match the pinned"):
            connection.run("true")
    finally:
        connection.close()
    # No pin at all, no prompt (--yes): an unknown key is refused too.
    unpinned = {address: value for address, value in pinned.items() if address != BACKUP.address}
    connection = _connection(lab_workdir, tmp_path, unpinned)
    try:
        with pytest.raises(kbpg_ssh.HostKeyError, match="unknown host key"):
            connection.run("true")
    finally:
        connection.close()


def test_lab_status_lists_backup_01(lab_workdir):
    result = lab_mod.status(lab_workdir)
    (row,) = [host for host in result.hosts if host.name == "backup-01"]
    assert (row.address, row.kind, row.running, row.ssh, row.system_state) == ("198.18.0.153", "backup", True, True, "running")
    line = next(line for line in result.render().splitlines() if line.startswith("backup-01"))
    assert line.split()[:6] == ["backup-01", "198.18.0.153", "backup", "root", "running", "yes"]


# Installs for real, which the e2e tests (run after the lab tests, on the same lab) must not find done: ordered with
# the teardown tests, just before the lab goes down (tests/conftest.py's _order).
@pytest.mark.lab_teardown
def test_backup_01_installs_pgbackrest_from_the_lab_repository(connect, lab_workdir):
    client = connect(BACKUP)
    sftp = client.open_sftp()
    try:
        sftp.put(str(lab_workdir / "lab-repo.asc"), "/tmp/kbpg-lab-test.asc")
    finally:
        sftp.close()
    setup = (
        f"install -d -m 0755 /etc/apt/keyrings && install -m 0644 /tmp/kbpg-lab-test.asc {KEY_FILE} && "
        f"echo 'deb [signed-by={KEY_FILE}] {REPO_URL} kbpg-lab main' > {SOURCE_FILE} && "
        "apt-get update 2>&1"
    )
    try:
        code, out, err = sh(client, setup)
        assert code == 0 and "Err:" not in out, out + err
        code, out, err = sh(client, "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends pgbackrest 2>&1",
                            timeout=600)
        assert code == 0, out + err
        code, out, err = sh(client, "pgbackrest version; apt-cache policy pgbackrest; id -un postgres")
        assert code == 0, out + err
        assert out.startswith("pgBackRest 2."), out
        assert REPO_URL.rstrip("/") in out  # installed from the lab's repository (the only source there is)
        assert out.split()[-1] == "postgres"  # postgresql-common made the user pgBackRest's DB side runs as
    finally:
        sh(client, f"rm -f {SOURCE_FILE} {KEY_FILE} /tmp/kbpg-lab-test.asc")
