"""The real wizard in a real terminal (tmux), on bare lab hosts, by keys only: welcome → green diagnostics.

Runs last among the end-to-end tests: it restarts the lab on bare hosts for its own fresh install.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from kbpg_tui.core import credentials as creds
from kbpg_tui.core import lab

from .conftest import LB, REPO, wait_healthy

pytestmark = [pytest.mark.lab, pytest.mark.e2e]

SESSION = "kbpg-e2e-wizard"


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def screen() -> str:
    return tmux("capture-pane", "-p", "-t", SESSION)


def wait_for(text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    shown = ""
    while time.monotonic() < deadline:
        shown = screen()
        if text in shown:
            return shown
        time.sleep(0.3)
    raise AssertionError(f"{text!r} not on screen after {timeout} s:\n{shown}")


def keys(*names: str) -> None:
    for name in names:
        tmux("send-keys", "-t", SESSION, name)
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
    while screen().count("✓ ok") < 5:
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
