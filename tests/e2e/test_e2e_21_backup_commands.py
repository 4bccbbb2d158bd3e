"""`kbpg backup now | list | check` and diagnostics' check 18 on the lab, after an install with backup-01 selected.

A full backup taken and listed; a second backup refused (exit 3) while one runs, naming it and since when; `backup
check` and check 18 green; archive-push stopped on the primary (`pgbackrest stop`) makes both fail, naming
pgBackRest's words, and they are green again once it is started.
"""

from __future__ import annotations

import json
import time

import pytest

from .conftest import BACKUP_HOST, Installed, kbpg, leader_host, on_host

pytestmark = [pytest.mark.lab, pytest.mark.e2e]

SLOW_DROP_IN = "/etc/systemd/system/kbpg-backup@incr.service.d/zz-test-slow.conf"


def listing(installed: Installed) -> dict:
    result = kbpg(installed.workdir, "backup", "list", "--json", timeout=120)
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout)


def wait_first_backup(installed: Installed, timeout: float = 600) -> dict:
    """Step 06 started the first full backup without waiting for it: until it is listed and nothing runs."""
    deadline = time.monotonic() + timeout
    while True:
        data = listing(installed)
        if data["backups"] and not data["running"]:
            return data
        assert time.monotonic() < deadline, f"no backup after {timeout} s: {data['status']}"
        time.sleep(3)


def check_18(installed: Installed) -> dict:
    result = kbpg(installed.workdir, "diagnose", "--json", timeout=180)
    return next(r for r in json.loads(result.stdout)["results"] if r["number"] == 18)


def test_a_full_backup_now_is_listed_with_its_figures(installed: Installed) -> None:
    before = wait_first_backup(installed)
    started = time.monotonic()
    result = kbpg(installed.workdir, "backup", "now", "--type", "full", "--json", timeout=900)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    outcome = json.loads(result.stdout)
    backup = outcome["backup"]
    assert outcome["ok"] and outcome["host"] == BACKUP_HOST.name and backup["type"] == "full"
    assert backup["label"].endswith("F") and backup["label"] not in [b["label"] for b in before["backups"]]
    assert backup["size"] > 20 * 1024 * 1024 and backup["repo_size"] > 0 and backup["wal_start"]
    after = listing(installed)
    assert backup["label"] in [b["label"] for b in after["backups"]]
    assert after["status"]["code"] == 0 and after["archive"]["max"] >= backup["wal_stop"]
    assert after["window"].startswith("restorable from ") and after["archiver"]["last_archived_wal"]
    print(f"backup now --type full: {took:.1f} s in kbpg, {backup['duration']:.0f} s in pgBackRest, "
          f"{backup['size']} B, repository +{backup['repo_delta']} B")


def test_a_second_backup_is_refused_while_one_runs(installed: Installed) -> None:
    wait_first_backup(installed)
    address = BACKUP_HOST.address
    code, _, err = on_host(installed.workdir, address,
                           f"mkdir -p {SLOW_DROP_IN.rsplit('/', 1)[0]} && printf '[Service]\\nExecStartPre=/bin/sleep 60\\n'"
                           f" > {SLOW_DROP_IN} && systemctl daemon-reload")
    assert code == 0, err
    try:
        started = kbpg(installed.workdir, "backup", "now", "--type", "incr", "--no-wait", timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        assert "kbpg-backup@incr.service started on backup-01" in started.stdout
        busy = kbpg(installed.workdir, "backup", "now", "--type", "full", timeout=120)
        assert busy.returncode == 3, busy.stdout + busy.stderr
        assert "kbpg backup now: not started: kbpg-backup@incr.service is already running on backup-01, since " \
            in busy.stderr
    finally:
        on_host(installed.workdir, address, f"systemctl stop kbpg-backup@incr.service; rm -rf "
                                            f"{SLOW_DROP_IN.rsplit('/', 1)[0]}; systemctl daemon-reload; "
                                            "systemctl reset-failed 'kbpg-backup@*' || true")


def test_check_and_check_18_fail_while_archiving_is_stopped(installed: Installed) -> None:
    wait_first_backup(installed)
    ok = kbpg(installed.workdir, "backup", "check", "--json", timeout=180)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "pgbackrest check ok" in json.loads(ok.stdout)["reason"]
    assert check_18(installed)["verdict"] in ("pass", "warn")
    stanza = installed.credentials["PATRONI_CLUSTER_NAME"]
    leader = leader_host(installed.workdir)
    code, _, err = on_host(installed.workdir, leader.address,
                           f"runuser -u postgres -- pgbackrest --stanza={stanza} stop")
    assert code == 0, err
    try:
        failed = check_18(installed)
        assert failed["verdict"] == "fail" and failed["target"] == BACKUP_HOST.name, failed
        assert "pgbackrest check failed: ERROR: [" in failed["reason"], failed
        cli = kbpg(installed.workdir, "backup", "check", timeout=240)
        assert cli.returncode == 1 and "backups FAIL" in cli.stdout, cli.stdout + cli.stderr
    finally:
        on_host(installed.workdir, leader.address, f"runuser -u postgres -- pgbackrest --stanza={stanza} start")
    deadline = time.monotonic() + 120
    while (again := check_18(installed))["verdict"] == "fail":
        assert time.monotonic() < deadline, f"check 18 still failing after pgbackrest start: {again['reason']}"
        time.sleep(5)
