"""Remote execution over SSH (paramiko), done carefully.

- Host keys: kbpg keeps its own known_hosts. An unknown key is accepted only by
  an explicit yes from the operator (a callback the UI answers) or because it is
  pinned in kbpg.toml; a changed key is always refused. Never ``AutoAddPolicy``.
- Connect, banner and auth timeouts; a timeout per command. A host that stops answering
  (keepalive requests with a reply, every few seconds) is reported after 30 s and its
  command abandoned after ``ssh.silence_timeout``, instead of waiting out the command timeout.
- Output is streamed while the command runs, decoded incrementally (a UTF-8
  character split across two packets is never mangled), and the exit status is
  read last, after the channel is drained.
- Non-root users go through ``sudo``: passwordless when the host allows it, else
  ``sudo -S`` with the password on stdin (never in argv), sent only when sudo's own
  prompt shows, and the command's stdin only once the command has started (so a
  sudo that does not ask never passes the password on to the command), and a clear
  error when the password is wrong.
- Secrets reach hosts through stdin or uploaded files only.
- Every command run is written to the log (redacted), with its exit status and time.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import logging
import os
import shlex
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import paramiko
from paramiko.hostkeys import InvalidHostKey

from .events import EventSink, HostAnswering, HostKeyUnknown, HostSilent, OutputLine
from .files import atomic_write
from .logs import redact

log = logging.getLogger("kbpg.ssh")

KEEPALIVE_SECONDS = 15
PROBE_SECONDS = 5.0  # a keepalive request the host must answer, this often, to know it still does
SILENCE_WARNING_SECONDS = 30.0  # a host silent this long is reported (HostSilent), and again each time as long
OUTPUT_TAIL_LINES = 40
MAX_CAPTURE_BYTES = 16 * 1024 * 1024  # beyond this only the tail is kept; lines still stream out
_POLL_SECONDS = 0.05
_EOF_GRACE_SECONDS = 2.0  # after the exit status, the longest wait for the output's end (EOF)


class SshError(Exception):
    """Something went wrong talking to a host; the message names the host and what to do."""


class HostKeyError(SshError):
    """A host key was unknown (and not accepted) or has changed."""


class SudoError(SshError):
    """sudo refused: no password given, or a wrong one."""


class CommandTimeout(SshError):
    """A command ran past its timeout; it was stopped."""


class Cancelled(SshError):
    """The operator cancelled; the command's channel was closed."""


class ConnectionLost(SshError):
    """The host's SSH connection died under a command (or just before it); it was dropped: the next command
    connects afresh. Whether the command ran, or how far, is unknown: only a read-only caller may run it again."""


class HostNotAnswering(SshError):
    """The host did not answer on its SSH connection for ``ssh.silence_timeout`` s; its command was abandoned."""

    def __init__(self, message: str, silent_for: float):
        super().__init__(message)
        self.silent_for = silent_for


@dataclass(frozen=True)
class Host:
    """Where and how to connect: a servers.tsv row reduced to what SSH needs."""

    name: str  # HOSTNAME
    address: str  # IP_PRIVEE
    user: str = "root"  # USER_SSH
    port: int = 22

    def __str__(self) -> str:
        return self.name


@dataclass
class Result:
    """The outcome of one remote command."""

    command: str
    exit_status: int
    stdout: str
    stderr: str
    elapsed: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def tail(self, lines: int = OUTPUT_TAIL_LINES) -> str:
        """The last lines of the output, redacted (whole, before any cut: no secret is left half shown)."""
        text = redact(self.stderr.strip() or self.stdout.strip()).splitlines()
        return "\n".join(text[-lines:])


class RemoteCommandError(SshError):
    def __init__(self, host: Host, result: Result, what: str = ""):
        self.host = host
        self.result = result
        summary = what or _short(result.command)
        tail = result.tail(12)  # redacted
        super().__init__(f"{host.name}: {summary} failed (exit {result.exit_status})" + (f":\n{tail}" if tail else ""))


def _short(command: str, limit: int = 80) -> str:
    command = redact(command)  # before the cut: a script holds no secret, but if one did, no half of it shows
    first = command.strip().splitlines()[0] if command.strip() else command
    return first if len(first) <= limit else first[: limit - 1] + "…"


def fingerprint(key: paramiko.PKey) -> str:
    """The OpenSSH ``SHA256:...`` fingerprint of a key."""
    return key.fingerprint  # paramiko >= 3 gives the OpenSSH form


# --- host keys -----------------------------------------------------------------------

HostKeyPrompt = Callable[[HostKeyUnknown], bool]


class KnownHosts:
    """kbpg's own known_hosts file (OpenSSH format), shared by all connections of a run."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._keys = paramiko.HostKeys()
        self._error: str | None = None
        if self.path.exists():
            try:
                self._keys.load(str(self.path))
            except (InvalidHostKey, OSError, UnicodeDecodeError) as exc:
                # Reported by every connection (a task failure naming the file), not as a traceback while a
                # run is prepared; and add() must never rewrite a file it could not read whole.
                self._error = (f"{self.path} cannot be read ({exc}); fix or remove the bad line "
                               "(kbpg does not connect without its known hosts)")

    @staticmethod
    def _entry(address: str, port: int) -> str:
        return address if port == 22 else f"[{address}]:{port}"

    def lookup(self, address: str, port: int = 22) -> dict[str, paramiko.PKey]:
        if self._error:
            raise HostKeyError(self._error)
        with self._lock:
            return dict(self._keys.lookup(self._entry(address, port)) or {})

    def add(self, address: str, port: int, key: paramiko.PKey) -> None:
        """Remember an accepted key and save the file atomically (0600)."""
        if self._error:
            raise HostKeyError(self._error)
        with self._lock:
            self._keys.add(self._entry(address, port), key.get_name(), key)
            lines = []
            for entry in self._keys.keys():
                for key_type, known in self._keys[entry].items():
                    lines.append(f"{entry} {key_type} {known.get_base64()}\n")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, "".join(lines).encode(), mode=0o600)


class _Policy(paramiko.MissingHostKeyPolicy):
    """Unknown key: accept if pinned or if the operator says yes; otherwise refuse, saying how to pin."""

    def __init__(self, host: Host, known_hosts: KnownHosts, pinned: dict[str, str],
                 prompt: HostKeyPrompt | None, sink: EventSink):
        self.host, self.known_hosts, self.pinned, self.prompt, self.sink = host, known_hosts, pinned, prompt, sink

    def missing_host_key(self, client, hostname, key) -> None:  # noqa: ANN001 (paramiko's signature)
        seen = fingerprint(key)
        pin = self.pinned.get(self.host.address) or self.pinned.get(self.host.name)
        if pin:
            if pin != seen:
                raise HostKeyError(
                    f"{self.host.name} ({self.host.address}): host key {seen} does not match the pinned {pin} "
                    "in kbpg.toml [ssh.pinned_host_keys]; refusing to connect"
                )
            self.known_hosts.add(self.host.address, self.host.port, key)
            return
        event = HostKeyUnknown(self.host.name, self.host.address, key.get_name(), seen)
        self.sink(event)
        if self.prompt is not None and self.prompt(event):
            self.known_hosts.add(self.host.address, self.host.port, key)
            log.info("%s: host key %s %s accepted by the operator", self.host.name, key.get_name(), seen)
            return
        if self.prompt is None:
            raise HostKeyError(
                f"{self.host.name} ({self.host.address}): unknown host key {key.get_name()} {seen}. "
                "Check it on the host (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then accept it in the "
                f"wizard or pin it in kbpg.toml:\n  [ssh.pinned_host_keys]\n  \"{self.host.address}\" = \"{seen}\""
            )
        raise HostKeyError(f"{self.host.name} ({self.host.address}): host key declined by the operator ({seen})")


# --- streaming ---------------------------------------------------------------------------

class Channel(Protocol):
    """The part of paramiko.Channel the runner uses (a fake one drives the unit tests)."""

    def recv_ready(self) -> bool: ...
    def recv(self, nbytes: int) -> bytes: ...
    def recv_stderr_ready(self) -> bool: ...
    def recv_stderr(self, nbytes: int) -> bytes: ...
    def exit_status_ready(self) -> bool: ...
    def recv_exit_status(self) -> int: ...
    @property
    def eof_received(self) -> int | bool: ...  # the remote end sent EOF: no more output will come
    def sendall(self, data: bytes) -> None: ...
    def shutdown_write(self) -> None: ...
    def close(self) -> None: ...


LineCallback = Callable[[str, str], None]  # (stream, line)


class _Stream:
    """Incremental UTF-8 decoding into lines, with a bounded capture."""

    def __init__(self, name: str, on_line: LineCallback | None):
        self.name = name
        self.on_line = on_line
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.partial = ""
        self.captured: list[str] = []
        self.captured_bytes = 0
        self.dropped = False

    def feed(self, data: bytes, final: bool = False) -> None:
        text = self.partial + self.decoder.decode(data, final=final)
        lines = text.split("\n")
        self.partial = "" if final else lines.pop()
        if final and lines and lines[-1] == "":
            lines.pop()
        for line in lines:
            self._keep(line)

    def _keep(self, line: str) -> None:
        line = line.rstrip("\r")
        self.captured.append(line)
        self.captured_bytes += len(line) + 1
        while self.captured_bytes > MAX_CAPTURE_BYTES and len(self.captured) > 1:
            self.captured_bytes -= len(self.captured.pop(0)) + 1
            self.dropped = True
        if self.on_line is not None:
            self.on_line(self.name, line)

    def text(self) -> str:
        prefix = "[… earlier output dropped …]\n" if self.dropped else ""
        return prefix + "\n".join(self.captured) + ("\n" if self.captured else "")


class SilenceWatch:
    """Notices a host that stops answering while a command runs on it.

    ``silent_for()`` says how long ago the host last answered on its SSH connection (see
    :class:`_Liveness`). Past ``warn_after`` seconds, ``report(seconds)`` is called, and again at each
    further ``warn_after``; ``report(None)`` when a host reported silent answers again. Past ``timeout``
    seconds, :meth:`check` raises :class:`HostNotAnswering`.
    """

    def __init__(self, silent_for: Callable[[], float], timeout: float,
                 report: Callable[[float | None], None], warn_after: float = SILENCE_WARNING_SECONDS):
        self.silent_for = silent_for
        self.timeout = timeout
        self.report = report
        self.warn_after = max(1.0, min(warn_after, timeout / 2))  # always a warning before giving up
        self._next = self.warn_after
        self._reported = False

    def check(self) -> None:
        silent = self.silent_for()
        if silent >= self.timeout:
            raise HostNotAnswering(f"no answer for {silent:.0f} s", silent)
        if silent >= self._next:
            self._reported = True
            self._next = (silent // self.warn_after + 1) * self.warn_after
            self.report(silent)
        elif self._reported and silent < self.warn_after:
            self._reported = False
            self._next = self.warn_after
            self.report(None)


SUDO_PROMPT = "[kbpg-sudo-prompt]"
SUDO_STARTED = "[kbpg-sudo-started]"  # printed to stderr by the command sudo runs, just before it execs


class SudoGate:
    """Stands between ``sudo -S`` and the command behind it on stdin.

    The password is sent only when sudo's own prompt shows on stderr (once: a second prompt means it
    was wrong, and stdin is closed so that sudo ends). The command's own stdin is sent only after the
    start marker shows, i.e. once sudo has let the command run: a sudo that does not ask (NOPASSWD,
    a cached timestamp) never passes the password on to the command. Prompt and marker are removed
    from the output, even when split across packets.
    """

    _PROMPT = SUDO_PROMPT.encode()
    _STARTED = SUDO_STARTED.encode()

    def __init__(self, password: bytes, stdin: bytes | None):
        self.password = password
        self.stdin = stdin or b""
        self.started = False
        self.prompts = 0
        self._buffer = b""

    def stderr(self, data: bytes, channel: Channel) -> bytes:
        """Filter stderr until the command starts, acting on the prompt and the marker; return what is output."""
        if self.started:
            return data
        self._buffer += data
        out = b""
        while not self.started:
            prompt, started = self._buffer.find(self._PROMPT), self._buffer.find(self._STARTED)
            if started >= 0 and (prompt < 0 or started < prompt):
                out += self._buffer[:started]
                self._buffer = self._buffer[started + len(self._STARTED):]
                self.started = True
                _send(channel, self.stdin, close=True)
            elif prompt >= 0:
                out += self._buffer[:prompt]
                self._buffer = self._buffer[prompt + len(self._PROMPT):]
                self.prompts += 1
                if self.prompts == 1:
                    _send(channel, self.password + b"\n")
                else:
                    _send(channel, b"", close=True)  # a wrong password: no second try; sudo reads EOF and ends
            else:
                break
        if self.started:
            out, self._buffer = out + self._buffer, b""
        else:  # keep what may be the start of a prompt or marker cut by a packet boundary
            keep = max(_overlap(self._buffer, self._PROMPT), _overlap(self._buffer, self._STARTED))
            cut = len(self._buffer) - keep
            out, self._buffer = out + self._buffer[:cut], self._buffer[cut:]
        return out

    def flush(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return rest


def _send(channel: Channel, data: bytes, close: bool = False) -> None:
    """Write to a command's stdin that may have ended already (sent only once it runs, it may be quick)."""
    try:
        if data:
            channel.sendall(data)
        if close:
            channel.shutdown_write()
    except (OSError, EOFError, paramiko.SSHException) as exc:
        log.debug("stdin not fully sent (the command ended without reading it): %s", exc)


def _overlap(data: bytes, token: bytes) -> int:
    """The length of the longest end of ``data`` that is a proper beginning of ``token``."""
    for size in range(min(len(data), len(token) - 1), 0, -1):
        if data.endswith(token[:size]):
            return size
    return 0


def pump(
    channel: Channel,
    stdin: bytes | None,
    timeout: float | None,
    cancel: threading.Event | None,
    on_line: LineCallback | None = None,
    clock: Callable[[], float] = time.monotonic,
    wait: Callable[[float], None] = time.sleep,
    watch: SilenceWatch | None = None,
    gate: SudoGate | None = None,
) -> tuple[int, str, str]:
    """Feed stdin, stream stdout/stderr until the command ends, then read its exit status.

    With a ``gate`` (sudo with a password), stdin is the gate's business and ``stdin`` is ignored.
    Raises :class:`CommandTimeout`, :class:`Cancelled` or :class:`HostNotAnswering` (after closing the
    channel); their messages carry the last output, redacted before it is cut.
    """
    if gate is None:
        if stdin:
            channel.sendall(stdin)
        channel.shutdown_write()
    out, err = _Stream("stdout", on_line), _Stream("stderr", on_line)
    deadline = clock() + timeout if timeout else None
    exit_seen: float | None = None

    def last_output() -> str:
        out.feed(b"", final=True)
        err.feed((gate.flush() if gate else b""), final=True)
        return redact(err.text() or out.text())[-2000:]  # redacted whole, then cut

    while True:
        busy = False
        if channel.recv_ready():
            data = channel.recv(65536)
            if data:
                out.feed(data)
                busy = True
        if channel.recv_stderr_ready():
            data = channel.recv_stderr(65536)
            if data:
                err.feed(gate.stderr(data, channel) if gate else data)
                busy = True
        # Drained: only now is the exit status meaningful (and recv_exit_status cannot block on a full window).
        if not busy and channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
            # The exit status is not the end of the output: sshd reaps the command and may send its exit status
            # before the last bytes of its pipe (measured on the lab: 1 run in 2,000 of `test -f F && echo yes`
            # came back empty, and a guard read "not initialised"). The output ends at the channel's EOF; a command
            # that leaves a process holding its stdout never sends one, so that is waited for a short while only.
            if channel.eof_received:
                break
            if exit_seen is None:
                exit_seen = clock()
            elif clock() - exit_seen >= _EOF_GRACE_SECONDS:
                break
        # Checked even while output flows: a command that never stops printing must still time out or cancel.
        if cancel is not None and cancel.is_set():
            channel.close()
            raise Cancelled("cancelled")
        if deadline is not None and clock() > deadline:
            channel.close()
            raise CommandTimeout(f"no end after {timeout:.0f} s; stopped. Last output:\n{last_output()}")
        if watch is not None:
            try:
                watch.check()
            except HostNotAnswering as exc:
                channel.close()
                tail = last_output().strip()
                raise HostNotAnswering(f"{exc}" + (f". Last output:\n{tail}" if tail else ""), exc.silent_for) from None
        if not busy:
            wait(_POLL_SECONDS)
    out.feed(b"", final=True)
    err.feed(gate.flush() if gate else b"", final=True)
    return channel.recv_exit_status(), out.text(), err.text()


# --- connections -----------------------------------------------------------------------

@dataclass
class SshOptions:
    key_file: str | None = None
    connect_timeout: float = 10
    command_timeout: float = 900
    pinned_host_keys: dict[str, str] = field(default_factory=dict)
    silence_timeout: float = 120  # a host silent this long mid-command fails that command; 0: wait for the command timeout


class _Liveness:
    """When the host last answered on its SSH connection.

    paramiko's keepalives (``set_keepalive``) ask for no reply, so they prove nothing about the
    host. A daemon thread sends a ``keepalive@openssh.com`` global request that does want one (as
    OpenSSH's ServerAliveInterval does) every ``interval`` seconds and records when the answer
    came. paramiko's ``global_request(wait=True)`` has no timeout: the thread simply waits while
    the host is silent, and ends with the transport.
    """

    def __init__(self, transport: paramiko.Transport, name: str, interval: float = PROBE_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.transport = transport
        self.interval = interval
        self.clock = clock
        self.last_answer = clock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, daemon=True, name=f"kbpg-alive-{name}")

    def start(self) -> "_Liveness":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def silent_for(self) -> float:
        return max(0.0, self.clock() - self.last_answer)

    def _probe(self) -> None:
        while not self._stop.is_set() and self.transport.is_active():
            try:
                self.transport.global_request("keepalive@openssh.com", wait=True)  # any answer will do
            except Exception:  # noqa: BLE001 (the transport went away under it: nothing more to watch)
                return
            if not self.transport.is_active():
                return
            self.last_answer = self.clock()
            self._stop.wait(self.interval)


_SUDO_START = f"printf %s {shlex.quote(SUDO_STARTED)} >&2; exec \"$@\""


def _with_sudo_password(command: str) -> str:
    """``command`` run by ``sudo -S``, announcing on stderr that it starts (see :class:`SudoGate`)."""
    return f"sudo -S -k -p {shlex.quote(SUDO_PROMPT)} -- sh -c {shlex.quote(_SUDO_START)} sh {command}"


class Connection:
    """One SSH connection to one host, able to run commands as root (directly or through sudo)."""

    def __init__(
        self,
        host: Host,
        options: SshOptions,
        known_hosts: KnownHosts,
        sink: EventSink,
        prompt: HostKeyPrompt | None = None,
        sudo_password: str | None = None,
        cancel: threading.Event | None = None,
        step: Callable[[], str] = lambda: "",
    ):
        self.host = host
        self.options = options
        self.known_hosts = known_hosts
        self.sink = sink
        self.prompt = prompt
        self.sudo_password = sudo_password
        self.cancel = cancel
        self.step = step  # the step running now, for the HostSilent / HostAnswering events
        self.client: paramiko.SSHClient | None = None
        self._liveness: _Liveness | None = None
        self.sudo_mode: str | None = None  # "root" | "nopasswd" | "password"
        self._lock = threading.Lock()

    # -- connecting

    def connect(self) -> "Connection":
        """Connect (once: threads sharing this connection wait for the first to finish)."""
        with self._lock:
            transport = self.client.get_transport() if self.client is not None else None
            if transport is not None and transport.is_active():
                return self
            return self._connect()

    def _connect(self) -> "Connection":
        host = self.host
        client = paramiko.SSHClient()
        for key_type, key in self.known_hosts.lookup(host.address, host.port).items():
            client.get_host_keys().add(KnownHosts._entry(host.address, host.port), key_type, key)
        client.set_missing_host_key_policy(_Policy(host, self.known_hosts, self.options.pinned_host_keys, self.prompt, self.sink))
        timeout = self.options.connect_timeout
        try:
            client.connect(
                hostname=host.address,
                port=host.port,
                username=host.user,
                key_filename=self.options.key_file or None,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
                allow_agent=not self.options.key_file,
                look_for_keys=not self.options.key_file,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyError(
                f"{host.name} ({host.address}): HOST KEY CHANGED: expected {fingerprint(exc.expected_key)}, "
                f"got {fingerprint(exc.key)}. This can be a reinstalled server or an attack; refusing. If the "
                f"change is expected, remove the {host.address} line from {self.known_hosts.path}."
            ) from None
        except HostKeyError:
            client.close()
            raise
        except paramiko.AuthenticationException as exc:
            client.close()
            raise SshError(
                f"{host.name} ({host.address}): SSH login as {host.user} refused ({exc}); check USER_SSH in "
                "servers.tsv and that kbpg's key is in the user's authorized_keys"
            ) from None
        except (socket.timeout, TimeoutError):
            client.close()
            raise SshError(
                f"{host.name} ({host.address}): no SSH answer within {timeout:.0f} s; check the address in "
                "servers.tsv, that the host is up, and the firewall (port 22)"
            ) from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            client.close()
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise SshError(f"{host.name} ({host.address}): cannot connect over SSH: {reason}") from None
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(KEEPALIVE_SECONDS)
        self._stop_liveness()  # a lost connection's watcher, if any
        self._liveness = _Liveness(transport, host.name).start()
        self.client = client
        log.info("%s: connected to %s@%s:%s", host.name, host.user, host.address, host.port)
        try:
            self._check_sudo()
        except BaseException:
            # Never keep a connection whose sudo is unknown: connect() would hand it out again
            # and run() would then run its commands as the plain user.
            self.client, self.sudo_mode = None, None
            self._stop_liveness()
            client.close()
            raise
        return self

    def _check_sudo(self) -> None:
        if self.host.user == "root":
            self.sudo_mode = "root"
            return
        # -k ignores a cached timestamp, -n never prompts: success means NOPASSWD.
        if self._exec("sudo -k -n true", None, timeout=self.options.connect_timeout * 3).exit_status == 0:
            self.sudo_mode = "nopasswd"
            return
        if not self.sudo_password:
            raise SudoError(
                f"{self.host.name}: {self.host.user} needs a sudo password; put it in KBPG_SUDO_PASSWORD "
                "(environment or credentials/sudo.env), or give the user passwordless sudo"
            )
        check = self._exec(_with_sudo_password("true"), None, timeout=self.options.connect_timeout * 3,
                           gate=SudoGate(self.sudo_password.encode(), None))
        if check.exit_status != 0:
            if "incorrect password" in check.stderr or "Sorry, try again" in check.stderr or "password is required" in check.stderr:
                raise SudoError(f"{self.host.name}: wrong sudo password for {self.host.user}; check KBPG_SUDO_PASSWORD")
            raise SudoError(f"{self.host.name}: {self.host.user} cannot use sudo: {check.tail(3)}")
        self.sudo_mode = "password"

    def close(self) -> None:
        self._stop_liveness()
        if self.client is not None:
            self.client.close()
            self.client = None

    def _stop_liveness(self) -> None:
        if self._liveness is not None:
            self._liveness.stop()
            self._liveness = None

    def _drop(self, client: paramiko.SSHClient) -> None:
        """Forget a connection to a host that stopped answering: the next command connects afresh.

        (No lock: connect() may hold it in this very thread, checking sudo.)
        """
        if self.client is client:
            self.client = None
            self._stop_liveness()
        client.close()

    def _report_silence(self, silent_for: float | None) -> None:
        step = self.step()
        if silent_for is None:
            log.warning("%s: answering again", self.host.name)
            self.sink(HostAnswering(step, self.host.name))
        else:
            log.warning("%s: no answer over SSH for %.0f s", self.host.name, silent_for)
            self.sink(HostSilent(step, self.host.name, silent_for))

    # -- running

    def _exec(self, command: str, stdin: bytes | None, timeout: float | None,
              on_line: LineCallback | None = None, gate: SudoGate | None = None, label: str = "") -> Result:
        client = self.client
        if client is None:
            raise SshError(f"{self.host.name}: not connected")
        transport = client.get_transport()
        if transport is None or not transport.is_active():
            raise ConnectionLost(f"{self.host.name}: the SSH connection was lost")
        shown = _short(label or command)
        liveness = self._liveness
        watch = None
        if liveness is not None and self.options.silence_timeout:
            watch = SilenceWatch(liveness.silent_for, self.options.silence_timeout, self._report_silence)
        started = time.monotonic()
        try:
            channel = transport.open_session(timeout=self.options.connect_timeout)
            channel.exec_command(command)
            status, stdout, stderr = pump(channel, stdin, timeout, self.cancel, on_line, watch=watch, gate=gate)
        except (CommandTimeout, Cancelled) as exc:
            log.warning("%s: %s: %s", self.host.name, shown, exc)
            if isinstance(exc, CommandTimeout):
                # The message carries the command's last output to the screen and the task's detail: redacted.
                raise CommandTimeout(f"{self.host.name}: `{shown}` {redact(str(exc))}") from None
            raise Cancelled(f"{self.host.name}: cancelled") from None
        except HostNotAnswering as exc:
            log.warning("%s: %s: %s", self.host.name, shown, exc)
            self._drop(client)
            raise HostNotAnswering(
                f"{self.host.name} ({self.host.address}) stopped answering over SSH: no answer for "
                f"{exc.silent_for:.0f} s (ssh.silence_timeout {self.options.silence_timeout:.0f} s) during `{shown}`; "
                f"gave up on it (it may still be running there). Its network or the host itself is down: check that "
                f"{self.host.name} is up and reachable from here, then run the same command again (every step "
                f"checks first and continues).\n{redact(str(exc))}",
                exc.silent_for,
            ) from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise SshError(f"{self.host.name}: SSH channel failed during `{shown}`: {exc}") from None
        if status == -1 and not transport.is_active():  # paramiko's exit status of a channel whose connection died
            self._drop(client)
            raise ConnectionLost(f"{self.host.name} ({self.host.address}): the SSH connection was lost during `{shown}`; "
                                 f"check that {self.host.name} is reachable, then run the same command again")
        return Result(command, status, stdout, stderr, time.monotonic() - started)

    def run(
        self,
        script: str,
        stdin: bytes | str | None = None,
        timeout: float | None = None,
        on_line: LineCallback | None = None,
        check: bool = True,
        what: str = "",
    ) -> Result:
        """Run a bash script as root on the host.

        The script travels as a ``bash -c`` argument, so it must hold no secret:
        secrets go through ``stdin`` (or an uploaded file).
        """
        if self.client is None:
            self.connect()
        if isinstance(stdin, str):
            stdin = stdin.encode("utf-8")
        body = "set -o pipefail; export LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive; " + script
        command = "bash -c " + shlex.quote(body)
        gate = None
        if self.sudo_mode == "nopasswd":
            command = "sudo -n -- " + command
        elif self.sudo_mode == "password":
            # The password only to sudo's prompt, the script's stdin only once the script runs (SudoGate).
            command = _with_sudo_password(command)
            gate, stdin = SudoGate((self.sudo_password or "").encode(), stdin), None
        timeout = self.options.command_timeout if timeout is None else timeout
        log.debug("%s $ %s", self.host.name, redact(script))
        result = self._exec(command, stdin, timeout, on_line, gate=gate, label=script)
        result.command = script
        log.info("%s: exit %s in %.1fs: %s", self.host.name, result.exit_status, result.elapsed, redact(_short(script)))
        if result.exit_status != 0:
            log.debug("%s: output tail:\n%s", self.host.name, result.tail())
        if check and result.exit_status != 0:
            raise RemoteCommandError(self.host, result, what)
        return result

    # -- files

    def upload(self, path: str, data: bytes | str, mode: int = 0o644, owner: str = "root",
               group: str | None = None, validate: str | None = None) -> bool:
        """Write ``data`` to ``path`` atomically with mode and owner, unless it is already so.

        A temp file is created beside the target (mktemp: 0600 from the start), filled
        from stdin, given its mode and owner, checked with ``validate`` (a command in
        which ``{path}`` is the temp file, e.g. ``haproxy -c -f {path}``), then renamed
        over the target: a file that fails its check never replaces the good one.
        Returns True if anything changed.
        """
        if isinstance(data, str):
            data = data.encode("utf-8")
        group = group or owner
        wanted = f"{mode:o} {owner} {group} {hashlib.sha256(data).hexdigest()}"
        quoted = shlex.quote(path)
        current = self.run(
            f"if [ -f {quoted} ]; then printf '%s %s %s ' $(stat -c '%a %U %G' {quoted}); "
            f"sha256sum < {quoted} | cut -d' ' -f1; fi",
            what=f"reading {path}",
        ).stdout.strip()
        if current == wanted:
            return False
        directory = shlex.quote(os.path.dirname(path) or "/")
        check = (validate.format(path='"$tmp"') + "; ") if validate else ""
        self.run(
            # Missing directories get the usual 0755 (under umask 077 /etc/apt/keyrings or /etc/postgresql-common
            # would be 0700 and unreadable to _apt and postgres); the file itself is 0600 from mktemp on.
            f"set -e; (umask 022; mkdir -p {directory}); umask 077; tmp=$(mktemp {quoted}.kbpg.XXXXXX); "
            f"trap 'rm -f \"$tmp\"' EXIT; cat > \"$tmp\"; chown {shlex.quote(owner)}:{shlex.quote(group)} \"$tmp\"; "
            f"chmod {mode:o} \"$tmp\"; {check}mv -f \"$tmp\" {quoted}; trap - EXIT",
            stdin=data,
            what=f"writing {path}",
        )
        return True

    def read_file(self, path: str) -> bytes | None:
        """The content of a remote file, or None if it does not exist."""
        quoted = shlex.quote(path)
        result = self.run(f"if [ -f {quoted} ]; then echo present; base64 -w0 < {quoted}; fi", what=f"reading {path}")
        lines = result.stdout.split("\n", 1)
        if lines[0] != "present":
            return None
        return base64.b64decode(lines[1].strip() or b"")


class ConnectionPool:
    """One connection per host for a run, created on demand, closed together."""

    def __init__(self, options: SshOptions, known_hosts: KnownHosts, sink: EventSink,
                 prompt: HostKeyPrompt | None = None, sudo_passwords: Callable[[Host], str | None] | None = None,
                 cancel: threading.Event | None = None):
        self.options = options
        self.known_hosts = known_hosts
        self.sink = sink
        self.prompt = prompt
        self.sudo_passwords = sudo_passwords or (lambda host: None)
        self.cancel = cancel
        self.step = ""  # the step running now (the engine sets it), named by HostSilent / HostAnswering
        # By name and address: a host replaced under its own name (kbpg nodes apply) is another connection.
        self._connections: dict[tuple[str, str], Connection] = {}
        self._lock = threading.Lock()
        self._prompt_lock = threading.Lock()  # one host-key question on screen at a time

    def _serial_prompt(self, event: HostKeyUnknown) -> bool:
        assert self.prompt is not None
        with self._prompt_lock:
            return self.prompt(event)

    def get(self, host: Host) -> Connection:
        with self._lock:
            connection = self._connections.get((host.name, host.address))
            if connection is None:
                connection = Connection(host, self.options, self.known_hosts, self.sink,
                                        self._serial_prompt if self.prompt else None,
                                        self.sudo_passwords(host), self.cancel, lambda: self.step)
                self._connections[(host.name, host.address)] = connection
        return connection.connect()

    def close(self) -> None:
        with self._lock:
            for connection in self._connections.values():
                connection.close()
            self._connections.clear()


def output_sink(sink: EventSink, step: str, host: Host) -> LineCallback:
    """A line callback that forwards redacted output lines as events."""

    def on_line(stream: str, line: str) -> None:
        sink(OutputLine(step, host.name, stream, redact(line)))

    return on_line
