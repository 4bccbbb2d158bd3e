"""Local file writes that never leave a half-written or over-readable file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def resolve(workdir: Path, relative: str | Path) -> Path:
    """A path from kbpg.toml: absolute as written, else relative to the work directory (``~`` expanded)."""
    path = Path(relative).expanduser()
    return path if path.is_absolute() else Path(workdir) / path


def atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` through a temp file created with ``mode`` in the same directory, then rename."""
    path = Path(path)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # mkstemp creates 0600; set the final mode before any byte is written
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
