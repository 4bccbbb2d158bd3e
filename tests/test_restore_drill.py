"""The restore drill without hosts: --time and --query parsing, the sentinel verdicts, the script's result, the
report, the transient unit's command, and run_drill's flow against fake hosts (busy, T after the cluster's clock,
no result, a scratch copy left behind, cancel). The script itself runs for real in test_restore_drill_pg.py."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from kbpg_tui.core import credentials as creds
from kbpg_tui.core import inventory as inv
from kbpg_tui.core.engine import Context
from kbpg_tui.core.events import EventCollector, Progress
from kbpg_tui.core.ops import restore_drill as rd
from kbpg_tui.core.settings import Settings
from kbpg_tui.core.ssh import Result

from .conftest import REPO, run_kbpg
from .fakes import FakePool, ScriptedConnection, result
from .test_cli_input import assert_bad_input
from .test_step06_backup import FakeHost

UTC = timezone.utc
NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


# --- --time ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("2026-11-26T10:15:30.25+00:00", datetime(2026, 11, 26, 10, 15, 30, 250000, tzinfo=UTC)),
    ("2026-11-26T10:15:30+00:00", datetime(2026, 11, 26, 10, 15, 30, tzinfo=UTC)),
    ("2026-11-26T10:15:30.123456Z", datetime(2026, 11, 26, 10, 15, 30, 123456, tzinfo=UTC)),
    ("2026-11-26T11:15:30.5+01:00", datetime(2026, 11, 26, 10, 15, 30, 500000, tzinfo=UTC)),
    ("2026-11-26T12:00:00+00:00", NOW),  # now itself is not the future
    (datetime(2026, 11, 26, 9, 1, 2, 3, tzinfo=UTC).isoformat(), datetime(2026, 11, 26, 9, 1, 2, 3, tzinfo=UTC)),
])
def test_a_time_with_an_offset_is_taken_in_utc(text: str, expected: datetime) -> None:
    value = rd.parse_target(text, now=NOW)
    assert value == expected and value.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text, fragment", [
    ("2026-11-26T10:15:30.25", "must carry a UTC offset, e.g. 2026-11-26T10:15:30.25+00:00"),
    ("2026-11-26", "must carry a UTC offset"),
    ("yesterday", "not an ISO 8601 date and time"),
    ("2026-13-01T00:00:00+00:00", "not an ISO 8601 date and time"),
    ("", "--time: empty"),
    ("2026-11-26T12:00:00.000001+00:00", "is in the future"),
    ("2026-11-26T13:30:00+01:00", "is in the future"),
])
def test_a_bad_time_is_named(text: str, fragment: str) -> None:
    with pytest.raises(rd.TargetError) as caught:
        rd.parse_target(text, now=NOW)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_a_long_bad_time_is_shown_shortened() -> None:
    with pytest.raises(rd.TargetError) as caught:
        rd.parse_target("x" * 5000, now=NOW)
    assert len(str(caught.value)) < 200


def test_pgbackrest_gets_the_target_in_utc_with_microseconds() -> None:
    value = rd.parse_target("2026-11-26T11:15:30.25+01:00", now=NOW)
    assert rd.pgbackrest_target(value) == "2026-11-26 10:15:30.250000+00"


# --- --query -------------------------------------------------------------------------------------------------

def test_query_limits() -> None:
    assert rd.check_query(None) is None
    assert rd.check_query("select 1") == "select 1"
    assert rd.check_query("x" * rd.MAX_QUERY_BYTES) is not None
    for text, fragment in [("select 1\x00", "NUL"), ("x" * (rd.MAX_QUERY_BYTES + 1), "at most 65536"),
                           ("é" * (rd.MAX_QUERY_BYTES // 2 + 1), "at most 65536"), ("  \n", "empty"),
                           ("select '\udcff'", "not valid UTF-8"), (" \\! id", "backslash commands are not run")]:
        with pytest.raises(rd.TargetError) as caught:
            rd.check_query(text)
        assert fragment in str(caught.value)


# --- sentinels ------------------------------------------------------------------------------------------------

T = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)


def _row(token: str, at: datetime) -> dict:
    return {"token": token, "written_at": at.isoformat()}


LEADER = [_row("before", T - timedelta(minutes=5)), _row("near", T + timedelta(milliseconds=300)),
          _row("after", T + timedelta(minutes=5))]


def test_sentinels_present_exactly_when_written_before_t() -> None:
    verdicts = rd.sentinel_verdicts(LEADER, [{"token": "before"}, {"token": "stray"}], T)
    assert [(v.token, v.expected, v.found, v.verdict, v.ok) for v in verdicts] == [
        ("before", True, True, "present", True),
        ("near", None, False, "near T: absent", True),
        ("after", False, False, "absent", True),
    ]


def test_a_missing_or_unexpected_sentinel_fails() -> None:
    verdicts = {v.token: v for v in rd.sentinel_verdicts(LEADER, [{"token": "after"}, {"token": "near"}], T)}
    assert verdicts["before"].verdict == "MISSING" and not verdicts["before"].ok
    assert verdicts["after"].verdict == "UNEXPECTED" and not verdicts["after"].ok
    assert verdicts["near"].verdict == "near T: present" and verdicts["near"].ok


def test_latest_expects_every_sentinel() -> None:
    verdicts = rd.sentinel_verdicts(LEADER, [{"token": "before"}, {"token": "near"}], None)
    assert [v.verdict for v in verdicts] == ["present", "present", "MISSING"]


def test_the_sentinel_sql_grants_the_app_role_and_returns_json() -> None:
    sql = rd.sentinel_sql('kb"app', "ab12")
    assert 'GRANT SELECT ON kbpg_backup.sentinel TO "kb""app";' in sql
    assert "INSERT INTO kbpg_backup.sentinel (token) VALUES ('ab12');" in sql
    assert sql.index("INSERT") < sql.index("json_agg")
    with pytest.raises(AssertionError):
        rd.sentinel_sql("kb_app", "x'); DROP TABLE t; --")


# --- the script's result ------------------------------------------------------------------------------------

def script_result(**changes) -> dict:
    data = {
        "id": "x", "status": "ok", "phase": "stop", "error": None, "stanza": "keybuzz-pg",
        "target": "2026-11-26 10:00:00.000000+00", "backup_label": "20261126-094500F", "backup_type": "full",
        "backup_stop": T.timestamp() - 900, "oldest_stop": T.timestamp() - 900, "newest_stop": T.timestamp() - 900,
        "backup_size": 31_000_000, "backup_repo_size": 4_000_000, "pg_version": "17",
        "timings": {"restore": 5.2, "start": 0.03, "recovery": 4.1, "verify": 0.3, "total": 10.5},
        "recovery_point": "2026-11-26T09:59:58.000000+00:00",
        "recovery_log": "recovery stopping before commit of transaction 734, time 2026-11-26 10:00:01+00",
        "sentinel_table": True, "sentinels": [{"token": "before", "written_at": "x"}],
        "pgvector_version": "0.8.0", "pgvector_ok": True, "pgvector_error": None,
        "query": {"ran": True, "csv": "count,max\n50,50\n", "lines": 2, "truncated": False, "error": None},
        "swept": [],
    }
    data.update(changes)
    return data


def drill(query: str | None = "select count(*), max(id) from t") -> rd.DrillResult:
    result_ = rd.DrillResult(id="20261126-100000-abcdef", started="2026-11-26T10:01:00+00:00", backup_host="backup-01",
                             stanza="keybuzz-pg", target=T.isoformat())
    if query is not None:
        result_.query = {"sql": query}
    return result_


def applied(data: dict, leader=LEADER[:1] + LEADER[2:], target: datetime | None = T,
            removed: bool | None = True) -> rd.DrillResult:
    one = drill()
    one.apply(rd.parse_result(json.dumps(data)), leader, target)
    one.scratch_removed = removed
    return one


def test_a_verified_drill() -> None:
    one = applied(script_result())
    assert one.ok, one.problems
    assert one.backup == {"label": "20261126-094500F", "type": "full", "stop": "2026-11-26T09:45:00+00:00",
                          "size": 31_000_000, "repo_size": 4_000_000}
    assert one.window == {"oldest_stop": "2026-11-26T09:45:00+00:00", "newest_stop": "2026-11-26T09:45:00+00:00"}
    assert one.query is not None and one.query["csv"] == "count,max\n50,50\n"
    assert one.pgvector == {"version": "0.8.0", "ok": True, "error": None}


@pytest.mark.parametrize("changes, fragment", [
    ({"status": "failed", "phase": "restore", "error": "pgbackrest restore: boom"},
     "the drill failed at restore: pgbackrest restore: boom"),
    ({"sentinels": []}, "sentinel before written 2026-11-26T09:55:00+00:00 (at or before the target) is missing"),
    ({"sentinels": [{"token": "before"}, {"token": "after"}]}, "sentinel after written"),
    ({"pgvector_ok": False}, "pgvector 0.8.0: '[1,2,3]' <-> '[1,2,4]' is not 1"),
    ({"query": {"ran": False, "error": "ERROR:  cannot execute DELETE in a read-only transaction"}},
     "the query failed: ERROR:  cannot execute DELETE in a read-only transaction"),
    ({"sentinel_error": "permission denied for schema kbpg_backup"}, "the sentinels could not be read"),
])
def test_what_makes_a_drill_not_verified(changes: dict, fragment: str) -> None:
    one = applied(script_result(**changes))
    assert not one.ok
    assert any(fragment in problem for problem in one.problems), one.problems


def test_a_scratch_copy_left_behind_is_not_verified() -> None:
    assert not applied(script_result(), removed=False).ok
    assert not applied(script_result(), removed=None).ok


def test_no_sentinel_on_the_leader_is_not_verified() -> None:
    one = applied(script_result(), leader=[])
    assert not one.ok and "no sentinel to judge" in one.problems[-1]


def test_pgvector_absent_is_fine() -> None:
    one = applied(script_result(pgvector_version=None, pgvector_ok=None))
    assert one.ok and one.pgvector is None


@pytest.mark.parametrize("text, fragment", [
    ("{", "not JSON"), ("[]", "no status"), ('{"status": "maybe"}', "no status"),
    ('{"status": "ok", "sentinels": [1]}', "sentinels"), ('{"status": "ok", "timings": []}', "timings"),
    ('{"status": "ok", "query": "x"}', "query"),
])
def test_an_unreadable_result_is_refused(text: str, fragment: str) -> None:
    with pytest.raises(rd.ResultError) as caught:
        rd.parse_result(text)
    assert fragment in str(caught.value)


# --- the report -----------------------------------------------------------------------------------------------

def test_the_report_pair(tmp_path: Path) -> None:
    one = applied(script_result(swept=["run-old"]))
    md, js = rd.write_reports(tmp_path, one)
    assert md.name == "restore-drill-20261126-100100.md" and js.name == "restore-drill-20261126-100100.json"
    assert (tmp_path / "reports").stat().st_mode & 0o777 == 0o700
    data = json.loads(js.read_text())
    assert data == json.loads(json.dumps(one.to_dict())) and data["ok"] is True
    assert rd.DrillResult.from_dict(data).to_dict() == one.to_dict()
    text = md.read_text()
    assert "- result: VERIFIED (ok)" in text and "| before | 2026-11-26T09:55:00+00:00 | yes | yes | present |" in text
    assert "| after | 2026-11-26T10:05:00+00:00 | no | no | absent |" in text
    assert "~~~~ csv\ncount,max\n50,50\n~~~~" in text and "- a scratch copy left by run-old" in text
    assert "| 5.2 s | 0.0 s | 4.1 s | 0.3 s | 10.5 s |" in text
    failed = applied(script_result(sentinels=[]))
    assert "- result: NOT VERIFIED" in failed.markdown() and "## Problems" in failed.markdown()


# --- on the backup host ------------------------------------------------------------------------------------------

def test_the_unit_is_bounded_and_cleans_on_any_end() -> None:
    words = shlex.split(rd.systemd_run_command("20261126-100000-abcdef", 1200))
    assert words[0] == "systemd-run" and "--unit=kbpg-restore-drill-20261126-100000-abcdef.service" in words
    assert "--collect" in words
    assert "RuntimeMaxSec=1200" in words
    assert words.count("ExecStopPost=-/usr/local/lib/kbpg/restore-drill cleanup 20261126-100000-abcdef") == 2
    assert words[-3:] == ["/usr/local/lib/kbpg/restore-drill", "run", "20261126-100000-abcdef"]


def test_the_tmpfiles_rule_and_the_script_shipped() -> None:
    assert "d /var/lib/kbpg-drill 0711 root root -" in rd.TMPFILES_RULE.splitlines()
    assert "R! /var/lib/kbpg-drill/run-*" in rd.TMPFILES_RULE.splitlines()
    text = rd.drill_script_text()
    assert text == (REPO / "assets" / "backup" / "restore-drill").read_text()
    assert text.startswith("#!/bin/bash\n") and "listen_addresses = ''" in text


def test_the_inbox_carries_no_secret_and_the_clusters_version() -> None:
    values = creds.generate()[0]
    inbox = rd.inbox_json("id-1", "keybuzz-pg", T, "select 1", "kb_app", "keybuzz", 17,
                          {"max_connections": "200", "shared_buffers": "1GB"}, 1200)
    data = json.loads(inbox)
    assert data["bindir"] == "/usr/lib/postgresql/17/bin" and data["pg_version"] == "17"
    assert data["target"] == "2026-11-26 10:00:00.000000+00" and data["target_epoch"] == f"{T.timestamp():.6f}"
    assert data["settings"] == {"max_connections": "200"} and data["timeout"] == 1200
    assert data["repo_user"] == "pgbackrest" and data["config"] == "/etc/pgbackrest/pgbackrest.conf"
    for name, value in values.items():
        if name.endswith(("PASS", "PASSWORD")):
            assert value not in inbox, name
    latest = json.loads(rd.inbox_json("id-2", "s", None, None, "a", "b", 16, {}, 300))
    assert latest["target"] is None and latest["target_epoch"] is None and latest["query"] is None


# --- run_drill against fake hosts -----------------------------------------------------------------------------------

RESULTS = re.compile(r"/var/lib/kbpg-drill/results/")


class Scenario:
    """A leader answering the probe and the sentinel, a backup host whose unit runs for ``polls`` polls."""

    def __init__(self, tmp_path: Path, real_inventory: Path, *, busy: str = "", leader_now: datetime | None = None,
                 result_data: dict | None = None, polls: int = 2, scratch_left: bool = False, no_result: bool = False):
        selection = inv.load_selection(real_inventory)
        values = creds.generate()[0]
        self.ctx = Context(Settings(), values, selection, tmp_path, pool=FakePool(), sink=lambda e: None,  # type: ignore[arg-type]
                           cancel=threading.Event())
        self.leader = self.ctx.db_hosts[0]
        self.ctx.state["leader"] = self.leader.name
        self.leader_now = leader_now or datetime.now(UTC)
        self.sentinel_at = self.leader_now + timedelta(milliseconds=5)
        self.inserted: list[str] = []
        self.leader_connection = ScriptedConnection(self.leader, self.psql)
        self.polls, self.busy, self.scratch_left, self.no_result = polls, busy, scratch_left, no_result
        self.result_data = result_data
        backup_host = self.ctx.backup_host
        assert backup_host is not None
        self.backup = FakeHost(backup_host, [
            (r"list-units", lambda s: result(self.busy)),
            (r"test -x /usr/local/lib/kbpg/restore-drill", result("yes\n")),
            (r"pgbackrest --stanza=keybuzz-pg check", result()),
            (r"^systemd-run ", self.started),
            (r"systemctl show -p ActiveState", self.poll),
            (r"test -e /var/lib/kbpg-drill/run-", lambda s: result("present\n" if self.scratch_left else "gone\n")),
        ])
        self.ctx.pool = FakePool({self.leader.name: self.leader_connection,  # type: ignore[assignment]
                                  backup_host.name: self.backup.connection})
        self.drill_id = ""

    def psql(self, script: str, stdin: bytes) -> Result:
        sql = stdin.decode()
        if "'version_num'" in sql:
            return result(json.dumps({"now": self.leader_now.isoformat(), "version_num": "170005",
                                      "settings": {"max_connections": "100"}}) + "\n")
        if "INSERT INTO kbpg_backup.sentinel" in sql:
            token = re.search(r"VALUES \('([0-9a-f]+)'\)", sql).group(1)  # type: ignore[union-attr]
            self.inserted.append(token)
            return result(json.dumps([{"token": "old", "written_at": (T - timedelta(days=1)).isoformat()},
                                      {"token": token, "written_at": self.sentinel_at.isoformat()}]) + "\n")
        return result(exit_status=1, stderr="unexpected SQL")

    def started(self, script: str) -> Result:
        self.drill_id = re.search(r"--unit=kbpg-restore-drill-(\S+)\.service", script).group(1)  # type: ignore[union-attr]
        return result()

    def poll(self, script: str) -> Result:
        self.polls -= 1
        if self.polls > 0:
            return result("ActiveState=active\nResult=success\n--kbpg-progress--\n1.0 restore restoring backup "
                          "20261126-094500F (full, 31000000 bytes)\n")
        if not self.no_result:
            data = self.result_data if self.result_data is not None else script_result(
                id=self.drill_id, sentinels=[{"token": "old", "written_at": "x"}])
            self.backup.files[f"/var/lib/kbpg-drill/results/{self.drill_id}.json"] = ("600", "root", "root",
                                                                                      json.dumps(data).encode())
        return result("ActiveState=inactive\nResult=success\n--kbpg-progress--\n")

    def run(self, target: datetime | None = T, query: str | None = None) -> rd.DrillResult:
        events = EventCollector()
        self.events = events
        return rd.run_drill(self.ctx, target, query, events)


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rd, "POLL_SECONDS", 0.0)
    monkeypatch.setattr(rd, "GONE_WAIT", 0.0)


def test_run_drill_writes_the_sentinel_starts_the_unit_and_reports(tmp_path: Path, real_inventory: Path) -> None:
    scenario = Scenario(tmp_path, real_inventory)
    one = scenario.run(T, "select 1")
    assert one.ok, one.problems
    assert len(scenario.inserted) == 1
    assert [s.verdict for s in one.sentinels] == ["present", "absent"]  # the new one is after T
    scripts = scenario.backup.scripts
    check = next(i for i, s in enumerate(scripts) if "pgbackrest --stanza=keybuzz-pg check" in s)
    unit = next(i for i, s in enumerate(scripts) if s.startswith("systemd-run "))
    assert check < unit, "the sentinel's WAL is archived before the restore starts"
    assert f"RuntimeMaxSec={Settings().backup.drill_timeout}" in scripts[unit]
    inbox_path = f"/var/lib/kbpg-drill/inbox/{scenario.drill_id}.json"
    mode, owner, _group, data = scenario.backup.files[inbox_path]
    assert (mode, owner) == ("600", "root")
    inbox = json.loads(data)
    assert inbox["bindir"] == "/usr/lib/postgresql/17/bin" and inbox["query"] == "select 1"
    assert inbox["target"] == "2026-11-26 10:00:00.000000+00"
    assert scenario.ctx.credentials["BACKUP_CIPHER_PASS"] not in data.decode()
    assert any(f"rm -f /var/lib/kbpg-drill/results/{scenario.drill_id}.json" in s for s in scripts)
    assert "[restore] restoring backup 20261126-094500F (full, 31000000 bytes)" in [
        e.text for e in scenario.events.of_type(Progress)]
    assert one.paths and one.paths[0].name.startswith("restore-drill-") and one.paths[0].exists()


def test_progress_lines_are_redacted(tmp_path: Path, real_inventory: Path) -> None:
    scenario = Scenario(tmp_path, real_inventory)
    scenario.ctx.credentials.register_secrets()
    secret = scenario.ctx.credentials["BACKUP_CIPHER_PASS"]
    answer = scenario.poll

    def leaky(script: str) -> Result:
        outcome = answer(script)
        if "ActiveState=active" in outcome.stdout:
            outcome.stdout += f"2.0 restore repo1-cipher-pass={secret}\n"
        return outcome

    scenario.backup.rules = [(pattern, leaky if pattern == r"systemctl show -p ActiveState" else handler)
                             for pattern, handler in scenario.backup.rules]
    scenario.run()
    texts = [e.text for e in scenario.events.of_type(Progress)]
    assert any("repo1-cipher-pass=" in text for text in texts) and not any(secret in text for text in texts)


def test_a_running_drill_is_busy_before_anything_is_written(tmp_path: Path, real_inventory: Path) -> None:
    scenario = Scenario(tmp_path, real_inventory, busy="kbpg-restore-drill-x.service (since Thu 2026-11-26 09:00:00 UTC)\n")
    with pytest.raises(rd.DrillBusy) as caught:
        scenario.run()
    assert "kbpg-restore-drill-x.service (since Thu 2026-11-26 09:00:00 UTC)" in str(caught.value)
    assert scenario.inserted == [] and not scenario.drill_id


def test_a_target_not_before_the_clusters_clock_is_refused_before_the_sentinel(tmp_path: Path,
                                                                               real_inventory: Path) -> None:
    scenario = Scenario(tmp_path, real_inventory, leader_now=T - timedelta(seconds=3))
    with pytest.raises(rd.TargetError) as caught:
        scenario.run(T)
    assert "not in the past on the cluster's clock" in str(caught.value)
    assert scenario.inserted == [] and not scenario.drill_id


def test_a_unit_that_ends_without_a_result_fails(tmp_path: Path, real_inventory: Path) -> None:
    scenario = Scenario(tmp_path, real_inventory, no_result=True)
    one = scenario.run()
    assert not one.ok and one.status == "failed"
    assert "the drill's unit ended without a result" in one.problems[0]


def test_a_scratch_copy_still_there_fails(tmp_path: Path, real_inventory: Path) -> None:
    scenario = Scenario(tmp_path, real_inventory, scratch_left=True)
    one = scenario.run()
    assert not one.ok and one.scratch_removed is False
    assert any("is still there after the drill" in p for p in one.problems)
    assert f"/usr/local/lib/kbpg/restore-drill cleanup {scenario.drill_id}" in scenario.backup.scripts


def test_kbpg_removes_a_scratch_copy_its_unit_left(tmp_path: Path, real_inventory: Path) -> None:
    scenario = Scenario(tmp_path, real_inventory, scratch_left=True)
    cleanup = "/usr/local/lib/kbpg/restore-drill cleanup "

    def cleaned(script: str) -> Result:
        scenario.scratch_left = False
        return result()

    scenario.backup.rules.insert(0, ("^" + re.escape(cleanup), cleaned))
    one = scenario.run()
    assert one.ok and one.scratch_removed is True, one.problems
    assert f"{cleanup}{scenario.drill_id}" in scenario.backup.scripts


def test_busy_reported_by_the_script_is_busy(tmp_path: Path, real_inventory: Path) -> None:
    scenario = Scenario(tmp_path, real_inventory, result_data={"status": "busy", "error": "another restore drill "
                                                               "holds /var/lib/kbpg-drill/.lock"})
    with pytest.raises(rd.DrillBusy) as caught:
        scenario.run()
    assert "holds /var/lib/kbpg-drill/.lock" in str(caught.value)


def test_cancel_stops_the_unit(tmp_path: Path, real_inventory: Path) -> None:
    scenario = Scenario(tmp_path, real_inventory, polls=4, no_result=True)
    scenario.ctx.cancel.set()
    one = scenario.run()
    assert any(s.startswith("systemctl stop --no-block kbpg-restore-drill-") for s in scenario.backup.scripts)
    assert one.status == "cancelled" and not one.ok and one.problems[0].startswith("cancelled")


def test_no_backup_host_fails_early(tmp_path: Path, real_inventory: Path) -> None:
    scenario = Scenario(tmp_path, real_inventory)
    scenario.ctx.selection = dataclasses.replace(scenario.ctx.selection, backup_nodes=())
    with pytest.raises(rd.DrillFailed):
        scenario.run()


# --- the command line -------------------------------------------------------------------------------------------

@pytest.fixture
def company(tmp_path: Path, real_inventory: Path) -> Path:
    workdir = tmp_path / "company"
    workdir.mkdir()
    (workdir / "servers.tsv").write_text(real_inventory.read_text())
    (workdir / "kbpg.toml").write_text('[network]\nlb_address = "198.18.0.10"\nprivate_subnet = "10.0.0.0/16"\n')
    assert run_kbpg("credentials", "generate", workdir=workdir).returncode == 0
    return workdir


@pytest.mark.parametrize("args, fragments", [
    (["--time", "2026-11-26T10:15:30"], ["--time '2026-11-26T10:15:30': must carry a UTC offset, e.g. "
                                         "2026-11-26T10:15:30.25+00:00"]),
    (["--time", "2999-01-01T00:00:00+00:00"], ["is in the future"]),
    (["--time", "soon"], ["not an ISO 8601 date and time"]),
    (["--query", "select 1\x01" + "x" * 70000], ["--query:", "at most 65536"]),
])
def test_bad_input_is_refused_before_anything(company: Path, args: list[str], fragments: list[str]) -> None:
    result_ = run_kbpg("restore-drill", *args, workdir=company)
    assert_bad_input(result_, *fragments)
    assert not (company / "known_hosts").exists() and not (company / "logs").exists()


def test_time_and_latest_together_are_refused(company: Path) -> None:
    result_ = run_kbpg("restore-drill", "--time", "2026-11-26T10:15:30+00:00", "--latest", workdir=company)
    assert result_.returncode == 2 and "not allowed with argument" in result_.stderr


def test_no_backup_host_is_refused(company: Path) -> None:
    lines = (company / "servers.tsv").read_text().splitlines(keepends=True)
    (company / "servers.tsv").write_text("".join(line for line in lines if "\tbackup-01\t" not in line))
    result_ = run_kbpg("restore-drill", workdir=company)
    assert_bad_input(result_, "restore-drill: no backup host matches ENV=prod, ROLE=backup, SUBROLE=backup")
    assert not (company / "known_hosts").exists()


def test_backups_off_are_refused(company: Path) -> None:
    with (company / "kbpg.toml").open("a") as toml:
        toml.write("\n[backup]\nenabled = false\n")
    result_ = run_kbpg("restore-drill", "--latest", workdir=company)
    assert_bad_input(result_, "restore-drill: backups are turned off in kbpg.toml")


def test_a_pending_rotation_is_refused(company: Path) -> None:
    from kbpg_tui.core import rotation

    (company / rotation.PENDING_FILE).write_text("{}")
    result_ = run_kbpg("restore-drill", workdir=company)
    assert_bad_input(result_, "a credential rotation is pending")
