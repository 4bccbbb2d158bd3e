"""HAProxy on the lab: a reload keeps each server's state, checks left paused are resumed by the next install, and a
TLS conversion killed while HAProxy's checks are paused ends correct and unpaused when the install is run again.

- A reload of HAProxy starts a new process which, without the state the old one saved, takes every server UP until
  its first check: `balance first` then sends writes to the first server of the list, a replica, for ~100 ms.
  Step 03's drop-in saves the state just before the reload (load-server-state-from-file): the new process's very
  first answer on the runtime socket shows the primary alone UP in the write backend, no server "initializing".
- A kbpg killed while Patroni's REST API changes scheme leaves HAProxy's checks paused (steps.rest_tls): HAProxy keeps
  routing as it did, the writers see nothing; the next `kbpg install` renders HAProxy for what each node serves,
  resumes every check, and diagnostics are green.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from kbpg_tui.core import settings as cfg
from kbpg_tui.core.steps import rest_tls

from .conftest import (
    HAPROXY_HOSTS,
    REPO,
    Installed,
    kbpg,
    kbpg_command,
    leader_and_timeline,
    on_host,
    own_writer_table,
)
from .test_e2e_15_drill import OwnWriter

pytestmark = [pytest.mark.lab, pytest.mark.e2e]

# Run on an HAProxy node: reload, then the first `show servers state` the new process answers (JSON).
FIRST_STATE_AFTER_RELOAD = r"""
import json, socket, subprocess, time

def ask(command):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    s.connect("/run/haproxy/admin.sock")
    s.sendall(command.encode() + b"\n")
    s.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data.decode()
        data += chunk

def pid():
    for line in ask("show info").splitlines():
        if line.startswith("Pid:"):
            return line.split(":", 1)[1].strip()

before = pid()
subprocess.run(["systemctl", "reload", "haproxy"], check=True)
deadline = time.monotonic() + 15
while time.monotonic() < deadline:
    try:
        now = pid()
        if now and now != before:
            print(json.dumps({"before": before, "after": now, "state": ask("show servers state")}))
            break
    except OSError:
        pass
    time.sleep(0.005)
"""


@pytest.fixture(scope="module", autouse=True)
def own_table(installed: Installed) -> None:
    own_writer_table(installed)



def servers_state(installed: Installed, address: str) -> list[dict[str, str]]:
    code, out, err = on_host(installed.workdir, address, "python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); "
                             "s.connect(\"/run/haproxy/admin.sock\"); s.sendall(b\"show servers state\\n\"); "
                             "print(s.makefile().read())'")
    assert code == 0, err
    return rest_tls.parse_servers_state(out)


def runtime(installed: Installed, address: str, commands: str) -> None:
    code, out, err = on_host(installed.workdir, address, rest_tls.RUNTIME_API, stdin_text=commands + "\n")
    assert code == 0 and not out.strip(), out + err


def test_a_reload_keeps_each_servers_state(installed: Installed) -> None:
    leader, _ = leader_and_timeline(installed)
    for host in HAPROXY_HOSTS:
        code, out, err = on_host(installed.workdir, host.address, "python3 -", stdin_text=FIRST_STATE_AFTER_RELOAD)
        assert code == 0 and out.strip(), f"{host.name}: {err or 'no new process answered'}"
        first = json.loads(out)
        rows = rest_tls.parse_servers_state(first["state"])
        up = [r["srv_name"] for r in rows if r["be_name"] == "postgres_write" and r["srv_op_state"] == "2"]
        assert up == [leader], f"{host.name}: the new process (pid {first['after']}) took {up} UP in the write backend"
        # HCHK_STATUS_INI (1): a server the new process has no check result for yet.
        initializing = [f"{r['be_name']}/{r['srv_name']}" for r in rows if r["srv_check_status"] == "1"]
        assert not initializing, f"{host.name}: started without the saved state: {initializing}"


def test_checks_left_paused_are_resumed_by_the_next_install(installed: Installed) -> None:
    host = HAPROXY_HOSTS[0]
    names = [r["srv_name"] for r in servers_state(installed, host.address) if r["be_name"] == "postgres_write"]
    runtime(installed, host.address, "; ".join(f"disable health {b}/{n}" for b in rest_tls.BACKENDS for n in names))
    assert len(rest_tls.paused(servers_state(installed, host.address))) == 2 * len(names)
    result = kbpg(installed.workdir, "install", "--yes", "--step", "03")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "were paused" in result.stdout and "resumed" in result.stdout, result.stdout
    for proxy in HAPROXY_HOSTS:
        assert rest_tls.paused(servers_state(installed, proxy.address)) == [], proxy.name


def set_tls(installed: Installed, enabled: bool) -> None:
    path = installed.workdir / "kbpg.toml"
    settings = cfg.load_settings(path)
    settings.tls.enabled = enabled
    cfg.save_settings(settings, path)


def test_a_conversion_killed_while_checks_are_paused_ends_correct_when_run_again(installed: Installed) -> None:
    set_tls(installed, False)
    try:
        result = kbpg(installed.workdir, "install", "--yes")
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        set_tls(installed, True)
    before = leader_and_timeline(installed)
    writers = {port: OwnWriter(installed, port) for port in (6432, 5432)}
    for writer in writers.values():
        writer.start()
    try:
        time.sleep(2)
        process = subprocess.Popen(kbpg_command(installed.workdir, "install", "--yes"), cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "paused on" in line:
                time.sleep(1.5)  # the leader's Patroni reloaded: its REST API speaks HTTPS, HAProxy still checks HTTP
                process.send_signal(signal.SIGKILL)
                break
        process.wait(timeout=60)
        assert process.returncode == -signal.SIGKILL, "the install was expected to be killed:\n" + "".join(lines)
        paused = {h.name: rest_tls.paused(servers_state(installed, h.address)) for h in HAPROXY_HOSTS}
        assert all(paused.values()), f"the killed run was expected to leave checks paused: {paused}"
        time.sleep(5)  # HAProxy keeps routing as it did meanwhile
        result = kbpg(installed.workdir, "install", "--yes")
        time.sleep(2)
    finally:
        for writer in writers.values():
            writer.finish()
    print()
    for port, writer in writers.items():
        print(f"  LB:{port}: {len(writer.acks)} writes acknowledged, {len(writer.failures)} failed "
              f"{sorted(set(writer.failures))[:3]}, longest stall {writer.longest_stall():.3f} s")
    assert result.returncode == 0, result.stdout + result.stderr
    for port, writer in writers.items():
        assert writer.failures == [], f"LB:{port}: {sorted(set(writer.failures))}"
    assert leader_and_timeline(installed) == before, "a failover happened"
    for host in HAPROXY_HOSTS:
        assert rest_tls.paused(servers_state(installed, host.address)) == [], host.name
    diagnose = kbpg(installed.workdir, "diagnose", "--json")
    assert diagnose.returncode == 0, diagnose.stdout[-3000:] + diagnose.stderr
