"""Small helpers shared by the screens."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..core import credentials as creds


def show(widget: Static, text: str) -> None:
    """Set a message line's text, and hide the line while it is empty (no blank gaps at 80×24).

    The text is shown as it is, never read as markup: error lines quote the operator's files, and
    "[network]" or "[/]" in them must neither vanish nor break the screen.
    """
    widget.update(Text(text))
    widget.display = bool(text)


def strength_text(name: str, value: str | None) -> str:
    """A value's strength as the credentials and rotation screens show it ("strong (~160 bits)"); never the value."""
    if value is None:
        return "missing"
    if not creds.is_secret_name(name):
        return ""
    strength = creds.password_strength(value)
    return f"{strength.label} (~{strength.bits:.0f} bits)"


def weakness(name: str, value: str) -> str | None:
    """Why a typed secret is weak ("; "-joined reasons), or None: a weak value is kept only once confirmed."""
    if not creds.is_secret_name(name):
        return None
    strength = creds.password_strength(value)
    if not strength.weak:
        return None
    return "; ".join(strength.reasons) or "weak"


def backup_plan(settings, selection) -> tuple[str, list[str]]:
    """Where the backups go, as the plan and summary screens say it: (the backup host as "backup-01 (198.18.0.153)",
    or why there are none), and the schedule and retention of kbpg.toml's [backup] (empty when there are none)."""
    from ..core import inventory as inv

    if selection is None:
        return "? (servers.tsv has errors: see Hosts)", []
    hosts = tuple(getattr(selection, "backup_nodes", ()) or ())
    if not hosts:
        rule = inv.rule_text(settings.inventory.backup_rule)
        return f"none selected: backups are not set up (no row of servers.tsv matches {rule})", []
    host = f"{hosts[0].hostname} ({hosts[0].ip_private})"
    backup = settings.backup
    if not backup.enabled:
        return f"off: [backup] enabled = false in kbpg.toml ({host} selected, unused)", []
    return host, [f"Backup schedule: full {backup.full_schedule}, differential {backup.diff_schedule}",
                  f"Backups kept: {backup.retention_full} full, {backup.retention_diff} differential; WAL archived "
                  f"continuously (archive_timeout {backup.archive_timeout} s)"]
