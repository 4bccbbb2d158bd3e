"""Small helpers shared by the screens."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


def show(widget: Static, text: str) -> None:
    """Set a message line's text, and hide the line while it is empty (no blank gaps at 80×24).

    The text is shown as it is, never read as markup: error lines quote the operator's files, and
    "[network]" or "[/]" in them must neither vanish nor break the screen.
    """
    widget.update(Text(text))
    widget.display = bool(text)
