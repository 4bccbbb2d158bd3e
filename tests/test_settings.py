"""kbpg.toml: defaults, round trip, and validation that names the key and the allowed values."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from kbpg_tui.core import settings as cfg

from .conftest import run_kbpg

FINGERPRINT = "SHA256:+ZRpwjaKw+p/aTW4Nf6prujikE8CXF+rw7tXH8Malnw"  # the form OpenSSH and paramiko print


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
    settings.ssh.pinned_host_keys = {"198.18.0.11": FINGERPRINT}
    settings.network.direct_clients = ["192.0.2.0/24"]
    settings.ssh.silence_timeout = 60
    settings.inventory.db_rule = {"ENV": "staging", "ROLE": "db"}
    path = tmp_path / "kbpg.toml"
    assert cfg.save_settings(settings, path) is True
    assert cfg.load_settings(path) == settings
    assert cfg.save_settings(settings, path) is False, "an unchanged file is not rewritten"


def test_timing_plan_values_are_applied_and_not_written(tmp_path: Path) -> None:
    settings = cfg.from_dict({"patroni": {"timing_plan": "fast"}})
    assert (settings.patroni.ttl, settings.patroni.loop_wait, settings.patroni.retry_timeout) == (20, 10, 5)
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
    ({"network": {"lb_address": "fe80::1%eth0\nx"}}, "network.lb_address", "without a %scope"),
    ({"network": {"private_subnet": "10.0.0.0/33"}}, "network.private_subnet", "CIDR"),
    ({"network": {"bind": "everywhere"}}, "network.bind", "'private', 'all'"),
    ({"patroni": {"dcs": "etcd"}}, "patroni.dcs", "'raft'"),
    ({"patroni": {"timing_plan": "custom", "ttl": 30, "retry_timeout": 30}}, "patroni.ttl", "loop_wait + 2*retry_timeout must be <= ttl"),
    ({"patroni": {"ttl": 45}}, "patroni.ttl", "set patroni.timing_plan = \"custom\""),
    ({"patroni": {"synchronous_mode": "yes"}}, "patroni.synchronous_mode", "must be one of 'off', 'on', 'quorum'"),
    ({"patroni": {"synchronous_mode": 1}}, "patroni.synchronous_mode", "must be a string"),
    ({"patroni": {"timing_plan": "slow"}}, "patroni.timing_plan", "must be one of 'fast', 'norm', 'safe', 'custom'"),
    ({"patroni": {"timing_plan": "safe", "loop_wait": 5}}, "patroni.loop_wait", "the 'safe' timing plan sets 10"),
    ({"patroni": {"synchronous_mode_strict": "yes"}}, "patroni.synchronous_mode_strict", "true or false"),
    ({"patroni": {"raft_watchdog": "yes"}}, "patroni.raft_watchdog", "true or false"),
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


# --- timing plans and synchronous replication -------------------------------------------------------------------

def test_the_default_plan_is_norm_with_patronis_default_timing() -> None:
    settings = cfg.from_dict({})
    assert settings.patroni.timing_plan == "norm" == cfg.Settings().patroni.timing_plan
    assert (settings.patroni.ttl, settings.patroni.loop_wait, settings.patroni.retry_timeout) == (30, 10, 10)
    assert cfg.settings_notes(settings) == []


@pytest.mark.parametrize("name", ["fast", "norm", "safe"])
def test_each_plan_sets_its_patroni_timing(name: str) -> None:
    plan = cfg.TIMING_PLANS[name]  # still importable from settings: the plans of kbpg_tui.core.rto
    p = cfg.from_dict({"patroni": {"timing_plan": name}}).patroni
    assert (p.ttl, p.loop_wait, p.retry_timeout) == (plan.ttl, plan.loop_wait, plan.retry_timeout)
    # Writing the plan's own value is allowed; another one needs the custom plan.
    cfg.from_dict({"patroni": {"timing_plan": name, "ttl": plan.ttl}})


def test_an_older_standard_plan_reads_as_norm_with_one_note_and_is_saved_as_norm(tmp_path: Path) -> None:
    path = tmp_path / "kbpg.toml"
    path.write_text('[patroni]\ntiming_plan = "standard"\n')
    settings = cfg.load_settings(path)
    assert settings.patroni.timing_plan == "norm"
    assert (settings.patroni.ttl, settings.patroni.loop_wait, settings.patroni.retry_timeout) == (30, 10, 10)
    assert cfg.settings_notes(settings) == [
        "patroni.timing_plan: the 'standard' timing plan is now called 'norm' (the same timing); read as 'norm', "
        "and saving kbpg.toml writes 'norm'"]
    assert cfg.settings_warnings(settings) == []  # nothing to confirm: `kbpg install --yes` goes on
    cfg.save_settings(settings, path)
    assert tomllib.loads(path.read_text())["patroni"]["timing_plan"] == "norm"
    assert cfg.settings_notes(cfg.load_settings(path)) == []
    # The old name keeps the plan's rule: its own timing only.
    with pytest.raises(cfg.SettingsError, match="patroni.ttl: the 'norm' timing plan sets 30"):
        cfg.from_dict({"patroni": {"timing_plan": "standard", "ttl": 20}})


def test_synchronous_mode_reads_older_booleans_and_is_saved_as_a_word(tmp_path: Path) -> None:
    assert cfg.Settings().patroni.synchronous_mode == "off"
    assert cfg.Settings().patroni.synchronous_mode_strict is False
    assert cfg.from_dict({"patroni": {"synchronous_mode": True}}).patroni.synchronous_mode == "on"
    assert cfg.from_dict({"patroni": {"synchronous_mode": False}}).patroni.synchronous_mode == "off"
    for mode in ("off", "on", "quorum"):
        assert cfg.from_dict({"patroni": {"synchronous_mode": mode}}).patroni.synchronous_mode == mode
    path = tmp_path / "kbpg.toml"
    path.write_text("[patroni]\nsynchronous_mode = true\n")
    settings = cfg.load_settings(path)
    cfg.save_settings(settings, path)
    assert tomllib.loads(path.read_text())["patroni"]["synchronous_mode"] == "on"


def test_strict_synchronous_mode_needs_a_synchronous_mode() -> None:
    with pytest.raises(cfg.SettingsError) as caught:
        cfg.from_dict({"patroni": {"synchronous_mode_strict": True}})
    assert caught.value.errors == [
        'patroni.synchronous_mode_strict: true needs patroni.synchronous_mode = "on" or "quorum" (with "off" no '
        'standby is synchronous); set it to false, or choose a synchronous mode']
    with pytest.raises(cfg.SettingsError, match="patroni.synchronous_mode_strict"):
        cfg.from_dict({"patroni": {"synchronous_mode": False, "synchronous_mode_strict": True}})
    for mode in ("on", "quorum"):
        assert cfg.from_dict({"patroni": {"synchronous_mode": mode, "synchronous_mode_strict": True}}).patroni.synchronous_mode_strict


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


# --- settings that must never reach a host ------------------------------------------------

@pytest.mark.parametrize("data_dir", [
    "/", "/srv", "/var/../etc/x", "/a b/c", "/x/\n", "/srv/pg/", "//srv/pg", "/srv//pg", "/srv/./pg",
    "/srv/pg\t", "/srv/pg\u00a0x", "/srv/pg\u2028x", "relative/dir", "./pg", "/var/lib", "/etc/postgresql",
    "/usr/lib", "/home/bob", "/proc/pg", "/boot/pg", "/srv/pg\\x", "/srv/$(reboot)", "/srv/pg'x", "/srv/données",
])
def test_data_dir_is_refused_unless_a_plain_dedicated_path(data_dir: str) -> None:
    with pytest.raises(cfg.SettingsError) as caught:
        cfg.from_dict({"postgresql": {"data_dir": data_dir}})
    assert len(caught.value.errors) == 1
    assert caught.value.errors[0].startswith("postgresql.data_dir: must be a normalised absolute path")
    assert "\n" not in caught.value.errors[0], "one line, even for a value holding a newline"


@pytest.mark.parametrize("data_dir", ["", "/srv/postgresql/data", "/usr/local/pgsql/data", "/data/pg",
                                      "/var/lib/postgresql/16/main", "/srv/pg-16_a.b"])
def test_data_dir_accepts_dedicated_paths(data_dir: str) -> None:
    assert cfg.from_dict({"postgresql": {"data_dir": data_dir}}).postgresql.data_dir == data_dir


OWNED = ["password_encryption", "wal_level", "listen_addresses", "port", "data_directory", "hba_file", "ident_file",
         "config_file", "external_pid_file", "unix_socket_directories", "hot_standby", "wal_log_hints",
         "max_connections", "shared_buffers", "ssl", "ssl_cert_file", "ssl_key_file", "ssl_ca_file", "ssl_ciphers",
         "ssl_min_protocol_version", "archive_command", "restore_command", "archive_mode", "WAL_LEVEL", "Port",
         "primary_conninfo", "synchronous_standby_names", "recovery_target_time"]


@pytest.mark.parametrize("name", OWNED)
def test_parameters_kbpg_owns_are_refused_with_the_reason(name: str) -> None:
    with pytest.raises(cfg.SettingsError) as caught:
        cfg.from_dict({"postgresql": {"parameters": {"work_mem": "4MB", name: "on"}}})
    assert caught.value.errors == [caught.value.errors[0]]
    assert caught.value.errors[0].startswith(f"postgresql.parameters.{name}: set by kbpg (")


@pytest.mark.parametrize("name, value, hint", [
    ("work mem", "4MB", 'postgresql.parameters."work mem": parameter names match ^[A-Za-z_][A-Za-z0-9_.]*$'),
    ("work_mem\n", "4MB", 'postgresql.parameters."work_mem\\n": parameter names match'),
    ("1work_mem", "4MB", 'postgresql.parameters.1work_mem: parameter names match'),
    ("work-mem", "4MB", 'postgresql.parameters.work-mem: parameter names match'),
    ("work_mem", "4MB\nlisten_addresses = '*'", "postgresql.parameters.work_mem: a value without control characters (found U+000A)"),
    ("work_mem", "4MB\r", "postgresql.parameters.work_mem: a value without control characters (found U+000D)"),
    ("work_mem", "4MB\x00", "postgresql.parameters.work_mem: a value without control characters (found U+0000)"),
    ("include", "/etc/shadow", "postgresql.parameters.include: an include directive, not a parameter"),
    ("include_dir", "/tmp", "postgresql.parameters.include_dir: an include directive, not a parameter"),
])
def test_parameter_names_and_values_are_strict(name: str, value: str, hint: str) -> None:
    with pytest.raises(cfg.SettingsError) as caught:
        cfg.from_dict({"postgresql": {"parameters": {name: value}}})
    assert caught.value.errors == [hint + caught.value.errors[0][len(hint):]], caught.value.errors
    assert "\n" not in caught.value.errors[0]


def test_every_bad_parameter_is_named_at_once() -> None:
    with pytest.raises(cfg.SettingsError) as caught:
        cfg.from_dict({"postgresql": {"parameters": {"wal_level": "logical", "ssl": "on", "work_mem": "1MB"}}})
    assert [error.split(":")[0] for error in caught.value.errors] == ["postgresql.parameters.wal_level",
                                                                      "postgresql.parameters.ssl"]


def test_ordinary_parameters_are_kept_as_strings() -> None:
    settings = cfg.from_dict({"postgresql": {"parameters": {
        "work_mem": "8MB", "pg_stat_statements.track": "all", "log_min_duration_statement": 500,
        "jit": False, "shared_preload_libraries": "pg_stat_statements", "max_wal_senders": 12}}})
    assert settings.postgresql.parameters == {
        "work_mem": "8MB", "pg_stat_statements.track": "all", "log_min_duration_statement": "500", "jit": "off",
        "shared_preload_libraries": "pg_stat_statements", "max_wal_senders": "12"}


CUSTOM = {"source": "custom", "url": "http://198.18.0.10:8080/", "suite": "kbpg-lab", "components": ["main"],
          "key_file": "lab-repo.asc"}


@pytest.mark.parametrize("key, value, hint", [
    ("url", "http://x/ kbpg main\ndeb http://evil/", "an http:// or https:// URL"),
    ("url", "http://198.18.0.10/ evil main", "an http:// or https:// URL"),
    ("url", "ftp://198.18.0.10/", "an http:// or https:// URL"),
    ("url", "file:/srv/repo", "an http:// or https:// URL"),
    ("url", "198.18.0.10/debian", "an http:// or https:// URL"),
    ("url", "http:///debian", "an http:// or https:// URL"),
    ("url", "http://x/\"", "an http:// or https:// URL"),
    ("url", "http://x/#main", "an http:// or https:// URL"),
    ("url", "http://[::1/", "an http:// or https:// URL"),
    ("suite", "kbpg-lab\ndeb http://evil/ x main", "one word of letters, digits"),
    ("suite", "kbpg lab", "one word of letters, digits"),
    ("suite", "[trusted=yes]", "one word of letters, digits"),
    ("suite", "-lab", "one word of letters, digits"),
    ("components", ["main\ndeb http://evil/ x main"], "words of letters, digits"),
    ("components", ["main contrib"], "words of letters, digits"),
    ("components", ["main", ""], "words of letters, digits"),
    ("components", [], "required when packages.source = \"custom\""),
    ("key_file", "lab-repo.asc\n", "text without control characters (found U+000A)"),
])
def test_package_source_cannot_smuggle_an_apt_line(key: str, value, hint: str) -> None:
    with pytest.raises(cfg.SettingsError) as caught:
        cfg.from_dict({"packages": {**CUSTOM, key: value}})
    assert len(caught.value.errors) == 1 and caught.value.errors[0].startswith(f"packages.{key}: ")
    assert hint in caught.value.errors[0] and "\n" not in caught.value.errors[0]


def test_a_plain_custom_package_source_is_accepted() -> None:
    packages = cfg.from_dict({"packages": {**CUSTOM, "url": "https://apt.example.com/debian",
                                           "suite": "bookworm-pgdg", "components": ["main", "non-free/x", "16"]}}).packages
    assert (packages.url, packages.suite, packages.components) == ("https://apt.example.com/debian", "bookworm-pgdg",
                                                                  ["main", "non-free/x", "16"])


@pytest.mark.parametrize("address, fingerprint, hint", [
    ("db-master-01", FINGERPRINT, 'ssh.pinned_host_keys.db-master-01: pinned host keys are keyed by IP address'),
    ("10.0.0.300", FINGERPRINT, 'ssh.pinned_host_keys."10.0.0.300": pinned host keys are keyed by IP address'),
    ("fe80::1%eth0", FINGERPRINT, 'ssh.pinned_host_keys."fe80::1%eth0": pinned host keys are keyed by IP address'),
    ("198.18.0.11", "SHA256:abc", 'ssh.pinned_host_keys."198.18.0.11": must be "SHA256:" and 43 base64'),
    ("198.18.0.11", FINGERPRINT + "=", 'ssh.pinned_host_keys."198.18.0.11": must be "SHA256:"'),
    ("198.18.0.11", FINGERPRINT[7:], 'ssh.pinned_host_keys."198.18.0.11": must be "SHA256:"'),
    ("198.18.0.11", "MD5:" + FINGERPRINT[7:], 'ssh.pinned_host_keys."198.18.0.11": must be "SHA256:"'),
    ("198.18.0.11", FINGERPRINT[:-1] + "x", 'ssh.pinned_host_keys."198.18.0.11": must be "SHA256:"'),  # not canonical
    ("198.18.0.11", FINGERPRINT + "\n", 'ssh.pinned_host_keys."198.18.0.11": must be "SHA256:"'),
])
def test_pinned_host_keys_are_ip_address_and_openssh_fingerprint(address: str, fingerprint: str, hint: str) -> None:
    with pytest.raises(cfg.SettingsError) as caught:
        cfg.from_dict({"ssh": {"pinned_host_keys": {"198.18.0.12": FINGERPRINT, address: fingerprint}}})
    assert len(caught.value.errors) == 1 and caught.value.errors[0].startswith(hint), caught.value.errors


def test_pinned_host_keys_accept_what_paramiko_prints() -> None:
    import paramiko

    fingerprint = paramiko.RSAKey.generate(1024).fingerprint
    pins = {"198.18.0.11": fingerprint, "fd00::11": FINGERPRINT}
    assert cfg.from_dict({"ssh": {"pinned_host_keys": pins}}).ssh.pinned_host_keys == pins


@pytest.mark.parametrize("data, key", [
    ({"inventory": {"path": "servers.tsv\n"}}, "inventory.path"),
    ({"ssh": {"known_hosts": "known_hosts\x1b[2J"}}, "ssh.known_hosts"),
    ({"ssh": {"key_file": "id\u202ersa"}}, "ssh.key_file"),
    ({"inventory": {"db_rule": {"ENV": "prod\n", "ROLE": "db"}}}, "inventory.db_rule"),
    ({"inventory": {"haproxy_rule": {"ROLE": "lb\x00"}}}, "inventory.haproxy_rule"),
])
def test_local_paths_and_rules_refuse_control_characters(data: dict, key: str) -> None:
    with pytest.raises(cfg.SettingsError) as caught:
        cfg.from_dict(data)
    assert len(caught.value.errors) == 1 and caught.value.errors[0].startswith(f"{key}: must be ")
    assert "control characters" in caught.value.errors[0] and "\n" not in caught.value.errors[0]


def test_direct_clients_and_silence_timeout_defaults_and_limits() -> None:
    settings = cfg.Settings()
    assert settings.network.direct_clients == [] and settings.ssh.silence_timeout == 120
    settings = cfg.from_dict({"network": {"direct_clients": ["192.0.2.0/24", "198.51.100.7"]}, "ssh": {"silence_timeout": 30}})
    assert settings.network.direct_clients == ["192.0.2.0/24", "198.51.100.7"] and settings.ssh.silence_timeout == 30
    for data, key, hint in (
        ({"network": {"direct_clients": ["192.0.2.0/33"]}}, "network.direct_clients", "'192.0.2.0/33' is not one"),
        ({"network": {"direct_clients": ["clients"]}}, "network.direct_clients", "a list of networks in CIDR form"),
        ({"network": {"direct_clients": "192.0.2.0/24"}}, "network.direct_clients", "must be a list of strings"),
        ({"ssh": {"silence_timeout": 29}}, "ssh.silence_timeout", "must be at least 30"),
        ({"ssh": {"silence_timeout": 3601}}, "ssh.silence_timeout", "must be at most 3600"),
        ({"ssh": {"silence_timeout": "120"}}, "ssh.silence_timeout", "must be an integer"),
    ):
        with pytest.raises(cfg.SettingsError) as caught:
            cfg.from_dict(data)
        assert caught.value.errors[0].startswith(f"{key}: ") and hint in caught.value.errors[0], caught.value.errors


def test_a_subnet_wider_than_16_is_a_warning_naming_the_key() -> None:
    assert cfg.settings_warnings(cfg.Settings()) == []
    assert cfg.settings_warnings(cfg.from_dict({"network": {"private_subnet": "10.0.0.0/16"}})) == []
    assert cfg.settings_warnings(cfg.from_dict({"network": {"private_subnet": "fd00::/64"}})) == []
    for subnet in ("10.0.0.0/8", "0.0.0.0/0", "10.0.0.0/15", "fd00::/48"):
        warnings = cfg.settings_warnings(cfg.from_dict({"network": {"private_subnet": subnet}}))
        assert len(warnings) == 1 and warnings[0].startswith(f"network.private_subnet: {subnet} is wider than /")
    warnings = cfg.settings_warnings(cfg.from_dict({"network": {"direct_clients": ["192.0.2.0/24", "0.0.0.0/0"]}}))
    assert warnings == [warnings[0]] and warnings[0].startswith("network.direct_clients: 0.0.0.0/0 is wider than /16")


# --- the file itself -----------------------------------------------------------------------

def _load_error(path: Path) -> str:
    with pytest.raises(cfg.SettingsError) as caught:
        cfg.load_settings(path)
    assert len(caught.value.errors) == 1, caught.value.errors
    return caught.value.errors[0]


@pytest.mark.parametrize("text", [
    "a = " + "[" * 5000 + "]" * 5000 + "\n",
    "a = " + "{b = " * 5000 + "1" + "}" * 5000 + "\n",
    "[postgresql]\nparameters = " + "[" * 100000 + "\n",
])
def test_deeply_nested_toml_is_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "kbpg.toml"
    path.write_text(text)
    error = _load_error(path)
    assert "nested too deeply" in error or "not valid TOML" in error


def test_a_value_nested_within_the_parser_limit_is_shown_short(tmp_path: Path) -> None:
    path = tmp_path / "kbpg.toml"
    path.write_text("[postgresql]\nversion = " + "[" * 200 + "]" * 200 + "\n" + "data_dir = '" + "x" * 500000 + "'\n")
    with pytest.raises(cfg.SettingsError) as caught:
        cfg.load_settings(path)
    assert [e.split(":")[0] for e in caught.value.errors] == ["postgresql.version", "postgresql.data_dir"]
    assert all(len(error) < 400 for error in caught.value.errors)


def test_a_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "kbpg.toml"
    path.write_text("# padding\n" * 120000)  # valid TOML, 1.2 MB
    assert "too large" in _load_error(path)


def test_a_directory_a_fifo_and_a_device_are_refused_without_blocking(tmp_path: Path) -> None:
    import os
    import threading

    directory = tmp_path / "dir.toml"
    directory.mkdir()
    assert "is a directory" in _load_error(directory)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    outcome: list[str] = []
    reader = threading.Thread(target=lambda: outcome.append(_load_error(fifo)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert outcome and "FIFO" in outcome[0], "reading a FIFO must not wait for a writer"
    assert "character device" in _load_error(Path("/dev/null"))  # not /dev/zero: unguarded, it fills the memory


def test_not_utf8_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "kbpg.toml"
    path.write_bytes(b"[postgresql]\nversion = 16\ndata_dir = '/srv/\xe9t\xe9'\n")
    assert _load_error(path) == "not UTF-8 text (byte 0xe9 on line 3)"


def test_a_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "kbpg.toml"
    path.write_bytes("\ufeff[postgresql]\nversion = 17\n".encode())
    assert cfg.load_settings(path).postgresql.version == 17


def test_thousands_of_bad_keys_give_a_bounded_answer(tmp_path: Path) -> None:
    path = tmp_path / "kbpg.toml"
    path.write_text("[postgresql]\n" + "".join(f"k{i} = 1\n" for i in range(5000)) + "\"" + "y" * 100000 + "\" = 1\n")
    with pytest.raises(cfg.SettingsError) as caught:
        cfg.load_settings(path)
    assert len(caught.value.errors) == cfg.MAX_ERRORS + 1 and caught.value.errors[-1] == "... and 4901 more problem(s)"
    assert len(str(caught.value)) < 100 * 300


def test_tls_renewal_must_come_before_the_end_of_a_certificate() -> None:
    # renew_days >= cert_days: every certificate kbpg issues would be "expiring" at once, reissued by every install.
    with pytest.raises(cfg.SettingsError, match=r"tls.renew_days: must be less than tls.cert_days \(30 >= 30\)"):
        cfg.from_dict({"tls": {"cert_days": 30}})
    assert cfg.from_dict({"tls": {"cert_days": 30, "renew_days": 10}}).tls.renew_days == 10
