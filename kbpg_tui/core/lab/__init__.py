"""The local lab of real Debian hosts (`kbpg lab up | down | status`).

Part of the core: no Textual here. Plain functions reporting progress through
an event sink (``kbpg_tui.core.events.Progress`` / ``Message``):

    up(workdir, progress=sink) -> LabStatus
    down(workdir=None, progress=sink) -> LabStatus
    status(workdir=None, probe_ssh=True) -> LabStatus
    set_host_link(name, up) -> None      (cut/restore a host's network: failover drills)
    memory_usage() -> {host: bytes}

All raise :class:`LabError` (with ``exit_code`` 2 where the lab cannot run here).
"""

from .lab import HostStatus, LabStatus, check_environment, down, memory_usage, set_host_link, status, up
from .topology import CLUSTER_HOSTS, HOSTS, LB_ADDRESS, REPO_COMPONENT, REPO_SUITE, REPO_URL, LabHost
from .util import LabError

__all__ = [
    "CLUSTER_HOSTS",
    "HOSTS",
    "HostStatus",
    "LB_ADDRESS",
    "LabError",
    "LabHost",
    "LabStatus",
    "REPO_COMPONENT",
    "REPO_SUITE",
    "REPO_URL",
    "check_environment",
    "down",
    "memory_usage",
    "set_host_link",
    "status",
    "up",
]
