"""Checks on Patroni's REST API: 4 patroni cluster (the cluster model's health rule), 5 patroni timing, 15 synchronous
replication."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kbpg_tui.core.checks import c04_patroni_cluster, c05_patroni_timing, c15_sync
from kbpg_tui.core.checks.base import CheckFailed, CheckWarning

SAMPLES = Path(__file__).parent.parent / "fixtures" / "cluster"
DB = {"db-master-01": "198.18.0.120", "db-slave-01": "198.18.0.121", "db-slave-02": "198.18.0.122"}


def recorded(name: str = "rest-healthy.json") -> dict:
    return json.loads((SAMPLES / name).read_text())


def patroni(primary: set[str], cluster: dict | None = None, down: set[str] = frozenset(),
            cluster_status: int = 200) -> dict:
    """REST answers of the three DB nodes: /primary 200 on ``primary`` (503 elsewhere), /cluster ``cluster``."""
    answers: dict = {}
    for name, address in DB.items():
        if name in down:
            continue
        answers[("OPTIONS", f"https://{address}:8008/primary")] = (200 if name in primary else 503, "")
        answers[f"https://{address}:8008/cluster"] = (cluster_status, recorded() if cluster is None else cluster)
    return answers


# --- 4 patroni cluster -------------------------------------------------------------------------------------

def test_the_recorded_healthy_cluster_passes(make) -> None:
    p = make(rest=patroni({"db-master-01"}))
    assert c04_patroni_cluster.patroni_cluster(p) == \
        "leader db-master-01, 2/2 replicas streaming, timeline 3, /primary only on db-master-01"


def test_primary_on_two_nodes_fails(make) -> None:
    p = make(rest=patroni({"db-master-01", "db-slave-01"}))
    with pytest.raises(CheckFailed, match=r"^/primary is 200 on 2 nodes \(db-master-01, db-slave-01\)$"):
        c04_patroni_cluster.patroni_cluster(p)


def test_the_recorded_stopped_replica_fails_naming_it(make) -> None:
    p = make(rest=patroni({"db-master-01"}, recorded("rest-replica-stopped.json")))
    with pytest.raises(CheckFailed, match=r"^db-slave-01 is replica/stopped$"):
        c04_patroni_cluster.patroni_cluster(p)


def test_lag_over_the_bound_and_diverged_timelines_fail(make) -> None:
    cluster = recorded()
    cluster["members"][1].update(lag=64 * 1024 * 1024)
    cluster["members"][2].update(timeline=4)
    p = make(rest=patroni({"db-master-01"}, cluster))
    with pytest.raises(CheckFailed, match=r"^timelines differ: \[3, 4\]; db-slave-01 lag 67108864$"):
        c04_patroni_cluster.patroni_cluster(p)


def test_a_node_that_does_not_answer_fails_naming_it_while_the_others_are_read(make) -> None:
    cluster = recorded()
    del cluster["members"][0]  # db-master-01 down: gone from the cluster too; db-slave-01 leads now
    cluster["members"][0].update(role="leader", state="running", timeline=4)
    cluster["members"][1].update(timeline=4)
    p = make(rest=patroni({"db-slave-01"}, cluster, down={"db-master-01"}))
    with pytest.raises(CheckFailed) as failure:
        c04_patroni_cluster.patroni_cluster(p)
    assert str(failure.value) == ("db-master-01 not in the cluster; "
                                  "db-master-01: https://198.18.0.120:8008/primary: no answer "
                                  "([Errno 111] Connection refused)")
    assert ("GET", "https://198.18.0.121:8008/cluster", None) in p.requests  # read from the next node


def test_no_node_answering_cluster_fails_naming_each(make) -> None:
    p = make(rest=patroni({"db-master-01"}, cluster_status=503, down={"db-slave-02"}))
    with pytest.raises(CheckFailed) as failure:
        c04_patroni_cluster.patroni_cluster(p)
    assert str(failure.value) == ("no DB node answered /cluster: db-slave-02: https://198.18.0.122:8008/primary: no "
                                  "answer ([Errno 111] Connection refused); db-master-01: /cluster answered 503; "
                                  "db-slave-01: /cluster answered 503")


# --- 5 patroni timing --------------------------------------------------------------------------------------

def timing(config: dict | None, status: int = 200, down: set[str] = frozenset()) -> dict:
    return {f"https://{address}:8008/config": (status, config or {}) for name, address in DB.items()
            if name not in down}


def test_timing_as_planned_passes(make) -> None:
    p = make(rest=timing({"ttl": 30, "loop_wait": 10, "retry_timeout": 10}, down={"db-master-01"}))
    assert c05_patroni_timing.timing(p) == "ttl 30, loop_wait 10, retry_timeout 10 (from db-slave-01), as planned"


def test_timing_breaking_the_rule_fails_and_another_plan_warns(make) -> None:
    p = make(rest=timing({"ttl": 12, "loop_wait": 5, "retry_timeout": 5}))
    with pytest.raises(CheckFailed, match=r"breaks loop_wait \+ 2\*retry_timeout <= ttl \(5 \+ 2\*5 > 12\)"):
        c05_patroni_timing.timing(p)
    p = make(rest=timing({"ttl": 20, "loop_wait": 5, "retry_timeout": 5}))
    with pytest.raises(CheckWarning, match=r"20/5/5 differ from kbpg.toml's 30/10/10 \(norm plan\); re-run `kbpg install`"):
        c05_patroni_timing.timing(p)


def test_timing_is_compared_with_the_chosen_plan(make) -> None:
    p = make(rest=timing({"ttl": 20, "loop_wait": 10, "retry_timeout": 5}))
    p.settings.patroni.timing_plan = "fast"  # set without from_dict: the plan itself, not patroni.ttl, is the reference
    assert c05_patroni_timing.timing(p) == "ttl 20, loop_wait 10, retry_timeout 5 (from db-master-01), as planned"
    p.settings.patroni.timing_plan = "safe"
    with pytest.raises(CheckWarning, match=r"20/10/5 differ from kbpg.toml's 60/10/20 \(safe plan\)"):
        c05_patroni_timing.timing(p)


def test_timing_with_no_node_answering_fails_naming_each(make) -> None:
    p = make(rest=timing(None, status=401, down={"db-slave-02"}))
    with pytest.raises(CheckFailed) as failure:
        c05_patroni_timing.timing(p)
    assert str(failure.value) == ("db-master-01: /config answered 401; db-slave-01: /config answered 401; "
                                  "https://198.18.0.122:8008/config: no answer ([Errno 111] Connection refused)")


# --- 15 synchronous replication ------------------------------------------------------------------------------

def sync_cluster(mode: object = False, strict: object = None, roles: tuple[str, str] = ("replica", "replica"),
                 states: tuple[str, str] = ("streaming", "streaming"), down: set[str] = frozenset()) -> dict:
    """REST answers: /config with ``synchronous_mode`` (and ``synchronous_mode_strict`` unless None), /cluster with
    the recorded healthy cluster whose two replicas have ``roles`` and ``states``."""
    config: dict = {"ttl": 30, "loop_wait": 10, "retry_timeout": 10, "synchronous_mode": mode}
    if strict is not None:
        config["synchronous_mode_strict"] = strict
    cluster = recorded()
    for member, role, state in zip(cluster["members"][1:], roles, states, strict=True):
        member.update(role=role, state=state)
    answers: dict = {}
    for name, address in DB.items():
        if name not in down:
            answers[f"https://{address}:8008/config"] = (200, config)
            answers[f"https://{address}:8008/cluster"] = (200, cluster)
    return answers


def planned(p, mode: str, strict: bool = False):
    p.settings.patroni.synchronous_mode, p.settings.patroni.synchronous_mode_strict = mode, strict
    return p


def test_asynchronous_as_planned_passes(make) -> None:
    p = make(rest=sync_cluster(False))
    assert c15_sync.synchronous(p) == "asynchronous (synchronous_mode off, from db-master-01), as planned"
    assert [url for _, url, _ in p.requests] == ["https://198.18.0.120:8008/config"]  # /cluster not needed


@pytest.mark.parametrize("mode, strict, role, shown", [
    (True, False, "sync_standby", "on"),
    ("on", "true", "sync_standby", "on, strict"),  # Patroni reads "on"/"true" as booleans: so does the check
    ("quorum", True, "quorum_standby", "quorum, strict"),
    ("QUORUM", False, "quorum_standby", "quorum"),
])
def test_synchronous_standbys_as_planned_pass_naming_them(make, mode, strict, role, shown: str) -> None:
    p = planned(make(rest=sync_cluster(mode, strict, roles=(role, role))), shown.split(",")[0], "strict" in shown)
    assert c15_sync.synchronous(p) == \
        f"synchronous_mode {shown}: synchronous standby(s) db-slave-01, db-slave-02, as planned"


def test_only_a_streaming_synchronous_standby_counts(make) -> None:
    p = planned(make(rest=sync_cluster(True, roles=("sync_standby", "replica"))), "on")
    assert c15_sync.synchronous(p) == "synchronous_mode on: synchronous standby(s) db-slave-01, as planned"
    p = planned(make(rest=sync_cluster(True, True, roles=("sync_standby", "replica"), states=("stopped", "streaming"))),
                "on", True)
    with pytest.raises(CheckFailed, match="no synchronous standby"):
        c15_sync.synchronous(p)


def test_strict_with_no_synchronous_standby_fails(make) -> None:
    p = planned(make(rest=sync_cluster("quorum", True)), "quorum", True)
    with pytest.raises(CheckFailed) as failure:
        c15_sync.synchronous(p)
    assert str(failure.value) == ("synchronous_mode quorum, strict and no synchronous standby: every commit on the "
                                  "primary waits until a standby streams again")


def test_not_strict_with_no_synchronous_standby_warns(make) -> None:
    p = planned(make(rest=sync_cluster(True, False)), "on")
    with pytest.raises(CheckWarning) as warning:
        c15_sync.synchronous(p)
    assert str(warning.value) == ("synchronous_mode on and no synchronous standby: commits are not protected until a "
                                  "standby streams again")


def test_a_running_mode_that_is_not_kbpg_tomls_warns_naming_both(make) -> None:
    p = planned(make(rest=sync_cluster(False)), "quorum", True)
    with pytest.raises(CheckWarning) as warning:
        c15_sync.synchronous(p)
    assert str(warning.value) == ("asynchronous; running synchronous_mode off differs from kbpg.toml's quorum, strict; "
                                  "re-run `kbpg install` (applied live, no restart)")
    p = planned(make(rest=sync_cluster(True, roles=("sync_standby", "replica"))), "off")
    with pytest.raises(CheckWarning, match=r"^synchronous_mode on: synchronous standby\(s\) db-slave-01; running "
                                           r"synchronous_mode on differs from kbpg.toml's off;"):
        c15_sync.synchronous(p)
    p = planned(make(rest=sync_cluster(True, False, roles=("sync_standby", "replica"))), "on", True)
    with pytest.raises(CheckWarning, match="running synchronous_mode on differs from kbpg.toml's on, strict"):
        c15_sync.synchronous(p)


def test_strict_with_none_fails_even_when_kbpg_toml_differs(make) -> None:
    p = planned(make(rest=sync_cluster(True, True)), "off")
    with pytest.raises(CheckFailed, match="every commit on the primary waits .*; running synchronous_mode on, strict "
                                          "differs from kbpg.toml's off"):
        c15_sync.synchronous(p)


def test_sync_with_no_node_answering_fails_naming_each(make) -> None:
    p = make(rest=sync_cluster(True, down={"db-master-01", "db-slave-01", "db-slave-02"}))
    with pytest.raises(CheckFailed) as failure:
        c15_sync.synchronous(p)
    assert str(failure.value) == "; ".join(f"https://{address}:8008/config: no answer ([Errno 111] Connection refused)"
                                           for address in DB.values())


def test_sync_reads_the_next_node_when_one_is_down(make) -> None:
    p = planned(make(rest=sync_cluster(True, roles=("sync_standby", "replica")), ), "on")
    del p.rest["https://198.18.0.120:8008/config"], p.rest["https://198.18.0.120:8008/cluster"]
    assert c15_sync.synchronous(p) == "synchronous_mode on: synchronous standby(s) db-slave-01, as planned"
