"""Shared test fakes: a connection and a pool that look like kbpg's (kbpg_tui.core.ssh) to the code under test.

- :class:`ScriptedConnection` answers each ``run`` with a function of (script, stdin): canned results,
  or anything a test wants to check or provoke; every call is recorded.
- :class:`LocalShellConnection` runs the script for real with the local bash, after rewriting the
  remote paths it names to a directory of the test's (``paths``): the real shell scripts of a module
  run, with no host.
- :class:`FakePool` hands out one connection per host name; a host mapped to an exception is
  "down" (``get`` raises it, as ConnectionPool.get raises SshError).
- :class:`HostKeyPool` stands in for a ConnectionPool (same constructor) whose hosts all present an
  unknown host key: ``get`` asks the prompt, as the real pool's host-key policy does.
- :class:`SlowWork` is work that takes long unless cancelled (a long install, a probe that hangs), and
  records when it saw its cancel event.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

from kbpg_tui.core.events import HostKeyUnknown
from kbpg_tui.core.ssh import Host, HostKeyError, RemoteCommandError, Result, SshError

Handler = Callable[[str, bytes], Result]


def result(stdout: str = "", exit_status: int = 0, stderr: str = "", command: str = "") -> Result:
    return Result(command, exit_status, stdout, stderr, 0.0)


class ScriptedConnection:
    """A connection whose commands are answered by ``handler(script, stdin)``."""

    def __init__(self, host: Host, handler: Handler):
        self.host = host
        self.handler = handler
        self.calls: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()

    def connect(self) -> "ScriptedConnection":
        return self

    def run(self, script: str, stdin: bytes | str | None = None, timeout: float | None = None,
            on_line: Callable[[str, str], None] | None = None, check: bool = True, what: str = "") -> Result:
        data = stdin.encode() if isinstance(stdin, str) else (stdin or b"")
        with self._lock:
            self.calls.append((script, data))
        outcome = self.handler(script, data)
        outcome.command = script
        if on_line is not None:
            for line in outcome.stdout.splitlines():
                on_line("stdout", line)
        if check and not outcome.ok:
            raise RemoteCommandError(self.host, outcome, what)
        return outcome

    def close(self) -> None:
        pass


class LocalShellConnection(ScriptedConnection):
    """Runs each script with the local bash; ``paths`` maps remote paths to local ones (rewritten in the script)."""

    def __init__(self, host: Host, paths: Mapping[str, str | Path], timeout: float = 30):
        super().__init__(host, self._bash)
        self.paths = {remote: str(local) for remote, local in paths.items()}
        self.timeout = timeout

    def _bash(self, script: str, stdin: bytes) -> Result:
        for remote, local in self.paths.items():
            script = script.replace(remote, local)
        started = time.monotonic()
        done = subprocess.run(["bash", "-c", "set -o pipefail; " + script], input=stdin, capture_output=True,
                              timeout=self.timeout)
        return Result(script, done.returncode, done.stdout.decode(errors="replace"),
                      done.stderr.decode(errors="replace"), time.monotonic() - started)


class FakePool:
    """One connection per host name; an exception instead of a connection makes ``get`` raise it (a host down)."""

    def __init__(self, connections: Mapping[str, ScriptedConnection | Exception] | None = None):
        self.connections: dict[str, ScriptedConnection | Exception] = dict(connections or {})
        self.gets: list[str] = []
        self.closed = 0

    def get(self, host: Host) -> ScriptedConnection:
        self.gets.append(host.name)
        connection = self.connections.get(host.name)
        if connection is None:
            raise SshError(f"{host.name} ({host.address}): no fake connection for this host")
        if isinstance(connection, Exception):
            raise connection
        return connection

    def close(self) -> None:
        self.closed += 1


def local_shell_pool(root: Path, hosts: list[Host], remote_dirs: list[str]) -> FakePool:
    """A pool of :class:`LocalShellConnection`, one per host, each with its own copy of ``remote_dirs`` under
    ``root/<host name>/`` (e.g. /var/lib/kbpg -> root/db-1/var/lib/kbpg): hosts with their own filesystems."""
    connections: dict[str, ScriptedConnection | Exception] = {}
    for host in hosts:
        base = root / host.name
        base.mkdir(parents=True, exist_ok=True)
        connections[host.name] = LocalShellConnection(host, {d: base / d.lstrip("/") for d in remote_dirs})
    return FakePool(connections)


class HostKeyPool(FakePool):
    """A ConnectionPool (same constructor, so a test can put it in its place) whose every host presents a key
    kbpg has never seen: ``get`` asks ``prompt``, one host at a time as the real pool does, and raises
    HostKeyError on a "no", as the real policy does. ``answers`` records (host, answer); an accepted host
    answers every command with ``handler``."""

    FINGERPRINT = "SHA256:" + "k" * 43

    def __init__(self, options=None, known_hosts=None, sink=None, prompt=None, sudo_passwords=None,  # noqa: ANN001
                 cancel: threading.Event | None = None, handler: Handler | None = None):
        super().__init__()
        self.prompt, self.cancel = prompt, cancel
        self.handler: Handler = handler or (lambda script, stdin: result("root\n"))
        self.answers: list[tuple[str, bool]] = []
        self._prompt_lock = threading.Lock()

    def get(self, host: Host) -> ScriptedConnection:
        self.gets.append(host.name)
        with self._prompt_lock:
            accepted = bool(self.prompt and self.prompt(HostKeyUnknown(host.name, host.address, "ssh-ed25519",
                                                                        self.FINGERPRINT)))
        self.answers.append((host.name, accepted))
        if not accepted:
            raise HostKeyError(f"{host.name} ({host.address}): host key declined by the operator ({self.FINGERPRINT})")
        connection = ScriptedConnection(host, self.handler)
        connection.sudo_mode = "root"  # type: ignore[attr-defined]
        return connection


class SlowWork:
    """Work that takes ``seconds`` unless its cancel event is set first (``wait(cancel)``): ``started`` is set
    when it begins, ``cancelled_at`` (time.monotonic) when it saw the cancel, None if it never did."""

    def __init__(self, seconds: float = 30.0):
        self.seconds = seconds
        self.started = threading.Event()
        self.cancelled_at: float | None = None

    def wait(self, cancel: threading.Event) -> bool:
        self.started.set()
        if cancel.wait(self.seconds):
            self.cancelled_at = time.monotonic()
            return True
        return False
