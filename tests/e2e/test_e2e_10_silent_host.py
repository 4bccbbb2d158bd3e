"""A host whose network dies mid-command, and Ctrl-C during an install, on the lab's bare hosts (no install needed).

- The silent host is named within ~30 s (the CLI's line), its task fails after ``ssh.silence_timeout`` with a
  message saying what to do, the other hosts' commands finish; once the link is back, the same work succeeds.
- SIGINT during ``kbpg install --yes`` while a host hangs in its SSH connect: every host's work is cancelled,
  the summary printed and the exit status is 130, within 2 s; the run lock is given back.
"""

from __future__ import annotations

import io
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from kbpg_tui.cli import PlainPrinter
from kbpg_tui.core import install as inst
from kbpg_tui.core import lab
from kbpg_tui.core.engine import Outcome, Step, Task, TaskRun
from kbpg_tui.core.events import Status
from kbpg_tui.core.runlock import LOCK_DIR, LOCK_NAME
from kbpg_tui.core.settings import load_settings, save_settings

from .conftest import DB_HOSTS, REPO, kbpg_command, on_host

pytestmark = [pytest.mark.lab, pytest.mark.e2e]

SILENCE_TIMEOUT = 40  # seconds; the warning then comes at 20 s
TARGET = "db-slave-02"
OTHERS_SLEEP = 75  # the other hosts are still working when the target is given up on (cut + 40 s)


class TimedLines(io.StringIO):
    """The CLI printer's stream, with the time each line was written."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[float, str]] = []

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                self.lines.append((time.monotonic(), line))
        return super().write(text)


def _settings_with_short_silence(lab_workdir: Path, tmp_path: Path):
    """kbpg.toml of the lab, copied with ssh.silence_timeout = 40 (and read back: the value is valid)."""
    settings = load_settings(lab_workdir / "kbpg.toml")
    settings.ssh.silence_timeout = SILENCE_TIMEOUT
    copy = tmp_path / "kbpg.toml"
    save_settings(settings, copy)
    loaded = load_settings(copy)
    assert loaded.ssh.silence_timeout == SILENCE_TIMEOUT
    return loaded


def _wait_reachable(lab_workdir: Path, address: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            code, _, _ = on_host(lab_workdir, address, "true", timeout=10)
            if code == 0:
                return
        except Exception:  # noqa: BLE001 (not reachable yet)
            if time.monotonic() > deadline:
                raise
        time.sleep(1)


def test_a_host_that_goes_silent_is_named_then_failed_while_the_others_finish(lab_workdir: Path, tmp_path: Path) -> None:
    settings = _settings_with_short_silence(lab_workdir, tmp_path)
    stream = TimedLines()
    run = inst.prepare(lab_workdir, settings, PlainPrinter(stream=stream))
    target = next(h for h in DB_HOSTS if h.name == TARGET)

    def wait(task: TaskRun) -> Outcome:
        seconds = 300 if task.host.name == TARGET else OTHERS_SLEEP
        task.run(f"sleep {seconds}; echo slept", timeout=600)
        return Outcome.changed(f"slept {seconds} s")

    try:
        for host in run.ctx.db_hosts:  # connected first: the link dies in the middle of a command
            run.ctx.pool.get(host)
        reports = []
        worker = threading.Thread(target=lambda: reports.append(
            run.engine.run_step(Step("02", "silence drill", [Task("wait", "db", wait)]))), daemon=True)
        began = time.monotonic()
        worker.start()
        time.sleep(5)
        cut = time.monotonic()
        lab.set_host_link(TARGET, up=False)
        try:
            worker.join(timeout=OTHERS_SLEEP + 60)
            assert not worker.is_alive(), "the step did not end"
        finally:
            lab.set_host_link(TARGET, up=True)
        ended = time.monotonic()
        printed = "\n".join(line for _, line in stream.lines)

        # Named within ~30 s of the cut, on the CLI's own line.
        silent = [(at, line) for at, line in stream.lines if "NOT ANSWERING" in line]
        assert silent, printed
        first_at, first_line = silent[0]
        assert TARGET in first_line and first_line.split()[0] == "02"
        assert first_at - cut <= 35, f"named after {first_at - cut:.1f} s:\n{printed}"
        assert all(TARGET in line for _, line in silent)

        # Failed after the silence timeout, not the command timeout, saying what to do; the others finished.
        report = reports[0]
        assert report.status == Status.FAILED
        by_host = {t.host: t for t in report.tasks}
        failed = by_host[TARGET]
        assert failed.status == Status.FAILED
        assert failed.detail.startswith(f"{TARGET} ({target.address}) stopped answering over SSH"), failed.detail
        assert f"ssh.silence_timeout {SILENCE_TIMEOUT} s" in failed.detail
        assert "run the same command again" in failed.detail
        failed_at = next(at for at, line in stream.lines if TARGET in line and " failed " in line)
        assert SILENCE_TIMEOUT - 10 <= failed_at - cut <= SILENCE_TIMEOUT + 15, f"{failed_at - cut:.1f} s\n{printed}"
        for host in DB_HOSTS:
            if host.name != TARGET:
                assert by_host[host.name].status == Status.CHANGED, printed
                assert by_host[host.name].detail == f"slept {OTHERS_SLEEP} s"
        assert ended - began >= OTHERS_SLEEP  # they were left to finish their own work

        # Once the link is back, the same work goes through (a fresh connection to the target).
        _wait_reachable(lab_workdir, target.address)
        again = run.engine.run_step(Step("02", "after the link is back", [Task(
            "check", "db", lambda task: Outcome.of(task.run("echo back").stdout == "back\n", "answered"))]))
        assert again.status == Status.CHANGED, [t.detail for t in again.tasks]
        assert {t.host for t in again.tasks if t.status == Status.CHANGED} == {h.name for h in DB_HOSTS}
    finally:
        run.close()
        lab.set_host_link(TARGET, up=True)
    print(f"\nsilent host: named {first_at - cut:.1f} s after the cut, failed {failed_at - cut:.1f} s after it; "
          f"step {ended - began:.1f} s")


def test_ctrl_c_during_an_install_cancels_every_host_within_2_s(lab_workdir: Path) -> None:
    """haproxy-01 is cut off, so its preflight hangs in the SSH connect (10 s), where no cancel reaches."""
    hanging = "haproxy-01"
    lab.set_host_link(hanging, up=False)
    try:
        process = subprocess.Popen(kbpg_command(lab_workdir, "install", "--yes"), cwd=REPO, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        lines = []
        try:
            for line in process.stdout:
                lines.append(line)
                if line.startswith("== 01 "):
                    break
            time.sleep(1.5)  # the other hosts' checks run or are done; haproxy-01 is still connecting
            process.send_signal(signal.SIGINT)
            sent = time.monotonic()
            code = process.wait(timeout=30)
            elapsed = time.monotonic() - sent
        finally:
            process.kill()
        output = "".join(lines) + process.stdout.read()
    finally:
        lab.set_host_link(hanging, up=True)
    assert code == 130, output
    assert elapsed < 2.0, f"{elapsed:.2f} s after SIGINT\n{output}"
    summary = [line for line in output.splitlines() if line.startswith("Summary:")]
    assert summary and "NOT done: interrupted (Ctrl-C)" in summary[0], output
    assert any(hanging in line and "cancelled" in line for line in output.splitlines()), output
    # The run lock was given back: nothing of this run is left on the DB nodes.
    for host in DB_HOSTS:
        code, out, _ = on_host(lab_workdir, host.address, f"ls {LOCK_DIR}/{LOCK_NAME} 2>/dev/null; true")
        assert out.strip() == "", f"{host.name}: run lock left behind"
    print(f"\nCtrl-C: exit 130 {elapsed:.2f} s after SIGINT")
