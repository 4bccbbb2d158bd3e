"""The Textual wizard: a thin layer over the core. Blocking work runs in thread workers that only post messages."""
