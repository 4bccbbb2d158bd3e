"""The real wizard in a real terminal (tmux), on bare lab hosts, by keys only: welcome → green diagnostics;
and ctrl+q with a host-key question open ends the process at once.

The install runs last among the end-to-end tests: it restarts the lab on bare hosts for its own fresh
install. The host-key case needs no install: it runs with the lab's own tests, in a copy of the work dir.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from kbpg_tui.core import credentials as creds
from kbpg_tui.core import lab
from kbpg_tui.core import settings as cfg

from .conftest import CLUSTER_HOSTS, LB, REPO, wait_healthy

SESSION = "kbpg-e2e-wizard"


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def screen(session: str = SESSION) -> str:
    return tmux("capture-pane", "-p", "-t", session)


def wait_for(text: str, timeout: float, session: str = SESSION) -> str:
    deadline = time.monotonic() + timeout
    shown = ""
    while time.monotonic() < deadline:
        shown = screen(session)
        if text in shown:
            return shown
        time.sleep(0.3)
    raise AssertionError(f"{text!r} not on screen after {timeout} s:\n{shown}")


def keys(*names: str, session: str = SESSION) -> None:
    for name in names:
        tmux("send-keys", "-t", session, name)
        time.sleep(0.3)


@pytest.fixture
def fresh_lab(lab_workdir: Path, tmp_path: Path):
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing (scripts/setup installs it)")
    lab.down(lab_workdir)
    workdir = tmp_path / "wizard-work"
    assert lab.up(workdir, progress=lambda event: None).up
    yield workdir
    subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)
    lab.down(workdir)
    assert lab.up(lab_workdir, progress=lambda event: None).up  # hand the session's lab back as it was


@pytest.mark.lab
@pytest.mark.e2e
def test_wizard_from_welcome_to_green_diagnostics_by_keys(fresh_lab: Path) -> None:
    workdir = fresh_lab
    command = f"cd {REPO} && {sys.executable} -m kbpg_tui --workdir {workdir}; sleep 30"
    tmux("new-session", "-d", "-s", SESSION, "-x", "100", "-y", "30", command)
    wait_for("First install", 15)
    keys("1")
    wait_for("Credentials", 10)
    keys("g")
    wait_for("generated", 10)
    keys("n")
    wait_for("Hosts", 10)
    keys("c")  # SSH check of every host (keys pinned by the lab)
    deadline = time.monotonic() + 60
    while screen().count("✓ ok") < len(CLUSTER_HOSTS):  # 3 DB, 2 HAProxy and the backup host
        assert time.monotonic() < deadline, screen()
        time.sleep(0.5)
    assert "via sudo" in screen()  # haproxy-02 is reached as kbops with sudo
    keys("n")
    wait_for("Plan and settings", 10)
    keys("n")
    wait_for("s starts or resumes", 10)
    keys("s")
    wait_for("install complete", 400)
    keys("n")
    wait_for("ALL GREEN", 90)
    shown = wait_for("streaming", 20)  # the live cluster view fills in on its own worker
    assert "leader" in shown
    keys("e")  # export the report
    time.sleep(1)
    assert list((workdir / "reports").glob("diagnostics-*.md"))
    keys("n")
    wait_for("Connection strings", 10)
    keys("q")
    time.sleep(1)

    values = creds.read_env(workdir / creds.ENV_FILE)
    for name in creds.PASSWORD_NAMES:
        assert values[name] not in screen()
    with psycopg.connect(host=LB.address, port=6432, user=values["POSTGRES_APP_USER"], password=values["POSTGRES_APP_PASS"],
                         dbname=values["POSTGRES_DB"], connect_timeout=10) as conn:
        assert conn.execute("SELECT '[1,2,3]'::vector <-> '[1,2,4]'::vector").fetchone()[0] == 1
    members = wait_healthy(workdir, timeout=30)
    assert len(members) == 3
    assert (workdir / "kbpg.toml").exists()


HOST_KEY_SESSION = "kbpg-e2e-host-key"
QUIT_SECONDS = 2.0


@pytest.mark.lab
def test_quit_with_the_host_key_dialog_open_ends_the_process_at_once(lab_workdir: Path, tmp_path: Path) -> None:
    """One host's key unknown (its pin and its known_hosts line removed, in a copy of the lab's work dir):
    ``c`` on the hosts screen asks about it; ctrl+q then ends the process within 2 s (it used to stay on a
    blank screen for good, its worker waiting for an answer)."""
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing (scripts/setup installs it)")
    workdir = tmp_path / "host-key-work"
    shutil.copytree(lab_workdir, workdir, ignore=shutil.ignore_patterns("logs", "reports", ".kbpg-lab"))
    settings = cfg.load_settings(workdir / "kbpg.toml")
    address = next(host.address for host in lab.topology.CLUSTER_HOSTS if host.kind == "db")
    assert settings.ssh.pinned_host_keys.pop(address)
    cfg.save_settings(settings, workdir / "kbpg.toml")
    known_hosts = workdir / settings.ssh.known_hosts
    if known_hosts.exists():
        known_hosts.write_text("".join(line for line in known_hosts.read_text().splitlines(keepends=True)
                                       if address not in line.split(" ", 1)[0].split(",")))
    exited = tmp_path / "exited"  # the wall-clock time the wizard's process ended, written by the shell
    command = f"cd {REPO} && {sys.executable} -m kbpg_tui --workdir {workdir}; date +%s.%N > {exited}; sleep 30"
    tmux("new-session", "-d", "-s", HOST_KEY_SESSION, "-x", "100", "-y", "30", command)
    try:
        wait_for("First install", 15, HOST_KEY_SESSION)
        keys("1", session=HOST_KEY_SESSION)
        wait_for("Credentials", 10, HOST_KEY_SESSION)
        keys("g", session=HOST_KEY_SESSION)  # whatever is missing (kbpg needs complete credentials to go on)
        keys("n", session=HOST_KEY_SESSION)
        wait_for("Hosts", 10, HOST_KEY_SESSION)
        keys("c", session=HOST_KEY_SESSION)
        shown = wait_for("Unknown SSH host key", 30, HOST_KEY_SESSION)
        assert address in shown and "SHA256:" in shown
        pressed = time.time()
        tmux("send-keys", "-t", HOST_KEY_SESSION, "C-q")
        deadline = time.monotonic() + 20
        while not exited.exists() or not exited.read_text().strip():
            assert time.monotonic() < deadline, f"the wizard did not end 20 s after ctrl+q:\n{screen(HOST_KEY_SESSION)}"
            time.sleep(0.05)
        seconds = float(exited.read_text()) - pressed
        print(f"ctrl+q with the host-key dialog open: the process ended after {seconds:.2f} s")
        assert seconds < QUIT_SECONDS
    finally:
        subprocess.run(["tmux", "kill-session", "-t", HOST_KEY_SESSION], capture_output=True)
    known = known_hosts.read_text() if known_hosts.exists() else ""
    assert not any(line.split(" ", 1)[0] == address for line in known.splitlines()), "the key was never accepted"


@pytest.mark.lab
@pytest.mark.e2e
def test_quit_during_an_install_ends_the_process_at_once(fresh_lab: Path, tmp_path: Path) -> None:
    """ctrl+q while step 02 installs packages on the DB nodes: the process ends within 2 s (the engine is
    cancelled, the hosts' commands closed), and the next run is not held up by the run lock."""
    workdir = fresh_lab
    exited = tmp_path / "exited"
    command = f"cd {REPO} && {sys.executable} -m kbpg_tui --workdir {workdir}; date +%s.%N > {exited}; sleep 30"
    tmux("new-session", "-d", "-s", SESSION, "-x", "100", "-y", "30", command)
    wait_for("First install", 15)
    keys("1")
    wait_for("Credentials", 10)
    keys("g", "n")
    wait_for("Hosts", 10)
    keys("n")
    wait_for("Plan and settings", 10)
    keys("n")
    wait_for("s starts or resumes", 10)
    keys("s")
    deadline = time.monotonic() + 120
    while not re.search(r"02 db-\S+: packages", screen()):
        assert time.monotonic() < deadline, screen()
        time.sleep(0.1)
    time.sleep(2)  # apt at work on the DB nodes
    pressed = time.time()
    tmux("send-keys", "-t", SESSION, "C-q")
    deadline = time.monotonic() + 20
    while not exited.exists() or not exited.read_text().strip():
        assert time.monotonic() < deadline, f"the wizard did not end 20 s after ctrl+q:\n{screen()}"
        time.sleep(0.05)
    seconds = float(exited.read_text()) - pressed
    print(f"ctrl+q during step 02 of an install: the process ended after {seconds:.2f} s")
    assert seconds < QUIT_SECONDS
    result = subprocess.run([sys.executable, "-m", "kbpg_tui", "--workdir", str(workdir), "install", "--yes", "--step", "01"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, f"the next run was held up:\n{result.stdout}\n{result.stderr}"
