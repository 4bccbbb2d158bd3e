#!/usr/bin/env python3
"""Benchmark of backups and restore drills for a database of at least 1 GiB, on the lab, in one run:

- load: `pgbench -i -s 70` from this machine as the app role through LB:5432 (HAProxy -> primary); the app
  database's pg_database_size is read after it and must be at least 1 GiB (the run stops otherwise);
- full backup: `kbpg backup now --type full --json`: seconds kbpg followed it (unit start -> end), seconds in
  pgBackRest (its own start -> stop stamps), the database's size as restored, the bytes it added to the repository,
  and what a restore needs from the repository, as `kbpg backup list --json` reports them;
- differential backup after `pgbench -T 60` (TPC-B-like, 4 clients) through LB:5432: the same figures;
- `kbpg restore-drill --latest --json`: restore / start / recovery / verify / total seconds as the drill's script
  measured them on the backup host, and the drill's wall time as kbpg saw it and as this script saw it;
- RPO under a steady writer (`pgbench -R 50`, 2 clients, through LB:5432) for 2 min: the age of
  pg_stat_archiver.last_archived_time on the primary (now() - it, on the primary's clock, read as the monitor
  role through LB:5432) sampled every 2 s: median and max;
- `kbpg restore --time T --yes` (the cluster itself back to T, 2 s after the RPO phase): the command's wall time,
  its phases as its report gives them (drill, stop, restore and promotion, the replicas' clone, the outage), the
  rows of a marker table written before and after T, and the longest time a prober writing one row every 0.2 s
  through LB:5432 (a new connection each time, 2 s connect timeout) went without a successful write.

Every figure is printed as it is taken, then as one table at the end (also written as JSON with --out).

Run as root from the repo. Without --workdir the lab must be down: it is brought up on bare hosts, kbpg installs
the cluster (with backup-01), and the lab is taken down at the end, on failure and on Ctrl-C/SIGTERM too; hold
the lab's lock:
  flock /tmp/kb/lab.lock .venv/bin/python scripts/bench_backup.py --out bench-backup.json [--stop-by 15:55]
With --workdir, an installed lab's work dir is used as it is and left up.
--stop-by HH:MM (UTC): the run gives up early enough for the lab to be down by then (figures so far are kept).
Traffic goes only to the lab's own hosts (198.18.0.0/24). Load: ~1 GiB on each DB node, the repository and a
scratch copy on the backup host, all on this machine's disk.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402

from kbpg_tui.core import credentials as creds  # noqa: E402
from kbpg_tui.core import install as inst  # noqa: E402
from kbpg_tui.core import lab, tls  # noqa: E402
from kbpg_tui.core.ops import backup as ops  # noqa: E402
from kbpg_tui.core.settings import load_settings  # noqa: E402

GIB = 1024 ** 3
TEARDOWN_MARGIN = 180.0  # seconds kept before --stop-by for taking the lab down


class Figures:
    """The figures in the order they are taken: printed at once, and kept for the table and the JSON."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.raw: dict[str, Any] = {}

    def add(self, name: str, value: Any, unit: str, how: str) -> None:
        self.rows.append({"name": name, "value": value, "unit": unit, "how": how})
        print(f"  {name}: {show(value, unit)}  ({how})", flush=True)

    def table(self) -> list[str]:
        width = max((len(r["name"]) for r in self.rows), default=10)
        values = [show(r["value"], r["unit"]) for r in self.rows]
        vwidth = max((len(v) for v in values), default=5)
        lines = [f"{'figure':<{width}}  {'value':>{vwidth}}  how it was taken", "-" * (width + vwidth + 20)]
        lines += [f"{r['name']:<{width}}  {v:>{vwidth}}  {r['how']}" for r, v in zip(self.rows, values, strict=True)]
        return lines


def show(value: Any, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "bytes":
        return size(value)
    if unit == "s" and isinstance(value, (int, float)):
        return f"{value:.1f} s"
    return f"{value} {unit}".strip()


def size(value: int | float | None) -> str:
    if value is None:
        return "—"
    return f"{value / GIB:.2f} GiB" if value >= GIB else f"{value / 1024 ** 2:.1f} MiB"


def rpo_summary(ages: list[float | None]) -> dict[str, Any]:
    """Median and max of the archive's age samples (None: nothing archived yet, or the sample failed)."""
    seen = [a for a in ages if a is not None]
    return {"samples": len(ages), "missing": len(ages) - len(seen),
            "median": round(statistics.median(seen), 1) if seen else None,
            "max": round(max(seen), 1) if seen else None}


def find_backup(listing: dict[str, Any], label: str | None) -> dict[str, Any] | None:
    return next((b for b in listing.get("backups", []) if b.get("label") == label), None)


def backup_figures(figures: Figures, kind: str, outcome: dict[str, Any], listing: dict[str, Any],
                   wall: float) -> None:
    backup = outcome.get("backup") or {}
    listed = find_backup(listing, backup.get("label")) or {}
    figures.add(f"{kind} backup: time in kbpg", outcome.get("elapsed"), "s",
                f"`kbpg backup now --type {kind} --json` elapsed: kbpg-backup@{kind}.service started -> ended")
    figures.add(f"{kind} backup: time in pgBackRest", backup.get("duration"), "s",
                f"pgBackRest's stamps of {backup.get('label')}: stop - start")
    figures.add(f"{kind} backup: wall time of the command", round(wall, 1), "s", "this script: command start -> exit")
    figures.add(f"{kind} backup: database size", listed.get("size", backup.get("size")), "bytes",
                "pgBackRest's info.size: the database as restored")
    figures.add(f"{kind} backup: added to the repository", listed.get("repo_delta", backup.get("repo_delta")), "bytes",
                "`kbpg backup list --json` repo_delta: compressed (and encrypted) bytes this backup stored")
    figures.add(f"{kind} backup: repository size for a restore", listed.get("repo_size", backup.get("repo_size")),
                "bytes", "`kbpg backup list --json` repo_size: this backup with the ones it references")


def drill_figures(figures: Figures, report: dict[str, Any], wall: float) -> None:
    timings = report.get("timings") or {}
    backup = report.get("backup") or {}
    how = "`kbpg restore-drill --latest --json` timings, measured by the drill's script on the backup host"
    figures.add("drill: verdict", "ok" if report.get("ok") else f"NOT ok ({report.get('status')})", "",
                "; ".join(report.get("problems") or []) or "sentinel found, pgvector checked, scratch copy removed")
    figures.add("drill: backup restored", f"{backup.get('label')} ({backup.get('type')})", "", "the drill's report")
    figures.add("drill: restore", timings.get("restore"), "s", how + ": pgbackrest restore into the scratch dir")
    figures.add("drill: start", timings.get("start"), "s", how + ": the temporary PostgreSQL started")
    figures.add("drill: recovery", timings.get("recovery"), "s", how + ": WAL replayed to the end of the archive")
    figures.add("drill: verify", timings.get("verify"), "s", how + ": sentinel, pgvector")
    figures.add("drill: total", timings.get("total"), "s", how + ": script start -> verified")
    figures.add("drill: wall time in kbpg", report.get("wall"), "s", "the report's wall: the drill's unit start -> end")
    figures.add("drill: wall time of the command", round(wall, 1), "s", "this script: command start -> exit "
                "(sentinel write, upload, unit, report)")


# --- the lab -------------------------------------------------------------------------------------------------

def kbpg(workdir: Path, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kbpg_tui", "--workdir", str(workdir), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def kbpg_json(workdir: Path, *args: str, timeout: float = 3600) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    result = kbpg(workdir, *args, timeout=timeout)
    return parse_json(result, args, time.monotonic() - started)


def parse_json(result: subprocess.CompletedProcess, args: tuple[str, ...], wall: float
               ) -> tuple[dict[str, Any], float]:
    try:
        data = json.loads(result.stdout)
    except ValueError:
        raise SystemExit(f"kbpg {' '.join(args)}: no JSON (exit {result.returncode}):\n{result.stdout[-2000:]}\n"
                         f"{result.stderr[-2000:]}") from None
    if result.returncode != 0:
        print(f"! kbpg {' '.join(args)}: exit {result.returncode}\n{result.stderr[-2000:]}", flush=True)
    return data, wall


def pgbench_binary() -> str:
    found = shutil.which("pgbench") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"),
                                                      key=lambda p: int(p.split("/")[4]), reverse=True)), None)
    if not found:
        raise SystemExit("pgbench not found (apt-get install postgresql-client or postgresql-contrib)")
    return found


def libpq_env(workdir: Path, settings, values: dict) -> dict[str, str]:
    """pgbench's environment: the app role's password (never argv) and kbpg's TLS settings (verify-full with its CA)."""
    keywords = tls.libpq_params(workdir, settings)
    env = {**os.environ, "PGPASSWORD": values["POSTGRES_APP_PASS"], "PGCONNECT_TIMEOUT": "10"}
    if keywords:
        env.update(PGSSLMODE=keywords["sslmode"], PGSSLROOTCERT=keywords["sslrootcert"])
    return env


def pgbench_args(binary: str, settings, values: dict, *extra: str) -> list[str]:
    return [binary, "-h", settings.network.lb_address, "-p", str(settings.ports.haproxy_write),
            "-U", values["POSTGRES_APP_USER"], *extra, values["POSTGRES_DB"]]


def app_connect(workdir: Path, settings, values: dict) -> psycopg.Connection:
    return psycopg.connect(host=settings.network.lb_address, port=settings.ports.haproxy_write,
                           user=values["POSTGRES_APP_USER"], password=values["POSTGRES_APP_PASS"],
                           dbname=values["POSTGRES_DB"], connect_timeout=10, autocommit=True,
                           **tls.libpq_params(workdir, settings))


class Deadline:
    """--stop-by: SIGINT to this process TEARDOWN_MARGIN seconds before it (the run then stops as on Ctrl-C)."""

    def __init__(self, stop_by: datetime | None) -> None:
        self.hit = False
        self.timer: threading.Timer | None = None
        if stop_by is not None:
            seconds = (stop_by - datetime.now(timezone.utc)).total_seconds() - TEARDOWN_MARGIN
            if seconds <= 0:
                raise SystemExit(f"--stop-by {stop_by:%H:%M} UTC leaves no time (a {TEARDOWN_MARGIN:.0f} s margin "
                                 "is kept to take the lab down)")
            self.timer = threading.Timer(seconds, self._fire)
            self.timer.daemon = True
            self.timer.start()

    def _fire(self) -> None:
        self.hit = True
        print(f"\n! --stop-by reached ({TEARDOWN_MARGIN:.0f} s before it): stopping the run", flush=True)
        os.kill(os.getpid(), signal.SIGINT)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


def parse_stop_by(text: str | None, now: datetime | None = None) -> datetime | None:
    """HH:MM (UTC) today, or tomorrow when already past."""
    if not text:
        return None
    now = now or datetime.now(timezone.utc)
    try:
        hour, minute = (int(part) for part in text.split(":"))
        when = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    except ValueError:
        raise SystemExit(f"--stop-by {text!r}: HH:MM in UTC, e.g. 15:55") from None
    return when if when > now else when + timedelta(days=1)


# --- the phases ----------------------------------------------------------------------------------------------

def load(figures: Figures, workdir: Path, settings, values: dict, binary: str, scale: int) -> None:
    print(f"\n== load: pgbench -i -s {scale} through LB:{settings.ports.haproxy_write} as the app role", flush=True)
    started = time.monotonic()
    result = subprocess.run(pgbench_args(binary, settings, values, "-i", "-q", "-s", str(scale)),
                            capture_output=True, text=True, env=libpq_env(workdir, settings, values), timeout=3600)
    took = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"pgbench -i failed: {result.stderr.strip()[-1500:]}")
    with app_connect(workdir, settings, values) as conn:
        database_size, version = conn.execute("SELECT pg_database_size(current_database()), "
                                              "current_setting('server_version')").fetchone()
    figures.raw["server_version"] = version
    figures.add("load: pgbench -i time", round(took, 1), "s",
                f"pgbench -i -s {scale} from this machine via LB:{settings.ports.haproxy_write} (client-side data, "
                "vacuum, primary keys), wall")
    figures.add("load: database size", database_size, "bytes",
                "pg_database_size(current_database()) as the app role through LB after the load")
    if database_size < GIB:
        raise SystemExit(f"the app database is {size(database_size)} after pgbench -i -s {scale}: under 1 GiB "
                         "(raise --scale)")


def take_backup(figures: Figures, ctx, workdir: Path, kind: str) -> None:
    print(f"\n== {kind} backup: kbpg backup now --type {kind}", flush=True)
    try:
        state = ops.read_archiver(ctx, 10)
        figures.add(f"{kind} backup: WAL segments waiting to be archived at its start", state.waiting, "",
                    "pg_stat_archiver on the primary (completed segments after last_archived_wal)")
    except ops.BackupError as exc:
        print(f"! pg_stat_archiver: {exc}")
    for _ in range(60):  # install's first full backup (started, not waited for) may still run: exit 3, wait
        started = time.monotonic()
        busy = kbpg(workdir, "backup", "now", "--type", kind, "--json")
        if busy.returncode != 3:
            break
        print(f"  (busy: {busy.stderr.strip()[-300:]}; again in 10 s)", flush=True)
        time.sleep(10)
    outcome, wall = parse_json(busy, ("backup", "now", "--type", kind), time.monotonic() - started)
    figures.raw[f"{kind}_backup"] = outcome
    if not outcome.get("ok"):
        raise SystemExit(f"the {kind} backup failed: {outcome.get('error')}\n{outcome.get('journal', '')[-2000:]}")
    listing, _ = kbpg_json(workdir, "backup", "list", "--json", timeout=120)
    figures.raw["backup_list"] = listing
    backup_figures(figures, kind, outcome, listing, wall)
    stored = sum(b.get("repo_delta") or 0 for b in listing.get("backups", []))
    figures.add(f"after the {kind} backup: repository (backups)", stored, "bytes",
                f"`kbpg backup list --json`: sum of repo_delta over its {len(listing.get('backups', []))} backup(s) "
                "(WAL archive not counted)")


def writes(figures: Figures, workdir: Path, settings, values: dict, binary: str, seconds: int) -> None:
    print(f"\n== writes: pgbench -T {seconds} (TPC-B-like, 4 clients) through LB:{settings.ports.haproxy_write}",
          flush=True)
    result = subprocess.run(pgbench_args(binary, settings, values, "-T", str(seconds), "-c", "4", "-j", "2"),
                            capture_output=True, text=True, env=libpq_env(workdir, settings, values),
                            timeout=seconds + 300)
    if result.returncode != 0:
        raise SystemExit(f"pgbench -T {seconds} failed: {result.stderr.strip()[-1500:]}")
    tps = next((line.split("=")[1].split()[0] for line in result.stdout.splitlines()
                if line.startswith("tps =")), None)
    figures.add("writes before the diff: TPC-B tps", float(tps) if tps else None, "tps",
                f"pgbench -T {seconds} -c 4 -j 2 via LB:{settings.ports.haproxy_write}")


def drill(figures: Figures, workdir: Path, timeout: float) -> None:
    print("\n== restore drill: kbpg restore-drill --latest", flush=True)
    report, wall = kbpg_json(workdir, "restore-drill", "--latest", "--json", timeout=timeout)
    figures.raw["restore_drill"] = report
    drill_figures(figures, report, wall)


def rpo(figures: Figures, ctx, workdir: Path, settings, values: dict, binary: str, seconds: int,
        every: float = 2.0) -> None:
    print(f"\n== RPO: pgbench -R 50 (2 clients) through LB:{settings.ports.haproxy_write} for {seconds} s, "
          f"archive age every {every:.0f} s", flush=True)
    writer = subprocess.Popen(pgbench_args(binary, settings, values, "-R", "50", "-c", "2", "-j", "1",
                                           "-T", str(seconds + 10)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=libpq_env(workdir, settings, values))
    ages: list[float | None] = []
    errors: list[str] = []
    try:
        time.sleep(5)  # the writer connected and writing
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            tick = time.monotonic()
            try:
                ages.append(ops.read_archiver(ctx, 5).last_archived_age)
            except ops.BackupError as exc:
                ages.append(None)
                errors.append(str(exc))
            time.sleep(max(0.0, every - (time.monotonic() - tick)))
    finally:
        if writer.poll() is None:
            writer.terminate()
        out, err = writer.communicate(timeout=30)
    summary = rpo_summary(ages)
    figures.raw["rpo"] = {**summary, "ages": ages, "errors": errors[:5], "archive_timeout": settings.backup.archive_timeout}
    how = (f"now() - pg_stat_archiver.last_archived_time on the primary, every {every:.0f} s for {seconds} s under "
           f"pgbench -R 50; archive_timeout {settings.backup.archive_timeout} s; {summary['samples']} samples, "
           f"{summary['missing']} missing")
    figures.add("RPO: archive age, median", summary["median"], "s", how)
    figures.add("RPO: archive age, max", summary["max"], "s", how)
    if errors:
        print(f"! {len(errors)} sample(s) failed, first: {errors[0]}")


def restore_in_place(figures: Figures, workdir: Path, settings, values: dict, timeout: float) -> None:
    print("\n== point-in-time restore of the cluster: kbpg restore --time T --yes", flush=True)
    with app_connect(workdir, settings, values) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_restore_marker")
        conn.execute("CREATE TABLE bench_restore_marker (id int)")
        conn.execute("INSERT INTO bench_restore_marker VALUES (1)")
        conn.execute("CREATE TABLE IF NOT EXISTS bench_restore_probe (at timestamptz DEFAULT clock_timestamp())")
        time.sleep(1.1)
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        target = row[0]
        time.sleep(1.1)
        conn.execute("INSERT INTO bench_restore_marker VALUES (2)")
    successes: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            try:
                with psycopg.connect(host=settings.network.lb_address, port=settings.ports.haproxy_write,
                                     user=values["POSTGRES_APP_USER"], password=values["POSTGRES_APP_PASS"],
                                     dbname=values["POSTGRES_DB"], connect_timeout=2, autocommit=True,
                                     **tls.libpq_params(workdir, settings)) as conn:
                    conn.execute("INSERT INTO bench_restore_probe DEFAULT VALUES")
                    successes.append(time.monotonic())
            except psycopg.Error:
                pass
            stop.wait(0.2)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    started = time.monotonic()
    result = kbpg(workdir, "restore", "--time", target.isoformat(), "--yes", timeout=timeout)
    wall = time.monotonic() - started
    time.sleep(3)
    stop.set()
    prober.join(10)
    if result.returncode != 0:
        raise SystemExit(f"kbpg restore failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")
    reports = sorted((workdir / "reports").glob("restore-2*.json"))
    report = json.loads(reports[-1].read_text()) if reports else {}
    figures.raw["restore"] = report
    figures.add("restore: command", round(wall, 1), "s", "`kbpg restore --time T --yes`, wall time")
    for name, how in (("drill", "the restore drill to T first, on the backup host"),
                      ("stop", "Patroni stopped on the 3 DB nodes"),
                      ("restore", "Patroni started, pgbackrest restore on the restore node, recovery to T, promotion"),
                      ("replicas", "both replicas cloned from the restored leader and streaming"),
                      ("down", "first Patroni stopped -> restored leader running (kbpg's clock)")):
        figures.add(f"restore: {name}", (report.get("timings") or {}).get(name), "s", how)
    gaps = [b - a for a, b in zip(successes, successes[1:], strict=False)]
    figures.add("restore: longest write gap at LB:5432", round(max(gaps), 1) if gaps else None, "s",
                "a prober writing every 0.2 s through LB:5432 (new connection each time): longest time between two "
                "successful writes")
    with app_connect(workdir, settings, values) as conn:
        rows = [r[0] for r in conn.execute("SELECT id FROM bench_restore_marker ORDER BY id").fetchall()]
    figures.add("restore: marker rows after it", str(rows), "", "row 1 written before T, row 2 after: [1] expected")


def machine_facts(settings) -> dict[str, Any]:
    memory = None
    try:
        memory = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        pass
    disk = shutil.disk_usage("/")
    return {"cores": os.cpu_count(), "memory": memory, "disk_free": disk.free,
            "lab": "7 hosts (3 DB, 2 HAProxy, backup-01, LB) as network namespaces + systemd on this one machine, "
                   "one disk",
            "backup": {"process_max": settings.backup.process_max, "archive_timeout": settings.backup.archive_timeout,
                       "archive_push_queue_max": settings.backup.archive_push_queue_max}}


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="an installed lab's work dir (used as it is, left up)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    parser.add_argument("--scale", type=int, default=70, help="pgbench scale of the load (70: just over 1 GiB)")
    parser.add_argument("--write-seconds", type=int, default=60, help="pgbench -T before the diff backup")
    parser.add_argument("--rpo-seconds", type=int, default=120, help="how long the RPO is sampled")
    parser.add_argument("--no-restore", action="store_true", help="skip the in-place `kbpg restore` at the end")
    parser.add_argument("--stop-by", help="HH:MM UTC by which the lab must be down (the run stops early if need be)")
    args = parser.parse_args()
    stop_by = parse_stop_by(args.stop_by)
    binary = pgbench_binary()
    own_lab = args.workdir is None
    if own_lab and lab.status(probe_ssh=False).state != "down":
        print("the lab must be down first (or give --workdir of an installed lab)", file=sys.stderr)
        return 2
    figures = Figures()
    outcome = {"complete": False, "error": None}
    began = time.monotonic()
    print(f"started {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC; pgbench {binary}", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # kill/timeout: stopped as on Ctrl-C, the lab taken down
    deadline = Deadline(stop_by)
    workdir = args.workdir.resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="kbpg-bench-backup-"))
    run = None
    try:
        if own_lab:
            print(f"\n== lab up and install (work dir {workdir})", flush=True)
            started = time.monotonic()
            lab.up(workdir)
            figures.add("lab up", round(time.monotonic() - started, 1), "s", "lab.up on bare hosts")
            started = time.monotonic()
            result = kbpg(workdir, "install", "--yes", timeout=3600)
            if result.returncode != 0:
                raise SystemExit(f"kbpg install failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")
            figures.add("install", round(time.monotonic() - started, 1), "s", "`kbpg install --yes` from bare hosts")
        settings = load_settings(workdir / "kbpg.toml")
        values = creds.read_env(workdir / creds.ENV_FILE)
        figures.raw["machine"] = machine_facts(settings)
        run = inst.prepare(workdir, settings, lambda event: None)
        ctx = run.ctx
        load(figures, workdir, settings, values, binary, args.scale)
        take_backup(figures, ctx, workdir, "full")
        writes(figures, workdir, settings, values, binary, args.write_seconds)
        take_backup(figures, ctx, workdir, "diff")
        drill(figures, workdir, timeout=settings.backup.drill_timeout + 300)
        rpo(figures, ctx, workdir, settings, values, binary, args.rpo_seconds)
        if not args.no_restore:
            restore_in_place(figures, workdir, settings, values, timeout=settings.backup.drill_timeout * 2 + 600)
        outcome["complete"] = True
    except KeyboardInterrupt:
        outcome["error"] = "stopped by --stop-by" if deadline.hit else "interrupted (Ctrl-C / SIGTERM)"
        print(f"\n! {outcome['error']}", flush=True)
    except SystemExit as exc:
        outcome["error"] = str(exc.code)
        print(f"\n! {exc.code}", flush=True)
    except Exception as exc:  # noqa: BLE001 - said, and the lab still taken down
        outcome["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        deadline.cancel()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the lab goes down whatever is pressed now
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if run is not None:
            run.close()
        if own_lab:
            started = time.monotonic()
            try:
                lab.down(workdir)
                print(f"\nlab down in {time.monotonic() - started:.1f} s", flush=True)
            except Exception as exc:  # said loudly: the lab must not stay up
                print(f"\n! lab down FAILED: {exc}: run `kbpg lab down` under the lock", flush=True)
                outcome["error"] = (outcome["error"] or "") + f"; lab down failed: {exc}"
    facts = figures.raw.get("machine") or {}
    print(f"\nBackup benchmark ({'complete' if outcome['complete'] else 'INCOMPLETE: ' + str(outcome['error'])}), "
          f"{(time.monotonic() - began) / 60:.1f} min; machine: {facts.get('cores', os.cpu_count())} cores, "
          f"{size(facts.get('memory'))} RAM; {facts.get('lab', 'lab on this machine')}; PostgreSQL "
          f"{figures.raw.get('server_version', '?')}")
    print("\n".join(figures.table()))
    if args.out:
        args.out.write_text(json.dumps({"finished": datetime.now(timezone.utc).isoformat(), **outcome,
                                        "figures": figures.rows, "raw": figures.raw}, indent=2, default=str) + "\n")
        print(f"JSON: {args.out}")
    return 0 if outcome["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
