"""Continuous archiving to backup-01 on the lab: the recovery point under a steady writer, and the archive following a
switchover with no operator action.

RPO, as measured here: while a writer commits one row every 20 ms through LB:5432, the age of the newest WAL segment
pgBackRest has archived (`now() - pg_stat_archiver.last_archived_time` on the primary, read as the monitoring role
every 2 s). Sampling starts once the writer has run for archive_timeout + 10 s (before that, the age says how long
the cluster was idle, not what a loss would cost). The issue's bound: under 60 s.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from kbpg_tui.core import credentials as creds
from kbpg_tui.core.settings import load_settings

from .conftest import BACKUP_HOST, Installed, connect, kbpg, leader_and_timeline, on_host, own_writer_table
from .test_e2e_15_drill import OwnWriter

pytestmark = [pytest.mark.lab, pytest.mark.e2e]

SAMPLE_SECONDS = 90


@pytest.fixture(scope="module", autouse=True)
def own_table(installed: Installed) -> None:
    own_writer_table(installed)


def archived_age(installed: Installed) -> float | None:
    with connect(installed.workdir, "monitor", port=5432) as conn:
        row = conn.execute("SELECT extract(epoch FROM now() - last_archived_time)::float8, failed_count, "
                           "last_failed_time > coalesce(last_archived_time, 'epoch') FROM pg_stat_archiver").fetchone()
    assert row is not None
    age, _failed, failing = row
    assert not failing, "the archiver's last attempt failed"
    return age


def test_the_newest_archived_wal_stays_younger_than_60_s_under_a_steady_writer(installed: Installed) -> None:
    settings = load_settings(installed.workdir / "kbpg.toml")
    timeout = settings.backup.archive_timeout
    writer = OwnWriter(installed, 5432)
    writer.start()
    ages: list[float] = []
    try:
        time.sleep(timeout + 10)
        deadline = time.monotonic() + SAMPLE_SECONDS
        while time.monotonic() < deadline:
            age = archived_age(installed)
            assert age is not None, "nothing archived yet"
            ages.append(age)
            time.sleep(2)
    finally:
        writer.finish()
    assert not writer.failures, writer.failures[:3]
    ages.sort()
    print(f"\nRPO (age of the newest archived WAL, archive_timeout {timeout} s, {len(ages)} samples over "
          f"{SAMPLE_SECONDS} s, writer 1 row / 20 ms through LB:5432): median {ages[len(ages) // 2]:.1f} s, "
          f"max {ages[-1]:.1f} s; {len(writer.acks)} writes, 0 failed")
    assert ages[-1] < 60, f"the newest archived WAL was {ages[-1]:.1f} s old"


def test_after_a_switchover_backups_and_check_work_with_no_operator_action(installed: Installed) -> None:
    before, timeline = leader_and_timeline(installed)
    result = kbpg(installed.workdir, "switchover", "--yes", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    after, new_timeline = leader_and_timeline(installed)
    assert after != before and new_timeline > timeline
    # A new backup (pgBackRest finds the new primary itself among pg1..pgN) and the archive check (a WAL switch on
    # the new primary, pushed by it).
    backup = kbpg(installed.workdir, "backup", "now", "--type", "incr", "--json", timeout=900)
    assert backup.returncode == 0, backup.stdout + backup.stderr
    assert json.loads(backup.stdout)["ok"]
    check = kbpg(installed.workdir, "backup", "check", timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    # The new timeline's history file reached the repository.
    stanza = creds.read_env(installed.workdir / creds.ENV_FILE)["PATRONI_CLUSTER_NAME"]
    history = f"{new_timeline:08X}.history"
    code, out, err = on_host(installed.workdir, BACKUP_HOST.address,
                             f"find /var/lib/pgbackrest/archive/{stanza} -name '{history}*' | head -1")
    assert code == 0 and re.search(re.escape(history), out), f"{history} not in the repository: {out or err}"
