"""The restore drill (``kbpg restore-drill``): prove that the backups restore, to a point in time, without touching
the cluster.

1. A **sentinel** row on the leader (schema ``kbpg_backup``, a random token, ``written_at`` from the leader's clock),
   then ``pgbackrest check`` on the backup host: a WAL switch, archived. The row is committed after the target T
   (checked against the leader's clock), which PostgreSQL needs: a recovery that ends before its target is FATAL.
2. The drill's inbox, ``/var/lib/kbpg-drill/inbox/<id>.json`` (0600 root) on the backup host: stanza, target, the
   operator's query, the app role, the cluster's PostgreSQL bin dir and ``max_*`` settings.
3. ``systemd-run`` of the restore-drill script (assets/backup/restore-drill, installed by step 06) in a transient
   unit with ``RuntimeMaxSec`` (``backup.drill_timeout``) and ``ExecStopPost=... cleanup <id>``: the script restores
   into ``run-<id>``, starts a temporary PostgreSQL on a unix socket only, waits for its promotion, verifies as the
   app role (read-only) and writes ``results/<id>.json``. Any end of the unit removes the scratch copy.
4. kbpg polls the unit and the script's progress lines each second, reads (and deletes) the result, judges the
   sentinels (present exactly when written at or before T), checks that ``run-<id>`` is gone, and writes
   ``reports/restore-drill-<stamp>.md`` and ``.json``.

The cluster sees one sentinel insert and one WAL switch. No secret is in the inbox, the result or the report.
"""

from __future__ import annotations

import json
import secrets
import shlex
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ..backup import CONF_PATH, DRILL_ROOT, DRILL_SCRIPT, DRILL_TMPFILES_TEXT, REPO_USER
from ..engine import Context, TaskError, TaskRun
from ..events import EventSink, Level, Message, Progress
from ..files import write_report_pair
from ..logs import redacting_sink
from ..ssh import Connection, SshError
from .drill_report import now_iso

UNIT_PREFIX = "kbpg-restore-drill-"
SENTINEL_SCHEMA = "kbpg_backup"
SENTINELS_KEPT = 1000  # sentinels compared, newest first (the script reads the same number)
MAX_QUERY_BYTES = 64 * 1024
NEAR_T = timedelta(seconds=1)  # a sentinel written this close to T may be on either side of it (commit comes later)
POLL_SECONDS = 1.0
GONE_WAIT = 10.0  # after the unit ends: seconds for run-<id> to disappear
EXAMPLE = "2026-11-26T10:15:30.25+00:00"
# The cluster's settings a hot-standby recovery refuses to run with smaller values (copied into the inbox).
MAX_SETTINGS = ("max_connections", "max_worker_processes", "max_wal_senders", "max_prepared_transactions",
                "max_locks_per_transaction")

# /etc/tmpfiles.d/kbpg-drill.conf on the backup host (step 06 writes it): see backup.DRILL_TMPFILES_TEXT.
TMPFILES_RULE = DRILL_TMPFILES_TEXT


def drill_script_text() -> str:
    """The restore-drill script (package data ``kbpg_tui.assets.backup``), uploaded to ``DRILL_SCRIPT`` by step 06."""
    from importlib import resources

    return resources.files("kbpg_tui.assets").joinpath("backup", "restore-drill").read_text(encoding="utf-8")


class TargetError(ValueError):
    """Bad --time / --query: one line naming what is allowed (exit 2)."""


class DrillBusy(Exception):
    """Another restore drill runs on the backup host (exit 3)."""


class DrillFailed(Exception):
    """The drill could not be set up (no leader, pgbackrest check failed...); the message says why (exit 1)."""


# --- input ------------------------------------------------------------------------------------------------------

def _shown(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def parse_target(text: str, now: datetime | None = None) -> datetime:
    """``--time``: ISO 8601 as ``datetime.isoformat()`` writes it (``Z`` and fractions of a second accepted), with a
    UTC offset, not in the future; returned in UTC. TargetError (exit 2) otherwise."""
    if not text.strip():
        raise TargetError(f"--time: empty; give an ISO 8601 time with a UTC offset, e.g. {EXAMPLE}")
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise TargetError(f"--time {_shown(text)}: not an ISO 8601 date and time; e.g. {EXAMPLE}") from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise TargetError(f"--time {_shown(text)}: must carry a UTC offset, e.g. {EXAMPLE}")
    now = now or datetime.now(timezone.utc)
    if value > now:
        raise TargetError(f"--time {_shown(text)}: is in the future ({utc_text(value)}; now {utc_text(now)}): a drill "
                          "restores to a moment already archived")
    return value.astimezone(timezone.utc)


def check_query(text: str | None) -> str | None:
    """``--query``: at most 64 KiB of UTF-8, no NUL character, not blank. TargetError (exit 2) otherwise."""
    if text is None:
        return None
    if "\x00" in text:
        raise TargetError("--query: contains a NUL character; give the SQL text only")
    size = len(text.encode("utf-8", errors="surrogateescape"))
    if size > MAX_QUERY_BYTES:
        raise TargetError(f"--query: {size} bytes; at most {MAX_QUERY_BYTES} (64 KiB)")
    if not text.strip():
        raise TargetError("--query: empty; give the SQL to run on the restored copy (read-only, as the app role)")
    if text.lstrip().startswith("\\"):
        raise TargetError("--query: psql's backslash commands are not run on the backup host; give SQL only")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise TargetError("--query: not valid UTF-8") from None
    return text


def utc_text(value: datetime) -> str:
    """A moment in UTC for people and reports: ISO 8601, microseconds only when there are some."""
    return value.astimezone(timezone.utc).isoformat()


def pgbackrest_target(value: datetime) -> str:
    """T as pgBackRest's --target and PostgreSQL's recovery_target_time take it: 'YYYY-MM-DD HH:MM:SS.ffffff+00'."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def _ts(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


# --- the sentinel, on the leader ----------------------------------------------------------------------------------

def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def probe_sql() -> str:
    """The leader's clock, major version and the max_* settings a recovery needs (one JSON line)."""
    settings = ", ".join(f"'{name}', current_setting('{name}')" for name in MAX_SETTINGS)
    return (f"SELECT json_build_object('now', clock_timestamp(), 'version_num', current_setting('server_version_num'), "
            f"'settings', json_build_object({settings}));\n")


def sentinel_sql(app_user: str, token: str) -> str:
    """Create the sentinel table if needed (SELECT for the app role), insert ``token``, and give back the newest
    sentinels as one JSON line. ``token`` is kbpg's own hex string."""
    assert all(c in "0123456789abcdef" for c in token), token
    table = f"{SENTINEL_SCHEMA}.sentinel"
    return "\n".join([
        f"CREATE SCHEMA IF NOT EXISTS {SENTINEL_SCHEMA};",
        f"CREATE TABLE IF NOT EXISTS {table} (id bigserial PRIMARY KEY, token text NOT NULL, "
        "written_at timestamptz NOT NULL DEFAULT clock_timestamp());",
        f"GRANT USAGE ON SCHEMA {SENTINEL_SCHEMA} TO {_ident(app_user)};",
        f"GRANT SELECT ON {table} TO {_ident(app_user)};",
        f"INSERT INTO {table} (token) VALUES ('{token}');",
        "SELECT coalesce(json_agg(json_build_object('token', token, 'written_at', written_at) ORDER BY id), '[]') "
        f"FROM (SELECT id, token, written_at FROM {table} ORDER BY id DESC LIMIT {SENTINELS_KEPT}) AS newest;",
        "",
    ])


def _json_line(output: str, what: str) -> Any:
    lines = [line for line in output.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        raise DrillFailed(f"{what}: no JSON answer ({output.strip()[-200:] or 'no output'})") from None


# --- verdicts --------------------------------------------------------------------------------------------------

@dataclass
class Sentinel:
    """One sentinel of the leader and what the restored copy says about it.

    ``expected``: True when written at or before T (or every one with --latest), False after T, None when within
    :data:`NEAR_T` of T (either answer is right). ``verdict``: "present", "absent" (as expected), "MISSING"
    (expected but not there), "UNEXPECTED" (written after T but there), "near T: present" / "near T: absent"."""

    token: str
    written_at: str
    expected: bool | None
    found: bool
    verdict: str

    @property
    def ok(self) -> bool:
        return self.verdict not in ("MISSING", "UNEXPECTED")

    def to_dict(self) -> dict[str, Any]:
        return {"token": self.token, "written_at": self.written_at, "expected": self.expected, "found": self.found,
                "verdict": self.verdict, "ok": self.ok}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sentinel:
        return cls(data["token"], data["written_at"], data.get("expected"), bool(data.get("found")), data["verdict"])


def sentinel_verdicts(leader: list[dict[str, Any]], restored: list[dict[str, Any]],
                      target: datetime | None) -> list[Sentinel]:
    """Each of the leader's sentinels (oldest first) judged against the tokens of the restored copy: present exactly
    when written at or before ``target`` (None: the end of the archive, so every one)."""
    found = {str(row.get("token")) for row in restored}
    result = []
    for row in sorted(leader, key=lambda r: _ts(r.get("written_at")) or datetime.min.replace(tzinfo=timezone.utc)):
        token, written = str(row.get("token")), _ts(row.get("written_at"))
        if written is None:
            continue
        expected: bool | None
        if target is None:
            expected = True
        elif abs(written - target) <= NEAR_T:
            expected = None
        else:
            expected = written <= target
        there = token in found
        if expected is None:
            verdict = "near T: " + ("present" if there else "absent")
        elif expected == there:
            verdict = "present" if there else "absent"
        else:
            verdict = "MISSING" if expected else "UNEXPECTED"
        result.append(Sentinel(token, utc_text(written), expected, there, verdict))
    return result


class ResultError(ValueError):
    """The script's result file is not what it writes."""


def parse_result(text: str | bytes) -> dict[str, Any]:
    """The script's results/<id>.json, checked for the fields kbpg reads. ResultError when unreadable."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ResultError(f"not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("status") not in ("ok", "failed", "busy"):
        raise ResultError("no status ok/failed/busy")
    sentinels = data.get("sentinels")
    if sentinels is not None and (not isinstance(sentinels, list)
                                  or not all(isinstance(row, dict) and "token" in row for row in sentinels)):
        raise ResultError("sentinels: not a list of {token, written_at}")
    if data.get("timings") is not None and not isinstance(data["timings"], dict):
        raise ResultError("timings: not an object")
    if data.get("query") is not None and not isinstance(data["query"], dict):
        raise ResultError("query: not an object")
    return data


# --- the drill's record -----------------------------------------------------------------------------------------

TIMINGS = ("restore", "start", "recovery", "verify", "total")


@dataclass
class DrillResult:
    """A restore drill: what was asked, what the script found, the verdicts; its report's content."""

    id: str
    started: str
    backup_host: str
    stanza: str
    target: str | None  # UTC ISO 8601; None: the end of the archive (--latest)
    status: str = "not run"  # ok | failed | busy | cancelled | not run
    phase: str = ""  # the script's last phase
    error: str = ""  # the script's error (failed, busy)
    backup: dict[str, Any] = field(default_factory=dict)  # label, type, stop (UTC), size, repo_size
    window: dict[str, str] = field(default_factory=dict)  # oldest_stop, newest_stop (UTC) of the repository's backups
    timings: dict[str, float | None] = field(default_factory=dict)  # seconds: restore, start, recovery, verify, total
    wall: float | None = None  # seconds, as kbpg saw it: unit start to unit end
    recovery_point: str | None = None  # pg_last_xact_replay_timestamp() of the restored copy
    recovery_log: str | None = None  # "recovery stopping before commit of transaction ..., time ..."
    pg_version: str = ""
    sentinel_table: bool | None = None
    sentinels: list[Sentinel] = field(default_factory=list)
    pgvector: dict[str, Any] | None = None  # version, ok, error; None: the extension is not in the restored copy
    query: dict[str, Any] | None = None  # sql, ran, lines, truncated, csv, error
    swept: list[str] = field(default_factory=list)  # stale run-* removed by the script
    scratch_removed: bool | None = None
    problems: list[str] = field(default_factory=list)
    paths: tuple[Path, ...] = ()

    @property
    def ok(self) -> bool:
        return (self.status == "ok" and not self.problems and self.scratch_removed is True
                and all(s.ok for s in self.sentinels) and bool(self.sentinels))

    def apply(self, data: dict[str, Any], leader: list[dict[str, Any]], target: datetime | None) -> None:
        """Take in the script's result (see :func:`parse_result`) and judge it."""
        self.status = str(data["status"])
        self.phase = str(data.get("phase") or "")
        self.error = str(data.get("error") or "")
        self.pg_version = str(data.get("pg_version") or "")
        stop = data.get("backup_stop")
        self.backup = {key: value for key, value in {
            "label": data.get("backup_label"), "type": data.get("backup_type"),
            "stop": _epoch_text(stop), "size": data.get("backup_size"), "repo_size": data.get("backup_repo_size"),
        }.items() if value is not None}
        self.window = {key: text for key in ("oldest_stop", "newest_stop")
                       if (text := _epoch_text(data.get(key))) is not None}
        timings = data.get("timings") or {}
        self.timings = {name: _num(timings.get(name)) for name in TIMINGS}
        self.recovery_point = data.get("recovery_point") or None
        self.recovery_log = data.get("recovery_log") or None
        self.swept = [str(name) for name in data.get("swept") or []]
        if self.status == "busy":
            return
        if self.status == "failed":
            self.problems.append(f"the drill failed at {self.phase or '?'}: {self.error or 'no reason given'}")
            return
        self.sentinel_table = data.get("sentinel_table")
        if data.get("sentinel_error"):
            self.problems.append(f"the sentinels could not be read: {data['sentinel_error']}")
        self.sentinels = sentinel_verdicts(leader, data.get("sentinels") or [], target)
        for one in self.sentinels:
            if not one.ok:
                when = "at or before" if one.expected else "after"
                self.problems.append(f"sentinel {one.token[:12]} written {one.written_at} ({when} the target) is "
                                     + ("missing from" if one.verdict == "MISSING" else "present in")
                                     + " the restored copy")
        if not self.sentinels:
            self.problems.append("no sentinel to judge (the leader gave none)")
        if data.get("pgvector_version"):
            self.pgvector = {"version": data["pgvector_version"], "ok": bool(data.get("pgvector_ok")),
                             "error": data.get("pgvector_error")}
            if not self.pgvector["ok"]:
                self.problems.append(f"pgvector {data['pgvector_version']}: '[1,2,3]' <-> '[1,2,4]' is not 1"
                                     + (f" ({data['pgvector_error']})" if data.get("pgvector_error") else ""))
        elif data.get("pgvector_error"):
            self.problems.append(f"pgvector could not be checked: {data['pgvector_error']}")
        query = data.get("query")
        if query is not None and self.query is not None:
            self.query.update({"ran": bool(query.get("ran")), "lines": query.get("lines"),
                               "truncated": bool(query.get("truncated")), "csv": query.get("csv") or "",
                               "error": query.get("error")})
            if not query.get("ran"):
                self.problems.append(f"the query failed: {query.get('error') or 'no reason given'}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "id": self.id, "started": self.started, "backup_host": self.backup_host,
            "stanza": self.stanza, "target": self.target, "status": self.status, "phase": self.phase,
            "error": self.error, "backup": dict(self.backup), "window": dict(self.window),
            "timings": {k: (None if v is None else round(v, 3)) for k, v in self.timings.items()},
            "wall": None if self.wall is None else round(self.wall, 3),
            "recovery_point": self.recovery_point, "recovery_log": self.recovery_log, "pg_version": self.pg_version,
            "sentinel_table": self.sentinel_table, "sentinels": [s.to_dict() for s in self.sentinels],
            "pgvector": self.pgvector, "query": self.query, "swept": list(self.swept),
            "scratch_removed": self.scratch_removed, "problems": list(self.problems),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DrillResult:
        return cls(
            id=data["id"], started=data["started"], backup_host=data["backup_host"], stanza=data["stanza"],
            target=data.get("target"), status=data.get("status", "not run"), phase=data.get("phase", ""),
            error=data.get("error", ""), backup=dict(data.get("backup") or {}), window=dict(data.get("window") or {}),
            timings=dict(data.get("timings") or {}), wall=data.get("wall"), recovery_point=data.get("recovery_point"),
            recovery_log=data.get("recovery_log"), pg_version=data.get("pg_version", ""),
            sentinel_table=data.get("sentinel_table"),
            sentinels=[Sentinel.from_dict(one) for one in data.get("sentinels") or []],
            pgvector=data.get("pgvector"), query=data.get("query"), swept=list(data.get("swept") or []),
            scratch_removed=data.get("scratch_removed"), problems=list(data.get("problems") or []),
        )

    def summary_lines(self) -> list[str]:
        """Plain lines for the CLI."""
        lines = [f"restore drill {self.id} on {self.backup_host} (stanza {self.stanza}), target "
                 f"{self.target or 'the end of the archive (--latest)'}: {'VERIFIED' if self.ok else 'NOT verified'}"]
        if self.backup:
            lines.append(f"  backup set {self.backup.get('label', '?')} ({self.backup.get('type', '?')}, ended "
                         f"{self.backup.get('stop', '?')}, {_size(self.backup.get('size'))})")
        if any(v is not None for v in self.timings.values()):
            lines.append("  " + ", ".join(f"{name} {_sec(self.timings.get(name))}" for name in TIMINGS))
        if self.recovery_point or self.recovery_log:
            lines.append(f"  recovery point {self.recovery_point or '?'}"
                         + (f" ({self.recovery_log})" if self.recovery_log else ""))
        if self.sentinels:
            counts: dict[str, int] = {}
            for one in self.sentinels:
                counts[one.verdict] = counts.get(one.verdict, 0) + 1
            lines.append("  sentinels: " + ", ".join(f"{n} {v}" for v, n in counts.items()))
        if self.pgvector is not None:
            lines.append(f"  pgvector {self.pgvector.get('version')}: {'ok' if self.pgvector.get('ok') else 'FAILED'}")
        if self.query is not None and "ran" in self.query:
            lines.append(f"  query: {self.query.get('lines', 0)} CSV line(s)"
                         + (" (truncated)" if self.query.get("truncated") else "")
                         + (f", error: {self.query['error']}" if self.query.get("error") else ""))
            csv = self.query.get("csv") or ""
            lines += ["    " + line for line in csv.splitlines()[:20]]
            if len(csv.splitlines()) > 20:
                lines.append("    … (the report has the rest)")
        for name in self.swept:
            lines.append(f"  cleaned a scratch copy left by {name}")
        lines.append("  scratch copy removed" if self.scratch_removed else
                     "  scratch copy: NOT confirmed removed" if self.scratch_removed is False else "")
        lines += [f"  ! {problem}" for problem in self.problems]
        return [line for line in lines if line]

    def markdown(self) -> str:
        lines = [
            "# kbpg restore drill",
            "",
            f"- started: {self.started}",
            f"- backup host: {_cell(self.backup_host)}, stanza {_cell(self.stanza)}",
            f"- target: {self.target or 'the end of the archive (--latest)'}",
            f"- backup set: {_cell(self.backup.get('label', '—'))} ({_cell(self.backup.get('type', '—'))}, ended "
            f"{_cell(self.backup.get('stop', '—'))}, {_size(self.backup.get('size'))}, "
            f"{_size(self.backup.get('repo_size'))} in the repository)",
            f"- backups in the repository end from {self.window.get('oldest_stop', '—')} to "
            f"{self.window.get('newest_stop', '—')}",
            f"- recovery point: {self.recovery_point or '—'}" + (f" ({_cell(self.recovery_log)})"
                                                                if self.recovery_log else ""),
            f"- PostgreSQL {self.pg_version or '?'}",
            f"- scratch copy removed: {'yes' if self.scratch_removed else 'NO' if self.scratch_removed is False else '?'}",
            f"- result: {'VERIFIED' if self.ok else 'NOT VERIFIED'} ({self.status}"
            + (f" at {self.phase}" if self.status != "ok" and self.phase else "") + ")",
            "",
            "## Timings",
            "",
            "| restore | start | recovery | verify | total (on the host) | wall (kbpg) |",
            "|---|---|---|---|---|---|",
            "| " + " | ".join(_sec(self.timings.get(name)) for name in TIMINGS) + f" | {_sec(self.wall)} |",
            "",
            "## Sentinels",
            "",
            f"Present exactly when written at or before the target; {int(NEAR_T.total_seconds())} s either side of it "
            "either answer is right. Sentinel table in the restored copy: "
            + ("yes" if self.sentinel_table else "no" if self.sentinel_table is False else "?") + ".",
            "",
            "| token | written at | expected | found | verdict |",
            "|---|---|---|---|---|",
        ]
        for one in self.sentinels:
            expected = "either" if one.expected is None else "yes" if one.expected else "no"
            lines.append(f"| {one.token[:16]} | {one.written_at} | {expected} | {'yes' if one.found else 'no'} | "
                         f"{one.verdict} |")
        lines += ["", "## pgvector", ""]
        if self.pgvector is None:
            lines.append("not in the restored copy (no `vector` extension in the database)")
        else:
            lines.append(f"`vector` {self.pgvector.get('version')}: `'[1,2,3]'::vector <-> '[1,2,4]'` = 1: "
                         + ("yes" if self.pgvector.get("ok") else "NO"))
        if self.query is not None:
            lines += ["", "## Query", "", "Run read-only as the app role (statement_timeout 60 s):", "", "~~~~ sql",
                      self.query.get("sql", ""), "~~~~", ""]
            if "ran" not in self.query:
                lines.append("not run")
            elif self.query.get("ran"):
                lines += [f"{self.query.get('lines', 0)} CSV line(s)" + (" (truncated to 1000 rows / 1 MiB)"
                                                                         if self.query.get("truncated") else "") + ":",
                          "", "~~~~ csv", (self.query.get("csv") or "").rstrip("\n"), "~~~~"]
            else:
                lines.append(f"failed: {_cell(self.query.get('error') or '?')}")
        if self.swept:
            lines += ["", "## Cleaned", ""] + [f"- a scratch copy left by {name}" for name in self.swept]
        if self.problems:
            lines += ["", "## Problems", ""] + [f"- {_cell(problem)}" for problem in self.problems]
        return "\n".join(lines) + "\n"


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _epoch_text(value: Any) -> str | None:
    number = _num(value)
    return None if number is None else utc_text(datetime.fromtimestamp(number, timezone.utc))


def _sec(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def _size(value: Any) -> str:
    number = _num(value)
    if number is None:
        return "size ?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if number < 1024 or unit == "TiB":
            return f"{number:.0f} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1024
    return ""


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_reports(workdir: Path, result: DrillResult) -> tuple[Path, Path]:
    """``reports/restore-drill-<stamp>.md`` and ``.json`` (like the failover drill's reports)."""
    try:
        stamp = datetime.fromisoformat(result.started).strftime("%Y%m%d-%H%M%S")
    except ValueError:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return write_report_pair(workdir, f"restore-drill-{stamp}", result.markdown(), result.to_dict())


# --- on the backup host -------------------------------------------------------------------------------------------

def new_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def inbox_json(drill_id: str, stanza: str, target: datetime | None, query: str | None, app_role: str,
               database: str, version: int, settings: dict[str, str], timeout: int,
               repo_user: str = REPO_USER, config: str = CONF_PATH) -> str:
    """The script's inbox: what to restore and verify. No secret (the cipher pass stays in the repo's own file)."""
    return json.dumps({
        "id": drill_id, "stanza": stanza,
        "target": None if target is None else pgbackrest_target(target),
        "target_epoch": None if target is None else f"{target.timestamp():.6f}",
        "target_iso": None if target is None else utc_text(target),
        "query": query, "app_role": app_role, "database": database,
        "pg_version": str(version), "bindir": f"/usr/lib/postgresql/{version}/bin",
        "settings": {name: str(value) for name, value in settings.items() if name in MAX_SETTINGS},
        "timeout": int(timeout), "repo_user": repo_user, "config": config,
    }, indent=1) + "\n"


def unit_name(drill_id: str) -> str:
    return f"{UNIT_PREFIX}{drill_id}.service"


def systemd_run_command(drill_id: str, timeout: int, script: str = DRILL_SCRIPT) -> str:
    """The transient unit: RuntimeMaxSec bounds it, ExecStopPost cleans on any end (done, stopped, killed).

    The cleanup is given twice ('-': a failure does not stop the next): `systemctl kill -s KILL` of the unit also
    killed the first ExecStopPost, spawned while systemd was still killing the cgroup (seen on the lab, systemd 257);
    the second starts once the first is reaped. kbpg runs the same cleanup itself if the scratch copy is still there
    when the unit has ended (:func:`run_drill`); the next drill's sweep and the tmpfiles rule at boot are the last
    resorts."""
    cleanup = f"-{script} cleanup {drill_id}"
    return " ".join([
        "systemd-run", f"--unit={shlex.quote(unit_name(drill_id))}", "--collect", "--quiet",
        f"--description={shlex.quote('kbpg restore drill ' + drill_id)}",
        "-p", f"RuntimeMaxSec={int(timeout)}", "-p", shlex.quote(f"ExecStopPost={cleanup}"),
        "-p", shlex.quote(f"ExecStopPost={cleanup}"),
        "-p", "Nice=10", "-p", "KillMode=control-group",
        shlex.quote(script), "run", shlex.quote(drill_id),
    ])


def busy_units(connection: Connection) -> list[str]:
    """Restore drills that run now on the backup host, each "unit (since ...)"."""
    output = connection.run(
        f"for u in $(systemctl list-units --plain --no-legend --state=active,activating,deactivating "
        f"'{UNIT_PREFIX}*' 2>/dev/null | awk '{{print $1}}'); do "
        "echo \"$u (since $(systemctl show -p ActiveEnterTimestamp --value \"$u\"))\"; done",
        on_line=None, check=False, what="looking for a running restore drill").stdout
    return [line.strip() for line in output.splitlines() if line.strip()]


@dataclass
class _Poll:
    state: str
    result: str
    lines: list[str]
    consumed: int


def _poll(connection: Connection, drill_id: str, offset: int) -> _Poll:
    unit = shlex.quote(unit_name(drill_id))
    progress = shlex.quote(f"{DRILL_ROOT}/run-{drill_id}/progress")
    output = connection.run(
        f"systemctl show -p ActiveState -p Result {unit} 2>/dev/null; echo '--kbpg-progress--'; "
        f"tail -c +{offset + 1} {progress} 2>/dev/null | head -c 65536; true",
        on_line=None, check=False, timeout=30, what="watching the restore drill").stdout
    head, _, tail = output.partition("--kbpg-progress--\n")
    fields = dict(line.split("=", 1) for line in head.splitlines() if "=" in line)
    complete = tail[: tail.rfind("\n") + 1] if "\n" in tail else ""
    return _Poll(fields.get("ActiveState", ""), fields.get("Result", ""), complete.splitlines(),
                 len(complete.encode("utf-8")))


RUNNING_STATES = ("active", "activating", "deactivating", "reloading")


def run_drill(ctx: Context, target: datetime | None, query: str | None,
              on_event: EventSink | None = None) -> DrillResult:
    """The drill (see the module's docstring). Raises DrillBusy (another drill runs), TargetError (T not before the
    leader's clock), DrillFailed (nothing could be restored: no leader, archiving broken, script missing). Otherwise
    returns the result, its reports written; ``result.ok`` tells whether every check passed."""
    from .. import backup
    from ..cluster import leader_host, psql

    sink = redacting_sink(on_event) if on_event is not None else ctx.sink  # no secret reaches a screen
    host = ctx.backup_host
    if host is None:
        raise DrillFailed("no backup host selected")
    stanza = backup.stanza(ctx.credentials)
    creds = ctx.credentials
    app_role, database = creds["POSTGRES_APP_USER"], creds["POSTGRES_DB"]
    connection = ctx.pool.get(host)
    task = TaskRun(ctx, "restore-drill", None)

    def say(text: str) -> None:
        sink(Progress(text))

    running = busy_units(connection)
    if running:
        raise DrillBusy(f"{host.name}: another restore drill runs: {'; '.join(running)}")
    present = connection.run(f"test -x {shlex.quote(DRILL_SCRIPT)} && echo yes; true", on_line=None).stdout.strip()
    if present != "yes":
        raise DrillFailed(f"{host.name}: {DRILL_SCRIPT} is missing: run `kbpg install --step 06` first")

    # 1. the sentinel, after T on the leader's clock; archived
    try:
        leader = leader_host(task)
        probe = _json_line(psql(task, leader, probe_sql(), "reading the leader's clock and settings", database).stdout,
                           "the leader's clock")
        leader_now = _ts(probe.get("now"))
        if leader_now is None:
            raise DrillFailed(f"{leader.name}: unreadable clock {probe.get('now')!r}")
        if target is not None and target >= leader_now:
            raise TargetError(f"--time {utc_text(target)}: not in the past on the cluster's clock ({leader.name} says "
                              f"{utc_text(leader_now)}; this machine's clock is {utc_text(datetime.now(timezone.utc))})")
        token = secrets.token_hex(16)
        say(f"writing sentinel {token[:12]} on {leader.name} (schema {SENTINEL_SCHEMA})")
        sentinels = _json_line(psql(task, leader, sentinel_sql(app_role, token), "writing the drill's sentinel",
                                    database).stdout, "the sentinels")
        if not isinstance(sentinels, list):
            raise DrillFailed(f"{leader.name}: the sentinels are not a list")
        say(f"archiving the WAL that holds it (pgbackrest check on {host.name})")
        checked = connection.run(backup.repo_command(stanza, "check"), on_line=None, check=False, timeout=180,
                                 what="pgbackrest check")
        if not checked.ok:
            raise DrillFailed(f"{host.name}: pgbackrest check failed, so the sentinel's WAL may not be archived: "
                              f"{(checked.stderr + checked.stdout).strip()[-400:]}")
    except TaskError as exc:
        raise DrillFailed(str(exc)) from None
    except SshError as exc:
        raise DrillFailed(str(exc)) from None

    # 2. the inbox; 3. the unit
    drill_id = new_id()
    result = DrillResult(id=drill_id, started=now_iso(), backup_host=host.name, stanza=stanza,
                         target=None if target is None else utc_text(target))
    if query is not None:
        result.query = {"sql": query}
    version = int(str(probe.get("version_num", "0"))) // 10000
    timeout = int(ctx.settings.backup.drill_timeout)
    inbox = inbox_json(drill_id, stanza, target, query, app_role, database, version, probe.get("settings") or {},
                       timeout)
    root = shlex.quote(DRILL_ROOT)
    connection.run(f"install -d -m 0700 -o root -g root {root}/inbox {root}/results", on_line=None,
                   what="preparing the drill's inbox")
    connection.upload(f"{DRILL_ROOT}/inbox/{drill_id}.json", inbox, mode=0o600)
    say(f"starting {unit_name(drill_id)} on {host.name} (at most {timeout} s)")
    started = time.monotonic()
    connection.run(systemd_run_command(drill_id, timeout), on_line=None, what="starting the restore drill's unit")

    # 4. watch it
    offset, stopping = 0, False
    deadline = started + timeout + 120
    while True:
        try:
            seen = _poll(connection, drill_id, offset)
        except SshError as exc:
            sink(Message(Level.WARNING, f"watching the drill: {exc}", host.name))
            seen = _Poll("active", "", [], 0)
        offset += seen.consumed
        for line in seen.lines:
            parts = line.split(" ", 2)
            if len(parts) == 3:
                say(f"[{parts[1]}] {parts[2]}")
        if seen.state not in RUNNING_STATES:
            break
        if (ctx.cancel.is_set() or time.monotonic() > deadline) and not stopping:
            stopping = True
            result.problems.append("cancelled: the drill's unit was stopped" if ctx.cancel.is_set() else
                                   "the drill ran past its time limit: its unit was stopped")
            connection.run(f"systemctl stop --no-block {shlex.quote(unit_name(drill_id))}", on_line=None,
                           check=False, what="stopping the restore drill")
        if stopping and time.monotonic() > deadline + 120:
            result.problems.append(f"{unit_name(drill_id)} did not stop")
            break
        time.sleep(POLL_SECONDS)
    result.wall = time.monotonic() - started

    # the result, and the scratch copy gone
    path = shlex.quote(f"{DRILL_ROOT}/results/{drill_id}.json")
    raw = connection.read_file(f"{DRILL_ROOT}/results/{drill_id}.json")
    connection.run(f"rm -f {path} {root}/inbox/{shlex.quote(drill_id)}.json", on_line=None, check=False)
    if raw is None:
        journal = connection.run(f"journalctl -u {shlex.quote(unit_name(drill_id))} -n 12 --no-pager -o cat "
                                 "2>/dev/null; true", on_line=None, check=False).stdout.strip()
        result.status = "cancelled" if stopping else "failed"
        result.problems.append(f"the drill's unit ended without a result (result {seen.result or '?'})"
                               + (f"; its journal ends: {journal[-600:]}" if journal else ""))
    else:
        try:
            result.apply(parse_result(raw), sentinels, target)
        except ResultError as exc:
            result.status = "failed"
            result.problems.append(f"unreadable result from the drill: {exc}")
    scratch = shlex.quote(f"{DRILL_ROOT}/run-{drill_id}")
    gone_by = time.monotonic() + GONE_WAIT
    cleaned = False
    while True:
        answer = connection.run(f"test -e {scratch} && echo present || echo gone", on_line=None, check=False).stdout
        result.scratch_removed = answer.strip() == "gone"
        if result.scratch_removed:
            break
        if time.monotonic() > gone_by or seen.state not in RUNNING_STATES:
            if cleaned:
                break
            # the unit has ended and its ExecStopPost did not remove it (killed with the unit): kbpg does it
            sink(Message(Level.WARNING, f"{DRILL_ROOT}/run-{drill_id} outlived its unit: removing it", host.name))
            connection.run(f"{shlex.quote(DRILL_SCRIPT)} cleanup {shlex.quote(drill_id)}", on_line=None, check=False,
                           timeout=120, what="removing the drill's scratch copy")
            cleaned = True
            continue
        time.sleep(0.5)
    if not result.scratch_removed:
        result.problems.append(f"{host.name}: {DRILL_ROOT}/run-{drill_id} is still there after the drill")
    if result.status == "busy":
        raise DrillBusy(f"{host.name}: {result.error or 'another restore drill runs'}")
    result.paths = write_reports(ctx.workdir, result)
    return result


__all__ = ["DrillBusy", "DrillFailed", "DrillResult", "ResultError", "Sentinel", "TargetError", "TMPFILES_RULE",
           "check_query", "drill_script_text", "inbox_json", "parse_result", "parse_target", "run_drill",
           "sentinel_verdicts", "systemd_run_command", "write_reports"]
