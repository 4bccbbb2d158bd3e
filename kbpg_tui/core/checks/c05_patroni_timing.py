"""5. Patroni's running timing (ttl, loop_wait, retry_timeout) keeps its rule and is the one kbpg.toml plans."""

from __future__ import annotations

from ..rto import plan_for
from .base import Check, CheckFailed, CheckWarning, once
from .probe import ProbeContext, patroni_config


def timing(p: ProbeContext) -> str:
    config, source = patroni_config(p)
    ttl, loop_wait, retry = config.get("ttl", 30), config.get("loop_wait", 10), config.get("retry_timeout", 10)
    if loop_wait + 2 * retry > ttl:
        raise CheckFailed(f"running config breaks loop_wait + 2*retry_timeout <= ttl "
                          f"({loop_wait} + 2*{retry} > {ttl})")
    # Patroni 4 quietly shrinks loop_wait to keep the rule: the timing then is not the one planned.
    planned = plan_for(p.settings)
    if (ttl, loop_wait, retry) != (planned.ttl, planned.loop_wait, planned.retry_timeout):
        raise CheckWarning(f"running ttl/loop_wait/retry_timeout {ttl}/{loop_wait}/{retry} differ from "
                           f"kbpg.toml's {planned.ttl}/{planned.loop_wait}/{planned.retry_timeout} "
                           f"({planned.name} plan); re-run `kbpg install`")
    return f"ttl {ttl}, loop_wait {loop_wait}, retry_timeout {retry} (from {source}), as planned"


CHECK = Check(5, "patroni timing", once("cluster", timing))
