"""Small helpers shared by the lab modules: commands, mounts, progress, atomic files."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Callable, Iterable, Sequence

from kbpg_tui.core.events import Event, Level, Message, Progress

ProgressSink = Callable[[Event], None]


class LabError(Exception):
    """The lab cannot do what was asked; the message says why and what to do.

    ``exit_code`` is what the CLI exits with: 2 for "cannot run here" (not root,
    missing tool, no namespaces), 1 for a failure while doing the work.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def no_progress(_event: Event) -> None:
    """A progress sink that drops everything."""


class Reporter:
    """Wraps an event sink with the two kinds of event the lab sends."""

    def __init__(self, sink: ProgressSink | None) -> None:
        self._sink = sink or no_progress

    def progress(self, text: str, fraction: float | None = None) -> None:
        self._sink(Progress(text, fraction))

    def info(self, text: str) -> None:
        self._sink(Message(Level.INFO, text))

    def warning(self, text: str) -> None:
        self._sink(Message(Level.WARNING, text))


def run(
    argv: Sequence[str | os.PathLike],
    *,
    check: bool = True,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    input_text: str | None = None,
    what: str | None = None,
) -> subprocess.CompletedProcess:
    """Run a command, capturing its output; on failure raise LabError with the tail of its stderr."""
    args = [str(arg) for arg in argv]
    try:
        result = subprocess.run(
            args,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise LabError(f"{what or args[0]}: command not found ({exc.filename})", 2) from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{what or ' '.join(args[:3])}: timed out after {timeout:.0f} s") from exc
    if check and result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout or "").strip().splitlines()[-15:])
        raise LabError(f"{what or ' '.join(args[:4])} failed (exit {result.returncode}):\n{tail}")
    return result


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace, deepest first."""
    prefix = str(path.resolve() if path.exists() else path)
    found = []
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) < 2:
                continue
            target = fields[1].replace("\\040", " ")
            if target == prefix or target.startswith(prefix.rstrip("/") + "/"):
                found.append(target)
    return sorted(set(found), key=lambda target: target.count("/"), reverse=True)


def unmount_all_under(path: Path) -> None:
    """Unmount everything mounted at or below ``path`` (lazily if busy)."""
    for _attempt in range(3):
        targets = mounts_under(path)
        if not targets:
            return
        for target in targets:
            if subprocess.run(["umount", target], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", target], capture_output=True)
    if mounts_under(path):
        raise LabError(f"cannot unmount everything under {path}: {', '.join(mounts_under(path))}")


def remove_tree(path: Path) -> None:
    """Delete a directory tree, never crossing into a mount (a chroot's /proc, a bind-mounted repo)."""
    if not path.exists() and not path.is_symlink():
        return
    unmount_all_under(path)
    shutil.rmtree(path, ignore_errors=False)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def read_list_file(path: Path | Traversable) -> list[str]:
    """Non-blank, non-comment lines of a recipe list file."""
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            items.append(line)
    return items


def which_all(names: Iterable[str], search_path: str | None = None) -> list[str]:
    """The names in ``names`` not found on ``search_path`` (default: PATH plus the sbin directories)."""
    if search_path is None:
        search_path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin"
    return [name for name in names if shutil.which(name, path=search_path) is None]
