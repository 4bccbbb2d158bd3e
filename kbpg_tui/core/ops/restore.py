"""In-place point-in-time restore of the cluster (``kbpg restore --time T``): destructive, confirmed, resumable.

Everything the cluster holds after T is discarded. The steps, run by the install's engine (their tasks report
changed/unchanged like an install's):

- **P0 drill**: a restore drill to T on the backup host first (:func:`restore_drill.run_drill`: its sentinel is
  written after T and archived, so the archive reaches past T). If T cannot be restored there (before the oldest
  backup, a gap in the archive...), the cluster is never touched.
- **P1 stop**: the Raft watchdog's timer, then Patroni (so PostgreSQL) on every DB node, replicas first.
- **P2 prepare**: patroni.yml for the restore: on the restore node (the leader, or ``--node``) a bootstrap method
  that runs ``pgbackrest restore --type=time --target=T --target-action=promote`` (Patroni's custom bootstrap,
  keeping pgBackRest's recovery settings); on the others ``nofailover`` (they never bootstrap: they wait for the
  leader, then clone from it). Then, on every node, the data directory and Patroni's Raft directory are moved
  aside (``<dir>.before-restore-<stamp>``, a rename on the same file system, nothing deleted) and made empty.
  The configuration is written first: a Patroni started by hand at any moment after P1 cannot make an empty cluster.
- **P3 restore**: Patroni started on every node together (Raft needs a quorum); the restore node restores, recovers
  to T and promotes on a new timeline; the others clone from it.
- **P4 converge**: the install's steps 02 (patroni.yml back to the normal one, reloaded; roles and passwords as
  postgres.env says: a restore to before a rotation brings old passwords back), 04 (PgBouncer's auth file from the
  restored verifiers) and 06 (stanza, archiving checked on the new timeline).
- **P5 verify**: the drill's sentinels on the restored leader (present exactly when written at or before T), a full
  backup started (the new timeline's base), ``reports/restore-<stamp>.md`` / ``.json``.

``restore.pending`` (WORKDIR, 0600, no secret) records the target, the restore node, the stamp and how far the
restore went, before anything is touched; the same command finishes a restore that was stopped or killed (phases
already done are not done again: Patroni is never stopped again once the restore has started). While it exists,
installs, rotations, switchovers and drills refuse.
"""

from __future__ import annotations

import json
import secrets
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import backup, cluster, raft
from ..engine import Context, Outcome, Step, Task, TaskError, TaskRun
from ..events import Progress
from ..files import atomic_write, write_report_pair
from ..ssh import Host
from ..steps.host_guards import RAFT_DIR
from . import restore_drill as rd
from .drill_report import now_iso

PENDING_FILE = Path("restore.pending")
PHASES = ("new", "drilled", "stopped", "started", "converged")
BOOTSTRAP_METHOD = "kbpg_restore"
STOP_TIMEOUT = 180  # seconds for Patroni to stop PostgreSQL (a fast shutdown; a checkpoint first)
POLL_SECONDS = 2.0


class RestoreError(ValueError):
    """The restore cannot start (exit 2): a pending restore of another target, an unknown node..."""


@dataclass
class Pending:
    """restore.pending: what is being restored, where, and how far it went."""

    id: str
    target: str  # UTC ISO 8601
    node: str = ""  # the restore node (chosen at P0: the leader, or --node)
    stamp: str = ""  # the suffix of the directories moved aside
    phase: str = "new"
    old_leader: str = ""
    old_timeline: int | None = None
    sentinels: list[dict[str, Any]] = field(default_factory=list)  # the leader's, as the drill read them
    drill_report: str = ""
    started: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # seconds: drill, stop, restore, replicas, down
    down_at: float | None = None  # epoch: the first Patroni stopped (writes refused from here)
    up_at: float | None = None  # epoch: the restored leader running (writes accepted again)

    @property
    def target_time(self) -> datetime:
        return datetime.fromisoformat(self.target)

    def reached(self, phase: str) -> bool:
        return PHASES.index(self.phase) >= PHASES.index(phase)


def load_pending(workdir: Path) -> Pending | None:
    """The pending restore, or None. RestoreError when the file cannot be read (it is never guessed)."""
    path = Path(workdir) / PENDING_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        pending = Pending(**{k: v for k, v in data.items() if k in Pending.__dataclass_fields__})
        pending.target_time  # noqa: B018 - checks the target
        if pending.phase not in PHASES:
            raise ValueError(f"unknown phase {pending.phase!r}")
    except (OSError, ValueError, TypeError) as exc:
        raise RestoreError(f"{path}: cannot be read ({exc}); look at it, and move it away only if no restore runs "
                           "(its Patroni may be stopped on every DB node)") from None
    return pending


def save_pending(workdir: Path, pending: Pending) -> None:
    atomic_write(Path(workdir) / PENDING_FILE, (json.dumps(asdict(pending), indent=1) + "\n").encode("utf-8"),
                 mode=0o600)


def refuse_if_pending(workdir: Path) -> None:
    """TaskError while a restore is pending: the cluster is being rebuilt (an install would start Patroni with the
    normal configuration on nodes whose data directory was moved aside)."""
    path = Path(workdir) / PENDING_FILE
    if path.exists():
        raise TaskError(f"a point-in-time restore is pending ({path}): finish it first with `kbpg restore` (the same "
                        "command); nothing was changed")


def begin(workdir: Path, target: datetime | None, node: str | None, db_nodes: list[str]) -> tuple[Pending, bool]:
    """The restore to run: the pending one (resumed: ``target`` must be None or the same moment, ``node`` None or
    the same) or a new one (``target`` required). Returns (pending, resumed); RestoreError otherwise."""
    if node is not None and node not in db_nodes:
        raise RestoreError(f"--node {node}: not a DB node of servers.tsv ({', '.join(db_nodes)})")
    pending = load_pending(workdir)
    if pending is not None:
        if target is not None and target != pending.target_time:
            raise RestoreError(f"a restore to {pending.target} is pending ({Path(workdir) / PENDING_FILE}): finish "
                               f"it first (`kbpg restore --yes`, or --time {pending.target}); a second target is "
                               "refused")
        if node is not None and pending.node and node != pending.node:
            raise RestoreError(f"the pending restore runs on {pending.node}; --node {node} is refused")
        return pending, True
    if target is None:
        raise RestoreError("--time T is required (no restore is pending): the moment to restore the cluster to")
    now = datetime.now(timezone.utc)
    pending = Pending(id=now.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3), target=rd.utc_text(target),
                      node=node or "", stamp=now.strftime("%Y%m%d-%H%M%S"), started=now_iso())
    save_pending(workdir, pending)
    return pending, False


# --- what runs on the nodes --------------------------------------------------------------------------------------

def aside_path(path: str, stamp: str) -> str:
    return f"{path.rstrip('/')}.before-restore-{stamp}"


def restore_command(stanza: str, data_dir: str, target: datetime) -> str:
    """Patroni's custom bootstrap command (run as postgres on the restore node; Patroni adds no parameter)."""
    return " ".join(shlex.quote(word) for word in (
        "pgbackrest", f"--stanza={stanza}", f"--pg1-path={data_dir}", "--type=time",
        f"--target={rd.pgbackrest_target(target)}", "--target-action=promote", "--log-level-console=info",
        "restore"))


def restore_config(config: dict, restore_node: bool, stanza: str, target: datetime) -> dict:
    """patroni.yml during a restore, from the node's normal one: the restore node bootstraps with pgBackRest, the
    others can never bootstrap (``nofailover``: they wait for a leader and clone)."""
    wanted = json.loads(json.dumps(config))  # a deep copy of plain data
    if restore_node:
        wanted["bootstrap"]["method"] = BOOTSTRAP_METHOD
        wanted["bootstrap"][BOOTSTRAP_METHOD] = {
            "command": restore_command(stanza, wanted["postgresql"]["data_dir"], target),
            "no_params": True,
            "keep_existing_recovery_conf": True,
        }
    else:
        wanted["tags"] = {**wanted.get("tags", {}), "nofailover": True}
    return wanted


def aside_script(path: str, stamp: str) -> str:
    """Move a directory aside (only when it holds something) and leave it empty, postgres's, 0700. Prints
    ``moved`` or ``empty``; refuses a data directory with a live postmaster."""
    quoted, aside = shlex.quote(path), shlex.quote(aside_path(path, stamp))
    return (f"if [ -f {quoted}/postmaster.pid ] && kill -0 \"$(head -n 1 {quoted}/postmaster.pid)\" 2>/dev/null; "
            f"then echo 'a PostgreSQL still runs in {path}' >&2; exit 3; fi; "
            f"if [ -d {quoted} ] && [ -n \"$(ls -A {quoted})\" ]; then "
            f"if [ -e {aside} ]; then echo '{aside_path(path, stamp)} already exists' >&2; exit 4; fi; "
            f"mv {quoted} {aside} && echo moved; else echo empty; fi; "
            f"install -d -o postgres -g postgres -m 0700 {quoted}")


# --- tasks ---------------------------------------------------------------------------------------------------------

def _save(run: TaskRun, pending: Pending, phase: str | None = None) -> None:
    if phase is not None and not pending.reached(phase):
        pending.phase = phase
    save_pending(run.ctx.workdir, pending)


def _node(run: TaskRun, pending: Pending) -> Host:
    hosts = {h.name: h for h in run.ctx.db_hosts}
    if pending.node not in hosts:
        raise TaskError(f"the restore node {pending.node!r} is not a DB node of servers.tsv ({', '.join(hosts)})")
    return hosts[pending.node]


def _drill(pending: Pending):
    def drill(run: TaskRun) -> Outcome:
        if pending.reached("drilled"):
            return Outcome.unchanged(f"drill to {pending.target} passed before ({pending.drill_report or 'report'})")
        state = cluster.read_patronictl(run)
        leader = state.leader
        if leader is None:
            raise TaskError("the cluster has no leader: the drill's sentinel cannot be written; nothing was changed")
        started = time.monotonic()
        try:
            result = rd.run_drill(run.ctx, pending.target_time, None)
        except (rd.DrillFailed, rd.DrillBusy, rd.TargetError) as exc:
            raise TaskError(f"the restore drill to {pending.target} could not run: {exc}; nothing was changed") \
                from None
        pending.timings["drill"] = round(time.monotonic() - started, 1)
        report = str(result.paths[0]) if result.paths else ""
        if not result.ok:
            raise TaskError(f"the restore drill to {pending.target} failed on {result.backup_host}, so the cluster "
                            f"was not touched: {'; '.join(result.problems) or result.status} (report: {report})")
        pending.node = pending.node or leader.name
        pending.old_leader = leader.name
        pending.old_timeline = leader.timeline
        pending.sentinels = [{"token": s.token, "written_at": s.written_at} for s in result.sentinels]
        pending.drill_report = report
        _save(run, pending, "drilled")
        return Outcome.unchanged(f"drill to {pending.target}: restored and verified on {result.backup_host} in "
                                 f"{result.wall or 0:.1f} s (recovery point {result.recovery_point or '?'}); "
                                 f"restore node {pending.node}")
    return drill


def _stop_watchdog(pending: Pending):
    def stop(run: TaskRun) -> Outcome:
        if pending.reached("started"):
            return Outcome.unchanged("the restore has started: nothing is stopped again")
        timer = f"{raft.WATCH_UNIT}.timer"
        active = run.run(f"systemctl is-active {timer} 2>/dev/null || true", on_line=None).stdout.strip()
        if active != "active":
            return Outcome.unchanged("Raft watchdog not running")
        run.run(f"systemctl stop {timer} {raft.WATCH_UNIT}.service", what="stopping the Raft watchdog")
        return Outcome.changed("Raft watchdog stopped (step 02 starts it again)")
    return stop


def _stop_patroni(pending: Pending):
    def stop(run: TaskRun) -> Outcome:
        if pending.reached("started"):
            return Outcome.unchanged("the restore has started: Patroni is not stopped again")
        node = _node(run, pending)
        data_dir = run.settings.postgresql.effective_data_dir
        order = [h for h in run.ctx.db_hosts if h.name != node.name] + [node]  # the restore node (leader) last
        stopped = []
        began = time.monotonic()
        if pending.down_at is None:
            pending.down_at = time.time()
            _save(run, pending)

        def one(host: Host) -> bool:
            state = run.run("systemctl is-active patroni || true", host=host, on_line=None).stdout.strip()
            if state in ("inactive", "failed"):
                return False
            run.run("systemctl stop patroni", host=host, timeout=STOP_TIMEOUT, what="stopping patroni")
            return True

        for group in (order[:-1], order[-1:]):
            with ThreadPoolExecutor(max_workers=max(1, len(group))) as pool:
                stopped += [h.name for h, did in zip(group, pool.map(one, group), strict=True) if did]
        still = []
        for host in order:
            answer = run.run(f"if [ -f {shlex.quote(data_dir)}/postmaster.pid ] && kill -0 \"$(head -n 1 "
                             f"{shlex.quote(data_dir)}/postmaster.pid)\" 2>/dev/null; then echo running; "
                             "else echo stopped; fi", host=host, on_line=None).stdout.strip()
            if answer != "stopped":
                still.append(f"{host.name} ({answer or 'no answer'})")
        if still:
            raise TaskError(f"PostgreSQL still runs after Patroni stopped on {', '.join(still)}; nothing was moved")
        if stopped:
            pending.timings["stop"] = round(time.monotonic() - began, 1)
        _save(run, pending, "stopped")
        return Outcome.of(bool(stopped), ("Patroni stopped on " + ", ".join(stopped)) if stopped else
                          "Patroni already stopped on every DB node")
    return stop


def _write_config(pending: Pending):
    def write(run: TaskRun) -> Outcome:
        from ..steps import s02_patroni as patroni

        if pending.reached("started"):
            return Outcome.unchanged("the restore has started")
        host = run.host
        assert host is not None
        node = _node(run, pending)
        wanted = restore_config(patroni.render_config(run, host), host.name == node.name,
                                backup.stanza(run.ctx.credentials), pending.target_time)
        changed = run.connection().upload(patroni.CONFIG_PATH, patroni.render_yaml(wanted), mode=0o600,
                                          owner="postgres", group="postgres")
        what = "bootstraps with pgbackrest restore" if host.name == node.name else "nofailover: clones from it"
        return Outcome.of(changed, f"patroni.yml for the restore ({what})")
    return write


def _move_aside(pending: Pending):
    def move(run: TaskRun) -> Outcome:
        if pending.reached("started"):
            return Outcome.unchanged("the restore has started: nothing is moved again")
        moved = []
        for path in (run.settings.postgresql.effective_data_dir, RAFT_DIR):
            result = run.run(aside_script(path, pending.stamp), check=False, on_line=None,
                             what=f"moving {path} aside")
            if not result.ok:
                raise TaskError(f"{run.host.name if run.host else '?'}: {path}: "
                                f"{(result.stderr or result.stdout).strip() or 'exit ' + str(result.exit_status)}")
            if result.stdout.strip().endswith("moved"):
                moved.append(f"{path} -> {aside_path(path, pending.stamp)}")
        return Outcome.of(bool(moved), "; ".join(moved) or "already empty")
    return move


def _wait(run: TaskRun, pending: Pending, done, what: str, timeout: float) -> cluster.ClusterState:
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    while True:
        run.check_cancel()
        try:
            state: cluster.ClusterState | None = cluster.read_patronictl(run)
        except TaskError:
            state = None
        if state is not None and done(state):
            return state
        if time.monotonic() > deadline:
            from ..steps.s02_patroni import journal_tails

            raise TaskError(f"{what}: not done after {timeout:.0f} s ({state.summary() if state else 'no answer'}); "
                            f"the same command goes on waiting. Look at `journalctl -u patroni` on {pending.node}."
                            f"\n{journal_tails(run)}")
        shown = state.summary() if state is not None else "Raft forming"
        run.ctx.sink(Progress(f"{what}: {shown}", min(0.99, (time.monotonic() - started) / timeout)))
        time.sleep(POLL_SECONDS)


def _start(pending: Pending):
    def start(run: TaskRun) -> Outcome:
        _save(run, pending, "started")  # from here on, nothing is stopped or moved again
        node = _node(run, pending)
        began = time.monotonic()
        hosts = run.ctx.db_hosts

        def start_one(host: Host) -> bool:
            if run.run("systemctl is-active patroni || true", host=host, on_line=None).stdout.strip() == "active":
                return False
            run.run("systemctl start patroni", host=host, what="starting patroni")
            return True

        with ThreadPoolExecutor(max_workers=len(hosts)) as pool:  # together: Raft elects only with a quorum
            started = [h.name for h, did in zip(hosts, pool.map(start_one, hosts), strict=True) if did]
        timeout = float(run.settings.backup.drill_timeout)

        def promoted(state: cluster.ClusterState) -> bool:
            leader = state.leader
            return (leader is not None and leader.name == node.name and leader.is_running_leader
                    and (pending.old_timeline is None or (leader.timeline or 0) > pending.old_timeline))

        state = _wait(run, pending, promoted, f"restoring on {node.name} to {pending.target}", timeout)
        leader = state.leader
        assert leader is not None
        run.ctx.state["leader"] = leader.name
        if "restore" not in pending.timings:  # a resumed run does not overwrite what the first one measured
            pending.timings["restore"] = round(time.monotonic() - began, 1)
        if pending.up_at is None:
            pending.up_at = time.time()
            if pending.down_at is not None:
                pending.timings["down"] = round(pending.up_at - pending.down_at, 1)
        _save(run, pending)
        return Outcome.of(bool(started), f"{node.name} restored to {pending.target} and promoted (timeline "
                          f"{pending.old_timeline} -> {leader.timeline}; restore {pending.timings['restore']:.1f} s"
                          + (f", writes refused for {pending.timings['down']:.1f} s so far" if "down" in
                             pending.timings else "") + ")" + (f"; Patroni started on {', '.join(started)}"
                                                               if started else ""))
    return start


def _replicas(pending: Pending):
    def replicas(run: TaskRun) -> Outcome:
        began = time.monotonic()
        names = [h.name for h in run.ctx.db_hosts]
        state = _wait(run, pending, lambda s: cluster.health(s, names).ok, "replicas cloning from the restored leader",
                      float(run.settings.backup.drill_timeout))
        pending.timings.setdefault("replicas", round(time.monotonic() - began, 1))
        _save(run, pending)
        return Outcome.unchanged(f"every member streaming: {state.summary()}")
    return replicas


SENTINEL_ROWS = ("SELECT coalesce(json_agg(json_build_object('token', token, 'written_at', written_at)), '[]') FROM "
                 f"{rd.SENTINEL_SCHEMA}.sentinel;")


def _verify(pending: Pending):
    def verify(run: TaskRun) -> Outcome:
        leader = cluster.leader_host(run)
        database = run.ctx.credentials["POSTGRES_DB"]
        table = cluster.psql(run, leader, f"SELECT to_regclass('{rd.SENTINEL_SCHEMA}.sentinel') IS NOT NULL;",
                             "looking for the sentinel table", database).stdout.strip()
        # no table at T (the first drill made it after T): no sentinel restored, which is right for each of them
        rows = rd._json_line(cluster.psql(run, leader, SENTINEL_ROWS, "reading the sentinels", database).stdout,
                             "the sentinels") if table == "t" else []
        verdicts = rd.sentinel_verdicts(pending.sentinels, rows if isinstance(rows, list) else [],
                                        pending.target_time)
        history = cluster.on_leader(run, "SELECT timeline_id FROM pg_control_checkpoint();", "reading the timeline"
                                    ).stdout.strip()
        wrong = [s for s in verdicts if not s.ok]
        report = RestoreReport(pending, verdicts, history, run.ctx.settings.postgresql.effective_data_dir)
        started_backup = ""
        repo = run.ctx.backup_host
        if repo is not None and not wrong:
            result = run.run("systemctl start --no-block kbpg-backup@full.service", host=repo, check=False,
                             on_line=None, what="starting a full backup")
            started_backup = "a full backup started (kbpg-backup@full.service)" if result.ok else \
                f"the full backup did not start: {(result.stderr or result.stdout).strip()[-200:]}"
        report.backup = started_backup
        paths = report.write(run.ctx.workdir)
        if wrong:
            raise TaskError(f"restored, but {len(wrong)} sentinel(s) are not as T says: "
                            + "; ".join(f"{s.token[:12]} written {s.written_at}: {s.verdict}" for s in wrong[:5])
                            + f" (report: {paths[0]})")
        (run.ctx.workdir / PENDING_FILE).unlink(missing_ok=True)
        counts: dict[str, int] = {}
        for one in verdicts:
            counts[one.verdict] = counts.get(one.verdict, 0) + 1
        return Outcome.changed(f"sentinels: {', '.join(f'{n} {v}' for v, n in counts.items())}; timeline {history}; "
                               f"{started_backup or 'no backup started'}; report {paths[0]}")
    return verify


@dataclass
class RestoreReport:
    pending: Pending
    sentinels: list[rd.Sentinel]
    timeline: str
    data_dir: str
    backup: str = ""

    def to_dict(self) -> dict[str, Any]:
        p = self.pending
        return {"id": p.id, "started": p.started, "target": p.target, "node": p.node, "old_leader": p.old_leader,
                "old_timeline": p.old_timeline, "timeline": self.timeline, "timings": dict(p.timings),
                "drill_report": p.drill_report, "moved_aside": [aside_path(self.data_dir, p.stamp),
                                                                aside_path(RAFT_DIR, p.stamp)],
                "sentinels": [s.to_dict() for s in self.sentinels], "backup": self.backup,
                "ok": all(s.ok for s in self.sentinels)}

    def markdown(self) -> str:
        p = self.pending
        lines = ["# kbpg point-in-time restore", "",
                 f"- started: {p.started}", f"- target: {p.target}",
                 f"- restored on: {p.node} (leader before: {p.old_leader or '?'}, timeline {p.old_timeline} -> "
                 f"{self.timeline})",
                 f"- drill first: {p.drill_report or '—'}",
                 "- timings: " + (", ".join(f"{k} {v:.1f} s" for k, v in p.timings.items() if k != "down") or "—"),
                 f"- the database refused writes for {p.timings['down']:.1f} s (from the first Patroni stopped to "
                 "the restored leader running; measured by kbpg's clock)" if "down" in p.timings else
                 "- the database refused writes: not measured",
                 f"- moved aside on every DB node (delete them once satisfied): `{aside_path(self.data_dir, p.stamp)}`, "
                 f"`{aside_path(RAFT_DIR, p.stamp)}`",
                 f"- backup: {self.backup or '—'}", "", "## Sentinels", "",
                 "| token | written at | expected | found | verdict |", "|---|---|---|---|---|"]
        for one in self.sentinels:
            expected = "either" if one.expected is None else "yes" if one.expected else "no"
            lines.append(f"| {one.token[:16]} | {one.written_at} | {expected} | {'yes' if one.found else 'no'} | "
                         f"{one.verdict} |")
        return "\n".join(lines) + "\n"

    def write(self, workdir: Path) -> tuple[Path, Path]:
        return write_report_pair(workdir, f"restore-{self.pending.id}", self.markdown(), self.to_dict())


def steps(pending: Pending) -> list[Step]:
    """The engine's steps of a restore (see the module's doc); the install's 02, 04 and 06 converge at the end."""
    from ..steps import s02_patroni, s04_pgbouncer, s06_backup

    return [
        Step("P0", "Restore drill first", [Task("drill", "cluster", _drill(pending))]),
        Step("P1", "Stop", [Task("watchdog", "db", _stop_watchdog(pending)),
                            Task("patroni", "cluster", _stop_patroni(pending))]),
        Step("P2", "Prepare", [Task("config", "db", _write_config(pending)),
                               Task("move aside", "db", _move_aside(pending))]),
        Step("P3", "Restore", [Task("restore", "cluster", _start(pending)),
                               Task("replicas", "cluster", _replicas(pending))]),
        s02_patroni.STEP, s04_pgbouncer.STEP, s06_backup.STEP,
        Step("P5", "Verify", [Task("sentinels", "cluster", _verify(pending))]),
    ]


def describe_plan(ctx: Context, pending: Pending, resumed: bool) -> list[str]:
    """What the operator is asked to confirm."""
    data_dir = ctx.settings.postgresql.effective_data_dir
    node = pending.node or "the current leader"
    lines = [f"kbpg restore: {'finishing the pending restore' if resumed else 'restore'} of cluster "
             f"{ctx.credentials['PATRONI_CLUSTER_NAME']} to {pending.target}"
             + (f" (stopped at phase {pending.phase})" if resumed else "")]
    if not resumed or not pending.reached("stopped"):
        lines += [
            f"  1. a restore drill to {pending.target} on {ctx.backup_host.name if ctx.backup_host else '?'} "
            "(the cluster is touched only if it passes)",
            f"  2. Patroni STOPPED on {', '.join(h.name for h in ctx.db_hosts)}: no database service until the end",
            f"  3. on every DB node {data_dir} and {RAFT_DIR} moved aside to *.before-restore-{pending.stamp} "
            "(kept, not deleted)",
        ]
    lines += [f"  4. {node} restored from the backups to {pending.target} and promoted; the others clone from it",
              "  5. configuration, roles and PgBouncer converged (steps 02, 04, 06); sentinels verified; a full backup "
              "started",
              f"EVERYTHING WRITTEN AFTER {pending.target} IS DISCARDED."]
    return lines


__all__ = ["PENDING_FILE", "Pending", "RestoreError", "RestoreReport", "aside_path", "aside_script", "begin",
           "describe_plan", "load_pending", "refuse_if_pending", "restore_command", "restore_config", "save_pending",
           "steps"]
