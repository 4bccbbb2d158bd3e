"""The cluster model (kbpg_tui.core.cluster): both readers map onto one model, one health rule judges it.

Samples in tests/fixtures/cluster/ are patronictl's and REST /cluster's answers recorded on the lab
(tests/e2e/test_e2e_14_cluster_model.py with KBPG_CLUSTER_SAMPLES set): healthy, and with one replica's Patroni
stopped. The lab's Patroni gives "Lag in MB" and REST "lag"; Patroni 4's "Receive Lag"/"Replay Lag" and
receive_lag/replay_lag are in made-up rows below. Other states are made from the recorded ones.
"""

from __future__ import annotations

import copy
import json
import ssl
import threading
from pathlib import Path

import pytest

from kbpg_tui.core import cluster, tls
from kbpg_tui.core import credentials as creds
from kbpg_tui.core.engine import Context, TaskError, TaskRun
from kbpg_tui.core.inventory import load_selection
from kbpg_tui.core.lab.workdir import write_servers_tsv
from kbpg_tui.core.settings import Settings
from kbpg_tui.core.ssh import Host, SshError

from .fakes import FakePool, ScriptedConnection, result

SAMPLES = Path(__file__).parent / "fixtures" / "cluster"
NAMES = ["db-master-01", "db-slave-01", "db-slave-02"]


def sample(name: str):
    return json.loads((SAMPLES / name).read_text())


def ctl(name: str = "patronictl-healthy.json") -> list[dict]:
    return sample(name)


def rest(name: str = "rest-healthy.json") -> dict:
    return sample(name)


def shape(state: cluster.ClusterState) -> list[tuple]:
    return [(m.name, m.host, m.role, m.state, m.timeline, m.lag, m.pending_restart) for m in state.leader_first()]


# --- one model from both sources -----------------------------------------------------------------------------

def test_both_recorded_sources_give_the_same_model() -> None:
    by_ctl, by_rest = cluster.from_patronictl(ctl()), cluster.from_rest(rest())
    assert shape(by_ctl) == shape(by_rest)
    assert [m.name for m in by_rest.members] == NAMES
    leader = by_rest.leader
    assert leader is not None and leader.name == "db-master-01" and leader.is_running_leader
    assert [m.name for m in by_rest.streaming] == ["db-slave-01", "db-slave-02"]
    assert by_rest.timelines == {3} and all(m.lag == 0 for m in by_rest.replicas)


def test_both_recorded_sources_of_a_stopped_replica_give_the_same_model() -> None:
    by_ctl = cluster.from_patronictl(ctl("patronictl-replica-stopped.json"))
    by_rest = cluster.from_rest(rest("rest-replica-stopped.json"))
    assert shape(by_ctl) == shape(by_rest)
    stopped = by_rest.member("db-slave-01")
    assert stopped is not None and (stopped.state, stopped.timeline, stopped.lag) == ("stopped", None, None)


def test_patronictl_roles_hosts_and_lag_are_the_rest_apis() -> None:
    rows = [
        {"Member": "a", "Host": "198.18.0.120:5433", "Role": "Leader", "State": "running", "TL": 3},
        {"Member": "b", "Host": "198.18.0.121:5433", "Role": "Sync Standby", "State": "streaming", "TL": 3,
         "Receive Lag": 2, "Replay Lag": 5},
        {"Member": "c", "Host": "198.18.0.122:5433", "Role": "Quorum Standby", "State": "streaming", "TL": 3,
         "Lag in MB": 7},  # Patroni 3's column
        {"Member": "d", "Host": "198.18.0.123:5433", "Role": "Replica", "State": "starting", "TL": "",
         "Receive Lag": "unknown", "Pending restart": "*"},
    ]
    state = cluster.from_patronictl(rows)
    assert [(m.host, m.role, m.timeline, m.lag, m.pending_restart) for m in state.members] == [
        ("198.18.0.120", "leader", 3, None, False),
        ("198.18.0.121", "sync_standby", 3, 2 * cluster.MB, False),  # the receive lag, as REST's "lag"
        ("198.18.0.122", "quorum_standby", 3, 7 * cluster.MB, False),
        ("198.18.0.123", "replica", None, None, True),
    ]


def test_rest_lag_unknown_is_not_a_number_and_true_is_not_a_timeline() -> None:
    data = rest()
    data["members"][1].update(lag="unknown", receive_lag="unknown", replay_lag="unknown")
    data["members"][2].update(timeline=True)
    state = cluster.from_rest(data)
    assert state.members[1].lag is None and state.members[2].timeline is None


def test_pending_restarts_come_replicas_first_and_the_leader_last() -> None:
    data = rest()
    for member in data["members"]:
        member.update(pending_restart=True, pending_restart_reason={"shared_buffers": {"old_value": "32MB",
                                                                                       "new_value": "64MB"}})
    rows = ctl()
    for row in rows:
        row["Pending restart"] = "*"
    for state in (cluster.from_rest(data), cluster.from_patronictl(rows)):
        assert [m.name for m in state.pending_restart] == ["db-slave-01", "db-slave-02", "db-master-01"]


def test_nothing_readable_gives_an_empty_cluster() -> None:
    assert cluster.from_rest({"members": "?"}).members == ()
    assert cluster.from_patronictl(["?"]).members == ()  # type: ignore[list-item]
    assert cluster.from_rest([]).summary() == "no members yet"  # type: ignore[arg-type]


# --- one health rule --------------------------------------------------------------------------------------------

def judged(data: dict, expected: list[str] | int = NAMES) -> cluster.Health:
    return cluster.health(cluster.from_rest(data), expected)


def test_the_recorded_healthy_cluster_is_healthy_from_both_sources() -> None:
    for state in (cluster.from_rest(rest()), cluster.from_patronictl(ctl())):
        verdict = cluster.health(state, NAMES)
        assert verdict.ok and verdict.problems == ()
        assert verdict.summary == ("db-master-01=leader/running/TL3, db-slave-01=replica/streaming/TL3, "
                                   "db-slave-02=replica/streaming/TL3")


def test_the_recorded_stopped_replica_is_the_same_problem_from_both_sources() -> None:
    for state in (cluster.from_rest(rest("rest-replica-stopped.json")),
                  cluster.from_patronictl(ctl("patronictl-replica-stopped.json"))):
        assert cluster.health(state, NAMES).problems == ("db-slave-01 is replica/stopped",)


def _with(change) -> dict:
    data = copy.deepcopy(rest())
    change(data["members"])
    return data


@pytest.mark.parametrize("change, problem", [
    (lambda m: m[2].update(state="stopped"), "db-slave-02 is replica/stopped"),
    (lambda m: m[2].update(state="starting", lag="unknown"), "db-slave-02 is replica/starting"),
    (lambda m: m.pop(2), "db-slave-02 not in the cluster"),
    (lambda m: m[0].update(state="stopped"), "0 running leaders"),
    (lambda m: m[1].update(role="leader", state="running"), "2 running leaders"),
    (lambda m: m[2].update(timeline=4), "timelines differ: [3, 4]"),
    (lambda m: m[1].update(lag=cluster.MAX_LAG_BYTES + 1), f"db-slave-01 lag {cluster.MAX_LAG_BYTES + 1}"),
    (lambda m: m.append({**m[2], "name": "db-old-03"}), "db-old-03 in the cluster but not a DB node of servers.tsv"),
    (lambda m: m.clear(), "0 running leaders"),
])
def test_each_broken_condition_is_a_problem_naming_the_member(change, problem: str) -> None:
    verdict = judged(_with(change))
    assert not verdict.ok
    assert problem in verdict.problems, verdict.problems


def test_a_lag_at_the_bound_or_unknown_is_healthy() -> None:
    assert judged(_with(lambda m: m[1].update(lag=cluster.MAX_LAG_BYTES))).ok
    assert judged(_with(lambda m: m[1].update(lag="unknown", receive_lag="unknown", replay_lag="unknown"))).ok


def test_a_sync_standby_streaming_counts_as_a_replica() -> None:
    assert judged(_with(lambda m: m[1].update(role="sync_standby"))).ok


def test_with_only_a_count_the_members_are_counted() -> None:
    assert judged(rest(), 3).ok
    verdict = judged(_with(lambda m: m.pop(2)), 3)
    assert verdict.problems == ("2 members, 3 expected",)


def test_patronictl_rows_are_judged_by_the_same_rule_as_rest() -> None:
    rows = ctl()
    assert cluster.health(cluster.from_patronictl(rows), NAMES).ok is True
    rows[1]["Lag in MB"] = 17  # over the bound, as the diagnostics would say
    assert cluster.health(cluster.from_patronictl(rows), NAMES).ok is False


# --- readers -------------------------------------------------------------------------------------------------

def lab_run(tmp_path: Path, pool: FakePool) -> TaskRun:
    write_servers_tsv(tmp_path)
    ctx = Context(Settings(), creds.generate()[0], load_selection(tmp_path / "servers.tsv"), tmp_path,
                  pool=pool, sink=lambda event: None, cancel=threading.Event())  # type: ignore[arg-type]
    return TaskRun(ctx, "02", None)


def db(name: str, handler) -> ScriptedConnection:
    return ScriptedConnection(Host(name, "198.18.0.1"), handler)


def test_read_patronictl_asks_the_next_node_when_one_is_down(tmp_path: Path) -> None:
    answer = json.dumps(ctl())
    pool = FakePool({"db-master-01": SshError("db-master-01 (198.18.0.120): no SSH answer within 10 s"),
                     "db-slave-01": db("db-slave-01", lambda script, stdin: result("", 1, "patroni is down")),
                     "db-slave-02": db("db-slave-02", lambda script, stdin: result(answer))})
    state = cluster.read_patronictl(lab_run(tmp_path, pool))
    assert state.source == "patronictl on db-slave-02" and shape(state) == shape(cluster.from_rest(rest()))
    assert pool.gets == NAMES


def test_read_patronictl_names_every_node_when_none_answers(tmp_path: Path) -> None:
    pool = FakePool({"db-master-01": SshError("db-master-01 (198.18.0.120): no SSH answer within 10 s"),
                     "db-slave-01": db("db-slave-01", lambda script, stdin: result("not json")),
                     "db-slave-02": db("db-slave-02", lambda script, stdin: result("", 1, "raft: no quorum"))})
    with pytest.raises(TaskError, match=r"cannot read the cluster state: db-master-01 .*no SSH answer.*; "
                                        r"db-slave-01: unreadable patronictl output; db-slave-02: raft: no quorum"):
        cluster.read_patronictl(lab_run(tmp_path, pool))


def test_leader_host_is_remembered_and_must_be_a_db_node(tmp_path: Path) -> None:
    rows = ctl()
    connection = db("db-master-01", lambda script, stdin: result(json.dumps(rows)))
    run = lab_run(tmp_path, FakePool({n: connection for n in NAMES}))
    assert cluster.leader_host(run).name == "db-master-01"
    assert cluster.leader_host(run).name == "db-master-01" and len(connection.calls) == 1  # asked once per run
    rows[0]["Member"] = "db-renamed"
    run.ctx.state.clear()
    with pytest.raises(TaskError, match="leader is db-renamed, which is not a DB node selected in servers.tsv"):
        cluster.leader_host(run)
    rows[0]["Role"] = "Replica"
    run.ctx.state.clear()
    with pytest.raises(TaskError, match="the cluster has no leader right now"):
        cluster.leader_host(run)


def test_sql_on_the_leader_goes_through_stdin_never_argv(tmp_path: Path) -> None:
    seen: list[tuple[str, bytes]] = []

    def answer(script: str, stdin: bytes):
        seen.append((script, stdin))
        return result(json.dumps(ctl())) if "patronictl" in script else result("1\n")

    run = lab_run(tmp_path, FakePool({n: db(n, answer) for n in NAMES}))
    secret = run.ctx.credentials["POSTGRES_APP_PASS"]
    out = cluster.on_leader(run, f"ALTER ROLE kb_app PASSWORD '{secret}';", "setting a password", database="keybuzz")
    script, stdin = seen[-1]
    assert out.stdout == "1\n" and secret.encode() in stdin and secret not in script
    assert script.startswith("runuser -u postgres -- psql ") and script.endswith("-U kb_admin -d keybuzz")


def _rest_answers(answers: dict[str, object]):
    def request(url: str) -> tuple[int, bytes]:
        answer = answers.get(url)
        if answer is None:
            raise cluster.NoAnswer(f"{url}: no answer (timed out)")
        status, body = answer  # type: ignore[misc]
        return status, body if isinstance(body, bytes) else json.dumps(body).encode()
    return request


HOSTS = [Host(name, f"198.18.0.{120 + i}") for i, name in enumerate(NAMES)]


def test_read_rest_asks_the_next_node_and_names_each_that_did_not_answer() -> None:
    request = _rest_answers({"http://198.18.0.121:8008/cluster": (503, b""),
                             "http://198.18.0.122:8008/cluster": (200, rest())})
    state = cluster.read_rest(HOSTS, 8008, request=request)
    assert state.source == "/cluster of db-slave-02" and [m.name for m in state.members] == NAMES
    request = _rest_answers({"http://198.18.0.121:8008/cluster": (503, b""),
                             "http://198.18.0.122:8008/cluster": (200, b"<html>")})
    with pytest.raises(cluster.ClusterUnreadable) as failure:
        cluster.read_rest(HOSTS, 8008, request=request)
    assert failure.value.errors == ["db-master-01: http://198.18.0.120:8008/cluster: no answer (timed out)",
                                    "db-slave-01: /cluster answered 503",
                                    "db-slave-02: /cluster is not Patroni's JSON"]
    assert str(failure.value).startswith("no DB node answers Patroni's REST API: db-master-01: ")


def test_the_live_view_shows_the_leader_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = rest()
    data["members"].reverse()
    seen: list[tuple[str, object]] = []

    def request(url: str, timeout: float, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
        seen.append((url, context))
        return 200, json.dumps(data).encode()

    monkeypatch.setattr(cluster, "http_request", request)
    run = lab_run(tmp_path, FakePool())
    tls.ensure_ca(tmp_path)
    members = cluster.cluster_view(run.ctx)
    assert [m.name for m in members] == NAMES and members[0].is_leader
    # TLS on (the default): HTTPS, verified with kbpg's CA
    assert seen[0][0] == "https://198.18.0.120:8008/cluster" and isinstance(seen[0][1], ssl.SSLContext)
    run.ctx.settings.tls.enabled = False
    cluster.cluster_view(run.ctx)
    assert seen[1] == ("http://198.18.0.120:8008/cluster", None)


def test_without_its_ca_the_live_view_says_which_file_is_missing(tmp_path: Path) -> None:
    run = lab_run(tmp_path, FakePool())
    with pytest.raises(cluster.ClusterUnreadable, match=r"credentials/tls/ca.crt is missing; run kbpg install"):
        cluster.cluster_view(run.ctx)


def test_rest_urls_follow_tls(tmp_path: Path) -> None:
    settings = Settings()
    host = Host("db-master-01", "198.18.0.120")
    assert cluster.rest_url(settings, host, "/primary") == "https://198.18.0.120:8008/primary"
    settings.tls.enabled, settings.ports.patroni_rest = False, 8009
    assert cluster.rest_url(settings, "198.18.0.121", "cluster") == "http://198.18.0.121:8009/cluster"
    run = lab_run(tmp_path, FakePool())
    assert cluster.rest_url(run.ctx, host, "/switchover") == "https://198.18.0.120:8008/switchover"  # a Context too


def test_the_rest_context_verifies_with_kbpgs_ca_and_is_made_once_per_ca(tmp_path: Path) -> None:
    run = lab_run(tmp_path, FakePool())
    tls.ensure_ca(tmp_path)
    first = cluster.rest_context(run.ctx)
    assert first is not None and first.verify_mode == ssl.CERT_REQUIRED and first.check_hostname
    assert first.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert cluster.rest_context(run.ctx) is first
    (tmp_path / tls.CA_CERT).unlink()
    (tmp_path / tls.CA_KEY).unlink()
    tls.ensure_ca(tmp_path)  # a new CA: a new context
    assert cluster.rest_context(run.ctx) is not first
    run.ctx.settings.tls.enabled = False
    assert cluster.rest_context(run.ctx) is None


def test_kbpgs_logins_are_verify_full_with_its_ca_and_never_the_superuser(tmp_path: Path) -> None:
    run = lab_run(tmp_path, FakePool())
    values = run.ctx.credentials
    monitor = cluster.login(run.ctx, "monitor")
    assert monitor == {"user": values["POSTGRES_MONITOR_USER"], "password": values["POSTGRES_MONITOR_PASS"],
                       "sslmode": "verify-full", "sslrootcert": str((tmp_path / tls.CA_CERT).absolute())}
    assert cluster.login(run.ctx, "app")["user"] == values["POSTGRES_APP_USER"]
    assert cluster.login(run.ctx, "pgbouncer")["user"] == values["PGBOUNCER_ADMIN_USER"]
    with pytest.raises(KeyError):
        cluster.login(run.ctx, "superuser")
    run.ctx.settings.tls.enabled = False
    assert "sslmode" not in cluster.login(run.ctx, "app")
    del values["POSTGRES_MONITOR_PASS"]
    with pytest.raises(TaskError, match=r"^POSTGRES_MONITOR_PASS not in credentials/postgres.env: run `kbpg install`"):
        cluster.login(run.ctx, "monitor")
