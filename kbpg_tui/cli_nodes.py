"""``kbpg nodes plan``: servers.tsv against the running cluster (kbpg_tui.core.nodes), read only; ``kbpg nodes
apply``: the same plan carried out (kbpg_tui.core.ops.nodes_apply).

plan — exit 0: nothing to do; 1: changes planned (the steps printed); 2: bad input (kbpg.toml, servers.tsv,
postgres.env) or a plan refused (each reason printed). It takes no lock and changes nothing.
apply — exit 0: done (or nothing to do), servers.tsv and the cluster agree; 1: a step failed (named; run it again:
the plan is made anew from the cluster); 2: bad input or a plan refused; 3: another kbpg run holds the cluster;
130: interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys

from .cli import EXIT_FAILED, EXIT_OK, PlainPrinter
from .cli_ops import EXIT_BAD_INPUT, _ask, _prepared, _take_lock


def _state(node) -> str:  # noqa: ANN001 (a nodes.DbNode)
    partners = ", ".join(f"{address}{'' if state == 2 else ' (not connected)'}"
                         for address, state in sorted(node.raft_partners.items()))
    return (f"  {node.name:<16} servers.tsv {node.tsv_address or '-':<15} patroni {node.patroni_address or '-':<15} "
            f"{node.role or '-':<12} raft {node.raft_self or '-'}" + (f" partners {partners}" if partners else "")
            + ("" if node.reachable else f"  NOT ANSWERING ({node.detail})" if node.detail else "  NOT ANSWERING"))


def cmd_nodes_plan(args: argparse.Namespace) -> int:
    from .core import nodes

    args.command = "nodes plan"  # named by _prepared's refusals
    printer = PlainPrinter(stream=sys.stderr)
    run, _interactive = _prepared(args, "nodes", printer)
    try:
        membership = nodes.read_membership(run.ctx)
        result = nodes.plan(run.ctx.selection, membership)
    finally:
        printer.close()
        run.close()
    if args.json:
        print(json.dumps({"membership": membership.to_dict(), "plan": result.to_dict()}, indent=2,
                         ensure_ascii=False))
    else:
        print_plan(membership, result)
    for reason in result.refused:
        print(f"kbpg nodes plan: refused: {reason}", file=sys.stderr)
    if result.refused:
        return EXIT_BAD_INPUT
    return EXIT_FAILED if result.changes else EXIT_OK


def print_plan(membership, result, file=None) -> None:  # noqa: ANN001 (nodes.Membership, nodes.Plan, a stream)
    from .core import nodes

    print(f"Raft members ({len(membership.raft_members)}): {', '.join(membership.raft_members) or 'unknown'}; "
          f"answering: {', '.join(membership.raft_reachable) or 'none'}", file=file)
    for node in membership.db:
        print(_state(node), file=file)
    if membership.haproxy_admitted is not None:
        print(f"HAProxy nodes pg_hba admits: {', '.join(membership.haproxy_admitted) or 'none'}", file=file)
    for line in nodes.describe(result):
        if not line.startswith("refused: "):
            print(line, file=file)


def cmd_nodes_apply(args: argparse.Namespace) -> int:
    from .core import nodes
    from .core.ops import nodes_apply

    args.command = "nodes apply"  # named by _prepared's refusals
    out = sys.stderr if args.json else sys.stdout  # with --json, stdout holds the JSON alone
    printer = PlainPrinter(stream=out)
    run, interactive = _prepared(args, "nodes", printer)
    result = None
    try:
        membership = nodes.read_membership(run.ctx)
        plan = nodes.plan(run.ctx.selection, membership)
        print_plan(membership, plan, file=out)
        for reason in plan.refused:
            print(f"kbpg nodes apply: refused: {reason}", file=sys.stderr)
        if plan.refused:
            if args.json:
                print(json.dumps({"ok": False, "refused": plan.refused, "actions": [], "plan": plan.to_dict()},
                                 indent=2, ensure_ascii=False))
            return EXIT_BAD_INPUT
        finishing = not plan.changes and nodes_apply.pending(args.workdir)
        if finishing:
            print(f"A `kbpg nodes apply` did not finish ({args.workdir / nodes_apply.PENDING_FILE}): the install's "
                  "steps on the new set of nodes run again.", file=out)
        elif not plan.changes:
            if args.json:
                print(json.dumps({"ok": True, "actions": [], "plan": plan.to_dict()}, indent=2, ensure_ascii=False))
            return EXIT_OK
        if interactive and not _ask(f"Carry out these {len(plan.actions)} steps on the live cluster?" if not finishing
                                    else "Run the install's steps on the new set of nodes?"):
            print("Nothing done.")
            return EXIT_OK
        result, code = locked_apply(run, membership, plan, "kbpg nodes apply")
        if result is None:
            return code
    finally:
        printer.close()
        run.close()
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    for line in nodes_apply.summary_lines(result):
        print(line, file=out)
    return code


def locked_apply(run, membership, plan, command: str):  # noqa: ANN001, ANN201 (a Run, nodes.Membership, nodes.Plan)
    """The plan carried out under the cluster's run lock, Ctrl-C cancelling it: (the ApplyResult, the exit status),
    or (None, the exit status) when the lock could not be taken (said already)."""
    from .cli import EXIT_INTERRUPTED, _cancel_on_sigint
    from .core import nodes
    from .core.ops import nodes_apply

    lock, code = _take_lock(run, command)
    if lock is None:
        return None, code
    interrupted = _cancel_on_sigint(run.ctx.cancel)
    try:
        # The plan shown may have waited for a yes; under the lock, the cluster is read again: a failover meanwhile
        # (a replica to remove that now leads) or another change is not carried out from a stale plan.
        membership_now = nodes.read_membership(run.ctx)
        plan_now = nodes.plan(run.ctx.selection, membership_now)
        steps = [(a.kind, a.node, a.address) for a in plan.actions]
        if [(a.kind, a.node, a.address) for a in plan_now.actions] != steps or plan_now.refused:
            print(f"{command}: the cluster changed since the plan was shown; nothing was done. Its plan now:",
                  file=sys.stderr)
            for line in nodes.describe(plan_now):
                print(f"  {line}", file=sys.stderr)
            return None, EXIT_BAD_INPUT if plan_now.refused else EXIT_FAILED
        result = nodes_apply.apply(run, membership_now, plan_now)
    finally:
        interrupted.restore()
        lock.release()
    if interrupted.hit and not result.ok:
        return result, EXIT_INTERRUPTED
    return result, EXIT_OK if result.ok else EXIT_FAILED


def add_nodes_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("nodes", help="DB and HAProxy nodes: what servers.tsv changes against the running cluster")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("plan", help="what differs (DB nodes to add, replace, remove; stale Raft members; HAProxy "
                                        "nodes) and the steps, one node at a time keeping Raft's quorum; exit 0 "
                                        "nothing to do, 1 changes planned, 2 refused or bad input")
    a.add_argument("--answers", help="kbpg.toml (default: WORKDIR/kbpg.toml)")
    a.add_argument("--json", action="store_true", help="the membership and the plan as JSON")
    a.set_defaults(handler=cmd_nodes_plan, yes=True)
    b = actions.add_parser("apply", help="carry out the plan on the live cluster, one node at a time (new DB nodes "
                                         "installed and joined to Raft, leaving ones stopped and removed from Raft, "
                                         "the leader's node switched over first), then the install's steps on the "
                                         "new set of nodes; asks first (or --yes)")
    b.add_argument("--answers", help="kbpg.toml (default: WORKDIR/kbpg.toml)")
    b.add_argument("--yes", action="store_true", help="no question (required without a terminal)")
    b.add_argument("--json", action="store_true", help="what was done, as JSON, at the end")
    b.set_defaults(handler=cmd_nodes_apply)


__all__ = ["add_nodes_parser", "cmd_nodes_apply", "cmd_nodes_plan", "locked_apply", "print_plan"]
