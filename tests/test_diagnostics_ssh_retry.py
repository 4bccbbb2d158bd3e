"""The diagnostics' SSH probes survive one lost SSH connection (CI: check 3 failed on one dropped connection to
haproxy-01 that answered again right after): a command whose connection was lost (ssh.ConnectionLost) runs once
more on a fresh connection (ProbeContext.ssh, which every check's SSH command goes through); a second loss fails
the probe as before, and no other SSH failure (a timeout, a non-zero exit, a silent host, a cancel) is retried.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kbpg_tui.core import ssh
from kbpg_tui.core.checks.c03_services import CHECK as SERVICES
from kbpg_tui.core.checks.report import Verdict
from kbpg_tui.core.checks.runner import run_probes
from kbpg_tui.core.ssh import Cancelled, CommandTimeout, ConnectionLost, HostNotAnswering, SshError

from .fakes import FakePool, FakeProbeContext, ScriptedConnection, lab_probe_context, result

ACTIVE = "haproxy active 0 3600\npgbouncer active 0 3600\n"
LOST = ("haproxy-01 (198.18.0.11): the SSH connection was lost during `echo haproxy $(systemctl show …`; "
        "check that haproxy-01 is reachable, then run the same command again")


def _outcomes(*outcomes):
    """A handler answering each call with the next outcome: an exception is raised, a string is the output."""
    queue = list(outcomes)

    def handler(script: str, stdin: bytes):
        outcome = queue.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome if isinstance(outcome, ssh.Result) else result(outcome)
    return handler


def _context(tmp_path: Path, *outcomes) -> tuple[FakeProbeContext, ScriptedConnection]:
    p = lab_probe_context(tmp_path)
    host = p.ctx.haproxy_hosts[0]
    connection = ScriptedConnection(host, _outcomes(*outcomes))
    p.ctx.pool = FakePool({host.name: connection})
    return p, connection


def _check_3_on_haproxy_01(p: FakeProbeContext):
    probes = [probe for probe in SERVICES.probes(p) if probe.target == "haproxy-01"]
    assert len(probes) == 1
    [outcome] = run_probes(probes, 30).results
    return outcome


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_lost_connection_is_run_again_on_a_fresh_one_and_the_check_passes(tmp_path: Path) -> None:
    p, connection = _context(tmp_path, ConnectionLost(LOST), ACTIVE)
    # A handler on the logger itself: caplog's sits on the root logger, which kbpg's "kbpg" logger stops propagating
    # to once any test has set up kbpg's file logging (logs.setup_file_logging).
    caplog = _Records()
    logger = logging.getLogger("kbpg.diagnose")
    logger.addHandler(caplog)
    try:
        outcome = _check_3_on_haproxy_01(p)
    finally:
        logger.removeHandler(caplog)
    assert (outcome.verdict, outcome.reason) == (Verdict.PASS, "haproxy-01: haproxy, pgbouncer active")
    assert len(connection.calls) == 2 and connection.calls[0] == connection.calls[1]  # the same command, again
    assert p.ctx.pool.gets == ["haproxy-01", "haproxy-01"]  # a connection asked for afresh (the pool reconnects)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "haproxy-01" in warnings[0] and "once more" in warnings[0]


def test_a_second_loss_still_fails_the_check(tmp_path: Path) -> None:
    p, connection = _context(tmp_path, ConnectionLost(LOST), ConnectionLost(LOST), ACTIVE)
    outcome = _check_3_on_haproxy_01(p)
    assert (outcome.verdict, outcome.reason) == (Verdict.FAIL, LOST)
    assert len(connection.calls) == 2  # one retry, never a third try


@pytest.mark.parametrize("error", [
    CommandTimeout("haproxy-01: `echo haproxy …` no end after 1 s; stopped. Last output:\n"),
    HostNotAnswering("haproxy-01 (198.18.0.11) stopped answering over SSH: no answer for 120 s", 120.0),
    Cancelled("haproxy-01: cancelled"),
    SshError("haproxy-01: SSH channel failed during `echo haproxy …`: Channel closed."),
    SshError("haproxy-01 (198.18.0.11): no SSH answer within 10 s"),
    result("", exit_status=3, stderr="systemctl: not found\n"),  # a non-zero exit: RemoteCommandError
], ids=["timeout", "host-not-answering", "cancelled", "channel-failed", "cannot-connect", "non-zero-exit"])
def test_no_other_ssh_failure_is_run_again(tmp_path: Path, error) -> None:
    p, connection = _context(tmp_path, error, ACTIVE)
    outcome = _check_3_on_haproxy_01(p)
    assert outcome.verdict == Verdict.FAIL and outcome.reason.startswith("haproxy-01")
    assert len(connection.calls) == 1


def test_a_lost_connection_is_not_run_again_once_the_run_is_cancelled(tmp_path: Path) -> None:
    p, connection = _context(tmp_path, ConnectionLost(LOST), ACTIVE)
    p.ctx.cancel.set()
    outcome = _check_3_on_haproxy_01(p)
    assert (outcome.verdict, outcome.reason) == (Verdict.FAIL, LOST)
    assert len(connection.calls) == 1


# --- the real Connection and ConnectionPool, over a fake paramiko client -------------------------------------

class _Transport:
    def __init__(self) -> None:
        self.active = True
        self.channel: _Channel | None = None

    def is_active(self) -> bool:
        return self.active

    def set_keepalive(self, seconds: int) -> None:
        pass

    def global_request(self, kind: str, wait: bool = True) -> None:  # the liveness probe's keepalive
        pass

    def open_session(self, timeout=None) -> "_Channel":
        assert self.channel is not None
        return self.channel


class _Channel:
    """A command's channel: ``dies`` (the connection goes down under it: paramiko's exit status -1), or answers
    ``stdout`` with exit status 0."""

    def __init__(self, transport: _Transport, dies: bool, stdout: bytes = b"") -> None:
        self.transport, self.dies, self.stdout = transport, dies, stdout
        self.commands: list[str] = []

    def exec_command(self, command: str) -> None:
        self.commands.append(command)
        if self.dies:
            self.transport.active = False

    def recv_ready(self) -> bool:
        return bool(self.stdout)

    def recv(self, nbytes: int) -> bytes:
        data, self.stdout = self.stdout[:nbytes], self.stdout[nbytes:]
        return data

    def recv_stderr_ready(self) -> bool:
        return False

    def recv_stderr(self, nbytes: int) -> bytes:
        return b""

    def exit_status_ready(self) -> bool:
        return True

    @property
    def eof_received(self) -> bool:
        return True

    def recv_exit_status(self) -> int:
        return -1 if self.dies else 0

    def sendall(self, data: bytes) -> None:
        pass

    def shutdown_write(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_the_real_pool_reconnects_after_the_lost_connection_and_check_3_passes(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """ssh.py raises ConnectionLost where paramiko's exit status is -1 on a dead transport, drops the connection,
    and the pool's next get connects afresh: the retry runs on a new SSH connection."""
    clients: list[_Client] = []

    class _Client:
        def __init__(self) -> None:
            self.transport = _Transport()
            first = not clients
            self.transport.channel = _Channel(self.transport, dies=first, stdout=b"" if first else ACTIVE.encode())
            self.closed = False
            clients.append(self)

        def get_host_keys(self):
            return self

        def add(self, *args) -> None:
            pass

        def set_missing_host_key_policy(self, policy) -> None:
            pass

        def connect(self, **kwargs) -> None:
            assert kwargs["hostname"] == "198.18.0.11"  # the lab's haproxy-01; nothing is really reached

        def get_transport(self):
            return None if self.closed else self.transport

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(ssh.paramiko, "SSHClient", _Client)
    pool = ssh.ConnectionPool(ssh.SshOptions(silence_timeout=0), ssh.KnownHosts(tmp_path / "known_hosts"),
                              lambda event: None)
    p = lab_probe_context(tmp_path)
    p.ctx.pool = pool
    try:
        outcome = _check_3_on_haproxy_01(p)
    finally:
        pool.close()
    assert (outcome.verdict, outcome.reason) == (Verdict.PASS, "haproxy-01: haproxy, pgbouncer active")
    assert len(clients) == 2 and clients[0].closed  # the lost one dropped, a new one connected
    assert clients[0].transport.channel.commands == clients[1].transport.channel.commands  # the same command
