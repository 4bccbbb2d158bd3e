#!/usr/bin/env python3
"""Node changes on the lab under writers: `kbpg nodes apply` timed, with what the writers saw.

Scenarios (each edits the lab work dir's servers.tsv the way an operator would, then runs `kbpg nodes apply --yes
--json` while two writers insert one row per transaction every 20 ms through the LB, on LB:5432 (HAProxy to the
primary) and LB:6432 (PgBouncer), the drill's writers):

  replace NAME ADDRESS [--stop-old] [--fresh]   NAME moves to ADDRESS (a spare's); --stop-old first takes the lab
                                                host at its old address down for good (a dead server); the lab host
                                                at ADDRESS is started if it is not (--fresh: with a blank disk)
  grow                                          db-spare-01 and db-spare-02 added as DB nodes (3 -> 5)
  shrink                                        the same two removed (5 -> 3), their lab hosts stopped after
  refuse-two                                    the two replicas moved at once: `kbpg nodes apply` must refuse (exit
                                                2) and change nothing (servers.tsv put back)

Figures, per writer (kbpg_tui/core/ops/writers.py, the same words as the drill): acknowledged and failed writes,
the longest stall (longest time between two acknowledged writes), the write gap; from the command: its wall time,
each step's time, each switchover's PgBouncer pause; from Patroni before and after: the leader and the timeline
(a failover or a switchover moves them). Prints JSON with --json (tests/e2e/test_e2e_25_nodes_apply.py uses it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kbpg_tui.core import cluster, lab  # noqa: E402
from kbpg_tui.core import install as inst  # noqa: E402
from kbpg_tui.core.files import atomic_write  # noqa: E402
from kbpg_tui.core.lab.topology import SPARE_HOSTS  # noqa: E402
from kbpg_tui.core.ops import drill  # noqa: E402
from kbpg_tui.core.ops.writers import EntryWriter, entry_figures  # noqa: E402
from kbpg_tui.core.settings import load_settings  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COLUMNS_ADDRESS = 3  # servers.tsv: ENV, IP_PUBLIC, HOSTNAME, IP_PRIVATE, FQDN, ...
GROW = [(host.name, host.address) for host in SPARE_HOSTS if host.kind == "db"]


def ensure_running(address: str, fresh: bool = False) -> None:
    host = lab.lab_host_at(address)
    state = next((h for h in lab.status(probe_ssh=False).hosts if h.name == host.name), None)
    if fresh and state is not None and state.running:
        lab.stop_host(host.name)
        state = None
    if state is None or not state.running:
        result = lab.start_host(host.name, fresh=fresh)
        if not result.up:
            raise SystemExit(f"could not start {host.name}: {result.render()}")


def tsv_rows(workdir: Path) -> list[list[str]]:
    return [line.split("\t") for line in (workdir / "servers.tsv").read_text().splitlines()]


def write_rows(workdir: Path, rows: list[list[str]]) -> None:
    atomic_write(workdir / "servers.tsv", ("\n".join("\t".join(row) for row in rows) + "\n").encode(), 0o644)


def move(workdir: Path, moves: dict[str, str]) -> dict[str, str]:
    """servers.tsv's rows named in ``moves`` get their new private address; returns their old ones."""
    rows, old = tsv_rows(workdir), {}
    for row in rows:
        if len(row) > COLUMNS_ADDRESS and row[2] in moves:
            old[row[2]] = row[COLUMNS_ADDRESS]
            row[COLUMNS_ADDRESS] = moves[row[2]]
    missing = set(moves) - set(old)
    if missing:
        raise SystemExit(f"servers.tsv has no row for {', '.join(sorted(missing))}")
    write_rows(workdir, rows)
    return old


def leader_and_timeline(workdir: Path) -> tuple[str, int | None, list[str]]:
    run = inst.prepare(workdir, load_settings(workdir / "kbpg.toml"), lambda event: None)
    try:
        state = cluster.read_cluster(run.ctx, run.ctx.db_hosts)
        leader = state.running_leaders[0] if state.running_leaders else None
        return (leader.name if leader else "", leader.timeline if leader else None,
                [f"{m.name}={m.role}/{m.state}" for m in state.members])
    finally:
        run.close()


def failure_windows(attempts, started: float) -> list[dict]:  # noqa: ANN001 (writers.Attempt)
    """Failed writes in runs (a run ends at an acknowledged write): seconds from the command's start, count, errors."""
    windows: list[dict] = []
    current: dict | None = None
    for attempt in sorted(attempts, key=lambda a: a.id):
        if attempt.ok:
            current = None
            continue
        if current is None:
            current = {"from": round(attempt.started - started, 2), "to": 0.0, "failed": 0, "errors": {}}
            windows.append(current)
        current["to"] = round(attempt.ended - started, 2)
        current["failed"] += 1
        key = (attempt.error or "?")[:70]
        current["errors"][key] = current["errors"].get(key, 0) + 1
    return windows


def apply_under_writers(workdir: Path, edit=None) -> dict:  # noqa: ANN001 (edit: servers.tsv's change)
    """The writers started on the cluster as servers.tsv has it now; then ``edit()``; then the apply."""
    before = leader_and_timeline(workdir)
    run = inst.prepare(workdir, load_settings(workdir / "kbpg.toml"), lambda event: None)
    try:
        drill.prepare_table(run)
        run_id = f"drill-nodes-{uuid.uuid4().hex[:8]}"
        ports = {"LB:5432": run.ctx.settings.ports.haproxy_write, "LB:6432": run.ctx.settings.ports.pgbouncer}
        writers = {entry: EntryWriter(entry, drill._connector(run.ctx, port), f"{run_id}-{entry}")
                   for entry, port in ports.items()}
        for writer in writers.values():
            writer.start()
        time.sleep(3)
        if edit is not None:
            edit()
        started, started_wall = time.monotonic(), time.time()
        result = subprocess.run([sys.executable, "-m", "kbpg_tui", "--workdir", str(workdir), "nodes", "apply",
                                 "--yes", "--json"], capture_output=True, text=True, cwd=REPO)
        wall = time.monotonic() - started
        time.sleep(3)
        for writer in writers.values():
            writer.stop()
        entries = {}
        for entry, writer in writers.items():
            figures = entry_figures(writer.attempts, started, entry=entry)
            entries[entry] = {"acknowledged": figures.acknowledged, "failed": figures.failed,
                              "longest_stall": round(figures.longest_stall, 3),
                              "write_gap": round(figures.write_gap, 3), "errors": figures.errors,
                              "failure_windows": failure_windows(writer.attempts, started)}
        drill._clean(run.ctx, run_id)
    finally:
        run.close()
    try:
        report = json.loads(result.stdout)
    except ValueError:
        report = None
    after = leader_and_timeline(workdir) if result.returncode == 0 else ("", None, [])
    return {"exit": result.returncode, "seconds": round(wall, 1), "started": round(started_wall, 3),
            "entries": entries, "apply": report,
            "leader_before": before[0], "timeline_before": before[1], "leader_after": after[0],
            "timeline_after": after[1], "members_after": after[2],
            "output_tail": "" if result.returncode == 0 else (result.stdout[-4000:] + result.stderr[-2000:])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--json", action="store_true")
    sub = parser.add_subparsers(dest="scenario", required=True)
    replace = sub.add_parser("replace")
    replace.add_argument("name")
    replace.add_argument("address")
    replace.add_argument("--stop-old", action="store_true")
    replace.add_argument("--fresh", action="store_true")
    sub.add_parser("grow")
    sub.add_parser("shrink")
    sub.add_parser("refuse-two")
    args = parser.parse_args()
    workdir = args.workdir
    if args.scenario == "replace":
        old = next(row[COLUMNS_ADDRESS] for row in tsv_rows(workdir) if len(row) > 3 and row[2] == args.name)
        if args.stop_old:
            lab.stop_host(lab.lab_host_at(old).name)
            time.sleep(8)  # a dead server, as the load balancer's health checks find it (2 checks 2 s apart)
        ensure_running(args.address, fresh=args.fresh)
        figures = apply_under_writers(workdir, lambda: move(workdir, {args.name: args.address}))
        figures.update(scenario=f"replace {args.name} {old} -> {args.address}", stopped_old=args.stop_old)
    elif args.scenario == "grow":
        rows = tsv_rows(workdir)
        template = next(row for row in rows if len(row) > 3 and row[2].startswith("db-slave"))
        for name, address in GROW:
            ensure_running(address, fresh=True)
            row = list(template)
            row[2], row[COLUMNS_ADDRESS], row[4] = name, address, f"{name}.lab.kbpg.test"
            if not any(r[2] == name for r in rows if len(r) > 3):
                rows.append(row)
        figures = apply_under_writers(workdir, lambda: write_rows(workdir, rows))
        figures.update(scenario="grow 3 -> 5")
    elif args.scenario == "shrink":
        names = {name for name, _ in GROW}
        kept = [row for row in tsv_rows(workdir) if not (len(row) > 3 and row[2] in names)]
        figures = apply_under_writers(workdir, lambda: write_rows(workdir, kept))
        figures.update(scenario="shrink 5 -> 3")
        if figures["exit"] == 0:
            for name, _address in GROW:
                lab.stop_host(name)
    else:  # refuse-two
        before = (workdir / "servers.tsv").read_text()
        leader = leader_and_timeline(workdir)[0]
        replicas = [row[2] for row in tsv_rows(workdir) if len(row) > 3 and row[2].startswith("db-") and row[2] != leader]
        move(workdir, dict(zip(replicas[:2], (h.address for h in SPARE_HOSTS if h.kind == "db"), strict=True)))
        try:
            result = subprocess.run([sys.executable, "-m", "kbpg_tui", "--workdir", str(workdir), "nodes", "apply",
                                     "--yes"], capture_output=True, text=True, cwd=REPO)
        finally:
            atomic_write(workdir / "servers.tsv", before.encode(), 0o644)
        figures = {"scenario": "two replicas moved at once", "exit": result.returncode,
                   "refused": [line for line in result.stderr.splitlines() if "refused" in line],
                   "leader_after": leader_and_timeline(workdir)[0], "leader_before": leader}
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"{figures['scenario']}: exit {figures['exit']}" + (f" in {figures['seconds']:.1f} s" if "seconds" in figures else ""))
        for entry, f in figures.get("entries", {}).items():
            print(f"  {entry}: {f['acknowledged']} acknowledged, {f['failed']} failed, longest stall "
                  f"{f['longest_stall']:.3f} s, write gap {f['write_gap']:.3f} s")
            for window in f.get("failure_windows", []):
                print(f"    failed {window['failed']} from +{window['from']} s to +{window['to']} s: {window['errors']}")
        if "leader_before" in figures:
            print(f"  leader {figures['leader_before']} (TL {figures.get('timeline_before')}) -> "
                  f"{figures['leader_after']} (TL {figures.get('timeline_after')})")
        apply = figures.get("apply") or {}
        for action in apply.get("actions", []):
            print(f"  step {action['number']} at +{action.get('at')} s: {action['text']}: {action['status']} in "
                  f"{action['seconds']} s")
        if apply.get("install_at") is not None:
            print(f"  the install's steps on the new set of nodes from +{apply['install_at']} s")
        for switch in apply.get("switchovers", []):
            print(f"  switchover {switch['old_leader']} -> {switch['new_leader']}: PgBouncer paused "
                  f"{switch['pgbouncer_pause_seconds']} s")
        for line in figures.get("refused", []):
            print(f"  {line}")
        if figures.get("output_tail"):
            print(figures["output_tail"])
    return 0 if figures["exit"] == (2 if args.scenario == "refuse-two" else 0) else 1


if __name__ == "__main__":
    sys.exit(main())
