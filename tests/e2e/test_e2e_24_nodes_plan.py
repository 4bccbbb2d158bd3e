"""`kbpg nodes plan` on the installed lab: Raft's membership as the members' own pysyncobj says it (the real
python3-pysyncobj's status keys), the HAProxy nodes pg_hba admits, and the plans for a replaced host (a spare's
address) and for two replaced at once (refused). Read only: the plans use their own copy of servers.tsv and
kbpg.toml (--answers), nothing on the cluster changes."""

from __future__ import annotations

import json

import pytest

from kbpg_tui.core.lab.topology import SPARE_HOSTS
from kbpg_tui.core.settings import load_settings, save_settings

from .conftest import DB_HOSTS, HAPROXY_HOSTS, Installed, kbpg, wait_healthy

pytestmark = [pytest.mark.lab, pytest.mark.e2e]

RAFT = 7000


def plan(installed: Installed, moves: dict[str, str] | None = None) -> tuple[int, dict, str]:
    """`kbpg nodes plan --json` with servers.tsv's DB rows moved (hostname -> new address), in a copy."""
    workdir = installed.workdir
    answers = "kbpg.toml"
    if moves:
        text = (workdir / "servers.tsv").read_text()
        for name, address in moves.items():
            old = next(h.address for h in DB_HOSTS if h.name == name)
            assert f"\t{name}\t{old}\t" in text
            text = text.replace(f"\t{name}\t{old}\t", f"\t{name}\t{address}\t")
        (workdir / "servers-nodes-test.tsv").write_text(text)
        settings = load_settings(workdir / "kbpg.toml")
        settings.inventory.path = "servers-nodes-test.tsv"
        save_settings(settings, workdir / "kbpg-nodes-test.toml")
        answers = "kbpg-nodes-test.toml"
    result = kbpg(workdir, "nodes", "plan", "--json", "--answers", str(workdir / answers), timeout=120)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout), result.stderr


def test_the_installed_cluster_has_nothing_to_do_and_raft_names_its_three_members(installed: Installed) -> None:
    wait_healthy(installed.workdir)
    code, data, err = plan(installed)
    assert code == 0, err
    membership = data["membership"]
    addresses = [f"{h.address}:{RAFT}" for h in DB_HOSTS]
    assert membership["raft_members"] == addresses and membership["raft_reachable"] == addresses
    for node in membership["db"]:
        me = f"{node['tsv_address']}:{RAFT}"
        assert node["raft_self"] == me and node["patroni_address"] == node["tsv_address"]
        assert node["raft_partners"] == {address: 2 for address in addresses if address != me}
    assert membership["haproxy_admitted"] == [h.address for h in HAPROXY_HOSTS]
    assert data["plan"]["actions"] == [] and data["plan"]["refused"] == []


def test_a_replica_moved_to_a_spare_address_is_planned_remove_then_add(installed: Installed) -> None:
    members = wait_healthy(installed.workdir)
    replica = next(m["Member"] for m in members if m["Role"] != "Leader")
    old = next(h.address for h in DB_HOSTS if h.name == replica)
    spare = SPARE_HOSTS[0].address
    code, data, err = plan(installed, {replica: spare})
    assert code == 1, err
    steps = [(a["kind"], a["node"], a["address"]) for a in data["plan"]["actions"]]
    assert steps == [("remove", replica, f"{old}:{RAFT}"), ("add", replica, f"{spare}:{RAFT}")]
    assert data["plan"]["db_replace"] == [f"{replica}: {old} -> {spare}"]


def test_two_members_moved_at_once_are_refused(installed: Installed) -> None:
    members = wait_healthy(installed.workdir)
    replicas = [m["Member"] for m in members if m["Role"] != "Leader"]
    code, data, _err = plan(installed, dict(zip(replicas, (h.address for h in SPARE_HOSTS[:2]), strict=True)))
    assert code == 2
    assert any("2 of the 3 Raft members would leave in one plan" in reason for reason in data["plan"]["refused"])
