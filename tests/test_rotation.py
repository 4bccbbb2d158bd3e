"""Credential rotation's local part (core/rotation.py): which names, the new values chosen once and kept in
credentials/rotation.pending (0600) until postgres.env holds them, postgres.env.prev, resuming, the order of the
steps, and the install refusing to run while a rotation is pending. The hosts' part runs on the lab
(tests/e2e/test_e2e_19_rotation.py)."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from kbpg_tui.core import credentials as creds
from kbpg_tui.core import inventory as inv
from kbpg_tui.core import rotation
from kbpg_tui.core.engine import Context, TaskError, TaskRun
from kbpg_tui.core.events import Status
from kbpg_tui.core.settings import Settings
from kbpg_tui.core.steps import s00_credentials as s00


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    values, _ = creds.generate()
    creds.write_env(tmp_path / creds.ENV_FILE, values)
    return tmp_path


def _env(workdir: Path) -> creds.Credentials:
    return creds.read_env(workdir / creds.ENV_FILE)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_password_but_raft_and_the_backup_key_is_rotated_by_default(workdir: Path) -> None:
    before = _env(workdir)
    chosen = rotation.begin(workdir)
    assert chosen.names == rotation.ROTATABLE and not chosen.resumed
    assert set(rotation.ROTATABLE) | {"PATRONI_RAFT_PASSWORD", "BACKUP_CIPHER_PASS"} == set(creds.PASSWORD_NAMES)
    assert set(rotation.REFUSED) == {"PATRONI_RAFT_PASSWORD", "BACKUP_CIPHER_PASS"}
    for name in rotation.ROTATABLE:
        assert chosen.credentials[name] != before[name]
        assert len(chosen.credentials[name]) >= 20
    for name in set(before) - set(rotation.ROTATABLE):  # user names, Raft's password, the database: unchanged
        assert chosen.credentials[name] == before[name]
    # postgres.env itself is untouched until the last step; the old file and the new values are kept aside, 0600.
    assert _env(workdir) == before
    assert creds.read_env(workdir / rotation.PREV_FILE) == before
    pending = creds.read_env(workdir / rotation.PENDING_FILE)
    assert dict(pending) == {name: chosen.credentials[name] for name in rotation.ROTATABLE}
    assert _mode(workdir / rotation.PREV_FILE) == 0o600 and _mode(workdir / rotation.PENDING_FILE) == 0o600


def test_a_pending_rotation_is_resumed_with_its_own_values(workdir: Path) -> None:
    first = rotation.begin(workdir, ["POSTGRES_APP_PASS", "HAPROXY_STATS_PASSWORD"])
    again = rotation.begin(workdir)  # the same command without names, after a kill
    assert again.resumed and again.names == first.names
    assert again.credentials == first.credentials
    assert again.previous == first.previous
    assert rotation.pending_names(workdir) == ("POSTGRES_APP_PASS", "HAPROXY_STATS_PASSWORD")


def test_a_pending_rotation_refuses_other_names_and_typed_values(workdir: Path) -> None:
    rotation.begin(workdir, ["POSTGRES_APP_PASS"])
    pending = (workdir / rotation.PENDING_FILE).read_bytes()
    with pytest.raises(rotation.RotationError, match="POSTGRES_APP_PASS is pending"):
        rotation.begin(workdir, ["HAPROXY_STATS_PASSWORD"])
    with pytest.raises(rotation.RotationError, match="is pending"):
        rotation.begin(workdir, ["POSTGRES_APP_PASS"], typed={"POSTGRES_APP_PASS": "a-new-typed-password-42"})
    assert (workdir / rotation.PENDING_FILE).read_bytes() == pending


def test_raft_and_unknown_names_are_refused_with_the_reason(workdir: Path) -> None:
    with pytest.raises(rotation.RotationError) as refused:
        rotation.begin(workdir, ["PATRONI_RAFT_PASSWORD"])
    assert "Raft" in str(refused.value) and "maintenance window" in str(refused.value)
    with pytest.raises(rotation.RotationError, match="POSTGRES_USER_NAME: not a secret kbpg rotates"):
        rotation.check_names(["POSTGRES_USER_NAME"])
    with pytest.raises(rotation.RotationError, match="not a secret"):
        rotation.check_names(["POSTGRES_SUPERUSER"])  # a role's name is not rotated
    assert not (workdir / rotation.PENDING_FILE).exists() and not (workdir / rotation.PREV_FILE).exists()


def test_typed_values_are_checked_and_never_shown(workdir: Path) -> None:
    current = _env(workdir)["POSTGRES_APP_PASS"]
    with pytest.raises(rotation.RotationError) as same:
        rotation.begin(workdir, ["POSTGRES_APP_PASS"], typed={"POSTGRES_APP_PASS": current})
    assert "the new value is the current one" in str(same.value) and current not in str(same.value)
    with pytest.raises(rotation.RotationError, match="control character"):
        rotation.begin(workdir, ["POSTGRES_APP_PASS"], typed={"POSTGRES_APP_PASS": "two\nlines-of-password"})
    with pytest.raises(rotation.RotationError, match="typed but not rotated"):
        rotation.begin(workdir, ["POSTGRES_APP_PASS"], typed={"HAPROXY_STATS_PASSWORD": "x" * 30})
    assert not (workdir / rotation.PENDING_FILE).exists()
    chosen = rotation.begin(workdir, ["POSTGRES_APP_PASS"], typed={"POSTGRES_APP_PASS": "Correct-Horse-Battery-9"})
    assert chosen.credentials["POSTGRES_APP_PASS"] == "Correct-Horse-Battery-9"


def test_nothing_to_rotate_without_postgres_env(tmp_path: Path) -> None:
    with pytest.raises(rotation.RotationError, match="not found"):
        rotation.begin(tmp_path)


def _step_numbers(names: list[str], workdir: Path) -> list[str]:
    return [step.number for step in rotation.steps(rotation.begin(workdir, names))]


def test_steps_touch_only_what_uses_the_names(tmp_path: Path) -> None:
    cases = {
        ("POSTGRES_APP_PASS",): ["R0", "R1", "R2", "R5", "R6"],
        ("HAPROXY_STATS_PASSWORD",): ["R0", "R4", "R5", "R6"],
        ("PATRONI_API_PASSWORD",): ["R0", "R3", "R5", "R6"],
        ("POSTGRES_MONITOR_PASS",): ["R0", "R1", "R5", "R6"],
        ("PGBOUNCER_STATS_PASS",): ["R0", "R2", "R5", "R6"],
        ("POSTGRES_REPL_PASS",): ["R0", "R1", "R3", "R5", "R6"],
    }
    for number, (names, expected) in enumerate(cases.items()):
        workdir = tmp_path / str(number)
        values, _ = creds.generate()
        creds.write_env(workdir / creds.ENV_FILE, values)
        assert _step_numbers(list(names), workdir) == expected, names
    # The roles are changed before anything that presents them (PgBouncer's verifier is read back from the primary,
    # Patroni logs in with them), and postgres.env is written last, after the check.
    workdir = tmp_path / "all"
    values, _ = creds.generate()
    creds.write_env(workdir / creds.ENV_FILE, values)
    assert _step_numbers([], workdir) == ["R0", "R1", "R2", "R3", "R4", "R5", "R6"]


def _local_run(workdir: Path, real_inventory: Path) -> TaskRun:
    ctx = Context(Settings(), creds.Credentials(), inv.load_selection(real_inventory), workdir,
                  pool=None, sink=lambda e: None, cancel=threading.Event())  # type: ignore[arg-type]
    return TaskRun(ctx, "R6", None)


def test_the_last_step_writes_postgres_env_and_keeps_the_old_file(workdir: Path, real_inventory: Path) -> None:
    chosen = rotation.begin(workdir)
    finish = rotation.steps(chosen)[-1].tasks[0]
    outcome = finish.function(_local_run(workdir, real_inventory))
    assert outcome.status == Status.CHANGED
    assert _env(workdir) == chosen.credentials and _mode(workdir / creds.ENV_FILE) == 0o600
    assert not (workdir / rotation.PENDING_FILE).exists()
    assert creds.read_env(workdir / rotation.PREV_FILE) == chosen.previous
    assert not any(chosen.credentials[name] in outcome.detail for name in rotation.ROTATABLE)
    # Killed after postgres.env was written but before rotation.pending was removed: the re-run ends it.
    (workdir / rotation.PENDING_FILE).write_text(
        "".join(f"{name}={creds.quote(chosen.credentials[name])}\n" for name in chosen.names))
    again = rotation.begin(workdir)
    assert again.resumed and again.credentials == chosen.credentials
    assert finish.function(_local_run(workdir, real_inventory)).status == Status.UNCHANGED
    assert not (workdir / rotation.PENDING_FILE).exists()


def test_the_install_refuses_while_a_rotation_is_pending(workdir: Path, real_inventory: Path) -> None:
    rotation.begin(workdir, ["POSTGRES_APP_PASS"])
    before = (workdir / creds.ENV_FILE).read_bytes()
    with pytest.raises(TaskError, match="kbpg credentials rotate"):
        s00.ensure_credentials(_local_run(workdir, real_inventory))
    assert (workdir / creds.ENV_FILE).read_bytes() == before


# --- the command line: bad input is refused before anything is connected to or written --------------------------


@pytest.fixture
def cli_workdir(workdir: Path, real_inventory: Path) -> Path:
    import shutil

    shutil.copy(real_inventory, workdir / "servers.tsv")
    (workdir / "kbpg.toml").write_text('[network]\nlb_address = "198.18.0.10"\n')
    return workdir


def _untouched(workdir: Path) -> None:
    assert not (workdir / rotation.PENDING_FILE).exists() and not (workdir / rotation.PREV_FILE).exists()


def test_cli_refuses_raft_and_unknown_names_with_exit_2(cli_workdir: Path) -> None:
    from .conftest import run_kbpg
    from .test_cli_input import assert_bad_input

    raft = run_kbpg("credentials", "rotate", "PATRONI_RAFT_PASSWORD", "--yes", workdir=cli_workdir)
    assert raft.returncode == 2 and "Raft (pysyncobj) encrypts every message" in raft.stderr
    assert "maintenance window" in raft.stderr and "Traceback" not in raft.stderr
    assert_bad_input(run_kbpg("credentials", "rotate", "POSTGRES_SUPERUSER", "--yes", workdir=cli_workdir),
                     "POSTGRES_SUPERUSER: not a secret kbpg rotates")
    _untouched(cli_workdir)


def test_cli_refuses_other_names_while_a_rotation_is_pending(cli_workdir: Path) -> None:
    from .conftest import run_kbpg
    from .test_cli_input import assert_bad_input

    rotation.begin(cli_workdir, ["POSTGRES_APP_PASS"])
    pending = (cli_workdir / rotation.PENDING_FILE).read_bytes()
    assert_bad_input(run_kbpg("credentials", "rotate", "HAPROXY_STATS_PASSWORD", "--yes", workdir=cli_workdir),
                     "a rotation of POSTGRES_APP_PASS is pending", "kbpg credentials rotate")
    assert (cli_workdir / rotation.PENDING_FILE).read_bytes() == pending


def test_cli_needs_yes_without_a_terminal(cli_workdir: Path) -> None:
    from .conftest import run_kbpg
    from .test_cli_input import assert_bad_input

    assert_bad_input(run_kbpg("credentials", "rotate", workdir=cli_workdir, input=""),
                     "not a terminal: pass --yes")
    _untouched(cli_workdir)


def test_cli_install_of_later_steps_refuses_while_a_rotation_is_pending(cli_workdir: Path, monkeypatch,
                                                                          capsys) -> None:
    """`kbpg install --step 03` skips step 00 (where the install refuses): it must refuse too, before connecting, or
    steps 02-04 would put postgres.env's old values back on hosts that already hold the pending ones."""
    from kbpg_tui import cli
    from kbpg_tui.core import install as inst

    rotation.begin(cli_workdir, ["HAPROXY_STATS_PASSWORD"])

    prepared = []
    monkeypatch.setattr(inst, "prepare", lambda *args, **kwargs: prepared.append(args) or 1 / 0)
    for steps in (["--step", "03"], ["--step", "02,04"]):
        code = cli.main(["--workdir", str(cli_workdir), "install", "--yes", *steps])
        out = capsys.readouterr()
        assert code == 1 and not prepared, steps
        assert "rotation" in out.out + out.err and "kbpg credentials rotate" in out.out + out.err, steps
    assert rotation.pending_names(cli_workdir) == ("HAPROXY_STATS_PASSWORD",)


# --- a run killed between a host's new file and its reload: the re-run finds the file unchanged -----------------


def _resumed_step(workdir: Path, real_inventory: Path, number: str, monkeypatch) -> tuple[list, TaskRun, list[str]]:
    """The tasks of step ``number`` of a resumed rotation of every name, with a run whose commands are recorded."""
    rotation.begin(workdir)
    chosen = rotation.begin(workdir)  # resumed: a previous run was killed
    run = _local_run(workdir, real_inventory)
    run.ctx.credentials = chosen.credentials
    commands: list[str] = []
    monkeypatch.setattr(TaskRun, "run", lambda self, script, host=None, **kw: commands.append(script))
    step = next(step for step in rotation.steps(chosen) if step.number == number)
    return step.tasks, run, commands


def test_a_resumed_rotation_reloads_every_patroni_member(workdir: Path, real_inventory: Path, monkeypatch) -> None:
    from kbpg_tui.core.engine import Outcome
    from kbpg_tui.core.steps import s02_patroni as patroni

    reloaded: list[set[str]] = []
    monkeypatch.setattr(patroni, "write_config", lambda run: Outcome.unchanged("configuration up to date"))
    monkeypatch.setattr(patroni, "start_cluster",
                        lambda run: reloaded.append(set(run.ctx.state.get("patroni_config_changed", set())))
                        or Outcome.unchanged())
    monkeypatch.setattr(patroni, "wait_for_cluster", lambda run: Outcome.unchanged())
    tasks, run, _ = _resumed_step(workdir, real_inventory, "R3", monkeypatch)
    for task in tasks:
        for host in (run.ctx.db_hosts if task.scope == "db" else [None]):
            task.function(TaskRun(run.ctx, "R3", host))
    # patroni.yml already held the new values (written by the killed run) but the members may still run the old ones
    assert reloaded == [{host.name for host in run.ctx.db_hosts}]


def test_a_resumed_rotation_reloads_pgbouncer(workdir: Path, real_inventory: Path, monkeypatch) -> None:
    from kbpg_tui.core.engine import Outcome
    from kbpg_tui.core.steps import s04_pgbouncer as pgbouncer

    monkeypatch.setattr(pgbouncer, "configure_pgbouncer",
                        lambda run: Outcome.unchanged("configuration up to date, pgbouncer active"))
    tasks, run, commands = _resumed_step(workdir, real_inventory, "R2", monkeypatch)
    for host in run.ctx.haproxy_hosts:
        tasks[0].function(TaskRun(run.ctx, "R2", host))
    assert commands.count("systemctl reload pgbouncer") == len(run.ctx.haproxy_hosts)
    assert not any("RECONNECT" in command or "restart" in command for command in commands)


def test_a_resumed_rotation_reloads_haproxy_whose_stats_refuse_the_new_value(workdir: Path, real_inventory: Path,
                                                                              monkeypatch) -> None:
    from kbpg_tui.core.checks import c17_secrets
    from kbpg_tui.core.engine import Outcome
    from kbpg_tui.core.steps import rest_tls
    from kbpg_tui.core.steps import s03_haproxy as haproxy

    monkeypatch.setattr(haproxy, "configure_haproxy",
                        lambda run, reconnect_pgbouncer=True: Outcome.unchanged("configuration up to date, haproxy active"))
    monkeypatch.setattr(rest_tls, "worker_pid", lambda run, host: "")
    tasks, run, commands = _resumed_step(workdir, real_inventory, "R4", monkeypatch)
    first, second = run.ctx.haproxy_hosts[:2]
    tried: list[str] = []

    def http(p, url, user, method, accepted, password):
        tried.append(password)
        return (c17_secrets.REFUSED, "401") if first.address in url else (c17_secrets.ACCEPTED, "")

    monkeypatch.setattr(c17_secrets, "http", http)
    for host in (first, second):
        tasks[0].function(TaskRun(run.ctx, "R4", host))
    assert commands == ["systemctl reload haproxy"]  # only where the running HAProxy still refuses the new value
    assert set(tried) == {run.ctx.credentials["HAPROXY_STATS_PASSWORD"]}


def test_the_check_asks_again_until_every_service_applied_its_reload(workdir: Path, real_inventory: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Patroni applies a reloaded patroni.yml at its next loop: the check step asks again, and fails only after
    VERIFY_SECONDS, naming what is still wrong."""
    from kbpg_tui.core.checks import c17_secrets

    chosen = rotation.begin(workdir)
    check = next(step for step in rotation.steps(chosen) if step.number == "R5").tasks[0]
    answers = [["PATRONI_API_PASSWORD is refused at db-master-01 REST :8008 (401)"]] * 2 + [[]]
    monkeypatch.setattr(c17_secrets, "verify_all", lambda ctx, values, previous: answers.pop(0))
    monkeypatch.setattr(rotation, "VERIFY_PAUSE", 0.01)
    assert check.function(_local_run(workdir, real_inventory)).status == Status.UNCHANGED and not answers
    monkeypatch.setattr(c17_secrets, "verify_all", lambda ctx, values, previous: ["PGBOUNCER_ADMIN_PASS is refused"])
    monkeypatch.setattr(rotation, "VERIFY_SECONDS", 0.05)
    with pytest.raises(TaskError, match="PGBOUNCER_ADMIN_PASS is refused.*postgres.env keeps the old values"):
        check.function(_local_run(workdir, real_inventory))


@pytest.mark.parametrize("command", [("switchover",), ("drill", "kill")])
def test_switchover_and_drill_refuse_while_a_rotation_is_pending(cli_workdir: Path, command: tuple[str, ...]) -> None:
    """They would present postgres.env's old values (REST, the monitoring role) to hosts that hold the new ones."""
    from .conftest import run_kbpg
    from .test_cli_input import assert_bad_input

    rotation.begin(cli_workdir, ["PATRONI_API_PASSWORD"])
    assert_bad_input(run_kbpg(*command, "--yes", workdir=cli_workdir),
                     "a credential rotation is pending", "kbpg credentials rotate")


def test_an_unreadable_pending_file_is_named_not_an_internal_error(workdir: Path, real_inventory: Path) -> None:
    (workdir / rotation.PENDING_FILE).write_text("POSTGRES_APP_PASS=$(oops)\n")
    with pytest.raises(TaskError, match="rotation.pending.*cannot be read"):
        s00.ensure_credentials(_local_run(workdir, real_inventory))
