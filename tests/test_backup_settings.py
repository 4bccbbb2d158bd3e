"""kbpg.toml's [backup] section and [inventory.backup_rule]: defaults, every key's bounds, bad input naming the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from kbpg_tui.core import settings as cfg

from .conftest import run_kbpg
from .test_cli_input import assert_bad_input


def _error(data: dict) -> str:
    with pytest.raises(cfg.SettingsError) as caught:
        cfg.from_dict(data)
    return str(caught.value)


def test_backup_defaults_follow_the_design() -> None:
    backup = cfg.Settings().backup
    assert (backup.enabled, backup.full_schedule, backup.diff_schedule) == (
        True, "Sun *-*-* 01:00:00", "Mon..Sat *-*-* 01:00:00")
    assert (backup.retention_full, backup.retention_diff, backup.archive_timeout, backup.archive_push_queue_max,
            backup.process_max, backup.warn_backup_age_hours, backup.warn_archive_lag_seconds,
            backup.drill_timeout) == (2, 6, 30, "4GiB", 2, 26, 120, 3600)
    assert cfg.Settings().inventory.backup_rule == {"ENV": "prod", "ROLE": "backup", "SUBROLE": "backup"}


# (key, lowest accepted, highest accepted): one below and one above are refused, naming the key and the bound.
BOUNDS = [
    ("retention_full", 1, 99),
    ("retention_diff", 1, 99),
    ("archive_timeout", 5, 300),
    ("process_max", 1, 16),
    ("warn_backup_age_hours", 8, 2400),
    ("warn_archive_lag_seconds", 301, 86400),  # 30 is the floor, but it must also exceed archive_timeout (at most 300)
    ("drill_timeout", 300, 86400),
]


@pytest.mark.parametrize("key, low, high", BOUNDS)
def test_every_integer_key_is_bounded_and_named(key: str, low: int, high: int) -> None:
    for value in (low, high):
        extra = {"warn_archive_lag_seconds": {"archive_timeout": 5},
                 "archive_timeout": {"warn_archive_lag_seconds": 301}}.get(key, {})
        assert getattr(cfg.from_dict({"backup": {key: value, **extra}}).backup, key) == value
    floor = 30 if key == "warn_archive_lag_seconds" else low
    message = _error({"backup": {key: floor - 1}})
    assert f"backup.{key}: must be at least {floor} (got {floor - 1})" in message
    message = _error({"backup": {key: high + 1}})
    assert f"backup.{key}: must be at most {high} (got {high + 1})" in message
    assert f"backup.{key}: must be an integer" in _error({"backup": {key: str(low)}})
    assert f"backup.{key}: must be an integer" in _error({"backup": {key: True}})


def test_enabled_is_a_boolean() -> None:
    assert cfg.from_dict({"backup": {"enabled": False}}).backup.enabled is False
    assert "backup.enabled: must be true or false" in _error({"backup": {"enabled": "no"}})


@pytest.mark.parametrize("schedule", ["Sun *-*-* 01:00:00", "Mon..Sat *-*-* 01:00:00", "daily", "weekly",
                                      "*-*-* 00/6:00:00", "Mon,Wed *-*-* 02:30", "*-*~01 03:00", "hourly"])
def test_schedules_accept_systemd_calendar_expressions(schedule: str) -> None:
    assert cfg.from_dict({"backup": {"full_schedule": schedule, "diff_schedule": "Tue 04:00"}}).backup.full_schedule \
        == schedule


@pytest.mark.parametrize("key", ["full_schedule", "diff_schedule"])
@pytest.mark.parametrize("schedule, hint", [
    ("Sun *-*-* 01:00:00; rm -rf /", "OnCalendar"),
    ("daily\nExecStart=/bin/sh", "control character U+000A"),
    ("daily\r", "control character U+000D"),
    ("Sun\t01:00", "control character U+0009"),
    ("", "OnCalendar"),
    (" daily", "OnCalendar"),
    ("daily ", "OnCalendar"),
    ("%h daily", "OnCalendar"),
    ("daily #x", "OnCalendar"),
    ("'daily'", "OnCalendar"),
    ("x" * 65, "at most 64 characters"),
])
def test_a_schedule_that_could_break_a_unit_file_is_refused_naming_the_key(key: str, schedule: str, hint: str) -> None:
    message = _error({"backup": {key: schedule}})
    assert f"backup.{key}: must be a systemd OnCalendar expression" in message and hint in message


def test_the_two_schedules_must_differ() -> None:
    message = _error({"backup": {"full_schedule": "daily", "diff_schedule": "daily"}})
    assert "backup.diff_schedule: must differ from backup.full_schedule ('daily')" in message
    # a bad schedule is named once, not again as "equal to the other" (its default stands in for it meanwhile)
    errors = _error({"backup": {"full_schedule": "Mon..Sat *-*-* 01:00:00", "diff_schedule": "x;y"}}).splitlines()
    assert len(errors) == 1 and "backup.diff_schedule: must be a systemd OnCalendar" in errors[0]


@pytest.mark.parametrize("value, size", [("4GiB", 4 << 30), ("64MiB", 64 << 20), ("64TiB", 64 << 40),
                                         ("4GB", 4 << 30), ("512MB", 512 << 20), ("1TB", 1 << 40), ("65536KiB", 64 << 20)])
def test_the_push_queue_takes_pgbackrest_sizes(value: str, size: int) -> None:
    assert cfg.from_dict({"backup": {"archive_push_queue_max": value}}).backup.archive_push_queue_max == value
    assert cfg.pgbackrest_size_bytes(value) == size


@pytest.mark.parametrize("value", ["4 gigs", "4 GiB", "4", "4G", "4gib", "0GiB", "04GiB", "-1GiB", "63MiB", "65TiB",
                                   "1PiB", "4GiB\n", "1.5GiB", ""])
def test_a_bad_push_queue_size_is_refused_naming_the_key(value: str) -> None:
    message = _error({"backup": {"archive_push_queue_max": value}})
    assert "backup.archive_push_queue_max: must be a size from 64MiB to 64TiB" in message and "4GiB" in message


def test_the_archive_lag_warning_must_exceed_archive_timeout() -> None:
    message = _error({"backup": {"archive_timeout": 120, "warn_archive_lag_seconds": 120}})
    assert "backup.warn_archive_lag_seconds: must be more than backup.archive_timeout (120 <= 120)" in message
    assert cfg.from_dict({"backup": {"archive_timeout": 120, "warn_archive_lag_seconds": 121}})
    # an out-of-range value is named for its range only
    errors = _error({"backup": {"warn_archive_lag_seconds": 10}}).splitlines()
    assert len(errors) == 1 and "must be at least 30" in errors[0]


def test_unknown_backup_keys_are_named() -> None:
    message = _error({"backup": {"retention": 3}})
    assert "backup.retention: unknown key; allowed keys in [backup]: enabled, full_schedule" in message
    assert "backup: must be a table ([backup])" in _error({"backup": "on"})


@pytest.mark.parametrize("rule, hint", [
    ({"SERVER_ROLE": "backup"}, "unknown: SERVER_ROLE"),
    ({}, "at least one column = value pair"),
    ({"ROLE": "backup\n"}, "without control characters (ROLE: found U+000A)"),
])
def test_the_backup_rule_is_checked_like_the_others(rule: dict, hint: str) -> None:
    message = _error({"inventory": {"backup_rule": rule}})
    assert "inventory.backup_rule:" in message and hint in message
    assert "inventory.backup_rule: must be a table of strings" in _error({"inventory": {"backup_rule": "ROLE=backup"}})


def test_backup_settings_round_trip(tmp_path: Path) -> None:
    settings = cfg.Settings()
    settings.backup.enabled = False
    settings.backup.full_schedule = "Sat *-*-* 02:00:00"
    settings.backup.warn_archive_lag_seconds = 90
    settings.backup.archive_push_queue_max = "1GiB"
    settings.inventory.backup_rule = {"ENV": "staging", "ROLE": "backup"}
    path = tmp_path / "kbpg.toml"
    cfg.save_settings(settings, path)
    assert cfg.load_settings(path) == settings


def test_answers_init_writes_the_backup_section_with_its_defaults(tmp_path: Path) -> None:
    assert run_kbpg("answers", "init", workdir=tmp_path).returncode == 0
    written = tomllib.loads((tmp_path / "kbpg.toml").read_text())
    assert written["backup"] == {
        "enabled": True, "full_schedule": "Sun *-*-* 01:00:00", "diff_schedule": "Mon..Sat *-*-* 01:00:00",
        "retention_full": 2, "retention_diff": 6, "archive_timeout": 30, "archive_push_queue_max": "4GiB",
        "process_max": 2, "warn_backup_age_hours": 26, "warn_archive_lag_seconds": 120, "drill_timeout": 3600,
    }
    assert written["inventory"]["backup_rule"] == {"ENV": "prod", "ROLE": "backup", "SUBROLE": "backup"}


# The README's bad-input rows for [backup]: exit 2, one line naming the key.
@pytest.mark.parametrize("toml, fragment", [
    ('[backup]\nfull_schedule = "Sun 01:00; reboot"\n', "backup.full_schedule: must be a systemd OnCalendar"),
    ('[backup]\nretention_full = 0\n', "backup.retention_full: must be at least 1 (got 0)"),
    ('[backup]\narchive_push_queue_max = "4 gigs"\n', "backup.archive_push_queue_max: must be a size from 64MiB"),
    ('[backup]\narchive_timeout = 600\n', "backup.archive_timeout: must be at most 300 (got 600)"),
    ('[backup]\ndrill_timeout = 60\n', "backup.drill_timeout: must be at least 300 (got 60)"),
    ('[inventory.backup_rule]\nSERVER_ROLE = "backup"\n', "inventory.backup_rule: must be columns of servers.tsv"),
])
def test_bad_backup_settings_are_one_line_and_exit_2(tmp_path: Path, toml: str, fragment: str) -> None:
    (tmp_path / "kbpg.toml").write_text(toml)
    assert_bad_input(run_kbpg("answers", "check", workdir=tmp_path), fragment)
