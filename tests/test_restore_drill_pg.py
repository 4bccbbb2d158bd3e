"""The restore-drill script (assets/backup/restore-drill) run for real on this machine, as root: a throwaway local
PostgreSQL archiving with Debian's pgbackrest into a local, encrypted repository; a full backup; rows before and
after a moment T; the script restores to T (and to the end of the archive) into its scratch directory, starts a
temporary server on a unix socket only and verifies. Also: SIGKILL of a run, then `cleanup`, leaves nothing; a
second run while the lock is held is refused (exit 3); a stale run-* is swept.

Needs root, PostgreSQL's server binaries and pgbackrest (scripts/setup installs both).
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from kbpg_tui.core.ops import restore_drill as rd

from .pg_local import LocalPostgres

pytestmark = pytest.mark.pg

STANZA = "kbdrill"
APP, DB = "kb_app", "keybuzz"


def _need() -> None:
    if os.geteuid() != 0:
        pytest.skip("the restore-drill script runs as root")
    if not shutil.which("pgbackrest"):
        pytest.fail("pgbackrest is not installed: run scripts/setup (it is in APT_PACKAGES)")


class Cluster:
    """A local PostgreSQL archiving to a local pgBackRest repository (as the postgres account)."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="kbd-"))
        self.base.chmod(0o711)
        account = pwd.getpwnam("postgres")
        for name in ("repo", "log", "lock", "spool"):
            path = self.base / name
            path.mkdir(mode=0o750)
            os.chown(path, account.pw_uid, account.pw_gid)
        self.pg = LocalPostgres()
        self.config = self.base / "pgbackrest.conf"
        self.config.write_text("\n".join([
            "[global]",
            f"repo1-path={self.base / 'repo'}",
            "repo1-cipher-type=aes-256-cbc",
            f"repo1-cipher-pass={secrets.token_hex(32)}",
            "repo1-retention-full=2",
            f"log-path={self.base / 'log'}",
            f"lock-path={self.base / 'lock'}",
            f"spool-path={self.base / 'spool'}",
            "start-fast=y",
            "process-max=2",
            "archive-timeout=60",
            "",
            f"[{STANZA}]",
            f"pg1-path={self.pg.data}",
            f"pg1-socket-path={self.pg.sockets}",
            f"pg1-port={self.pg.port}",
            "pg1-user=postgres",
            "",
        ]))
        os.chown(self.config, 0, account.pw_gid)
        self.config.chmod(0o640)
        self.root = self.base / "drill"  # the script's /var/lib/kbpg-drill

    def start(self) -> None:
        archive = f"pgbackrest --config={self.config} --stanza={STANZA} archive-push %p"
        subprocess.run(self.pg.as_user + [
            str(self.pg.bindir / "pg_ctl"), "-D", str(self.pg.data), "-w", "-l", str(self.pg.base / "log"), "-o",
            f"-c listen_addresses='' -p {self.pg.port} -k {self.pg.sockets} -c wal_level=replica "
            f"-c archive_mode=on -c \"archive_command={archive}\"", "start"], check=True, capture_output=True)

    def pgbackrest(self, *args: str, timeout: float = 180) -> str:
        result = subprocess.run(["runuser", "-u", "postgres", "--", "pgbackrest", f"--config={self.config}",
                                 f"--stanza={STANZA}", *args], capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"pgbackrest {' '.join(args)}: {result.stdout}{result.stderr}"
        return result.stdout

    def psql(self, sql: str, database: str = DB) -> str:
        result = subprocess.run(self.pg.as_user + [str(self.pg.bindir / "psql"), "-X", "-q", "-At", "-v",
                                                   "ON_ERROR_STOP=1", "-h", str(self.pg.sockets), "-p",
                                                   str(self.pg.port), "-U", "postgres", "-d", database],
                                input=sql, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def remove(self) -> None:
        self.pg.remove()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    _need()
    c = Cluster()
    try:
        c.start()
        c.psql(f"CREATE ROLE {APP} LOGIN; CREATE DATABASE {DB} OWNER {APP};", database="postgres")
        c.psql(f"CREATE TABLE t (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp()); "
               f"ALTER TABLE t OWNER TO {APP};")
        c.pgbackrest("stanza-create")
        c.pgbackrest("check")
        c.pgbackrest("--type=full", "backup", timeout=300)
        c.psql("INSERT INTO t (id) SELECT generate_series(1, 50);")
        c.sentinels = json.loads(c.psql(rd.sentinel_sql(APP, secrets.token_hex(16))).splitlines()[-1])
        time.sleep(1.2)
        c.target = datetime.fromisoformat(json.loads(c.psql("SELECT to_json(clock_timestamp());").strip()))
        time.sleep(1.2)
        c.psql("INSERT INTO t (id) SELECT generate_series(51, 100);")
        c.sentinels = json.loads(c.psql(rd.sentinel_sql(APP, secrets.token_hex(16))).splitlines()[-1])
        c.pgbackrest("check")  # a WAL switch: the rows and the sentinel after T are archived
        probe = json.loads(c.psql(rd.probe_sql()).strip())
        c.version = int(probe["version_num"]) // 10000
        c.settings = probe["settings"]
        yield c
    finally:
        c.remove()


def _inbox(c: Cluster, target: datetime | None, query: str | None = None) -> str:
    drill_id = rd.new_id()
    (c.root / "inbox").mkdir(parents=True, exist_ok=True, mode=0o700)
    path = c.root / "inbox" / f"{drill_id}.json"
    path.write_text(rd.inbox_json(drill_id, STANZA, target, query, APP, DB, c.version, c.settings, 600,
                                  repo_user="postgres", config=str(c.config)))
    path.chmod(0o600)
    return drill_id


def _script(c: Cluster, action: str, drill_id: str, **kwargs) -> subprocess.CompletedProcess:
    script = Path(rd.__file__).resolve().parents[3] / "assets" / "backup" / "restore-drill"
    return subprocess.run(["bash", str(script), action, drill_id], env={**os.environ, "KBPG_DRILL_ROOT": str(c.root)},
                          capture_output=True, text=True, timeout=300, **kwargs)


def _result(c: Cluster, drill_id: str) -> dict:
    path = c.root / "results" / f"{drill_id}.json"
    assert path.exists(), f"no result {path}"
    assert path.stat().st_mode & 0o777 == 0o600
    return rd.parse_result(path.read_text())


def _judge(c: Cluster, drill_id: str, data: dict, target: datetime | None, query: str | None) -> rd.DrillResult:
    result = rd.DrillResult(id=drill_id, started=rd.now_iso(), backup_host="local", stanza=STANZA,
                            target=None if target is None else rd.utc_text(target))
    if query is not None:
        result.query = {"sql": query}
    result.apply(data, c.sentinels, target)
    result.scratch_removed = not (c.root / f"run-{drill_id}").exists()
    return result


def test_restore_to_T_has_exactly_the_rows_written_before_T(cluster: Cluster) -> None:
    query = "SELECT count(*), max(id) FROM t"
    drill_id = _inbox(cluster, cluster.target, query)
    run = _script(cluster, "run", drill_id)
    assert run.returncode == 0, run.stdout + run.stderr
    data = _result(cluster, drill_id)
    assert data["status"] == "ok", data
    assert data["query"]["csv"] == "count,max\n50,50\n", data["query"]
    assert data["backup_label"].endswith("F")
    result = _judge(cluster, drill_id, data, cluster.target, query)
    assert [s.verdict for s in result.sentinels] == ["present", "absent"], result.sentinels
    assert result.recovery_point is not None and rd._ts(result.recovery_point) <= cluster.target
    assert result.timings["restore"] is not None and result.timings["recovery"] is not None
    assert result.pgvector is None  # no vector extension in this database
    assert result.scratch_removed, "run-<id> must be gone when the script ends"
    assert result.ok, result.problems


def test_latest_has_every_row_and_sweeps_a_stale_scratch_copy(cluster: Cluster) -> None:
    stale = cluster.root / "run-stale-x"
    (stale / "data").mkdir(parents=True)
    drill_id = _inbox(cluster, None, "SELECT count(*) FROM t")
    run = _script(cluster, "run", drill_id)
    assert run.returncode == 0, run.stdout + run.stderr
    data = _result(cluster, drill_id)
    assert data["query"]["csv"] == "count\n100\n"
    assert data["swept"] == ["run-stale-x"] and not stale.exists()
    result = _judge(cluster, drill_id, data, None, "SELECT count(*) FROM t")
    assert [s.verdict for s in result.sentinels] == ["present", "present"]
    assert result.ok, result.problems


def test_the_query_is_read_only_and_capped(cluster: Cluster) -> None:
    drill_id = _inbox(cluster, None, "SELECT g FROM generate_series(1, 5000) g")
    run = _script(cluster, "run", drill_id)
    assert run.returncode == 0, run.stdout + run.stderr
    query = _result(cluster, drill_id)["query"]
    assert query["truncated"] is True and query["lines"] == 1001 and query["csv"].endswith("\n1000\n")
    drill_id = _inbox(cluster, None, "DELETE FROM t")
    run = _script(cluster, "run", drill_id)
    assert run.returncode == 1
    data = _result(cluster, drill_id)
    assert data["query"]["ran"] is False and "read-only" in data["query"]["error"], data["query"]
    # the text goes to the server as it is: no psql meta-command, no :variable interpolation
    marker = cluster.base / "meta-command-ran"
    for text in (f"\\! touch {marker}", f"select 1; \\! touch {marker}"):
        drill_id = _inbox(cluster, None, text)
        _script(cluster, "run", drill_id)
        assert _result(cluster, drill_id)["query"]["ran"] is False, text
    assert not marker.exists()


def test_a_target_before_every_backup_is_refused_naming_the_window(cluster: Cluster) -> None:
    early = datetime(2020, 1, 1, tzinfo=timezone.utc)
    drill_id = _inbox(cluster, early)
    run = _script(cluster, "run", drill_id)
    assert run.returncode == 1
    data = _result(cluster, drill_id)
    assert data["status"] == "failed" and data["phase"] == "space"
    assert data["error"].startswith("no backup ended before the target 2020-01-01 00:00:00.000000+00: the backups end from")
    assert not (cluster.root / f"run-{drill_id}").exists()


def test_a_second_drill_while_one_holds_the_lock_is_busy(cluster: Cluster) -> None:
    cluster.root.mkdir(parents=True, exist_ok=True)
    with open(cluster.root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        drill_id = _inbox(cluster, None)
        run = _script(cluster, "run", drill_id)
    assert run.returncode == 3, run.stdout + run.stderr
    data = _result(cluster, drill_id)
    assert data["status"] == "busy" and "another restore drill holds" in data["error"]
    assert not (cluster.root / f"run-{drill_id}").exists()


def _postmaster(run_dir: Path) -> int | None:
    try:
        pid = int((run_dir / "data" / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def test_sigkill_of_a_run_then_cleanup_leaves_nothing(cluster: Cluster) -> None:
    drill_id = _inbox(cluster, None, "SELECT pg_sleep(50)")
    script = Path(rd.__file__).resolve().parents[3] / "assets" / "backup" / "restore-drill"
    process = subprocess.Popen(["bash", str(script), "run", drill_id], env={**os.environ, "KBPG_DRILL_ROOT": str(cluster.root)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = cluster.root / f"run-{drill_id}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            progress = (run_dir / "progress").read_text() if (run_dir / "progress").exists() else ""
            if "operator's query" in progress:
                break
            assert process.poll() is None, f"the run ended early: {progress}"
            time.sleep(0.2)
        pid = _postmaster(run_dir)
        assert pid is not None, "the temporary PostgreSQL should be running"
        # a unix socket only: no TCP listener of the postmaster, listen_addresses empty, not archiving
        listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
        assert f"pid={pid}," not in listening, listening
        shown = subprocess.run(["runuser", "-u", "postgres", "--", str(cluster.pg.bindir / "psql"), "-X", "-At", "-h",
                                str(run_dir / "sock"), "-p", "55432", "-U", APP, "-d", DB, "-c",
                                "SELECT current_setting('listen_addresses') || '|' || current_setting('archive_mode') "
                                "|| '|' || current_setting('ssl')"], capture_output=True, text=True, timeout=30)
        assert shown.stdout.strip() == "|off|off", shown.stdout + shown.stderr
        # the run's own pgbackrest.conf: the repository's lines and pg1-path only (no node of the cluster, nothing
        # else of the main file), 0600 for the repository's user (it holds the cipher pass)
        conf = run_dir / "pgbackrest.conf"
        assert conf.stat().st_mode & 0o777 == 0o600 and conf.stat().st_uid == pwd.getpwnam("postgres").pw_uid
        lines = [line for line in conf.read_text().splitlines() if line]
        assert f"pg1-path={run_dir}/data" in lines and any(line.startswith("repo1-cipher-pass=") for line in lines)
        here = re.escape(str(run_dir))
        allowed = re.compile(rf"^(\[global\]|\[{STANZA}\]|repo1-[a-z-]+=.*|process-max=2|log-path=.*|lock-path=.*|"
                             rf"spool-path={here}/spool|log-level-[a-z]+=.*|pg1-path={here}/data)$")
        assert f"spool-path={run_dir}/spool" in lines  # restore clears the archive queue there: not the host's spool
        assert [line for line in lines if not allowed.match(line)] == [], lines
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        assert run_dir.exists() and _postmaster(run_dir) == pid  # what a killed unit's cgroup would leave, minus systemd
        cleanup = _script(cluster, "cleanup", drill_id)
        assert cleanup.returncode == 0, cleanup.stderr
        assert not run_dir.exists()
        assert not (cluster.root / "inbox" / f"{drill_id}.json").exists()
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    finally:
        if process.poll() is None:
            process.kill()
        pid = _postmaster(run_dir)
        if pid:
            os.kill(pid, signal.SIGKILL)
    # the lock was released with the killed run: the next drill runs
    drill_id = _inbox(cluster, None, "SELECT 1")
    assert _script(cluster, "run", drill_id).returncode == 0
