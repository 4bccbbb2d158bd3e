"""Step 06 "Backups": each task's logic against fake hosts (files kept per host, commands answered by rule)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import threading
from pathlib import Path
from typing import Callable

import pytest

from kbpg_tui.core import backup
from kbpg_tui.core import credentials as creds
from kbpg_tui.core import inventory as inv
from kbpg_tui.core.engine import Context, Engine, Outcome, Step, TaskError, TaskRun
from kbpg_tui.core.events import Status
from kbpg_tui.core.settings import Settings, from_dict
from kbpg_tui.core.ssh import Host, Result
from kbpg_tui.core.steps import s06_backup as s06

from .fakes import FakePool, ScriptedConnection, result

_STAT = re.compile(r"^if \[ -f (\S+) \]; then printf '%s %s %s ' \$\(stat")
_WRITE = re.compile(r"chown (\S+):(\S+) \"\$tmp\"; chmod (\d+) \"\$tmp\"; .*mv -f \"\$tmp\" (\S+); trap - EXIT$")
_READ = re.compile(r"^if \[ -f (\S+) \]; then echo present; base64 -w0 < \S+; fi$")


def host_key(seed: str) -> str:
    blob = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + hashlib.sha256(seed.encode()).digest())
    return f"ssh-ed25519 {blob.decode()}"


class FakeHost:
    """A host whose files kbpg's upload/read_file really change; other commands answered by ``rules``
    (first regex found in the script wins: a Result, or a function of the script)."""

    def __init__(self, host: Host, rules: list[tuple[str, Result | Callable[[str], Result]]] | None = None):
        self.host = host
        self.files: dict[str, tuple[str, str, str, bytes]] = {}  # path -> (mode, owner, group, data)
        self.rules = list(rules or [])
        self.connection = ScriptedConnection(host, self.handle)

    def handle(self, script: str, stdin: bytes) -> Result:
        if (m := _STAT.match(script)):
            if m.group(1) not in self.files:
                return result()
            mode, owner, group, data = self.files[m.group(1)]
            return result(f"{mode} {owner} {group} {hashlib.sha256(data).hexdigest()}\n")
        if script.startswith("set -e; (umask 022") and (m := _WRITE.search(script)):
            self.files[m.group(4)] = (m.group(3), m.group(1), m.group(2), stdin)
            return result()
        if (m := _READ.match(script)):
            if m.group(1) not in self.files:
                return result()
            return result("present\n" + base64.b64encode(self.files[m.group(1)][3]).decode())
        for pattern, answer in self.rules:
            if re.search(pattern, script):
                return answer(script) if callable(answer) else answer
        return result()

    @property
    def scripts(self) -> list[str]:
        return self.connection.scripts

    def text(self, path: str) -> str:
        return self.files[path][3].decode()


def make_ctx(real_inventory: Path, settings: Settings | None = None, with_backup: bool = True,
             values: creds.Credentials | None = None) -> tuple[Context, dict[str, FakeHost]]:
    chosen = inv.load_selection(real_inventory)
    if not with_backup:
        chosen = dataclasses.replace(chosen, backup_nodes=())
    ctx = Context(settings or Settings(), values if values is not None else creds.generate()[0], chosen,
                  Path("/nonexistent"), pool=FakePool(), sink=lambda e: None,  # type: ignore[arg-type]
                  cancel=threading.Event())
    hosts = {h.name: FakeHost(h, default_rules(h)) for h in ctx.db_hosts + ctx.haproxy_hosts + ctx.backup_hosts}
    ctx.pool = FakePool({name: fake.connection for name, fake in hosts.items()})  # type: ignore[assignment]
    return ctx, hosts


def default_rules(host: Host) -> list:
    user = "pgbackrest" if host.name.startswith("backup") else "postgres"
    return [
        (r"ssh-keygen", result(f"\n{host_key('user-' + host.name)} kbpg-backup@{host.name}\n")),
        (r"ssh_host_\*_key\.pub", result(f"{host_key(host.name)} root@{host.name}\n"
                                         f"{host_key('other-' + host.name)} root@{host.name}\n")),
        (r"pgbackrest version", result("pgBackRest 2.45\n")),
        (r"id -u " + user, result()),
        (r"sed -n 's/\^repo1-cipher-pass=", result("none\n")),  # no pgbackrest.conf yet
    ]


def pin_all(ctx: Context) -> None:
    ctx.settings.ssh.pinned_host_keys = {h.address: backup.fingerprint_of(host_key(h.name).split()[1])
                                         for h in ctx.db_hosts + ctx.backup_hosts}


def task_run(ctx: Context, host: Host | None = None) -> TaskRun:
    return TaskRun(ctx, "06", host)


def run_task(ctx: Context, name: str, scope: str) -> list:
    """One task of step 06 through the engine (its real scope and skipping), its reports."""
    task = next(t for t in s06.STEP.tasks if t.name == name and t.scope == scope)
    return Engine(ctx).run_step(Step("06", "Backups", [task])).tasks


# --- backups off ----------------------------------------------------------------------------------

@pytest.mark.parametrize("settings, with_backup, said", [
    (Settings(), False, "no backup host matches ENV=prod, ROLE=backup, SUBROLE=backup: backups are not set up"),
    (from_dict({"backup": {"enabled": False}}), True, "[backup] enabled = false"),
])
def test_without_backups_the_step_warns_skips_and_does_not_fail(real_inventory: Path, settings: Settings,
                                                                with_backup: bool, said: str) -> None:
    ctx, hosts = make_ctx(real_inventory, settings, with_backup)
    report = Engine(ctx).run_step(s06.STEP)
    assert report.status in (Status.UNCHANGED, Status.SKIPPED)
    assert not report.failures and not report.count(Status.CHANGED)
    first = report.tasks[0]
    assert first.task == "host" and any(said in warning for warning in first.warnings)
    assert all("skipped" in r.detail or r.status == Status.SKIPPED for r in report.tasks[1:])
    commands = [s for fake in hosts.values() for s in fake.scripts]
    if with_backup:  # [backup] enabled = false: only the backup timers are stopped (the repository is kept)
        assert len(commands) == 1 and "systemctl disable --now $t" in commands[0]
        assert "rm " not in commands[0] and "stanza-delete" not in commands[0]
    else:
        assert not commands  # not one command on any host


def test_turning_backups_off_stops_the_timers_once(real_inventory: Path) -> None:
    ctx, hosts = make_ctx(real_inventory, from_dict({"backup": {"enabled": False}}))
    repo = hosts["backup-01"]
    repo.rules.insert(0, (r"systemctl disable --now", result("kbpg-backup-full.timer\nkbpg-backup-diff.timer\n")))
    outcome = s06.check_host(task_run(ctx))
    assert outcome.status == Status.CHANGED and "kbpg-backup-full.timer, kbpg-backup-diff.timer stopped" in outcome.detail
    assert "enabled = false" in outcome.warnings[0]
    repo.rules[0] = (r"systemctl disable --now", result())
    assert s06.check_host(task_run(ctx)).status == Status.UNCHANGED


# --- the cipher pass ----------------------------------------------------------------------------

def _without_cipher(values: creds.Credentials) -> creds.Credentials:
    return creds.Credentials({k: v for k, v in values.items() if k != backup.CIPHER_NAME})


def test_a_missing_cipher_pass_over_an_existing_repository_is_refused(real_inventory: Path) -> None:
    ctx, hosts = make_ctx(real_inventory, values=_without_cipher(creds.generate()[0]))
    hosts["backup-01"].rules.insert(0, (r"backup\.info", result("present\n")))
    with pytest.raises(TaskError, match="restore postgres.env from your backup: without this value the backups "
                                        "cannot be read"):
        s06.check_host(task_run(ctx))


def test_a_missing_cipher_pass_without_a_repository_says_how_to_add_it(real_inventory: Path) -> None:
    ctx, hosts = make_ctx(real_inventory, values=_without_cipher(creds.generate()[0]))
    hosts["backup-01"].rules.insert(0, (r"backup\.info", result("absent\n")))
    with pytest.raises(TaskError, match="step 00 adds it"):
        s06.check_host(task_run(ctx))


def test_a_present_cipher_pass_passes(real_inventory: Path) -> None:
    ctx, _hosts = make_ctx(real_inventory)
    outcome = s06.check_host(task_run(ctx))
    assert outcome.status == Status.UNCHANGED and "backup-01 (10.0.0.153)" in outcome.detail


# --- the repository directory ----------------------------------------------------------------------

def test_a_repository_of_another_cluster_is_refused_before_anything_is_installed(real_inventory: Path) -> None:
    ctx, hosts = make_ctx(real_inventory)
    repo = hosts["backup-01"]
    repo.rules.insert(0, (r"^\s*repo=", result("state pgbackrest:pgbackrest 750\ntop archive\ntop backup\n"
                                               "archive other-pg\nbackup other-pg\n")))
    with pytest.raises(TaskError, match="another cluster's stanza \\(other-pg; this cluster's is .*never deletes"):
        s06.install_repo_packages(task_run(ctx, ctx.backup_host))
    assert len(repo.scripts) == 1  # the probe only: no install, no chown, no rm
    assert not [s for s in repo.scripts if "rm " in s or "stanza-delete" in s or "chown" in s]


def test_the_repository_is_given_to_pgbackrest_when_the_package_made_it(real_inventory: Path) -> None:
    ctx, hosts = make_ctx(real_inventory)
    repo = hosts["backup-01"]
    repo.rules[:0] = [(r"^\s*repo=", result("state postgres:postgres 750\n")),
                      (r"dpkg-query", result("pgbackrest 2.45-1\npostgresql-16 16.4\npostgresql-16-pgvector 0.7\n")),
                      (r"stat -c '%U:%G %a' /var/lib/pgbackrest\)\" != 'pgbackrest:pgbackrest 750'",
                       result("owned\n"))]
    ctx.settings.packages.source = "distro"
    outcome = s06.install_repo_packages(task_run(ctx, ctx.backup_host))
    assert "/var/lib/pgbackrest given to pgbackrest" in outcome.detail


# --- SSH trust -------------------------------------------------------------------------------------

def _keys(ctx: Context) -> None:
    for host in ctx.db_hosts:
        s06.db_key(task_run(ctx, host))
    s06.repo_key(task_run(ctx, ctx.backup_host))


def test_trust_is_written_from_verified_host_keys_and_a_rerun_changes_nothing(real_inventory: Path) -> None:
    ctx, hosts = make_ctx(real_inventory)
    pin_all(ctx)
    _keys(ctx)
    first = s06.exchange_trust(task_run(ctx))
    assert first.status == Status.CHANGED
    repo, master = hosts["backup-01"], hosts["db-master-01"]
    known = repo.text(backup.KNOWN_HOSTS_PATH)
    assert repo.files[backup.KNOWN_HOSTS_PATH][:3] == ("644", "root", "root")
    for name in ("db-master-01", "db-slave-01", "db-slave-02", "backup-01"):
        assert host_key(name) in known  # the verified key of each
        assert host_key("other-" + name) not in known  # the host's other keys are not (kbpg never verified them)
    repo_auth = repo.text("/home/pgbackrest/.ssh/authorized_keys")
    assert repo.files["/home/pgbackrest/.ssh/authorized_keys"][:3] == ("600", "pgbackrest", "pgbackrest")
    assert f'restrict,from="10.0.0.120",command="/usr/bin/pgbackrest ${{SSH_ORIGINAL_COMMAND#* }}" ' \
           f"{host_key('user-db-master-01')} kbpg-backup@db-master-01" in repo_auth.splitlines()
    db_auth = master.text("/var/lib/postgresql/.ssh/authorized_keys").splitlines()
    assert db_auth == [f'restrict,from="10.0.0.153",command="/usr/bin/pgbackrest ${{SSH_ORIGINAL_COMMAND#* }}" '
                       f"{host_key('user-backup-01')} kbpg-backup@backup-01"]
    # A re-run: every key, file and line already right.
    for host in ctx.db_hosts:
        assert s06.db_key(task_run(ctx, host)).status == Status.UNCHANGED
    assert s06.repo_key(task_run(ctx, ctx.backup_host)).status == Status.UNCHANGED
    assert s06.exchange_trust(task_run(ctx)).status == Status.UNCHANGED


def test_a_host_whose_keys_do_not_include_the_pinned_one_gets_no_trust_written(real_inventory: Path) -> None:
    ctx, hosts = make_ctx(real_inventory)
    pin_all(ctx)
    ctx.settings.ssh.pinned_host_keys["10.0.0.121"] = backup.fingerprint_of(host_key("the-real-one").split()[1])
    _keys(ctx)
    with pytest.raises(TaskError, match="db-slave-01 \\(10.0.0.121\\): the host keys it lists do not include the "
                                        "key kbpg verified"):
        s06.exchange_trust(task_run(ctx))
    assert not [path for fake in hosts.values() for path in fake.files if path == backup.KNOWN_HOSTS_PATH]


def test_a_db_node_leaving_the_inventory_loses_its_line_others_are_kept(real_inventory: Path) -> None:
    ctx, hosts = make_ctx(real_inventory)
    pin_all(ctx)
    repo = hosts["backup-01"]
    path = "/home/pgbackrest/.ssh/authorized_keys"
    stale = f'restrict,from="10.0.0.99" {host_key("gone")} kbpg-backup@db-gone-01\n'
    repo.files[path] = ("600", "pgbackrest", "pgbackrest", b"ssh-ed25519 AAAA admin@desk\n" + stale.encode())
    _keys(ctx)
    s06.exchange_trust(task_run(ctx))
    lines = repo.text(path).splitlines()
    assert lines[0] == "ssh-ed25519 AAAA admin@desk"
    assert not [line for line in lines if "db-gone-01" in line]
    assert len([line for line in lines if "kbpg-backup@db-" in line]) == 3


# --- pgbackrest.conf --------------------------------------------------------------------------------

def test_confs_are_written_with_their_owners_and_a_rerun_changes_nothing(real_inventory: Path) -> None:
    ctx, hosts = make_ctx(real_inventory)
    master, repo = ctx.db_hosts[0], ctx.backup_host
    assert repo is not None
    assert s06.db_config(task_run(ctx, master)).status == Status.CHANGED
    assert s06.repo_config(task_run(ctx, repo)).status == Status.CHANGED
    db_file, repo_file = hosts[master.name].files[backup.CONF_PATH], hosts[repo.name].files[backup.CONF_PATH]
    assert db_file[:3] == ("640", "root", "postgres") and b"cipher" not in db_file[3]
    assert repo_file[:3] == ("640", "root", "pgbackrest")
    assert f"repo1-cipher-pass={ctx.credentials['BACKUP_CIPHER_PASS']}".encode() in repo_file[3]
    hosts[master.name].rules.insert(0, (r"install -d", result()))
    assert s06.db_config(task_run(ctx, master)).status == Status.UNCHANGED
    assert s06.repo_config(task_run(ctx, repo)).status == Status.UNCHANGED


def _cipher_ctx(real_inventory: Path, reads: bool) -> tuple[Context, FakeHost]:
    """The backup host's pgbackrest.conf holds another cipher pass than postgres.env, over an existing repository;
    ``reads``: postgres.env's pass is the one that reads the repository."""
    ctx, hosts = make_ctx(real_inventory)
    repo = hosts["backup-01"]
    stanza = ctx.credentials["PATRONI_CLUSTER_NAME"]
    repo.rules[:0] = [(r"sed -n 's/\^repo1-cipher-pass=", result(hashlib.sha256(b"the old pass").hexdigest() + "\n")),
                      (r"backup\.info", result("present\n")),
                      (r"PGBACKREST_REPO1_CIPHER_PASS", _info(stanza, 0, backups=1) if reads else result(json.dumps([{
                          "name": stanza, "status": {"code": 99, "message": "other"}, "repo": [{"status": {
                              "code": 99, "message": "[FormatError] unable to load info file '\x14\x01'"}}]}])))]
    return ctx, repo


def test_a_cipher_pass_that_cannot_read_the_repository_is_never_written_over_it(real_inventory: Path) -> None:
    ctx, repo = _cipher_ctx(real_inventory, reads=False)
    with pytest.raises(TaskError, match="made with another BACKUP_CIPHER_PASS.*restore postgres.env from your backup"):
        s06.repo_config(task_run(ctx, ctx.backup_host))
    assert backup.CONF_PATH not in repo.files  # nothing written
    secret = ctx.credentials["BACKUP_CIPHER_PASS"]
    assert not [script for script in repo.scripts if secret in script]  # asked through stdin, never in a command
    assert [stdin for _script, stdin in repo.connection.calls if secret.encode() in stdin]


def test_postgres_envs_cipher_pass_is_put_back_when_it_is_the_one_that_reads(real_inventory: Path) -> None:
    ctx, repo = _cipher_ctx(real_inventory, reads=True)
    assert s06.repo_config(task_run(ctx, ctx.backup_host)).status == Status.CHANGED
    assert f"repo1-cipher-pass={ctx.credentials['BACKUP_CIPHER_PASS']}" in repo.text(backup.CONF_PATH).splitlines()


def test_a_repository_pgbackrest_cannot_read_is_never_recreated(real_inventory: Path) -> None:
    def unreadable(script: str) -> Result:
        return result(json.dumps([{"name": ctx.credentials["PATRONI_CLUSTER_NAME"], "status": {"code": 99, "message":
                                   "other"}, "db": [], "repo": [{"status": {"code": 99, "message":
                                   "[FormatError] unable to load info file\u0014"}}]}]).replace("\\u0014", "\x14"))
    ctx, repo = _stanza_ctx(real_inventory, unreadable)
    with pytest.raises(TaskError, match="cannot be read with this BACKUP_CIPHER_PASS.*never deletes or recreates"):
        s06.ensure_stanza(task_run(ctx))
    assert not [s for s in repo.scripts if "stanza-create" in s]


# --- SSH checked, versions ---------------------------------------------------------------------------

def test_ssh_failure_names_both_ends_and_ssh_s_last_line(real_inventory: Path) -> None:
    ctx, hosts = make_ctx(real_inventory)
    hosts["backup-01"].rules.insert(0, (r"backup-ssh postgres@10\.0\.0\.121", result(
        "debug\nHost key verification failed.\n", 255)))
    with pytest.raises(TaskError, match=r"backup-01 \(pgbackrest\) -> db-slave-01 \(postgres\): Host key "
                                        "verification failed"):
        s06.check_ssh(task_run(ctx))


def test_different_pgbackrest_versions_are_refused_naming_each(real_inventory: Path) -> None:
    ctx, hosts = make_ctx(real_inventory)
    hosts["backup-01"].rules.insert(0, (r"backup-ssh postgres@10\.0\.0\.122", result("pgBackRest 2.54.0\n")))
    with pytest.raises(TaskError, match="same version.*db-slave-02 pgBackRest 2.54"):
        s06.check_ssh(task_run(ctx))


def test_ssh_both_ways_with_equal_versions_passes(real_inventory: Path) -> None:
    ctx, hosts = make_ctx(real_inventory)
    outcome = s06.check_ssh(task_run(ctx))
    assert outcome.status == Status.UNCHANGED and "pgBackRest 2.45" in outcome.detail
    probes = [s for fake in hosts.values() for s in fake.scripts if "backup-ssh" in s]
    assert len(probes) == 6  # 3 DB nodes, both ways
    assert all(s.startswith(("runuser -u pgbackrest -- ", "runuser -u postgres -- ")) for s in probes)


# --- stanza -------------------------------------------------------------------------------------

def _stanza_ctx(real_inventory: Path, info: Callable[[str], Result], create: Result | None = None,
                system_id: str = "7321") -> tuple[Context, FakeHost]:
    ctx, hosts = make_ctx(real_inventory)
    repo = hosts["backup-01"]
    repo.rules[:0] = [(r"--output=json info", info), (r"stanza-create", create or result())]
    hosts["db-master-01"].rules.insert(0, (r"psql", result(system_id + "\n")))
    ctx.state["leader"] = "db-master-01"
    return ctx, repo


def _info(stanza: str, code: int = 0, system_id: int | None = 7321, backups: int = 0) -> Result:
    entry: dict = {"name": stanza, "status": {"code": code, "message": "ok" if code == 0 else "missing stanza path"},
                   "backup": [{"label": f"L{i}"} for i in range(backups)]}
    if system_id is not None:
        entry["db"] = [{"id": 1, "system-id": system_id, "version": "16"}]
    return result(json.dumps([entry]))


def test_a_missing_stanza_is_created_then_left_alone(real_inventory: Path) -> None:
    answers = iter(["missing", "made"])
    ctx, repo = _stanza_ctx(real_inventory, lambda s: _info(stanza, 1, None) if next(answers) == "missing"
                            else _info(stanza, 2))
    stanza = ctx.credentials["PATRONI_CLUSTER_NAME"]
    outcome = s06.ensure_stanza(task_run(ctx))
    assert outcome.status == Status.CHANGED and "created" in outcome.detail
    assert [s for s in repo.scripts if "stanza-create" in s] == [
        f"runuser -u pgbackrest -- pgbackrest --stanza={stanza} stanza-create"]
    ctx2, repo2 = _stanza_ctx(real_inventory, lambda s: _info(stanza, 0, backups=1))
    ctx2.credentials = ctx.credentials
    assert s06.ensure_stanza(task_run(ctx2)).status == Status.UNCHANGED
    assert not [s for s in repo2.scripts if "stanza-create" in s]


def test_a_stanza_of_another_database_is_refused_never_deleted(real_inventory: Path) -> None:
    ctx, repo = _stanza_ctx(real_inventory, lambda s: _info(ctx.credentials["PATRONI_CLUSTER_NAME"], 0, 1111),
                            system_id="7321")
    with pytest.raises(TaskError, match="the repository holds another cluster's stanza; kbpg never deletes a stanza"):
        s06.ensure_stanza(task_run(ctx))
    assert not [s for s in repo.scripts if re.search(r"stanza-(create|delete|upgrade)|rm -", s)]


def test_stanza_create_refusing_a_mismatch_is_named(real_inventory: Path) -> None:
    ctx, _repo = _stanza_ctx(real_inventory, lambda s: _info(ctx.credentials["PATRONI_CLUSTER_NAME"], 1, None),
                             create=result("", 28, "ERROR: [028]: backup and archive info files exist but do not "
                                                   "match the database"))
    with pytest.raises(TaskError, match="another cluster's stanza"):
        s06.ensure_stanza(task_run(ctx))


def test_a_repository_the_cipher_pass_cannot_read_is_named(real_inventory: Path) -> None:
    ctx, _repo = _stanza_ctx(real_inventory, lambda s: result("", 95, "ERROR: [095]: unable to decrypt: cipher"))
    with pytest.raises(TaskError, match="cannot be decrypted with BACKUP_CIPHER_PASS"):
        s06.ensure_stanza(task_run(ctx))


# --- archiving, first backup ---------------------------------------------------------------------

def _archiving_ctx(real_inventory: Path, mode: str, check: Result | None = None) -> tuple[Context, FakeHost]:
    ctx, hosts = make_ctx(real_inventory)
    stanza = ctx.credentials["PATRONI_CLUSTER_NAME"]
    hosts["db-master-01"].rules.insert(0, (r"psql", result(f"{mode}|pgbackrest --stanza={stanza} archive-push %p\n")))
    hosts["backup-01"].rules.insert(0, (r" check$", check or result()))
    ctx.state["leader"] = "db-master-01"
    return ctx, hosts["backup-01"]


def test_archive_mode_waiting_for_a_restart_is_said_and_check_skipped(real_inventory: Path) -> None:
    ctx, repo = _archiving_ctx(real_inventory, "off")
    outcome = s06.check_archiving(task_run(ctx))
    assert outcome.status == Status.UNCHANGED
    assert "waits for a PostgreSQL restart" in outcome.warnings[0] and "apply_pending_restarts" in outcome.warnings[0]
    assert not [s for s in repo.scripts if s.endswith(" check")]
    assert s06.first_backup(task_run(ctx)).detail.startswith("skipped")


def test_archiving_checked_then_a_first_full_backup_started_once(real_inventory: Path) -> None:
    ctx, repo = _archiving_ctx(real_inventory, "on")
    stanza = ctx.credentials["PATRONI_CLUSTER_NAME"]
    assert s06.check_archiving(task_run(ctx)).status == Status.UNCHANGED
    assert f"runuser -u pgbackrest -- pgbackrest --stanza={stanza} check" in repo.scripts
    repo.rules.insert(0, (r"--output=json info", _info(stanza, 2)))
    started = s06.first_backup(task_run(ctx))
    assert started.status == Status.CHANGED
    assert "systemctl start --no-block kbpg-backup@full.service" in repo.scripts
    repo.rules.insert(0, (r"list-units", result("kbpg-backup@full.service\n")))
    assert s06.first_backup(task_run(ctx)).status == Status.UNCHANGED  # running: not started twice
    repo.rules.insert(0, (r"--output=json info", _info(stanza, 0, backups=1)))
    assert s06.first_backup(task_run(ctx)).status == Status.UNCHANGED


def test_a_failing_pgbackrest_check_fails_the_task(real_inventory: Path) -> None:
    ctx, _repo = _archiving_ctx(real_inventory, "on", result("", 82, "ERROR: [082]: WAL segment was not archived"))
    with pytest.raises(TaskError, match="WAL segment was not archived"):
        s06.check_archiving(task_run(ctx))


BUSY = ("WARN: unable to check pg1: [LockAcquireError] raised from remote-0 ssh protocol on '198.18.0.120': unable to "
        "acquire lock on file '/tmp/pgbackrest/keybuzz-pg-archive-1.lock': Resource temporarily unavailable\n"
        "HINT: is another pgBackRest process running?\nERROR: [056]: unable to find primary cluster - cannot proceed")


def _busy_then(answers: list[Result]) -> Callable[[str], Result]:
    queue = iter(answers)
    return lambda script: next(queue)


def test_stanza_create_and_check_are_asked_again_while_the_primary_s_archive_lock_is_busy(
        real_inventory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CI's wizard install: the primary's async archive-push held its lock as stanza-create ran ([056])."""
    monkeypatch.setattr(s06, "BUSY_PAUSE", 0)
    answers = iter(["missing", "made"])
    ctx, repo = _stanza_ctx(real_inventory, lambda s: _info(stanza, 1, None) if next(answers) == "missing"
                            else _info(stanza, 2))
    stanza = ctx.credentials["PATRONI_CLUSTER_NAME"]
    said: list = []
    ctx.sink = said.append
    repo.rules.insert(0, (r"stanza-create", _busy_then([result("", 56, BUSY), result("", 56, BUSY), result()])))
    assert s06.ensure_stanza(task_run(ctx)).status == Status.CHANGED
    assert len([s for s in repo.scripts if "stanza-create" in s]) == 3
    assert any("stanza-create: done after 3 tries" in getattr(e, "text", "") for e in said), said
    ctx, repo = _archiving_ctx(real_inventory, "on")
    repo.rules.insert(0, (r" check$", _busy_then([result("", 56, BUSY), result()])))
    assert s06.check_archiving(task_run(ctx)).status == Status.UNCHANGED and ctx.state["backup_archiving"]
    assert len([s for s in repo.scripts if s.endswith(" check")]) == 2


def test_a_lock_busy_past_the_window_fails_naming_it_and_other_errors_are_not_asked_again(
        real_inventory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s06, "BUSY_PAUSE", 0)
    monkeypatch.setattr(s06, "BUSY_WINDOW", 0.05)
    ctx, repo = _archiving_ctx(real_inventory, "on", result("", 56, BUSY))
    with pytest.raises(TaskError, match=r"unable to find primary cluster"):
        s06.check_archiving(task_run(ctx))
    assert len([s for s in repo.scripts if s.endswith(" check")]) >= 2
    ctx, repo = _archiving_ctx(real_inventory, "on", result("", 82, "ERROR: [082]: WAL segment was not archived"))
    with pytest.raises(TaskError, match="WAL segment was not archived"):
        s06.check_archiving(task_run(ctx))
    assert len([s for s in repo.scripts if s.endswith(" check")]) == 1


# --- timers -----------------------------------------------------------------------------------

def test_a_schedule_systemd_refuses_is_named_by_its_key(real_inventory: Path) -> None:
    ctx, hosts = make_ctx(real_inventory)
    hosts["backup-01"].rules.insert(0, (r"systemd-analyze calendar -- 'Mon..Sat", result(
        "Failed to parse calendar specification 'Mon..Sat *-*-* 01:00:00': Invalid argument\n", 1)))
    with pytest.raises(TaskError, match="backup.diff_schedule in kbpg.toml: systemd refuses"):
        s06.install_timers(task_run(ctx, ctx.backup_host))
    assert not hosts["backup-01"].files  # nothing written


def test_timers_and_the_drill_are_installed_then_a_rerun_changes_nothing(real_inventory: Path) -> None:
    ctx, hosts = make_ctx(real_inventory)
    repo = hosts["backup-01"]
    outcome = s06.install_timers(task_run(ctx, ctx.backup_host))
    assert outcome.status == Status.CHANGED
    assert "daemon-reload" in " ".join(repo.scripts)
    assert repo.files[backup.DRILL_TMPFILES][3].decode() == backup.DRILL_TMPFILES_TEXT
    if backup.drill_script() is not None:
        assert repo.files[backup.DRILL_SCRIPT][0] == "755"
    repo.rules[:0] = [(r"is-enabled kbpg-backup-", result("enabled\nactive\n"))]
    before = len(repo.scripts)
    again = s06.install_timers(task_run(ctx, ctx.backup_host))
    assert again.status == Status.UNCHANGED, again.detail
    assert not [s for s in repo.scripts[before:] if "daemon-reload" in s or "systemctl restart" in s]


def test_every_task_is_skipped_while_backups_are_off(real_inventory: Path) -> None:
    ctx, hosts = make_ctx(real_inventory, from_dict({"backup": {"enabled": False}}))
    for task in s06.STEP.tasks[1:]:
        host = ctx.db_hosts[0] if task.scope == "db" else (ctx.backup_host if task.scope == "backup" else None)
        outcome: Outcome = task.function(task_run(ctx, host))
        assert outcome.status == Status.UNCHANGED and outcome.detail == s06.OFF, task.name
    assert not [s for fake in hosts.values() for s in fake.scripts]


def test_step_06_comes_after_pgvector() -> None:
    from kbpg_tui.core.steps import ALL_STEPS

    assert [s.label for s in ALL_STEPS][-2:] == ["05 pgvector", "06 Backups"]


def test_a_connection_closed_before_authentication_is_asked_again_until_it_answers(real_inventory: Path,
                                                                                     monkeypatch) -> None:
    # OpenSSH's PerSourcePenalties: a node that failed to log in once (before step 06 trusted its key) has its next
    # connections closed for a while; they are asked again, not failed at once.
    monkeypatch.setattr(s06, "PENALTY_PAUSE", 0.01)
    ctx, hosts = make_ctx(real_inventory)
    closed = result("Connection closed by 10.0.0.153 port 22\n", 255)
    answers = iter([closed, closed])
    hosts["db-slave-01"].rules.insert(0, (r"backup-ssh", lambda script: next(answers, None)
                                          or result("pgBackRest 2.45.0\n")))
    outcome = s06.check_ssh(task_run(ctx))
    assert outcome.status == Status.UNCHANGED
    assert len([s for s in hosts["db-slave-01"].scripts if "backup-ssh" in s]) == 3


def test_a_connection_still_closed_after_the_window_fails_naming_it(real_inventory: Path, monkeypatch) -> None:
    monkeypatch.setattr(s06, "PENALTY_PAUSE", 0.01)
    monkeypatch.setattr(s06, "PENALTY_WINDOW", 0.05)
    ctx, hosts = make_ctx(real_inventory)
    hosts["db-slave-01"].rules.insert(0, (r"backup-ssh", result("Connection closed by 10.0.0.153 port 22\n", 255)))
    with pytest.raises(TaskError, match=r"db-slave-01 \(postgres\) -> backup-01 \(pgbackrest\): Connection closed"):
        s06.check_ssh(task_run(ctx))
    assert len([s for s in hosts["db-slave-01"].scripts if "backup-ssh" in s]) > 1
