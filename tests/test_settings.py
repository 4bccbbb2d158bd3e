"""kbpg.toml: defaults, round trip, and validation that names the key and the allowed values."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from kbpg_tui.core import settings as cfg

from .conftest import run_kbpg


def test_defaults_follow_the_design() -> None:
    settings = cfg.Settings()
    assert settings.postgresql.version == 16
    assert settings.packages.source == "pgdg"
    assert settings.patroni.dcs == "raft"
    assert settings.network.lb_address == "10.0.0.10"
    assert (settings.ports.postgresql, settings.ports.haproxy_read, settings.ports.pgbouncer,
            settings.ports.patroni_rest, settings.ports.raft, settings.ports.haproxy_stats) == (5432, 5433, 6432, 8008, 7000, 8404)
    assert settings.pgbouncer.pool_mode == "transaction"
    assert settings.postgresql.effective_data_dir == "/var/lib/postgresql/16/patroni"
    p = settings.patroni
    assert p.loop_wait + 2 * p.retry_timeout <= p.ttl


def test_round_trip(tmp_path: Path) -> None:
    settings = cfg.Settings()
    settings.postgresql.version = 17
    settings.postgresql.parameters = {"work_mem": "8MB", "log_min_duration_statement": "500"}
    settings.packages.source = "custom"
    settings.packages.url = "http://198.18.0.10:8080/"
    settings.packages.suite = "kbpg-lab"
    settings.packages.key_file = "lab-repo.asc"
    settings.network.lb_address = "198.18.0.10"
    settings.patroni.timing_plan = "custom"
    settings.patroni.ttl, settings.patroni.loop_wait, settings.patroni.retry_timeout = 25, 5, 10
    settings.ssh.pinned_host_keys = {"198.18.0.11": "SHA256:abc"}
    settings.inventory.db_rule = {"ENV": "staging", "ROLE": "db"}
    path = tmp_path / "kbpg.toml"
    assert cfg.save_settings(settings, path) is True
    assert cfg.load_settings(path) == settings
    assert cfg.save_settings(settings, path) is False, "an unchanged file is not rewritten"


def test_timing_plan_values_are_applied_and_not_written(tmp_path: Path) -> None:
    settings = cfg.from_dict({"patroni": {"timing_plan": "fast"}})
    assert (settings.patroni.ttl, settings.patroni.loop_wait, settings.patroni.retry_timeout) == (20, 5, 5)
    path = tmp_path / "kbpg.toml"
    cfg.save_settings(settings, path)
    written = tomllib.loads(path.read_text())
    assert "ttl" not in written["patroni"]
    assert cfg.load_settings(path) == settings


@pytest.mark.parametrize("data, key, hint", [
    ({"postgresql": {"version": 18}}, "postgresql.version", "must be one of 13, 14, 15, 16, 17"),
    ({"postgresql": {"version": "16"}}, "postgresql.version", "must be an integer"),
    ({"postgresql": {"verison": 16}}, "postgresql.verison", "unknown key; allowed keys in [postgresql]: version"),
    ({"postgresql": {"shared_buffers": "lots"}}, "postgresql.shared_buffers", "128MB"),
    ({"postgresql": {"data_dir": "relative/dir"}}, "postgresql.data_dir", "absolute path"),
    ({"packages": {"source": "ppa"}}, "packages.source", "'pgdg', 'distro', 'custom'"),
    ({"packages": {"source": "custom"}}, "packages.url", "required when packages.source = \"custom\""),
    ({"ports": {"pgbouncer": 70000}}, "ports.pgbouncer", "at most 65535"),
    ({"ports": {"haproxy_read": 6432}}, "ports.pgbouncer", "already used by ports.haproxy_read"),
    ({"network": {"lb_address": "10.0.0"}}, "network.lb_address", "an IP address"),
    ({"network": {"private_subnet": "10.0.0.0/33"}}, "network.private_subnet", "CIDR"),
    ({"network": {"bind": "everywhere"}}, "network.bind", "'private', 'all'"),
    ({"patroni": {"dcs": "etcd"}}, "patroni.dcs", "'raft'"),
    ({"patroni": {"timing_plan": "custom", "ttl": 30, "retry_timeout": 30}}, "patroni.ttl", "loop_wait + 2*retry_timeout must be <= ttl"),
    ({"patroni": {"ttl": 45}}, "patroni.ttl", "set patroni.timing_plan = \"custom\""),
    ({"patroni": {"synchronous_mode": "yes"}}, "patroni.synchronous_mode", "true or false"),
    ({"pgbouncer": {"pool_mode": "txn"}}, "pgbouncer.pool_mode", "'transaction', 'session', 'statement'"),
    ({"pgbouncer": {"backend": "direct"}}, "pgbouncer.backend", "'local', 'lb'"),
    ({"pgbouncer": {"default_pool_size": 500}}, "pgbouncer.default_pool_size", "under postgresql.max_connections"),
    ({"inventory": {"db_rule": {"SERVER_ROLE": "db"}}}, "inventory.db_rule", "unknown: SERVER_ROLE"),
    ({"credentials": {"password": "x"}}, "credentials", "unknown section"),
    ({"ssh": {"password": "hunter2"}}, "ssh.password", "unknown key"),
    ({"ports": 5432}, "ports", "must be a table"),
])
def test_invalid_values_name_the_key(data: dict, key: str, hint: str) -> None:
    with pytest.raises(cfg.SettingsError) as caught:
        cfg.from_dict(data)
    message = str(caught.value)
    assert f"{key}:" in message
    assert hint in message


def test_every_error_is_reported_at_once() -> None:
    with pytest.raises(cfg.SettingsError) as caught:
        cfg.from_dict({"postgresql": {"version": 9}, "ports": {"raft": 0}, "network": {"bind": "x"}})
    assert len(caught.value.errors) == 3


def test_cli_check_reports_bad_toml_and_bad_keys(tmp_path: Path) -> None:
    (tmp_path / "kbpg.toml").write_text("[postgresql]\nversion = 18\n[ports]\nraft = -1\n")
    result = run_kbpg("answers", "check", workdir=tmp_path)
    assert result.returncode == 2
    assert "postgresql.version: must be one of" in result.stderr and "ports.raft: must be at least 1" in result.stderr
    (tmp_path / "kbpg.toml").write_text("[postgresql\nversion = 16\n")
    result = run_kbpg("answers", "check", workdir=tmp_path)
    assert result.returncode == 2 and "not valid TOML" in result.stderr and "Traceback" not in result.stderr


def test_cli_init_writes_defaults_once(tmp_path: Path) -> None:
    assert run_kbpg("answers", "init", workdir=tmp_path).returncode == 0
    assert cfg.load_settings(tmp_path / "kbpg.toml") == cfg.Settings()
    (tmp_path / "kbpg.toml").write_text("[postgresql]\nversion = 17\n")
    assert run_kbpg("answers", "init", workdir=tmp_path).returncode == 0
    assert cfg.load_settings(tmp_path / "kbpg.toml").postgresql.version == 17


def test_bad_answers_file_stops_other_commands_with_exit_2(tmp_path: Path, real_inventory: Path) -> None:
    (tmp_path / "kbpg.toml").write_text("[inventory]\ndb_rule = 'ROLE=db'\n")
    result = run_kbpg("inventory", str(real_inventory), workdir=tmp_path)
    assert result.returncode == 2
    assert "inventory.db_rule: must be a table of strings" in result.stderr
