"""Step 06: pgBackRest backups on the backup host, WAL archiving from the DB nodes (core/backup.py renders it all).

host (backups on? the stanza name, the cipher pass) → packages (backup host: pgbackrest and PostgreSQL's binaries
for the restore drill, the repository directory; DB nodes: pgbackrest) → SSH keys made on each host → trust
(known_hosts of verified host keys only, authorized_keys lines restricted to pgbackrest from the other side) →
both pgbackrest.conf → SSH checked both ways, pgBackRest versions equal → stanza → archiving checked → backup
timers and the restore drill's script → the first full backup started.

Each task checks, changes only what differs, and verifies: a re-run changes nothing. No backup host selected, or
``[backup] enabled = false``: the step says so with a warning and does nothing; the install is not failed.
A repository holding another cluster's stanza is refused, never deleted; a missing BACKUP_CIPHER_PASS while a
repository exists is refused (without it the backups cannot be read).
"""

from __future__ import annotations

import hashlib
import re
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from .. import backup
from ..backup import PublicKey
from ..cluster import on_leader
from ..engine import Context, Outcome, Step, Task, TaskError, TaskRun
from ..ssh import Host, Result
from .packages import ensure_installed, ensure_source

OFF = "skipped: backups are not set up"
CHECK_TIMEOUT = 240  # pgbackrest check: a WAL switch archived within archive-timeout (60 s), plus SSH both ways
STANZA_TIMEOUT = 300
# pgBackRest finds the primary through a lock on each DB node, which the primary's async archive-push holds while it
# pushes (a fresh cluster's first WAL, or a backlog): "unable to find primary cluster" [056] or a lock refused [050]
# then means "busy", not "no primary". Asked again, every 3 s, for this long.
BUSY_WINDOW = 90.0
BUSY_PAUSE = 3.0
BUSY_MARKERS = ("[056]", "[050]", "Resource temporarily unavailable", "is another pgBackRest process running")


def backup_host(ctx: Context) -> Host | None:
    """The backup host (Context.backup_host), None when none is selected."""
    return ctx.backup_host


def backups_on(ctx: Context) -> bool:
    return backup.backups_on(ctx.settings, ctx.selection)


def _when_on(function: Callable[[TaskRun], Outcome]) -> Callable[[TaskRun], Outcome]:
    """A task that does nothing (reported "skipped") while backups are off."""
    def task(run: TaskRun) -> Outcome:
        if not backups_on(run.ctx):
            return Outcome.unchanged(OFF)
        return function(run)
    task.__name__ = function.__name__
    task.__doc__ = function.__doc__
    return task


def _repo_host(run: TaskRun) -> Host:
    host = backup_host(run.ctx)
    assert host is not None, "backups are on only with a backup host"
    return host


def _stanza(run: TaskRun) -> str:
    return backup.stanza(run.ctx.credentials)


def _repo_exists(run: TaskRun, stanza: str) -> bool:
    info = shlex.quote(f"{backup.REPO_PATH}/backup/{stanza}/backup.info")
    answer = run.run(f"if [ -e {info} ]; then echo present; else echo absent; fi", host=_repo_host(run),
                     on_line=None, what="looking for the repository").stdout.strip()
    if answer not in ("present", "absent"):
        raise TaskError(f"{_repo_host(run).name}: could not tell whether {backup.REPO_PATH} holds a repository "
                        f"(answer {answer!r}); run the same command again")
    return answer == "present"


# --- 1. host ------------------------------------------------------------------------------------

def check_host(run: TaskRun) -> Outcome:
    """Backups on or off; the stanza's name; the cipher pass (refused missing while a repository exists)."""
    reason = backup.why_off(run.settings, run.ctx.selection)
    if reason is not None:
        host = backup_host(run.ctx)
        if host is not None:  # [backup] enabled = false: no more scheduled backups (the repository is kept)
            timers = " ".join(backup.timer_name(kind) for kind in backup.TIMERS)
            stopped = run.run(
                f"for t in {timers}; do if systemctl is-enabled --quiet $t 2>/dev/null || systemctl is-active --quiet "
                f"$t; then systemctl disable --now $t >/dev/null 2>&1; echo $t; fi; done",
                host=host, what="stopping the backup timers").stdout.split()
            if stopped:
                return Outcome.changed(f"{OFF}; {', '.join(stopped)} stopped on {host.name} (its repository is kept)",
                                       [reason])
        return Outcome.unchanged(OFF, [reason])
    host = _repo_host(run)
    stanza = _stanza(run)
    if not run.ctx.credentials.get(backup.CIPHER_NAME):
        if _repo_exists(run, stanza):
            raise TaskError(f"{backup.CIPHER_NAME} is missing from credentials/postgres.env while {host.name} holds "
                            f"the repository of {stanza}: restore postgres.env from your backup: without this value "
                            "the backups cannot be read (kbpg never makes a new one over an existing repository)")
        backup.cipher_pass(run.ctx.credentials)  # raises, saying how to add it
    backup.cipher_pass(run.ctx.credentials)  # a value pgbackrest.conf can hold
    return Outcome.unchanged(f"backup host {host.name} ({host.address}), stanza {stanza}")


# --- 2. packages --------------------------------------------------------------------------------

def repo_packages(run: TaskRun) -> list[str]:
    version = run.settings.postgresql.version
    return ["pgbackrest", f"postgresql-{version}", f"postgresql-{version}-pgvector"]


def install_repo_packages(run: TaskRun) -> Outcome:
    """The backup host: pgbackrest, PostgreSQL's binaries (the restore drill; no cluster made), the pgbackrest
    user, and the repository directory, taken only when empty, package-made or holding this cluster's stanza."""
    from .s02_patroni import CREATECLUSTER_PATH  # the drop-in that keeps postgresql-common from making a cluster

    stanza = _stanza(run)
    connection = run.connection()
    # Refused before anything is installed: a repository of another cluster is never touched.
    repo = backup.parse_repo_probe(run.run(backup.REPO_PROBE.format(repo=shlex.quote(backup.REPO_PATH)),
                                           on_line=None, what=f"reading {backup.REPO_PATH}").stdout)
    refusal = backup.repo_refusal(repo, stanza)
    if refusal:
        raise TaskError(f"{run.host.name if run.host else ''}: {refusal}")
    changes = []
    changed = ensure_source(run)
    changed |= connection.upload(CREATECLUSTER_PATH, "# written by kbpg: no PostgreSQL cluster on the backup host "
                                 "(the restore drill runs its own)\ncreate_main_cluster = false\n", mode=0o644)
    installed = ensure_installed(run, repo_packages(run))
    if installed:
        changes.append("installed " + ", ".join(installed))
    user = backup.REPO_USER
    made = run.run(f"if ! id -u {user} >/dev/null 2>&1; then useradd --system --create-home --home-dir "
                   f"{backup.REPO_HOME} --shell /bin/sh {user}; echo made; fi", what=f"making the {user} user"
                   ).stdout.strip()
    if made:
        changes.append(f"user {user} made")
    path = shlex.quote(backup.REPO_PATH)
    fixed = run.run(
        f"if [ ! -d {path} ]; then install -d -o {user} -g {user} -m 0750 {path}; echo made; "
        f"elif [ \"$(stat -c '%U:%G %a' {path})\" != '{user}:{user} 750' ]; then chown -R {user}:{user} {path}; "
        f"chmod 0750 {path}; echo owned; fi", what=f"giving {backup.REPO_PATH} to {user}").stdout.strip()
    if fixed:
        changes.append(f"{backup.REPO_PATH} {'made' if fixed == 'made' else 'given to ' + user} (0750)")
    logs = shlex.quote(backup.LOG_PATH)
    fixed = run.run(f"if [ \"$(stat -c '%U:%G %a' {logs} 2>/dev/null)\" != '{user}:{user} 750' ]; then "
                    f"install -d -o {user} -g {user} -m 0750 {logs}; echo fixed; fi").stdout.strip()
    if fixed:
        changes.append(f"{backup.LOG_PATH} ({user}, 0750)")
    return Outcome.of(changed or bool(changes), "; ".join(changes) or "pgbackrest and PostgreSQL's binaries present")


def install_db_packages(run: TaskRun) -> Outcome:
    """A DB node: pgbackrest (step 02 installs it with backups on; a cluster installed before gets it here)."""
    installed = ensure_installed(run, ["pgbackrest"])
    return Outcome.of(bool(installed), "installed pgbackrest" if installed else "pgbackrest present")


# --- 3. SSH keys and trust ------------------------------------------------------------------------

def _ensure_key(run: TaskRun, user: str) -> Outcome:
    """The user's key pair made on this host if missing; kbpg reads only its public half. Also kbpg's ssh_config
    and the backup-ssh wrapper pgBackRest calls."""
    host = run.host
    assert host is not None
    output = run.run(backup.keygen_script(user, host.name), on_line=None, what=f"{user}'s SSH key").stdout
    lines = [line for line in output.splitlines() if line.strip()]
    made = bool(lines) and lines[0] == "made"
    key = backup.parse_public_key(lines[-1] if lines else "")
    if key is None or not key.comment.startswith(backup.KEY_COMMENT):
        raise TaskError(f"{host.name}: {user}'s public key {backup.key_dir(user)}/{backup.KEY_NAME}.pub is not an "
                        "ed25519 key kbpg made; remove the pair and re-run")
    run.ctx.state.setdefault("backup_keys", {})[host.name] = key
    connection = run.connection()
    written = [path for path, text, mode in ((backup.SSH_CONFIG_PATH, backup.SSH_CONFIG, 0o644),
                                             (backup.SSH_WRAPPER, backup.SSH_WRAPPER_TEXT, 0o755))
               if connection.upload(path, text, mode=mode)]
    changes = ([f"{user}'s key made ({key.fingerprint})"] if made else []) + ([", ".join(written) + " written"]
                                                                              if written else [])
    return Outcome.of(bool(changes), "; ".join(changes) or f"{user}'s key {key.fingerprint}")


def db_key(run: TaskRun) -> Outcome:
    return _ensure_key(run, backup.DB_USER)


def repo_key(run: TaskRun) -> Outcome:
    return _ensure_key(run, backup.REPO_USER)


def verified_fingerprints(ctx: Context, host: Host) -> set[str]:
    """The fingerprints kbpg verified itself for ``host``: its pin in kbpg.toml and its own known_hosts."""
    from ..ssh import fingerprint

    found = set()
    pins = ctx.settings.ssh.pinned_host_keys
    for name in (host.address, host.name):
        if pins.get(name):
            found.add(pins[name])
    known = getattr(ctx.pool, "known_hosts", None)
    if known is not None:
        found |= {fingerprint(key) for key in known.lookup(host.address, host.port).values()}
    return found


HOST_KEYS = "cat /etc/ssh/ssh_host_*_key.pub 2>/dev/null || true"


def exchange_trust(run: TaskRun) -> Outcome:
    """known_hosts (the same on every host: only host keys kbpg verified) and the managed authorized_keys lines."""
    repo = _repo_host(run)
    hosts = [*run.ctx.db_hosts, repo]
    keys: dict[str, PublicKey] = run.ctx.state.get("backup_keys", {})
    missing = [h.name for h in hosts if h.name not in keys]
    if missing:
        raise TaskError(f"no backup SSH key read from {', '.join(missing)} (the ssh keys task did not run there)")

    def host_keys(host: Host) -> list[PublicKey]:
        listing = run.run(HOST_KEYS, host=host, on_line=None, what="reading the host keys").stdout
        return backup.verified_host_keys(host, listing, verified_fingerprints(run.ctx, host))

    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        verified = list(zip(hosts, pool.map(host_keys, hosts), strict=True))
    known_hosts = backup.render_known_hosts(verified)
    authorized = {repo.name: (backup.REPO_USER, [backup.authorized_line(keys[h.name], [h.address])
                                                 for h in run.ctx.db_hosts])}
    for host in run.ctx.db_hosts:
        authorized[host.name] = (backup.DB_USER, [backup.authorized_line(keys[repo.name], [repo.address])])

    def apply(host: Host) -> list[str]:
        connection = run.connection(host)
        written = []
        if connection.upload(backup.KNOWN_HOSTS_PATH, known_hosts, mode=0o644):
            written.append(backup.KNOWN_HOSTS_PATH)
        user, lines = authorized[host.name]
        path = f"{backup.key_dir(user)}/authorized_keys"
        current = (connection.read_file(path) or b"").decode("utf-8", errors="surrogateescape")
        wanted = backup.merge_authorized_keys(current, lines)
        if connection.upload(path, wanted.encode("utf-8", errors="surrogateescape"), mode=0o600, owner=user,
                             group=user):
            written.append(path)
        return written

    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        done = list(zip(hosts, pool.map(apply, hosts), strict=True))
    changes = [f"{host.name}: {', '.join(paths)}" for host, paths in done if paths]
    return Outcome.of(bool(changes), "; ".join(changes) or
                      f"host keys verified and trusted both ways ({len(run.ctx.db_hosts)} DB nodes, {repo.name})")


# --- 4. pgbackrest.conf ------------------------------------------------------------------------

def _dirs(run: TaskRun, owner: str, paths: list[str]) -> list[str]:
    script = "; ".join(f"if [ \"$(stat -c '%U:%G %a' {shlex.quote(p)} 2>/dev/null)\" != '{owner}:{owner} 750' ]; "
                       f"then install -d -o {owner} -g {owner} -m 0750 {shlex.quote(p)}; echo {shlex.quote(p)}; fi"
                       for p in paths)
    return run.run(script, what="pgBackRest's directories").stdout.split()


def db_config(run: TaskRun) -> Outcome:
    """A DB node's pgbackrest.conf (no secret: 0640 root:postgres), its spool and log directories."""
    text = backup.render_db_conf(run.settings, _stanza(run), _repo_host(run), run.ctx.credentials["POSTGRES_SUPERUSER"])
    changes = _dirs(run, backup.DB_USER, [backup.SPOOL_PATH, backup.LOG_PATH])
    if run.connection().upload(backup.CONF_PATH, text, mode=0o640, owner="root", group=backup.DB_USER):
        changes.append(f"{backup.CONF_PATH} written")
    return Outcome.of(bool(changes), "; ".join(changes) or f"{backup.CONF_PATH} up to date")


def pgbackrest_version(run: TaskRun, host: Host | None = None) -> str:
    return run.run("pgbackrest version", host=host, on_line=None, what="pgbackrest version").stdout.strip()


def refuse_cipher_change(run: TaskRun) -> None:
    """Never put another cipher pass over an existing repository: pgBackRest cannot re-encrypt one, and its backups
    would be unreadable (a postgres.env lost and regenerated). Only hashes are compared; the pass stays on the host."""
    conf = shlex.quote(backup.CONF_PATH)
    current = run.run(f"if [ -f {conf} ]; then sed -n 's/^repo1-cipher-pass=//p' {conf} | head -n 1 | tr -d '\\n' | "
                      "sha256sum | cut -d' ' -f1; else echo none; fi", on_line=None,
                      what="reading the repository's cipher").stdout.strip()
    wanted = hashlib.sha256(backup.cipher_pass(run.ctx.credentials).encode()).hexdigest()
    if current in ("none", wanted, hashlib.sha256(b"").hexdigest()):
        return
    stanza = _stanza(run)
    if not _repo_exists(run, stanza):
        return
    # The host's file holds another pass: write postgres.env's only if it is the one that reads the repository
    # (postgres.env restored after a bad run); asked with the pass in the environment, given through stdin.
    answer = run.run(f"IFS= read -r PGBACKREST_REPO1_CIPHER_PASS; export PGBACKREST_REPO1_CIPHER_PASS; "
                     f"{backup.repo_command(stanza, '--output=json', 'info')}",
                     stdin=backup.cipher_pass(run.ctx.credentials) + "\n", check=False, on_line=None, timeout=120,
                     what="reading the repository with postgres.env's cipher pass")
    try:
        readable = answer.ok and backup.stanza_state(answer.stdout, stanza).code in (0, 2)
    except TaskError:
        readable = False
    if not readable:
        raise TaskError(f"{_repo_host(run).name}: the repository of {stanza} was made with another "
                        f"{backup.CIPHER_NAME} than credentials/postgres.env holds: restore postgres.env from your "
                        "backup: without the value it was made with the backups cannot be read. Nothing was written "
                        f"({backup.CONF_PATH} kept)")


def repo_config(run: TaskRun) -> Outcome:
    """The backup host's pgbackrest.conf: the repository and its cipher pass (0640 root:pgbackrest)."""
    version = backup.parse_version(pgbackrest_version(run))
    text = backup.render_repo_conf(run.settings, _stanza(run), run.ctx.db_hosts,
                                   run.ctx.credentials["POSTGRES_SUPERUSER"], backup.cipher_pass(run.ctx.credentials),
                                   version)
    refuse_cipher_change(run)
    changes = []
    if run.connection().upload(backup.CONF_PATH, text, mode=0o640, owner="root", group=backup.REPO_USER):
        changes.append(f"{backup.CONF_PATH} written")
    return Outcome.of(bool(changes), "; ".join(changes) or f"{backup.CONF_PATH} up to date")


# --- 5. SSH checked both ways ------------------------------------------------------------------------

# OpenSSH 9.8+ (PerSourcePenalties) drops every connection from an address for a while after it failed to log in:
# a DB node that joins (kbpg nodes apply) tries pgBackRest (restore_command) before this step trusts its key, and its
# next connections are closed before any authentication. They are asked again for up to PENALTY_WINDOW seconds.
PENALTY_WINDOW = 60.0
PENALTY_PAUSE = 3.0
PENALTY_MARKER = re.compile(r"Connection closed by \S+ port \d+|kex_exchange_identification")


def _ssh_probe(run: TaskRun, source: Host, user: str, target: Host, target_user: str,
               window: float | None = None) -> tuple[bool, str]:
    port = f" -p {target.port}" if target.port != 22 else ""
    deadline = time.monotonic() + (PENALTY_WINDOW if window is None else window)
    while True:
        result = run.run(f"runuser -u {user} -- {backup.SSH_WRAPPER}{port} {target_user}@{target.address} "
                         "pgbackrest version 2>&1", host=source, check=False, on_line=None, timeout=60,
                         what=f"SSH from {source.name} to {target.name}")
        ok = result.ok and backup.parse_version(result.stdout) is not None
        if ok or not PENALTY_MARKER.search(result.stdout) or time.monotonic() + PENALTY_PAUSE > deadline:
            return ok, result.stdout.strip()
        run.check_cancel()
        time.sleep(PENALTY_PAUSE)


def check_ssh(run: TaskRun) -> Outcome:
    """backup host → every DB node (as pgbackrest → postgres) and back, through the wrapper and the forced command;
    every end answers the same pgBackRest version."""
    repo = _repo_host(run)
    probes = [(repo, backup.REPO_USER, db, backup.DB_USER) for db in run.ctx.db_hosts]
    probes += [(db, backup.DB_USER, repo, backup.REPO_USER) for db in run.ctx.db_hosts]
    with ThreadPoolExecutor(max_workers=len(probes)) as pool:
        answers = list(pool.map(lambda p: _ssh_probe(run, *p), probes))
    failures = [f"{src.name} ({user}) -> {dst.name} ({dst_user}): {(text.splitlines() or ['no output'])[-1]}"
                for (src, user, dst, dst_user), (ok, text) in zip(probes, answers, strict=True) if not ok]
    if failures:
        raise TaskError("SSH for pgBackRest failed: " + "; ".join(failures))
    local = backup.version_text(pgbackrest_version(run, repo))
    versions = {repo.name: local}
    for (_src, _u, dst, _d), (_ok, text) in zip(probes, answers, strict=True):
        versions.setdefault(dst.name, backup.version_text(text))
    if len(set(versions.values())) > 1:
        raise TaskError("pgBackRest must be the same version on the backup host and the DB nodes: "
                        + ", ".join(f"{name} {version}" for name, version in versions.items())
                        + ". Align them (apt-get install pgbackrest=VERSION) and re-run")
    return Outcome.unchanged(f"SSH both ways between {repo.name} and {len(run.ctx.db_hosts)} DB nodes; {local}")


# --- 6. stanza --------------------------------------------------------------------------------

def repo_busy_retried(run: TaskRun, stanza: str, command: str, timeout: float, window: float | None = None) -> Result:
    """``pgbackrest COMMAND`` on the backup host, asked again while its only failure is the primary's lock being busy
    (BUSY_MARKERS) for up to ``window`` seconds (default BUSY_WINDOW); the last result is returned (the caller names any failure)."""
    deadline = time.monotonic() + (BUSY_WINDOW if window is None else window)
    tries = 0
    while True:
        result = run.run(backup.repo_command(stanza, command), host=_repo_host(run), check=False, on_line=None,
                         timeout=timeout, what=f"pgbackrest {command}")
        tries += 1
        text = result.stderr + result.stdout
        if result.ok or not any(marker in text for marker in BUSY_MARKERS) or time.monotonic() >= deadline:
            if tries > 1:
                run.say(f"pgbackrest {command}: {'done' if result.ok else 'still failing'} after {tries} tries "
                        "(the primary's archive lock was busy)")
            return result
        run.check_cancel()
        time.sleep(BUSY_PAUSE)


def read_stanza(run: TaskRun, stanza: str) -> backup.StanzaState:
    result = run.run(backup.repo_command(stanza, "--output=json", "info"), host=_repo_host(run), check=False,
                     on_line=None, timeout=120, what="pgbackrest info")
    if not result.ok:
        text = (result.stderr or result.stdout).strip()
        hint = (" (the repository cannot be decrypted with BACKUP_CIPHER_PASS: restore the postgres.env it was made "
                "with)") if "cipher" in text.lower() or "decrypt" in text.lower() else ""
        raise TaskError(f"{_repo_host(run).name}: pgbackrest info failed{hint}: {text[-400:]}")
    return backup.stanza_state(result.stdout, stanza)


def system_identifier(run: TaskRun) -> int:
    text = on_leader(run, "SELECT system_identifier FROM pg_control_system();", "reading the system identifier"
                     ).stdout.strip()
    try:
        return int(text)
    except ValueError:
        raise TaskError(f"the leader gave {text!r} for its system identifier") from None


ANOTHER = "the repository holds another cluster's stanza; kbpg never deletes a stanza"


def ensure_stanza(run: TaskRun) -> Outcome:
    """The stanza, made when missing; one made for another database (system id) is refused, never replaced."""
    stanza = _stanza(run)
    repo = _repo_host(run)
    state = read_stanza(run, stanza)
    system_id = system_identifier(run)
    if state.system_id is not None and state.system_id != system_id:
        raise TaskError(f"{repo.name}: {ANOTHER} (stanza {stanza} was made for system id {state.system_id}; this "
                        f"cluster is {system_id}). Move {backup.REPO_PATH} away yourself to start a new repository")
    changed = False
    if state.missing:  # only a stanza that is not there at all is created (never one pgBackRest cannot read)
        result = repo_busy_retried(run, stanza, "stanza-create", STANZA_TIMEOUT)
        if not result.ok:
            text = (result.stderr + result.stdout).strip()
            if "do not match the database" in text or "[028]" in text:
                raise TaskError(f"{repo.name}: {ANOTHER}: {text[-300:]}")
            raise TaskError(f"{repo.name}: pgbackrest stanza-create failed: {text[-400:]}")
        changed = True
        state = read_stanza(run, stanza)
    if state.code not in (0, 2):  # 2: no valid backup yet (the first backup task starts one)
        hint = (" (the repository cannot be read with this BACKUP_CIPHER_PASS: restore the postgres.env it was made "
                "with)") if "unable to load info file" in state.message else ""
        raise TaskError(f"{repo.name}: stanza {stanza}: pgbackrest info says {state.message!r} (code "
                        f"{state.code}){hint}; kbpg never deletes or recreates a stanza")
    run.ctx.state["backup_stanza"] = state
    return Outcome.of(changed, f"stanza {stanza} " + ("created" if changed else "in place")
                      + f" (system id {system_id}, {state.backups} backup(s))")


# --- 7. archiving --------------------------------------------------------------------------------

def check_archiving(run: TaskRun) -> Outcome:
    """The leader archives with pgBackRest (archive_mode needs a restart on a cluster that ran without it: step 02's
    pending restart); then ``pgbackrest check``: a WAL switch archived in the repository."""
    stanza = _stanza(run)
    wanted = backup.archive_parameters(run.settings, run.ctx.selection, run.ctx.credentials)
    shown = on_leader(run, "SELECT current_setting('archive_mode'), current_setting('archive_command');",
                      "reading archive_mode").stdout.strip()
    mode, _, command = shown.partition("|")
    run.ctx.state["backup_archiving"] = False
    if mode != "on":
        return Outcome.unchanged("archiving not running yet", [
            f"archive_mode is {mode or 'unknown'} on the leader and waits for a PostgreSQL restart (step 02's pending "
            "restart: set patroni.apply_pending_restarts = true and re-run, or patronictl restart): backups start "
            "after it; pgbackrest check and the first backup were skipped"])
    if command != wanted["archive_command"]:
        return Outcome.unchanged("archiving not running yet", [
            f"archive_command on the leader is {command!r}, not {wanted['archive_command']!r}: re-run step 02 "
            "(kbpg install --step 02,06); pgbackrest check and the first backup were skipped"])
    result = repo_busy_retried(run, stanza, "check", CHECK_TIMEOUT)
    if not result.ok:
        raise TaskError(f"{_repo_host(run).name}: pgbackrest check failed (WAL not archived): "
                        f"{(result.stderr + result.stdout).strip()[-500:]}")
    run.ctx.state["backup_archiving"] = True
    return Outcome.unchanged(f"archiving to {_repo_host(run).name} checked (a WAL switch archived)")


# --- 8. timers, the restore drill's script --------------------------------------------------------

def install_timers(run: TaskRun) -> Outcome:
    """kbpg-backup@.service and the full/diff timers (schedules checked by systemd-analyze first), the restore
    drill's script and its tmpfiles rule (its scratch space emptied at boot)."""
    settings = run.settings
    for key in ("full_schedule", "diff_schedule"):
        schedule = getattr(settings.backup, key)
        result = run.run(f"systemd-analyze calendar -- {shlex.quote(schedule)} 2>&1", check=False, on_line=None,
                         what=f"checking backup.{key}")
        if not result.ok:
            raise TaskError(f"backup.{key} in kbpg.toml: systemd refuses {schedule!r}: "
                            f"{(result.stdout.strip().splitlines() or ['no reason given'])[-1]}")
    connection = run.connection()
    written = [path for path, text in backup.unit_files(settings, _stanza(run)) if connection.upload(path, text)]
    changes = [", ".join(written) + " written"] if written else []
    if written:
        run.run("systemctl daemon-reload")
    for kind in backup.TIMERS:
        timer = backup.timer_name(kind)
        state = run.run(f"systemctl is-enabled {timer} 2>/dev/null; systemctl is-active {timer} 2>/dev/null; true",
                        on_line=None).stdout.split()
        if state[:2] != ["enabled", "active"] or f"{backup.UNIT_DIR}/{timer}" in written:
            run.run(f"systemctl enable {timer} >/dev/null 2>&1; systemctl restart {timer}", what=f"starting {timer}")
            changes.append(f"{timer} " + ("restarted" if state[:2] == ["enabled", "active"] else "enabled and started"))
    script = backup.drill_script()
    warnings = []
    if script is None:
        warnings.append(f"the restore-drill script is not in this kbpg package: {backup.DRILL_SCRIPT} not installed")
    elif connection.upload(backup.DRILL_SCRIPT, script, mode=0o755):
        changes.append(f"{backup.DRILL_SCRIPT} written")
    tmpfiles_changed = connection.upload(backup.DRILL_TMPFILES, backup.DRILL_TMPFILES_TEXT, mode=0o644)
    root = shlex.quote(backup.DRILL_ROOT)
    fixed = run.run(f"if [ \"$(stat -c '%U:%G %a' {root} 2>/dev/null)\" != 'root:root {backup.DRILL_ROOT_MODE}' ]; then "
                    f"systemd-tmpfiles --create {backup.DRILL_TMPFILES}; chown root:root {root}; "
                    f"chmod 0{backup.DRILL_ROOT_MODE} {root}; "
                    "echo fixed; fi").stdout.strip()
    if tmpfiles_changed:
        changes.append(f"{backup.DRILL_TMPFILES} written")
    if fixed:
        changes.append(f"{backup.DRILL_ROOT} (0{backup.DRILL_ROOT_MODE} root)")
    return Outcome.of(bool(changes), "; ".join(changes) or "backup timers active, restore drill in place", warnings)


# --- 9. the first backup -------------------------------------------------------------------------

def first_backup(run: TaskRun) -> Outcome:
    """A full backup started (not waited for) when the repository has none and none runs."""
    if not run.ctx.state.get("backup_archiving"):
        return Outcome.unchanged("skipped: archiving is not running yet (see the archiving task)")
    stanza = _stanza(run)
    repo = _repo_host(run)
    state = read_stanza(run, stanza)
    if state.backups:
        return Outcome.unchanged(f"{state.backups} backup(s) in the repository")
    active = run.run("systemctl list-units --no-legend --plain --state=active,activating 'kbpg-backup@*' "
                     "2>/dev/null | awk '{print $1}'", host=repo, on_line=None).stdout.split()
    if active:
        return Outcome.unchanged(f"{active[0]} is running (the first backup)")
    run.run("systemctl start --no-block kbpg-backup@full.service", host=repo, what="starting the first full backup")
    return Outcome.changed("first full backup started (kbpg-backup@full.service; kbpg backup list shows it once done)")


STEP = Step("06", "Backups", [
    Task("host", "cluster", check_host),
    Task("packages", "backup", _when_on(install_repo_packages)),
    Task("packages", "db", _when_on(install_db_packages)),
    Task("ssh keys", "backup", _when_on(repo_key)),
    Task("ssh keys", "db", _when_on(db_key)),
    Task("ssh trust", "cluster", _when_on(exchange_trust)),
    Task("config", "backup", _when_on(repo_config)),
    Task("config", "db", _when_on(db_config)),
    Task("ssh check", "cluster", _when_on(check_ssh)),
    Task("stanza", "cluster", _when_on(ensure_stanza)),
    Task("archiving", "cluster", _when_on(check_archiving)),
    Task("timers", "backup", _when_on(install_timers)),
    Task("first backup", "cluster", _when_on(first_backup)),
])

__all__ = ["STEP", "backup_host", "backups_on"]
