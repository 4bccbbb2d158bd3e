"""patroni.yml as kbpg renders it: the field failures it must make impossible.

These check the rendered data; the lab tests check that Patroni accepts it and forms a cluster.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import yaml

from kbpg_tui.core import cluster
from kbpg_tui.core import credentials as creds
from kbpg_tui.core import inventory as inv
from kbpg_tui.core.engine import Context, Status, TaskRun
from kbpg_tui.core.settings import Settings, from_dict
from kbpg_tui.core.steps import s02_patroni as patroni

from .fakes import FakePool, ScriptedConnection, result, unreachable


def _healthy(rows: list[dict]) -> bool:
    """``patronictl list -f json`` rows of a 3-node cluster, judged by the one health rule step 02 uses."""
    return cluster.health(cluster.from_patronictl(rows), 3).ok


def make_run(real_inventory: Path, settings: Settings | None = None) -> TaskRun:
    values, _ = creds.generate()
    ctx = Context(settings or Settings(), values, inv.load_selection(real_inventory), Path("/nonexistent"),
                  pool=FakePool(), sink=lambda e: None, cancel=threading.Event())  # type: ignore[arg-type]
    return TaskRun(ctx, "02", None)


def rendered(run: TaskRun, index: int = 0) -> dict:
    host = run.ctx.db_hosts[index]
    text = patroni.render_yaml(patroni.render_config(run, host))
    return yaml.safe_load(text)


def test_config_has_a_bootstrap_section_and_valid_timing(real_inventory: Path) -> None:
    config = rendered(make_run(real_inventory))
    dcs = config["bootstrap"]["dcs"]
    assert config["bootstrap"]["initdb"]
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"]


def test_raft_partners_are_the_other_db_nodes(real_inventory: Path) -> None:
    config = rendered(make_run(real_inventory), index=1)
    assert config["name"] == "db-slave-01"
    assert config["raft"]["self_addr"] == "10.0.0.121:7000"
    assert sorted(config["raft"]["partner_addrs"]) == ["10.0.0.120:7000", "10.0.0.122:7000"]
    assert "etcd" not in config and "etcd3" not in config


@pytest.mark.parametrize("enabled, remote", [(True, "hostssl"), (False, "host")])
def test_hba_allows_replication_from_every_db_node_and_never_trusts(real_inventory: Path, enabled: bool,
                                                                    remote: str) -> None:
    run = make_run(real_inventory, from_dict({"tls": {"enabled": enabled}}))
    hba = rendered(run)["postgresql"]["pg_hba"]
    for address in ("10.0.0.120", "10.0.0.121", "10.0.0.122"):
        assert f'{remote} replication "kb_repl" {address}/32 scram-sha-256' in hba
    for address in ("10.0.0.120", "10.0.0.121", "10.0.0.122", "10.0.0.11", "10.0.0.12"):
        assert f"{remote} all all {address}/32 scram-sha-256" in hba
    assert not [rule for rule in hba if rule.split()[-1] in ("trust", "md5", "password")]
    # The whole Internet appears only to refuse the superuser.
    assert [rule for rule in hba if "0.0.0.0/0" in rule or "::/0" in rule] == [
        'host all "kb_admin" 0.0.0.0/0 reject', 'host all "kb_admin" ::/0 reject']


def _host_rules_for_all_roles(hba: list[str]) -> list[str]:
    """The networks from which any role (not only the superuser) may connect over TCP."""
    return [rule.split()[3] for rule in hba if rule.split()[0] in ("host", "hostssl") and rule.split()[1:3] == ["all", "all"]]


def test_hba_lets_applications_in_only_through_haproxy_and_db_nodes(real_inventory: Path) -> None:
    # Field failure 12: the private subnet no longer admits every role; an app pointed at a node is refused.
    hba = rendered(make_run(real_inventory))["postgresql"]["pg_hba"]
    assert sorted(_host_rules_for_all_roles(hba)) == sorted(
        ["10.0.0.120/32", "10.0.0.121/32", "10.0.0.122/32", "10.0.0.11/32", "10.0.0.12/32", "127.0.0.1/32"])
    # The private subnet is for diagnostics and administrators: the monitoring role only (issue 13: no longer the
    # superuser, who logs in only from the DB nodes and the local socket).
    assert 'hostssl all "kb_monitor" 10.0.0.0/16 scram-sha-256' in hba
    assert not [rule for rule in hba if "10.0.0.0/16" in rule and '"kb_monitor"' not in rule]


def test_hba_adds_each_direct_client_network(real_inventory: Path) -> None:
    settings = from_dict({"network": {"direct_clients": ["10.0.5.0/24", "10.0.9.7/32"]}})
    hba = rendered(make_run(real_inventory, settings))["postgresql"]["pg_hba"]
    assert {"10.0.5.0/24", "10.0.9.7/32"} <= set(_host_rules_for_all_roles(hba))
    assert "hostssl all all 10.0.5.0/24 scram-sha-256" in hba


def test_hba_role_names_are_quoted_so_no_role_becomes_a_keyword(real_inventory: Path) -> None:
    run = make_run(real_inventory)
    run.ctx.credentials["POSTGRES_SUPERUSER"] = "all"  # a valid identifier, and pg_hba's "every role"
    run.ctx.credentials["POSTGRES_MONITOR_USER"] = "replication"
    hba = rendered(run)["postgresql"]["pg_hba"]
    assert 'host all "all" 0.0.0.0/0 reject' in hba
    assert "host all all 0.0.0.0/0 reject" not in hba
    assert 'hostssl all "replication" 10.0.0.0/16 scram-sha-256' in hba


def test_rest_api_requires_auth_and_binds_the_private_address(real_inventory: Path) -> None:
    run = make_run(real_inventory)
    config = rendered(run, index=2)
    assert config["restapi"]["authentication"]["password"] == run.ctx.credentials["PATRONI_API_PASSWORD"]
    assert config["restapi"]["listen"] == "10.0.0.122:8008"
    assert config["postgresql"]["listen"] == "10.0.0.122:5432"


def test_no_postgres_role_is_assumed(real_inventory: Path) -> None:
    config = rendered(make_run(real_inventory))
    auth = config["postgresql"]["authentication"]
    assert auth["superuser"]["username"] == "kb_admin"
    assert auth["replication"]["username"] == "kb_repl"
    assert "postgres" not in yaml.safe_dump(auth)


def test_settings_flow_into_the_config(real_inventory: Path) -> None:
    settings = from_dict({
        "postgresql": {"version": 17, "max_connections": 50, "shared_buffers": "32MB", "parameters": {"work_mem": "4MB"}},
        "patroni": {"timing_plan": "fast"},
        "ports": {"patroni_rest": 8009, "raft": 7001},
        "network": {"bind": "all"},
    })
    config = rendered(make_run(real_inventory, settings))
    parameters = config["bootstrap"]["dcs"]["postgresql"]["parameters"]
    assert parameters["max_connections"] == 50 and parameters["shared_buffers"] == "32MB" and parameters["work_mem"] == "4MB"
    assert config["postgresql"]["bin_dir"] == "/usr/lib/postgresql/17/bin"
    assert config["postgresql"]["data_dir"] == "/var/lib/postgresql/17/patroni"
    assert (config["bootstrap"]["dcs"]["ttl"], config["bootstrap"]["dcs"]["loop_wait"]) == (20, 10)
    assert config["restapi"]["listen"] == "0.0.0.0:8009"
    assert config["raft"]["self_addr"] == "10.0.0.120:7001"


def test_awkward_passwords_survive_yaml(real_inventory: Path) -> None:
    run = make_run(real_inventory)
    run.ctx.credentials["POSTGRES_SUPERPASS"] = "a: 'b' \"c\" #d {e} [f] *g &h !i |j >k %l @m `n"
    config = rendered(run)
    assert config["postgresql"]["authentication"]["superuser"]["password"] == run.ctx.credentials["POSTGRES_SUPERPASS"]


def test_health_needs_one_leader_and_streaming_replicas_on_one_timeline() -> None:
    leader = {"Member": "a", "Role": "Leader", "State": "running", "TL": 1}
    r1 = {"Member": "b", "Role": "Replica", "State": "streaming", "TL": 1}
    r2 = {"Member": "c", "Role": "Replica", "State": "streaming", "TL": 1}
    assert _healthy([leader, r1, r2])
    assert not _healthy([leader, r1, {**r2, "State": "starting"}])
    assert not _healthy([leader, r1, {**r2, "TL": 2}])
    assert not _healthy([leader, r1])
    assert not _healthy([leader, {**r1, "Role": "Leader", "State": "running"}, r2])


def _pool(run: TaskRun, members: list[dict], down: set[str]) -> FakePool:
    """DB nodes answering ``patronictl list``; some of them down."""
    answer = json.dumps(members)
    return FakePool({h.name: unreachable(h) if h.name in down else ScriptedConnection(h, lambda script, stdin: result(answer))
                     for h in run.ctx.db_hosts})


def _members(leader: str) -> list[dict]:
    names = ["db-master-01", "db-slave-01", "db-slave-02"]
    if leader not in names:
        names[0] = leader  # a member Patroni knows under a name servers.tsv no longer has
    return [{"Member": n, "Role": "Leader" if n == leader else "Replica",
             "State": "running" if n == leader else "streaming", "TL": 2} for n in names]


def test_the_leader_is_found_when_the_first_db_node_is_down(real_inventory: Path) -> None:
    run = make_run(real_inventory)
    run.ctx.pool = _pool(run, _members("db-slave-02"), down={"db-master-01"})
    assert patroni.leader_host(run).name == "db-slave-02"
    assert run.ctx.pool.gets[:2] == ["db-master-01", "db-slave-01"]


def test_no_db_node_answering_is_a_clear_error(real_inventory: Path) -> None:
    import pytest

    run = make_run(real_inventory)
    run.ctx.pool = _pool(run, [], down={"db-master-01", "db-slave-01", "db-slave-02"})
    with pytest.raises(patroni.TaskError, match="cannot read the cluster state: db-master-01 .*no SSH answer"):
        cluster.read_patronictl(run)


def test_a_leader_that_is_not_in_the_inventory_is_a_clear_error(real_inventory: Path) -> None:
    import pytest

    run = make_run(real_inventory)
    run.ctx.pool = _pool(run, _members("db-old-name"), down=set())
    with pytest.raises(patroni.TaskError, match="leader is db-old-name, which is not a DB node"):
        patroni.leader_host(run)


def test_wait_for_cluster_names_the_leader_it_judged_healthy(real_inventory: Path) -> None:
    run = make_run(real_inventory)
    run.ctx.pool = _pool(run, _members("db-slave-01"), down={"db-master-01"})
    outcome = patroni.wait_for_cluster(run)
    assert run.ctx.state["leader"] == "db-slave-01" and "leader db-slave-01" in outcome.detail


def test_journal_tails_survive_a_node_that_is_down(real_inventory: Path) -> None:
    run = make_run(real_inventory)
    run.ctx.pool = _pool(run, [], down={"db-slave-01"})
    text = patroni.journal_tails(run)
    assert "--- db-slave-01\n(no journal: db-slave-01 (10.0.0.121): no SSH answer" in text
    assert "--- db-master-01" in text and "--- db-slave-02" in text


# --- step 02 touches only what is kbpg's (host_guards) ---------------------------------------------------------

def _on_db_node(real_inventory: Path, probe: str, answers: dict[str, str] | None = None):
    """One DB node: host_guards' probe is answered with ``probe``, any other command from ``answers`` (the first key
    found in the script) or with nothing; every command is recorded (``node.scripts``)."""
    run = make_run(real_inventory)

    def answer(script: str, stdin: bytes):
        if "g:dir" in script:
            return result(probe)
        return result(next((text for key, text in (answers or {}).items() if key in script), ""))

    host = run.ctx.db_hosts[0]
    node = ScriptedConnection(host, answer)
    run.ctx.pool = FakePool({host.name: node})
    return TaskRun(run.ctx, "02", host), node


def test_step_02_never_chowns_a_directory_kbpg_did_not_create(real_inventory: Path) -> None:
    import pytest

    from kbpg_tui.core.engine import TaskError

    run, node = _on_db_node(real_inventory, "g:dir data stat root:root 755 0\ng:dir raft missing\n")
    with pytest.raises(TaskError, match=r"db-master-01: the data directory /var/lib/postgresql/16/patroni exists but kbpg "
                                        r"did not create it \(root:root 755, empty\)"):
        patroni.write_config(run)
    assert not [s for s in node.scripts if "chown" in s or "mkdir" in s]


def test_step_02_refuses_stray_files_before_installing_anything(real_inventory: Path) -> None:
    import pytest

    from kbpg_tui.core.engine import TaskError

    run, node = _on_db_node(real_inventory, "g:dir data stat root:root 755 1\ng:entry data notes.txt\ng:dir raft missing\n")
    with pytest.raises(TaskError, match=r"not empty and holds no PG_VERSION \(1 entry: notes.txt\)"):
        patroni.install_packages(run)
    assert len(node.scripts) == 1  # the probe only: no package source, no apt, no file written


def test_step_02_creates_and_records_its_directories_and_repairs_a_data_directory(real_inventory: Path) -> None:
    run, node = _on_db_node(real_inventory, "g:dir data stat root:root 755 22\ng:pgversion data 16\n"
                                            "g:dir raft missing\ng:created /var/lib/postgresql/16/patroni\n")
    patroni.write_config(run)
    script = next(s for s in node.scripts if "chown" in s)
    assert "chown postgres:postgres /var/lib/postgresql/16/patroni && chmod 0700 /var/lib/postgresql/16/patroni" in script
    assert "mkdir -m 0700 /var/lib/patroni/raft && chown postgres:postgres /var/lib/patroni/raft" in script
    assert f">> {patroni.host_guards.CREATED_FILE}" in script


def test_only_a_cluster_the_package_install_just_made_is_stopped(real_inventory: Path) -> None:
    listing = ("17 main 5432 online postgres /var/lib/postgresql/17/main /var/log/postgresql/postgresql-17-main.log\n"
               "15 legacy 5433 online postgres /var/lib/postgresql/15/legacy /var/log/postgresql/postgresql-15-legacy.log\n")
    run, node = _on_db_node(real_inventory, "", {"pg_lsclusters": listing})
    assert patroni.stop_default_clusters(run, existing={("15", "legacy")}) == ["17/main"]
    stops = [s for s in node.scripts if "pg_ctlcluster" in s]
    assert len(stops) == 1 and "17 main" in stops[0] and "legacy" not in stops[0]


# --- the dynamic configuration: timing plan and synchronous replication, applied live ---------------------------

@pytest.mark.parametrize("plan, timing", [("fast", (20, 10, 5)), ("norm", (30, 10, 10)), ("safe", (60, 10, 20))])
def test_the_timing_plan_goes_into_the_dcs(real_inventory: Path, plan: str, timing: tuple) -> None:
    dcs = patroni.dynamic_config(make_run(real_inventory, from_dict({"patroni": {"timing_plan": plan}})))
    assert (dcs["ttl"], dcs["loop_wait"], dcs["retry_timeout"]) == timing


@pytest.mark.parametrize("mode, strict, wanted", [("off", False, False), ("on", False, True), ("on", True, True),
                                                  ("quorum", True, "quorum")])
def test_synchronous_mode_as_patroni_4_takes_it(real_inventory: Path, mode: str, strict: bool, wanted) -> None:
    settings = from_dict({"patroni": {"synchronous_mode": mode, "synchronous_mode_strict": strict}})
    dcs = patroni.dynamic_config(make_run(real_inventory, settings))
    assert dcs["synchronous_mode"] == wanted and type(dcs["synchronous_mode"]) is type(wanted)
    assert dcs["synchronous_mode_strict"] is strict
    # A new cluster starts asynchronous (Patroni 4.0's validator refuses "quorum" there, and a strict mode would
    # hold the bootstrap's writes); the "dynamic config" task sets the mode live once every member streams.
    bootstrap = patroni.render_config(make_run(real_inventory, settings), make_run(real_inventory).ctx.db_hosts[0])
    assert bootstrap["bootstrap"]["dcs"]["synchronous_mode"] is False
    assert bootstrap["bootstrap"]["dcs"]["synchronous_mode_strict"] is False
    assert {k: v for k, v in bootstrap["bootstrap"]["dcs"].items() if not k.startswith("synchronous")} == \
        {k: v for k, v in dcs.items() if not k.startswith("synchronous")}


class FakeDcs:
    """Patroni's dynamic configuration as patronictl shows and patches it on the leader (db-master-01)."""

    def __init__(self, stored: dict):
        self.stored = stored
        self.patches: list[dict] = []

    def answer(self, script: str, stdin: bytes):
        if "list -f json" in script:
            return result(json.dumps(_members("db-master-01")))
        if "show-config" in script:
            return result(yaml.safe_dump(self.stored, default_flow_style=False))  # as patronictl prints it
        if "edit-config --force --apply -" in script:
            patch = yaml.safe_load(stdin.decode())
            self.patches.append(patch)
            self.stored = _merged(self.stored, patch)
            return result()
        raise AssertionError(f"unexpected command: {script}")


def _merged(stored: dict, patch: dict) -> dict:
    merged = dict(stored)
    for key, value in patch.items():
        merged[key] = _merged(merged.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


@pytest.mark.parametrize("mode, strict", [("off", False), ("on", False), ("on", True), ("quorum", False),
                                          ("quorum", True)])
def test_a_rerun_sees_the_synchronous_settings_patroni_prints_back_as_unchanged(real_inventory: Path, mode: str,
                                                                               strict: bool) -> None:
    settings = from_dict({"patroni": {"timing_plan": "fast", "synchronous_mode": mode,
                                      "synchronous_mode_strict": strict}})
    run = make_run(real_inventory, settings)
    before = {**patroni.dynamic_config(make_run(real_inventory)), "synchronous_mode": False}
    del before["synchronous_mode_strict"]  # a cluster bootstrapped before kbpg wrote it
    dcs = FakeDcs(before)
    run.ctx.pool = FakePool({h.name: ScriptedConnection(h, dcs.answer) for h in run.ctx.db_hosts})
    assert patroni.apply_dynamic_config(run).status is Status.CHANGED
    assert dcs.patches[-1]["synchronous_mode_strict"] is strict
    assert dcs.stored["synchronous_mode"] == {"off": False, "on": True, "quorum": "quorum"}[mode]
    assert patroni.apply_dynamic_config(run).status is Status.UNCHANGED, "Patroni's spelling read back: no change"
    assert len(dcs.patches) == 1


def test_changing_the_synchronous_mode_is_applied_live(real_inventory: Path) -> None:
    run = make_run(real_inventory, from_dict({"patroni": {"synchronous_mode": "quorum"}}))
    dcs = FakeDcs(patroni.dynamic_config(make_run(real_inventory, from_dict({"patroni": {"synchronous_mode": "on"}}))))
    run.ctx.pool = FakePool({h.name: ScriptedConnection(h, dcs.answer) for h in run.ctx.db_hosts})
    assert patroni.apply_dynamic_config(run).status is Status.CHANGED
    assert dcs.patches[0]["synchronous_mode"] == "quorum" and run.ctx.state["dynamic_config_changed"]


@pytest.mark.parametrize("plan, interval", [("fast", "1s"), ("norm", "5s"), ("safe", "5s")])
def test_replicas_reconnect_to_a_primary_that_is_back_as_the_plan_says(real_inventory: Path, plan: str,
                                                                        interval: str) -> None:
    # With synchronous replication a primary that came back (a kill) acknowledges no commit before a replica
    # reconnects: PostgreSQL's 5 s retry stood between it and the first write.
    dcs = patroni.dynamic_config(make_run(real_inventory, from_dict({"patroni": {"timing_plan": plan}})))
    assert dcs["postgresql"]["parameters"]["wal_retrieve_retry_interval"] == interval
    custom = from_dict({"patroni": {"timing_plan": plan}, "postgresql": {"parameters": {"wal_retrieve_retry_interval": "3s"}}})
    assert patroni.dynamic_config(make_run(real_inventory, custom))["postgresql"]["parameters"][
        "wal_retrieve_retry_interval"] == "3s"  # the operator's own value wins


# --- patroni.yml's pinned keys under a live node ---------------------------------------------------------------

def _live_node(real_inventory: Path, pg_version_answer: str):
    """A DB node whose patroni.yml is this run's own but for the scope (another cluster's), and whose data directory
    probe answers as given."""
    import base64

    answers = {"PG_VERSION": pg_version_answer}
    run, node = _on_db_node(real_inventory, "g:dir data stat postgres:postgres 700 20\ng:pgversion data 16\n"
                                            "g:dir raft missing\n", answers)
    current = patroni.render_config(run, run.host)
    current["scope"] = "the-cluster-running-there"
    answers["echo present"] = "present\n" + base64.b64encode(patroni.render_yaml(current).encode()).decode()
    return run, node


@pytest.mark.parametrize("pg_version_answer, refusal", [
    ("initialised\n", r"db-master-01 runs an initialised cluster in \S+; this run would change scope"),
    # CI once got an empty answer (sshd sent the exit status before the output) and overwrote a live node's scope.
    ("", r"db-master-01: could not tell whether \S+ holds a cluster \(answer ''\); nothing was written"),
], ids=["initialised", "no_answer"])
def test_a_scope_change_under_a_live_node_is_refused_before_anything_is_written(
        real_inventory: Path, pg_version_answer: str, refusal: str) -> None:
    from kbpg_tui.core.engine import TaskError

    run, node = _live_node(real_inventory, pg_version_answer)
    with pytest.raises(TaskError, match=refusal):
        patroni.write_config(run)
    assert not [s for s in node.scripts if "mv -f" in s or "chown" in s]
