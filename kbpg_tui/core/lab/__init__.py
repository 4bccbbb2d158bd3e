"""The local lab of real Debian hosts (`kbpg lab up | down | status`).

Part of the core: no Textual here. Plain functions reporting progress through
an event sink (``kbpg_tui.core.events.Progress`` / ``Message``):

    up(workdir, progress=sink, with_spares=False) -> LabStatus
    down(workdir=None, progress=sink) -> LabStatus
    status(workdir=None, probe_ssh=True) -> LabStatus
    stop_host(name, progress=sink) -> LabStatus        (a dead server: link cut, processes killed)
    start_host(name, progress=sink, fresh=False) -> LabStatus   (a spare, or a stopped host back)
    set_host_link(name, up, address=None) -> None   (cut/restore a host's network, by address if given: drills)
    lab_host(name) / lab_host_at(address) -> LabHost   (spares included)
    memory_usage() -> {host: bytes}

All raise :class:`LabError` (with ``exit_code`` 2 where the lab cannot run here).
"""

from .lab import (
    HostStatus,
    LabStatus,
    check_environment,
    down,
    lab_host,
    lab_host_at,
    memory_usage,
    set_host_link,
    start_host,
    status,
    stop_host,
    up,
)
from .topology import (
    ALL_HOSTS,
    CLUSTER_HOSTS,
    HOSTS,
    LB_ADDRESS,
    PINNED_HOSTS,
    REPO_COMPONENT,
    REPO_SUITE,
    REPO_URL,
    SPARE_HOSTS,
    LabHost,
)
from .util import LabError

__all__ = [
    "ALL_HOSTS",
    "CLUSTER_HOSTS",
    "HOSTS",
    "HostStatus",
    "LB_ADDRESS",
    "LabError",
    "LabHost",
    "LabStatus",
    "PINNED_HOSTS",
    "REPO_COMPONENT",
    "REPO_SUITE",
    "REPO_URL",
    "SPARE_HOSTS",
    "check_environment",
    "down",
    "lab_host",
    "lab_host_at",
    "memory_usage",
    "set_host_link",
    "start_host",
    "status",
    "stop_host",
    "up",
]
