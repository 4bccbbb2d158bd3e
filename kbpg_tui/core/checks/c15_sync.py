"""15. Synchronous replication: the synchronous standbys Patroni keeps (REST ``/cluster`` roles ``sync_standby`` and
``quorum_standby``) under its running ``synchronous_mode`` and ``synchronous_mode_strict`` (REST ``/config``), and
those against kbpg.toml.

Asynchronous is a pass. With "on" or "quorum" and no synchronous standby, a strict cluster makes every commit on the
primary wait until one streams again (a failure); a non-strict one commits unprotected (a warning). A running mode
that is not kbpg.toml's is a warning naming both: Patroni applies the dynamic configuration live, `kbpg install`
puts it back.
"""

from __future__ import annotations

from typing import Any

from .. import cluster
from .base import Check, CheckFailed, CheckWarning, once
from .probe import ProbeContext, patroni_config

SYNC_ROLES = ("sync_standby", "quorum_standby")


def _flag(value: Any) -> bool:
    """A boolean of Patroni's dynamic configuration, read as Patroni reads it (patroni.utils.parse_bool)."""
    return str(value).lower() in ("on", "true", "yes", "1")


def running_mode(config: dict) -> str:
    """"off", "on" or "quorum": Patroni's ``synchronous_mode`` as kbpg.toml spells it."""
    value = config.get("synchronous_mode")
    if str(value).lower() == "quorum":
        return "quorum"
    return "on" if _flag(value) else "off"


def _spelled(mode: str, strict: bool) -> str:
    return f"{mode}, strict" if strict and mode != "off" else mode


def synchronous(p: ProbeContext) -> str:
    config, source = patroni_config(p)
    mode, strict = running_mode(config), _flag(config.get("synchronous_mode_strict"))
    planned = p.settings.patroni
    differs = ""
    if (mode, strict and mode != "off") != (planned.synchronous_mode, planned.synchronous_mode_strict):
        differs = (f"running synchronous_mode {_spelled(mode, strict)} differs from kbpg.toml's "
                   f"{_spelled(planned.synchronous_mode, planned.synchronous_mode_strict)}; re-run `kbpg install` "
                   "(applied live, no restart)")
    if mode == "off":
        if differs:
            raise CheckWarning(f"asynchronous; {differs}")
        return f"asynchronous (synchronous_mode off, from {source}), as planned"
    try:
        state = cluster.read_rest(p.ctx.db_hosts, p.settings.ports.patroni_rest, request=lambda url: p.request(url),
                                  scheme=p.scheme)
    except cluster.ClusterUnreadable as exc:
        raise CheckFailed(f"no DB node answered /cluster: {'; '.join(exc.errors)}") from None
    # A synchronous standby that does not stream (Patroni has not dropped it yet) confirms no commit.
    standbys = [member.name for member in state.members if member.role in SYNC_ROLES and member.is_streaming]
    if not standbys:
        if strict:
            raise CheckFailed(f"synchronous_mode {_spelled(mode, strict)} and no synchronous standby: every commit on "
                              "the primary waits until a standby streams again" + (f"; {differs}" if differs else ""))
        raise CheckWarning(f"synchronous_mode {mode} and no synchronous standby: commits are not protected until a "
                           "standby streams again" + (f"; {differs}" if differs else ""))
    found = f"synchronous_mode {_spelled(mode, strict)}: synchronous standby(s) {', '.join(standbys)}"
    if differs:
        raise CheckWarning(f"{found}; {differs}")
    return f"{found}, as planned"


CHECK = Check(15, "synchronous replication", once("cluster", synchronous))
