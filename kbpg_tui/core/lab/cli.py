"""`kbpg lab up | down | status | stop-host | start-host` for the plain command line.

The main CLI calls :func:`add_lab_parser` with its subparsers object; the
parsed arguments carry ``handler`` (:func:`run_lab`), which returns the exit
code. ``args.workdir`` (a Path, default the current directory) comes from the
main CLI's global ``--workdir``.

Until the main CLI exists: ``python -m kbpg_tui.core.lab.cli [--workdir DIR] lab up``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from kbpg_tui.core.events import Event, Message, Progress

from .lab import down, lab_host, start_host, status, stop_host, up
from .util import LabError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CANNOT_RUN = 2  # not root, a missing tool, no namespaces


def add_lab_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``lab up|down|status|stop-host|start-host`` on an argparse subparsers object."""
    lab = subparsers.add_parser(
        "lab",
        help="a local lab of real Debian hosts to try kbpg on",
        description="Start, stop or show the local lab: 3 DB hosts, 2 HAProxy hosts, a backup host and a cloud-LB "
        "stand-in on 198.18.0.0/24, each a namespace host with its own systemd and sshd (needs root); and spare "
        "hosts (db-spare-01, db-spare-02, haproxy-spare-01), not in servers.tsv, booted on demand.",
    )
    actions = lab.add_subparsers(dest="lab_action", metavar="{up,down,status,stop-host,start-host}", required=True)
    up_parser = actions.add_parser("up", help="build the image if needed, boot the hosts, write servers.tsv, kbpg.toml and keys")
    up_parser.add_argument("--rebuild-image", action="store_true", help="rebuild the cached host image and repository first")
    up_parser.add_argument("--with-spares", action="store_true", help="boot the spare hosts too (else: kbpg lab start-host NAME)")
    actions.add_parser("down", help="stop the hosts and remove everything the lab made on this machine")
    status_parser = actions.add_parser("status", help="list the hosts and their state")
    status_parser.add_argument("--json", action="store_true", help="machine-readable output")
    stop_parser = actions.add_parser(
        "stop-host", help="take one host down for good, as a dead server (its link cut, its processes killed)"
    )
    stop_parser.add_argument("name", metavar="NAME", help="a lab host (kbpg lab status lists them)")
    start_parser = actions.add_parser("start-host", help="boot a spare, or a stopped host again (with its disk as it was)")
    start_parser.add_argument("name", metavar="NAME", help="a lab host (kbpg lab status lists them)")
    start_parser.add_argument("--fresh", action="store_true", help="on a blank disk: a new server with the same name, address and host key")
    lab.set_defaults(handler=run_lab)
    return lab


def _printer(out: TextIO):
    """A progress sink printing plain lines; output that cannot be written (a closed pipe)
    must not abort the lab halfway through, so it is dropped."""
    broken = False

    def emit(line: str) -> None:
        nonlocal broken
        if broken:
            return
        try:
            print(line, file=out, flush=True)
        except (BrokenPipeError, OSError):
            broken = True

    def sink(event: Event) -> None:
        if isinstance(event, Progress):
            prefix = f"[{event.fraction * 100:3.0f}%] " if event.fraction is not None else "       "
            emit(prefix + event.text)
        elif isinstance(event, Message):
            label = "" if event.level.value == "info" else f"{event.level.value}: "
            emit(f"       {label}{event.text}")

    return sink


def run_lab(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Carry out ``args.lab_action``; returns the process exit code."""
    out = out or sys.stdout
    workdir = Path(getattr(args, "workdir", None) or Path.cwd())
    sink = _printer(out)
    try:
        if args.lab_action == "up":
            result = up(workdir, progress=sink, rebuild_image=getattr(args, "rebuild_image", False),
                        with_spares=getattr(args, "with_spares", False))
            print(result.render(), file=out)
            return EXIT_OK if result.up else EXIT_FAILED
        if args.lab_action in ("stop-host", "start-host"):
            lab_host(args.name)  # an unknown name is refused before anything else is looked at
            if args.lab_action == "stop-host":
                result = stop_host(args.name, progress=sink)
            else:
                result = start_host(args.name, progress=sink, fresh=getattr(args, "fresh", False))
            print(result.render(), file=out)
            return EXIT_OK if result.up else EXIT_FAILED
        if args.lab_action == "down":
            result = down(workdir, progress=sink)
            print(result.render(), file=out)
            return EXIT_OK if result.state == "down" else EXIT_FAILED
        result = status(workdir)
        if getattr(args, "json", False):
            print(json.dumps(result.to_dict(), indent=2), file=out)
        else:
            print(result.render(), file=out)
        return EXIT_OK
    except LabError as exc:
        print(f"kbpg lab {args.lab_action}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"kbpg lab {args.lab_action}: interrupted; `kbpg lab down` cleans up whatever was made", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point until the main CLI registers the lab commands."""
    parser = argparse.ArgumentParser(prog="kbpg")
    parser.add_argument("--workdir", type=Path, default=Path.cwd(), help="work directory (default: the current one)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_lab_parser(subparsers)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
