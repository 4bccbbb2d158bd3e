"""Small helpers shared by the screens."""

from __future__ import annotations

from textual.widgets import Static


def show(widget: Static, text: str) -> None:
    """Set a message line's text, and hide the line while it is empty (no blank gaps at 80×24)."""
    widget.update(text)
    widget.display = bool(text)
