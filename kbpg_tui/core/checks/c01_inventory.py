"""1. servers.tsv still selects the nodes this run works on, without errors."""

from __future__ import annotations

from ..files import resolve
from ..inventory import InventoryError, load_selection
from .base import Check, CheckFailed, CheckWarning, once
from .probe import ProbeContext


def inventory(p: ProbeContext) -> str:
    settings = p.settings
    path = resolve(p.ctx.workdir, settings.inventory.path)
    try:
        selection = load_selection(path, settings.inventory.db_rule, settings.inventory.haproxy_rule,
                                   settings.inventory.backup_rule)
    except InventoryError as exc:
        raise CheckFailed(f"{len(exc.errors)} error(s): " + exc.errors[0].render(exc.source)) from None
    now = [s.hostname for s in selection.every_node]
    then = [s.hostname for s in getattr(p.ctx.selection, "every_node", p.ctx.selection.all_nodes)]
    if now != then:
        raise CheckFailed(f"selection changed since this run started: {', '.join(now)}")
    if selection.warnings:
        raise CheckWarning(selection.warnings[0].render(selection.source))
    return f"{len(selection.db_nodes)} DB + {len(selection.haproxy_nodes)} HAProxy nodes, addresses unique"


CHECK = Check(1, "inventory", once("servers.tsv", inventory))
