"""Timing plans and their computed worst-case failover times (kbpg_tui.core.rto)."""

from __future__ import annotations

import dataclasses

import pytest

from kbpg_tui.core import rto
from kbpg_tui.core.settings import from_dict


def test_the_plans_are_the_designs() -> None:
    assert list(rto.TIMING_PLANS) == ["fast", "norm", "safe"]
    fields = ("ttl", "loop_wait", "retry_timeout", "inter_ms", "fastinter_ms", "downinter_ms", "rise", "fall",
              "check_timeout_ms", "login_retry")
    table = {name: tuple(getattr(plan, field) for field in fields) for name, plan in rto.TIMING_PLANS.items()}
    assert table == {
        "fast": (20, 10, 5, 1000, 500, 500, 1, 2, 1000, 0.5),
        "norm": (30, 10, 10, 2000, 1000, 2000, 2, 2, 2000, 2),
        "safe": (60, 10, 20, 3000, 1500, 3000, 3, 3, 3000, 3),
    }
    assert all(plan.name == name for name, plan in rto.TIMING_PLANS.items())


@pytest.mark.parametrize("name", ["fast", "norm", "safe"])
def test_each_plan_keeps_patronis_rule_and_checks_within_their_interval(name: str) -> None:
    plan = rto.TIMING_PLANS[name]
    assert plan.loop_wait + 2 * plan.retry_timeout <= plan.ttl
    assert plan.keeps_patroni_rule()
    assert plan.check_timeout_ms <= plan.inter_ms  # a check answers before the next one is due
    assert plan.fastinter_ms <= plan.inter_ms and plan.downinter_ms <= plan.inter_ms


def test_the_rule_is_what_patroni_asks() -> None:
    plan = rto.TIMING_PLANS["fast"]
    assert not dataclasses.replace(plan, ttl=19).keeps_patroni_rule()  # 10 + 2*5 > 19
    assert dataclasses.replace(plan, ttl=20).keeps_patroni_rule()


@pytest.mark.parametrize("name", ["fast", "norm", "safe"])
def test_no_plan_asks_for_a_ttl_patroni_would_raise(name: str) -> None:
    # Patroni raises a ttl under 20 to 20 (and patroni --validate-config refuses it): a plan below would
    # compute a bound the cluster never runs with.
    assert rto.TIMING_PLANS[name].ttl >= rto.MIN_TTL == 20


def test_haproxy_check_lines() -> None:
    assert rto.TIMING_PLANS["fast"].haproxy_check() == "inter 1s fastinter 500ms downinter 500ms rise 1 fall 2"
    assert rto.TIMING_PLANS["norm"].haproxy_check() == "inter 2s fastinter 1s downinter 2s rise 2 fall 2"
    assert rto.TIMING_PLANS["safe"].haproxy_check() == "inter 3s fastinter 1500ms downinter 3s rise 3 fall 3"
    assert [plan.haproxy_check_timeout() for plan in rto.TIMING_PLANS.values()] == ["1s", "2s", "3s"]


def test_the_formula() -> None:
    # direct = ttl + RACE_TIMEOUT + PROMOTE_MARGIN + downinter + (rise - 1) * fastinter; pooled = direct + login_retry
    plan = rto.TimingPlan("x", ttl=40, loop_wait=7, retry_timeout=10, inter_ms=2500, fastinter_ms=300,
                          downinter_ms=1200, rise=4, fall=2, check_timeout_ms=2000, login_retry=5)
    bound = rto.worst_case_rto(plan)
    assert bound.plan == "x"
    assert bound.direct == pytest.approx(40 + rto.RACE_TIMEOUT + rto.PROMOTE_MARGIN + 1.2 + 3 * 0.3)
    assert bound.pooled == pytest.approx(bound.direct + 5)
    assert [label for label, _ in bound.parts] == ["leader key expires (ttl)",
                                                   "leader race (the old primary's Patroni does not answer)",
                                                   "promotion", "HAProxy marks it up", "PgBouncer's login retry"]
    assert sum(value for _, value in bound.parts) == pytest.approx(bound.pooled)
    assert (rto.PROMOTE_MARGIN, rto.RACE_TIMEOUT) == (2.0, 2.0)


def test_each_plans_bound() -> None:
    bounds = {name: (b.direct, b.pooled) for name, b in
              ((name, rto.worst_case_rto(plan)) for name, plan in rto.TIMING_PLANS.items())}
    assert bounds == {"fast": (24.5, 25.0), "norm": (37.0, 39.0), "safe": (70.0, 73.0)}


def test_the_bound_in_one_line() -> None:
    assert rto.worst_case_rto(rto.TIMING_PLANS["fast"]).text() == (
        "fast: ≤ 24.5 s (LB:5432), ≤ 25 s (LB:6432) = ttl 20 + race 2 + promotion 2 + HAProxy 0.5 (+ PgBouncer 0.5)")
    assert rto.worst_case_rto(rto.TIMING_PLANS["safe"]).text() == (
        "safe: ≤ 70 s (LB:5432), ≤ 73 s (LB:6432) = ttl 60 + race 2 + promotion 2 + HAProxy 6 (+ PgBouncer 3)")


@pytest.mark.parametrize("name", ["fast", "norm", "safe"])
def test_plan_for_a_named_plan(name: str) -> None:
    assert rto.plan_for(from_dict({"patroni": {"timing_plan": name}})) is rto.TIMING_PLANS[name]


def test_plan_for_custom_takes_patroni_from_kbpg_toml_and_the_rest_from_norm() -> None:
    settings = from_dict({"patroni": {"timing_plan": "custom", "ttl": 25, "loop_wait": 5, "retry_timeout": 8}})
    plan = rto.plan_for(settings)
    assert (plan.name, plan.ttl, plan.loop_wait, plan.retry_timeout) == ("custom", 25, 5, 8)
    norm = rto.TIMING_PLANS["norm"]
    assert dataclasses.replace(plan, name="norm", ttl=30, loop_wait=10, retry_timeout=10) == norm
    assert rto.worst_case_rto(plan).direct == 25 + 2 + 2 + 2 + 1


def test_plan_for_an_older_standard_plan_is_norm() -> None:
    assert rto.plan_for(from_dict({"patroni": {"timing_plan": "standard"}})) is rto.TIMING_PLANS["norm"]


def test_with_synchronous_replication_the_bound_waits_for_a_standby_to_reconnect() -> None:
    fast = rto.TIMING_PLANS["fast"]
    plain, synchronous = rto.worst_case_rto(fast), rto.worst_case_rto(fast, synchronous=True)
    # the other standby follows the new leader at its next loop, then reconnects (measured: a stop round with
    # quorum + strict waited 14.6 s for it where the asynchronous ones took 3-4 s)
    assert synchronous.direct == plain.direct + fast.loop_wait + fast.wal_retry_s == 35.5
    assert synchronous.pooled == plain.pooled + fast.loop_wait + fast.wal_retry_s
    assert "standby 11" in synchronous.text() and "standby" not in plain.text()
