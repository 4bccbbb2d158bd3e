"""Backups, day 2: ``kbpg backup now | list | check`` and the figures of diagnostics' check 18.

pgBackRest runs on the backup host as its repository user (``runuser -u pgbackrest -- pgbackrest --stanza=S ...``,
:func:`kbpg_tui.core.backup.repo_command`) over kbpg's root SSH session; what it says comes back as
``pgbackrest --output=json info``, parsed here into :class:`BackupInfo` (no host needed: tests read recorded
samples in tests/fixtures/backup/).

- ``backup now`` starts the systemd unit ``kbpg-backup@TYPE.service`` that step 06 installed (the same unit the
  timers start: one way a backup is taken, in the unit's cgroup, going on if kbpg is interrupted) and, unless told
  not to, follows it: progress from pgBackRest's backup lock (size done of size), then the new backup set from
  ``info``. A ``kbpg-backup@*`` unit already running, or any pgBackRest backup holding the stanza's lock, is
  :class:`BackupBusy` (exit 3) naming it and since when.
- ``backup list``: every backup set, the WAL archive's range and the window a point-in-time restore can reach.
- ``backup check`` / check 18: ``pgbackrest check`` (one WAL switch, archived within the timeout), the newest
  backup's age and the archiver's state on the primary (``pg_stat_archiver`` as the monitor role through the LB),
  judged by :func:`assess` against ``[backup] warn_backup_age_hours`` and ``warn_archive_lag_seconds``.

Ages are taken on the clock of whoever wrote the time: a backup's stop against the backup host's ``date +%s`` (read
in the same command), the archiver's times against the primary's ``now()``. kbpg's own clock is never compared.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from .. import backup as bk
from ..engine import Context, TaskError
from ..events import Level, Message, Progress
from ..logs import redact
from ..ssh import Cancelled, Host, Result, SshError

BACKUP_TYPES = bk.BACKUP_TYPES  # full | diff | incr
UNIT_PATTERN = "kbpg-backup@*.service"
DIAGNOSE_ARCHIVE_TIMEOUT = 20  # s: `pgbackrest check` in diagnostics (one WAL switch, archived within this)
CLI_ARCHIVE_TIMEOUT = 60  # s: `kbpg backup check` may wait as long as pgBackRest's own default
POLL_SECONDS = 3.0
START_TIMEOUT = 60.0  # s for systemd to start the unit's new run after `systemctl start --no-block`
JOURNAL_LINES = 15

# pgBackRest's stanza status codes (command/info/info.c)
STATUS_TEXT = {0: "ok", 1: "missing stanza path", 2: "no valid backups", 3: "missing stanza data",
               4: "different across repos", 5: "database mismatch across repos", 6: "requested backup not found",
               99: "other"}
NO_BACKUP = 2


class InfoError(ValueError):
    """``pgbackrest info``'s answer is not what kbpg can read; the message quotes the start of it."""


class BackupError(TaskError):
    """A backup command could not do its work: the message names the host and what pgBackRest or systemd said."""


class BackupBusy(BackupError):
    """A backup is already running (exit 3): the message names it and since when."""


# --- pgbackrest info --output=json -----------------------------------------------------------------

@dataclass
class BackupSet:
    label: str
    type: str  # full | diff | incr
    start: datetime  # UTC
    stop: datetime  # UTC
    size: int | None  # bytes of the database as restored
    repo_size: int | None  # bytes this backup needs in the repository (with the ones it references)
    wal_start: str | None
    wal_stop: str | None
    delta: int | None = None  # bytes copied by this backup
    repo_delta: int | None = None  # bytes this backup added to the repository
    prior: str | None = None
    error: bool = False  # pgBackRest found page checksum errors while copying
    version: str = ""  # pgBackRest's version that took it

    @property
    def duration(self) -> float:
        return (self.stop - self.start).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(start=self.start.isoformat(), stop=self.stop.isoformat(), duration=self.duration)
        return data


@dataclass
class BackupInfo:
    stanza: str
    status_code: int | None
    status_message: str
    backups: list[BackupSet] = field(default_factory=list)  # oldest first
    archive_min: str | None = None
    archive_max: str | None = None
    running: bool = False  # a backup/expire holds the stanza's lock
    running_size: int | None = None  # bytes to copy (pgBackRest >= 2.48 says it)
    running_done: int | None = None  # bytes copied so far
    cipher: str = ""
    repo_messages: list[str] = field(default_factory=list)  # each repository's own status, when not ok

    @property
    def ok(self) -> bool:
        return self.status_code == 0

    @property
    def newest(self) -> BackupSet | None:
        return max(self.backups, key=lambda b: b.stop, default=None)

    @property
    def oldest(self) -> BackupSet | None:
        return min(self.backups, key=lambda b: b.stop, default=None)

    def last(self, kind: str) -> BackupSet | None:
        return max((b for b in self.backups if b.type == kind), key=lambda b: b.stop, default=None)

    @property
    def status_text(self) -> str:
        """pgBackRest's status in words, with each repository's own message when it says more ("other")."""
        text = self.status_message or STATUS_TEXT.get(self.status_code or 0, "unknown")
        extra = [m for m in self.repo_messages if m and m != text]
        return text + (f": {'; '.join(extra)}" if extra else "")

    @property
    def progress(self) -> float | None:
        if not self.running or not self.running_size:
            return None
        return max(0.0, min(1.0, (self.running_done or 0) / self.running_size))

    def to_dict(self) -> dict[str, Any]:
        return {"stanza": self.stanza, "status": {"code": self.status_code, "message": self.status_text},
                "running": self.running, "running_size": self.running_size, "running_done": self.running_done,
                "cipher": self.cipher, "archive": {"min": self.archive_min, "max": self.archive_max},
                "backups": [b.to_dict() for b in self.backups]}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _when(value: Any, what: str) -> datetime:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InfoError(f"pgbackrest info: {what} is not a time ({value!r})")
    return datetime.fromtimestamp(value, tz=timezone.utc)


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _backup_set(item: Any) -> BackupSet:
    if not isinstance(item, dict) or not _text(item.get("label")):
        raise InfoError(f"pgbackrest info: a backup without a label ({str(item)[:120]})")
    label = item["label"]
    stamps, info, archive = _dict(item.get("timestamp")), _dict(item.get("info")), _dict(item.get("archive"))
    repository = _dict(info.get("repository"))
    return BackupSet(label=label, type=str(item.get("type") or "?"),
                     start=_when(stamps.get("start"), f"{label}'s start"),
                     stop=_when(stamps.get("stop"), f"{label}'s stop"),
                     size=_int(info.get("size")), repo_size=_int(repository.get("size")),
                     wal_start=_text(archive.get("start")), wal_stop=_text(archive.get("stop")),
                     delta=_int(info.get("delta")), repo_delta=_int(repository.get("delta")),
                     prior=_text(item.get("prior")), error=item.get("error") is True,
                     version=str(_dict(item.get("backrest")).get("version") or ""))


def parse_info(json_text: str, stanza: str) -> BackupInfo:
    """``pgbackrest --stanza=S --output=json info`` (pgBackRest 2.4x/2.5x) as a :class:`BackupInfo`.

    A stanza the answer does not list reads as pgBackRest's own "missing stanza path" (code 1). The WAL range is
    the current database's (after a major upgrade the archive lists older ones too). Not JSON, or not pgBackRest's
    shape: :class:`InfoError` quoting the start of the text.
    """
    try:
        data = json.loads(json_text)
    except ValueError:
        shown = redact((json_text or "").strip())[:200]
        raise InfoError(f"pgbackrest info gave no JSON: {shown!r}") from None
    if not isinstance(data, list) or not all(isinstance(entry, dict) for entry in data):
        raise InfoError(f"pgbackrest info: not a list of stanzas: {redact(json_text.strip())[:200]!r}")
    entry = next((e for e in data if e.get("name") == stanza), None)
    if entry is None:
        return BackupInfo(stanza, 1, STATUS_TEXT[1])
    status = _dict(entry.get("status"))
    lock = _dict(_dict(status.get("lock")).get("backup"))
    repos = [_dict(r) for r in entry.get("repo") or []]
    repo_messages = [str(_dict(r.get("status")).get("message") or "") for r in repos
                     if _dict(r.get("status")).get("code") not in (0, None)]
    backups = sorted((_backup_set(item) for item in entry.get("backup") or []), key=lambda b: (b.stop, b.label))
    databases = [_dict(db) for db in entry.get("db") or []]
    current = max((_int(db.get("id")) or 0 for db in databases), default=None)
    archives = [_dict(a) for a in entry.get("archive") or []]
    mine = [a for a in archives if _dict(a.get("database")).get("id") == current] or archives[-1:]
    return BackupInfo(
        stanza=stanza, status_code=_int(status.get("code")), status_message=str(status.get("message") or ""),
        backups=backups,
        archive_min=min((m for a in mine if (m := _text(a.get("min")))), default=None),
        archive_max=max((m for a in mine if (m := _text(a.get("max")))), default=None),
        running=lock.get("held") is True, running_size=_int(lock.get("size")),
        running_done=_int(lock.get("size-cplt")), cipher=str(entry.get("cipher") or ""),
        repo_messages=repo_messages)


# --- on the backup host ------------------------------------------------------------------------------

def info_script(stanza: str) -> str:
    """The backup host's clock (first line, epoch seconds), then ``info --output=json``."""
    return f"date +%s && {bk.repo_command(stanza, '--output=json', 'info')}"


def check_script(stanza: str, archive_timeout: int) -> str:
    return bk.repo_command(stanza, f"--archive-timeout={archive_timeout}", "check")


_ERROR_RE = re.compile(r"(?:^|\s)(?:ERROR|ASSERT): \[\d+\]")


def pgbackrest_error(result: Result) -> str:
    """pgBackRest's own words for a failure: its ERROR line (with the code), else the output's last line."""
    text = redact((result.stderr or "") + "\n" + (result.stdout or ""))
    for line in text.splitlines():  # on stdout (log-level-console) it comes after a timestamp and "P00  "
        found = _ERROR_RE.search(line)
        if found:
            return line[found.start():].strip()[:300]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(("HINT:", "WARN:"))] or lines
    return (said[0] if said else f"exit {result.exit_status}, no output")[:300]


def parse_info_output(stdout: str, stanza: str) -> tuple[float, BackupInfo]:
    """(the backup host's clock, the info) from :func:`info_script`'s output."""
    first, _, rest = (stdout or "").partition("\n")
    try:
        now = float(first.strip())
    except ValueError:
        raise InfoError(f"the backup host's clock: not a number ({first.strip()[:40]!r})") from None
    return now, parse_info(rest, stanza)


Runner = Callable[[Host, str, float], Result]  # (host, script, timeout) -> the command's result, never raising on exit


def pool_runner(ctx: Context) -> Runner:
    """Run a script as root on a host of the run's pool; a non-zero exit is returned, not raised."""
    def run(host: Host, script: str, timeout: float) -> Result:
        return ctx.pool.get(host).run(script, timeout=timeout, check=False)
    return run


def read_info(run: Runner, host: Host, stanza: str, timeout: float) -> tuple[float, BackupInfo]:
    result = run(host, info_script(stanza), timeout)
    if not result.ok:
        raise BackupError(f"{host.name}: pgbackrest info failed: {pgbackrest_error(result)}")
    try:
        return parse_info_output(result.stdout, stanza)
    except InfoError as exc:
        raise BackupError(f"{host.name}: {exc}") from None


def run_check(run: Runner, host: Host, stanza: str, archive_timeout: int, timeout: float) -> str | None:
    """``pgbackrest check`` on the backup host: None when it passed, else pgBackRest's error line."""
    result = run(host, check_script(stanza, archive_timeout), timeout)
    return None if result.ok else pgbackrest_error(result)


# --- the archiver, on the primary ---------------------------------------------------------------------

ARCHIVER_SQL = (
    "SELECT host(inet_server_addr()), a.archived_count, a.last_archived_wal, "
    "extract(epoch FROM now() - a.last_archived_time)::float8, a.failed_count, a.last_failed_wal, "
    "extract(epoch FROM now() - a.last_failed_time)::float8, "
    "extract(epoch FROM now() - pg_postmaster_start_time())::float8, "
    "current_setting('archive_mode'), pg_walfile_name(pg_current_wal_lsn()), "
    "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size') "
    "FROM pg_stat_archiver a")


@dataclass
class ArchiverState:
    """``pg_stat_archiver`` on the primary, ages in seconds on the primary's clock."""

    server: str  # the primary's address (the name is found from the DB nodes)
    archived_count: int
    last_archived_wal: str | None
    last_archived_age: float | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_age: float | None
    uptime: float  # since the postmaster started
    archive_mode: str
    current_wal: str | None
    segment_size: int | None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> ArchiverState:
        (server, archived, last_wal, last_age, failed, failed_wal, failed_age, uptime, mode, current,
         segment) = row
        return cls(str(server or ""), int(archived or 0), last_wal, _float(last_age), int(failed or 0), failed_wal,
                   _float(failed_age), _float(uptime) or 0.0, str(mode or ""), current,
                   int(segment) if segment else None)

    @property
    def failing(self) -> bool:
        """The archiver's latest attempt failed (no success since)."""
        return self.last_failed_age is not None and (self.last_archived_age is None
                                                      or self.last_failed_age < self.last_archived_age)

    @property
    def waiting(self) -> int | None:
        """Completed WAL segments not archived yet (None when it cannot be told: another timeline, a .history)."""
        return segments_between(self.last_archived_wal, self.current_wal, self.segment_size)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failing": self.failing, "waiting": self.waiting}


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


_SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")


def segments_between(archived: str | None, current: str | None, segment_size: int | None) -> int | None:
    """Segments completed after ``archived`` and before ``current`` (the one being written): 0 = all archived."""
    if not archived or not current or not segment_size:
        return None
    a, c = _SEGMENT_RE.match(archived), _SEGMENT_RE.match(current)
    if not a or not c or a.group(1) != c.group(1):
        return None
    per_id = 0x100000000 // segment_size
    number = lambda m: int(m.group(2), 16) * per_id + int(m.group(3), 16)  # noqa: E731
    return max(0, number(c) - number(a) - 1)


def read_archiver(ctx: Context, timeout: float) -> ArchiverState:
    """pg_stat_archiver on the primary, as the monitor role through the LB's write port."""
    import psycopg

    from .. import cluster

    address, port = ctx.settings.network.lb_address, ctx.settings.ports.haproxy_write
    try:
        with psycopg.connect(host=address, port=port, dbname="postgres", connect_timeout=max(1, int(timeout)),
                             autocommit=True, application_name="kbpg-backup", **cluster.login(ctx, "monitor")) as conn:
            row = conn.execute(ARCHIVER_SQL).fetchone()
    except psycopg.Error as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackupError(f"LB {address}:{port}: pg_stat_archiver: {redact(text)[:200]}") from None
    if row is None:
        raise BackupError(f"LB {address}:{port}: pg_stat_archiver gave no row")
    return ArchiverState.from_row(row)


# --- judging: check 18 and `kbpg backup check` ----------------------------------------------------------

def age_text(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 120 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.1f} d"


def size_text(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


@dataclass
class Assessment:
    verdict: str  # "pass" | "warn" | "fail"
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)


def _name(server: str, names: dict[str, str]) -> str:
    return names.get(server, server or "the primary")


def assess(info: BackupInfo | None, host_now: float | None, archiver: ArchiverState | None, check_error: str | None,
           warn_backup_age_hours: int, warn_archive_lag_seconds: int, *, info_error: str | None = None,
           archiver_error: str | None = None, check_ran: bool = True,
           names: dict[str, str] | None = None) -> Assessment:
    """The verdict of check 18 from what was read (any part may be missing, its error given instead).

    Fail: the stanza's status is not ok (no backup at all, none running), ``pgbackrest check`` failed, the archiver
    has been failing for longer than ``warn_archive_lag_seconds``, or archive_mode is off on the primary. Warn: the
    newest backup is older than ``warn_backup_age_hours``, completed WAL waits unarchived longer than the limit,
    the archiver's last attempt failed (within the limit), the first backup is still running, or a backup set
    carries page checksum errors. The reason names the figures either way.
    """
    names = names or {}
    fails: list[str] = []
    warns: list[str] = []
    facts: list[str] = []
    figures: dict[str, Any] = {}
    # the repository
    if info is None:
        fails.append(f"pgbackrest info: {info_error or 'not read'}")
    else:
        figures["stanza"] = {"code": info.status_code, "message": info.status_text, "backups": len(info.backups),
                             "running": info.running}
        newest = info.newest
        if info.status_code == NO_BACKUP and not info.backups:
            if info.running:
                done = f", {info.progress:.0%} done" if info.progress is not None else ""
                warns.append(f"no backup yet: the first one is running{done}")
            else:
                fails.append(f"stanza {info.stanza}: no backup (start one with `kbpg backup now --type full`)")
        elif not info.ok:
            fails.append(f"stanza {info.stanza}: {info.status_text} (pgBackRest status {info.status_code})")
        if newest is not None and host_now is not None:
            full = info.last("full")
            if full is not None:
                full_age = host_now - full.stop.timestamp()
                facts.append(f"last full {age_text(full_age)} ago ({full.label})")
                figures["last_full"] = {"label": full.label, "age_seconds": round(full_age, 1)}
            age = host_now - newest.stop.timestamp()
            figures["newest"] = {"label": newest.label, "type": newest.type, "age_seconds": round(age, 1)}
            if newest is not full:
                facts.append(f"newest {newest.type} {age_text(age)} ago ({newest.label})")
            if age > warn_backup_age_hours * 3600:
                warns.append(f"the newest backup is {age_text(age)} old (backup.warn_backup_age_hours = "
                             f"{warn_backup_age_hours}): are the timers running? (systemctl list-timers 'kbpg-backup-*' "
                             "on the backup host)")
            damaged = [b.label for b in info.backups if b.error]
            if damaged:
                warns.append(f"backup(s) {', '.join(damaged)} found page checksum errors while copying")
    # the archiver on the primary
    if archiver is None:
        if archiver_error:
            fails.append(f"pg_stat_archiver: {archiver_error}")
    else:
        primary = _name(archiver.server, names)
        figures["archiver"] = archiver.to_dict()
        limit = warn_archive_lag_seconds
        last = (f"last archived WAL {age_text(archiver.last_archived_age)} ago"
                if archiver.last_archived_age is not None else "no WAL archived yet")
        if archiver.archive_mode not in ("on", "always"):
            fails.append(f"archive_mode is {archiver.archive_mode or '?'} on {primary}: no WAL is archived (a restart "
                         "is pending after step 06: `kbpg install` with patroni.apply_pending_restarts, or "
                         "`patronictl restart`)")
        elif archiver.failing:
            since = archiver.last_archived_age if archiver.last_archived_age is not None else archiver.uptime
            failed = (f"archiving fails on {primary}: last failure {age_text(archiver.last_failed_age or 0)} ago "
                      f"({archiver.last_failed_wal}), {last}")
            (fails if since > limit else warns).append(failed + ("" if since > limit else " (retrying)"))
        else:
            waiting = archiver.waiting
            if archiver.last_archived_age is None and archiver.uptime > limit and waiting != 0:
                warns.append(f"no WAL archived on {primary} since it started {age_text(archiver.uptime)} ago")
            elif archiver.last_archived_age is not None and archiver.last_archived_age > limit and waiting != 0:
                queued = f", {waiting} completed segment(s) waiting" if waiting else ""
                warns.append(f"the newest archived WAL on {primary} is {age_text(archiver.last_archived_age)} old "
                             f"(backup.warn_archive_lag_seconds = {limit}){queued}")
            else:
                facts.append(f"{last} on {primary}")
    # pgbackrest check
    if check_ran:
        figures["check"] = {"ok": check_error is None, "error": check_error}
        if check_error is None:
            facts.append("pgbackrest check ok")
        else:
            fails.append(f"pgbackrest check failed: {check_error}")
    figures["facts"] = facts
    if fails:
        return Assessment("fail", "; ".join(fails + warns + facts), figures)
    if warns:
        return Assessment("warn", "; ".join(warns + facts), figures)
    return Assessment("pass", ", ".join(facts) or "backups ok", figures)


@dataclass
class Observation:
    """What :func:`observe` read, and its verdict."""

    host: Host
    stanza: str
    info: BackupInfo | None
    host_now: float | None
    archiver: ArchiverState | None
    assessment: Assessment


def observe(ctx: Context, run: Runner, archiver: Callable[[], ArchiverState], host: Host, timeout: float,
            archive_timeout: int, check: bool = True) -> Observation:
    """info, then ``pgbackrest check`` (its WAL switch is archived before the archiver is read), then the
    archiver: every part read even when another failed, each failure one line of the verdict."""
    settings = ctx.settings.backup
    stanza = bk.stanza(ctx)
    info = host_now = state = None
    info_error = archiver_error = check_error = None
    reached = True
    try:
        host_now, info = read_info(run, host, stanza, timeout)
    except BackupError as exc:
        info_error = _first_line(exc)
    except SshError as exc:  # the host did not answer: `check` would wait for it again
        info_error, reached = _first_line(exc), False
    check = check and reached
    if check:
        try:
            check_error = run_check(run, host, stanza, archive_timeout, archive_timeout + timeout)
        except SshError as exc:
            check_error = _first_line(exc)
    try:
        state = archiver()
    except (BackupError, TaskError) as exc:
        archiver_error = _first_line(exc)
    names = {h.address: h.name for h in ctx.db_hosts}
    verdict = assess(info, host_now, state, check_error, settings.warn_backup_age_hours,
                     settings.warn_archive_lag_seconds, info_error=info_error, archiver_error=archiver_error,
                     check_ran=check, names=names)
    return Observation(host, stanza, info, host_now, state, verdict)


def _first_line(exc: BaseException) -> str:
    text = redact(str(exc)).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:300]


# --- commands -----------------------------------------------------------------------------------------

def refusal(ctx: Context) -> str | None:
    """Why there is nothing to back up with (None when backups are set up): the CLI's exit 2."""
    reason = bk.why_off(ctx.settings, ctx.selection)
    if reason:
        return reason + " (see [inventory.backup_rule] and [backup] in kbpg.toml)"
    return None


def the_host(ctx: Context) -> Host:
    host = ctx.backup_host
    if host is None:
        raise BackupError("no backup host selected")
    return host


def backup_check(ctx: Context, timeout: float = 10.0, archive_timeout: int = CLI_ARCHIVE_TIMEOUT) -> Observation:
    """``kbpg backup check``: check 18's reading, with pgBackRest's own default archive timeout."""
    host = the_host(ctx)
    return observe(ctx, pool_runner(ctx), lambda: read_archiver(ctx, timeout), host, timeout, archive_timeout)


@dataclass
class Listing:
    host: Host
    info: BackupInfo
    host_now: float
    archiver: ArchiverState | None
    archiver_error: str | None

    def window(self) -> str:
        """Where a point-in-time restore can go: from the oldest backup's end to the newest archived WAL."""
        oldest = self.info.oldest
        if oldest is None:
            return "no backup: nothing can be restored yet"
        start = oldest.stop.strftime("%Y-%m-%d %H:%M:%S UTC")
        if self.archiver is not None and self.archiver.last_archived_age is not None:
            end = f"the newest archived WAL, {age_text(self.archiver.last_archived_age)} ago"
            if self.archiver.last_archived_wal:
                end += f" ({self.archiver.last_archived_wal})"
        else:
            end = f"the newest archived WAL ({self.info.archive_max or '?'}" + (
                f"; its time unknown: {self.archiver_error})" if self.archiver_error else ")")
        return f"restorable from {start} to {end}"

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host.name, **self.info.to_dict(), "host_clock": self.host_now,
                "archiver": self.archiver.to_dict() if self.archiver else None, "archiver_error": self.archiver_error,
                "window": self.window(),
                "restorable_from": self.info.oldest.stop.isoformat() if self.info.oldest else None}


def backup_list(ctx: Context, timeout: float = 10.0) -> Listing:
    host = the_host(ctx)
    host_now, info = read_info(pool_runner(ctx), host, bk.stanza(ctx), timeout)
    archiver, error = None, None
    try:
        archiver = read_archiver(ctx, timeout)
    except (BackupError, TaskError) as exc:
        error = _first_line(exc)
    return Listing(host, info, host_now, archiver, error)


# --- backup now ---------------------------------------------------------------------------------------

def unit_name(kind: str) -> str:
    if kind not in BACKUP_TYPES:
        raise ValueError(f"backup type {kind!r}: one of {', '.join(BACKUP_TYPES)}")
    return f"kbpg-backup@{kind}.service"


# Each kbpg-backup@ unit that is running (activating: a oneshot's run), with when it started in epoch seconds on
# the host's clock (from its monotonic start: every systemd has it, whatever its timestamp options).
RUNNING_SCRIPT = r"""
now=$(date +%s); up=$(cut -d' ' -f1 /proc/uptime)
for unit in $(systemctl list-units --all --plain --no-legend --no-pager --type=service 'kbpg-backup@*' | awk '{print $1}'); do
  state=$(systemctl show -p ActiveState --value "$unit")
  case "$state" in activating|active|reloading|deactivating) ;; *) continue ;; esac
  mono=$(systemctl show -p InactiveExitTimestampMonotonic --value "$unit")
  echo "running $unit $state $(awk -v n="$now" -v u="$up" -v m="${mono:-0}" 'BEGIN { printf "%d", n - (u - m / 1000000) }')"
done
echo "now $now"
"""


@dataclass
class Running:
    unit: str
    state: str
    since: float  # epoch seconds on the backup host's clock

    def describe(self, host: Host, now: float) -> str:
        when = datetime.fromtimestamp(self.since, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"{self.unit} is already running on {host.name}, since {when} ({age_text(now - self.since)} ago)"


def parse_running(stdout: str) -> tuple[list[Running], float | None]:
    found, now = [], None
    for line in stdout.splitlines():
        words = line.split()
        if len(words) == 4 and words[0] == "running":
            try:
                found.append(Running(words[1], words[2], float(words[3])))
            except ValueError:
                continue
        elif len(words) == 2 and words[0] == "now":
            try:
                now = float(words[1])
            except ValueError:
                pass
    return found, now


SHOW_PROPERTIES = ("ActiveState", "SubState", "Result", "InvocationID", "ExecMainStatus")


def show_script(unit: str) -> str:
    return f"systemctl show {' '.join('-p ' + p for p in SHOW_PROPERTIES)} {shlex.quote(unit)}"


def parse_show(stdout: str) -> dict[str, str]:
    values = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


@dataclass
class NowResult:
    host: Host
    unit: str
    kind: str
    waited: bool
    ok: bool
    started: float  # epoch, the backup host's clock
    elapsed: float  # seconds kbpg followed it
    backup: BackupSet | None = None
    error: str = ""
    journal: str = ""
    stopped_watching: bool = False  # Ctrl-C: the backup goes on in its unit

    def lines(self) -> list[str]:
        if self.stopped_watching:
            return [f"{self.unit} goes on on {self.host.name}: kbpg stopped watching it (`kbpg backup list` shows "
                    "it once done)"]
        if not self.waited:
            return [f"{self.unit} started on {self.host.name}; `kbpg backup list` shows it once done "
                    f"(journalctl -u {self.unit} on {self.host.name} follows it)"]
        if not self.ok:
            out = [f"{self.unit} on {self.host.name} FAILED: {self.error}"]
            out += [f"   | {line}" for line in self.journal.splitlines()]
            return out
        b = self.backup
        if b is None:
            return [f"{self.unit} on {self.host.name} succeeded in {self.elapsed:.0f} s"]
        return [f"backup {b.label} ({b.type}) done on {self.host.name} in {b.duration:.0f} s: database "
                f"{size_text(b.size)}, this backup {size_text(b.repo_delta)} in the repository "
                f"(repository size for a restore {size_text(b.repo_size)}), WAL {b.wal_start} .. {b.wal_stop}"]

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host.name, "unit": self.unit, "type": self.kind, "waited": self.waited, "ok": self.ok,
                "started": datetime.fromtimestamp(self.started, tz=timezone.utc).isoformat(),
                "elapsed": round(self.elapsed, 1), "backup": self.backup.to_dict() if self.backup else None,
                "error": self.error, "journal": self.journal, "stopped_watching": self.stopped_watching}


def busy_reason(run: Runner, host: Host, stanza: str, timeout: float) -> str | None:
    """Why a backup cannot start now (a kbpg-backup@ unit running, or pgBackRest's backup lock held), or None."""
    result = run(host, RUNNING_SCRIPT, timeout)
    if not result.ok:
        raise BackupError(f"{host.name}: cannot list the kbpg-backup@ units: {result.tail(3) or 'no output'}")
    running, now = parse_running(result.stdout)
    if running:
        return "; ".join(r.describe(host, now if now is not None else r.since) for r in running)
    _now, info = read_info(run, host, stanza, timeout)
    if info.running:
        done = f", {info.progress:.0%} done" if info.progress is not None else ""
        return (f"a pgBackRest backup or expire of stanza {stanza} is running on {host.name} (its lock is held{done}; "
                "not one of kbpg's units: started by hand?)")
    return None


def backup_now(ctx: Context, kind: str, wait: bool, on_started: Callable[[], None] | None = None,
               timeout: float = 15.0, poll: float = POLL_SECONDS, sleep: Callable[[float], bool] | None = None
               ) -> NowResult:
    """Start ``kbpg-backup@KIND.service`` on the backup host and (``wait``) follow it to its end.

    :class:`BackupBusy` when a backup runs already; :class:`BackupError` when it cannot be started. ``on_started``
    is called once systemd has started the new run (the CLI releases the run lock there: following a backup for
    hours must not block an install). ``ctx.cancel`` stops the following, never the backup.
    """
    unit = unit_name(kind)
    host = the_host(ctx)
    stanza = bk.stanza(ctx)
    run = pool_runner(ctx)
    pause = sleep or (lambda seconds: ctx.cancel.wait(seconds))
    busy = busy_reason(run, host, stanza, timeout)
    if busy:
        raise BackupBusy(busy)
    _before_now, before = read_info(run, host, stanza, timeout)
    known = {b.label for b in before.backups}
    shown = run(host, show_script(unit), timeout)
    if not shown.ok:
        raise BackupError(f"{host.name}: systemctl show {unit}: {shown.tail(3) or 'no output'}")
    old_id = parse_show(shown.stdout).get("InvocationID", "")
    clock = time.monotonic()
    started = run(host, f"date +%s && systemctl start --no-block {shlex.quote(unit)}", timeout)
    if not started.ok:
        raise BackupError(f"{host.name}: systemctl start {unit} failed: {started.tail(5) or 'no output'} (is step 06 "
                          "installed? `kbpg install --step 06`)")
    try:
        start_epoch = float(started.stdout.split()[0])
    except (IndexError, ValueError):
        start_epoch = time.time()
    ctx.sink(Message(Level.INFO, f"{unit} started", host.name))
    following = _Following(ctx, run, host, stanza, unit, kind, wait, start_epoch, clock, old_id, known, timeout, poll,
                           pause)
    try:
        return following.follow(on_started)
    except Cancelled:  # Ctrl-C while a command ran: the backup (or systemd's job for it) goes on
        return following.result(False, stopped_watching=True)


@dataclass
class _Following:
    """``backup now`` once ``systemctl start`` was sent: its new invocation, then (``wait``) its end."""

    ctx: Context
    run: Runner
    host: Host
    stanza: str
    unit: str
    kind: str
    wait: bool
    start_epoch: float
    clock: float
    old_id: str
    known: set[str]
    timeout: float
    poll: float
    pause: Callable[[float], bool]

    def result(self, ok: bool, **kwargs: Any) -> NowResult:
        return NowResult(self.host, self.unit, self.kind, self.wait, ok, self.start_epoch,
                         time.monotonic() - self.clock, **kwargs)

    def show(self) -> dict[str, str]:
        return parse_show(self.run(self.host, show_script(self.unit), self.timeout).stdout)

    def follow(self, on_started: Callable[[], None] | None) -> NowResult:
        host, unit, kind = self.host, self.unit, self.kind
        while True:  # systemd runs the queued job: a new invocation
            state = self.show()
            if state.get("InvocationID", "") not in ("", self.old_id):
                break
            if time.monotonic() - self.clock > START_TIMEOUT:
                raise BackupError(f"{host.name}: {unit} did not start within {START_TIMEOUT:.0f} s (state "
                                  f"{state.get('ActiveState', '?')}/{state.get('SubState', '?')})")
            if self.pause(min(self.poll, 1.0)):
                return self.result(False, stopped_watching=True)
        if on_started:
            on_started()
        if not self.wait:
            return self.result(True)
        while state.get("ActiveState") in ("activating", "active", "reloading", "deactivating"):
            if self.pause(self.poll):
                return self.result(False, stopped_watching=True)
            try:
                _now, info = read_info(self.run, host, self.stanza, self.timeout)
                seconds = time.monotonic() - self.clock
                if info.progress is not None:
                    self.ctx.sink(Progress(f"{kind} backup on {host.name}: {info.progress:.0%} "
                                           f"({size_text(info.running_done)} of {size_text(info.running_size)}), "
                                           f"{seconds:.0f} s", info.progress))
                else:
                    self.ctx.sink(Progress(f"{kind} backup on {host.name}: running, {seconds:.0f} s"))
            except Cancelled:
                raise
            except (BackupError, SshError):
                pass  # progress is a courtesy; the unit's state decides
            state = self.show()
        if state.get("Result") != "success":
            journal = self.run(host, f"journalctl -u {shlex.quote(unit)} --since @{int(self.start_epoch) - 1} "
                                     f"-n {JOURNAL_LINES} -o cat --no-pager", self.timeout)
            return self.result(False, error=f"result {state.get('Result', '?')}, exit status "
                                            f"{state.get('ExecMainStatus', '?')}",
                               journal=redact(journal.stdout.strip()))
        _now, after = read_info(self.run, host, self.stanza, self.timeout)
        new = [b for b in after.backups if b.label not in self.known]
        return self.result(True, backup=max(new, key=lambda b: b.stop, default=None))

__all__ = ["ArchiverState", "Assessment", "BackupBusy", "BackupError", "BackupInfo", "BackupSet", "InfoError",
           "Listing", "NowResult", "Observation", "assess", "backup_check", "backup_list", "backup_now",
           "parse_info", "refusal"]
