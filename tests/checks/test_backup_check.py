"""18 backups: against fakes on the lab's inventory (backup-01 selected by [inventory.backup_rule]): the backup host
answers pgBackRest's recorded `info` (tests/fixtures/backup/) and `check`, the primary answers pg_stat_archiver as
the monitor role through the LB. The verdict's rules themselves are tested in tests/test_backup_ops.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kbpg_tui.core import inventory as inv
from kbpg_tui.core.checks import ALL_CHECKS, c18_backup
from kbpg_tui.core.checks.base import CheckFailed, CheckWarning
from kbpg_tui.core.checks.runner import Diagnostics
from kbpg_tui.core.ssh import Host

from ..fakes import FakePgConnection, FakePool, ScriptedConnection, result, unreachable

FIXTURES = Path(__file__).parent.parent / "fixtures" / "backup"
NOW = 1795694400  # 2026-11-26 12:00:00 UTC on the backup host
BACKUP = Host("backup-01", "198.18.0.153")


def archiver_row(name: str) -> tuple:
    data = json.loads((FIXTURES / name).read_text())
    data.pop("_comment")
    return tuple(data.values())


class World:
    """What the backup host and the primary answer; ``order`` records what was asked, in order."""

    def __init__(self, info: str = "info-ok.json", check: str | None = None, archiver: str = "archiver-ok.json"):
        self.info, self.check, self.archiver = info, check, archiver
        self.order: list[str] = []

    def host(self, script: str, stdin: bytes):
        if "--output=json info" in script:
            self.order.append("info")
            return result(f"{NOW}\n" + (FIXTURES / self.info).read_text())
        if script.endswith(" check"):
            self.order.append("check")
            if self.check is None:
                return result("")
            return result("", 82 if "archive" in self.check else 105, (FIXTURES / self.check).read_text())
        raise AssertionError(f"unexpected script on the backup host: {script}")

    def databases(self, host: str, port: int, user: str, password: str, dbname: str) -> FakePgConnection:
        self.order.append(f"sql {host}:{port} {user}")
        return FakePgConnection({"pg_stat_archiver": [archiver_row(self.archiver)]})


@pytest.fixture
def world(make):
    def build(**kwargs):
        w = World(**kwargs)
        connection = ScriptedConnection(BACKUP, w.host)
        p = make(pool=FakePool({"backup-01": connection}), databases=w.databases, timeout=8.0)
        p.ctx.credentials["PATRONI_CLUSTER_NAME"] = "keybuzz-pg"
        return p, w, connection
    return build


def test_the_check_is_listed_and_probes_the_backup_host(make) -> None:
    assert ALL_CHECKS[17] is c18_backup.CHECK and c18_backup.CHECK.number == 18
    p = make()
    probes = [probe for probe in Diagnostics(p.ctx).probes() if probe.number == 18]
    assert [(probe.check, probe.target) for probe in probes] == [("backups", "backup-01")]


def test_all_well_passes_naming_the_figures(world) -> None:
    p, w, connection = world()
    reason = c18_backup.backups(p)
    assert reason == ("last full 4.5 d ago (20261122-010002F), newest diff 11 h ago "
                      "(20261122-010002F_20261126-010003D), last archived WAL 12 s ago on db-master-01, "
                      "pgbackrest check ok")
    # check's WAL switch is archived before the archiver is read; the archiver through the LB as the monitor role
    assert w.order == ["info", "check", f"sql 198.18.0.10:5432 {p.values['POSTGRES_MONITOR_USER']}"]
    assert connection.scripts[1] == ("runuser -u pgbackrest -- pgbackrest --stanza=keybuzz-pg --archive-timeout=20 "
                                     "check")


def test_a_short_probe_timeout_shortens_checks_wait(world) -> None:
    p, _w, connection = world()
    p.timeout = 2.0
    c18_backup.backups(p)
    assert "--archive-timeout=5 " in connection.scripts[1]


def test_a_stale_backup_warns(world) -> None:
    p, _w, _c = world(info="info-stale.json")
    with pytest.raises(CheckWarning, match=r"^backup-01: the newest backup is 3.5 d old \(backup.warn_backup_age_hours "
                                           r"= 26\)"):
        c18_backup.backups(p)


def test_the_limits_come_from_kbpg_toml(world) -> None:
    p, _w, _c = world(info="info-stale.json")
    p.settings.backup.warn_backup_age_hours = 96
    assert c18_backup.backups(p).startswith("last full 4.5 d ago")


@pytest.mark.parametrize("kwargs, words", [
    ({"info": "info-no-backup.json"}, "backup-01: stanza keybuzz-pg: no backup (start one with `kbpg backup now"),
    ({"info": "info-error.json"}, "backup-01: stanza keybuzz-pg: other: [CryptoError] unable to flush"),
    ({"check": "check-archive-timeout.txt"}, "backup-01: pgbackrest check failed: ERROR: [082]: WAL segment "
                                             "00000001000000000000000A was not archived before the 3000ms timeout"),
    ({"check": "check-host-key.txt"}, "Host key verification failed."),
    ({"archiver": "archiver-failing.json"}, "backup-01: archiving fails on db-master-01: last failure 8 s ago"),
    ({"archiver": "archiver-mode-off.json"}, "backup-01: archive_mode is off on db-master-01"),
])
def test_what_breaks_backups_fails(world, kwargs: dict, words: str) -> None:
    p, _w, _c = world(**kwargs)
    with pytest.raises(CheckFailed) as caught:
        c18_backup.backups(p)
    assert words in str(caught.value)


def test_an_unreachable_backup_host_fails_without_waiting_for_check(make) -> None:
    p = make(pool=FakePool({"backup-01": unreachable(BACKUP)}),
             databases=lambda *a: FakePgConnection({"pg_stat_archiver": [archiver_row("archiver-ok.json")]}))
    p.ctx.credentials["PATRONI_CLUSTER_NAME"] = "keybuzz-pg"
    with pytest.raises(CheckFailed) as caught:
        c18_backup.backups(p)
    assert str(caught.value).startswith("backup-01: pgbackrest info: backup-01 (198.18.0.153): no SSH answer")
    assert "pgbackrest check" not in str(caught.value)
    assert p.ctx.pool.gets == ["backup-01"]  # one try, not a second one for check


def test_no_backup_host_passes_saying_so(make, tmp_path: Path) -> None:
    p = make()
    lines = (tmp_path / "servers.tsv").read_text().splitlines(keepends=True)
    (tmp_path / "servers.tsv").write_text("".join(line for line in lines if "\tbackup-01\t" not in line))
    p.ctx.selection = inv.load_selection(tmp_path / "servers.tsv")
    assert p.ctx.backup_host is None
    assert c18_backup.target(p) == "backups"
    assert c18_backup.backups(p) == "no backup host selected (backups not set up)"
    assert p.ctx.pool.gets == [] and p.connections == []


def test_backups_turned_off_pass_saying_so(make) -> None:
    p = make()
    p.settings.backup.enabled = False
    assert c18_backup.backups(p) == ("[backup] enabled = false in kbpg.toml: backups not set up (backup-01 selected, "
                                     "unused)")
    assert p.ctx.pool.gets == [] and p.connections == []


def test_a_stanza_name_pgbackrest_cannot_take_fails_naming_the_key(world) -> None:
    p, _w, connection = world()
    p.ctx.credentials["PATRONI_CLUSTER_NAME"] = "keybuzz pg;x"
    with pytest.raises(CheckFailed, match="PATRONI_CLUSTER_NAME 'keybuzz pg;x' cannot name a pgBackRest stanza"):
        c18_backup.backups(p)
    assert connection.scripts == []


def test_the_diagnose_help_counts_the_checks() -> None:
    from kbpg_tui.cli import build_parser

    text = build_parser().format_help()
    assert f"every check ({len(ALL_CHECKS)})" in text and len(ALL_CHECKS) == 19



def test_without_the_monitor_roles_names_the_rest_is_still_judged(world) -> None:
    p, w, _c = world(info="info-stale.json")
    del p.values["POSTGRES_MONITOR_PASS"]
    with pytest.raises(CheckFailed) as caught:
        c18_backup.backups(p)
    text = str(caught.value)
    assert "pg_stat_archiver: POSTGRES_MONITOR_PASS not in credentials/postgres.env" in text
    assert "the newest backup is 3.5 d old" in text and "pgbackrest check ok" in text and w.order == ["info", "check"]
