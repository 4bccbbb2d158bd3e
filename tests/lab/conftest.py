"""Helpers of the lab tests; the lab itself (``lab_workdir``) is the session fixture in tests/conftest.py.

Every test here is marked ``lab``: it needs root, namespaces and (for a cold
cache) debootstrap and the Debian mirror. Select them with ``-m lab``.
"""

from __future__ import annotations

import pytest

from kbpg_tui.core.lab import ssh as lab_ssh
from kbpg_tui.core.lab.topology import HOSTS


@pytest.fixture
def connect(lab_workdir):
    """connect(host_or_address, user="root") -> paramiko client, closed after the test."""
    clients = []

    def _connect(target, user: str = "root"):
        address = target.address if hasattr(target, "address") else target
        client = lab_ssh.connect(lab_workdir, address, user=user, timeout=10)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        client.close()


def sh(client, command: str, stdin_text: str | None = None, timeout: float = 120) -> tuple[int, str, str]:
    return lab_ssh.execute(client, command, stdin_text=stdin_text, timeout=timeout)


HOST_IDS = [host.name for host in HOSTS]
