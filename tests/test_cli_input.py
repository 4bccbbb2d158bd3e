"""Bad input given to the command line: one line naming what is wrong, exit 2, never a traceback.

Most cases run the real entry point in a subprocess (``run_kbpg``), as an operator would; the unexpected-error
handler is driven in-process through ``main()`` with a command that raises.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from kbpg_tui import cli
from kbpg_tui.core import credentials as creds
from kbpg_tui.core.logs import register_secret

from .conftest import run_kbpg

STEPS = "00 Credentials, 01 Preflight, 02 Patroni cluster, 03 HAProxy, 04 PgBouncer, 05 pgvector, 06 Backups"


def assert_bad_input(result, *fragments: str) -> None:
    """Exit 2, one line on stderr holding every fragment, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A work dir holding the defaults and a servers.tsv path that must never be reached."""
    path = tmp_path / "work"
    path.mkdir()
    (path / "kbpg.toml").write_text("[inventory]\npath = 'no-such-servers.tsv'\n")
    return path


# --- --workdir ------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [
    ["inventory"], ["install", "--yes"], ["diagnose", "--json"], ["answers", "check"], ["unlock", "--yes"],
    ["credentials", "export", "--from-env"],
])
def test_a_missing_workdir_is_refused_by_commands_that_do_not_create_one(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "nowhere"
    result = run_kbpg(*command, workdir=missing)
    assert_bad_input(result, f"--workdir {missing}: no such directory",
                     "only kbpg (the wizard), lab up, answers init, credentials generate create one")
    assert not missing.exists()


@pytest.mark.parametrize("command", [
    ["inventory"], ["install", "--yes"], ["diagnose", "--json"], ["answers", "check"], ["answers", "init"],
    ["credentials", "generate"], [],
])
def test_a_workdir_that_is_a_file_is_refused_by_every_command(tmp_path: Path, command: list[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory\n")
    assert_bad_input(run_kbpg(*command, workdir=afile), f"--workdir {afile}: not a directory")
    assert afile.read_text() == "not a directory\n"


@pytest.mark.parametrize("make, code", [("file", 2), ("missing", 0), ("directory", 0)])
def test_lab_up_creates_the_workdir_but_refuses_a_file(tmp_path: Path, monkeypatch, make: str, code: int) -> None:
    # In-process with the lab's handler replaced: this test must never start a lab, even if the guard is gone.
    from kbpg_tui.core.lab import cli as lab_cli

    reached: list[Path] = []
    monkeypatch.setattr(lab_cli, "run_lab", lambda args: reached.append(args.workdir) or 0)
    target = tmp_path / "work"
    if make == "file":
        target.write_text("")
    elif make == "directory":
        target.mkdir()
    assert cli.main(["--workdir", str(target), "lab", "up"]) == code
    assert reached == ([] if make == "file" else [target])


def test_a_workdir_under_a_file_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    target = tmp_path / "afile" / "work"
    assert_bad_input(run_kbpg("answers", "init", workdir=target),
                     f"--workdir {target}: cannot be created: {tmp_path / 'afile'} is not a directory")


def test_a_workdir_symlink_loop_is_refused(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert_bad_input(run_kbpg("inventory", workdir=loop), "--workdir", "cannot be resolved")


@pytest.mark.parametrize("command, created", [
    (["answers", "init"], "kbpg.toml"),
    (["credentials", "generate"], "credentials/postgres.env"),
])
def test_commands_that_create_the_workdir_do(tmp_path: Path, command: list[str], created: str) -> None:
    target = tmp_path / "new" / "work"
    result = run_kbpg(*command, workdir=target)
    assert result.returncode == 0, result.stderr
    assert (target / created).is_file()


def test_lab_status_takes_any_workdir(tmp_path: Path) -> None:
    result = run_kbpg("lab", "status", "--json", workdir=tmp_path / "nowhere")
    assert "--workdir" not in result.stderr and "Traceback" not in result.stderr
    assert result.returncode == 0, result.stderr


def test_help_names_the_commands_that_create_the_workdir() -> None:
    result = run_kbpg("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "except for kbpg (the wizard), lab up, answers init, credentials generate, which create it" in text


# --- install --step, --allow-wide-subnet ----------------------------------------------------------

@pytest.mark.parametrize("steps, bad", [
    (["7"], "7"), (["07"], "07"), (["x"], "x"), (["02,09"], "09"), (["01", "--step", "1.5"], "1.5"), ([""], ""),
    (["٠١"], "٠١"),
])
def test_install_step_must_name_an_existing_step(workdir: Path, steps: list[str], bad: str) -> None:
    assert_bad_input(run_kbpg("install", "--yes", "--step", *steps, workdir=workdir),
                     f"--step {bad!r}: no such step; the steps are {STEPS}")


def test_install_step_accepts_short_and_comma_forms() -> None:
    assert cli._check_steps(["1", "02,3", "05", "01"]) == ["01", "02", "03", "05"]
    assert cli._check_steps(None) is None


def test_install_step_2_reaches_the_next_check(workdir: Path) -> None:
    # "2" is step 02: refused for the missing credentials, not for its name.
    assert_bad_input(run_kbpg("install", "--yes", "--step", "2", workdir=workdir), "run step 00 first")


WIDE = "[inventory]\npath = 'no-such-servers.tsv'\n[network]\nprivate_subnet = '10.0.0.0/8'\n"


def test_install_yes_refuses_a_wide_subnet_naming_the_key_and_the_flag(workdir: Path) -> None:
    (workdir / "kbpg.toml").write_text(WIDE)
    assert_bad_input(run_kbpg("install", "--yes", "--step", "01", workdir=workdir),
                     "network.private_subnet: 10.0.0.0/8 is wider than /16", "--allow-wide-subnet")


def test_install_yes_refuses_wide_direct_clients(workdir: Path) -> None:
    (workdir / "kbpg.toml").write_text("[network]\ndirect_clients = ['192.0.2.0/24', '0.0.0.0/0']\n")
    assert_bad_input(run_kbpg("install", "--yes", "--step", "01", workdir=workdir),
                     "network.direct_clients: 0.0.0.0/0 is wider than /16", "--allow-wide-subnet")


def test_allow_wide_subnet_lets_install_go_on(workdir: Path) -> None:
    (workdir / "kbpg.toml").write_text(WIDE)
    result = run_kbpg("install", "--yes", "--allow-wide-subnet", "--step", "01", workdir=workdir)
    assert_bad_input(result, "run step 00 first")  # the next check: nothing reaches a host without credentials


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("answer, expected", [("n", "wide networks not confirmed"), ("y", "run step 00 first")])
def test_interactive_install_asks_about_a_wide_subnet(workdir: Path, monkeypatch, capsys, answer: str,
                                                      expected: str) -> None:
    (workdir / "kbpg.toml").write_text(WIDE)
    asked: list[str] = []
    monkeypatch.setattr(sys, "stdin", _Terminal())
    monkeypatch.setattr("builtins.input", lambda prompt="": asked.append(prompt) or answer)
    code = cli.main(["--workdir", str(workdir), "install", "--step", "01"])
    captured = capsys.readouterr()
    assert code == 2 and expected in captured.err
    assert asked == ["Allow these networks? [y/N] "]
    assert "warning:" in captured.out and "network.private_subnet: 10.0.0.0/8" in captured.out


def test_answers_check_shows_the_wide_subnet_warning(workdir: Path) -> None:
    (workdir / "kbpg.toml").write_text(WIDE)
    result = run_kbpg("answers", "check", workdir=workdir)
    assert result.returncode == 0
    assert "warning: network.private_subnet: 10.0.0.0/8 is wider than /16" in result.stderr


# --- diagnose -----------------------------------------------------------------------------

@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "301", "1e9"])
def test_diagnose_timeout_must_be_positive_and_bounded(workdir: Path, timeout: str) -> None:
    assert_bad_input(run_kbpg("diagnose", "--json", "--timeout", timeout, workdir=workdir),
                     "diagnose --timeout: must be a number of seconds above 0 and at most 300")


def test_diagnose_timeout_in_range_reaches_the_next_check(workdir: Path) -> None:
    assert_bad_input(run_kbpg("diagnose", "--json", "--timeout", "300", workdir=workdir),
                     "postgres.env: not found")


def test_diagnose_names_the_missing_credentials(workdir: Path) -> None:
    credentials, _ = creds.generate()
    for name in ("POSTGRES_APP_PASS", "HAPROXY_STATS_PASSWORD"):
        del credentials[name]
    path = workdir / creds.ENV_FILE
    path.parent.mkdir(mode=0o700)
    path.write_text(creds.render_env(credentials))
    path.chmod(0o600)
    result = run_kbpg("diagnose", "--json", workdir=workdir)
    assert_bad_input(result, f"{path}: lacks POSTGRES_APP_PASS, HAPROXY_STATS_PASSWORD")
    assert credentials["POSTGRES_SUPERPASS"] not in result.stderr + result.stdout


# --- kbpg.toml and servers.tsv as files -------------------------------------------------------------

def _make(kind: str, path: Path) -> Path:
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "huge":
        path.write_text("# padding\n" * 120000)
    elif kind == "not utf-8":
        path.write_bytes(b"[postgresql]\ndata_dir = '/srv/\xe9t\xe9'\n")
    elif kind == "nested arrays":
        path.write_text("a = " + "[" * 20000 + "]" * 20000 + "\n")
    elif kind == "nested tables":
        path.write_text("a = " + "{b = " * 20000 + "1" + "}" * 20000 + "\n")
    elif kind == "device":
        path.symlink_to("/dev/null")  # not /dev/zero: without the guard, reading it would fill the memory
    return path


TOML_CASES = [
    ("directory", "is a directory, not a kbpg.toml answers file"),
    ("fifo", "is a FIFO (named pipe), not a regular kbpg.toml answers file"),
    ("device", "is a character device, not a regular kbpg.toml answers file"),
    ("huge", "is 1200000 bytes: too large for a kbpg.toml answers file (at most 1048576 bytes)"),
    ("not utf-8", "not UTF-8 text (byte 0xe9 on line 2)"),
    ("nested arrays", "not a kbpg.toml: arrays or tables nested too deeply to read"),
    ("nested tables", "not a kbpg.toml: arrays or tables nested too deeply to read"),
]


@pytest.mark.parametrize("kind, message", TOML_CASES)
@pytest.mark.parametrize("command", [["answers", "check"], ["install", "--yes"], ["inventory"]])
def test_a_kbpg_toml_that_is_not_a_small_text_file_is_one_line(tmp_path: Path, kind: str, message: str,
                                                                command: list[str]) -> None:
    path = _make(kind, tmp_path / "kbpg.toml")
    result = run_kbpg(*command, workdir=tmp_path)
    assert_bad_input(result, f"{path}: {message}")


@pytest.mark.parametrize("kind, message", [
    ("directory", "is a directory, not a servers.tsv file"),
    ("fifo", "is a FIFO (named pipe), not a regular servers.tsv file"),
    ("device", "is a character device, not a regular servers.tsv file"),
    ("not utf-8", ":2: error: not UTF-8 text (byte 0xe9"),
])
def test_a_servers_tsv_that_is_not_a_small_text_file_is_refused(tmp_path: Path, kind: str, message: str) -> None:
    path = _make(kind, tmp_path / "servers.tsv")
    result = run_kbpg("inventory", str(path), workdir=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr


def test_a_huge_servers_tsv_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "servers.tsv"
    with path.open("wb") as handle:
        handle.truncate(64 * 1024 * 1024)  # sparse: 64 MiB of NULs, never read
    result = run_kbpg("inventory", str(path), workdir=tmp_path)
    assert result.returncode == 2 and "too large for a servers.tsv file" in result.stderr


def test_answers_init_into_an_unwritable_place_is_one_line(tmp_path: Path) -> None:
    assert_bad_input(run_kbpg("answers", "init", "--answers", "/proc/kbpg.toml", workdir=tmp_path),
                     "/proc/kbpg.toml: cannot write:")


# --- errors no command expected ----------------------------------------------------------------

@pytest.fixture(autouse=True)
def _no_log_file_left_open():
    """In-process runs open a log file on the process-wide kbpg logger: start and end each test without one."""
    import logging

    def drop() -> None:
        logger = logging.getLogger("kbpg")
        for handler in list(logger.handlers):
            if getattr(handler, "_kbpg_file", False):
                logger.removeHandler(handler)
                handler.close()

    drop()
    yield
    drop()


def _raiser(exc: BaseException):
    def handler(args) -> int:
        raise exc
    return handler


@pytest.mark.parametrize("exc, shown", [
    (PermissionError(13, "Permission denied", "/srv/kbpg/servers.tsv"), "Permission denied: /srv/kbpg/servers.tsv"),
    (IsADirectoryError(21, "Is a directory", "/srv/x"), "Is a directory: /srv/x"),
    (RecursionError("maximum recursion depth exceeded"), "input nested too deeply to handle"),
    (MemoryError(), "out of memory"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "UnicodeDecodeError: 'utf-8' codec"),
    (ValueError("line one\nline two"), "ValueError: line one line two"),
])
def test_unexpected_errors_are_one_line_with_the_traceback_in_the_log(tmp_path: Path, monkeypatch, capsys,
                                                                      exc: BaseException, shown: str) -> None:
    monkeypatch.setattr(cli, "cmd_inventory", _raiser(exc))
    code = cli.main(["--workdir", str(tmp_path), "inventory"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"kbpg: error: {shown}"), err
    logs = list((tmp_path / "logs").glob("error-*.log"))
    assert len(logs) == 1 and f"(traceback in {logs[0]})" in err
    assert "Traceback (most recent call last)" in logs[0].read_text()
    assert (logs[0].stat().st_mode & 0o777) == 0o600


def test_unexpected_errors_are_redacted_on_screen_and_in_the_log(tmp_path: Path, monkeypatch, capsys) -> None:
    secret = "kbpg-secret-Zq8wLp3tVn"
    register_secret(secret)
    monkeypatch.setattr(cli, "cmd_inventory", _raiser(RuntimeError(f"connect failed with password {secret}")))
    assert cli.main(["--workdir", str(tmp_path), "inventory"]) == 1
    err = capsys.readouterr().err
    log = next((tmp_path / "logs").glob("error-*.log")).read_text()
    assert secret not in err and secret not in log and "********" in err


def test_an_unexpected_error_in_a_missing_log_place_is_still_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(cli, "_workdir_policy", lambda args: "any")
    monkeypatch.setattr(cli, "cmd_inventory", _raiser(OSError(5, "Input/output error")))
    assert cli.main(["--workdir", str(tmp_path / "gone"), "inventory"]) == 1
    assert capsys.readouterr().err == "kbpg: error: Input/output error (no log written)\n"
