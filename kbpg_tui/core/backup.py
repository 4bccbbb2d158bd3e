"""pgBackRest on the backup host and the DB nodes: what kbpg writes, rendered from data, and what it reads back.

Everything here is pure (text in, text out) so that it is tested without a host; step 06
(:mod:`kbpg_tui.core.steps.s06_backup`) puts it on the hosts, step 02 takes :func:`archive_parameters` and
:func:`restore_command` into Patroni's configuration.

- The repository lives on the backup host only, encrypted with ``BACKUP_CIPHER_PASS``, which is written only to the
  backup host's pgbackrest.conf (0640 root:pgbackrest): a DB node's file carries no secret (pgBackRest's pg side
  asks the repository host for the cipher settings).
- The hosts reach each other over SSH with keys made on each host (private keys never leave it), through a
  wrapper that uses kbpg's own ssh_config and a root-owned known_hosts holding only host keys whose fingerprint is
  the one kbpg verified itself for that host (never ssh-keyscan).
- authorized_keys lines kbpg manages carry ``restrict``, ``from=`` and a forced ``command=``: the key runs
  pgbackrest and nothing else, from the other side's address only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from .engine import TaskError

if TYPE_CHECKING:
    from .inventory import Selection
    from .settings import Settings
    from .ssh import Host

REPO_PATH = "/var/lib/pgbackrest"
CONF_DIR = "/etc/pgbackrest"
CONF_PATH = f"{CONF_DIR}/pgbackrest.conf"
REPO_USER = "pgbackrest"
REPO_HOME = "/home/pgbackrest"
DB_USER = "postgres"
DB_HOME = "/var/lib/postgresql"
LOG_PATH = "/var/log/pgbackrest"
SPOOL_PATH = "/var/spool/pgbackrest"
PGBACKREST = "/usr/bin/pgbackrest"
KBPG_LIB = "/usr/local/lib/kbpg"
SSH_WRAPPER = f"{KBPG_LIB}/backup-ssh"
SSH_DIR = "/etc/kbpg/backup"
SSH_CONFIG_PATH = f"{SSH_DIR}/ssh_config"
KNOWN_HOSTS_PATH = f"{SSH_DIR}/known_hosts"
KEY_NAME = "kbpg_backup_ed25519"
KEY_COMMENT = "kbpg-backup@"  # the comment of every key kbpg made: the authorized_keys lines it manages
DRILL_ROOT = "/var/lib/kbpg-drill"
DRILL_SCRIPT = f"{KBPG_LIB}/restore-drill"
DRILL_TMPFILES = "/etc/tmpfiles.d/kbpg-drill.conf"
UNIT_DIR = "/etc/systemd/system"
BACKUP_SERVICE = "kbpg-backup@.service"
TIMERS = ("full", "diff")  # kbpg-backup-full.timer, kbpg-backup-diff.timer
BACKUP_TYPES = ("full", "diff", "incr")
CIPHER_NAME = "BACKUP_CIPHER_PASS"
CIPHER_TYPE = "aes-256-cbc"
ARCHIVE_OFF = "/bin/true"  # archive_command once backups are turned off: WAL recycled, nothing piles up
BACKUP_STANDBY_PRIOR_VERSION = (2, 52)  # backup-standby=prefer exists from 2.52 on; before it, y

_STANZA_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_VERSION_RE = re.compile(r"pgBackRest (\d+)\.(\d+)(?:\.(\d+))?(\S*)")
_PUB_RE = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|sk-ssh-ed25519@openssh\.com|"
                     r"sk-ecdsa-sha2-nistp256@openssh\.com) ([A-Za-z0-9+/]+={0,3})(?: (.*))?$")


class BackupError(TaskError):
    """A backup setting or something read from a host that kbpg cannot work with; the message says which."""


# --- what is on -------------------------------------------------------------------------------

def backup_servers(selection: "Selection") -> tuple:
    return tuple(getattr(selection, "backup_nodes", ()) or ())


def backups_on(settings: "Settings", selection: "Selection") -> bool:
    """Backups are set up: a backup host is selected and ``[backup] enabled`` is true."""
    return bool(backup_servers(selection)) and bool(settings.backup.enabled)


def why_off(settings: "Settings", selection: "Selection") -> str | None:
    """Why backups are not set up (None when they are): said as a warning by step 06, never a failure."""
    if not backup_servers(selection):
        rule = getattr(settings.inventory, "backup_rule", None) or {"ENV": "prod", "ROLE": "backup", "SUBROLE": "backup"}
        shown = ", ".join(f"{key}={value}" for key, value in rule.items())
        return f"no backup host matches {shown}: backups are not set up"
    if not settings.backup.enabled:
        return "[backup] enabled = false in kbpg.toml: backups are not set up"
    return None


def stanza(source: Mapping[str, str] | object) -> str:
    """The stanza: PATRONI_CLUSTER_NAME (from a Context or its credentials), checked for pgBackRest."""
    values = getattr(source, "credentials", source)
    name = (values or {}).get("PATRONI_CLUSTER_NAME", "") if isinstance(values, Mapping) else ""
    if not _STANZA_RE.fullmatch(name or ""):
        raise BackupError(f"PATRONI_CLUSTER_NAME {name!r} cannot name a pgBackRest stanza: 1 to 64 letters, digits, "
                          "'_', '.' or '-'")
    return name


def cipher_pass(values: Mapping[str, str]) -> str:
    value = values.get(CIPHER_NAME, "")
    if not value:
        raise BackupError(f"{CIPHER_NAME} missing from credentials/postgres.env: run kbpg install without --step "
                          "(step 00 adds it while no repository exists)")
    if any(ch in value for ch in "\n\r\0") or value != value.strip():
        raise BackupError(f"{CIPHER_NAME} in credentials/postgres.env has a line break or surrounding space, which "
                          "pgbackrest.conf cannot hold")
    return value


def repo_command(stanza_name: str, *args: str) -> str:
    """pgbackrest as the repository's user on the backup host (over kbpg's root session), shell-quoted."""
    return " ".join(shlex.quote(word) for word in
                    ("runuser", "-u", REPO_USER, "--", "pgbackrest", f"--stanza={stanza_name}", *args))


# --- PostgreSQL / Patroni ----------------------------------------------------------------------

def archive_command(stanza_name: str) -> str:
    return f"pgbackrest --stanza={stanza_name} archive-push %p"


def restore_command(stanza_name: str) -> str:
    return f'pgbackrest --stanza={stanza_name} archive-get %f "%p"'


def archive_parameters(settings: "Settings", selection: "Selection", credentials: Mapping[str, str]) -> dict:
    """PostgreSQL's archiving parameters for Patroni's dynamic configuration: empty while backups are off.

    (Step 02 turns a cluster's archive_command that still runs pgbackrest into :data:`ARCHIVE_OFF` when backups
    are turned off or the backup host leaves servers.tsv: see :func:`neutralised`.)
    """
    if not backups_on(settings, selection):
        return {}
    return {
        "archive_mode": "on",
        "archive_command": archive_command(stanza(credentials)),
        "archive_timeout": f"{settings.backup.archive_timeout}s",
    }


def neutralised(current_parameters: Mapping | None) -> dict:
    """With backups off: the parameters that stop a cluster still archiving to pgBackRest ({} when it does not)."""
    command = str((current_parameters or {}).get("archive_command") or "")
    return {"archive_command": ARCHIVE_OFF} if "pgbackrest" in command else {}


def recovery_conf(settings: "Settings", selection: "Selection", credentials: Mapping[str, str]) -> dict:
    """patroni.yml's postgresql.recovery_conf (a replica past wal_keep_size catches up from the archive)."""
    if not backups_on(settings, selection):
        return {}
    return {"restore_command": restore_command(stanza(credentials))}


# --- pgbackrest.conf ---------------------------------------------------------------------------

def _ini(sections: Sequence[tuple[str, Sequence[tuple[str, object]]]]) -> str:
    out = ["# written by kbpg from kbpg.toml; re-run kbpg install --step 06 to change it"]
    for name, options in sections:
        out.append(f"\n[{name}]")
        for key, value in options:
            text = str(value)
            if any(ch in text for ch in "\n\r\0"):
                raise BackupError(f"pgbackrest.conf: {key} cannot hold a line break")
            out.append(f"{key}={text}")
    return "\n".join(out) + "\n"


def _port_option(prefix: str, host: "Host") -> list[tuple[str, object]]:
    return [(f"{prefix}-host-port", host.port)] if getattr(host, "port", 22) != 22 else []


def render_db_conf(settings: "Settings", stanza_name: str, backup_host: "Host", superuser: str) -> str:
    """A DB node's pgbackrest.conf: where the repository is, async archiving with a spool; no secret."""
    backup = settings.backup
    return _ini([
        ("global", [
            ("repo1-host", backup_host.address),
            ("repo1-host-user", REPO_USER),
            *_port_option("repo1", backup_host),
            ("cmd-ssh", SSH_WRAPPER),
            ("spool-path", SPOOL_PATH),
            ("archive-async", "y"),
            ("archive-push-queue-max", backup.archive_push_queue_max),
            ("compress-type", "zst"),
            ("log-level-console", "warn"),
            ("log-level-file", "info"),
        ]),
        ("global:archive-push", [("process-max", backup.process_max)]),
        ("global:archive-get", [("process-max", backup.process_max)]),
        (stanza_name, [
            ("pg1-path", settings.postgresql.effective_data_dir),
            ("pg1-port", settings.ports.postgresql),
            ("pg1-socket-path", "/var/run/postgresql"),
            ("pg1-user", superuser),  # peer over the socket (pg_ident map kbpg: postgres -> the superuser)
        ]),
    ])


def render_repo_conf(settings: "Settings", stanza_name: str, db_hosts: Sequence["Host"], superuser: str,
                     cipher: str, version: tuple[int, int] | None) -> str:
    """The backup host's pgbackrest.conf: the encrypted repository, retention, and every DB node as pgN-host."""
    backup = settings.backup
    standby = "prefer" if version is not None and version >= BACKUP_STANDBY_PRIOR_VERSION else "y"
    nodes: list[tuple[str, object]] = []
    for index, host in enumerate(db_hosts, start=1):
        nodes += [(f"pg{index}-host", host.address), (f"pg{index}-host-user", DB_USER),
                  *_port_option(f"pg{index}", host),
                  (f"pg{index}-path", settings.postgresql.effective_data_dir),
                  (f"pg{index}-port", settings.ports.postgresql),
                  (f"pg{index}-socket-path", "/var/run/postgresql"),
                  (f"pg{index}-user", superuser)]
    return _ini([
        ("global", [
            ("repo1-path", REPO_PATH),
            ("repo1-cipher-type", CIPHER_TYPE),
            ("repo1-cipher-pass", cipher),
            ("repo1-retention-full", backup.retention_full),
            ("repo1-retention-diff", backup.retention_diff),
            ("repo1-bundle", "y"),
            ("backup-standby", standby),
            ("start-fast", "y"),
            ("process-max", backup.process_max),
            ("compress-type", "zst"),
            ("archive-timeout", 60),
            ("cmd-ssh", SSH_WRAPPER),
            ("log-level-console", "warn"),
            ("log-level-file", "info"),
        ]),
        (stanza_name, nodes),
    ])


def parse_version(text: str) -> tuple[int, int] | None:
    """(major, minor) of ``pgbackrest version``'s answer ("pgBackRest 2.45"), None if it is not one."""
    match = _VERSION_RE.search(text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def version_text(text: str) -> str:
    match = _VERSION_RE.search(text or "")
    return match.group(0) if match else (text.strip().splitlines() or ["no answer"])[-1]


# --- SSH between the hosts ---------------------------------------------------------------------

SSH_CONFIG = f"""# written by kbpg: pgBackRest's SSH between the backup host and the DB nodes ({SSH_WRAPPER})
Host *
    StrictHostKeyChecking yes
    UserKnownHostsFile {KNOWN_HOSTS_PATH}
    GlobalKnownHostsFile /dev/null
    IdentityFile ~/.ssh/{KEY_NAME}
    IdentitiesOnly yes
    BatchMode yes
    ConnectTimeout 10
    ServerAliveInterval 10
    ServerAliveCountMax 3
"""

SSH_WRAPPER_TEXT = f"""#!/bin/sh
# written by kbpg: pgBackRest's cmd-ssh, with kbpg's ssh_config (its pinned host keys, its key)
exec /usr/bin/ssh -F {SSH_CONFIG_PATH} "$@"
"""


def key_dir(user: str) -> str:
    return f"{REPO_HOME if user == REPO_USER else DB_HOME}/.ssh"


def keygen_script(user: str, host_name: str) -> str:
    """Make the user's key pair on its host if missing (the private key never leaves it); print the public key."""
    directory = key_dir(user)
    key = f"{directory}/{KEY_NAME}"
    q = shlex.quote
    return (f"set -e; install -d -o {user} -g {user} -m 0700 {q(directory)}; "
            f"if [ ! -s {q(key)} ] || [ ! -s {q(key + '.pub')} ]; then rm -f {q(key)} {q(key + '.pub')}; "
            f"runuser -u {user} -- ssh-keygen -q -t ed25519 -N '' -C {q(KEY_COMMENT + host_name)} -f {q(key)}; "
            f"echo made; fi; chmod 0600 {q(key)}; echo; cat {q(key + '.pub')}")


def fingerprint_of(blob_b64: str) -> str:
    """OpenSSH's SHA256 fingerprint of a key's base64 blob (as ``ssh-keygen -l`` and kbpg's known_hosts say it)."""
    digest = hashlib.sha256(base64.b64decode(blob_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class PublicKey:
    type: str
    blob: str
    comment: str = ""

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.blob)


def parse_public_key(line: str) -> PublicKey | None:
    match = _PUB_RE.fullmatch(line.strip())
    if not match:
        return None
    try:
        base64.b64decode(match.group(2), validate=True)
    except ValueError:
        return None
    return PublicKey(match.group(1), match.group(2), (match.group(3) or "").strip())


def verified_host_keys(host: "Host", listing: str, verified: Iterable[str]) -> list[PublicKey]:
    """The host keys ``host`` lists (``cat /etc/ssh/ssh_host_*_key.pub``) whose fingerprint is one kbpg verified
    for it itself (its known_hosts or a pin): only those go into the hosts' known_hosts. None matching: refused."""
    wanted = set(verified)
    listed = [key for key in (parse_public_key(line) for line in listing.splitlines()) if key is not None]
    kept = [key for key in listed if key.fingerprint in wanted]
    if not kept:
        raise BackupError(f"{host.name} ({host.address}): the host keys it lists do not include the key kbpg "
                          f"verified ({', '.join(sorted(wanted)) or 'none known'}; listed: "
                          f"{', '.join(k.fingerprint for k in listed) or 'none'}); nothing was written")
    return kept


def known_hosts_entry(host: "Host") -> str:
    port = getattr(host, "port", 22)
    return host.address if port == 22 else f"[{host.address}]:{port}"


def render_known_hosts(keys: Mapping["Host", Sequence[PublicKey]] | Sequence[tuple["Host", Sequence[PublicKey]]]) -> str:
    items = keys.items() if isinstance(keys, Mapping) else keys
    lines = ["# written by kbpg: only host keys kbpg verified itself; re-run kbpg install --step 06 to change it"]
    for host, host_keys in items:
        for key in host_keys:
            lines.append(f"{known_hosts_entry(host)} {key.type} {key.blob}")
    return "\n".join(lines) + "\n"


def authorized_line(key: PublicKey, sources: Sequence[str]) -> str:
    """One managed authorized_keys line: pgbackrest only, from ``sources`` only, nothing else (restrict)."""
    if not key.comment.startswith(KEY_COMMENT):
        raise BackupError(f"key {key.fingerprint} is not one kbpg made (comment {key.comment!r})")
    addresses = ",".join(sources)
    command = f'{PGBACKREST} ${{SSH_ORIGINAL_COMMAND#* }}'
    return f'restrict,from="{addresses}",command="{command}" {key.type} {key.blob} {key.comment}'


def _managed(line: str) -> bool:
    fields = line.strip().split()
    return bool(fields) and not line.lstrip().startswith("#") and fields[-1].startswith(KEY_COMMENT)


def merge_authorized_keys(current: str, managed: Sequence[str]) -> str:
    """``current`` with kbpg's lines (comment ``kbpg-backup@...``) replaced by ``managed``; every other line kept
    byte for byte, in its place."""
    kept = [line for line in current.splitlines(keepends=True) if not _managed(line)]
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    return "".join(kept) + "".join(line + "\n" for line in managed)


# --- systemd --------------------------------------------------------------------------------

def render_service(stanza_name: str) -> str:
    return f"""# written by kbpg: one pgBackRest backup of the cluster, %i = full | diff | incr
[Unit]
Description=kbpg: pgBackRest %i backup of {stanza_name}
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
User={REPO_USER}
Group={REPO_USER}
ExecStart={PGBACKREST} --stanza={stanza_name} --type=%i backup
Nice=10
IOSchedulingClass=idle
TimeoutStartSec=12h
"""


def timer_name(kind: str) -> str:
    return f"kbpg-backup-{kind}.timer"


def render_timer(kind: str, schedule: str) -> str:
    return f"""# written by kbpg from kbpg.toml's backup.{kind}_schedule
[Unit]
Description=kbpg: {kind} pgBackRest backup ({schedule})

[Timer]
OnCalendar={schedule}
Persistent=true
RandomizedDelaySec=60
Unit=kbpg-backup@{kind}.service

[Install]
WantedBy=timers.target
"""


def unit_files(settings: "Settings", stanza_name: str) -> list[tuple[str, str]]:
    """(path, text) of the backup service and its two timers."""
    backup = settings.backup
    return [(f"{UNIT_DIR}/{BACKUP_SERVICE}", render_service(stanza_name)),
            (f"{UNIT_DIR}/{timer_name('full')}", render_timer("full", backup.full_schedule)),
            (f"{UNIT_DIR}/{timer_name('diff')}", render_timer("diff", backup.diff_schedule))]


# The restore drill's scratch space. 0711: the repository user must reach run-<id> (0700, its own) to restore into it
# and run PostgreSQL there; it cannot list the directory, and inbox/ and results/ are 0700 root. R!: a reboot
# mid-drill leaves no scratch copy.
DRILL_ROOT_MODE = "711"
DRILL_TMPFILES_TEXT = f"""# written by kbpg: the restore drill's scratch space; a reboot mid-drill leaves nothing
d {DRILL_ROOT} 0{DRILL_ROOT_MODE} root root -
R! {DRILL_ROOT}/run-*
"""


def drill_script() -> str | None:
    """The restore-drill script shipped in the package (assets/backup/restore-drill, package kbpg_tui.assets.backup), None if absent."""
    from importlib import resources

    try:
        return resources.files("kbpg_tui.assets.backup").joinpath("restore-drill").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError, OSError):
        return None


# --- the repository, as pgbackrest info tells it ------------------------------------------------

@dataclass
class StanzaState:
    """What ``pgbackrest --output=json info`` says about one stanza (only what step 06 acts on)."""

    code: int | None  # pgBackRest's status code: 0 ok, 1 missing stanza path, 2 no valid backups, 3 missing data...
    message: str
    system_ids: list[int] = field(default_factory=list)  # the databases the stanza was made for, oldest first
    backups: int = 0

    @property
    def missing(self) -> bool:
        return self.code == 1

    @property
    def system_id(self) -> int | None:
        return self.system_ids[-1] if self.system_ids else None


def stanza_state(text: str, stanza_name: str) -> StanzaState:
    try:
        # strict=False: pgBackRest puts raw control characters in its messages (a file it could not decrypt, shown).
        data = json.loads(text, strict=False)
    except ValueError:
        raise BackupError(f"pgbackrest info gave no JSON: {(text or '').strip()[:200]!r}") from None
    entries = [entry for entry in data if isinstance(entry, dict) and entry.get("name") == stanza_name] \
        if isinstance(data, list) else []
    if not entries:
        return StanzaState(1, "missing stanza path")
    entry = entries[0]
    status = entry.get("status") or {}
    databases = sorted((db for db in entry.get("db") or [] if isinstance(db, dict)), key=lambda db: db.get("id", 0))
    ids = [int(db["system-id"]) for db in databases if isinstance(db.get("system-id"), int)]
    message = str(status.get("message", ""))
    repo_messages = [str((repo.get("status") or {}).get("message", "")) for repo in entry.get("repo") or []
                     if isinstance(repo, dict) and (repo.get("status") or {}).get("code") not in (0, None)]
    if repo_messages:  # "other": the reason is the repository's
        message = "; ".join([message, *(m.splitlines()[0][:300] for m in repo_messages if m)])
    return StanzaState(status.get("code"), message, ids, len(entry.get("backup") or []))


# What a repository directory may hold for kbpg to take it: nothing, or this stanza only.
REPO_PROBE = r"""
repo={repo}
if [ ! -d "$repo" ]; then echo 'state missing'; exit 0; fi
echo "state $(stat -c '%U:%G %a' "$repo")"
for d in "$repo"/* "$repo"/.[!.]*; do [ -e "$d" ] || continue; echo "top ${{d##*/}}"; done
for kind in archive backup; do
  for d in "$repo/$kind"/* "$repo/$kind"/.[!.]*; do [ -e "$d" ] || continue; echo "$kind ${{d##*/}}"; done
done
"""


@dataclass
class RepoDir:
    exists: bool
    owner: str = ""
    mode: str = ""
    top: list[str] = field(default_factory=list)
    stanzas: dict[str, list[str]] = field(default_factory=dict)  # archive|backup -> names


def parse_repo_probe(text: str) -> RepoDir:
    repo = RepoDir(False)
    for line in text.splitlines():
        word, _, rest = line.partition(" ")
        if word == "state":
            if rest != "missing":
                owner, _, mode = rest.partition(" ")
                repo = RepoDir(True, owner, mode, repo.top, repo.stanzas)
        elif word == "top":
            repo.top.append(rest)
        elif word in ("archive", "backup"):
            repo.stanzas.setdefault(word, []).append(rest)
    return repo


def repo_refusal(repo: RepoDir, stanza_name: str) -> str | None:
    """Why kbpg must not take this repository directory (None: empty, package-made, or holding this stanza only)."""
    others = sorted({name for names in repo.stanzas.values() for name in names if name != stanza_name})
    if others:
        return (f"{REPO_PATH} holds another cluster's stanza ({', '.join(others)}; this cluster's is {stanza_name}): "
                "kbpg never deletes a stanza. Give this cluster another backup host, or move that repository away "
                "yourself")
    strange = sorted(name for name in repo.top if name not in ("archive", "backup"))
    if strange:
        shown = ", ".join(strange[:5]) + (" ..." if len(strange) > 5 else "")
        return (f"{REPO_PATH} holds files that are not a pgBackRest repository ({shown}): kbpg takes only an empty "
                "directory or this cluster's repository; move them away and re-run")
    return None
