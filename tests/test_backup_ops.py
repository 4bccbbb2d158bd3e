"""`kbpg backup now | list | check`'s core (kbpg_tui/core/ops/backup.py) against recorded answers: pgBackRest's
`info --output=json` (tests/fixtures/backup/, 2.45 recorded and 2.5x shaped), pg_stat_archiver rows, and the backup
host's systemd through scripted connections. No host, no database."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

from kbpg_tui.core import credentials as creds
from kbpg_tui.core.engine import Context
from kbpg_tui.core.events import EventCollector, Progress
from kbpg_tui.core.inventory import load_selection
from kbpg_tui.core.ops import backup as ops
from kbpg_tui.core.settings import Settings
from kbpg_tui.core.ssh import Host

from .fakes import FakePool, ScriptedConnection, result

FIXTURES = Path(__file__).parent / "fixtures" / "backup"
NOW = 1795694400.0  # 2026-11-26 12:00:00 UTC: "now" on the backup host in these samples
STANZA = "keybuzz-pg"


def sample(name: str) -> str:
    return (FIXTURES / name).read_text()


def info(name: str) -> ops.BackupInfo:
    return ops.parse_info(sample(name), STANZA)


def archiver(name: str) -> ops.ArchiverState:
    data = json.loads(sample(name))
    data.pop("_comment")
    return ops.ArchiverState(**data)


def assess(info_name: str | None, archiver_name: str | None = "archiver-ok.json", check_error: str | None = None,
           **kwargs) -> ops.Assessment:
    return ops.assess(info(info_name) if info_name else None, NOW, archiver(archiver_name) if archiver_name else None,
                      check_error, 26, 120, names={"198.18.0.120": "db-master-01", "198.18.0.121": "db-slave-01"},
                      **kwargs)


# --- parsing info ---------------------------------------------------------------------------------

def test_a_recorded_245_answer_is_read_whole() -> None:
    got = ops.parse_info(sample("recorded-2.45-info-ok.json"), STANZA)
    assert got.ok and got.status_code == 0 and got.cipher == "aes-256-cbc" and not got.running
    assert [(b.type, b.label) for b in got.backups] == [
        ("full", "20261126-133611F"), ("diff", "20261126-133611F_20261126-133614D"),
        ("incr", "20261126-133611F_20261126-133615I")]
    full = got.backups[0]
    assert (full.size, full.repo_size, full.wal_start, full.wal_stop) == (
        22992350, 2828176, "000000010000000000000002", "000000010000000000000003")
    assert full.start == datetime(2026, 11, 26, 13, 36, 11, tzinfo=timezone.utc) and full.duration == 2
    assert (got.archive_min, got.archive_max) == ("000000010000000000000001", "000000010000000000000007")
    assert got.last("full") is full and got.newest is got.backups[-1] and got.oldest is full


def test_a_25x_answer_with_its_newer_keys() -> None:
    got = info("info-ok.json")
    assert got.ok and len(got.backups) == 5 and got.backups[0].type == "full" and got.backups[0].version == "2.54.2"
    assert got.newest.label == "20261122-010002F_20261126-010003D" and got.newest.prior == "20261122-010002F"
    assert got.newest.repo_delta == 36700160 and got.archive_max == "000000030000000600000012"


def test_no_backup_and_a_running_first_backup() -> None:
    none = ops.parse_info(sample("recorded-2.45-info-no-backup.json"), STANZA)
    assert (none.status_code, none.status_text, none.backups, none.archive_min) == (2, "no valid backups", [], None)
    running = info("info-first-running.json")
    assert running.running and running.progress == pytest.approx(0.4, abs=0.001)


def test_an_error_status_carries_the_repositorys_own_message() -> None:
    got = info("info-error.json")
    assert got.status_code == 99 and not got.ok
    assert got.status_text.startswith("other: [CryptoError] unable to flush: cipher final failure")


def test_a_stanza_not_listed_reads_as_missing() -> None:
    got = ops.parse_info(sample("info-ok.json"), "another-cluster")
    assert (got.status_code, got.status_message) == (1, "missing stanza path")


@pytest.mark.parametrize("text, words", [
    ("", "gave no JSON"),
    ("ERROR: [031]: option 'repo1-cipher-pass' is not allowed", "gave no JSON: \"ERROR: [031]"),
    ('{"name": "keybuzz-pg"}', "not a list of stanzas"),
    ('[{"name": "keybuzz-pg", "backup": [{"label": "x", "timestamp": {"start": "soon"}}]}]', "x's start is not a time"),
    ('[{"name": "keybuzz-pg", "backup": [{"type": "full"}]}]', "a backup without a label"),
])
def test_an_answer_kbpg_cannot_read_is_named(text: str, words: str) -> None:
    with pytest.raises(ops.InfoError, match=None) as caught:
        ops.parse_info(text, STANZA)
    assert words in str(caught.value)


def test_the_info_script_runs_as_the_repository_user_and_reads_the_hosts_clock() -> None:
    script = ops.info_script(STANZA)
    assert script == "date +%s && runuser -u pgbackrest -- pgbackrest --stanza=keybuzz-pg --output=json info"
    now, got = ops.parse_info_output(f"{NOW:.0f}\n" + sample("info-ok.json"), STANZA)
    assert now == NOW and got.ok
    assert ops.check_script(STANZA, 20) == "runuser -u pgbackrest -- pgbackrest --stanza=keybuzz-pg --archive-timeout=20 check"


# --- the archiver -----------------------------------------------------------------------------------

def test_segments_waiting_between_the_archived_and_the_current() -> None:
    assert ops.segments_between("000000030000000600000011", "000000030000000600000012", 16 << 20) == 0
    assert ops.segments_between("0000000300000005000000FF", "000000030000000600000001", 16 << 20) == 1  # across an id
    assert ops.segments_between("000000030000000600000011", "00000003000000060000001C", 16 << 20) == 10
    assert ops.segments_between("0000000300000005000003FF", "000000030000000600000000", 4 << 20) == 0  # 4 MB segments
    assert ops.segments_between("00000003.history", "000000030000000600000012", 16 << 20) is None
    assert ops.segments_between("000000020000000600000011", "000000030000000600000012", 16 << 20) is None


def test_the_archivers_row_in_the_querys_column_order() -> None:
    row = ("198.18.0.120", 12, "000000010000000000000009", 3.5, 3, "00000001000000000000000A", 1.5, 99.0, "on",
           "00000001000000000000000B", 16777216)
    state = ops.ArchiverState.from_row(row)
    assert state.failing and state.waiting == 1 and state.segment_size == 16777216
    assert ops.ARCHIVER_SQL.count(",") >= len(row) - 1 and "pg_stat_archiver" in ops.ARCHIVER_SQL


# --- the verdict (check 18 and `kbpg backup check`) -------------------------------------------------------

def test_all_well_names_the_figures() -> None:
    got = assess("info-ok.json")
    assert got.verdict == "pass"
    assert got.reason == ("last full 4.5 d ago (20261122-010002F), newest diff 11 h ago "
                          "(20261122-010002F_20261126-010003D), last archived WAL 12 s ago on db-master-01, "
                          "pgbackrest check ok")


def test_a_stale_backup_warns_with_the_limit() -> None:
    got = assess("info-stale.json")
    assert got.verdict == "warn"
    assert got.reason.startswith("the newest backup is 3.5 d old (backup.warn_backup_age_hours = 26)")
    assert "last archived WAL 12 s ago" in got.reason


def test_no_backup_fails_and_says_how_to_take_one() -> None:
    got = assess("info-no-backup.json")
    assert got.verdict == "fail"
    assert got.reason.startswith("stanza keybuzz-pg: no backup (start one with `kbpg backup now --type full`)")


def test_the_first_backup_running_is_a_warning_not_a_failure() -> None:
    got = assess("info-first-running.json")
    assert (got.verdict, got.reason.split(";")[0]) == ("warn", "no backup yet: the first one is running, 40% done")


@pytest.mark.parametrize("name, words", [
    ("info-error.json", "stanza keybuzz-pg: other: [CryptoError] unable to flush: cipher final failure"),
    ("info-missing-stanza.json", "stanza keybuzz-pg: missing stanza path (pgBackRest status 1)"),
])
def test_an_error_status_fails_naming_it(name: str, words: str) -> None:
    got = assess(name)
    assert got.verdict == "fail" and words in got.reason


def test_a_failing_check_fails_with_pgbackrests_words() -> None:
    error = ops.pgbackrest_error(result("", 82, sample("check-archive-timeout.txt")))
    assert error == "ERROR: [082]: WAL segment 00000001000000000000000A was not archived before the 3000ms timeout"
    got = assess("info-ok.json", check_error=error)
    assert got.verdict == "fail" and got.reason.startswith("pgbackrest check failed: ERROR: [082]: WAL segment")


def test_an_archiver_failing_past_the_limit_fails() -> None:
    got = assess("info-ok.json", "archiver-failing.json")
    assert got.verdict == "fail"
    assert ("archiving fails on db-master-01: last failure 8 s ago (000000030000000600000012), last archived WAL "
            "26 min ago") in got.reason


def test_an_archiver_failing_within_the_limit_warns() -> None:
    got = assess("info-ok.json", "archiver-failing-recent.json")
    assert got.verdict == "warn" and got.reason.startswith("archiving fails on db-master-01: last failure 3 s ago")
    assert "(retrying)" in got.reason


def test_a_quiet_cluster_with_nothing_waiting_passes_however_old_its_last_archive() -> None:
    got = assess("info-ok.json", "archiver-idle.json")
    assert got.verdict == "pass" and "last archived WAL 3 h ago on db-master-01" in got.reason


def test_completed_wal_waiting_past_the_limit_warns() -> None:
    state = archiver("archiver-idle.json")
    state.current_wal = "000000030000000600000015"  # 3 completed segments wait
    got = ops.assess(info("info-ok.json"), NOW, state, None, 26, 120)
    assert got.verdict == "warn"
    assert got.reason.startswith("the newest archived WAL on 198.18.0.120 is 3 h old (backup.warn_archive_lag_seconds "
                                 "= 120), 3 completed segment(s) waiting; last full")


def test_a_primary_just_started_with_nothing_archived_passes() -> None:
    got = assess("info-ok.json", "archiver-after-failover.json")
    assert got.verdict == "pass" and "no WAL archived yet on db-slave-01" in got.reason
    late = archiver("archiver-after-failover.json")
    late.uptime = 600.0
    assert ops.assess(info("info-ok.json"), NOW, late, None, 26, 120).verdict == "warn"


def test_archive_mode_off_fails() -> None:
    got = assess("info-ok.json", "archiver-mode-off.json")
    assert got.verdict == "fail" and "archive_mode is off on db-master-01" in got.reason


def test_what_could_not_be_read_is_a_failure_naming_it() -> None:
    got = ops.assess(None, None, None, None, 26, 120, info_error="backup-01: pgbackrest info failed: ERROR: [041]",
                     archiver_error="LB 198.18.0.10:5432: connection refused")
    assert got.verdict == "fail"
    assert got.reason == ("pgbackrest info: backup-01: pgbackrest info failed: ERROR: [041]; pg_stat_archiver: LB "
                          "198.18.0.10:5432: connection refused; pgbackrest check ok")


def test_a_backup_with_checksum_errors_warns() -> None:
    got = info("info-ok.json")
    got.backups[1].error = True
    verdict = ops.assess(got, NOW, archiver("archiver-ok.json"), None, 26, 120)
    assert verdict.verdict == "warn" and "20261122-010002F_20261123-010003D found page checksum errors" in verdict.reason


# --- the commands, against a scripted backup host ---------------------------------------------------------

class BackupHost:
    """The backup host's answers: kbpg-backup@ units (running or not), systemd's view of the unit kbpg starts (a
    new invocation after `systemctl start`, running for ``runs`` looks), pgBackRest's info before/after."""

    def __init__(self, running: str = "", runs: int = 2, result_: str = "success", lock_held: bool = False):
        self.running, self.runs, self.result, self.lock_held = running, runs, result_, lock_held
        self.started = False
        self.looks = 0
        self.before = json.loads(sample("info-stale.json"))
        self.after = json.loads(sample("info-ok.json"))

    def __call__(self, script: str, stdin: bytes):
        if "systemctl list-units" in script:
            return result(self.running + f"now {NOW:.0f}\n")
        if "systemctl start --no-block" in script:
            assert "kbpg-backup@full.service" in script
            self.started = True
            return result(f"{NOW:.0f}\n")
        if script.startswith("systemctl show"):
            if not self.started:
                return result("ActiveState=failed\nSubState=failed\nResult=exit-code\nInvocationID=old\n")
            self.looks += 1
            if self.looks <= self.runs:
                return result("ActiveState=activating\nSubState=start\nResult=success\nInvocationID=new\n")
            return result(f"ActiveState={'inactive' if self.result == 'success' else 'failed'}\nSubState=dead\n"
                          f"Result={self.result}\nInvocationID=new\nExecMainStatus={0 if self.result == 'success' else 82}\n")
        if "--output=json info" in script:
            data = self.after if self.started and self.looks > self.runs else self.before
            if self.lock_held or (self.started and self.looks <= self.runs):
                data = json.loads(json.dumps(data))
                data[0]["status"]["lock"]["backup"].update(held=True, size=1000, **{"size-cplt": 250})
            return result(f"{NOW:.0f}\n" + json.dumps(data))
        if script.startswith("journalctl"):
            return result("ERROR: [082]: WAL segment 000000030000000600000013 was not archived before the 60000ms "
                          "timeout\nkbpg-backup@full.service: Main process exited, code=exited, status=82/n/a\n")
        raise AssertionError(f"unexpected script: {script}")


def context(tmp_path: Path, handler) -> tuple[Context, ScriptedConnection, EventCollector]:
    from kbpg_tui.core.lab.workdir import write_servers_tsv

    write_servers_tsv(tmp_path)
    events = EventCollector()
    connection = ScriptedConnection(Host("backup-01", "198.18.0.153"), handler)
    settings = Settings()
    ctx = Context(settings, creds.generate()[0], load_selection(tmp_path / "servers.tsv", settings.inventory.db_rule,
                                                                 settings.inventory.haproxy_rule,
                                                                 settings.inventory.backup_rule),
                  tmp_path, pool=FakePool({"backup-01": connection}), sink=events, cancel=threading.Event())  # type: ignore[arg-type]
    ctx.credentials["PATRONI_CLUSTER_NAME"] = STANZA
    return ctx, connection, events


def test_backup_now_starts_the_unit_follows_it_and_names_the_new_backup(tmp_path: Path) -> None:
    host = BackupHost()
    ctx, connection, events = context(tmp_path, host)
    started = []
    got = ops.backup_now(ctx, "full", wait=True, on_started=lambda: started.append(True), poll=0,
                         sleep=lambda seconds: False)
    assert got.ok and started == [True] and got.backup is not None
    assert got.backup.label == "20261122-010002F_20261126-010003D"  # the newest of those info did not list before
    assert [s for s in connection.scripts if "systemctl start" in s] == [
        "date +%s && systemctl start --no-block kbpg-backup@full.service"]
    progress = [e.text for e in events.of_type(Progress)]
    assert progress and progress[0].startswith("full backup on backup-01: 25% (250 B of 1000 B)")
    assert got.lines()[0].startswith(f"backup {got.backup.label} (")


def test_backup_now_reports_a_failure_with_the_journal(tmp_path: Path) -> None:
    ctx, _connection, _events = context(tmp_path, BackupHost(result_="exit-code"))
    got = ops.backup_now(ctx, "full", wait=True, poll=0, sleep=lambda seconds: False)
    assert not got.ok and got.error == "result exit-code, exit status 82"
    lines = got.lines()
    assert lines[0] == "kbpg-backup@full.service on backup-01 FAILED: result exit-code, exit status 82"
    assert "   | ERROR: [082]: WAL segment 000000030000000600000013 was not archived" in lines[1]


def test_backup_now_refuses_while_a_kbpg_backup_runs_naming_it_and_since_when(tmp_path: Path) -> None:
    host = BackupHost(running=f"running kbpg-backup@diff.service activating {NOW - 754:.0f}\n")
    ctx, connection, _events = context(tmp_path, host)
    with pytest.raises(ops.BackupBusy) as caught:
        ops.backup_now(ctx, "full", wait=True, poll=0, sleep=lambda seconds: False)
    assert str(caught.value) == ("kbpg-backup@diff.service is already running on backup-01, since 2026-11-26 "
                                 "11:47:26 UTC (13 min ago)")
    assert not host.started and not any("systemctl start" in s for s in connection.scripts)


def test_backup_now_refuses_while_pgbackrests_own_lock_is_held(tmp_path: Path) -> None:
    host = BackupHost(lock_held=True)
    ctx, _connection, _events = context(tmp_path, host)
    with pytest.raises(ops.BackupBusy, match="a pgBackRest backup or expire of stanza keybuzz-pg is running on "
                                             r"backup-01 \(its lock is held, 25% done"):
        ops.backup_now(ctx, "full", wait=False)
    assert not host.started


def test_backup_now_without_waiting_returns_once_systemd_started_it(tmp_path: Path) -> None:
    host = BackupHost(runs=100)
    ctx, _connection, events = context(tmp_path, host)
    got = ops.backup_now(ctx, "full", wait=False, poll=0, sleep=lambda seconds: False)
    assert got.ok and not got.waited and host.looks == 1 and not events.of_type(Progress)
    assert got.lines() == ["kbpg-backup@full.service started on backup-01; `kbpg backup list` shows it once done "
                           "(journalctl -u kbpg-backup@full.service on backup-01 follows it)"]


def test_interrupting_the_wait_leaves_the_backup_running(tmp_path: Path) -> None:
    host = BackupHost(runs=100)
    ctx, connection, _events = context(tmp_path, host)
    got = ops.backup_now(ctx, "full", wait=True, poll=0, sleep=lambda seconds: True)
    assert got.stopped_watching and "kbpg stopped watching it" in got.lines()[0]
    assert not any("systemctl stop" in s or "kill" in s for s in connection.scripts)


def test_the_running_units_script_answers_are_parsed() -> None:
    found, now = ops.parse_running("running kbpg-backup@full.service activating 1795690000\nnow 1795694400\n")
    assert now == NOW and found == [ops.Running("kbpg-backup@full.service", "activating", 1795690000.0)]
    assert "InactiveExitTimestampMonotonic" in ops.RUNNING_SCRIPT and "/proc/uptime" in ops.RUNNING_SCRIPT


def test_the_type_is_one_of_three() -> None:
    assert [ops.unit_name(t) for t in ("full", "diff", "incr")] == [
        "kbpg-backup@full.service", "kbpg-backup@diff.service", "kbpg-backup@incr.service"]
    with pytest.raises(ValueError):
        ops.unit_name("full; rm -rf /")


def test_the_listing_window_runs_from_the_oldest_backup_to_the_newest_archived_wal() -> None:
    listing = ops.Listing(Host("backup-01", "198.18.0.153"), info("info-ok.json"), NOW, archiver("archiver-ok.json"),
                          None)
    assert listing.window() == ("restorable from 2026-11-22 01:04:41 UTC to the newest archived WAL, 12 s ago "
                                "(000000030000000600000011)")
    unknown = ops.Listing(listing.host, listing.info, NOW, None, "LB 198.18.0.10:5432: refused")
    assert unknown.window().endswith("(000000030000000600000012; its time unknown: LB 198.18.0.10:5432: refused)")
    assert json.loads(json.dumps(listing.to_dict()))["restorable_from"] == "2026-11-22T01:04:41+00:00"


def test_ctrl_c_during_a_command_while_following_leaves_the_backup_running(tmp_path: Path) -> None:
    from kbpg_tui.core.ssh import Cancelled

    host = BackupHost(runs=100)

    def handler(script: str, stdin: bytes):
        if host.looks >= 3 and script.startswith("systemctl show"):
            raise Cancelled("backup-01: cancelled")  # what the pool raises once ctx.cancel is set mid-command
        return host(script, stdin)

    ctx, connection, _events = context(tmp_path, handler)
    got = ops.backup_now(ctx, "full", wait=True, poll=0, sleep=lambda seconds: False)
    assert got.stopped_watching and not got.ok
    assert not any("systemctl stop" in s or "kill" in s for s in connection.scripts)


@pytest.mark.parametrize("stdout, stderr", [
    ("", "ERROR: [082]: WAL segment 0000000100000000000000A1 was not archived before the 20000ms timeout\n"
         "       HINT: run the 'start' command if the stanza was previously stopped.\n"),
    ("P00  ERROR: [082]: WAL segment 0000000100000000000000A1 was not archived before the 20000ms timeout\n"
     "            HINT: run the 'start' command if the stanza was previously stopped.\n", ""),
    ("2026-11-26 14:23:01.123 P00  ERROR: [082]: WAL segment 0000000100000000000000A1 was not archived before the "
     "20000ms timeout\n                                    HINT: run the 'start' command if the stanza was previously "
     "stopped.\n", "WARN: unable to check pg2: [DbConnectError] unable to connect\n"),
])
def test_pgbackrests_error_line_is_found_whichever_stream_and_prefix(stdout: str, stderr: str) -> None:
    assert ops.pgbackrest_error(result(stdout, 82, stderr)) == (
        "ERROR: [082]: WAL segment 0000000100000000000000A1 was not archived before the 20000ms timeout")


def test_without_an_error_line_the_first_words_that_are_no_hint_are_kept() -> None:
    got = ops.pgbackrest_error(result("", 1, "WARN: a warning\nrunuser: user pgbackrest does not exist\n"
                                            "HINT: something\n"))
    assert got == "runuser: user pgbackrest does not exist"
    assert ops.pgbackrest_error(result("", 255, "")) == "exit 255, no output"
