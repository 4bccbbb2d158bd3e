"""What a DB node already holds, on real hosts (host_guards): a data directory with stray files or one kbpg did
not create is refused and left as it was (field failure mode 2), another PostgreSQL is refused and left running,
a data directory with a wrong mode or owner is repaired on a re-run (mode 4), version drift is refused (mode 5).

Each test uses the installed lab cluster and leaves it healthy; each runs kbpg only as far as it needs to.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from .conftest import DB_HOSTS, Installed, kbpg, on_host, patroni_members, wait_healthy
from .test_e2e_5_bad_input import copy_workdir, edit_settings

pytestmark = [pytest.mark.lab, pytest.mark.e2e]

DATA_DIR = "/var/lib/postgresql/17/patroni"  # the lab's (PostgreSQL 17, default data_dir)
RAFT_DIR = "/var/lib/patroni/raft"


def test_a_data_directory_with_stray_files_or_not_kbpgs_is_refused_and_left_untouched(installed: Installed, tmp_path: Path) -> None:
    workdir = copy_workdir(installed, tmp_path)
    base = "/var/lib/kbpg-e2e-guard"
    target = f"{base}/pgdata"
    edit_settings(workdir, lambda s: setattr(s.postgresql, "data_dir", target))
    clean, stray, empty = DB_HOSTS
    assert on_host(installed.workdir, stray.address, f"mkdir -p {target}/lost+found && echo note > {target}/notes.txt")[0] == 0
    assert on_host(installed.workdir, empty.address, f"mkdir -p {target} && chmod 755 {target}")[0] == 0
    try:
        started = time.monotonic()
        preflight = kbpg(workdir, "install", "--yes", "--step", "01", timeout=120)
        assert preflight.returncode == 1, preflight.stdout
        assert time.monotonic() - started < 60
        out = preflight.stdout
        assert re.search(rf"01 {stray.name}\s+host\s+failed .*the data directory {target} is not empty and holds no "
                         r"PG_VERSION \(2 entries: lost\+found, notes.txt\) \(lost\+found: a mount point", out), out
        assert re.search(rf"01 {empty.name}\s+host\s+failed .*the data directory {target} exists but kbpg did not "
                         r"create it \(root:root 755, empty\)", out), out
        assert f"chown postgres:postgres {target} && chmod 700 {target}" in out
        assert re.search(rf"01 {clean.name}\s+host\s+unchanged", out), out

        # Step 02 alone (no preflight before it) refuses the same, before writing anything.
        step2 = kbpg(workdir, "install", "--yes", "--step", "02", timeout=300)
        assert step2.returncode == 1, step2.stdout
        assert re.search(rf"02 {stray.name}\s+packages\s+failed .*holds no PG_VERSION \(2 entries: lost\+found, notes.txt\)",
                         step2.stdout), step2.stdout
        assert re.search(rf"02 {empty.name}\s+packages\s+failed .*exists but kbpg did not create it", step2.stdout), step2.stdout
        for host in (stray, empty):
            assert on_host(installed.workdir, host.address, f"stat -c '%U:%G %a' {target}")[1].split() == ["root:root", "755"]
        assert on_host(installed.workdir, clean.address, f"test -e {base}")[0] != 0, "a directory was created"
        assert on_host(installed.workdir, stray.address, f"cat {target}/notes.txt")[1].strip() == "note"
    finally:
        for host in DB_HOSTS:
            on_host(installed.workdir, host.address, f"rm -rf {base}")


def test_another_postgresql_is_refused_by_name_and_left_running(installed: Installed, tmp_path: Path) -> None:
    workdir = copy_workdir(installed, tmp_path)
    host = DB_HOSTS[2]
    # A cluster someone made by hand, with a database in it: kbpg must neither use its port nor stop it.
    code, out, err = on_host(
        installed.workdir, host.address,
        "pg_createcluster 17 foreign -p 5444 --start -o shared_buffers=16MB -o max_connections=20 >/dev/null && "
        "runuser -u postgres -- psql -X -q -p 5444 -c 'CREATE DATABASE keepme'", timeout=120)
    assert code == 0, out + err
    try:
        for step in ("01", "02"):
            result = kbpg(workdir, "install", "--yes", "--step", step, timeout=300)
            assert result.returncode == 1, result.stdout
            assert re.search(rf"{step} {host.name}\s+(host|packages)\s+failed .*another PostgreSQL is on this node: PostgreSQL "
                             r"17 cluster foreign runs \(data /var/lib/postgresql/17/foreign, port 5444, pid \d+, unit "
                             r"postgresql@17-foreign.service\)", result.stdout), result.stdout
            assert "pg_dropcluster --stop 17 foreign" in result.stdout
            code, status, _ = on_host(installed.workdir, host.address,
                                      "pg_lsclusters -h 17 foreign | awk '{print $4}'; cat /etc/postgresql/17/foreign/start.conf "
                                      "| grep -v '^#'; systemctl is-enabled postgresql@17-foreign")
            online, start, enabled = status.split()
            assert (online, start) == ("online", "auto") and enabled.startswith("enabled"), f"after step {step}: {status}"
        code, out, _ = on_host(installed.workdir, host.address, "runuser -u postgres -- psql -X -At -p 5444 -c "
                                                                "\"SELECT count(*) FROM pg_database WHERE datname = 'keepme'\"")
        assert out.strip() == "1"
    finally:
        on_host(installed.workdir, host.address, "pg_dropcluster --stop 17 foreign")


def test_version_drift_between_db_nodes_is_refused(installed: Installed) -> None:
    # Field failure mode 5: one node "upgraded" by hand. dpkg's record of the installed version is edited on one
    # host (the lab repository holds one version of each package) and put back afterwards.
    host = DB_HOSTS[1]
    package = "python3-pysyncobj"
    version = on_host(installed.workdir, host.address, f"dpkg-query -W -f='${{Version}}' {package}")[1].strip()
    assert version
    edit = (
        "import re, shutil\n"
        "shutil.copy2('/var/lib/dpkg/status', '/var/lib/dpkg/status.kbpg-e2e')\n"
        "text = open('/var/lib/dpkg/status').read()\n"
        "stanzas = text.split('\\n\\n')\n"
        f"stanzas = [re.sub(r'^Version: (.*)$', r'Version: \\1+drift1', s, flags=re.M) if re.search(r'^Package: {package}$', s, re.M) "
        "else s for s in stanzas]\n"
        "open('/var/lib/dpkg/status', 'w').write('\\n\\n'.join(stanzas))\n"
    )
    code, out, err = on_host(installed.workdir, host.address, "python3 -", stdin_text=edit)
    assert code == 0, out + err
    try:
        assert on_host(installed.workdir, host.address, f"dpkg-query -W -f='${{Version}}' {package}")[1].strip() == version + "+drift1"
        result = kbpg(installed.workdir, "install", "--yes", timeout=300)
        assert result.returncode == 1, result.stdout
        names = [h.name for h in DB_HOSTS]
        expected = ", ".join(f"{name}={re.escape(version)}" + (r"\+drift1" if name == host.name else "") for name in names)
        assert re.search(rf"02 cluster\s+versions\s+failed .*DB nodes run different versions: {package}: {expected}\. Align them",
                         result.stdout), result.stdout
        assert not re.search(r"02 \S+\s+config\s", result.stdout), "step 02 went on past the version check"
    finally:
        on_host(installed.workdir, host.address, "mv -f /var/lib/dpkg/status.kbpg-e2e /var/lib/dpkg/status")
    assert on_host(installed.workdir, host.address, f"dpkg-query -W -f='${{Version}}' {package}")[1].strip() == version


def test_a_replica_data_directory_with_a_wrong_mode_and_owner_is_repaired(installed: Installed) -> None:
    # Field failure mode 4: the data directory chmod'ed and chown'ed behind Patroni's back; PostgreSQL refuses to
    # start on it. A plain re-run gives it back to postgres, 0700, and the replica streams again.
    members = wait_healthy(installed.workdir)
    replica = next(m["Member"] for m in members if m["Role"] == "Replica")
    host = next(h for h in DB_HOSTS if h.name == replica)
    code, out, err = on_host(installed.workdir, host.address,
                             f"chmod 0755 {DATA_DIR} {RAFT_DIR} && chown root:root {DATA_DIR} {RAFT_DIR} && "
                             "systemctl restart patroni")
    assert code == 0, out + err
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the broken replica really stops streaming
        state = next((m["State"] for m in patroni_members(installed.workdir) if m["Member"] == replica), "gone")
        if state != "streaming":
            break
        time.sleep(1)
    else:
        pytest.fail(f"{replica} kept streaming with its data directory root's")
    result = kbpg(installed.workdir, "install", "--yes")
    assert result.returncode == 0, result.stdout
    assert re.search(rf"02 {replica}\s+config\s+changed .*directories .*{DATA_DIR}\(mode\) {RAFT_DIR}\(mode\)", result.stdout), result.stdout
    for path in (DATA_DIR, RAFT_DIR):
        assert on_host(installed.workdir, host.address, f"stat -c '%U:%G %a' {path}")[1].split() == ["postgres:postgres", "700"]
    after = wait_healthy(installed.workdir, timeout=60)
    assert next(m for m in after if m["Member"] == replica)["State"] == "streaming"
