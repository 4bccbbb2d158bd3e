"""18. Backups: the newest backup's age, the archive's lag (the newest archived WAL's age on the primary) and
``pgbackrest check``, on the backup host selected by ``[inventory.backup_rule]``.

No backup host (or ``[backup] enabled = false``): a pass saying backups are not set up. Otherwise one probe, named
by the backup host: ``pgbackrest --output=json info`` there (its clock read in the same command), then
``pgbackrest check --archive-timeout=20`` (it forces one WAL switch on the primary and waits for the segment in the
repository), then ``pg_stat_archiver`` on the primary as the monitor role through the LB. Fail: the stanza's status
is not ok (no backup at all), ``check`` fails, the archiver has been failing past ``warn_archive_lag_seconds``,
archive_mode off; warn: the newest backup older than ``warn_backup_age_hours``, completed WAL unarchived past
``warn_archive_lag_seconds`` (a quiet cluster whose only unarchived WAL is the segment being written is fine,
however old its last archive). The verdict is :func:`kbpg_tui.core.ops.backup.assess`'s.
"""

from __future__ import annotations

import psycopg

from .. import backup as bk
from ..ops import backup as ops
from .base import Check, CheckFailed, CheckWarning, once
from .probe import ProbeContext


def target(p: ProbeContext) -> str:
    host = p.ctx.backup_host
    return host.name if host is not None else "backups"


def archiver(p: ProbeContext) -> ops.ArchiverState:
    address, port = p.settings.network.lb_address, p.settings.ports.haproxy_write
    try:
        with p.monitor(address, port) as conn:
            row = conn.execute(ops.ARCHIVER_SQL).fetchone()
    except psycopg.Error as exc:
        raise ops.BackupError(f"LB {address}:{port}: {p.pg_error(exc)}") from None
    except CheckFailed as exc:  # the monitor role's names missing from postgres.env
        raise ops.BackupError(str(exc)) from None
    if row is None:
        raise ops.BackupError(f"LB {address}:{port}: pg_stat_archiver gave no row")
    return ops.ArchiverState.from_row(row)


def archive_timeout(p: ProbeContext) -> int:
    """``check``'s wait for its WAL segment: 20 s, less with a short probe timeout (the runner stops a probe after
    3 x timeout + 5 s)."""
    return max(2, min(ops.DIAGNOSE_ARCHIVE_TIMEOUT, int(p.timeout * 2.5)))


def backups(p: ProbeContext) -> str:
    host = p.ctx.backup_host
    if host is None:
        return "no backup host selected (backups not set up)"
    if not p.settings.backup.enabled:
        return f"[backup] enabled = false in kbpg.toml: backups not set up ({host.name} selected, unused)"
    try:
        seen = ops.observe(p.ctx, ops.pool_runner(p.ctx), lambda: archiver(p), host, p.timeout, archive_timeout(p))
    except bk.BackupError as exc:  # the stanza's name itself (PATRONI_CLUSTER_NAME)
        raise CheckFailed(f"{host.name}: {exc}") from None
    verdict = seen.assessment
    if verdict.verdict == "fail":
        raise CheckFailed(f"{host.name}: {verdict.reason}")
    if verdict.verdict == "warn":
        raise CheckWarning(f"{host.name}: {verdict.reason}")
    return verdict.reason


CHECK = Check(18, "backups", once(target, backups))
