"""One model of the cluster on the lab: patronictl over SSH and REST /cluster over HTTP give the same members,
and the one health rule judges both alike, healthy and with a replica's Patroni stopped.

With KBPG_CLUSTER_SAMPLES=<dir>, the raw answers are written there (how tests/fixtures/cluster/ was recorded).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from kbpg_tui.core import cluster, tls
from kbpg_tui.core import install as inst
from kbpg_tui.core.engine import TaskRun
from kbpg_tui.core.settings import load_settings

from .conftest import DB_HOSTS, Installed, on_host, wait_healthy

pytestmark = [pytest.mark.lab, pytest.mark.e2e]

PATRONICTL = "patronictl -c /etc/patroni/config.yml list -f json"


def _record(name: str, text: str) -> None:
    directory = os.environ.get("KBPG_CLUSTER_SAMPLES")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / name).write_text(text)


def _raw(installed: Installed, via: str) -> tuple[list[dict], dict]:
    """patronictl's JSON and REST /cluster's, both asked on the DB node ``via``."""
    host = next(h for h in DB_HOSTS if h.name == via)
    code, out, err = on_host(installed.workdir, host.address, PATRONICTL)
    assert code == 0, err
    context = tls.client_context(installed.workdir)  # Patroni's REST API is HTTPS with TLS on (the lab's default)
    with cluster.direct_opener(context).open(f"https://{host.address}:8008/cluster", timeout=10) as response:
        rest = response.read().decode()
    return json.loads(out), json.loads(rest)


def _shape(state: cluster.ClusterState) -> list[tuple]:
    return [(m.name, m.host, m.role, m.state, m.timeline, m.pending_restart) for m in state.leader_first()]


def test_patronictl_and_rest_give_the_same_healthy_cluster(installed: Installed) -> None:
    wait_healthy(installed.workdir)
    names = [h.name for h in DB_HOSTS]
    rows, rest = _raw(installed, names[1])
    _record("patronictl-healthy.json", json.dumps(rows))
    _record("rest-healthy.json", json.dumps(rest))
    by_ctl, by_rest = cluster.from_patronictl(rows), cluster.from_rest(rest)
    assert _shape(by_ctl) == _shape(by_rest)
    assert all(m.lag is not None for m in by_rest.replicas)
    assert cluster.health(by_ctl, names).ok and cluster.health(by_rest, names).ok
    # The readers themselves: patronictl over kbpg's own SSH, REST over HTTPS (kbpg's CA) from here.
    run = inst.prepare(installed.workdir, load_settings(installed.workdir / "kbpg.toml"), lambda event: None)
    try:
        read_ctl = cluster.read_patronictl(TaskRun(run.ctx, "02", None))
        read_rest = cluster.read_cluster(run.ctx)
    finally:
        run.close()
    assert _shape(read_ctl) == _shape(read_rest) == _shape(by_rest)


def test_a_stopped_replica_is_judged_alike_from_both_sources(installed: Installed) -> None:
    members = wait_healthy(installed.workdir)
    names = [h.name for h in DB_HOSTS]
    replica = next(m["Member"] for m in members if m["Role"] == "Replica")
    host = next(h for h in DB_HOSTS if h.name == replica)
    asked = next(n for n in names if n != replica)
    on_host(installed.workdir, host.address, "systemctl stop patroni")
    try:
        deadline = time.monotonic() + 60
        while True:
            rows, rest = _raw(installed, asked)
            by_ctl, by_rest = cluster.from_patronictl(rows), cluster.from_rest(rest)
            judged = [cluster.health(state, names).ok for state in (by_ctl, by_rest)]
            if not any(judged) or time.monotonic() > deadline:
                break
            time.sleep(1)
        _record("patronictl-replica-stopped.json", json.dumps(rows))
        _record("rest-replica-stopped.json", json.dumps(rest))
        for state in (by_ctl, by_rest):
            verdict = cluster.health(state, names)
            assert not verdict.ok and any(replica in problem for problem in verdict.problems), verdict
    finally:
        on_host(installed.workdir, host.address, "systemctl start patroni")
        wait_healthy(installed.workdir)
