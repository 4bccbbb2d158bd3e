"""One run at a time per cluster, on real hosts: the run lock on the DB nodes (kbpg_tui/core/runlock.py).

A second `kbpg install` from another work directory is refused within seconds, naming the first;
diagnostics run meanwhile (they take no lock); a stale lock from another machine is named with
the age of its heartbeat and broken only by `kbpg unlock`.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .conftest import DB_HOSTS, REPO, Installed, kbpg, kbpg_command, on_host

pytestmark = [pytest.mark.lab, pytest.mark.e2e]

LOCK = "/var/lib/kbpg/run.lock"
NODES = ", ".join(host.name for host in DB_HOSTS)  # db-master-01, db-slave-01, db-slave-02 (address order)


def copy_workdir(installed: Installed, target: Path) -> Path:
    """Another operator's work directory for the same cluster: kbpg.toml, servers.tsv, credentials, known_hosts, key."""
    shutil.copytree(installed.workdir, target, ignore=shutil.ignore_patterns("logs", "reports", ".kbpg-lab"))
    return target


def lock_files(installed: Installed) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for host in DB_HOSTS:
        code, out, _ = on_host(installed.workdir, host.address, f"cat {LOCK} 2>/dev/null")
        found[host.name] = out if code == 0 else None
    return found


def test_a_killed_install_left_its_lock_and_the_resumed_run_took_it_over(installed: Installed) -> None:
    # The session's first install was SIGKILLed in step 02 (tests/e2e/conftest.py): its lock stayed on the hosts,
    # and the same command from this machine took it over since that process is gone.
    assert "warning: took over the run lock left by" in installed.output
    assert "no longer running on this machine" in installed.output
    assert all(content is None for content in lock_files(installed).values()), "released at the end"


def test_a_second_install_is_refused_naming_the_first_while_diagnose_runs(installed: Installed, tmp_path: Path) -> None:
    second_dir = copy_workdir(installed, tmp_path / "second")
    first = subprocess.Popen(kbpg_command(installed.workdir, "install", "--yes"), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(600, first.kill)
    watchdog.start()
    lines: list[str] = []
    stopped = False
    try:
        assert first.stdout is not None
        for line in first.stdout:
            lines.append(line)
            if "note: run lock taken on 3 of 3 DB nodes" in line:
                first.send_signal(signal.SIGSTOP)  # the first run holds the lock and stays in the middle of it
                stopped = True
                break
        assert stopped, "the first install never said it took the run lock:\n" + "".join(lines)
        held = lock_files(installed)
        assert all(held.values()), held
        holder = json.loads(held["db-master-01"] or "")
        assert holder["pid"] == first.pid and holder["command"] == "kbpg install --yes"

        started = time.monotonic()
        second = kbpg(second_dir, "install", "--yes", timeout=120)
        seconds = time.monotonic() - started
        assert second.returncode == 3, second.stdout + second.stderr
        assert seconds < 15, f"refused after {seconds:.1f} s"
        message = second.stderr
        assert message.startswith("kbpg: the cluster is busy: its run lock is held by "), message
        for part in (f"{holder['user']}@{socket.gethostname()}", f"pid {first.pid}", str(installed.workdir),
                     "running `kbpg install --yes`", f"since {holder['started']}", "on db-master-01",
                     "Nothing done; run again when it has finished."):
            assert part in message, (part, message)
        assert "== 01" not in second.stdout, "the second run changed nothing"

        diagnosed = kbpg(second_dir, "diagnose", "--json", timeout=180)
        assert diagnosed.returncode == 0, diagnosed.stdout[-3000:] + diagnosed.stderr
        assert lock_files(installed) == held, "neither the refused run nor the diagnostics touched the lock"
    finally:
        if stopped:
            first.send_signal(signal.SIGCONT)
        rest, _ = first.communicate(timeout=600)
        watchdog.cancel()
    output = "".join(lines) + rest
    assert first.returncode == 0, output
    assert "all hosts done." in output
    assert all(content is None for content in lock_files(installed).values()), "the first run released it"
    for host in DB_HOSTS:
        _, modes, _ = on_host(installed.workdir, host.address, "stat -c '%a %U' /var/lib/kbpg")
        assert modes.strip() == "700 root"


def test_a_stale_lock_is_named_and_broken_only_by_kbpg_unlock(installed: Installed, tmp_path: Path) -> None:
    workdir = copy_workdir(installed, tmp_path / "other")
    ghost = {"machine": "ops-laptop-gone", "user": "alice", "command": "kbpg install --yes", "pid": 4242,
             "started": "2025-01-01 09:00:00+00:00", "workdir": "/home/alice/kbpg", "token": "f" * 32,
             "instance": "another-boot/pid:[4026531836]", "pid_start": "7"}
    content = json.dumps(ghost, indent=1) + "\n"
    named = ("alice@ops-laptop-gone (pid 4242, in /home/alice/kbpg) running `kbpg install --yes` "
             "since 2025-01-01 09:00:00+00:00")

    def plant(age: str) -> None:
        for host in DB_HOSTS:
            code, _, err = on_host(installed.workdir, host.address,
                                   f"install -d -m 700 /var/lib/kbpg && cat > {LOCK} && chmod 600 {LOCK} && "
                                   f"touch -d '{age}' {LOCK}", stdin_text=content)
            assert code == 0, err

    try:
        plant("now")  # another machine's run, alive: its heartbeat is fresh
        busy = kbpg(workdir, "install", "--yes", timeout=120)
        assert busy.returncode == 3 and f"the cluster is busy: its run lock is held by {named}" in busy.stderr
        refused = kbpg(workdir, "unlock", "--yes", timeout=120)
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert f"kbpg: not broken: {named}" in refused.stderr and "that run is alive" in refused.stderr
        assert all(lock_files(installed).values())

        plant("10 minutes ago")  # its heartbeat stopped: the run looks gone, and is reported so
        stale = kbpg(workdir, "install", "--yes", timeout=120)
        assert stale.returncode == 3, stale.stdout + stale.stderr
        assert f"the cluster's run lock is held by {named}, but its heartbeat stopped 10 min ago" in stale.stderr
        assert "break the lock with `kbpg unlock`" in stale.stderr and "== 01" not in stale.stdout
        assert all(lock_files(installed).values()), "a stale lock is never broken implicitly"

        unlocked = kbpg(workdir, "unlock", "--yes", timeout=120)
        assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
        assert f"Run lock of {named}: its heartbeat stopped 10 min ago" in unlocked.stdout
        assert f"Broken on {NODES}." in unlocked.stdout
        assert not any(lock_files(installed).values())
    finally:
        for host in DB_HOSTS:  # never leave a planted lock to the next tests
            on_host(installed.workdir, host.address,
                    f"grep -q ops-laptop-gone {LOCK} 2>/dev/null && rm -f {LOCK}; true")

    again = kbpg(workdir, "install", "--yes", timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr
    assert "note: run lock taken on 3 of 3 DB nodes" in again.stdout and "all hosts done." in again.stdout
