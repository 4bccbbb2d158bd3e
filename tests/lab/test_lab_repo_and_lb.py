"""The lab's apt repository installs the cluster's packages with no outside network; the LB stand-in balances."""

from __future__ import annotations

import socket
import time

import pytest

from kbpg_tui.core.credentials import read_env
from kbpg_tui.core.lab.topology import CLUSTER_HOSTS, HOSTS, LB_ADDRESS, LB_PORTS, REPO_URL, host_by_name

from .conftest import sh

pytestmark = pytest.mark.lab

PACKAGES = "postgresql-17 postgresql-17-pgvector patroni python3-pysyncobj haproxy pgbouncer pgbackrest"
SOURCE_FILE = "/etc/apt/sources.list.d/kbpg-lab-test.list"
KEY_FILE = "/etc/apt/keyrings/kbpg-lab-test.asc"


def _as_root(client, command: str, password: str | None):
    """Run as root directly, or through `sudo -S` with the password on stdin (kbpg's non-root path)."""
    if password is None:
        return sh(client, command)
    quoted = command.replace("'", "'\\''")
    return sh(client, f"sudo -S -p '' sh -c '{quoted}'", stdin_text=password + "\n")


@pytest.mark.parametrize("host", CLUSTER_HOSTS, ids=[h.name for h in CLUSTER_HOSTS])
def test_cluster_packages_install_from_the_lab_repository(connect, lab_workdir, host):
    """Key into /etc/apt/keyrings, a signed-by source line, apt-get update, install -s: as kbpg does with PGDG."""
    password = None
    if host.user_ssh != "root":
        password = read_env(lab_workdir / "credentials" / "sudo.env")["KBPG_SUDO_PASSWORD"]
    client = connect(host, user=host.user_ssh)
    sftp = client.open_sftp()
    try:
        sftp.put(str(lab_workdir / "lab-repo.asc"), "/tmp/kbpg-lab-test.asc")
    finally:
        sftp.close()
    setup = (
        f"install -d -m 0755 /etc/apt/keyrings && install -m 0644 /tmp/kbpg-lab-test.asc {KEY_FILE} && "
        f"echo 'deb [signed-by={KEY_FILE}] {REPO_URL} kbpg-lab main' > {SOURCE_FILE} && "
        "apt-get update 2>&1"
    )
    try:
        code, out, err = _as_root(client, setup, password)
        assert code == 0, out + err
        assert "W:" not in out and "Err:" not in out, out
        code, out, err = _as_root(client, f"apt-get install -s {PACKAGES}", password)
        assert code == 0, out + err
        for package in PACKAGES.split():
            assert f"Inst {package} " in out
    finally:
        _as_root(client, f"rm -f {SOURCE_FILE} {KEY_FILE} /tmp/kbpg-lab-test.asc /var/lib/apt/lists/198.18.0.10_*", password)


def test_repository_refuses_a_wrong_key(connect):
    """The Release is really signed by the lab key: trusting another key (Debian's), apt-get update fails."""
    client = connect(host_by_name("db-slave-01"))
    wrong_key = "/usr/share/keyrings/debian-archive-keyring.gpg"
    try:
        code, out, err = sh(client, f"echo 'deb [signed-by={wrong_key}] {REPO_URL} kbpg-lab main' > {SOURCE_FILE} && apt-get update 2>&1")
        assert code != 0, out + err
        assert "is not signed" in out or "NO_PUBKEY" in out or "Missing key" in out or "signature" in out.lower(), out
    finally:
        sh(client, f"rm -f {SOURCE_FILE} /var/lib/apt/lists/198.18.0.10_*")


def test_lb_stand_in_runs_a_valid_haproxy_and_the_repository(connect):
    client = connect(host_by_name("lb-lab"))
    code, out, _ = sh(client, "systemctl is-active haproxy kbpg-lab-repo")
    assert (code, out.split()) == (0, ["active", "active"])
    code, out, err = sh(client, "haproxy -c -f /etc/haproxy/haproxy.cfg")
    assert code == 0, out + err
    _, listening, _ = sh(client, "ss -Hltn")
    for port in LB_PORTS:
        assert f"{LB_ADDRESS}:{port}" in listening


ECHO_SERVER = """
import socket, threading
name = socket.gethostname()
def serve(port):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(16)
    while True:
        conn, _ = listener.accept()
        try:
            conn.sendall(f"{name}:{port}\\n".encode())
        except OSError:
            pass  # the LB's health checks hang up at once
        finally:
            conn.close()
for port in PORTS:
    threading.Thread(target=serve, args=(port,), daemon=True).start()
threading.Event().wait()
"""


def _read_line(address: str, port: int) -> str:
    try:
        with socket.create_connection((address, port), timeout=2) as conn:
            conn.settimeout(2)
            return conn.recv(100).decode().strip()
    except OSError:
        return ""


def test_lb_stand_in_forwards_to_both_haproxy_hosts(connect):
    """Something listening on 5432/5433/6432 on both HAProxy hosts is reached through the LB, on both."""
    haproxy_hosts = [host for host in HOSTS if host.kind == "haproxy"]
    script = ECHO_SERVER.replace("PORTS", repr(tuple(LB_PORTS)))
    clients = []
    try:
        for host in haproxy_hosts:
            client = connect(host)
            clients.append(client)
            sftp = client.open_sftp()
            with sftp.file("/tmp/kbpg-lab-echo.py", "w") as handle:
                handle.write(script)
            sftp.close()
            # A transient unit with a time limit: it stops by itself whatever happens here.
            code, out, err = sh(client, "systemd-run --unit=kbpg-lab-echo --collect -p RuntimeMaxSec=120 /usr/bin/python3 /tmp/kbpg-lab-echo.py")
            assert code == 0, out + err
        seen: dict[int, set[str]] = {port: set() for port in LB_PORTS}
        deadline = time.monotonic() + 30  # health checks: rise 2 x inter 2 s
        while time.monotonic() < deadline and any(len(names) < 2 for names in seen.values()):
            for port in LB_PORTS:
                answer = _read_line(LB_ADDRESS, port)
                if answer.endswith(f":{port}"):
                    seen[port].add(answer.split(":")[0])
            time.sleep(0.2)
        expected = {host.name for host in haproxy_hosts}
        assert seen == {port: expected for port in LB_PORTS}
    finally:
        for client in clients:
            sh(client, "systemctl stop kbpg-lab-echo; rm -f /tmp/kbpg-lab-echo.py")
