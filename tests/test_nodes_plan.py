"""kbpg_tui.core.nodes.plan: servers.tsv against hand-made memberships of the running cluster (no host)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kbpg_tui.core.inventory import Selection, Server
from kbpg_tui.core.nodes import DbNode, Membership, describe, haproxy_addresses, plan
from kbpg_tui.core.ssh import Host

from .fakes import FakePool, ScriptedConnection, result

PORT = 7000
DB3 = {"db-master-01": "198.18.0.120", "db-slave-01": "198.18.0.121", "db-slave-02": "198.18.0.122"}
DB5 = {**DB3, "db-slave-03": "198.18.0.123", "db-slave-04": "198.18.0.124"}
HAPROXY = {"haproxy-01": "198.18.0.11", "haproxy-02": "198.18.0.12"}


def server(name: str, ip: str, role: str) -> Server:
    subrole, stack = ("postgres", "patroni-node") if role == "db" else ("internal-haproxy", "")
    return Server(1, "prod", "", name, ip, "", "root", "", role, subrole, stack, "", "")


def selection(db: dict[str, str], haproxy: dict[str, str] | None = None) -> Selection:
    haproxy = HAPROXY if haproxy is None else haproxy
    return Selection("servers.tsv", tuple(server(n, ip, "db") for n, ip in db.items()),
                     tuple(server(n, ip, "lb") for n, ip in haproxy.items()))


def membership(members: dict[str, str], leader: str = "db-master-01", dead: tuple[str, ...] = (),
               gone: tuple[str, ...] = (), extra_raft: tuple[str, ...] = (), names: dict[str, str] | None = None,
               haproxy: list[str] | None = None) -> Membership:
    """The cluster running on ``members`` (name -> address): Patroni lists them all but those ``gone`` (a dead host
    whose member key expired); those ``dead`` (or gone) do not answer; Raft also holds ``extra_raft``."""
    raft = [f"{ip}:{PORT}" for ip in members.values()] + list(extra_raft)
    quiet = {f"{members[n]}:{PORT}" for n in (*dead, *gone)}
    nodes = [DbNode(name, ip, ip, "leader" if name == leader else "replica", f"{ip}:{PORT}",
                    reachable=name not in dead)
             for name, ip in members.items() if name not in gone]
    return Membership(PORT, nodes, raft, [a for a in raft if a not in quiet], True,
                      list(HAPROXY.values()) if haproxy is None else haproxy, dict(names or {}))


def kinds(result) -> list[tuple[str, str]]:
    return [(a.kind, a.node) for a in result.actions]


def test_nothing_to_do_when_servers_tsv_and_the_cluster_agree() -> None:
    result = plan(selection(DB3), membership(DB3))
    assert not result.changes and not result.refused
    assert describe(result) == ["Nothing to do: servers.tsv and the running cluster agree."]


def test_a_live_replica_replaced_under_its_name_leaves_first_then_its_new_address_joins() -> None:
    # Patroni knows a member by its name: the old host's Patroni must be gone before the new one starts under it.
    result = plan(selection({**DB3, "db-slave-01": "198.18.0.123"}), membership(DB3))
    assert not result.refused
    assert result.db_replace == ["db-slave-01: 198.18.0.121 -> 198.18.0.123"]
    assert kinds(result) == [("remove", "db-slave-01"), ("add", "db-slave-01")]
    remove, add = result.actions
    assert (remove.address, remove.members, remove.reachable, remove.majority) == ("198.18.0.121:7000", 2, 2, 2)
    assert (add.address, add.members, add.reachable) == ("198.18.0.123:7000", 3, 3)


def test_a_dead_replica_still_listed_by_patroni_leaves_raft_before_its_replacement_joins() -> None:
    result = plan(selection({**DB3, "db-slave-01": "198.18.0.123"}), membership(DB3, dead=("db-slave-01",)))
    assert not result.refused
    assert kinds(result) == [("remove", "db-slave-01"), ("add", "db-slave-01")]
    assert [(a.members, a.reachable) for a in result.actions] == [(2, 2), (3, 3)]
    assert "not answering" in result.actions[0].text


def test_a_dead_host_gone_from_patroni_is_paired_with_its_hostname_by_kbpgs_certificate() -> None:
    wanted = selection({**DB3, "db-slave-01": "198.18.0.123"})
    gone = membership(DB3, gone=("db-slave-01",), names={"198.18.0.121": "db-slave-01"})
    result = plan(wanted, gone)
    assert not result.refused and not result.stale and not result.db_add
    assert result.db_replace == ["db-slave-01: 198.18.0.121 -> 198.18.0.123 (no longer a Patroni member)"]
    assert [(a.kind, a.address) for a in result.actions] == [("remove", "198.18.0.121:7000"),
                                                             ("add", "198.18.0.123:7000")]
    # Without the certificate (TLS off): a node to add and a stale address, the same steps.
    unnamed = plan(wanted, membership(DB3, gone=("db-slave-01",)))
    assert unnamed.db_add == ["db-slave-01"] and unnamed.stale == ["198.18.0.121:7000"]
    assert [(a.kind, a.address) for a in unnamed.actions] == [("raft-remove", "198.18.0.121:7000"),
                                                              ("add", "198.18.0.123:7000")]


def test_the_leaders_node_replaced_gets_a_switchover_before_it_leaves_then_its_new_address_joins() -> None:
    result = plan(selection({**DB3, "db-master-01": "198.18.0.124"}), membership(DB3))
    assert not result.refused
    assert kinds(result) == [("switchover", "db-master-01"), ("remove", "db-master-01"), ("add", "db-master-01")]
    assert [a.address for a in result.actions[1:]] == ["198.18.0.120:7000", "198.18.0.124:7000"]


def test_three_to_five_adds_one_node_at_a_time_keeping_the_quorum() -> None:
    result = plan(selection(DB5), membership(DB3))
    assert not result.refused and result.db_add == ["db-slave-03", "db-slave-04"]
    assert [(a.kind, a.node, a.members, a.reachable, a.majority) for a in result.actions] == [
        ("add", "db-slave-03", 4, 4, 3), ("add", "db-slave-04", 5, 5, 3)]


def test_five_to_three_removes_one_at_a_time_the_leaders_node_last_after_a_switchover() -> None:
    result = plan(selection({n: DB5[n] for n in ("db-master-01", "db-slave-01", "db-slave-04")}),
                  membership(DB5, leader="db-slave-02"))
    assert not result.refused and result.db_remove == ["db-slave-02", "db-slave-03"]
    assert kinds(result) == [("remove", "db-slave-03"), ("switchover", "db-slave-02"), ("remove", "db-slave-02")]
    assert [(a.members, a.reachable) for a in result.actions if a.members] == [(4, 4), (3, 3)]


def test_two_members_leaving_a_cluster_of_three_is_refused_with_the_reason() -> None:
    # Two hosts swapped at once, the count staying 3: one at a time would be the only safe way.
    swapped = {"db-master-01": "198.18.0.120", "db-spare-01": "198.18.0.123", "db-spare-02": "198.18.0.124"}
    result = plan(selection(swapped), membership(DB3))
    assert any("2 of the 3 Raft members would leave in one plan" in r and "at most 1 may leave at once" in r
               for r in result.refused), result.refused
    # Two removed from 3: refused for the count too.
    alone = plan(selection({"db-master-01": "198.18.0.120"}), membership(DB3))
    assert any("2 of the 3 Raft members would leave" in r for r in alone.refused)
    assert any("selects 1 DB node(s): a cluster needs 3 at least" in r for r in alone.refused)
    assert any(line.startswith("refused: 2 of the 3") for line in describe(alone))


def test_a_db_count_other_than_3_or_5_is_refused() -> None:
    four = plan(selection({**DB3, "db-slave-03": "198.18.0.123"}), membership(DB3))
    assert four.refused == ["servers.tsv selects 4 DB nodes: the inventory rule takes 3 or 5"]


def test_a_stale_raft_address_is_named_and_removed() -> None:
    result = plan(selection(DB3), membership(DB3, extra_raft=("198.18.0.99:7000",)))
    assert result.stale == ["198.18.0.99:7000"] and not result.refused
    assert [(a.kind, a.address, a.members) for a in result.actions] == [("raft-remove", "198.18.0.99:7000", 3)]


def test_a_db_node_raft_lacks_is_added_to_raft() -> None:
    result = plan(selection(DB3), Membership(PORT, membership(DB3).db, ["198.18.0.120:7000", "198.18.0.121:7000"],
                                             ["198.18.0.120:7000", "198.18.0.121:7000"], True, None))
    assert result.raft_missing == ["198.18.0.122:7000"] and kinds(result) == [("raft-add", "db-slave-02")]


def test_no_quorum_now_refuses_every_change() -> None:
    result = plan(selection({**DB3, "db-slave-01": "198.18.0.123"}),
                  membership(DB3, dead=("db-slave-01", "db-slave-02")))
    assert any(r.startswith("Raft has no quorum now: 1 of its 3 members answer") for r in result.refused)


def test_a_step_that_would_leave_fewer_than_a_majority_answering_is_refused() -> None:
    # 5 -> 3 removing two live members while the two that stay are dead: 3 of 5 answer now (a quorum), but once
    # db-slave-03 leaves only 2 of 4 would.
    keep = {n: DB5[n] for n in ("db-master-01", "db-slave-01", "db-slave-02")}
    result = plan(selection(keep), membership(DB5, dead=("db-slave-01", "db-slave-02")))
    assert any("would leave 2 of 4 Raft members answering, fewer than the majority 3" in r for r in result.refused), \
        result.refused


def test_a_dead_leader_that_would_leave_waits_for_patronis_failover() -> None:
    result = plan(selection({**DB3, "db-master-01": "198.18.0.124"}), membership(DB3, dead=("db-master-01",)))
    assert any("Patroni's leader db-master-01 (198.18.0.120:7000) does not answer" in r for r in result.refused)


def test_a_cluster_without_a_leader_or_unreadable_is_refused() -> None:
    headless = plan(selection(DB5), membership(DB3, leader="none"))
    assert "Patroni's cluster has no leader now: no membership change until it has one" in headless.refused
    unread = Membership(PORT, [], [], [], False, None)
    result = plan(selection(DB3), unread)
    assert result.refused == ["Raft's membership could not be read: no DB node's Raft answered",
                              "Patroni's cluster could not be read: no DB node answered /cluster"]
    assert not result.actions


def test_haproxy_nodes_added_replaced_and_removed() -> None:
    names = {"198.18.0.11": "haproxy-01", "198.18.0.12": "haproxy-02"}
    replaced = plan(selection(DB3, {"haproxy-01": "198.18.0.13", "haproxy-02": "198.18.0.12"}),
                    membership(DB3, names=names))
    assert replaced.haproxy_replace == ["haproxy-01: 198.18.0.11 -> 198.18.0.13"]
    # The old address is stopped first (the load balancer sends nobody there), the new one installed last.
    assert [(a.kind, a.address) for a in replaced.actions] == [("haproxy-remove", "198.18.0.11"),
                                                               ("haproxy-add", "198.18.0.13")]
    removed = plan(selection(DB3, {"haproxy-02": "198.18.0.12"}), membership(DB3, names=names))
    assert removed.haproxy_remove == ["haproxy-01 (198.18.0.11)"] and not removed.haproxy_add
    added = plan(selection(DB3, {**HAPROXY, "haproxy-03": "198.18.0.13"}), membership(DB3))
    assert added.haproxy_add == ["haproxy-03"] and kinds(added) == [("haproxy-add", "haproxy-03")]
    both = plan(selection(DB3, {"haproxy-01": "198.18.0.13", "haproxy-02": "198.18.0.14"}),
                membership(DB3, names=names))
    assert any("every HAProxy node the cluster takes connections from" in reason for reason in both.refused)
    with_db = plan(selection({**DB3, "db-slave-01": "198.18.0.123"}, {"haproxy-01": "198.18.0.13",
                                                                      "haproxy-02": "198.18.0.12"}),
                   membership(DB3, names=names))
    assert kinds(with_db)[0] == ("haproxy-remove", "haproxy-01") and kinds(with_db)[-1] == ("haproxy-add",
                                                                                            "haproxy-01")
    unknown = plan(selection(DB3, {"haproxy-01": "198.18.0.13"}),
                   Membership(PORT, membership(DB3).db, membership(DB3).raft_members,
                              membership(DB3).raft_reachable, True, None))
    assert not unknown.changes  # pg_hba not read: HAProxy nodes not compared


def test_haproxy_addresses_are_pg_hbas_every_role_lines_less_the_db_nodes_and_direct_clients() -> None:
    hba = ["local all \"kb_admin\" peer map=kbpg",
           "hostssl replication \"kb_repl\" 198.18.0.120/32 scram-sha-256",
           "hostssl all \"kb_admin\" 198.18.0.120/32 scram-sha-256",
           "hostssl all all 198.18.0.120/32 scram-sha-256",
           "hostssl all all 198.18.0.11/32 scram-sha-256",
           "hostssl all all 198.18.0.12/32 scram-sha-256",
           "hostssl all all 198.18.0.50/32 scram-sha-256",
           "hostssl all all 198.18.0.0/24 scram-sha-256",
           "hostssl all \"kb_monitor\" 198.18.0.0/24 scram-sha-256",
           "host all all 127.0.0.1/32 scram-sha-256"]
    assert haproxy_addresses(hba, ["198.18.0.50/32"]) == ["198.18.0.11", "198.18.0.12"]
    assert haproxy_addresses(hba, []) == ["198.18.0.11", "198.18.0.12", "198.18.0.50"]


# --- read_membership and `kbpg nodes plan`, in-process: the DB nodes scripted, Patroni's /cluster made up ----------

HBA = "".join(f"h: hostssl {what} 198.18.0.{n}/32 scram-sha-256\n" for n in (120, 121, 122)
              for what in ('replication "kb_repl"', "all all")) + "".join(
    f"h: hostssl all all {ip}/32 scram-sha-256\n" for ip in HAPROXY.values())


def node_output(name: str, members: dict[str, str]) -> str:
    me = f"{members[name]}:{PORT}"
    partners = {f"{ip}:{PORT}": 2 for other, ip in members.items() if other != name}
    status = {"leader": f"{members['db-master-01']}:{PORT}", "raft_term": 3, "self": me, "partners": partners}
    return HBA + f"r:unit active 300\nr:status {json.dumps(status)}\n"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    from kbpg_tui import cli
    from kbpg_tui.core.lab.topology import LB_ADDRESS, SUBNET
    from kbpg_tui.core.lab.workdir import write_servers_tsv

    write_servers_tsv(tmp_path)
    (tmp_path / "kbpg.toml").write_text(f'[network]\nlb_address = "{LB_ADDRESS}"\nprivate_subnet = "{SUBNET}"\n')
    assert cli.main(["--workdir", str(tmp_path), "credentials", "generate"]) == 0
    return tmp_path


@pytest.fixture
def cluster_of(monkeypatch: pytest.MonkeyPatch):
    """cluster_of(running, down=()): the DB nodes of ``running`` (name -> address) answer as Raft members of it (those
    ``down`` do not answer SSH); any other host answers as a host without Patroni; /cluster lists ``running``."""
    from kbpg_tui.core import cluster, install
    from kbpg_tui.core.ssh import SshError

    def setup(running: dict[str, str], down: tuple[str, ...] = ()) -> list[str]:
        asked: list[str] = []

        class Pool(FakePool):
            def get(self, host: Host):
                asked.append(f"{host.name} {host.address}")
                if host.name in down:
                    raise SshError(f"{host.name} ({host.address}): no SSH answer within 10 s")
                text = (node_output(host.name, running) if running.get(host.name) == host.address
                        else "r:unit inactive 0\n")
                return ScriptedConnection(host, lambda script, stdin: result(text))

        real = install.prepare

        def prepare(*args, **kwargs):
            run = real(*args, **kwargs)
            run.ctx.pool = Pool()
            return run

        monkeypatch.setattr(install, "prepare", prepare)
        members = tuple(cluster.Member(name, ip, "leader" if name == "db-master-01" else "replica",
                                       "running" if name == "db-master-01" else "streaming", 1, 0)
                        for name, ip in running.items() if name not in down)
        monkeypatch.setattr(cluster, "read_cluster", lambda ctx, hosts=None, timeout=3.0: cluster.ClusterState(members))
        return asked
    return setup


def edit_tsv(workdir: Path, old: str, new: str) -> None:
    path = workdir / "servers.tsv"
    text = path.read_text()
    assert f"\t{old}\t" in text
    path.write_text(text.replace(f"\t{old}\t", f"\t{new}\t"))


def test_read_membership_tells_each_node_and_who_answers(workdir: Path, cluster_of) -> None:
    from kbpg_tui.core import install, nodes
    from kbpg_tui.core.settings import load_settings as load

    cluster_of(DB3, down=("db-slave-02",))
    run = install.prepare(workdir, load(workdir / "kbpg.toml"), lambda event: None)
    found = nodes.read_membership(run.ctx)
    assert found.raft_members == [f"{ip}:{PORT}" for ip in DB3.values()]
    assert found.raft_reachable == found.raft_members  # db-slave-02's SSH is down, its partners see its Raft
    assert found.haproxy_admitted == list(HAPROXY.values())
    slave2 = found.node("db-slave-02")
    assert slave2 is not None and not slave2.reachable and "no SSH answer" in slave2.detail
    master = found.node("db-master-01")
    assert master is not None and master.role == "leader" and master.raft_self == "198.18.0.120:7000"


def test_nodes_plan_exits_0_when_nothing_differs(workdir: Path, cluster_of, capsys) -> None:
    from kbpg_tui import cli

    cluster_of(DB3)
    assert cli.main(["--workdir", str(workdir), "nodes", "plan"]) == 0
    assert "Nothing to do: servers.tsv and the running cluster agree." in capsys.readouterr().out


def test_nodes_plan_exits_1_with_the_steps_when_a_host_is_replaced(workdir: Path, cluster_of, capsys) -> None:
    from kbpg_tui import cli

    asked = cluster_of(DB3)
    edit_tsv(workdir, "198.18.0.121", "198.18.0.123")
    assert cli.main(["--workdir", str(workdir), "nodes", "plan"]) == 1
    out = capsys.readouterr().out
    assert "DB nodes to replace: db-slave-01: 198.18.0.121 -> 198.18.0.123" in out
    assert "1. remove db-slave-01's old address 198.18.0.121:7000" in out and "2. add db-slave-01 (198.18.0.123)" in out
    assert "db-slave-01 198.18.0.123" in asked  # the new host is asked; the old one is read from Patroni and Raft
    assert cli.main(["--workdir", str(workdir), "nodes", "plan", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [a["kind"] for a in data["plan"]["actions"]] == ["remove", "add"] and data["plan"]["changes"] is True


def test_nodes_plan_exits_2_naming_why_a_plan_is_refused(workdir: Path, cluster_of, capsys) -> None:
    from kbpg_tui import cli

    cluster_of(DB3)
    edit_tsv(workdir, "198.18.0.121", "198.18.0.123")
    edit_tsv(workdir, "198.18.0.122", "198.18.0.124")
    assert cli.main(["--workdir", str(workdir), "nodes", "plan"]) == 2
    err = capsys.readouterr().err
    assert "kbpg nodes plan: refused: 2 of the 3 Raft members would leave in one plan" in err


def test_certificate_names_give_an_haproxy_address_to_the_haproxy_node_not_to_a_db_node_that_lists_it(
        tmp_path: Path) -> None:
    # A DB node's certificate carries the LB's and every HAProxy node's address too (tls.wanted_sans).
    from kbpg_tui.core import tls
    from kbpg_tui.core.nodes import certificate_names
    from kbpg_tui.core.settings import Settings

    settings = Settings()
    tls.ensure_ca(tmp_path)
    tls.ensure_node_cert(tmp_path, "db-master-01", ["db-master-01"],
                         ["198.18.0.120", "198.18.0.10", "198.18.0.11", "198.18.0.12"], settings)
    tls.ensure_node_cert(tmp_path, "haproxy-01", ["haproxy-01"], ["198.18.0.11", "198.18.0.10"], settings)
    tls.ensure_node_cert(tmp_path, "haproxy-02", ["haproxy-02"], ["198.18.0.12", "198.18.0.10"], settings)
    names = certificate_names(tmp_path)
    assert names["198.18.0.11"] == "haproxy-01" and names["198.18.0.12"] == "haproxy-02"
    assert names["198.18.0.120"] == "db-master-01"


def test_a_node_raft_names_but_patroni_does_not_list_yet_is_starting_not_one_to_add() -> None:
    # An install stopped while the cluster formed (its patroni.yml names all three, Raft's membership too): the node
    # whose Patroni never came up is the install's business, not a membership change (CI's killed-install resume).
    result = plan(selection(DB3), membership(DB3, gone=("db-slave-02",)))
    assert not result.changes and not result.refused
    assert any("db-slave-02 (198.18.0.122) is in Raft's membership but not a Patroni member" in n for n in result.notes)
    # The same node at an address Raft does not name is a real change.
    moved = plan(selection({**DB3, "db-slave-02": "198.18.0.123"}), membership(DB3, gone=("db-slave-02",)))
    assert [a.kind for a in moved.actions] == ["raft-remove", "add"]  # no certificate names its old address here


def test_new_haproxy_nodes_alone_need_no_apply_but_a_leaving_one_does() -> None:
    # A first install stopped before pg_hba named the HAProxy nodes reads as "two HAProxy nodes to add": the install's
    # ordinary work, which step 02 and `kbpg install` must not refuse.
    fresh = plan(selection(DB3), membership(DB3, haproxy=[]))
    assert [a.kind for a in fresh.actions] == ["haproxy-add", "haproxy-add"] and not fresh.needs_apply
    names = {"198.18.0.11": "haproxy-01", "198.18.0.12": "haproxy-02"}
    replaced = plan(selection(DB3, {"haproxy-01": "198.18.0.13", "haproxy-02": "198.18.0.12"}),
                    membership(DB3, names=names))
    assert replaced.needs_apply


# --- read_membership: a node alone in its own Raft --------------------------------------------------------------

def read_with_views(workdir: Path, monkeypatch: pytest.MonkeyPatch, views: dict[str, list[str] | None]):
    """read_membership on the lab's servers.tsv (DB3) where each DB node's own Raft says ``views[name]``: its
    partners (it is its own self_addr), or None: the host does not answer SSH; Patroni lists the nodes that answer."""
    from kbpg_tui.core import cluster, install, nodes
    from kbpg_tui.core.settings import load_settings as load
    from kbpg_tui.core.ssh import SshError

    class Pool(FakePool):
        def get(self, host: Host):
            partners = views[host.name]
            if partners is None:
                raise SshError(f"{host.name} ({host.address}): no SSH answer within 10 s")
            status = {"leader": f"{DB3['db-master-01']}:{PORT}", "raft_term": 3, "self": f"{host.address}:{PORT}",
                      "partners": {f"{DB3[name]}:{PORT}": 2 for name in partners}}
            text = HBA + f"r:unit active 300\nr:status {json.dumps(status)}\n"
            return ScriptedConnection(host, lambda script, stdin: result(text))

    members = tuple(cluster.Member(name, ip, "leader" if name == "db-master-01" else "replica", "running", 1, 0)
                    for name, ip in DB3.items() if views[name] is not None)
    monkeypatch.setattr(cluster, "read_cluster", lambda ctx, hosts=None, timeout=3.0: cluster.ClusterState(members))
    run = install.prepare(workdir, load(workdir / "kbpg.toml"), lambda event: None)
    run.ctx.pool = Pool()
    return nodes.read_membership(run.ctx)


def test_a_node_only_its_own_raft_lists_is_not_a_raft_member_and_a_note_names_it(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # db-slave-02's Patroni started with the members as partners; its ask to be added was refused: its own Raft
    # lists itself (and them), no other member lists it.
    found = read_with_views(workdir, monkeypatch, {"db-master-01": ["db-slave-01"], "db-slave-01": ["db-master-01"],
                                                   "db-slave-02": ["db-master-01", "db-slave-01"]})
    assert found.raft_members == ["198.18.0.120:7000", "198.18.0.121:7000"]
    assert found.raft_reachable == ["198.18.0.120:7000", "198.18.0.121:7000"]
    assert any(note.startswith("not in the other members' Raft membership") and "198.18.0.122:7000" in note
               for note in found.notes), found.notes
    result = plan(selection(DB3), found)
    assert [(a.kind, a.node) for a in result.actions] == [("raft-add", "db-slave-02")]  # it is not counted as a member


def test_a_node_the_other_members_list_is_a_member(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    found = read_with_views(workdir, monkeypatch, {"db-master-01": ["db-slave-01", "db-slave-02"],
                                                   "db-slave-01": ["db-master-01", "db-slave-02"],
                                                   "db-slave-02": ["db-master-01", "db-slave-01"]})
    assert found.raft_members == [f"{ip}:{PORT}" for ip in DB3.values()]
    assert not any("not in the other members' Raft membership" in note for note in found.notes)


def test_a_single_answering_member_still_counts_itself(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    found = read_with_views(workdir, monkeypatch, {"db-master-01": ["db-slave-01", "db-slave-02"],
                                                   "db-slave-01": None, "db-slave-02": None})
    assert found.raft_members == [f"{ip}:{PORT}" for ip in DB3.values()]
    assert "198.18.0.120:7000" in found.raft_reachable
    alone = read_with_views(workdir, monkeypatch, {"db-master-01": [], "db-slave-01": None, "db-slave-02": None})
    assert alone.raft_members == ["198.18.0.120:7000"]  # even with no partner at all
    assert not any("not in the other members' Raft membership" in note for note in alone.notes)
