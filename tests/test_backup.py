"""core/backup.py: what kbpg writes for pgBackRest, rendered from data (no host), and step 02's archiving hook."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import threading
from pathlib import Path

import pytest
import yaml

from kbpg_tui.core import backup
from kbpg_tui.core import credentials as creds
from kbpg_tui.core import inventory as inv
from kbpg_tui.core.engine import Context, TaskRun
from kbpg_tui.core.settings import Settings, from_dict
from kbpg_tui.core.ssh import Host, Result
from kbpg_tui.core.steps import s02_patroni as patroni

from .fakes import FakePool, ScriptedConnection, result

DB = [Host("db-master-01", "10.0.0.120", "root"), Host("db-slave-01", "10.0.0.121", "root"),
      Host("db-slave-02", "10.0.0.122", "root")]
REPO = Host("backup-01", "10.0.0.153", "root")
CIPHER = "c" * 43


def pub(comment: str, seed: str = "a") -> str:
    blob = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + hashlib.sha256(seed.encode()).digest())
    return f"ssh-ed25519 {blob.decode()} {comment}"


def fp(line: str) -> str:
    return backup.fingerprint_of(line.split()[1])


# --- pgbackrest.conf ---------------------------------------------------------------------------

def test_a_db_nodes_conf_holds_no_secret_and_points_at_the_repository() -> None:
    text = backup.render_db_conf(Settings(), "keybuzz-pg", REPO, "kb_admin")
    assert "cipher" not in text.lower()  # the pg side asks the repository host; the pass lives there only
    assert CIPHER not in text
    lines = text.splitlines()
    for wanted in ("repo1-host=10.0.0.153", "repo1-host-user=pgbackrest", f"cmd-ssh={backup.SSH_WRAPPER}",
                   "archive-async=y", "archive-push-queue-max=4GiB", "[keybuzz-pg]",
                   "pg1-path=/var/lib/postgresql/16/patroni", "pg1-user=kb_admin", "pg1-port=5432"):
        assert wanted in lines


def test_the_repository_conf_carries_the_cipher_and_every_db_node() -> None:
    settings = from_dict({"backup": {"retention_full": 3, "retention_diff": 5, "process_max": 4}})
    text = backup.render_repo_conf(settings, "keybuzz-pg", DB, "kb_admin", CIPHER, (2, 45))
    lines = text.splitlines()
    for wanted in ("repo1-path=/var/lib/pgbackrest", "repo1-cipher-type=aes-256-cbc", f"repo1-cipher-pass={CIPHER}",
                   "repo1-retention-full=3", "repo1-retention-diff=5", "process-max=4", "backup-standby=y",
                   "pg1-host=10.0.0.120", "pg2-host=10.0.0.121", "pg3-host=10.0.0.122", "pg3-host-user=postgres",
                   f"cmd-ssh={backup.SSH_WRAPPER}"):
        assert wanted in lines
    assert "backup-standby=prefer" in backup.render_repo_conf(settings, "s", DB, "a", CIPHER, (2, 54)).splitlines()


def test_a_conf_value_with_a_line_break_is_refused() -> None:
    with pytest.raises(backup.BackupError, match="line break"):
        backup.render_repo_conf(Settings(), "s", DB, "kb_admin", "x\n[global]\nrepo1-path=/", (2, 45))


@pytest.mark.parametrize("name", ["keybuzz-pg", "a", "A.b_c-9", "x" * 64])
def test_a_stanza_is_the_cluster_name(name: str) -> None:
    assert backup.stanza({"PATRONI_CLUSTER_NAME": name}) == name


@pytest.mark.parametrize("name", ["", "x" * 65, "a b", "a/b", "a;b", "é"])
def test_a_cluster_name_pgbackrest_cannot_take_is_named(name: str) -> None:
    with pytest.raises(backup.BackupError, match="PATRONI_CLUSTER_NAME"):
        backup.stanza({"PATRONI_CLUSTER_NAME": name})


def test_repo_command_runs_as_pgbackrest_and_quotes_its_words() -> None:
    assert backup.repo_command("keybuzz-pg", "--output=json", "info") == \
        "runuser -u pgbackrest -- pgbackrest --stanza=keybuzz-pg --output=json info"
    assert "'--stanza=a b'" in backup.repo_command("a b")


# --- SSH ----------------------------------------------------------------------------------------

def test_ssh_config_checks_host_keys_strictly_against_kbpgs_file_only() -> None:
    lines = [line.strip() for line in backup.SSH_CONFIG.splitlines()]
    assert "StrictHostKeyChecking yes" in lines
    assert f"UserKnownHostsFile {backup.KNOWN_HOSTS_PATH}" in lines
    assert "GlobalKnownHostsFile /dev/null" in lines
    assert "BatchMode yes" in lines and "IdentitiesOnly yes" in lines
    assert f'exec /usr/bin/ssh -F {backup.SSH_CONFIG_PATH} "$@"' in backup.SSH_WRAPPER_TEXT


def test_an_authorized_line_runs_pgbackrest_only_from_the_other_side_only() -> None:
    key = backup.parse_public_key(pub("kbpg-backup@db-master-01"))
    assert key is not None
    line = backup.authorized_line(key, ["10.0.0.120"])
    options = line.split(" ssh-ed25519 ")[0]
    assert options.startswith("restrict,")
    assert 'from="10.0.0.120"' in options
    assert 'command="/usr/bin/pgbackrest ${SSH_ORIGINAL_COMMAND#* }"' in options
    assert line.endswith(" kbpg-backup@db-master-01")


def test_a_key_kbpg_did_not_make_is_never_authorized() -> None:
    key = backup.parse_public_key(pub("alice@laptop"))
    assert key is not None
    with pytest.raises(backup.BackupError, match="not one kbpg made"):
        backup.authorized_line(key, ["10.0.0.120"])


def test_authorized_keys_keep_other_lines_byte_for_byte_and_drop_stale_kbpg_lines() -> None:
    current = ("# admins\r\n" + pub("alice@laptop", "1") + "\n"
               + 'restrict,from="10.0.0.9" ' + pub("kbpg-backup@db-gone-01", "2") + "\n"
               + "  " + pub("bob@desk", "3") + "  ")
    managed = ["restrict,from=\"10.0.0.153\" " + pub("kbpg-backup@backup-01", "4")]
    merged = backup.merge_authorized_keys(current, managed)
    assert merged == ("# admins\r\n" + pub("alice@laptop", "1") + "\n" + "  " + pub("bob@desk", "3") + "  \n"
                      + managed[0] + "\n")
    assert backup.merge_authorized_keys(merged, managed) == merged  # a re-run writes the same file


def test_known_hosts_keep_only_the_key_kbpg_verified() -> None:
    ed, rsa = pub("root@db", "ed"), "ssh-rsa " + base64.b64encode(b"\x00\x00\x00\x07ssh-rsa-fake").decode() + " root@db"
    kept = backup.verified_host_keys(DB[0], f"{rsa}\n{ed}\n", {fp(ed)})
    assert [k.type for k in kept] == ["ssh-ed25519"]
    text = backup.render_known_hosts([(DB[0], kept)])
    assert f"10.0.0.120 ssh-ed25519 {ed.split()[1]}" in text.splitlines()
    assert "ssh-rsa" not in text


def test_host_keys_that_do_not_include_kbpgs_verified_key_are_refused() -> None:
    listed = pub("root@db", "impostor")
    with pytest.raises(backup.BackupError, match="do not include the key kbpg verified"):
        backup.verified_host_keys(DB[0], listed + "\n", {fp(pub("root@db", "real"))})
    with pytest.raises(backup.BackupError, match="none known"):
        backup.verified_host_keys(DB[0], listed + "\n", set())


def test_a_host_on_another_port_is_written_as_ssh_spells_it() -> None:
    host = Host("db-x", "10.0.0.5", "root", 2222)
    assert backup.known_hosts_entry(host) == "[10.0.0.5]:2222"
    assert "repo1-host-port=2222" in backup.render_db_conf(Settings(), "s", host, "a").splitlines()


def test_keygen_makes_the_pair_on_the_host_and_prints_only_the_public_key() -> None:
    script = backup.keygen_script("postgres", "db-master-01")
    assert "runuser -u postgres -- ssh-keygen -q -t ed25519 -N ''" in script
    assert "-C kbpg-backup@db-master-01" in script
    assert "cat /var/lib/postgresql/.ssh/kbpg_backup_ed25519.pub" in script
    assert "cat /var/lib/postgresql/.ssh/kbpg_backup_ed25519;" not in script and not script.endswith("ed25519")


# --- archiving parameters --------------------------------------------------------------------

def selection(real_inventory: Path, with_backup: bool = True) -> inv.Selection:
    chosen = inv.load_selection(real_inventory)
    return chosen if with_backup else dataclasses.replace(chosen, backup_nodes=())


def test_archive_parameters_only_with_backups_on(real_inventory: Path) -> None:
    values = {"PATRONI_CLUSTER_NAME": "keybuzz-pg"}
    on = backup.archive_parameters(Settings(), selection(real_inventory), values)
    assert on == {"archive_mode": "on", "archive_command": "pgbackrest --stanza=keybuzz-pg archive-push %p",
                  "archive_timeout": "30s"}
    assert backup.archive_parameters(from_dict({"backup": {"enabled": False}}), selection(real_inventory), values) == {}
    assert backup.archive_parameters(Settings(), selection(real_inventory, False), values) == {}
    assert backup.recovery_conf(Settings(), selection(real_inventory), values) == {
        "restore_command": 'pgbackrest --stanza=keybuzz-pg archive-get %f "%p"'}
    assert backup.recovery_conf(Settings(), selection(real_inventory, False), values) == {}


def test_archiving_to_pgbackrest_is_neutralised_once_backups_are_off() -> None:
    assert backup.neutralised({"archive_command": "pgbackrest --stanza=s archive-push %p"}) == {
        "archive_command": "/bin/true"}
    assert backup.neutralised({"archive_command": "/bin/true"}) == {}
    assert backup.neutralised({}) == {}


def test_why_off_names_the_rule_or_the_setting(real_inventory: Path) -> None:
    assert backup.why_off(Settings(), selection(real_inventory)) is None
    assert backup.why_off(Settings(), selection(real_inventory, False)) == \
        "no backup host matches ENV=prod, ROLE=backup, SUBROLE=backup: backups are not set up"
    assert "enabled = false" in (backup.why_off(from_dict({"backup": {"enabled": False}}), selection(real_inventory))
                                 or "")


def make_run(real_inventory: Path, settings: Settings | None = None, with_backup: bool = True,
             pool: FakePool | None = None) -> TaskRun:
    values, _ = creds.generate()
    ctx = Context(settings or Settings(), values, selection(real_inventory, with_backup), Path("/nonexistent"),
                  pool=pool or FakePool(), sink=lambda e: None, cancel=threading.Event())  # type: ignore[arg-type]
    return TaskRun(ctx, "02", None)


def test_patroni_archives_through_pgbackrest_with_a_backup_host(real_inventory: Path) -> None:
    run = make_run(real_inventory)
    config = yaml.safe_load(patroni.render_yaml(patroni.render_config(run, run.ctx.db_hosts[0])))
    stanza = run.ctx.credentials["PATRONI_CLUSTER_NAME"]
    for parameters in (config["bootstrap"]["dcs"]["postgresql"]["parameters"],
                       patroni.dynamic_config(run)["postgresql"]["parameters"]):
        assert parameters["archive_mode"] == "on"
        assert parameters["archive_command"] == f"pgbackrest --stanza={stanza} archive-push %p"
        assert parameters["archive_timeout"] == "30s"
    assert config["postgresql"]["recovery_conf"] == {"restore_command": f'pgbackrest --stanza={stanza} archive-get %f "%p"'}
    assert "pgbackrest" in patroni.package_names(run)


@pytest.mark.parametrize("settings, with_backup", [(Settings(), False),
                                                   (from_dict({"backup": {"enabled": False}}), True)])
def test_no_archiving_and_no_pgbackrest_package_with_backups_off(real_inventory: Path, settings: Settings,
                                                                  with_backup: bool) -> None:
    run = make_run(real_inventory, settings, with_backup)
    config = patroni.render_config(run, run.ctx.db_hosts[0])
    assert not {"archive_mode", "archive_command", "archive_timeout"} & set(config["postgresql"]["parameters"])
    assert "recovery_conf" not in config["postgresql"]
    assert "pgbackrest" not in patroni.package_names(run)


def _dcs_pool(run: TaskRun, stored: dict) -> tuple[FakePool, list[dict]]:
    applied: list[dict] = []

    def handler(script: str, stdin: bytes) -> Result:
        if "show-config" in script:
            return result(yaml.safe_dump(stored))
        if "edit-config" in script:
            applied.append(yaml.safe_load(stdin.decode()))
            return result()
        raise AssertionError(script)

    pool = FakePool({h.name: ScriptedConnection(h, handler) for h in run.ctx.db_hosts})
    run.ctx.pool = pool  # type: ignore[assignment]
    run.ctx.state["leader"] = run.ctx.db_hosts[0].name
    return pool, applied


def test_turning_backups_off_stops_archiving_to_pgbackrest_with_a_warning(real_inventory: Path) -> None:
    on = make_run(real_inventory)
    stored = patroni.dynamic_config(on)  # the cluster as it runs with backups on
    off = make_run(real_inventory, with_backup=False)
    off.ctx.credentials = on.ctx.credentials
    _pool, applied = _dcs_pool(off, stored)
    outcome = patroni.apply_dynamic_config(off)
    assert applied and applied[0]["postgresql"]["parameters"]["archive_command"] == "/bin/true"
    assert outcome.warnings and "WAL archiving stopped" in outcome.warnings[0]
    assert "no backup host matches" in outcome.warnings[0]
    # Once it is /bin/true, nothing more to do and nothing more said.
    stored["postgresql"]["parameters"]["archive_command"] = "/bin/true"
    _pool, applied = _dcs_pool(off, stored)
    again = patroni.apply_dynamic_config(off)
    assert not applied and not again.warnings


def test_a_cluster_that_never_archived_is_left_alone_without_backups(real_inventory: Path) -> None:
    run = make_run(real_inventory, with_backup=False)
    _pool, applied = _dcs_pool(run, patroni.dynamic_config(run))
    outcome = patroni.apply_dynamic_config(run)
    assert not applied and not outcome.warnings


# --- systemd -----------------------------------------------------------------------------------

def test_the_backup_service_runs_pgbackrest_as_its_user_gently() -> None:
    service = backup.render_service("keybuzz-pg")
    lines = service.splitlines()
    for wanted in ("Type=oneshot", "User=pgbackrest", "ExecStart=/usr/bin/pgbackrest --stanza=keybuzz-pg --type=%i backup",
                   "Nice=10", "IOSchedulingClass=idle", "TimeoutStartSec=12h"):
        assert wanted in lines


def test_the_timers_take_kbpg_tomls_schedules() -> None:
    settings = from_dict({"backup": {"full_schedule": "Sat *-*-* 02:30:00", "diff_schedule": "daily"}})
    files = dict(backup.unit_files(settings, "s"))
    full = files["/etc/systemd/system/kbpg-backup-full.timer"].splitlines()
    diff = files["/etc/systemd/system/kbpg-backup-diff.timer"].splitlines()
    assert "OnCalendar=Sat *-*-* 02:30:00" in full and "Unit=kbpg-backup@full.service" in full
    assert "OnCalendar=daily" in diff and "Unit=kbpg-backup@diff.service" in diff
    assert "Persistent=true" in full and "WantedBy=timers.target" in full


def test_the_drills_scratch_space_is_root_owned_traversable_not_listable_and_emptied_at_boot() -> None:
    lines = backup.DRILL_TMPFILES_TEXT.splitlines()
    assert "d /var/lib/kbpg-drill 0711 root root -" in lines  # the repository user reaches run-<id>, lists nothing
    assert "R! /var/lib/kbpg-drill/run-*" in lines


# --- what pgbackrest says ------------------------------------------------------------------------

def info(stanza: str = "keybuzz-pg", code: int = 0, system_id: int = 7321, backups: int = 1) -> str:
    return json.dumps([{"name": stanza, "status": {"code": code, "message": "ok"},
                        "db": [{"id": 1, "system-id": system_id, "version": "16"}],
                        "backup": [{"label": f"2026-{i}F"} for i in range(backups)]}])


def test_stanza_state_from_info() -> None:
    state = backup.stanza_state(info(backups=2), "keybuzz-pg")
    assert (state.code, state.system_id, state.backups, state.missing) == (0, 7321, 2, False)
    missing = backup.stanza_state(json.dumps([{"name": "keybuzz-pg", "status": {"code": 1, "message":
                                                                                 "missing stanza path"}}]), "keybuzz-pg")
    assert missing.missing and missing.system_id is None
    assert backup.stanza_state("[]", "keybuzz-pg").missing
    with pytest.raises(backup.BackupError, match="no JSON"):
        backup.stanza_state("ERROR: [055]", "keybuzz-pg")


@pytest.mark.parametrize("probe, refused", [
    ("state missing", None),
    ("state postgres:postgres 750", None),  # made by the package, empty
    ("state pgbackrest:pgbackrest 750\ntop archive\ntop backup\narchive keybuzz-pg\nbackup keybuzz-pg", None),
    ("state pgbackrest:pgbackrest 750\ntop archive\ntop backup\narchive other-pg\nbackup other-pg", "another cluster"),
    ("state pgbackrest:pgbackrest 750\ntop backup\nbackup keybuzz-pg\nbackup other-pg", "other-pg"),
    ("state root:root 755\ntop lost+found\ntop data.tar", "not a pgBackRest repository"),
])
def test_the_repository_directory_is_taken_only_when_empty_or_this_clusters(probe: str, refused: str | None) -> None:
    reason = backup.repo_refusal(backup.parse_repo_probe(probe), "keybuzz-pg")
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason
