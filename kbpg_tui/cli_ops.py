"""Day-2 commands of the ``kbpg`` command line: ``kbpg switchover`` and ``kbpg drill``.

They share the install's conventions (exit 0/1/2/3/130, plain lines, ``--yes`` for scripts, the cluster's run
lock) and run the core's operations (``kbpg_tui.core.ops``).
"""

from __future__ import annotations

import argparse
import json
import sys

from .cli import (
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    BadInput,
    PlainPrinter,
    _cancel_on_sigint,
    _read_existing,
    load_answers,
)
from .core import credentials as creds
from .core import events as ev
from .core import inventory as inv

EXIT_BAD_INPUT = 2


def _prepared(args: argparse.Namespace, log_name: str, sink: ev.EventSink):
    """Settings, credentials and a prepared run (no connection yet); BadInput for what the operator must fix."""
    from .core import install as inst
    from .core.logs import setup_file_logging

    settings = load_answers(args, required=True)
    env_path = args.workdir / creds.ENV_FILE
    values = _read_existing(env_path) if env_path.exists() else None
    missing = [name for name in (*creds.REQUIRED_NAMES, *creds.USER_NAMES, *creds.PASSWORD_NAMES)
               if values is None or name not in values]
    if missing:
        raise BadInput(f"{env_path}: {'not found' if values is None else 'lacks ' + ', '.join(dict.fromkeys(missing))}; "
                       "it needs the values the cluster was installed with")
    interactive = sys.stdin.isatty() and not args.yes
    if not args.yes and not interactive:
        raise BadInput(f"not a terminal: pass --yes to run `kbpg {args.command}` without a question")
    setup_file_logging(args.workdir, log_name)
    try:
        run = inst.prepare(args.workdir, settings, sink)
    except inv.InventoryError as exc:
        raise BadInput(str(exc)) from None
    return run, interactive


def _ask(question: str) -> bool:
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


class DrillPrinter(PlainPrinter):
    """PlainPrinter, plus the drill's timeline (each mark as it happens); progress lines are not rate-limited."""

    def _format(self, event: ev.Event) -> str | None:
        if isinstance(event, ev.DrillMark):
            where = f" {event.entry}" if event.entry else ""
            return f"   round {event.round} {event.offset:+7.2f} s  {event.what}{where}" + (
                f" ({event.detail})" if event.detail else "")
        if isinstance(event, ev.Progress):
            return f"   … {event.text}"
        if isinstance(event, ev.DrillSample | ev.DrillRoundDone):
            return None
        return super()._format(event)


# --- kbpg switchover ------------------------------------------------------------------------------

def cmd_switchover(args: argparse.Namespace) -> int:
    from .core import runlock
    from .core.ops import switchover as so

    printer = DrillPrinter()
    run, interactive = _prepared(args, "switchover", printer)
    try:
        state = so.read_state(run.ctx)
        leader = so.check_target(state, args.to, [h.name for h in run.ctx.db_hosts])
        print(f"kbpg switchover: {leader.name} leads now; {'to ' + args.to if args.to else 'Patroni picks the new leader'}; "
              f"PgBouncer on {', '.join(h.name for h in run.ctx.haproxy_hosts)} paused around it.")
        if interactive and not _ask("Switch over now?"):
            print("Nothing done.")
            return EXIT_OK
        try:
            lock = runlock.acquire_for_run(run, "kbpg switchover" + (f" --to {args.to}" if args.to else ""))
        except runlock.LockBusy as exc:
            print(f"kbpg: {exc}", file=sys.stderr)
            return EXIT_BUSY
        interrupted = _cancel_on_sigint(run.ctx.cancel, hold="stopping: PgBouncer is resumed first (kill -9 would "
                                                              "leave it paused)")
        try:
            result = so.switchover(run.ctx, args.to)
        finally:
            interrupted.restore()
            lock.release()
    except so.SwitchoverError as exc:
        print(f"kbpg switchover: NOT done: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        printer.close()
        run.close()
    for line in so.describe(result):
        print(line)
    for warning in result.warnings:
        print(f"  warning: {warning}")
    return EXIT_OK if not result.warnings else EXIT_FAILED


# --- kbpg drill ---------------------------------------------------------------------------------

def cmd_drill(args: argparse.Namespace) -> int:
    from .core import runlock
    from .core.ops import drill

    if not 1 <= args.rounds <= 100:
        raise BadInput(f"drill --rounds {args.rounds}: must be between 1 and 100")
    printer = DrillPrinter(stream=sys.stderr if args.json else sys.stdout)
    run, interactive = _prepared(args, "drill", printer)
    try:
        if args.mode == "cut" and (reason := drill.lab_refusal(run.ctx)):
            raise BadInput(reason)  # decided from servers.tsv alone: nothing was connected to
        print(f"kbpg drill {args.mode}: {drill.MODE_HELP[args.mode]}; {args.rounds} round(s). Checking the cluster "
              "first (diagnostics must have no failure) ...", file=printer.stream)
        reasons = drill.refusal(run, args.mode)
        if reasons:
            for reason in reasons:
                print(f"kbpg drill: refused: {reason}", file=sys.stderr)
            return EXIT_FAILED
        if interactive and not _ask(f"This causes {args.rounds} failover(s) on the cluster (writes stop for seconds "
                                    "each time). Go on?"):
            print("Nothing done.")
            return EXIT_OK
        interrupted = _cancel_on_sigint(run.ctx.cancel, hold="stopping: the fault is put back first (kill -9 would "
                                                              "leave it in place)")
        try:
            report = drill.run_drill(run, args.mode, args.rounds, checked=True,
                                     command=f"kbpg drill {args.mode} --rounds {args.rounds}")
        except runlock.LockBusy as exc:
            print(f"kbpg: {exc}", file=sys.stderr)
            return EXIT_BUSY
        finally:
            interrupted.restore()
    finally:
        printer.close()
        run.close()
    if args.json:
        print(json.dumps({**report.to_dict(), "reports": [str(p) for p in report.paths]}, indent=2, ensure_ascii=False))
    else:
        for line in drill.summary_lines(report):
            print(line)
        print(f"Report: {report.paths[0] if report.paths else '-'}")
    if interrupted.hit:
        return EXIT_INTERRUPTED
    return EXIT_OK if report.ok else EXIT_FAILED


def add_parsers(commands: argparse._SubParsersAction) -> None:
    from .core.ops.drill import MODE_HELP, MODES

    p = commands.add_parser("switchover", help="planned switchover: PgBouncer paused around Patroni's switchover, "
                                               "so that pooled clients wait instead of failing")
    p.add_argument("--to", metavar="NODE", help="the new leader: a healthy streaming replica (default: Patroni's choice)")
    p.add_argument("--answers", help="kbpg.toml (default: WORKDIR/kbpg.toml)")
    p.add_argument("--yes", action="store_true", help="no question (scripts)")
    p.set_defaults(handler=cmd_switchover)

    p = commands.add_parser("drill", help="failover drill: cause a failover, measure each entry point's longest stall, "
                                          "count lost rows; a report in reports/")
    p.add_argument("mode", choices=MODES, help="; ".join(f"{mode}: {text}" for mode, text in MODE_HELP.items()))
    p.add_argument("--rounds", type=int, default=1, help="how many failovers, one after another (1-100, default 1)")
    p.add_argument("--answers", help="kbpg.toml (default: WORKDIR/kbpg.toml)")
    p.add_argument("--yes", action="store_true", help="no question (scripts); the drill still refuses a cluster "
                                                      "whose diagnostics fail")
    p.add_argument("--json", action="store_true", help="print the report as JSON (progress goes to stderr)")
    p.set_defaults(handler=cmd_drill)


__all__ = ["add_parsers", "cmd_drill", "cmd_switchover", "EXIT_BAD_INPUT"]
