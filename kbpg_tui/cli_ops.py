"""Day-2 commands of the ``kbpg`` command line: ``kbpg switchover``, ``kbpg drill`` and ``kbpg tls``.

They share the install's conventions (exit 0/1/2/3/130, plain lines, ``--yes`` for scripts, the cluster's run
lock) and run the core's operations (``kbpg_tui.core.ops``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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


def _prepared(args: argparse.Namespace, log_name: str, sink: ev.EventSink, rotating: bool = False,
              restoring: bool = False):
    """Settings, credentials and a prepared run (no connection yet); BadInput for what the operator must fix (a
    credential rotation pending, unless ``rotating``: postgres.env then holds values some hosts no longer take; a
    point-in-time restore pending, unless ``restoring``: the cluster is being rebuilt)."""
    from .core import install as inst
    from .core import rotation
    from .core.logs import setup_file_logging
    from .core.ops import restore

    settings = load_answers(args, required=True)
    if not restoring and (args.workdir / restore.PENDING_FILE).exists():
        raise BadInput(f"a point-in-time restore is pending ({args.workdir / restore.PENDING_FILE}): finish it first "
                       f"with `kbpg restore --yes`; the cluster is being rebuilt")
    if not rotating and (args.workdir / rotation.PENDING_FILE).exists():
        raise BadInput(f"a credential rotation is pending ({args.workdir / rotation.PENDING_FILE}): finish it first "
                       f"with `kbpg credentials rotate`; `kbpg {args.command}` would use values some hosts no "
                       "longer accept")
    env_path = args.workdir / creds.ENV_FILE
    values = _read_existing(env_path) if env_path.exists() else None
    missing = [name for name in (*creds.REQUIRED_NAMES, *creds.USER_NAMES, *creds.PASSWORD_NAMES)
               if values is None or name not in values]
    if missing:
        added = values is not None and all(name in creds.ADDITIVE_NAMES for name in missing)
        raise BadInput(f"{env_path}: {'not found' if values is None else 'lacks ' + ', '.join(dict.fromkeys(missing))}; "
                       "it needs the values the cluster was installed with"
                       + (" (names a newer kbpg adds: run `kbpg install` once to add them)" if added else ""))
    interactive = sys.stdin.isatty() and not args.yes
    if not args.yes and not interactive:
        raise BadInput(f"not a terminal: pass --yes to run `kbpg {args.command}` without a question")
    setup_file_logging(args.workdir, log_name)
    try:
        run = inst.prepare(args.workdir, settings, sink)
    except inv.InventoryError as exc:
        raise BadInput(str(exc)) from None
    return run, interactive


def _take_lock(run, command: str):
    """The cluster's run lock for ``command``, or (None, the exit code to return): 3 when another run holds it, 1
    when it could not be taken (said on stdout: nothing was changed)."""
    from .core import runlock

    try:
        return runlock.acquire_for_run(run, command), None
    except runlock.LockBusy as exc:
        print(f"kbpg: {exc}", file=sys.stderr)
        return None, EXIT_BUSY
    except runlock.LockError as exc:
        print(f"   error: {exc}\nNOT done: nothing was changed.")
        return None, EXIT_FAILED


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


# --- kbpg tls -----------------------------------------------------------------------------------

def cmd_tls_status(args: argparse.Namespace) -> int:
    """kbpg's CA and node certificates in credentials/tls/, read locally (nothing is connected to)."""
    from .core import tls

    settings = load_answers(args, required=True)
    directory = args.workdir / tls.TLS_DIR
    rows = []
    for path in sorted(directory.glob("*.crt")) if directory.is_dir() else []:
        try:
            info = tls.cert_info(path.read_bytes())
        except (OSError, ValueError, tls.TlsError) as exc:
            rows.append({"file": str(path), "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__})
            continue
        due = info.days_left <= settings.tls.renew_days
        rows.append({"file": str(path), "subject": info.subject_cn, "issuer": info.issuer_cn,
                     "not_after": info.not_after.isoformat(), "days_left": round(info.days_left, 1),
                     "dns": list(info.sans_dns), "ip": list(info.sans_ip), "renew_due": due})
    if args.json:
        print(json.dumps({"enabled": settings.tls.enabled, "renew_days": settings.tls.renew_days,
                          "certificates": rows}, indent=2))
    elif not rows:
        print(f"No certificate in {directory}" + ("" if settings.tls.enabled else " (TLS is off in kbpg.toml)")
              + ": `kbpg install` makes them.")
    else:
        for row in rows:
            if "error" in row:
                print(f"{row['file']}: unreadable ({row['error']})")
                continue
            sans = ", ".join(row["dns"] + row["ip"])
            print(f"{Path(row['file']).name:<28} {row['days_left']:>7.1f} days left (until {row['not_after'][:10]})"
                  f"{'  RENEWAL DUE' if row['renew_due'] else ''}  {sans}")
    return EXIT_FAILED if any("error" in row or row.get("renew_due") for row in rows) else EXIT_OK


def cmd_tls_renew(args: argparse.Namespace) -> int:
    """The install, whose step 00 renews the certificates due (or every one with --all) and whose later steps put
    the new files on the hosts and reload what reads them: PostgreSQL, Patroni, PgBouncer, HAProxy (no restart)."""
    from .cli import cmd_install

    settings = load_answers(args, required=True)
    if not settings.tls.enabled:
        raise BadInput("kbpg.toml: tls.enabled is false: there is no certificate to renew (set it to true and run "
                       "`kbpg install` to turn TLS on)")
    args.step, args.strict, args.verbose, args.allow_wide_subnet = None, False, False, False
    args.verb = "tls renew" + (" --all" if args.all else "")
    args.initial_state = {"tls_renew_all": True} if args.all else {}
    return cmd_install(args)


# --- kbpg credentials rotate ------------------------------------------------------------------------

def cmd_credentials_rotate(args: argparse.Namespace) -> int:
    """New values for the named secrets (every rotatable one by default), applied on every host that uses them with
    reloads only (see core/rotation.py), postgres.env rewritten once they work everywhere; re-run to finish one
    that was stopped."""
    import time

    from .cli import print_summary
    from .core import rotation

    try:
        names = rotation.check_names(args.names)
        pending = rotation.pending_names(args.workdir)
    except rotation.RotationError as exc:
        raise BadInput(str(exc)) from None
    if pending is not None and args.names and set(names) != set(pending):
        raise BadInput(f"a rotation of {', '.join(pending)} is pending ({args.workdir / rotation.PENDING_FILE}): "
                       "finish it first with `kbpg credentials rotate` (no name)")
    printer = PlainPrinter()
    run, interactive = _prepared(args, "rotate", printer, rotating=True)
    try:
        shown = pending if pending is not None else names
        print(("kbpg credentials rotate: finishing the pending rotation of " if pending is not None else
               "kbpg credentials rotate: new values for ") + ", ".join(shown))
        for name in shown:
            print(f"  {name}: {rotation.WHERE[name]}")
        if not args.names and pending is None:
            print("  not rotated: PATRONI_RAFT_PASSWORD (see `kbpg credentials rotate PATRONI_RAFT_PASSWORD` for why)")
        print("No restart, no failover; connections open now stay open. postgres.env is rewritten at the end, once "
              f"every new value works; the old file is kept as {args.workdir / rotation.PREV_FILE}. Applications "
              "must then reload postgres.env.")
        if interactive and not _ask("Rotate now?"):
            print("Nothing done.")
            return EXIT_OK
        lock, code = _take_lock(run, "kbpg credentials rotate" + "".join(f" {name}" for name in (args.names or [])))
        if lock is None:
            return code
        started = time.monotonic()
        interrupted = _cancel_on_sigint(run.ctx.cancel)
        try:
            try:
                chosen = rotation.begin(args.workdir, None if pending is not None else names)
            except rotation.RotationError as exc:
                raise BadInput(str(exc)) from None
            run.ctx.credentials = chosen.credentials
            reports = run.engine.run(rotation.steps(chosen))
        finally:
            interrupted.restore()
            lock.release()
    finally:
        printer.close()
        run.close()
    return print_summary(reports, run.ctx.selection, started, interrupted.hit, strict=False)


def add_rotate_parser(actions: argparse._SubParsersAction) -> None:
    from .core.rotation import ROTATABLE

    a = actions.add_parser("rotate", help="new passwords on the live cluster, applied everywhere with reloads only; "
                                          "postgres.env rewritten once they all work; run again to finish one stopped")
    a.add_argument("names", nargs="*", metavar="NAME",
                   help=f"the secrets to rotate (default: all of them): {', '.join(ROTATABLE)}")
    a.add_argument("--answers", help="kbpg.toml (default: WORKDIR/kbpg.toml)")
    a.add_argument("--yes", action="store_true", help="no question (scripts)")
    a.set_defaults(handler=cmd_credentials_rotate)


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

    p = commands.add_parser("tls", help="kbpg's CA and node certificates: status, renew")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("status", help="each certificate in credentials/tls/: days left, names; exit 1 when one "
                                          "is due for renewal")
    a.add_argument("--answers", help="kbpg.toml (default: WORKDIR/kbpg.toml)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_tls_status)
    a = actions.add_parser("renew", help="renew the certificates expiring within tls.renew_days (every one with "
                                         "--all) and reload what uses them, without a restart")
    a.add_argument("--all", action="store_true", help="reissue every node certificate (the CA is kept)")
    a.add_argument("--answers", help="kbpg.toml (default: WORKDIR/kbpg.toml)")
    a.add_argument("--yes", action="store_true", help="no question (scripts)")
    a.set_defaults(handler=cmd_tls_renew)


__all__ = ["add_parsers", "add_rotate_parser", "cmd_credentials_rotate", "cmd_drill", "cmd_switchover",
           "cmd_tls_renew", "cmd_tls_status", "EXIT_BAD_INPUT"]
