"""``kbpg backup now | list | check``: pgBackRest backups on the backup host (kbpg_tui.core.ops.backup).

They refuse (exit 2, one line, nothing connected to) when no backup host is selected ([inventory.backup_rule]),
when ``[backup] enabled = false``, and while a credential rotation is pending; otherwise exit 0 (done, or a warning
only), 1 (failed), 3 (``now``: a backup is running already, or the run lock is held), 130 (``now``: Ctrl-C while
following it: the backup goes on in its systemd unit).
"""

from __future__ import annotations

import argparse
import json
import sys

from .cli import EXIT_BUSY, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, BadInput, PlainPrinter, _cancel_on_sigint
from .cli_ops import _prepared
from .core import backup as bk
from .core.ssh import SshError


def prepared_with_backups(args: argparse.Namespace, printer: PlainPrinter, command: str, log_name: str,
                          why_not=None, **prepared: bool):
    """cli_ops' prepared run (settings, postgres.env, nothing pending) and whether to ask, then refused (BadInput,
    exit 2, named by ``command``) unless backups are set up: a backup host selected, ``[backup] enabled``, a stanza
    name pgBackRest takes. ``why_not(ctx)`` says why backups are off (default: ``kbpg backup``'s wording). Shared by
    ``kbpg backup``, ``restore-drill`` and ``restore``."""
    from .core.ops import backup as ops

    run, interactive = _prepared(args, log_name, printer, **prepared)
    try:
        reason = (why_not or ops.refusal)(run.ctx)
        if reason:
            raise BadInput(f"{command}: {reason}")
        try:
            bk.stanza(run.ctx)
        except bk.BackupError as exc:
            raise BadInput(f"{command}: credentials/postgres.env: {exc}") from None
    except BaseException:
        run.close()
        raise
    return run, interactive


def _prepared_backup(args: argparse.Namespace, printer: PlainPrinter):
    return prepared_with_backups(args, printer, f"backup {args.action}", "backup")[0]


def _fail(args: argparse.Namespace, exc: BaseException) -> int:
    from .core.logs import redact

    text = " ".join(redact(str(exc)).split())[:500]
    print(f"kbpg backup {args.action}: {text}", file=sys.stderr)
    return EXIT_FAILED


# --- kbpg backup now -----------------------------------------------------------------------------------

def cmd_backup_now(args: argparse.Namespace) -> int:
    from .core import runlock
    from .core.ops import backup as ops

    printer = PlainPrinter(stream=sys.stderr if args.json else sys.stdout)
    run = _prepared_backup(args, printer)
    host = run.ctx.backup_host
    try:
        print(f"kbpg backup now: a {args.type} backup on {host.name} (kbpg-backup@{args.type}.service)"
              + ("" if args.no_wait else "; followed until it ends (Ctrl-C stops following, not the backup)"),
              file=printer.stream)
        try:
            lock = runlock.acquire_for_run(run, f"kbpg backup now --type {args.type}")
        except runlock.LockBusy as exc:
            print(f"kbpg: {exc}", file=sys.stderr)
            return EXIT_BUSY
        except runlock.LockError as exc:
            return _fail(args, exc)
        released = []

        def release() -> None:  # once the unit runs: following it for hours must not block an install
            if not released:
                released.append(True)
                lock.release()

        interrupted = _cancel_on_sigint(run.ctx.cancel)
        try:
            outcome = ops.backup_now(run.ctx, args.type, wait=not args.no_wait, on_started=release)
        except ops.BackupBusy as exc:
            print(f"kbpg backup now: not started: {exc}", file=sys.stderr)
            return EXIT_BUSY
        except (ops.BackupError, SshError) as exc:
            if interrupted.hit:  # Ctrl-C before systemd was asked to start it
                print("kbpg backup now: interrupted: no backup was started", file=sys.stderr)
                return EXIT_INTERRUPTED
            return _fail(args, exc)
        finally:
            interrupted.restore()
            release()
    finally:
        printer.close()
        run.close()
    if args.json:
        print(json.dumps(outcome.to_dict(), indent=2, ensure_ascii=False))
    else:
        for line in outcome.lines():
            print(line)
    if outcome.stopped_watching:
        return EXIT_INTERRUPTED
    return EXIT_OK if outcome.ok else EXIT_FAILED


# --- kbpg backup list ------------------------------------------------------------------------------------

def listing_lines(listing) -> list[str]:
    from .core.ops.backup import size_text

    info = listing.info
    lines = [f"{listing.host.name}: stanza {info.stanza}, status {info.status_text}"
             + (f", repository cipher {info.cipher}" if info.cipher else "")
             + (", a backup is running" + (f" ({info.progress:.0%})" if info.progress is not None else "")
                if info.running else "")]
    if info.backups:
        lines.append(f"{'label':<34} {'type':<4} {'start (UTC)':<19} {'stop (UTC)':<19} {'took':>7} {'size':>10} "
                     f"{'added':>10} {'restore needs':>13}  WAL")
        for b in info.backups:
            lines.append(f"{b.label:<34} {b.type:<4} {b.start:%Y-%m-%d %H:%M:%S} {b.stop:%Y-%m-%d %H:%M:%S} "
                         f"{b.duration:>6.0f}s {size_text(b.size):>10} {size_text(b.repo_delta):>10} "
                         f"{size_text(b.repo_size):>13}  {b.wal_start} .. {b.wal_stop}"
                         + ("  PAGE CHECKSUM ERRORS" if b.error else ""))
    else:
        lines.append("no backup yet (`kbpg backup now --type full` takes one)")
    lines.append(f"WAL archive: {info.archive_min or 'empty'} .. {info.archive_max or ''}".rstrip(" ."))
    lines.append(listing.window())
    return lines


def cmd_backup_list(args: argparse.Namespace) -> int:
    from .core.ops import backup as ops

    printer = PlainPrinter(stream=sys.stderr)
    run = _prepared_backup(args, printer)
    try:
        listing = ops.backup_list(run.ctx)
    except (ops.BackupError, SshError) as exc:
        return _fail(args, exc)
    finally:
        printer.close()
        run.close()
    if args.json:
        print(json.dumps(listing.to_dict(), indent=2, ensure_ascii=False))
    else:
        for line in listing_lines(listing):
            print(line)
    return EXIT_OK if listing.info.ok else EXIT_FAILED


# --- kbpg backup check ----------------------------------------------------------------------------------

def cmd_backup_check(args: argparse.Namespace) -> int:
    from .core.ops import backup as ops

    printer = PlainPrinter(stream=sys.stderr)
    run = _prepared_backup(args, printer)
    try:
        seen = ops.backup_check(run.ctx)
    except (ops.BackupError, SshError) as exc:
        return _fail(args, exc)
    finally:
        printer.close()
        run.close()
    verdict = seen.assessment
    if args.json:
        print(json.dumps({"host": seen.host.name, "stanza": seen.stanza, "verdict": verdict.verdict,
                          "reason": verdict.reason, "figures": verdict.figures,
                          "info": seen.info.to_dict() if seen.info else None}, indent=2, ensure_ascii=False,
                         default=str))
    else:
        print(f"{seen.host.name}: backups {verdict.verdict.upper()}: {verdict.reason}")
    return EXIT_FAILED if verdict.verdict == "fail" else EXIT_OK


def add_backup_parsers(commands: argparse._SubParsersAction) -> None:
    from .core.ops.backup import BACKUP_TYPES

    p = commands.add_parser("backup", help="pgBackRest backups on the backup host: take one now, list them, check "
                                           "them (refused when no backup host is selected)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("now", help="start a backup (the systemd unit kbpg-backup@TYPE.service the timers start) "
                                       "and follow it; exit 3 when one is running already")
    a.add_argument("--type", choices=BACKUP_TYPES, default="incr",
                   help="full, diff (changes since the last full) or incr (since the last backup; default, as "
                        "pgBackRest's: it takes a full when there is none)")
    a.add_argument("--no-wait", action="store_true", help="return once the unit has started")
    a.add_argument("--json", action="store_true", help="the outcome as JSON (progress goes to stderr)")
    a.add_argument("--answers", help="kbpg.toml (default: WORKDIR/kbpg.toml)")
    a.set_defaults(handler=cmd_backup_now, yes=True)
    a = actions.add_parser("list", help="the backups in the repository, the WAL archive's range, and the window a "
                                        "point-in-time restore can reach")
    a.add_argument("--json", action="store_true")
    a.add_argument("--answers", help="kbpg.toml (default: WORKDIR/kbpg.toml)")
    a.set_defaults(handler=cmd_backup_list, yes=True)
    a = actions.add_parser("check", help="pgbackrest check (one WAL switch, archived), the newest backup's age and "
                                         "the archive's lag, as diagnostics' check 18; exit 1 on a failure")
    a.add_argument("--json", action="store_true")
    a.add_argument("--answers", help="kbpg.toml (default: WORKDIR/kbpg.toml)")
    a.set_defaults(handler=cmd_backup_check, yes=True)


__all__ = ["add_backup_parsers", "cmd_backup_check", "cmd_backup_list", "cmd_backup_now", "listing_lines"]
