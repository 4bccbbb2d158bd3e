"""`kbpg restore-drill` on the lab: the backups restored on backup-01 to a moment T, in a scratch copy, verified and
removed; the cluster untouched. Then its kill-safety: the drill's unit killed (`systemctl kill -s KILL`) removes its
scratch copy at once; kbpg killed mid-drill lets the unit finish and clean on its own; a stale run-* is swept.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from .conftest import BACKUP_HOST, REPO, Installed, connect, kbpg, kbpg_command, leader_and_timeline, on_host
from .test_e2e_21_backup_commands import wait_first_backup

pytestmark = [pytest.mark.lab, pytest.mark.e2e]

DRILL_ROOT = "/var/lib/kbpg-drill"


def on_backup(installed: Installed, command: str) -> str:
    code, out, err = on_host(installed.workdir, BACKUP_HOST.address, command)
    assert code == 0, f"{command}: {err or out}"
    return out


def scratch_dirs(installed: Installed) -> list[str]:
    return on_backup(installed, f"cd {DRILL_ROOT} && ls -d run-* 2>/dev/null; true").split()


def running_units(installed: Installed) -> list[str]:
    out = on_backup(installed, "systemctl list-units --plain --no-legend --state=active,activating,deactivating "
                               "'kbpg-restore-drill-*' | awk '{print $1}'")
    return out.split()


def postmaster_start(installed: Installed) -> str:
    with connect(installed.workdir, "app") as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()::text").fetchone()
    assert row is not None
    return row[0]


def rows_around_t(installed: Installed, table: str, *after: str) -> datetime:
    """``table`` made with rows 1-50, T read from the primary's clock 1.1 s later, 1.1 s later rows 51-100, the table
    dropped, then the ``after`` statements: T."""
    with connect(installed.workdir, "app") as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
        conn.execute(f"INSERT INTO {table} SELECT generate_series(1, 50)")
        time.sleep(1.1)
        row = conn.execute("SELECT clock_timestamp()").fetchone()  # T from the primary's clock
        assert row is not None
        target: datetime = row[0]
        time.sleep(1.1)
        conn.execute(f"INSERT INTO {table} SELECT generate_series(51, 100)")
        conn.execute(f"DROP TABLE {table}")
        for statement in after:
            conn.execute(statement)
    return target


def test_a_drill_to_T_has_exactly_the_rows_written_before_T(installed: Installed) -> None:
    wait_first_backup(installed)
    target = rows_around_t(installed, "restore_drill_t")
    before = leader_and_timeline(installed), postmaster_start(installed)
    started = time.monotonic()
    result = kbpg(installed.workdir, "restore-drill", "--time", target.isoformat(), "--query",
                  "select count(*), max(id) from restore_drill_t", "--json", timeout=1500)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["status"] == "ok" and report["scratch_removed"] is True, report["problems"]
    assert report["query"]["csv"] == "count,max\n50,50\n", report["query"]
    newest = report["sentinels"][-1]
    assert newest["expected"] is False and newest["found"] is False and newest["verdict"] == "absent"
    assert report["pgvector"] is not None and report["pgvector"]["ok"] is True
    assert datetime.fromisoformat(report["recovery_point"]) <= target
    assert report["reports"] and all(Path(path).exists() for path in report["reports"])
    assert scratch_dirs(installed) == [] and running_units(installed) == []
    assert (leader_and_timeline(installed), postmaster_start(installed)) == before, "the cluster was touched"
    t = report["timings"]
    print(f"restore-drill --time: {took:.1f} s in kbpg; restore {t['restore']} s, recovery {t['recovery']} s, "
          f"verify {t['verify']} s, total {t['total']} s on {BACKUP_HOST.name}")


def _start_drill(installed: Installed, *args: str) -> subprocess.Popen:
    return subprocess.Popen(kbpg_command(installed.workdir, "restore-drill", *args), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.5)


def test_killing_the_unit_removes_its_scratch_copy(installed: Installed) -> None:
    wait_first_backup(installed)
    drill = _start_drill(installed, "--latest", "--query", "select pg_sleep(50)")
    try:
        _wait_for(lambda: "verify" in on_backup(installed, f"cat {DRILL_ROOT}/run-*/progress 2>/dev/null; true"),
                  600, "the drill reaching its verify phase")
        (unit,) = running_units(installed)
        assert len(scratch_dirs(installed)) == 1
        on_backup(installed, f"systemctl kill -s KILL {unit}")
        killed = time.monotonic()
        deadline = killed + 60
        while scratch_dirs(installed) and time.monotonic() < deadline:
            time.sleep(0.2)
        gone = time.monotonic() - killed
        journal = on_backup(installed, f"journalctl -u {unit} -o short-precise --no-pager | tail -n 25; "
                                       f"ls -la {DRILL_ROOT}")
        print(f"scratch copy removed {gone:.1f} s after systemctl kill -s KILL\n{journal}")
        assert gone <= 5, f"the scratch copy is removed {gone:.1f} s after SIGKILL of the unit:\n{journal}"
        out, err = drill.communicate(timeout=120)
        assert drill.returncode == 1, out + err
        assert "the drill's unit ended without a result" in out, out + err
    finally:
        if drill.poll() is None:
            drill.kill()
    assert running_units(installed) == []
    assert on_backup(installed, "pgrep -u pgbackrest -f 'postgres.*kbpg-drill' || true").strip() == ""


def test_killing_kbpg_lets_the_unit_finish_and_clean(installed: Installed) -> None:
    wait_first_backup(installed)
    drill = _start_drill(installed, "--latest")
    try:
        _wait_for(lambda: bool(running_units(installed)), 300, "the drill's unit started")
        drill.send_signal(signal.SIGKILL)
        drill.wait(30)
    finally:
        if drill.poll() is None:
            drill.kill()
    _wait_for(lambda: not running_units(installed) and not scratch_dirs(installed), 900,
              "the unit finished and its scratch copy removed")


def test_a_stale_scratch_copy_is_swept_by_the_next_drill(installed: Installed) -> None:
    wait_first_backup(installed)
    on_backup(installed, f"mkdir -p {DRILL_ROOT}/run-stale-x/data")
    result = kbpg(installed.workdir, "restore-drill", "--json", timeout=1500)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["swept"] == ["run-stale-x"] and scratch_dirs(installed) == []
    assert all(s["found"] for s in report["sentinels"]), report["sentinels"]  # --latest: every sentinel is there
    busy_unit = "kbpg-restore-drill-busy-test"
    on_backup(installed, f"systemd-run --unit={busy_unit} --collect --quiet flock {DRILL_ROOT}/.lock sleep 60")
    try:
        busy = kbpg(installed.workdir, "restore-drill", timeout=300)
        assert busy.returncode == 3, busy.stdout + busy.stderr
    finally:
        on_backup(installed, f"systemctl stop {busy_unit} 2>/dev/null; true")
