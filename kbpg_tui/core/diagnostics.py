"""Diagnostics: the 12 checks of design.md, those of the field failures (13, 14), synchronous replication (15) and
TLS (16), as small, independent probes.

Each probe checks one thing on one target (a host, a port through the LB, the
cluster) and returns pass / warn / fail with a one-line reason naming the host,
and its duration. All probes run at once, each with its own timeouts; a probe
that does not answer in time is failed while the rest finish, and the run never
stops at the first failure. Probes talk to the real services: psycopg through
the LB and through each node, Patroni's REST API, HAProxy's stats, SSH.

The checks live in ``kbpg_tui.core.checks`` (one module each, listed in ``ALL_CHECKS``), the cluster model
the wizard's live view shows in ``kbpg_tui.core.cluster``; this module keeps the names the CLI, the wizard and
the tests import.
"""

from __future__ import annotations

from .checks import ALL_CHECKS, CHECK_NAMES
from .checks.base import Check, CheckFailed, CheckWarning, Probe
from .checks.c14_client_sessions import stray_sessions
from .checks.probe import DEFAULT_TIMEOUT, ProbeContext
from .checks.report import CheckResult, Report, Verdict, write_reports
from .checks.runner import Diagnostics, run_probes
from .cluster import MAX_LAG_BYTES, ClusterUnreadable, Member, cluster_view, direct_opener

__all__ = [
    "ALL_CHECKS", "CHECK_NAMES", "Check", "CheckFailed", "CheckWarning", "Probe", "stray_sessions", "DEFAULT_TIMEOUT",
    "ProbeContext", "CheckResult", "Report", "Verdict", "write_reports", "Diagnostics", "run_probes", "MAX_LAG_BYTES",
    "ClusterUnreadable", "Member", "cluster_view", "direct_opener",
]
