"""The Raft watchdog (kbpg_tui.core.raft, raft_watch, raft_node): the script step 02 installs on each DB node, its
decisions, the task that installs or removes it, and check 3's word on its timer.

The script is tested as it is rendered (the very text uploaded), loaded as a module or run with python3 against a
fake systemctl and a fake pysyncobj; the task runs its real shell against a directory of the test's. The lab shows
the rest (a replica's Patroni stopped with SIGSTOP, healed; a healthy cluster left alone).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import pytest

from kbpg_tui.core import credentials as creds
from kbpg_tui.core import inventory as inv
from kbpg_tui.core import raft, raft_watch
from kbpg_tui.core.checks import c03_services
from kbpg_tui.core.checks.base import CheckWarning
from kbpg_tui.core.engine import Context, Status, TaskRun
from kbpg_tui.core.settings import Settings, SettingsError, from_dict
from kbpg_tui.core.steps import s02_patroni as patroni

from .fakes import FakePool, LocalShellConnection, ScriptedConnection, lab_probe_context, result

SILENT = "r:silent 198.18.0.121:7000 connection lost"
ANSWERED = 'r:status {"leader": "198.18.0.120:7000", "raft_term": 3}'
LONG_UP = ("active", 1000.0)  # patroni active since t=1000 s (monotonic)


def script_module() -> types.ModuleType:
    """The rendered script, loaded as a module (its ``if __name__ == "__main__"`` call does not run)."""
    module = types.ModuleType("kbpg_raft_watch_rendered")
    exec(compile(raft.watchdog_script(), raft.WATCH_SCRIPT, "exec"), module.__dict__)  # noqa: S102
    return module


@pytest.fixture
def w() -> types.ModuleType:
    return script_module()


def looks(w: types.ModuleType, answers: list[str | None], start: float, every: float = 10.0,
          unit: tuple[str, float | None] = LONG_UP, state: dict | None = None) -> tuple[list[str], dict]:
    """decide() on successive looks ``every`` seconds apart: the actions, and the state left."""
    actions, state = [], dict(state or {})
    for index, answer in enumerate(answers):
        action, state, _reason = w.decide(state, start + index * every, unit, answer)
        actions.append(action)
    return actions, state


# --- rendering --------------------------------------------------------------------------------------------------

def test_the_script_carries_the_probes_own_ask_and_the_watchdog() -> None:
    script = raft.watchdog_script()
    assert script.startswith("#!/usr/bin/python3\n")
    # One ask_raft for check 3, the drill and the watchdog: the same text in the probe and in the script.
    assert raft.ASK_SOURCE in script and raft.ASK_SOURCE in raft.PROBE
    assert "def ask_raft(" in raft.ASK_SOURCE and "TcpUtility" in raft.ASK_SOURCE
    assert Path(raft_watch.__file__).read_text() in script
    assert script.rstrip().endswith(f"raise SystemExit(main(ask_raft, {raft.PATRONI_CONFIG!r}, {raft.ASK_TIMEOUT!r}))")
    compile(script, raft.WATCH_SCRIPT, "exec")
    files = {path: (text, mode) for path, text, mode in raft.watchdog_files()}
    assert files[raft.WATCH_SCRIPT] == (script, 0o755)
    assert set(files) == {"/usr/local/sbin/kbpg-raft-watch", "/etc/systemd/system/kbpg-raft-watch.service",
                          "/etc/systemd/system/kbpg-raft-watch.timer"}


def test_the_units_run_one_look_every_10_s_from_the_timers_start() -> None:
    service, timer = raft.WATCH_SERVICE_TEXT, raft.WATCH_TIMER_TEXT
    assert "Type=oneshot" in service and f"ExecStart={raft.WATCH_SCRIPT}" in service
    # A look that hangs is ended (the restart it waits for is given its own RESTART_TIMEOUT first).
    assert f"TimeoutStartSec={raft_watch.RESTART_TIMEOUT + 60}" in service
    assert "LogLevelMax=notice" in service  # systemd's Starting/Finished lines every 10 s stay out of the journal
    # OnUnitActiveSec alone never fires on a service that never ran: OnActiveSec makes the first look.
    assert "OnActiveSec=10s" in timer and "OnUnitActiveSec=10s" in timer and "AccuracySec=1s" in timer
    assert "WantedBy=timers.target" in timer


def test_the_setting_is_on_by_default_and_named_when_wrong() -> None:
    assert Settings().patroni.raft_watchdog is True
    assert from_dict({"patroni": {"raft_watchdog": False}}).patroni.raft_watchdog is False
    with pytest.raises(SettingsError, match="patroni.raft_watchdog"):
        from_dict({"patroni": {"raft_watchdog": "yes"}})


# --- the decisions ----------------------------------------------------------------------------------------------

def test_three_silent_looks_in_a_row_restart_patroni_once(w: types.ModuleType) -> None:
    actions, state = looks(w, [SILENT] * 3, start=2000)
    assert actions == ["count", "count", "restart"]
    assert state == {"restarted": 2020}
    _, _, reason = w.decide({"silent": 2, "last": 2010, "since": 1000.0}, 2020, LONG_UP, SILENT)
    assert "198.18.0.121:7000" in reason and "connection lost" in reason and "3 look(s) in a row" in reason


def test_an_answer_or_an_unaskable_raft_ends_the_streak(w: types.ModuleType) -> None:
    assert looks(w, [SILENT, SILENT, ANSWERED, SILENT, SILENT], start=2000)[0] == [
        "count", "count", "", "count", "count"]
    assert looks(w, [SILENT, SILENT, "r:unknown ModuleNotFoundError", SILENT, SILENT], start=2000)[0] == [
        "count", "count", "", "count", "count"]


def test_startup_grace_a_young_patroni_is_never_restarted(w: types.ModuleType) -> None:
    # Active for 60 s or less: its Raft may still be binding its port; silent looks do not count.
    young = ("active", 2000.0)
    actions, state = looks(w, [SILENT] * 7, start=2000, unit=young)  # 0..60 s after its start
    assert actions == [""] * 7 and "silent" not in state
    # The first look after the grace counts from 1.
    assert looks(w, [SILENT] * 3, start=2061, unit=young)[0] == ["count", "count", "restart"]


def test_a_patroni_not_active_or_restarted_in_between_is_not_counted(w: types.ModuleType) -> None:
    for state in ("inactive", "activating", "deactivating", "failed", "unknown"):
        assert looks(w, [SILENT] * 4, start=2000, unit=(state, 1000.0))[0] == [""] * 4
    assert looks(w, [SILENT] * 4, start=2000, unit=("active", None))[0] == [""] * 4
    # Two silent looks on one start of Patroni, then another start (by hand, a drill): the count starts again.
    _, state = looks(w, [SILENT, SILENT], start=2000)
    assert looks(w, [SILENT, SILENT], start=2100, unit=("active", 2020.0), state=state)[0] == ["count", "count"]
    # The count is per start of Patroni, even when the looks are close enough to be in a row.
    _, state = looks(w, [SILENT, SILENT], start=2000, unit=("active", 900.0))
    assert looks(w, [SILENT], start=2020, state=state)[0] == ["count"]


def test_looks_too_far_apart_are_not_in_a_row(w: types.ModuleType) -> None:
    assert looks(w, [SILENT] * 3, start=2000, every=61)[0] == ["count"] * 3
    assert looks(w, [SILENT] * 3, start=2000, every=60)[0] == ["count", "count", "restart"]


def test_rate_limit_one_restart_in_10_minutes_then_one_warning(w: types.ModuleType) -> None:
    _, state = looks(w, [SILENT] * 3, start=2000)  # restarted at 2020
    # Patroni back (a new start at 2025), silent again past its grace: held, said once, not restarted.
    unit = ("active", 2025.0)
    actions, state = looks(w, [SILENT] * 20, start=2100, unit=unit, state=state)  # 2100..2290
    assert actions[:3] == ["count", "count", "hold"] and set(actions[3:]) == {""}
    assert state["restarted"] == 2020
    _, _, reason = w.decide({**state, "held": False}, 2300, unit, SILENT)
    assert "NOT restarting" in reason and "280 s ago" in reason
    # Still silent: 600 s after the last restart it restarts again, and not before.
    actions, state = looks(w, [SILENT] * 33, start=2300, unit=unit, state=state)  # 2300..2620
    assert set(actions[:-1]) == {""} and actions[-1] == "restart" and state == {"restarted": 2620}


def test_a_restart_time_from_the_future_is_no_time(w: types.ModuleType) -> None:
    # /run is emptied at boot; a state copied from elsewhere, or unreadable, does not hold the watchdog forever.
    for restarted in (9999.0, "yesterday"):
        assert looks(w, [SILENT] * 3, start=2000, state={"restarted": restarted})[0] == ["count", "count", "restart"]


# --- one look, as the timer runs it -------------------------------------------------------------------------------

class Node:
    """What main() talks to: patroni's unit, its Raft's answers, systemctl restart, the clock, the journal."""

    def __init__(self, answers: list[str], unit: tuple[str, float | None] = LONG_UP, now: float = 2000.0):
        self.answers, self.unit_state, self.now = list(answers), unit, now
        self.asked: list[tuple[str, float]] = []
        self.restarts = 0
        self.journal: list[str] = []

    def ask(self, config: str, timeout: float) -> str:
        self.asked.append((config, timeout))
        return self.answers.pop(0)

    def unit(self) -> tuple[str, float | None]:
        return self.unit_state

    def restart(self) -> str:
        self.restarts += 1
        return "patroni restarted in 2.0 s"

    def say(self, text: str, flush: bool = False) -> None:
        self.journal.append(text)

    def look(self, w: types.ModuleType, state_dir: Path) -> None:
        assert w.main(self.ask, "/etc/patroni/config.yml", 3.0, state_dir=str(state_dir), unit=self.unit,
                      restart=self.restart, clock=lambda: self.now, say=self.say) == 0
        self.now += 10


def test_looks_keep_their_count_in_a_root_only_state_directory(w: types.ModuleType, tmp_path: Path) -> None:
    state_dir = tmp_path / "kbpg-raft-watch"
    state_dir.mkdir(mode=0o755)
    node = Node([SILENT] * 3)
    for _ in range(3):
        node.look(script_module(), state_dir)  # each look a new process: only the state directory links them
    assert node.restarts == 1 and node.asked == [("/etc/patroni/config.yml", 3.0)] * 3
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / "state.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((state_dir / "lock").stat().st_mode) == 0o600
    assert json.loads((state_dir / "state.json").read_text()) == {"restarted": 2020.0}
    node_name = os.uname().nodename
    assert node.journal[0].startswith(f"<5>kbpg-raft-watch on {node_name}: Patroni's Raft (198.18.0.121:7000)")
    assert node.journal[-2].startswith("<4>") and "restarting patroni" in node.journal[-2]
    assert node.journal[-1] == f"<4>kbpg-raft-watch on {node_name}: patroni restarted in 2.0 s"


def test_a_young_or_stopped_patroni_is_not_even_asked(w: types.ModuleType, tmp_path: Path) -> None:
    for unit in (("active", 1960.0), ("inactive", None)):  # active for 40, 50 and 60 s; not active
        node = Node([], unit=unit)
        for _ in range(3):
            node.look(w, tmp_path / "state")
        assert node.asked == [] and node.restarts == 0 and node.journal == []


def test_a_healthy_raft_is_never_restarted_and_nothing_is_logged(w: types.ModuleType, tmp_path: Path) -> None:
    node = Node([ANSWERED] * 60)
    for _ in range(60):
        node.look(w, tmp_path / "state")
    assert node.restarts == 0 and node.journal == []


def test_a_look_killed_during_the_restart_still_holds_the_rate_limit(w: types.ModuleType, tmp_path: Path) -> None:
    node = Node([SILENT] * 6)

    def killed() -> str:
        raise KeyboardInterrupt  # the look ended (TimeoutStartSec, a reboot) while systemctl restart ran

    for _ in range(2):
        node.look(w, tmp_path / "state")
    with pytest.raises(KeyboardInterrupt):
        w.main(node.ask, "c", 3.0, state_dir=str(tmp_path / "state"), unit=node.unit, restart=killed,
               clock=lambda: node.now, say=node.say)
    node.now, node.unit_state = 2200.0, ("active", 2100.0)  # patroni came back, and its Raft is silent again
    for _ in range(3):
        node.look(w, tmp_path / "state")
    assert node.restarts == 0 and "NOT restarting" in node.journal[-1]


# --- the rendered script run by python3, with a fake systemctl and a fake pysyncobj -------------------------------

def _fake_node(tmp_path: Path, raft_answer: str, since_seconds_ago: float) -> tuple[Path, dict]:
    """A fake systemctl (on PATH) and pysyncobj (on PYTHONPATH); patroni's configuration with a password."""
    bin_dir, lib = tmp_path / "bin", tmp_path / "lib" / "pysyncobj"
    bin_dir.mkdir()
    lib.mkdir(parents=True)
    since = int((time.monotonic() - since_seconds_ago) * 1e6)
    (bin_dir / "systemctl").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$*" >> {tmp_path}/systemctl.log
        if [ "$1" = show ]; then printf 'ActiveState=active\\nActiveEnterTimestampMonotonic={since}\\n'; fi
        """))
    (bin_dir / "systemctl").chmod(0o755)
    (lib / "__init__.py").write_text("")
    (lib / "utility.py").write_text(textwrap.dedent(f"""\
        import json
        class TcpUtility:
            def __init__(self, password, timeout):
                self.password, self.timeout = password, timeout
            def executeCommand(self, address, command):
                with open({str(tmp_path / "asked.json")!r}, "a") as f:
                    f.write(json.dumps([self.password, self.timeout, address, command]) + "\\n")
                if {raft_answer!r} == "timeout":
                    raise Exception("no answer from " + address + " with " + self.password)
                return None if {raft_answer!r} == "refused" else {{"leader": "198.18.0.120:7000", "raft_term": 4}}
        """))
    (tmp_path / "config.yml").write_text("raft:\n  self_addr: 198.18.0.121:7000\n  password: s3cret-raft-pw\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(lib.parent)}
    return tmp_path, env


def _run_script(tmp_path: Path, env: dict) -> subprocess.CompletedProcess:
    script = raft.watchdog_script().replace(f'STATE_DIR = "{raft_watch.STATE_DIR}"', f'STATE_DIR = "{tmp_path}/run"')
    script = script.replace(repr(raft.PATRONI_CONFIG), repr(str(tmp_path / "config.yml")))
    path = tmp_path / "kbpg-raft-watch"
    path.write_text(script)
    return subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("answer", ["timeout", "refused"])
def test_the_script_asks_with_the_nodes_password_restarts_at_the_third_look_and_never_shows_it(
        tmp_path: Path, answer: str) -> None:
    root, env = _fake_node(tmp_path, answer, since_seconds_ago=300)
    outputs = []
    for _ in range(3):
        done = _run_script(root, env)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    asked = [json.loads(line) for line in (root / "asked.json").read_text().splitlines()]
    assert asked == [["s3cret-raft-pw", 3.0, "198.18.0.121:7000", ["status"]]] * 3
    calls = (root / "systemctl.log").read_text().splitlines()
    assert calls.count("restart patroni.service") == 1 and calls[-1] == "restart patroni.service"
    assert "look(s) in a row" in outputs[0] and "restarting patroni" in outputs[2]
    assert "s3cret-raft-pw" not in "".join(outputs) + done.stderr
    if answer == "timeout":
        assert "no answer from 198.18.0.121:7000 with [password]" in outputs[0]


def test_the_script_leaves_a_raft_that_answers_alone(tmp_path: Path) -> None:
    root, env = _fake_node(tmp_path, "answers", since_seconds_ago=300)
    for _ in range(4):
        done = _run_script(root, env)
        assert done.returncode == 0 and done.stdout == "", done.stderr
    assert "restart" not in (root / "systemctl.log").read_text()


def test_the_probe_of_check_3_and_the_drill_runs_the_same_ask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, env = _fake_node(tmp_path, "timeout", since_seconds_ago=300)
    (root / "bin" / "systemctl").write_text('#!/bin/sh\ncase "$3" in ActiveState) echo active;; *) echo 1000000;; esac\n')
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])
    connection = LocalShellConnection(patroni.Host("db-slave-01", "198.18.0.121"),
                                      {raft.PATRONI_CONFIG: root / "config.yml"})
    status = raft.ask(connection)
    assert status.answers is False
    assert status.detail.endswith("does not answer: no answer from 198.18.0.121:7000 with [password]")


# --- step 02's task ---------------------------------------------------------------------------------------------

FAKE_SYSTEMCTL = """#!/bin/sh
# systemctl for the task's shell: units' state as files in $UNITS
echo "$*" >> "$UNITS/log"
case "$1" in
  is-enabled) if [ -e "$UNITS/$2.enabled" ]; then echo enabled; else echo disabled; exit 1; fi ;;
  is-active) if [ -e "$UNITS/$2.active" ]; then echo active; else echo inactive; exit 3; fi ;;
  enable) touch "$UNITS/$2.enabled" ;;
  restart|start) touch "$UNITS/$2.active" ;;
  disable) if [ "$2" = --now ]; then shift; rm -f "$UNITS/$2.active"; fi; rm -f "$UNITS/$2.enabled" ;;
esac
"""


class TaskNode:
    """A DB node for the task: its files under ``root`` (the real upload and removal shell runs), a fake systemctl."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
        self.root, self.units = tmp_path / "node", tmp_path / "units"
        self.units.mkdir()
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
        (bin_dir / "systemctl").chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
        monkeypatch.setenv("UNITS", str(self.units))
        self.paths = {remote: self.root / remote.lstrip("/") for remote in (
            "/usr/local/sbin", "/etc/systemd/system", raft_watch.STATE_DIR)}

    def run(self, real_inventory: Path, watchdog: bool = True) -> tuple[object, LocalShellConnection]:
        values, _ = creds.generate()
        settings = from_dict({"patroni": {"raft_watchdog": watchdog}})
        ctx = Context(settings, values, inv.load_selection(real_inventory), Path("/nonexistent"), pool=FakePool(),
                      sink=lambda e: None, cancel=threading.Event())  # type: ignore[arg-type]
        connection = LocalShellConnection(ctx.db_hosts[0], self.paths)
        ctx.pool = FakePool({ctx.db_hosts[0].name: connection})
        outcome = patroni.install_raft_watchdog(TaskRun(ctx, "02", ctx.db_hosts[0]))
        return outcome, connection

    def file(self, remote: str) -> Path:
        return self.root / remote.lstrip("/")

    def systemctl(self) -> list[str]:
        log = self.units / "log"
        lines = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return [line for line in lines if not line.startswith(("is-enabled", "is-active"))]


def _writes(connection: LocalShellConnection) -> int:
    return sum("mktemp" in script for script in connection.scripts)


def test_the_task_uploads_only_what_differs_and_starts_the_timer(real_inventory: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    node = TaskNode(tmp_path, monkeypatch)
    outcome, connection = node.run(real_inventory)
    assert outcome.status is Status.CHANGED  # type: ignore[attr-defined]
    assert "kbpg-raft-watch.timer enabled and started" in outcome.detail  # type: ignore[attr-defined]
    assert _writes(connection) == 3
    for path, text, mode in raft.watchdog_files():
        assert node.file(path).read_text() == text and stat.S_IMODE(node.file(path).stat().st_mode) == mode
    assert node.systemctl() == ["daemon-reload", "enable kbpg-raft-watch.timer", "restart kbpg-raft-watch.timer"]

    outcome, connection = node.run(real_inventory)  # nothing differs: nothing written, nothing restarted
    assert outcome.status is Status.UNCHANGED and _writes(connection) == 0  # type: ignore[attr-defined]
    assert outcome.detail == "Raft watchdog in place (kbpg-raft-watch.timer active)"  # type: ignore[attr-defined]
    assert node.systemctl() == []

    node.file(raft.WATCH_SCRIPT).write_text("# edited by hand\n")  # only the script: no reload, no timer restart
    outcome, connection = node.run(real_inventory)
    assert outcome.status is Status.CHANGED and _writes(connection) == 1  # type: ignore[attr-defined]
    assert node.file(raft.WATCH_SCRIPT).read_text() == raft.watchdog_script() and node.systemctl() == []

    node.file(raft.WATCH_TIMER).write_text("[Timer]\nOnUnitActiveSec=1h\n")  # a changed timer is restarted
    outcome, _ = node.run(real_inventory)
    assert "kbpg-raft-watch.timer restarted" in outcome.detail  # type: ignore[attr-defined]
    assert node.systemctl() == ["daemon-reload", "enable kbpg-raft-watch.timer", "restart kbpg-raft-watch.timer"]

    (node.units / "kbpg-raft-watch.timer.active").unlink()  # stopped by hand: started again
    outcome, connection = node.run(real_inventory)
    assert outcome.status is Status.CHANGED and _writes(connection) == 0  # type: ignore[attr-defined]
    assert (node.units / "kbpg-raft-watch.timer.active").exists()


def test_the_task_comes_after_the_config_and_before_the_start() -> None:
    names = [task.name for task in patroni.STEP.tasks]
    assert names.index("config") < names.index("raft watchdog") < names.index("start")


def test_false_removes_the_watchdog_and_stops_its_timer(real_inventory: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    node = TaskNode(tmp_path, monkeypatch)
    node.run(real_inventory)
    node.file(raft_watch.STATE_DIR).mkdir(parents=True)
    (node.file(raft_watch.STATE_DIR) / "state.json").write_text("{}")
    node.systemctl()
    outcome, _ = node.run(real_inventory, watchdog=False)
    assert outcome.status is Status.CHANGED  # type: ignore[attr-defined]
    assert outcome.detail == "Raft watchdog removed (patroni.raft_watchdog = false)"  # type: ignore[attr-defined]
    assert not any(node.file(path).exists() for path, _, _ in raft.watchdog_files())
    assert not node.file(raft_watch.STATE_DIR).exists()
    assert node.systemctl() == ["disable --now kbpg-raft-watch.timer", "daemon-reload"]
    assert not list(node.units.glob("kbpg-raft-watch.timer.*"))
    outcome, _ = node.run(real_inventory, watchdog=False)
    assert outcome.status is Status.UNCHANGED and node.systemctl() == []  # type: ignore[attr-defined]
    assert outcome.detail == "no Raft watchdog (patroni.raft_watchdog = false)"  # type: ignore[attr-defined]


# --- check 3 ------------------------------------------------------------------------------------------------------

@pytest.fixture
def make(tmp_path: Path):
    """make(**kwargs) -> a FakeProbeContext on the lab's inventory (as tests/checks/conftest.py's)."""
    return lambda **kwargs: lab_probe_context(tmp_path, **kwargs)


def _check3(make, timer: str, watchdog: bool = True):
    scripts: list[str] = []

    def handler(script: str, stdin) -> object:
        scripts.append(script)
        if "TcpUtility" not in script:
            return result("patroni active 0 3600\n")
        timer_line = f"w:timer {timer}\n" if "w:timer" in script else ""
        return result(timer_line + 'r:unit active 300\nr:status {"leader": "198.18.0.120:7000", "raft_term": 3}\n')

    p = make(pool=FakePool({h.name: ScriptedConnection(h, handler) for h in make().ctx.db_hosts}))
    p.settings.patroni.raft_watchdog = watchdog
    return p, scripts


def test_check_3_warns_when_the_watchdogs_timer_does_not_run(make) -> None:
    p, scripts = _check3(make, "active")
    assert c03_services.db_services(p, p.ctx.db_hosts[1]) == (
        "db-slave-01: patroni active; its Raft answers (leader 198.18.0.120:7000, term 3); Raft watchdog active")
    assert "systemctl is-active kbpg-raft-watch.timer" in scripts[-1]
    for state in ("inactive", "failed", ""):
        p, _ = _check3(make, state)
        with pytest.raises(CheckWarning, match=r"^db-slave-01: the Raft watchdog \(kbpg-raft-watch.timer\) is "
                                               rf"{state or 'unknown'}: .*kbpg install --step 02$"):
            c03_services.db_services(p, p.ctx.db_hosts[1])


def test_check_3_does_not_ask_for_the_timer_when_the_watchdog_is_off(make) -> None:
    p, scripts = _check3(make, "inactive", watchdog=False)
    assert c03_services.db_services(p, p.ctx.db_hosts[1]) == (
        "db-slave-01: patroni active; its Raft answers (leader 198.18.0.120:7000, term 3)")
    assert not any("kbpg-raft-watch" in script for script in scripts)
