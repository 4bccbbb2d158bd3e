"""Failover timing plans, and the worst-case time without writes each one allows (its RTO bound).

A plan sets together what decides how fast writes come back after the primary goes: Patroni's ``ttl``,
``loop_wait`` and ``retry_timeout``; how often HAProxy asks each node's Patroni ``OPTIONS /primary``
(``inter``/``fastinter``/``downinter``, ``rise``/``fall``, ``timeout check``); and PgBouncer's
``server_login_retry``. ``patroni.timing_plan`` in kbpg.toml chooses it (:func:`plan_for`).

The bound (:func:`worst_case_rto`) is for the worst failure, a primary that dies without releasing its leader key
(a crash, a power cut, its network link gone): a planned switchover or a clean stop hands the key over at once and
is far shorter.

- the leader key expires at most ``ttl`` seconds after the old primary last renewed it (it renews it once per
  ``loop_wait``: after a crash the key lives ``ttl - loop_wait`` to ``ttl`` seconds more, so a longer loop_wait
  shortens the typical failover, not the worst one; Patroni refuses a ttl under 20 s);
- Raft wakes the replicas when the key goes; the one that races for it first asks every member's Patroni how far
  it got, and waits up to :data:`RACE_TIMEOUT` for the old primary's, which no longer answers;
- it promotes within :data:`PROMOTE_MARGIN` (``pg_ctl promote``, and Patroni's next loop before ``/primary``
  answers 200, measured on the lab);
- HAProxy has seen that node's ``/primary`` fail while it was a replica, so it checks it every ``downinter``; it
  marks it up after one check that passes and ``rise - 1`` more, ``fastinter`` apart:
  ``downinter + (rise - 1) * fastinter``. Writes through the LB's write port (HAProxy) flow again then;
- writes through PgBouncer may wait ``server_login_retry`` on top: a PgBouncer whose login failed while no node
  was up waits that long before it tries again.

    direct = ttl + RACE_TIMEOUT + PROMOTE_MARGIN [+ loop_wait + wal_retrieve_retry_interval]
             + downinter + (rise - 1) * fastinter
    pooled = direct + server_login_retry

(the bracketed term with synchronous replication: the new primary acknowledges no commit before a standby streams
from it; the other standby learns of the new leader at its next loop and reconnects within
``wal_retrieve_retry_interval``: 1 s on the fast plan, PostgreSQL's 5 s otherwise).

Pigsty's ``pg_rto_plan`` computes such bounds from its timing plans and stops there; kbpg also measures what its
plans give on the operator's own cluster (``kbpg drill``), and reports the measured figures next to these.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .settings import Settings

PATRONI_KEYS = ("ttl", "loop_wait", "retry_timeout")  # what a plan sets in Patroni (and kbpg.toml's custom plan)
PROMOTE_MARGIN = 2.0  # seconds: a replica's promotion (pg_ctl promote + Patroni's loop), measured on the lab
RACE_TIMEOUT = 2.0  # seconds: Patroni's request to each member before a leader race (the old primary's times out)
MIN_TTL = 20  # Patroni raises a smaller ttl to 20


def _duration(ms: int) -> str:
    """HAProxy's spelling of a time: 1000 -> "1s", 500 -> "500ms"."""
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


@dataclass(frozen=True)
class TimingPlan:
    name: str  # "fast" | "norm" | "safe" | "custom"
    ttl: int  # Patroni (seconds)
    loop_wait: int
    retry_timeout: int
    inter_ms: int  # HAProxy checks of the write/read backends
    fastinter_ms: int
    downinter_ms: int
    rise: int
    fall: int
    check_timeout_ms: int  # HAProxy's `timeout check` (<= inter)
    login_retry: float  # PgBouncer's server_login_retry (seconds; it takes fractions)
    wal_retry_s: int = 5  # replicas' wal_retrieve_retry_interval: how soon they reconnect to a primary that is back

    def haproxy_check(self) -> str:
        """The check timing of HAProxy's ``default-server`` line: "inter 1s fastinter 500ms downinter 500ms rise 2
        fall 2"."""
        return (f"inter {_duration(self.inter_ms)} fastinter {_duration(self.fastinter_ms)} "
                f"downinter {_duration(self.downinter_ms)} rise {self.rise} fall {self.fall}")

    def haproxy_check_timeout(self) -> str:
        """HAProxy's ``timeout check`` value: "1s"."""
        return _duration(self.check_timeout_ms)

    def keeps_patroni_rule(self) -> bool:
        """Patroni's rule: loop_wait + 2 * retry_timeout <= ttl (Patroni 4 shrinks loop_wait otherwise)."""
        return self.loop_wait + 2 * self.retry_timeout <= self.ttl


TIMING_PLANS: dict[str, TimingPlan] = {
    # Fastest failover: Patroni's smallest ttl; loop_wait 10 makes a crashed primary's key outlive it by 10-20 s
    # (15 typically); HAProxy takes a node up on its first passing check (Patroni's /primary is authoritative).
    # A network that loses Patroni's Raft traffic for more than ~5 s (retry_timeout) can cause a needless failover.
    "fast": TimingPlan("fast", ttl=20, loop_wait=10, retry_timeout=5, inter_ms=1000, fastinter_ms=500,
                       downinter_ms=500, rise=1, fall=2, check_timeout_ms=1000, login_retry=0.5, wal_retry_s=1),
    # Patroni's defaults (kbpg's "standard" before it was renamed).
    "norm": TimingPlan("norm", ttl=30, loop_wait=10, retry_timeout=10, inter_ms=2000, fastinter_ms=1000,
                       downinter_ms=2000, rise=2, fall=2, check_timeout_ms=2000, login_retry=2),
    # Rides out long network or storage stalls without a failover; slower to recover from a real one.
    "safe": TimingPlan("safe", ttl=60, loop_wait=10, retry_timeout=20, inter_ms=3000, fastinter_ms=1500,
                       downinter_ms=3000, rise=3, fall=3, check_timeout_ms=3000, login_retry=3),
}
CUSTOM_BASE = "norm"  # the custom plan's HAProxy and PgBouncer timing


def plan_for(settings: Settings) -> TimingPlan:
    """The plan kbpg.toml chooses. "custom": its own ttl/loop_wait/retry_timeout, the "norm" plan's HAProxy and
    PgBouncer timing."""
    patroni = settings.patroni
    if patroni.timing_plan in TIMING_PLANS:
        return TIMING_PLANS[patroni.timing_plan]
    return dataclasses.replace(TIMING_PLANS[CUSTOM_BASE], name=patroni.timing_plan, ttl=patroni.ttl,
                               loop_wait=patroni.loop_wait, retry_timeout=patroni.retry_timeout)


def _seconds(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class RtoBound:
    plan: str
    direct: float  # worst-case seconds without writes through LB:5432 (HAProxy), the primary gone without its key
    pooled: float  # the same through LB:6432 (PgBouncer adds server_login_retry)
    parts: tuple[tuple[str, float], ...]  # what adds up to it, in order; the last is PgBouncer's, pooled only

    def text(self) -> str:
        """One line: "fast: ≤ 24.5 s (LB:5432), ≤ 25 s (LB:6432) = ttl 20 + race 2 + promotion 2 + HAProxy 0.5
        (+ PgBouncer 0.5)"."""
        short = {"leader key expires (ttl)": "ttl", "leader race (the old primary's Patroni does not answer)": "race",
                 "promotion": "promotion", "HAProxy marks it up": "HAProxy", "PgBouncer's login retry": "PgBouncer",
                 "a synchronous standby follows it and reconnects": "standby"}
        terms = [f"{short.get(label, label)} {_seconds(value)}" for label, value in self.parts[:-1]]
        label, value = self.parts[-1]
        return (f"{self.plan}: ≤ {_seconds(self.direct)} s (LB:5432), ≤ {_seconds(self.pooled)} s (LB:6432) = "
                f"{' + '.join(terms)} (+ {short.get(label, label)} {_seconds(value)})")


def worst_case_rto(plan: TimingPlan, synchronous: bool = False) -> RtoBound:
    """The plan's bound: see the module's docstring for the formula. ``synchronous``: with synchronous replication
    the new primary acknowledges no commit before a standby streams from it; the standby follows the new leader at
    its next loop (Raft does not wake it for that) and reconnects within ``wal_retrieve_retry_interval``: one more
    term, loop_wait + that interval."""
    haproxy = (plan.downinter_ms + (plan.rise - 1) * plan.fastinter_ms) / 1000
    parts: tuple[tuple[str, float], ...] = (
        ("leader key expires (ttl)", float(plan.ttl)),
        ("leader race (the old primary's Patroni does not answer)", RACE_TIMEOUT),
        ("promotion", PROMOTE_MARGIN),
        *((("a synchronous standby follows it and reconnects", float(plan.loop_wait + plan.wal_retry_s)),)
          if synchronous else ()),
        ("HAProxy marks it up", haproxy),
        ("PgBouncer's login retry", float(plan.login_retry)),
    )
    direct = sum(value for _label, value in parts[:-1])
    return RtoBound(plan.name, direct, direct + plan.login_retry, parts)
