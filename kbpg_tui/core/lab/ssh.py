"""Minimal paramiko access to lab hosts, with their host keys pinned.

Only for the lab itself (waiting for hosts, status) and its tests; kbpg's own
SSH layer keeps its own known_hosts. The pinned keys come from
``<workdir>/lab_known_hosts``, written by ``up`` from keys it generated itself:
an unknown or different key is refused (RejectPolicy), never auto-added.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import paramiko

from .workdir import KNOWN_HOSTS_NAME, SSH_KEY_NAME


def connect(workdir: Path, address: str, user: str = "root", timeout: float = 5.0) -> paramiko.SSHClient:
    """An SSH connection to a lab host as ``user`` with the lab key; raises on any failure."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(workdir / KNOWN_HOSTS_NAME))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            address,
            port=22,
            username=user,
            pkey=paramiko.Ed25519Key.from_private_key_file(str(workdir / SSH_KEY_NAME)),
            look_for_keys=False,
            allow_agent=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
    except BaseException:
        client.close()
        raise
    return client


def execute(client: paramiko.SSHClient, command: str, stdin_text: str | None = None, timeout: float = 60.0) -> tuple[int, str, str]:
    """Run ``command``; feed ``stdin_text`` (e.g. a sudo password: never in argv); return (code, stdout, stderr)."""
    stdin, stdout, stderr = client.exec_command(command, timeout=timeout)
    if stdin_text is not None:
        stdin.write(stdin_text)
        stdin.flush()
    stdin.channel.shutdown_write()
    out = stdout.read().decode("utf-8", "replace")
    err = stderr.read().decode("utf-8", "replace")
    return stdout.channel.recv_exit_status(), out, err


def ssh_answers(address: str, timeout: float = 1.0) -> bool:
    """True if something speaking SSH answers on port 22 (banner read, no login)."""
    try:
        with socket.create_connection((address, 22), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def wait_for_login(workdir: Path, address: str, timeout: float) -> paramiko.SSHClient:
    """Retry until root can log in (sshd may still be starting); the last error if it never does."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if ssh_answers(address, timeout=1.0):
            try:
                return connect(workdir, address, timeout=min(5.0, max(deadline - time.monotonic(), 1.0)))
            except (paramiko.SSHException, OSError, EOFError) as exc:
                last_error = exc
        time.sleep(0.2)
    raise TimeoutError(f"{address}: no SSH login within {timeout:.0f} s" + (f" (last error: {last_error})" if last_error else ""))
