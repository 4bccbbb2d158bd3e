"""What a check is: a number, a name and its targets, declared together; each target becomes one probe.

A check module declares ``CHECK = Check(number, name, *targets)``, where each target builder says where the
check runs and with which function: :func:`once` (one target, e.g. "cluster"), :func:`on_hosts` (every DB
node, every HAProxy node, or both), :func:`through_lb_and_haproxy` (the LB, then each HAProxy node, on one
port). The function returns the pass reason, or raises :class:`CheckFailed` / :class:`CheckWarning` with a
one-line reason naming the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Callable

from ..ssh import Host

if TYPE_CHECKING:
    from .probe import ProbeContext


class CheckFailed(Exception):
    """The probe found the condition broken; the message is the one-line reason."""


class CheckWarning(Exception):
    """The probe passed with a reservation."""


@dataclass
class Probe:
    number: int
    check: str
    target: str
    function: Callable[[], str]  # returns the pass reason; raises CheckFailed/CheckWarning


Target = tuple[str, Callable[[], str]]  # (the target as the report names it, the probe's function)
Targets = Callable[["ProbeContext"], list[Target]]


class Check:
    """One check of the diagnostics: its number and name (the report's), and the targets it probes."""

    def __init__(self, number: int, name: str, *targets: Targets):
        self.number, self.name, self.targets = number, name, targets

    def probes(self, p: ProbeContext) -> list[Probe]:
        return [Probe(self.number, self.name, label, function)
                for targets in self.targets for label, function in targets(p)]

    def __repr__(self) -> str:
        return f"Check({self.number}, {self.name!r})"


def once(label: str | Callable[[ProbeContext], str], function: Callable[[ProbeContext], str]) -> Targets:
    """One probe, named ``label`` (or ``label(p)``, for a name made of settings)."""
    def targets(p: ProbeContext) -> list[Target]:
        return [(label if isinstance(label, str) else label(p), partial(function, p))]
    return targets


def on_hosts(which: str, function: Callable[[ProbeContext, Host], str]) -> Targets:
    """One probe per host: ``which`` is "db", "haproxy" or "all" (the DB nodes, then the HAProxy nodes)."""
    def targets(p: ProbeContext) -> list[Target]:
        hosts = {"db": p.ctx.db_hosts, "haproxy": p.ctx.haproxy_hosts,
                 "all": p.ctx.db_hosts + p.ctx.haproxy_hosts}[which]
        return [(host.name, partial(function, p, host)) for host in hosts]
    return targets


def lb(port: str) -> Callable[[ProbeContext], str]:
    """The label of a probe through the LB on ``port`` (a key of [ports]): "LB 10.0.0.10:5432"."""
    return lambda p: f"LB {p.settings.network.lb_address}:{getattr(p.settings.ports, port)}"


def through_lb_and_haproxy(port: str, function: Callable[[ProbeContext, str, str], str]) -> Targets:
    """One probe through the LB, then one through each HAProxy node, on ``port`` (a key of [ports]);
    ``function(p, address, name)`` with name "LB" or the node's name."""
    def targets(p: ProbeContext) -> list[Target]:
        number = getattr(p.settings.ports, port)
        lb_address = p.settings.network.lb_address
        found: list[Target] = [(f"LB {lb_address}:{number}", partial(function, p, lb_address, "LB"))]
        for host in p.ctx.haproxy_hosts:
            found.append((f"{host.name}:{number}", partial(function, p, host.address, host.name)))
        return found
    return targets
