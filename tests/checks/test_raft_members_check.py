"""19 raft members: each DB node's Raft membership (pysyncobj's own status, asked on the node) against the selected
DB nodes' addresses; and raft_node's answer carrying the membership, shaped as pysyncobj 0.3.14's getStatus."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest

from kbpg_tui.core import raft, raft_node
from kbpg_tui.core.checks import ALL_CHECKS, c19_raft_members
from kbpg_tui.core.checks.base import CheckFailed, CheckWarning
from kbpg_tui.core.checks.runner import Diagnostics
from kbpg_tui.core.nodes import raft_view
from kbpg_tui.core.ssh import Host

from ..fakes import FakePool, ScriptedConnection, result

DB = {"db-master-01": "198.18.0.120:7000", "db-slave-01": "198.18.0.121:7000", "db-slave-02": "198.18.0.122:7000"}


def answer(me: str, partners: dict[str, int]) -> str:
    status = {"leader": "198.18.0.120:7000", "raft_term": 3, "self": me, "partners": partners,
              "partner_nodes_count": len(partners)}
    return f"r:unit active 300\nr:status {json.dumps(status)}\n"


def healthy(name: str) -> str:
    return answer(DB[name], {address: 2 for other, address in DB.items() if other != name})


def context(make, outputs: dict[str, str]):
    """A probe context whose DB nodes answer the probe with ``outputs[name]`` (the others: a healthy member)."""
    connections = {}
    for name in DB:
        text = outputs.get(name, healthy(name))
        connections[name] = ScriptedConnection(Host(name, DB[name].split(":")[0]),
                                               lambda script, stdin, text=text: result(text))
    return make(pool=FakePool(connections)), connections


def test_the_check_is_listed_and_probes_each_db_node(make) -> None:
    assert ALL_CHECKS[-1] is c19_raft_members.CHECK and c19_raft_members.CHECK.number == 19
    p = make()
    probes = [probe for probe in Diagnostics(p.ctx).probes() if probe.number == 19]
    assert [(probe.check, probe.target) for probe in probes] == [("raft members", name) for name in DB]


def test_passes_when_the_membership_is_the_selected_db_nodes(make) -> None:
    p, connections = context(make, {})
    host = p.ctx.db_hosts[0]
    assert c19_raft_members.raft_members(p, host) == ("db-master-01: Raft's membership is the 3 DB nodes, every "
                                                      "partner connected")
    (script, stdin), = connections["db-master-01"].calls
    assert script == raft.PROBE and not stdin  # the node reads its own Raft password; nothing secret travels


def test_a_stale_member_and_a_missing_one_fail_naming_each_address(make) -> None:
    # db-slave-01 was replaced by 198.18.0.123 in servers.tsv; Raft still counts its old address.
    p, _ = context(make, {"db-master-01": answer(DB["db-master-01"], {DB["db-slave-01"]: 0, DB["db-slave-02"]: 2,
                                                                      "198.18.0.99:7000": 0})})
    with pytest.raises(CheckFailed) as stale:
        c19_raft_members.raft_members(p, p.ctx.db_hosts[0])
    assert str(stale.value) == ("db-master-01: Raft's membership 198.18.0.99:7000, 198.18.0.120:7000, "
                                "198.18.0.121:7000, 198.18.0.122:7000: stale member 198.18.0.99:7000 (no selected DB "
                                "node's)")
    p, _ = context(make, {"db-slave-02": answer(DB["db-slave-02"], {DB["db-master-01"]: 2, "198.18.0.99:7000": 2})})
    with pytest.raises(CheckFailed, match=r"stale member 198\.18\.0\.99:7000 \(no selected DB node's\); "
                                          r"198\.18\.0\.121:7000 missing$"):
        c19_raft_members.raft_members(p, p.ctx.db_hosts[2])


def test_a_partner_not_connected_warns(make) -> None:
    p, _ = context(make, {"db-master-01": answer(DB["db-master-01"], {DB["db-slave-01"]: 0, DB["db-slave-02"]: 2})})
    with pytest.raises(CheckWarning, match="not connected to 198.18.0.121:7000$"):
        c19_raft_members.raft_members(p, p.ctx.db_hosts[0])


def test_a_silent_raft_fails_and_one_that_cannot_be_asked_warns(make) -> None:
    p, _ = context(make, {"db-master-01": "r:unit active 300\nr:silent 198.18.0.120:7000 connection lost\n",
                          "db-slave-01": "r:unit inactive 0\n",
                          "db-slave-02": 'r:unit active 300\nr:status {"leader": null, "raft_term": 1}\n'})
    with pytest.raises(CheckFailed, match="db-master-01: its Raft does not answer .*membership unknown"):
        c19_raft_members.raft_members(p, p.ctx.db_hosts[0])
    with pytest.raises(CheckWarning, match="db-slave-01: Raft's membership not read: patroni is inactive"):
        c19_raft_members.raft_members(p, p.ctx.db_hosts[1])
    with pytest.raises(CheckWarning, match="names no membership"):
        c19_raft_members.raft_members(p, p.ctx.db_hosts[2])


# --- raft_node's answer: the membership out of pysyncobj's status ---------------------------------------------

class _Node:
    """pysyncobj.node.TCPNode's shape: its str() is its address (the id)."""

    def __init__(self, address: str):
        self.id = address

    def __str__(self) -> str:
        return self.id


def _fake_pysyncobj(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: dict) -> None:
    lib = tmp_path / "lib" / "pysyncobj"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text("")
    (lib / "utility.py").write_text(textwrap.dedent("""\
        STATUS = None
        class TcpUtility:
            def __init__(self, password, timeout):
                pass
            def executeCommand(self, address, command):
                return STATUS
        """))
    monkeypatch.syspath_prepend(str(lib.parent))
    for name in ("pysyncobj", "pysyncobj.utility"):
        sys.modules.pop(name, None)
    importlib.import_module("pysyncobj.utility").STATUS = status  # type: ignore[attr-defined]
    (tmp_path / "config.yml").write_text("raft:\n  self_addr: 198.18.0.121:7000\n  password: s3cret-raft-pw\n")


def test_ask_raft_answers_the_membership_as_pysyncobj_0_3_14_gives_it(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Keys as SyncObj.getStatus (pysyncobj 0.3.14) makes them: 'self' and 'leader' are Node objects.
    status = {"version": "0.3.14", "revision": "deprecated", "self": _Node("198.18.0.121:7000"), "state": 0,
              "leader": _Node("198.18.0.120:7000"), "has_quorum": True, "partner_nodes_count": 2,
              "partner_node_status_server_198.18.0.120:7000": 2, "partner_node_status_server_198.18.0.122:7000": 0,
              "readonly_nodes_count": 0, "log_len": 4, "last_applied": 9, "commit_idx": 9, "raft_term": 5,
              "next_node_idx_count": 0, "match_idx_count": 0, "leader_commit_idx": 9, "uptime": 100,
              "self_code_version": 0, "enabled_code_version": 0}
    _fake_pysyncobj(tmp_path, monkeypatch, status)
    try:
        line = raft_node.ask_raft(str(tmp_path / "config.yml"), 3.0)
    finally:
        for name in ("pysyncobj", "pysyncobj.utility"):
            sys.modules.pop(name, None)
    parsed = raft.parse("r:unit active 300\n" + line)
    assert parsed.answers is True and parsed.leader == "198.18.0.120:7000"  # what check 3 and the drill read
    assert raft_view(parsed) == ("198.18.0.121:7000", {"198.18.0.120:7000": 2, "198.18.0.122:7000": 0})
    assert parsed.status["partner_nodes_count"] == 2
    assert "s3cret-raft-pw" not in line
