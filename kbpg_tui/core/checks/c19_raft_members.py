"""19. Raft's membership on each DB node equals the selected DB nodes' addresses (``address:ports.raft``).

Asked on the node (:mod:`kbpg_tui.core.raft`'s probe: pysyncobj's own ``status``, its ``self`` and one
``partner_node_status_server_<address>`` per partner; the Raft password never leaves the node). Fail: an address in
the member's membership that is no selected DB node's (a stale member: a replaced or removed host Raft still counts
in its quorum), a selected DB node missing from it, or a Raft that does not answer; warn: a partner the member is not
connected to, or a member that cannot be asked now (Patroni stopped or just started: check 3 says why).
"""

from __future__ import annotations

from .. import raft
from ..nodes import CONNECTED, raft_view
from ..ssh import Host
from .base import Check, CheckFailed, CheckWarning, on_hosts
from .probe import ProbeContext


def _key(address: str) -> tuple[int, ...]:
    host, _, port = address.rpartition(":")
    parts = host.split(".")
    return tuple(int(p) if p.isdigit() else 0 for p in (*parts, port))


def raft_members(p: ProbeContext, host: Host) -> str:
    port = p.settings.ports.raft
    expected = {f"{h.address}:{port}" for h in p.ctx.db_hosts}
    status = raft.parse(p.ssh(host, raft.PROBE))
    if status.answers is False:
        raise CheckFailed(f"{host.name}: its Raft does not answer ({status.detail}): membership unknown")
    if status.answers is None:
        raise CheckWarning(f"{host.name}: Raft's membership not read: {status.detail}")
    me, partners = raft_view(status)
    if me is None:
        raise CheckWarning(f"{host.name}: its Raft's status names no membership (pysyncobj without 'self')")
    members = {me, *partners}
    stale = sorted(members - expected, key=_key)
    missing = sorted(expected - members, key=_key)
    problems = [f"stale member {address} (no selected DB node's)" for address in stale]
    problems += [f"{address} missing" for address in missing]
    if problems:
        raise CheckFailed(f"{host.name}: Raft's membership {', '.join(sorted(members, key=_key))}: "
                          + "; ".join(problems))
    loose = sorted((address for address, state in partners.items() if state != CONNECTED), key=_key)
    if loose:
        raise CheckWarning(f"{host.name}: Raft's membership is the {len(members)} DB nodes, but not connected to "
                           f"{', '.join(loose)}")
    return f"{host.name}: Raft's membership is the {len(members)} DB nodes, every partner connected"


CHECK = Check(19, "raft members", on_hosts("db", raft_members))
