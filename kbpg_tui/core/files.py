"""Local files: writes that never leave a half-written or over-readable file, and reads of the
operator's small input files (kbpg.toml, servers.tsv) that never block, hang or exhaust memory."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

MAX_INPUT_BYTES = 1 << 20  # kbpg.toml and servers.tsv are a few KiB; anything over 1 MiB is not one of them


class InputFileError(Exception):
    """A local input file kbpg refuses to read; ``reason`` is one line that does not repeat the path."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def read_input_file(path: str | Path, limit: int = MAX_INPUT_BYTES, what: str = "file") -> bytes:
    """The bytes of a small regular file, or :class:`InputFileError` naming why not.

    Refused without blocking or reading far: a missing file, a directory, a FIFO, a device or
    socket (opened non-blocking, checked with fstat on the opened descriptor), a file over
    ``limit`` bytes (checked before reading, and again while reading in case it grows).
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise InputFileError(path, "file not found") from None
    except IsADirectoryError:
        raise InputFileError(path, f"is a directory, not a {what}") from None
    except NotADirectoryError:
        raise InputFileError(path, "a parent of this path is not a directory") from None
    except OSError as exc:
        raise InputFileError(path, f"cannot open: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise InputFileError(path, f"is a directory, not a {what}")
        for test, kind in _KINDS:
            if test(info.st_mode):
                raise InputFileError(path, f"is {kind}, not a regular {what}")
        if not stat.S_ISREG(info.st_mode):
            raise InputFileError(path, f"is not a regular {what}")
        if info.st_size > limit:
            raise InputFileError(path, f"is {info.st_size} bytes: too large for a {what} (at most {limit} bytes)")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise InputFileError(path, f"is over {limit} bytes: too large for a {what}")
        return b"".join(chunks)
    except OSError as exc:
        raise InputFileError(path, f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


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


def write_report_pair(workdir: Path, name: str, markdown: str, data: dict) -> tuple[Path, Path]:
    """``workdir/reports/<name>.md`` and ``.json`` (the directory 0700, the files 0644, written atomically)."""
    import json

    directory = Path(workdir) / "reports"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    markdown_path, json_path = directory / f"{name}.md", directory / f"{name}.json"
    atomic_write(markdown_path, markdown.encode("utf-8"), mode=0o644)
    atomic_write(json_path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"), mode=0o644)
    return markdown_path, json_path
