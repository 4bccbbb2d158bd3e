"""File logging with secret redaction.

Logs always go to files under the work directory's ``logs/`` (stdout belongs to
the TUI). Every secret kbpg knows is registered with :func:`register_secret`;
the log filter replaces it before a record is written, whatever logger wrote it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from pathlib import Path

REDACTED = "********"
_MIN_SECRET_LENGTH = 4  # shorter values would blank out ordinary words

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret so that it never reaches a log file."""
    if value and len(value) >= _MIN_SECRET_LENGTH:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """Return ``text`` with every registered secret replaced."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)  # longest first: one secret may contain another
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_event(event):
    """An event (a frozen dataclass, see events.py) with every registered secret redacted from its texts."""
    changes = {}
    for item in dataclasses.fields(event):
        value = getattr(event, item.name)
        if isinstance(value, str):
            clean = redact(value)
            if clean != value:
                changes[item.name] = clean
    return dataclasses.replace(event, **changes) if changes else event


def redacting_sink(sink):
    """An event sink that redacts every event's texts, whole, before handing it on (screens cut them later)."""
    if getattr(sink, "_kbpg_redacting", False):
        return sink

    def redacting(event) -> None:
        sink(redact_event(event))

    redacting._kbpg_redacting = True  # type: ignore[attr-defined]
    return redacting


class RedactingFilter(logging.Filter):
    """Renders the record's message once, redacted, so no handler sees the raw text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def setup_file_logging(workdir: Path, name: str = "kbpg") -> Path:
    """Send the ``kbpg`` logger to a new file in ``workdir/logs`` (dir 0700, file 0600).

    Returns the log file's path.
    """
    logs_dir = Path(workdir) / "logs"
    logs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = logs_dir / f"{name}-{stamp}-{os.getpid()}.log"
    # Created 0600 before the first byte is written.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    stream = os.fdopen(fd, "a", encoding="utf-8")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("kbpg")
    logger.setLevel(logging.DEBUG)
    for old in list(logger.handlers):
        if getattr(old, "_kbpg_file", False):
            logger.removeHandler(old)
            old.close()
    handler._kbpg_file = True  # type: ignore[attr-defined]
    handler._kbpg_path = path  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False
    return path


def current_log_path() -> Path | None:
    """The file :func:`setup_file_logging` last opened in this process, if any."""
    for handler in logging.getLogger("kbpg").handlers:
        if getattr(handler, "_kbpg_file", False):
            return getattr(handler, "_kbpg_path", None)
    return None
