"""Checks on Patroni's REST API: 4 patroni cluster (the cluster model's health rule), 5 patroni timing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kbpg_tui.core.checks import c04_patroni_cluster, c05_patroni_timing
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
        answers[("OPTIONS", f"http://{address}:8008/primary")] = (200 if name in primary else 503, "")
        answers[f"http://{address}:8008/cluster"] = (cluster_status, recorded() if cluster is None else cluster)
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
                                  "db-master-01: http://198.18.0.120:8008/primary: no answer "
                                  "([Errno 111] Connection refused)")
    assert ("GET", "http://198.18.0.121:8008/cluster", None) in p.requests  # read from the next node


def test_no_node_answering_cluster_fails_naming_each(make) -> None:
    p = make(rest=patroni({"db-master-01"}, cluster_status=503, down={"db-slave-02"}))
    with pytest.raises(CheckFailed) as failure:
        c04_patroni_cluster.patroni_cluster(p)
    assert str(failure.value) == ("no DB node answered /cluster: db-slave-02: http://198.18.0.122:8008/primary: no "
                                  "answer ([Errno 111] Connection refused); db-master-01: /cluster answered 503; "
                                  "db-slave-01: /cluster answered 503")


# --- 5 patroni timing --------------------------------------------------------------------------------------

def timing(config: dict | None, status: int = 200, down: set[str] = frozenset()) -> dict:
    return {f"http://{address}:8008/config": (status, config or {}) for name, address in DB.items()
            if name not in down}


def test_timing_as_planned_passes(make) -> None:
    p = make(rest=timing({"ttl": 30, "loop_wait": 10, "retry_timeout": 10}, down={"db-master-01"}))
    assert c05_patroni_timing.timing(p) == "ttl 30, loop_wait 10, retry_timeout 10 (from db-slave-01), as planned"


def test_timing_breaking_the_rule_fails_and_another_plan_warns(make) -> None:
    p = make(rest=timing({"ttl": 12, "loop_wait": 5, "retry_timeout": 5}))
    with pytest.raises(CheckFailed, match=r"breaks loop_wait \+ 2\*retry_timeout <= ttl \(5 \+ 2\*5 > 12\)"):
        c05_patroni_timing.timing(p)
    p = make(rest=timing({"ttl": 20, "loop_wait": 5, "retry_timeout": 5}))
    with pytest.raises(CheckWarning, match="20/5/5 differ from kbpg.toml's 30/10/10; re-run `kbpg install`"):
        c05_patroni_timing.timing(p)


def test_timing_with_no_node_answering_fails_naming_each(make) -> None:
    p = make(rest=timing(None, status=401, down={"db-slave-02"}))
    with pytest.raises(CheckFailed) as failure:
        c05_patroni_timing.timing(p)
    assert str(failure.value) == ("db-master-01: /config answered 401; db-slave-01: /config answered 401; "
                                  "http://198.18.0.122:8008/config: no answer ([Errno 111] Connection refused)")
