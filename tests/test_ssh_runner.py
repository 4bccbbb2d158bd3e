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

    @property
    def eof_received(self) -> bool:
        return self.exit_status_ready()

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


class EarlyExitChannel(FakeChannel):
    """sshd as measured on the lab: the exit status sent before the last bytes of the command's output.

    ``eof_at``: when the channel's EOF comes (None: never, a daemon the command started holds its stdout)."""

    def __init__(self, clock: FakeClock, script, exit_status: int = 0, eof_at: float | None = 0.0):
        super().__init__(clock, script, exit_status)
        self.eof_at = eof_at

    def exit_status_ready(self) -> bool:
        return True  # from the start: the command has ended, its output is still on its way

    @property
    def eof_received(self) -> bool:
        return self.eof_at is not None and self.clock.now >= self.eof_at and not self.script

    def recv_exit_status(self) -> int:
        assert self.exit_status is not None
        return self.exit_status


def test_output_arriving_after_the_exit_status_is_not_lost() -> None:
    """A guard reading `test -f PG_VERSION && echo yes` got nothing once in 2,000 runs: the answer was never read."""
    clock = FakeClock()
    channel = EarlyExitChannel(clock, [(0.2, "out", b"yes\n")], exit_status=0, eof_at=0.2)
    status, stdout, _ = ssh.pump(channel, None, 30, None, clock=clock, wait=clock.sleep)
    assert (status, stdout) == (0, "yes\n")


def test_a_command_whose_stdout_stays_open_after_it_ends_returns_after_a_short_wait() -> None:
    """`daemon &` keeps the channel's stdout open: no EOF ever comes; the runner must not wait for the timeout."""
    clock = FakeClock()
    channel = EarlyExitChannel(clock, [(0.0, "out", b"started\n")], exit_status=0, eof_at=None)
    status, stdout, _ = ssh.pump(channel, None, 600, None, clock=clock, wait=clock.sleep)
    assert (status, stdout) == (0, "started\n")
    assert clock.now < 5


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


# --- a host that stops answering (issue 10) ---------------------------------------------------------------

def _watched(silent_for, timeout=120.0):
    reports: list = []
    return ssh.SilenceWatch(silent_for, timeout, reports.append), reports


def test_a_silent_host_is_reported_after_30_s_and_again_then_its_command_is_abandoned() -> None:
    clock = FakeClock()
    channel = FakeChannel(clock, [(0, "out", b"installing\n")], exit_status=None)  # never ends by itself
    watch, reports = _watched(lambda: clock.now)  # the host's last answer was at 0
    with pytest.raises(ssh.HostNotAnswering) as caught:
        ssh.pump(channel, None, 900, None, None, clock=clock, wait=clock.sleep, watch=watch)
    assert [round(r) for r in reports] == [30, 60, 90]
    assert 120 <= clock.now < 121  # long before the 900 s command timeout
    assert channel.closed
    assert caught.value.silent_for >= 120
    assert "no answer for 120 s" in str(caught.value) and "installing" in str(caught.value)


def test_a_host_that_answers_again_is_reported_answering_and_its_command_goes_on() -> None:
    clock = FakeClock()
    channel = FakeChannel(clock, [(100.0, "out", b"done\n")], exit_status=0)
    watch, reports = _watched(lambda: clock.now if clock.now < 45 else (clock.now - 45) % 5)  # back at 45 s
    status, stdout, _ = ssh.pump(channel, None, 900, None, None, clock=clock, wait=clock.sleep, watch=watch)
    assert (status, stdout) == (0, "done\n")
    assert len(reports) == 2 and round(reports[0]) == 30 and reports[1] is None


def test_a_short_silence_timeout_still_warns_first() -> None:
    clock = FakeClock()
    watch, reports = _watched(lambda: clock.now, timeout=40)
    with pytest.raises(ssh.HostNotAnswering):
        ssh.pump(FakeChannel(clock, [], exit_status=None), None, None, None, None, clock=clock, wait=clock.sleep,
                 watch=watch)
    assert [round(r) for r in reports] == [20]


def test_output_from_a_host_with_keepalive_answers_is_never_reported_silent() -> None:
    clock = FakeClock()
    channel = FakeChannel(clock, [(300.0, "out", b"slow but alive\n")], exit_status=0)
    watch, reports = _watched(lambda: clock.now % 5)  # answers a keepalive every 5 s
    assert ssh.pump(channel, None, 900, None, None, clock=clock, wait=clock.sleep, watch=watch)[0] == 0
    assert reports == []


class _BlockingTransport:
    """A transport whose keepalive requests are answered only when the test says so."""

    def __init__(self) -> None:
        self.active = True
        self.answer = threading.Event()
        self.requests: list[tuple[str, bool]] = []

    def is_active(self) -> bool:
        return self.active

    def global_request(self, kind, data=None, wait=True):
        self.requests.append((kind, wait))
        while not self.answer.wait(0.01):
            if not self.active:
                return None
        self.answer.clear()
        return None


def test_liveness_counts_only_answered_keepalives() -> None:
    import time

    transport = _BlockingTransport()
    clock = FakeClock()
    liveness = ssh._Liveness(transport, "db-1", interval=0.01, clock=clock).start()
    try:
        time.sleep(0.1)
        clock.now = 50.0  # nothing answered: a silence of 50 s
        assert liveness.silent_for() == 50.0
        assert transport.requests and transport.requests[0] == ("keepalive@openssh.com", True)  # wants a reply
        transport.answer.set()
        deadline = time.monotonic() + 5
        while liveness.silent_for() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert liveness.silent_for() == 0.0
    finally:
        transport.active = False
    liveness._thread.join(timeout=5)
    assert not liveness._thread.is_alive()  # ends with its transport


class _SilentLiveness:
    def __init__(self, speed: float) -> None:
        import time

        self.started = time.monotonic()
        self.speed = speed

    def silent_for(self) -> float:
        import time

        return (time.monotonic() - self.started) * self.speed

    def stop(self) -> None:
        pass


def test_a_silent_host_fails_its_command_naming_it_emits_events_and_drops_the_connection(tmp_path) -> None:
    from kbpg_tui.core.events import EventCollector, HostSilent

    class _Channel(FakeChannel):
        def exec_command(self, command: str) -> None:
            pass

    class _Transport(_FakeTransport):
        def open_session(self, timeout=None):
            return _Channel(FakeClock(), [], exit_status=None)

    class _Client(_FakeClient):
        def get_transport(self):
            return _Transport()

    events = EventCollector()
    host = ssh.Host("db-slave-02", "198.51.100.9")
    connection = ssh.Connection(host, ssh.SshOptions(silence_timeout=120), ssh.KnownHosts(tmp_path / "known_hosts"),
                                events, step=lambda: "02")
    client = _Client()
    connection.client, connection.sudo_mode = client, "root"
    connection._liveness = _SilentLiveness(speed=1000)  # 1 ms is a second: 120 s of silence in 0.12 s
    before = _FakeClient.closed
    with pytest.raises(ssh.HostNotAnswering) as caught:
        connection.run("sleep 300", timeout=60)
    message = str(caught.value)
    assert message.startswith("db-slave-02 (198.51.100.9) stopped answering over SSH")
    assert "ssh.silence_timeout 120 s" in message and "`sleep 300`" in message
    assert "run the same command again" in message
    silent = events.of_type(HostSilent)
    assert silent and silent[0].host == "db-slave-02" and silent[0].step == "02" and silent[0].silent_for >= 30
    assert connection.client is None and _FakeClient.closed == before + 1  # the next command connects afresh


def test_silence_detection_is_off_with_a_zero_timeout(tmp_path) -> None:
    connection = ssh.Connection(ssh.Host("db-1", "198.51.100.7"), ssh.SshOptions(silence_timeout=0),
                                ssh.KnownHosts(tmp_path / "known_hosts"), lambda e: None)

    class _Channel(FakeChannel):
        def exec_command(self, command: str) -> None:
            pass

    class _Transport(_FakeTransport):
        def open_session(self, timeout=None):
            return _Channel(FakeClock(), [], exit_status=None)

    class _Client(_FakeClient):
        def get_transport(self):
            return _Transport()

    connection.client, connection.sudo_mode = _Client(), "root"
    connection._liveness = _SilentLiveness(speed=1000)
    with pytest.raises(ssh.CommandTimeout):
        connection.run("sleep 300", timeout=0.3)


# --- sudo with a password: only sudo's prompt gets it (issue 10) -----------------------------------------

PASSWORD = b"Sudo-pass-9f3k2"


class SudoChannel(FakeChannel):
    """sudo -S as seen from the channel: maybe a prompt, then (password right) the start marker, then the command.

    ``asks``: sudo prompts (no NOPASSWD rule); ``command_output``: what the command prints once it runs, built from
    the stdin it got (``cat``), so a password that reaches the command shows up in its output.
    """

    def __init__(self, clock: FakeClock, asks: bool, split: int | None = None, right_password: bytes = PASSWORD):
        super().__init__(clock, [], exit_status=None)
        self.right_password = right_password
        self.asks = asks
        self.command_started = False
        self.stdin_when_started = b""
        prompt = ssh.SUDO_PROMPT.encode()
        if asks:
            chunks = [prompt] if split is None else [prompt[:split], prompt[split:]]
            self.script = [(0, "err", chunk) for chunk in chunks]
        else:
            self._start()

    def _start(self) -> None:
        self.command_started = True
        self.script.append((self.clock.now, "err", ssh.SUDO_STARTED.encode()))

    def sendall(self, data: bytes) -> None:
        super().sendall(data)
        if self.asks and not self.command_started and self.stdin.endswith(b"\n"):
            if self.stdin == self.right_password + b"\n":
                self._start()
            else:
                self.script.append((self.clock.now, "err", b"Sorry, try again.\n" + ssh.SUDO_PROMPT.encode()))

    def shutdown_write(self) -> None:
        super().shutdown_write()
        if self.command_started:  # cat: prints what it read after sudo let it run, then ends
            given = self.stdin[len(self.right_password) + 1:] if self.asks else self.stdin
            self.script.append((self.clock.now, "out", given))
            self.script.append((self.clock.now, "err", b"cat: done\n"))
        else:  # sudo read EOF instead of a password
            self.script.append((self.clock.now, "err", b"sudo: no password was provided\n"))
        self.exit_status = 0 if self.command_started else 1


def _sudo(channel: FakeChannel, stdin: bytes | None = b"data for cat\n"):
    lines: list[tuple[str, str]] = []
    result = ssh.pump(channel, None, 60, None, lambda stream, line: lines.append((stream, line)),
                      clock=channel.clock, wait=channel.clock.sleep, gate=ssh.SudoGate(PASSWORD, stdin))
    return result, lines


def test_a_sudo_that_does_not_ask_never_gets_the_password() -> None:
    channel = SudoChannel(FakeClock(), asks=False)  # NOPASSWD for this command, or a cached timestamp
    (status, stdout, stderr), lines = _sudo(channel)
    assert status == 0
    assert PASSWORD not in channel.stdin
    assert channel.stdin == b"data for cat\n"
    assert stdout == "data for cat\n"
    assert stderr == "cat: done\n"  # the marker is not output


def test_the_password_goes_to_the_prompt_and_stdin_only_once_the_command_runs() -> None:
    channel = SudoChannel(FakeClock(), asks=True)
    (status, stdout, stderr), lines = _sudo(channel)
    assert status == 0
    assert channel.stdin == PASSWORD + b"\n" + b"data for cat\n"
    assert stdout == "data for cat\n"
    assert stderr == "cat: done\n" and ("stderr", "cat: done") in lines  # no prompt, no marker
    assert not any(ssh.SUDO_PROMPT in line or ssh.SUDO_STARTED in line for _, line in lines)


@pytest.mark.parametrize("split", [1, 5, len(ssh.SUDO_PROMPT) - 1])
def test_a_prompt_split_across_packets_is_still_recognised(split: int) -> None:
    channel = SudoChannel(FakeClock(), asks=True, split=split)
    (status, stdout, stderr), _ = _sudo(channel)
    assert status == 0 and stdout == "data for cat\n" and stderr == "cat: done\n"


def test_a_wrong_password_is_sent_once_and_the_command_never_gets_stdin() -> None:
    channel = SudoChannel(FakeClock(), asks=True, right_password=b"another-one")
    (status, stdout, stderr), _ = _sudo(channel)
    assert status == 1
    assert channel.stdin == PASSWORD + b"\n"  # no second try, and the command's stdin never sent
    assert "Sorry, try again." in stderr and "no password was provided" in stderr
    assert ssh.SUDO_PROMPT not in stderr


def test_a_sudo_that_refuses_without_asking_gets_nothing() -> None:
    clock = FakeClock()
    channel = FakeChannel(clock, [(0, "err", b"kbops is not in the sudoers file.\n")], exit_status=1)
    (status, _, stderr), _ = _sudo(channel)
    assert status == 1 and channel.stdin == b"" and stderr == "kbops is not in the sudoers file.\n"


def test_run_with_a_sudo_password_wraps_the_command_and_keeps_the_password_out_of_argv(tmp_path) -> None:
    seen: dict = {}

    class _Channel(SudoChannel):
        def exec_command(self, command: str) -> None:
            seen["command"] = command

    class _Transport(_FakeTransport):
        def open_session(self, timeout=None):
            return _Channel(FakeClock(), asks=False)

    class _Client(_FakeClient):
        def get_transport(self):
            return _Transport()

    connection = ssh.Connection(ssh.Host("haproxy-02", "198.51.100.8", user="kbops"), ssh.SshOptions(),
                                ssh.KnownHosts(tmp_path / "known_hosts"), lambda e: None,
                                sudo_password=PASSWORD.decode())
    connection.client, connection.sudo_mode = _Client(), "password"
    result = connection.run("cat", stdin="data for cat\n")
    assert result.stdout == "data for cat\n"
    assert PASSWORD.decode() not in seen["command"]
    assert seen["command"].startswith(f"sudo -S -k -p '{ssh.SUDO_PROMPT}' -- sh -c ")
    assert ssh.SUDO_STARTED in seen["command"]


def test_the_start_marker_wrapper_runs_the_command_in_a_real_shell() -> None:
    import subprocess

    wrapped = ssh._with_sudo_password("bash -c 'cat; echo err >&2'")
    assert wrapped.startswith("sudo ")
    without_sudo = wrapped.split(" -- ", 1)[1]  # what sudo would run
    done = subprocess.run(["sh", "-c", without_sudo], input=b"in\n", capture_output=True, timeout=10)
    assert done.stdout == b"in\n"
    assert done.stderr == ssh.SUDO_STARTED.encode() + b"err\n"


# --- redaction before truncation (issue 10) --------------------------------------------------------------

SECRET = "Kq7-long-secret-value-that-is-40-chars!!"


def _halves() -> tuple[str, str]:
    return SECRET[: len(SECRET) // 2], SECRET[len(SECRET) // 2:]


def test_a_timeout_message_never_shows_half_a_secret_cut_at_its_boundary() -> None:
    from kbpg_tui.core.logs import register_secret

    register_secret(SECRET)
    # The last 2000 characters of the raw output start in the middle of the secret.
    output = ("x" * 3000 + SECRET + "y" * (2000 - len(SECRET) // 2 - 1) + "\n").encode()
    with pytest.raises(ssh.CommandTimeout) as caught:
        run([(0, "err", output)], exit_status=None, timeout=5)
    message = str(caught.value)
    for half in _halves():
        assert half not in message
    assert "y" * 100 in message


def test_a_silence_message_never_shows_a_secret() -> None:
    from kbpg_tui.core.logs import register_secret

    register_secret(SECRET)
    clock = FakeClock()
    output = ("z" * 5000 + SECRET + "w" * (2000 - len(SECRET) // 2 - 1) + "\n").encode()
    watch, _ = _watched(lambda: clock.now, timeout=40)
    with pytest.raises(ssh.HostNotAnswering) as caught:
        ssh.pump(FakeChannel(clock, [(0, "out", output)], exit_status=None), None, None, None, None, clock=clock,
                 wait=clock.sleep, watch=watch)
    for half in _halves():
        assert half not in str(caught.value)


def test_result_tail_and_remote_command_errors_are_redacted() -> None:
    from kbpg_tui.core.logs import register_secret

    register_secret(SECRET)
    result = ssh.Result("psql", 1, "", f"FATAL: bad value {SECRET}\n", 0.1)
    assert SECRET not in result.tail() and "FATAL: bad value" in result.tail()
    error = ssh.RemoteCommandError(ssh.Host("db-1", "198.51.100.7"), result)
    assert SECRET not in str(error) and "FATAL: bad value" in str(error)


def test_a_long_command_shown_in_a_message_is_redacted_before_it_is_cut() -> None:
    from kbpg_tui.core.logs import register_secret

    register_secret(SECRET)
    command = "x" * 60 + SECRET  # the 80-character cut falls inside the secret
    shown = ssh._short(command)
    assert len(shown) <= 80
    for half in _halves():
        assert half not in shown


def test_a_command_that_ends_without_reading_its_stdin_reports_its_own_exit_status() -> None:
    """Its stdin is sent only once it runs: by then it may be gone, and the channel closed."""

    class QuickExit(SudoChannel):
        def sendall(self, data: bytes) -> None:
            if self.command_started:
                self.script.append((self.clock.now, "err", b"mkdir: cannot create directory\n"))
                self.exit_status = 1
                raise OSError("Socket is closed")
            super().sendall(data)

        def shutdown_write(self) -> None:
            raise OSError("Socket is closed")

    channel = QuickExit(FakeClock(), asks=False)
    (status, _, stderr), _ = _sudo(channel)
    assert status == 1 and stderr == "mkdir: cannot create directory\n"
