"""4. The Patroni cluster is healthy (kbpg_tui.core.cluster's rule, read from REST /cluster), and /primary
answers 200 on exactly one node (over HTTPS, verified with kbpg's CA, when TLS is on)."""

from __future__ import annotations

from .. import cluster
from .base import Check, CheckFailed, once
from .probe import ProbeContext


def patroni_cluster(p: ProbeContext) -> str:
    port = p.settings.ports.patroni_rest
    errors, primaries, answering = [], [], []
    for host in p.ctx.db_hosts:
        try:
            status, _ = p.http(p.rest_url(host, "/primary"), method="OPTIONS")
        except CheckFailed as exc:
            errors.append(f"{host.name}: {exc}")
            continue
        answering.append(host)
        if status == 200:
            primaries.append(host.name)
    try:
        state = cluster.read_rest(answering, port, request=lambda url: p.request(url), scheme=p.scheme)
    except cluster.ClusterUnreadable as exc:
        raise CheckFailed("no DB node answered /cluster: " + "; ".join(errors + exc.errors)) from None
    expected = [h.name for h in p.ctx.db_hosts]
    problems = list(cluster.health(state, expected).problems)
    if len(primaries) != 1:
        problems.append(f"/primary is 200 on {len(primaries)} nodes ({', '.join(primaries) or 'none'})")
    problems += errors
    if problems:
        raise CheckFailed("; ".join(problems))
    leader = state.running_leaders[0]
    return (f"leader {leader.name}, {len(state.streaming)}/{len(expected) - 1} replicas streaming, "
            f"timeline {leader.timeline}, /primary only on {primaries[0]}")


CHECK = Check(4, "patroni cluster", once("cluster", patroni_cluster))
