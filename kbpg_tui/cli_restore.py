"""``kbpg restore-drill``: restore the backups to a point in time on the backup host, in a scratch copy, and verify
it (see kbpg_tui/core/ops/restore_drill.py). The cluster sees one sentinel row and one WAL switch.

Exit codes: 0 restored and verified, 1 not (the report says why), 2 bad input (a time without an offset, in the
future; a query over 64 KiB or with a NUL; no backup host; backups off; a rotation pending), 3 another restore
drill runs on the backup host, 130 Ctrl-C (the drill's unit is stopped: its scratch copy is removed).

``kbpg restore --time T``: the cluster itself back to T (kbpg_tui/core/ops/restore.py), destructive: a restore
drill to T first, then Patroni stopped everywhere, the data directories moved aside, the leader restored, the others
cloned. Asked for with the cluster's name typed (or ``--yes``). Exit codes: 0 restored and verified, 1 not (the same
command goes on from where it stopped), 2 bad input, 3 another kbpg run holds the cluster, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys

from .cli import EXIT_BUSY, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, BadInput, _cancel_on_sigint
from .cli_backup import prepared_with_backups
from .cli_ops import DrillPrinter, _take_lock


def cmd_restore_drill(args: argparse.Namespace) -> int:
    from .core.ops import restore_drill as rd

    try:  # the operator's input first: nothing is read, written or connected to before it is right
        target = None if args.latest or args.time is None else rd.parse_target(args.time)
        query = rd.check_query(args.query)
    except rd.TargetError as exc:
        raise BadInput(str(exc)) from None
    args.yes = True  # no question: the drill changes nothing on the cluster but one sentinel row
    printer = DrillPrinter(stream=sys.stderr if args.json else sys.stdout)
    run, _ = prepared_with_backups(args, printer, "restore-drill", "restore-drill",
                                   why_not=lambda ctx: ctx.backup_skip_reason())
    try:
        print(f"kbpg restore-drill: restoring on {run.ctx.backup_host.name if run.ctx.backup_host else '?'} to "
              f"{rd.utc_text(target) if target else 'the end of the archive (--latest)'}; a sentinel row is written on "
              "the leader first", file=printer.stream)
        interrupted = _cancel_on_sigint(run.ctx.cancel, hold="stopping: the drill's unit is stopped first (its "
                                                              "scratch copy is removed)")
        try:
            result = rd.run_drill(run.ctx, target, query)  # events through the run's redacting sink (the printer)
        except rd.TargetError as exc:
            raise BadInput(str(exc)) from None
        except rd.DrillBusy as exc:
            print(f"kbpg: {exc}", file=sys.stderr)
            return EXIT_BUSY
        except rd.DrillFailed as exc:
            print(f"kbpg restore-drill: NOT done: {exc}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            interrupted.restore()
    finally:
        printer.close()
        run.close()
    if args.json:
        print(json.dumps({**result.to_dict(), "reports": [str(p) for p in result.paths]}, indent=2,
                         ensure_ascii=False))
    else:
        for line in result.summary_lines():
            print(line)
        print(f"Report: {result.paths[0] if result.paths else '-'}")
    if interrupted.hit:
        return EXIT_INTERRUPTED
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_restore(args: argparse.Namespace) -> int:
    import time

    from .cli import PlainPrinter, print_summary
    from .core.ops import restore as rs
    from .core.ops import restore_drill as rd

    try:
        target = None if args.time is None else rd.parse_target(args.time)
    except rd.TargetError as exc:
        raise BadInput(str(exc)) from None
    if target is None and not (args.workdir / rs.PENDING_FILE).exists():
        raise BadInput("restore: --time T is required (no restore is pending): the moment to restore the cluster to, "
                       "e.g. 2026-11-26T10:15:30.25+00:00")
    printer = PlainPrinter()
    run, interactive = prepared_with_backups(args, printer, "restore", "restore",
                                             why_not=lambda ctx: ctx.backup_skip_reason(), restoring=True)
    pending = None
    try:
        try:
            pending, resumed = rs.begin(args.workdir, target, args.node, [h.name for h in run.ctx.db_hosts])
        except rs.RestoreError as exc:
            raise BadInput(str(exc)) from None
        for line in rs.describe_plan(run.ctx, pending, resumed):
            print(line)
        name = run.ctx.credentials["PATRONI_CLUSTER_NAME"]
        if interactive:
            answer = input(f"Type the cluster's name ({name}) to restore it to {pending.target}: ").strip()
            if answer != name:
                print("Nothing done.")
                return EXIT_OK
        lock, code = _take_lock(run, f"kbpg restore --time {pending.target}")
        if lock is None:
            return code
        started = time.monotonic()
        interrupted = _cancel_on_sigint(run.ctx.cancel)
        try:
            reports = run.engine.run(rs.steps(pending))
        finally:
            interrupted.restore()
            lock.release()
    finally:
        if pending is not None and not pending.reached("drilled"):
            (args.workdir / rs.PENDING_FILE).unlink(missing_ok=True)  # nothing was touched: nothing pends
        printer.close()
        run.close()
    code = print_summary(reports, run.ctx.selection, started, interrupted.hit, strict=False)
    if (args.workdir / rs.PENDING_FILE).exists():
        print(f"The restore is not finished ({args.workdir / rs.PENDING_FILE}): run `kbpg restore --yes` again to go on.")
    return code


def add_restore_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("restore", help="DESTRUCTIVE: the cluster itself back to a moment (point-in-time "
                                            "restore from the backups); a restore drill to it first; asks for the "
                                            "cluster's name (or --yes)")
    p.add_argument("--time", metavar="T", help="the moment: ISO 8601 with a UTC offset, e.g. "
                                               "2026-11-26T10:15:30.25+00:00 (required, unless finishing a pending "
                                               "restore)")
    p.add_argument("--node", metavar="NODE", help="the DB node restored first, the new leader (default: the leader)")
    p.add_argument("--answers", help="kbpg.toml (default: WORKDIR/kbpg.toml)")
    p.add_argument("--yes", action="store_true", help="no question: restore now (scripts)")
    p.set_defaults(handler=cmd_restore)


def add_restore_drill_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("restore-drill", help="restore the backups on the backup host to a moment (or the latest) "
                                                  "in a scratch copy, verify it, remove it; a report in reports/")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--time", metavar="T", help="the moment to restore to: ISO 8601 with a UTC offset, e.g. "
                                                  "2026-11-26T10:15:30.25+00:00 (fractions of a second allowed; not "
                                                  "in the future)")
    when.add_argument("--latest", action="store_true", help="the end of the archive (the default)")
    p.add_argument("--query", metavar="SQL", help="SQL run on the restored copy, read-only as the app role (60 s "
                                                  "statement timeout; at most 1000 rows / 1 MiB kept; at most 64 KiB)")
    p.add_argument("--answers", help="kbpg.toml (default: WORKDIR/kbpg.toml)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (progress goes to stderr)")
    p.set_defaults(handler=cmd_restore_drill, yes=True)


__all__ = ["add_restore_drill_parser", "add_restore_parser", "cmd_restore", "cmd_restore_drill"]
