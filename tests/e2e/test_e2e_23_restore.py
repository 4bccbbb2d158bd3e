"""`kbpg restore --time T` on the lab: the cluster itself back to T (destructive, confirmed). Rows written, T noted,
more rows, a table dropped; the restore killed between its preparation and its start, the same command then
finishes it: exactly the rows before T, the dropped table back, a new timeline, three members streaming, installs
and switchovers refused while it pends, diagnostics green.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from .conftest import (
    DB_HOSTS,
    REPO,
    Installed,
    connect,
    kbpg,
    kbpg_command,
    leader_and_timeline,
    on_host,
    superuser_sql,
    wait_healthy,
)
from .test_e2e_21_backup_commands import wait_first_backup
from .test_e2e_22_restore_drill import rows_around_t

pytestmark = [pytest.mark.lab, pytest.mark.e2e]

PENDING = "restore.pending"


def on_db(installed: Installed, host, command: str) -> str:
    code, out, err = on_host(installed.workdir, host.address, command)
    assert code == 0, f"{host.name}: {command}: {err or out}"
    return out


def test_restore_to_T_killed_midway_then_finished_by_the_same_command(installed: Installed) -> None:
    wait_first_backup(installed)
    drill = kbpg(installed.workdir, "restore-drill", "--latest", timeout=900)  # a sentinel written before T
    assert drill.returncode == 0, drill.stdout + drill.stderr
    target = rows_around_t(installed, "restore_t", "DROP TABLE IF EXISTS restore_after_t",
                           "CREATE TABLE restore_after_t (id int)")
    leader, timeline = leader_and_timeline(installed)
    workdir = installed.workdir

    # not a terminal, no --yes: refused, nothing pends
    refused = kbpg(workdir, "restore", "--time", target.isoformat(), timeout=120)
    assert refused.returncode == 2 and "--yes" in refused.stderr, refused.stdout + refused.stderr
    assert not (workdir / PENDING).exists()

    # killed once the data directories are moved aside, before Patroni starts again
    started = time.monotonic()
    process = subprocess.Popen(kbpg_command(workdir, "restore", "--time", target.isoformat(), "--yes"), cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if line.startswith("== P3"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    first = "".join(lines)
    assert process.returncode == -signal.SIGKILL, f"the restore was expected to reach P3:\n{first}"
    pending = json.loads((workdir / PENDING).read_text())
    assert pending["node"] == leader and pending["phase"] in ("stopped", "started"), pending
    assert oct((workdir / PENDING).stat().st_mode & 0o777) == "0o600"
    for host in DB_HOSTS:  # moved aside, nothing deleted
        listing = on_db(installed, host, "ls -d /var/lib/postgresql/*/*.before-restore-* /var/lib/patroni/"
                                         "raft.before-restore-*")
        assert f".before-restore-{pending['stamp']}" in listing, listing
    install = kbpg(workdir, "install", "--yes", "--step", "02", timeout=300)
    assert install.returncode == 1 and "point-in-time restore is pending" in install.stdout, install.stdout
    switchover = kbpg(workdir, "switchover", "--yes", timeout=120)
    assert switchover.returncode == 2 and "restore is pending" in switchover.stderr, switchover.stderr

    # the same command (the pending restore's own target) finishes it
    result = kbpg(workdir, "restore", "--yes", timeout=1800)
    took = time.monotonic() - started
    assert result.returncode == 0, first + result.stdout + result.stderr
    assert "finishing the pending restore" in result.stdout
    assert not (workdir / PENDING).exists()
    members = wait_healthy(workdir)
    (now_leader,) = [m for m in members if m["Role"] == "Leader"]
    assert now_leader["Member"] == leader and now_leader["TL"] > timeline, members
    with connect(workdir, "app") as conn:
        count = conn.execute("SELECT count(*), max(id) FROM restore_t").fetchone()
        after = conn.execute("SELECT to_regclass('restore_after_t')").fetchone()
        conn.execute("CREATE TABLE restore_written_after (id int)")  # writable through the LB
    assert count == (50, 50) and after == (None,), (count, after)
    auto = superuser_sql(workdir, "SELECT string_agg(name, ',') FROM pg_file_settings WHERE name LIKE 'recovery_target%' "
                                  "AND applied;")
    assert auto.strip() == "", f"a recovery target is still set: {auto}"
    report = json.loads((workdir / "reports" / f"restore-{pending['id']}.json").read_text())
    assert report["ok"] and report["node"] == leader and report["target"] == pending["target"], report
    verdicts = {s["verdict"] for s in report["sentinels"]}
    assert "absent" in verdicts and "present" in verdicts, report["sentinels"]  # this test's first drill: before T
    diagnose = kbpg(workdir, "diagnose", "--json", timeout=300)
    assert diagnose.returncode == 0, diagnose.stdout[-3000:]
    print(f"kbpg restore: {took:.1f} s from the first start to the end (killed once at P3); timings {report['timings']}"
          f"; timeline {timeline} -> {now_leader['TL']}")
    for host in DB_HOSTS:  # the operator's last step, once satisfied
        on_db(installed, host, f"rm -rf /var/lib/postgresql/*/*.before-restore-{pending['stamp']} "
                               f"/var/lib/patroni/raft.before-restore-{pending['stamp']}")
