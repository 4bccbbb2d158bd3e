"""`kbpg nodes apply` on the installed lab, under writers through the LB (scripts/drill_nodes.py, --json):

1. a plan that would lose the quorum (two replicas moved at once) is refused and changes nothing;
2. a replica's host dies for good (`kbpg lab stop-host`), servers.tsv gives its hostname a spare's address, apply:
   three members streaming again, Raft's membership without the old address, no failover, no failed write on
   LB:5432 nor LB:6432, diagnostics green;
3. that node is made the leader, its original host comes back blank (`start-host --fresh`) and servers.tsv points
   the hostname back at it: the leader's node is replaced live, with exactly one switchover (its write gap
   reported), every failed write on LB:5432 within the switchover, none on LB:6432 (PgBouncer paused), the lab as it
   was at the end (the spare stopped), diagnostics green.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kbpg_tui.core import lab
from kbpg_tui.core.lab.topology import SPARE_HOSTS

from .conftest import DB_HOSTS, REPO, Installed, kbpg, wait_healthy

pytestmark = [pytest.mark.lab, pytest.mark.e2e]

RAFT = 7000
SPARE = next(h for h in SPARE_HOSTS if h.kind == "db")
STATE: dict = {}


def drill_nodes(installed: Installed, *args: str) -> dict:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "drill_nodes.py"), "--workdir",
                             str(installed.workdir), "--json", *args], capture_output=True, text=True, cwd=REPO,
                            timeout=900)
    assert result.stdout, result.stderr
    figures = json.loads(result.stdout)
    print(f"\n{' '.join(args)}: " + json.dumps({k: v for k, v in figures.items() if k != "apply"}, indent=1))
    return figures


def membership(installed: Installed) -> dict:
    result = kbpg(installed.workdir, "nodes", "plan", "--json", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_two_replicas_moved_at_once_are_refused_and_nothing_changes(installed: Installed) -> None:
    wait_healthy(installed.workdir)
    before = (installed.workdir / "servers.tsv").read_text()
    figures = drill_nodes(installed, "refuse-two")
    assert figures["exit"] == 2
    assert any("2 of the 3 Raft members would leave in one plan" in line for line in figures["refused"])
    assert figures["leader_after"] == figures["leader_before"]
    assert (installed.workdir / "servers.tsv").read_text() == before
    assert membership(installed)["plan"]["actions"] == []


def test_a_dead_replicas_host_replaced_by_a_spare_under_writers(installed: Installed) -> None:
    members = wait_healthy(installed.workdir)
    replica = next(m["Member"] for m in members if m["Role"] != "Leader")
    old = next(h.address for h in DB_HOSTS if h.name == replica)
    STATE.update(replica=replica, old=old)
    figures = drill_nodes(installed, "replace", replica, SPARE.address, "--stop-old")
    assert figures["exit"] == 0, figures.get("output_tail")
    apply = figures["apply"]
    assert apply["ok"] and not apply["switchovers"]
    assert [a["kind"] for a in apply["actions"]] == ["remove", "add"]
    # No failover: the same leader on the same timeline; no failed write on either entry point.
    assert (figures["leader_after"], figures["timeline_after"]) == (figures["leader_before"],
                                                                    figures["timeline_before"])
    for entry, numbers in figures["entries"].items():
        assert numbers["failed"] == 0 and numbers["acknowledged"] > 100, (entry, numbers)
    data = membership(installed)
    wanted = sorted(f"{h.address if h.name != replica else SPARE.address}:{RAFT}" for h in DB_HOSTS)
    assert sorted(data["membership"]["raft_members"]) == wanted and f"{old}:{RAFT}" not in wanted
    assert sorted(data["membership"]["raft_reachable"]) == wanted
    roles = {node["name"]: (node["patroni_address"], node["role"]) for node in data["membership"]["db"]}
    assert roles[replica][0] == SPARE.address
    diagnose = kbpg(installed.workdir, "diagnose", "--json", timeout=180)
    failed = [r for r in json.loads(diagnose.stdout)["results"] if r["verdict"] == "fail"]
    assert diagnose.returncode == 0 and not failed, failed


def test_the_leaders_node_replaced_live_with_one_switchover_and_the_lab_put_back(installed: Installed) -> None:
    replica, old = STATE["replica"], STATE["old"]
    switched = kbpg(installed.workdir, "switchover", "--yes", "--to", replica, timeout=300)
    assert switched.returncode == 0, switched.stdout + switched.stderr
    try:
        figures = drill_nodes(installed, "replace", replica, old, "--fresh")  # its own host, blank, back
        assert figures["exit"] == 0, figures.get("output_tail")
        apply = figures["apply"]
        assert apply["ok"]
        assert [a["kind"] for a in apply["actions"]] == ["switchover", "remove", "add"]
        assert len(apply["switchovers"]) == 1 and apply["switchovers"][0]["old_leader"] == replica
        assert figures["leader_after"] != replica
        # Writes: none failed on LB:6432 (PgBouncer held them); on LB:5432 only within the switchover.
        assert figures["entries"]["LB:6432"]["failed"] == 0, figures["entries"]["LB:6432"]
        switchover = apply["actions"][0]
        switch_end = apply["started"] + switchover["at"] + switchover["seconds"]
        for window in figures["entries"]["LB:5432"]["failure_windows"]:
            assert figures["started"] + window["to"] <= switch_end + 1.0, (window, switchover)
        print(f"\nwrite gap on LB:5432: {figures['entries']['LB:5432']['write_gap']:.3f} s; PgBouncer paused "
              f"{apply['switchovers'][0]['pgbouncer_pause_seconds']:.3f} s")
        data = membership(installed)
        assert sorted(data["membership"]["raft_members"]) == sorted(f"{h.address}:{RAFT}" for h in DB_HOSTS)
        assert {n["name"]: n["patroni_address"] for n in data["membership"]["db"]} == {h.name: h.address
                                                                                       for h in DB_HOSTS}
        diagnose = kbpg(installed.workdir, "diagnose", "--json", timeout=180)
        failed = [r for r in json.loads(diagnose.stdout)["results"] if r["verdict"] == "fail"]
        assert diagnose.returncode == 0 and not failed, failed
    finally:
        lab.stop_host(SPARE.name)  # the lab as the tests after this module expect it: spares down
    wait_healthy(installed.workdir)
