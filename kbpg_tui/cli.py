"""The ``kbpg`` command line.

Exit codes: 0 success, 1 the work failed, 2 bad input (inventory, answers file,
credentials). Secrets are never printed; bad input never ends in a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .core import credentials as creds
from .core import events as ev
from .core import inventory as inv
from .core import settings as cfg
from .core.files import InputFileError, resolve

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
MAX_PROBE_TIMEOUT = 300  # diagnose --timeout: seconds
# Commands that create a missing --workdir; every other command refuses one that does not exist.
CREATES_WORKDIR = ("kbpg (the wizard)", "lab up", "answers init", "credentials generate")
EXIT_BUSY = 3  # the cluster's run lock is held by another run (or a stale one awaits `kbpg unlock`)
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT): the work was cancelled, as a shell reports 128 + SIGINT
ANSWERS_FILE = "kbpg.toml"


class BadInput(Exception):
    """Input the operator must fix; the CLI prints it and exits 2."""


def _answers_path(args: argparse.Namespace) -> Path:
    explicit = getattr(args, "answers", None)
    return Path(explicit) if explicit else args.workdir / ANSWERS_FILE


def load_answers(args: argparse.Namespace, required: bool = False) -> cfg.Settings:
    """kbpg.toml from ``--answers`` or the work directory; defaults when absent and not required."""
    path = _answers_path(args)
    if not path.exists() and not getattr(args, "answers", None) and not required:
        return cfg.Settings()
    try:
        settings = cfg.load_settings(path)
    except cfg.SettingsError as exc:
        raise BadInput(str(exc)) from None
    for note in cfg.settings_notes(settings):  # an older spelling read as today's (nothing to fix, said once)
        print(f"kbpg: {path}: note: {note}", file=sys.stderr)
    return settings


# --- inventory -----------------------------------------------------------------------

def cmd_inventory(args: argparse.Namespace) -> int:
    settings = load_answers(args)
    path = Path(args.path) if args.path else resolve(args.workdir, settings.inventory.path)
    try:
        selection = inv.load_selection(path, settings.inventory.db_rule, settings.inventory.haproxy_rule,
                                       settings.inventory.backup_rule)
    except inv.InventoryError as exc:
        errors = exc.errors
        if args.json:
            print(json.dumps({"source": exc.source, "ok": False,
                              "problems": [vars(problem) for problem in exc.problems]}, indent=2, ensure_ascii=False))
        for problem in exc.problems:
            print(problem.render(exc.source), file=sys.stderr)
        print(f"{len(errors)} error(s) in {exc.source}: nothing selected.", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps({"ok": True, **selection.to_dict(), "backups_enabled": settings.backup.enabled}, indent=2,
                         ensure_ascii=False))
        return EXIT_OK
    backups = len(selection.backup_nodes)
    print(f"{selection.source}: {len(selection.db_nodes)} DB nodes, {len(selection.haproxy_nodes)} HAProxy nodes, "
          f"{backups} backup host{'' if backups == 1 else 's'}")
    for title, rule, nodes in (
        ("DB nodes", settings.inventory.db_rule, selection.db_nodes),
        ("HAProxy nodes", settings.inventory.haproxy_rule, selection.haproxy_nodes),
        ("Backup host", settings.inventory.backup_rule, selection.backup_nodes),
    ):
        print(f"\n{title} ({', '.join(f'{k}={v}' for k, v in rule.items())}):")
        for server in nodes:
            print(f"  {server.hostname:<16} {server.ip_private:<16} ssh as {server.user_ssh:<10} (line {server.line})")
    if not selection.backup_nodes:
        print("  none: backups are not set up ([inventory.backup_rule] selects the backup host)")
    elif not settings.backup.enabled:
        print("  not used: backups are turned off in kbpg.toml ([backup] enabled = false)")
    for warning in selection.warnings:
        print(warning.render(selection.source), file=sys.stderr)
    return EXIT_OK


# --- credentials -----------------------------------------------------------------------

def _env_path(args: argparse.Namespace) -> Path:
    return args.workdir / creds.ENV_FILE


def _read_existing(path: Path) -> creds.Credentials | None:
    if not path.exists():
        return None
    try:
        return creds.read_env(path)
    except creds.CredentialsError as exc:
        raise BadInput(f"{exc}\nFix or move the file away; kbpg never overwrites credentials it cannot read.") from None


def cmd_credentials_generate(args: argparse.Namespace) -> int:
    path = _env_path(args)
    existing = _read_existing(path)
    credentials, generated = creds.generate(existing)
    problems = credentials.validate()
    if problems:
        raise BadInput(f"{path}: " + "; ".join(problems))
    creds.write_env(path, credentials)
    for name in credentials:
        print(f"  {name:<22} {'generated' if name in generated else 'kept'}")
    if existing is not None and generated:
        print(f"{path}: added {len(generated)} missing value(s); existing values kept.")
    elif existing is not None:
        print(f"{path}: every value already set; nothing regenerated (rotation is an explicit action).")
    else:
        print(f"{path}: written (0600).")
    return EXIT_OK


def cmd_credentials_export(args: argparse.Namespace) -> int:
    path = _env_path(args)
    credentials = _read_existing(path)
    if credentials is None and not args.from_env:
        raise BadInput(f"{path}: not found; run `kbpg credentials generate`, or pass --from-env")
    credentials = creds.Credentials(credentials or {})
    typed: list[str] = []
    if args.from_env:
        for name in dict.fromkeys((*creds.REQUIRED_NAMES, *creds.USER_NAMES, *creds.PASSWORD_NAMES)):
            value = os.environ.get(name)
            if value is None:
                continue
            if (problem := creds.check_value(name, value)):
                raise BadInput(problem)
            if creds.is_secret_name(name):
                strength = creds.password_strength(value)
                if strength.weak and not args.allow_weak:
                    raise BadInput(
                        f"{name} is weak ({', '.join(strength.reasons)}); use a stronger one, "
                        "or pass --allow-weak to keep it anyway"
                    )
            credentials[name] = value
            typed.append(name)
        credentials, generated = creds.generate(credentials)
    else:
        generated = []
    problems = credentials.validate()
    if problems:
        raise BadInput(f"{path}: " + "; ".join(problems))
    target = Path(args.to).expanduser() if args.to else path
    # kbpg's own credentials/ is kept 0700; a directory the operator names keeps its mode (a missing one is
    # created 0700), with a warning if others could replace the file in it.
    own_directory = target.absolute().parent == path.parent
    if not own_directory and (warning := creds.directory_warning(target)):
        print(f"kbpg: warning: {warning}", file=sys.stderr)
    written = creds.write_env(target, credentials, tighten_directory=own_directory)
    for name in credentials:
        origin = "from environment" if name in typed else "generated" if name in generated else "kept"
        print(f"  {name:<22} {origin}")
    print(f"{target}: {'written' if written else 'unchanged'} (0600).")
    return EXIT_OK


# --- install -----------------------------------------------------------------------------

class PlainPrinter:
    """Turns engine events into plain lines on stdout (no screen, no colours needed).

    Every line is redacted whole before it is printed. After :meth:`close` (the summary is out),
    late events of work the run stopped waiting for are no longer printed.
    """

    def __init__(self, verbose: bool = False, stream=None):
        self.verbose = verbose
        self.stream = stream or sys.stdout
        self._last_progress = 0.0
        self._lock = threading.RLock()
        self._closed = False

    def __call__(self, event: ev.Event) -> None:
        from .core.logs import redact

        with self._lock:
            if self._closed:
                return
            line = self._format(event)
            if line is not None:
                print(redact(line), file=self.stream, flush=True)

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def _format(self, event: ev.Event) -> str | None:
        if isinstance(event, ev.StepStarted):
            return f"== {event.step} {event.title}"
        if isinstance(event, ev.TaskFinished):
            if event.status == ev.Status.FAILED:
                detail = event.detail.replace("\n", "\n      ")
            else:
                detail = event.detail.splitlines()[0] if event.detail else ""
            return f"   {event.step} {event.host:<14} {event.task:<15} {event.status.value:<9} {event.elapsed:6.1f}s  {detail}"
        if isinstance(event, ev.StepFinished):
            return (f"== {event.step} {event.title}: {event.status.value} (changed {event.changed}, unchanged "
                    f"{event.unchanged}, failed {event.failed}) in {event.elapsed:.1f}s")
        if isinstance(event, ev.Message):
            prefix = {ev.Level.WARNING: "warning", ev.Level.ERROR: "error"}.get(event.level, "note")
            return f"   {prefix}: {event.text}"
        if isinstance(event, ev.Progress):
            now = time.monotonic()
            if now - self._last_progress < 10:
                return None
            self._last_progress = now
            return f"   … {event.text}"
        if isinstance(event, ev.HostKeyUnknown):
            return f"   host key of {event.host} ({event.address}) is unknown: {event.key_type} {event.fingerprint}"
        if isinstance(event, ev.HostSilent):
            return (f"   {event.step or '--'} {event.host:<14} NOT ANSWERING over SSH for {event.silent_for:.0f}s: its "
                    "network or the host may be down; waiting for it (ssh.silence_timeout)")
        if isinstance(event, ev.HostAnswering):
            return f"   {event.step or '--'} {event.host:<14} answering again"
        if isinstance(event, ev.OutputLine) and self.verbose:
            return f"      {event.host}| {event.text}"
        return None


def _terminal_prompt(event: ev.HostKeyUnknown) -> bool:
    answer = input(f"Accept the {event.key_type} key {event.fingerprint} of {event.host} ({event.address})? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _check_steps(given: list[str] | None) -> list[str] | None:
    """``--step`` values as step numbers ("2" and "02,03" are accepted); an unknown one is bad input naming them all."""
    from .core.steps import ALL_STEPS

    if not given:
        return given
    known = {step.number: step for step in ALL_STEPS}
    steps: list[str] = []
    for value in given:
        for item in value.replace(",", " ").split() or [value]:
            number = item.zfill(2) if item.isascii() and item.isdigit() and len(item) <= 2 else item
            if number not in known:
                listing = ", ".join(step.label for step in ALL_STEPS)
                raise BadInput(f"--step {item!r}: no such step; the steps are {listing}")
            steps.append(number)
    return list(dict.fromkeys(steps))


def _confirm_wide_networks(args: argparse.Namespace, settings: cfg.Settings) -> None:
    """Networks wider than /16 in pg_hba: refused with --yes unless --allow-wide-subnet; asked for otherwise."""
    warnings = cfg.settings_warnings(settings)
    if not warnings or args.allow_wide_subnet:
        return
    path = _answers_path(args)
    if args.yes or not sys.stdin.isatty():
        raise BadInput("\n".join(f"{path}: {warning}; pass --allow-wide-subnet to install with it, "
                                 "or narrow it" for warning in warnings))
    for warning in warnings:
        print(f"warning: {path}: {warning}")
    if input("Allow these networks? [y/N] ").strip().lower() not in ("y", "yes"):
        raise BadInput(f"{path}: wide networks not confirmed; narrow them, or pass --allow-wide-subnet")


def cmd_install(args: argparse.Namespace) -> int:
    from .core import install as inst
    from .core import runlock
    from .core.logs import setup_file_logging
    from .core.steps import install_steps

    args.step = _check_steps(args.step)
    settings = load_answers(args, required=True)
    _confirm_wide_networks(args, settings)
    if args.step and "00" not in args.step:
        path = args.workdir / creds.ENV_FILE
        values = _read_existing(path)
        missing = [name for name in creds.REQUIRED_NAMES if values is None or name not in values]
        if missing:
            raise BadInput(f"{path}: {'missing' if values is None else 'lacks ' + ', '.join(missing)}; "
                           "run step 00 first (kbpg install --yes, or --step 00)")
        from .core import rotation
        from .core.engine import TaskError
        from .core.ops import restore

        try:  # step 00 refuses these; without it, steps 02-04 would put the old values back, or start Patroni
            rotation.refuse_if_pending(args.workdir)  # on nodes whose data directory a restore moved aside
            restore.refuse_if_pending(args.workdir)
        except TaskError as exc:
            print(f"   error: {exc}")
            return EXIT_FAILED
    interactive = sys.stdin.isatty() and not args.yes
    if not args.yes and not interactive:
        raise BadInput("not a terminal: pass --yes to install without questions (host keys must then be known or pinned)")
    printer = PlainPrinter(verbose=args.verbose)
    log_path = setup_file_logging(args.workdir, "install")
    try:
        run = inst.prepare(args.workdir, settings, printer, _terminal_prompt if interactive else None)
    except (inv.InventoryError, creds.CredentialsError) as exc:
        raise BadInput(str(exc)) from None
    if getattr(args, "initial_state", None):  # kbpg tls renew --all: every certificate
        run.ctx.state.update(args.initial_state)
    selection = run.ctx.selection
    print(f"kbpg {getattr(args, 'verb', 'install')}: {len(selection.db_nodes)} DB nodes ({', '.join(s.hostname for s in selection.db_nodes)}), "
          f"{len(selection.haproxy_nodes)} HAProxy nodes ({', '.join(s.hostname for s in selection.haproxy_nodes)})"
          + "".join(f", backup host {s.hostname}" for s in selection.backup_nodes) + f"; log: {log_path}")
    # servers.tsv changes a running cluster's nodes: the plan, one node at a time (any step from 02 on writes what
    # names the nodes: patroni.yml, HAProxy's backends, PgBouncer, pgBackRest).
    if not args.step or any(number >= "02" for number in args.step):
        try:
            code = _install_node_changes(args, run, interactive)
        except BaseException:
            run.close()
            raise
        if code is not None:
            printer.close()
            run.close()
            return code
    if interactive and input("Go on? [y/N] ").strip().lower() not in ("y", "yes"):
        print("Nothing done.")
        return EXIT_OK
    started = time.monotonic()
    steps = install_steps(args.step)
    try:  # one run at a time per cluster: the lock is taken on the DB nodes before anything changes
        lock = runlock.acquire_for_run(run, _install_command(args)) if runlock.changes_hosts(steps) else None
    except runlock.LockError as exc:
        run.close()
        if isinstance(exc, runlock.LockBusy):
            print(f"kbpg: {exc}", file=sys.stderr)
            return EXIT_BUSY
        print(f"   error: {exc}\nNOT done: nothing was changed.")
        return EXIT_FAILED
    except BaseException:
        run.close()
        raise
    interrupted = _cancel_on_sigint(run.ctx.cancel)
    try:
        reports = run.engine.run(steps)
    finally:
        interrupted.restore()
        if lock is not None:
            lock.release()
        printer.close()  # work the engine stopped waiting for may still report: not after the summary
        run.close()
    code = print_summary(reports, selection, started, interrupted.hit, args.strict)
    if code == EXIT_OK and not args.step and getattr(args, "verb", "install") == "install":
        from .core.ops import nodes_apply

        # A whole install that ended well on servers.tsv's nodes is what a stopped `kbpg nodes apply` still owed.
        (args.workdir / nodes_apply.PENDING_FILE).unlink(missing_ok=True)
    return code


def _install_node_changes(args: argparse.Namespace, run, interactive: bool) -> int | None:  # noqa: ANN001 (a Run)
    """When a cluster runs and servers.tsv changes its nodes: the plan shown, and carried out with the operator's yes
    (or --yes) by ``kbpg nodes apply``'s engine, which ends with the whole install; the exit status. None: no cluster
    yet, or nothing to change (the install goes on as usual)."""
    from .cli_nodes import locked_apply, print_plan
    from .core import nodes, rotation
    from .core.ops import nodes_apply, restore

    if (args.workdir / rotation.PENDING_FILE).exists() or (args.workdir / restore.PENDING_FILE).exists():
        return None  # step 00 refuses first, naming what pends: no switchover or removal before that
    from .core.steps.s02_patroni import NODES_CHECKED

    membership = nodes.read_membership(run.ctx)
    if not membership.raft_members and not membership.patroni_read:
        run.ctx.state[NODES_CHECKED] = True  # step 02 does not read the cluster again
        return None
    plan = nodes.plan(run.ctx.selection, membership)
    if not plan.needs_apply:  # nothing, or new HAProxy nodes only: the install's ordinary work
        run.ctx.state[NODES_CHECKED] = True
        return None
    print("servers.tsv changes the running cluster's nodes:")
    print_plan(membership, plan)
    for reason in plan.refused:
        print(f"kbpg install: refused: {reason}", file=sys.stderr)
    if plan.refused:
        return EXIT_BAD_INPUT
    verb = getattr(args, "verb", "install")
    if args.step or verb != "install":  # kbpg install --step, kbpg tls renew: not the time for membership changes
        shown = "kbpg install --step" if verb == "install" else f"kbpg {verb}"
        print(f"{shown}: the nodes change; run `kbpg nodes apply` (or a full `kbpg install`), which carries the "
              "plan out one node at a time, then the install's steps; then run this again", file=sys.stderr)
        return EXIT_BAD_INPUT
    if interactive and input(f"Carry out these {len(plan.actions)} steps, then the install on the new set of nodes? "
                             "[y/N] ").strip().lower() not in ("y", "yes"):
        print("Nothing done.")
        return EXIT_OK
    result, code = locked_apply(run, membership, plan, _install_command(args) + " (nodes apply)")
    for line in nodes_apply.summary_lines(result) if result is not None else []:
        print(line)
    return code


def print_summary(reports: list, selection: inv.Selection, started: float, interrupted: bool, strict: bool) -> int:
    """The end of an engine run (install, tls renew, credentials rotate): warnings, counts, the exit status."""
    from .core import install as inst

    counts = inst.summarize(reports)
    done = bool(reports) and all(r.status in (ev.Status.CHANGED, ev.Status.UNCHANGED) for r in reports)
    warnings = install_warnings(reports, selection)
    # Field failure 6: a warning (XFS, clock, free space...) must never scroll by unseen in an unattended run.
    print(f"Warnings ({len(warnings)}):" if warnings else "Warnings: none")
    for line in warnings:
        print(f"  - {line}")
    print(f"Summary: changed {counts['changed']}, unchanged {counts['unchanged']}, failed {counts['failed']}"
          f"{', cancelled ' + str(counts['cancelled']) if counts['cancelled'] else ''}, warnings {len(warnings)} "
          f"in {time.monotonic() - started:.1f}s — "
          + ("all hosts done." if done else "NOT done: interrupted (Ctrl-C); run the same command again to continue."
             if interrupted else "NOT done: fix what is named above and run the same command again."))
    if interrupted and not done:
        return EXIT_INTERRUPTED
    if done and warnings and strict:
        print(f"--strict: {len(warnings)} warning(s), exit {EXIT_FAILED}.")
        return EXIT_FAILED
    return EXIT_OK if done else EXIT_FAILED


class _SigintCancels:
    """While the engine runs, Ctrl-C (SIGINT) sets the run's cancel event instead of raising in the middle of it.

    The engine then stops every host's work within its grace time and returns, so the summary is printed
    and the exit status is 130. A second Ctrl-C raises KeyboardInterrupt as usual.
    """

    def __init__(self, cancel: threading.Event, hold: str = ""):
        import signal

        self.cancel = cancel
        self.hold = hold  # non-empty: a second Ctrl-C does not interrupt; this is said instead (a fault to put back)
        self.hit = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ANN001 (signal's signature); sets flags only, prints nothing
        if self.hit:
            if self.hold:
                os.write(2, f"kbpg: {self.hold}\n".encode())
                return
            raise KeyboardInterrupt
        self.hit = True
        self.cancel.set()

    def restore(self) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _cancel_on_sigint(cancel: threading.Event, hold: str = "") -> _SigintCancels:
    return _SigintCancels(cancel, hold)


def install_warnings(reports: list, selection: inv.Selection) -> list[str]:
    """Every warning of a run, in order and without repeats, each naming its host (or servers.tsv)."""
    lines = [problem.render(selection.source) for problem in selection.warnings]
    for report in reports:
        for task in report.tasks:
            for text in task.warnings:
                line = text if text.startswith(f"{task.host}:") else f"{task.host}: {text}"
                if line not in lines:
                    lines.append(line)
    return lines


def _install_command(args: argparse.Namespace) -> str:
    """The command a run lock names as its holder's (never a secret: kbpg takes none in argv)."""
    parts = ["kbpg", *getattr(args, "verb", "install").split()]
    if getattr(args, "answers", None):
        parts += ["--answers", str(args.answers)]
    parts += ["--yes"] if args.yes else []
    for step in args.step or []:
        parts += ["--step", step]
    return " ".join(parts)


# --- unlock ----------------------------------------------------------------------------------

def cmd_unlock(args: argparse.Namespace) -> int:
    """Break the cluster's run lock when its holder is gone (stale heartbeat, or a dead process of this machine)."""
    from .core import install as inst
    from .core import runlock
    from .core.logs import setup_file_logging

    settings = load_answers(args, required=True)
    interactive = sys.stdin.isatty() and not args.yes
    if not args.yes and not interactive:
        raise BadInput("not a terminal: pass --yes to break the cluster's run lock without a question")
    setup_file_logging(args.workdir, "unlock")
    try:
        run = inst.prepare(args.workdir, settings, PlainPrinter(), _terminal_prompt if interactive else None)
    except (inv.InventoryError, creds.CredentialsError) as exc:
        raise BadInput(str(exc)) from None
    pool = runlock.lock_pool(run.ctx.pool)
    try:
        hosts = run.ctx.db_hosts
        states = runlock.inspect(pool, hosts)
        for state in states:
            what = {runlock.FREE: "no run lock", runlock.ERROR: f"not checked: {state.error}"}.get(state.status, "")
            if state.status == runlock.HELD and state.holder is not None:
                what = f"held by {state.holder.describe()}, heartbeat {runlock.age_text(state.age)} ago"
            print(f"  {state.host:<16} {what}")
        found = runlock.holdings(states)
        if not found:
            print("No run lock on the cluster's reachable DB nodes: nothing to break.")
            return EXIT_OK
        alive = [holding for holding in found if not holding.gone and not holding.stale()]
        for holding in alive:
            print(f"kbpg: not broken: {holding.holder.describe()} holds the cluster's run lock and its heartbeat is "
                  f"{runlock.age_text(holding.age)} old (on {holding.hosts_text()}): that run is alive. A lock is broken "
                  f"only once its heartbeat is over {runlock.STALE_SECONDS:.0f} s old, or its process (on this machine) "
                  "has ended.", file=sys.stderr)
        if alive:
            return EXIT_BUSY
        status = EXIT_OK
        for holding in found:
            why = ("its process is no longer running on this machine" if holding.gone
                   else f"its heartbeat stopped {runlock.age_text(holding.age)} ago")
            print(f"Run lock of {holding.holder.describe()}: {why} (on {holding.hosts_text()}).")
            if interactive and input("Break it? [y/N] ").strip().lower() not in ("y", "yes"):
                print("Not broken.")
                return EXIT_OK
            results = runlock.break_lock(pool, hosts, holding)
            removed = [state.host for state in results if state.status == runlock.REMOVED]
            print(f"Broken on {', '.join(removed) or 'no node'}.")
            for state in results:
                if state.status == runlock.HELD and state.holder is not None:
                    status = EXIT_BUSY
                    print(f"  {state.host}: left alone: taken meanwhile by {state.holder.describe()}")
                elif state.status == runlock.ERROR:
                    status = EXIT_FAILED
                    print(f"  {state.host}: not broken: {state.error}")
        return status
    finally:
        pool.close()
        run.close()


# --- the wizard ----------------------------------------------------------------------------

def cmd_wizard(args: argparse.Namespace, start: str = "welcome") -> int:
    if not sys.stdin.isatty() or not sys.stdout.isatty():
        raise BadInput("the wizard needs a terminal; for scripts use `kbpg install --yes` or `kbpg diagnose --json`")
    from .core.logs import setup_file_logging
    from .ui.app import KbpgApp

    args.workdir.mkdir(parents=True, exist_ok=True)
    setup_file_logging(args.workdir, "wizard")
    KbpgApp(args.workdir, start=start).run()
    return EXIT_OK


# --- diagnose ------------------------------------------------------------------------------

def cmd_diagnose(args: argparse.Namespace) -> int:
    from .core import install as inst
    from .core.diagnostics import Diagnostics, write_reports
    from .core.logs import setup_file_logging

    if not (math.isfinite(args.timeout) and 0 < args.timeout <= MAX_PROBE_TIMEOUT):
        raise BadInput(f"diagnose --timeout: must be a number of seconds above 0 and at most {MAX_PROBE_TIMEOUT} "
                       f"(got {args.timeout:g})")
    settings = load_answers(args, required=True)
    env_path = args.workdir / creds.ENV_FILE
    if not env_path.exists():
        raise BadInput(f"{env_path}: not found; diagnostics need the cluster's credentials")
    values = _read_existing(env_path)
    needed = dict.fromkeys((*creds.REQUIRED_NAMES, *creds.USER_NAMES, *creds.PASSWORD_NAMES))
    missing = [name for name in needed if values is None or name not in values]
    if missing:
        added = [name for name in missing if name in creds.ADDITIVE_NAMES]
        raise BadInput(f"{env_path}: lacks {', '.join(missing)}; diagnostics need the values the cluster was "
                       "installed with" + ("" if len(added) < len(missing) else
                                           " (names a newer kbpg adds: run `kbpg install` once to add them)"))
    if not args.no_tui and not args.json:
        return cmd_wizard(args, start="diagnostics")
    setup_file_logging(args.workdir, "diagnose")
    try:
        run = inst.prepare(args.workdir, settings, lambda event: None)
    except inv.InventoryError as exc:
        raise BadInput(str(exc)) from None
    try:
        report = Diagnostics(run.ctx, timeout=args.timeout).run()
    finally:
        run.close()
    markdown_path, json_path = write_reports(args.workdir, report)
    if args.json:
        print(json.dumps({**report.to_dict(), "report": str(markdown_path)}, indent=2, ensure_ascii=False))
    else:
        print(f"{'#':>2}  {'check':<22} {'target':<24} {'verdict':<7} {'time':>6}  reason")
        for r in report.results:
            print(f"{r.number:>2}  {r.check:<22} {r.target[:24]:<24} {r.verdict.value.upper():<7} {r.duration:5.2f}s  {r.reason}")
        counts = report.counts()
        print(f"\n{counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail in {report.elapsed:.2f}s "
              f"(slowest check {report.slowest:.2f}s). Report: {markdown_path}")
    return EXIT_FAILED if report.failed else EXIT_OK


# --- answers file -----------------------------------------------------------------------

def cmd_answers_check(args: argparse.Namespace) -> int:
    path = _answers_path(args)
    try:
        settings = cfg.load_settings(path)
    except cfg.SettingsError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_INPUT
    for warning in cfg.settings_warnings(settings):
        print(f"{path}: warning: {warning} (install asks to confirm it; --yes needs --allow-wide-subnet)",
              file=sys.stderr)
    for note in cfg.settings_notes(settings):
        print(f"{path}: note: {note}", file=sys.stderr)
    print(f"{path}: valid")
    return EXIT_OK


def cmd_answers_init(args: argparse.Namespace) -> int:
    path = _answers_path(args)
    if path.exists():
        print(f"{path}: already exists; left as it is.")
        return EXIT_OK
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        cfg.save_settings(cfg.Settings(), path)
    except OSError as exc:
        raise BadInput(f"{path}: cannot write: {exc.strerror or exc}") from None
    print(f"{path}: written with the defaults.")
    return EXIT_OK


# --- parser ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kbpg",
        description="Install and check a highly available PostgreSQL cluster (Patroni/Raft, HAProxy, "
        "PgBouncer, pgvector) on your own servers over SSH.",
    )
    parser.add_argument("--version", action="version", version=f"kbpg {__version__}")
    parser.add_argument(
        "--workdir", type=Path, default=None,
        help="where kbpg.toml, credentials/, logs/ and known_hosts live (default: the current directory); "
        f"it must be an existing directory, except for {', '.join(CREATES_WORKDIR)}, which create it, "
        "and lab down/status, which take any",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser("inventory", help="show the nodes servers.tsv selects, or every error in it")
    p.add_argument("path", nargs="?", help="servers.tsv (default: inventory.path of kbpg.toml, or ./servers.tsv)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--answers", help="kbpg.toml holding the selection rules (default: WORKDIR/kbpg.toml)")
    p.set_defaults(handler=cmd_inventory)

    p = commands.add_parser("credentials", help="write credentials/postgres.env")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    g = sub.add_parser("generate", help="generate every missing value; never replaces an existing one")
    g.set_defaults(handler=cmd_credentials_generate)
    e = sub.add_parser("export", help="(re)write postgres.env, optionally taking typed values from the environment")
    e.add_argument("--from-env", action="store_true",
                   help="take POSTGRES_*/PATRONI_* values present in the environment (typed passwords)")
    e.add_argument("--allow-weak", action="store_true", help="accept typed passwords the strength check calls weak")
    e.add_argument("--to", help="write to this path instead of WORKDIR/credentials/postgres.env")
    e.set_defaults(handler=cmd_credentials_export)
    from .cli_ops import add_rotate_parser  # a day-2 operation on a live cluster

    add_rotate_parser(sub)

    p = commands.add_parser("install", help="install the cluster, step by step, with plain progress output")
    p.add_argument("--answers", help="kbpg.toml to replay (default: WORKDIR/kbpg.toml)")
    p.add_argument("--yes", action="store_true", help="no questions: for unattended runs (host keys must be known or pinned)")
    p.add_argument("--step", action="append", metavar="NN",
                   help="run only this step (repeatable), e.g. --step 01: 00 credentials, 01 preflight, 02 patroni, "
                        "03 haproxy, 04 pgbouncer, 05 pgvector, 06 backups")
    p.add_argument("--allow-wide-subnet", action="store_true",
                   help="accept network.private_subnet or network.direct_clients wider than /16 (refused with --yes, "
                        "asked otherwise)")
    p.add_argument("--verbose", "-v", action="store_true", help="also print the hosts' command output")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when the run ends with any warning (XFS, clock, free space, pending restart...); "
                        "the work is still done, and every warning is listed in the summary either way")
    p.set_defaults(handler=cmd_install)

    p = commands.add_parser("unlock", help="break the cluster's run lock when the run holding it is gone")
    p.add_argument("--answers", help="kbpg.toml (default: WORKDIR/kbpg.toml)")
    p.add_argument("--yes", action="store_true", help="break it without asking (only a stale or dead holder's)")
    p.set_defaults(handler=cmd_unlock)

    p = commands.add_parser("diagnose", help="probe the cluster: every check (19) in parallel, a report, exit 1 on any failure")
    p.add_argument("--answers", help="kbpg.toml (default: WORKDIR/kbpg.toml)")
    p.add_argument("--no-tui", action="store_true", help="print a table instead of opening the diagnostics panel")
    p.add_argument("--json", action="store_true", help="print a machine-readable report")
    p.add_argument("--timeout", type=float, default=8.0,
                   help=f"seconds each probe may wait for an answer (default 8, at most {MAX_PROBE_TIMEOUT})")
    p.set_defaults(handler=cmd_diagnose)

    p = commands.add_parser("answers", help="the kbpg.toml answers file")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = sub.add_parser("check", help="validate kbpg.toml; every bad key is named")
    c.add_argument("--answers", help="path (default: WORKDIR/kbpg.toml)")
    c.set_defaults(handler=cmd_answers_check)
    i = sub.add_parser("init", help="write a kbpg.toml with the defaults if there is none")
    i.add_argument("--answers", help="path (default: WORKDIR/kbpg.toml)")
    i.set_defaults(handler=cmd_answers_init)

    from .cli_ops import add_parsers  # day-2 operations: switchover, drill

    add_parsers(commands)
    from .cli_backup import add_backup_parsers  # kbpg backup now|list|check

    add_backup_parsers(commands)
    from .cli_restore import add_restore_drill_parser, add_restore_parser  # kbpg restore-drill, kbpg restore

    add_restore_drill_parser(commands)
    add_restore_parser(commands)
    from .cli_nodes import add_nodes_parser  # kbpg nodes plan

    add_nodes_parser(commands)
    _add_optional_commands(commands)
    return parser


def _add_optional_commands(commands: argparse._SubParsersAction) -> None:
    """Commands whose modules register themselves (the lab)."""
    try:
        from .core.lab.cli import add_lab_parser
    except ImportError:
        return
    add_lab_parser(commands)


def _workdir_policy(args: argparse.Namespace) -> str:
    """'create' (the command makes a missing work dir), 'any' (lab down/status) or 'existing'."""
    command, action = getattr(args, "command", None), getattr(args, "action", None)
    if command is None or (command, action) in (("answers", "init"), ("credentials", "generate")):
        return "create"
    if command == "lab":
        return "create" if getattr(args, "lab_action", None) == "up" else "any"
    return "existing"


def _check_workdir(args: argparse.Namespace) -> None:
    """Refuse a --workdir that is a file, or that does not exist for a command that does not create one."""
    workdir, policy = args.workdir, _workdir_policy(args)
    if policy == "any" or workdir.is_dir():
        return
    if workdir.exists():
        raise BadInput(f"--workdir {workdir}: not a directory")
    if policy == "existing":
        raise BadInput(f"--workdir {workdir}: no such directory (only {', '.join(CREATES_WORKDIR)} create one)")
    parent = next((p for p in workdir.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise BadInput(f"--workdir {workdir}: cannot be created: {parent} is not a directory")


def _one_line(text: str) -> str:
    from .core.logs import redact

    return " ".join(redact(text).split())[:500]


def _unexpected(args: argparse.Namespace, exc: BaseException) -> int:
    """An error no command expected: one line on stderr, the traceback only in the log (redacted)."""
    import logging

    from .core.logs import current_log_path, setup_file_logging

    log_path = current_log_path()
    workdir = getattr(args, "workdir", None)
    if log_path is None and isinstance(workdir, Path):
        try:
            if workdir.is_dir():
                log_path = setup_file_logging(workdir, "error")
        except Exception:  # the log is a courtesy: never let it hide the error itself
            log_path = None
    if log_path is not None:
        logging.getLogger("kbpg").error("unexpected error in `kbpg %s`", getattr(args, "command", None) or "",
                                        exc_info=exc)
    if isinstance(exc, RecursionError):
        what = "input nested too deeply to handle"
    elif isinstance(exc, MemoryError):
        what = "out of memory"
    elif isinstance(exc, OSError):
        target = " ".join(f"{name}" for name in (exc.filename, exc.filename2) if name is not None)
        what = f"{exc.strerror or type(exc).__name__}{': ' + target if target else ''}"
    else:
        what = f"{type(exc).__name__}: {exc}"
    where = f"traceback in {log_path}" if log_path is not None else "no log written"
    print(f"kbpg: error: {_one_line(what)} ({where})", file=sys.stderr)
    return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        handler = cmd_wizard
    try:
        try:
            args.workdir = (args.workdir or Path.cwd()).expanduser().resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop, a current directory that was removed
            raise BadInput(f"--workdir {args.workdir or '.'}: cannot be resolved ({_one_line(str(exc))})") from None
        _check_workdir(args)
        return handler(args)
    except BadInput as exc:
        print(f"kbpg: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except creds.CredentialsError as exc:
        print(f"kbpg: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (cfg.SettingsError, inv.InventoryError, InputFileError) as exc:
        print(f"kbpg: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("kbpg: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `kbpg ... | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # OSError, RecursionError, UnicodeError, MemoryError...: one line, never a traceback
        return _unexpected(args, exc)


if __name__ == "__main__":
    sys.exit(main())
