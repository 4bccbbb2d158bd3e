"""Unit tests of the streaming runner against a scripted fake channel.

The same code runs against real sshd in the lab tests; this fake only lets us
produce what is hard to provoke for real: split UTF-8 characters, exact chunking,
a command that never ends.
"""

from __future__ import annotations

import threading

import pytest

from kbpg_tui.core import ssh


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeChannel:
    """Plays a script of (time, stream, bytes) chunks, then an exit status."""

    def __init__(self, clock: FakeClock, script: list[tuple[float, str, bytes]], exit_status: int | None = 0):
        self.clock = clock
        self.script = list(script)
        self.exit_status = exit_status  # None: the command never ends
        self.stdin = b""
        self.write_closed = False
        self.closed = False

    def _ready(self, stream: str) -> bool:
        return bool(self.script) and self.script[0][0] <= self.clock.now and self.script[0][1] == stream

    def recv_ready(self) -> bool:
        return self._ready("out")

    def recv_stderr_ready(self) -> bool:
        return self._ready("err")

    def recv(self, nbytes: int) -> bytes:
        return self._take("out", nbytes)

    def recv_stderr(self, nbytes: int) -> bytes:
        return self._take("err", nbytes)

    def _take(self, stream: str, nbytes: int) -> bytes:
        at, kind, data = self.script[0]
        assert kind == stream
        chunk, rest = data[:nbytes], data[nbytes:]
        if rest:
            self.script[0] = (at, kind, rest)
        else:
            self.script.pop(0)
        return chunk

    def exit_status_ready(self) -> bool:
        return self.exit_status is not None and not self.script

    def recv_exit_status(self) -> int:
        assert not self.script, "exit status read before the output was drained"
        assert self.exit_status is not None
        return self.exit_status

    def sendall(self, data: bytes) -> None:
        assert not self.write_closed
        self.stdin += data

    def shutdown_write(self) -> None:
        self.write_closed = True

    def close(self) -> None:
        self.closed = True


def run(script, exit_status=0, timeout=None, cancel=None, stdin=None):
    clock = FakeClock()
    channel = FakeChannel(clock, script, exit_status)
    lines: list[tuple[str, str]] = []
    result = ssh.pump(channel, stdin, timeout, cancel, lambda stream, line: lines.append((stream, line)),
                      clock=clock, wait=clock.sleep)
    return result, lines, channel


def test_utf8_split_across_chunks_is_decoded_whole() -> None:
    text = "réplica prête — 日本語 ✓\n".encode("utf-8")
    # Cut inside every multi-byte character: one byte per packet.
    script = [(0.01 * i, "out", text[i:i + 1]) for i in range(len(text))]
    (status, stdout, stderr), lines, _ = run(script)
    assert status == 0
    assert stdout == "réplica prête — 日本語 ✓\n"
    assert lines == [("stdout", "réplica prête — 日本語 ✓")]
    assert "\ufffd" not in stdout


def test_lines_stream_as_they_come_and_partial_last_line_is_flushed() -> None:
    script = [(0.0, "out", b"one\ntw"), (0.1, "err", b"warn"), (0.2, "out", b"o\nthree"), (0.3, "err", b"ing\n")]
    (status, stdout, stderr), lines, _ = run(script, exit_status=3)
    assert status == 3
    assert stdout == "one\ntwo\nthree\n"
    assert stderr == "warning\n"
    assert lines == [("stdout", "one"), ("stdout", "two"), ("stderr", "warning"), ("stdout", "three")]


def test_crlf_output_is_cleaned() -> None:
    (_, stdout, _), lines, _ = run([(0, "out", b"a\r\nb\r\n")])
    assert lines == [("stdout", "a"), ("stdout", "b")]


def test_large_output_is_drained_before_the_exit_status() -> None:
    big = b"".join(b"line %06d of a long apt-get log\n" % i for i in range(200_000))  # ~6.6 MB
    script = [(0, "out", big[i:i + 32768]) for i in range(0, len(big), 32768)] + [(0, "err", b"done\n")]
    (status, stdout, stderr), lines, _ = run(script)
    assert status == 0
    assert len(lines) == 200_001
    assert stdout.count("\n") == 200_000
    assert stdout.endswith("line 199999 of a long apt-get log\n")


def test_capture_is_bounded_but_every_line_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ssh, "MAX_CAPTURE_BYTES", 1000)
    script = [(0, "out", b"x" * 99 + b"\n") for _ in range(100)]
    (_, stdout, _), lines, _ = run(script)
    assert len(lines) == 100
    assert stdout.startswith("[… earlier output dropped …]")
    assert len(stdout) < 1200


def test_stdin_is_sent_then_closed() -> None:
    (_, _, _), _, channel = run([(0, "out", b"ok\n")], stdin=b"secret\n")
    assert channel.stdin == b"secret\n"
    assert channel.write_closed


def test_timeout_closes_the_channel_and_says_what_was_last_seen() -> None:
    with pytest.raises(ssh.CommandTimeout) as caught:
        run([(0, "out", b"waiting for lock\n")], exit_status=None, timeout=5)
    assert "no end after 5 s" in str(caught.value)
    assert "waiting for lock" in str(caught.value)


def test_cancel_closes_the_channel() -> None:
    cancel = threading.Event()
    cancel.set()
    clock = FakeClock()
    channel = FakeChannel(clock, [], exit_status=None)
    with pytest.raises(ssh.Cancelled):
        ssh.pump(channel, None, None, cancel, None, clock=clock, wait=clock.sleep)
    assert channel.closed


def test_output_arriving_after_a_quiet_spell_is_not_lost() -> None:
    script = [(0, "out", b"start\n"), (30.0, "out", b"late line\n")]
    (_, stdout, _), _, _ = run(script, timeout=60)
    assert stdout == "start\nlate line\n"


class EndlessChannel(FakeChannel):
    """A command that prints a line every second and never ends (``journalctl -f``, a looping script)."""

    def recv_ready(self) -> bool:
        return True

    def recv(self, nbytes: int) -> bytes:
        self.clock.now += 1.0
        return b"still going\n"


def test_a_command_that_never_stops_printing_still_times_out() -> None:
    clock = FakeClock()
    channel = EndlessChannel(clock, [], exit_status=None)
    with pytest.raises(ssh.CommandTimeout):
        ssh.pump(channel, None, 5, None, None, clock=clock, wait=clock.sleep)
    assert channel.closed


def test_a_command_that_never_stops_printing_can_be_cancelled() -> None:
    clock = FakeClock()
    cancel = threading.Event()
    channel = EndlessChannel(clock, [], exit_status=None)
    seen: list[str] = []

    def on_line(stream: str, line: str) -> None:
        seen.append(line)
        if len(seen) == 3:
            cancel.set()

    with pytest.raises(ssh.Cancelled):
        ssh.pump(channel, None, None, cancel, on_line, clock=clock, wait=clock.sleep)
    assert channel.closed and len(seen) == 3


class _FakeTransport:
    def is_active(self) -> bool:
        return True

    def set_keepalive(self, seconds: int) -> None:
        pass


class _FakeClient:
    """Enough of paramiko.SSHClient for Connection._connect: login always succeeds."""

    closed = 0

    def __init__(self) -> None:
        self.keys = {}

    def get_host_keys(self):
        return self

    def add(self, *args) -> None:
        pass

    def set_missing_host_key_policy(self, policy) -> None:
        pass

    def connect(self, **kwargs) -> None:
        pass

    def get_transport(self) -> _FakeTransport:
        return _FakeTransport()

    def close(self) -> None:
        _FakeClient.closed += 1


def test_a_connection_whose_sudo_check_failed_is_not_handed_out_again(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(ssh.paramiko, "SSHClient", _FakeClient)
    calls: list[str] = []

    def fake_exec(self, command, stdin, timeout, on_line=None):
        calls.append(command)
        return ssh.Result(command, 1, "", "sudo: a password is required\n", 0.0)

    monkeypatch.setattr(ssh.Connection, "_exec", fake_exec)
    host = ssh.Host("db-1", "198.51.100.7", user="deploy")
    connection = ssh.Connection(host, ssh.SshOptions(), ssh.KnownHosts(tmp_path / "known_hosts"), lambda e: None)
    for _ in range(2):  # the second attempt checks sudo again instead of reusing the unprivileged session
        with pytest.raises(ssh.SudoError):
            connection.connect()
        assert connection.client is None and connection.sudo_mode is None
    assert len(calls) == 2


def _local_connection(monkeypatch: pytest.MonkeyPatch, tmp_path) -> ssh.Connection:
    """A Connection whose scripts run here, with bash, as the current user."""
    import subprocess

    def local_run(self, script, stdin=None, timeout=None, on_line=None, check=True, what=""):
        if isinstance(stdin, str):
            stdin = stdin.encode()
        done = subprocess.run(["bash", "-c", "set -o pipefail; " + script], input=stdin or b"", capture_output=True,
                              timeout=30)
        result = ssh.Result(script, done.returncode, done.stdout.decode(), done.stderr.decode(), 0.0)
        if check and not result.ok:
            raise ssh.RemoteCommandError(self.host, result, what)
        return result

    monkeypatch.setattr(ssh.Connection, "run", local_run)
    host = ssh.Host("here", "127.0.0.1")
    return ssh.Connection(host, ssh.SshOptions(), ssh.KnownHosts(tmp_path / "known_hosts"), lambda e: None)


def test_upload_creates_missing_directories_traversable_and_the_file_private(monkeypatch: pytest.MonkeyPatch,
                                                                             tmp_path) -> None:
    import grp
    import os
    import pwd
    import stat

    connection = _local_connection(monkeypatch, tmp_path)
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    target = tmp_path / "etc" / "apt" / "keyrings" / "kbpg.asc"
    assert connection.upload(str(target), b"key\n", mode=0o644, owner=user, group=group)
    assert target.read_bytes() == b"key\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    for directory in (target.parent, target.parent.parent, target.parent.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755, directory  # _apt and postgres can traverse
    assert not connection.upload(str(target), b"key\n", mode=0o644, owner=user, group=group)  # unchanged
    secret = tmp_path / "etc" / "pgbouncer" / "userlist.txt"
    assert connection.upload(str(secret), b'"u" "s"\n', mode=0o600, owner=user, group=group)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert not [p for p in secret.parent.iterdir() if ".kbpg." in p.name]  # no temp file left behind


def test_a_timed_out_command_does_not_show_a_secret_it_printed(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from kbpg_tui.core.logs import register_secret

    secret = "Zq8tiny-secret-value-42"
    register_secret(secret)

    class _Channel(FakeChannel):
        def exec_command(self, command: str) -> None:
            pass

    class _Transport(_FakeTransport):
        def open_session(self, timeout=None):
            return _Channel(FakeClock(), [(0, "err", f"connecting with password {secret}\n".encode())], exit_status=None)

    class _Client(_FakeClient):
        def get_transport(self):
            return _Transport()

    host = ssh.Host("db-1", "198.51.100.7")
    connection = ssh.Connection(host, ssh.SshOptions(), ssh.KnownHosts(tmp_path / "known_hosts"), lambda e: None)
    connection.client = _Client()
    connection.sudo_mode = "root"
    with pytest.raises(ssh.CommandTimeout) as caught:
        connection.run("some-command", timeout=0.2)
    assert "connecting with password" in str(caught.value)
    assert secret not in str(caught.value)


def test_a_corrupt_known_hosts_is_a_clear_error_and_is_never_rewritten(tmp_path) -> None:
    import paramiko

    path = tmp_path / "known_hosts"
    text = "10.0.0.120 ssh-ed25519 AAAA!!not-base64\n10.0.0.121 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOk\n"
    path.write_text(text)
    known_hosts = ssh.KnownHosts(path)  # preparing a run must not end in a traceback
    with pytest.raises(ssh.HostKeyError, match="known_hosts cannot be read"):
        known_hosts.lookup("10.0.0.120")
    with pytest.raises(ssh.HostKeyError):
        known_hosts.add("10.0.0.122", 22, paramiko.ECDSAKey.generate())
    assert path.read_text() == text
