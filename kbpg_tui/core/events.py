"""Typed events the core emits while it works.

The engine never prints and never touches a screen: it hands these frozen
dataclasses to a callback. The plain CLI prints them, the TUI turns them into
Textual messages, tests collect them. One engine drives all three.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Callable, Union


class Status(str, enum.Enum):
    """Outcome of a task, a step or a check."""

    RUNNING = "running"
    CHANGED = "changed"
    UNCHANGED = "unchanged"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    def __str__(self) -> str:  # so f-strings show "changed", not "Status.CHANGED"
        return self.value


class Level(str, enum.Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


def _now() -> float:
    return time.monotonic()


@dataclass(frozen=True)
class StepStarted:
    step: str  # "02"
    title: str  # "Patroni cluster"
    hosts: tuple[str, ...] = ()
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class TaskStarted:
    step: str
    host: str
    task: str
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class OutputLine:
    """One line of a remote command's output (already redacted)."""

    step: str
    host: str
    stream: str  # "stdout" | "stderr"
    text: str
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class TaskFinished:
    step: str
    host: str
    task: str
    status: Status
    detail: str = ""
    elapsed: float = 0.0
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class StepFinished:
    step: str
    title: str
    status: Status
    changed: int = 0
    unchanged: int = 0
    failed: int = 0
    elapsed: float = 0.0
    detail: str = ""
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class HostKeyUnknown:
    """An SSH host key kbpg has never seen; the operator must accept it explicitly."""

    host: str
    address: str
    key_type: str
    fingerprint: str  # OpenSSH "SHA256:..." form
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class Progress:
    """Progress of a long piece of work that is not a step (lab build, waits)."""

    text: str
    fraction: float | None = None  # 0..1 when known
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class Message:
    level: Level
    text: str
    host: str = ""
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class HostSilent:
    """A host stopped answering on its SSH connection (keepalives unanswered) while a command runs on it.

    Emitted once when the silence passes the warning threshold (30 s) and again as it grows; the task fails
    when it passes ``ssh.silence_timeout``. ``silent_for`` is in seconds.
    """

    step: str
    host: str
    silent_for: float
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class HostAnswering:
    """A host that was reported silent answers again."""

    step: str
    host: str
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class DrillSample:
    """One second of one drill writer: writes acknowledged and failed in that second (the wizard's live chart).

    ``entry`` names the entry point ("LB:5432", "LB:6432"); ``second`` counts from the start of the round.
    """

    round: int
    entry: str
    second: int
    ok: int
    failed: int
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class DrillMark:
    """A moment of a drill round's timeline, ``offset`` seconds after the fault (negative: before it).

    ``what`` is one of: "fault", "last ack", "new leader", "first write after", "old leader streaming",
    "restored" (the stopped service started again, the cut link up again); ``entry`` is set for the
    writer-specific ones ("last ack", "first write after").
    """

    round: int
    what: str
    offset: float
    entry: str = ""
    detail: str = ""
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class DrillRoundDone:
    """A drill round is over; ``figures`` is that round's report as plain data (its JSON form)."""

    round: int
    figures: dict
    at: float = field(default_factory=_now)


Event = Union[StepStarted, TaskStarted, OutputLine, TaskFinished, StepFinished, HostKeyUnknown, Progress, Message,
              HostSilent, HostAnswering, DrillSample, DrillMark, DrillRoundDone]
EventSink = Callable[[Event], None]


def discard(_event: Event) -> None:
    """An event sink that drops everything."""


class EventCollector:
    """An event sink that keeps every event (tests, reports)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of_type(self, kind: type) -> list:
        return [event for event in self.events if isinstance(event, kind)]
