"""BACKUP_CIPHER_PASS, pgBackRest's repository key in postgres.env: generated with 256 bits, redacted like every
secret, added by step 00 to an existing postgres.env without touching its other values, never rotated."""

from __future__ import annotations

import math
import shutil
import threading
from pathlib import Path

import pytest

from kbpg_tui.core import credentials as creds
from kbpg_tui.core import events as ev
from kbpg_tui.core import inventory as inv
from kbpg_tui.core import logs, rotation
from kbpg_tui.core.engine import Context, TaskError, TaskRun
from kbpg_tui.core.events import Status
from kbpg_tui.core.settings import Settings
from kbpg_tui.core.ssh import Host
from kbpg_tui.core.steps import s00_credentials as s00

from .conftest import run_kbpg
from .test_step00_credentials import LIVE, _pool

NAME = "BACKUP_CIPHER_PASS"


def test_the_backup_key_is_generated_with_256_bits() -> None:
    values, generated = creds.generate()
    key = values[NAME]
    assert NAME in generated and NAME in creds.PASSWORD_NAMES
    assert key.isascii() and key.isalnum()
    assert len(key) * math.log2(62) >= 256 and len(key) == 43  # 160-bit passwords are 27 characters
    assert len(values["POSTGRES_APP_PASS"]) == 27
    assert len({creds.generate()[0][NAME] for _ in range(20)}) == 20
    assert key not in {value for name, value in values.items() if name != NAME}
    assert not values.validate()


def test_the_backup_key_is_redacted_from_logs_and_events(tmp_path: Path) -> None:
    values, _ = creds.generate()  # registers the generated values
    assert logs.redact(f"repo1-cipher-pass={values[NAME]}") == f"repo1-cipher-pass={logs.REDACTED}"
    # a value read back from a file the operator restored is registered too
    typed = "Restored-backup-key-from-the-safe-7Qx"
    values[NAME] = typed
    path = tmp_path / creds.ENV_FILE
    creds.write_env(path, values)
    assert typed in path.read_text()
    creds.read_env(path)
    assert typed not in logs.redact(f"pgbackrest said {typed}")
    seen: list = []
    sink = logs.redacting_sink(seen.append)
    sink(ev.Message(ev.Level.ERROR, f"repo1-cipher-pass={typed}", "backup-01"))
    assert typed not in seen[0].text and creds.is_secret_name(NAME)


@pytest.mark.parametrize("value", [" leading-space-key-123456789", "trailing-space-key-123456789 ",
                                   "tab-at-the-end-key-123456789\t"])
def test_a_backup_key_pgbackrest_would_trim_is_refused_naming_it(value: str) -> None:
    problem = creds.check_value(NAME, value)
    assert problem is not None and problem.startswith(NAME) and value.strip() not in problem
    assert creds.check_value(NAME, "a key with inner spaces is fine 123") is None


def _run(workdir: Path, pool) -> TaskRun:
    ctx = Context(Settings(), creds.Credentials(), inv.load_selection(Path(__file__).parent / "fixtures" /
                                                                     "keybuzz-servers.tsv"),
                  workdir, pool=pool, sink=lambda e: None, cancel=threading.Event())  # type: ignore[arg-type]
    return TaskRun(ctx, "00", None)


def test_step_00_adds_the_backup_key_to_a_live_clusters_file_and_keeps_every_other_value(tmp_path: Path) -> None:
    values, _ = creds.generate()
    del values[NAME]  # a postgres.env written before backups existed
    values["SOME_OPERATOR_NAME"] = "kept as it is"
    path = tmp_path / creds.ENV_FILE
    creds.write_env(path, values)
    pool = _with_backup_host(_pool({name: LIVE for name in ("db-master-01", "db-slave-01", "db-slave-02")}), "")
    outcome = s00.ensure_credentials(_run(tmp_path, pool))
    assert outcome.status == Status.CHANGED and outcome.detail == f"added {NAME}"
    now = creds.read_env(path)
    assert len(now[NAME]) == 43
    assert {name: now[name] for name in values} == dict(values)  # nothing else changed
    assert pool.gets == ["backup-01"]  # asked whether it holds a repository (it does not)
    again = s00.ensure_credentials(_run(tmp_path, pool))
    assert again.status == Status.UNCHANGED and creds.read_env(path) == now  # never regenerated


def _with_backup_host(pool, answer: str | None):
    """``pool`` plus backup-01 (the company fixture's backup host) answering the repository probe with ``answer``
    (None: it does not answer)."""
    from .fakes import ScriptedConnection, result, unreachable

    host = Host("backup-01", "10.0.0.153", "root")
    pool.connections[host.name] = unreachable(host) if answer is None else \
        ScriptedConnection(host, lambda script, stdin: result(answer))
    return pool


@pytest.mark.parametrize("answer, expected", [
    ("/var/lib/pgbackrest/backup/keybuzz-pg\n/var/lib/pgbackrest/archive/keybuzz-pg\n",
     r"lacks BACKUP_CIPHER_PASS, but backup-01 holds a backup repository \(/var/lib/pgbackrest/backup/keybuzz-pg, "
     r"/var/lib/pgbackrest/archive/keybuzz-pg\) made with it: restore postgres.env from your copy"),
    (None, r"cannot tell whether backup-01 holds a backup repository .*nothing was generated"),
], ids=["repository", "unreachable"])
def test_step_00_never_adds_a_new_backup_key_beside_an_existing_repository(tmp_path: Path, answer, expected) -> None:
    values, _ = creds.generate()
    del values[NAME]  # a lost line: a new key could not read the repository
    path = tmp_path / creds.ENV_FILE
    creds.write_env(path, values)
    before = path.read_bytes()
    pool = _with_backup_host(_pool({name: LIVE for name in ("db-master-01", "db-slave-01", "db-slave-02")}), answer)
    with pytest.raises(TaskError, match=expected):
        s00.ensure_credentials(_run(tmp_path, pool))
    assert path.read_bytes() == before


def test_credentials_generate_adds_the_backup_key_to_an_existing_file(tmp_path: Path) -> None:
    values, _ = creds.generate()
    del values[NAME]
    path = tmp_path / creds.ENV_FILE
    creds.write_env(path, values)
    result = run_kbpg("credentials", "generate", workdir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{NAME:<22} generated" in result.stdout and "added 1 missing value(s)" in result.stdout
    now = creds.read_env(path)
    assert len(now[NAME]) == 43 and {name: now[name] for name in values} == dict(values)
    assert now[NAME] not in result.stdout + result.stderr


def test_the_backup_key_is_never_rotated(tmp_path: Path) -> None:
    assert NAME not in rotation.ROTATABLE
    with pytest.raises(rotation.RotationError) as refused:
        rotation.check_names([NAME])
    assert "pgBackRest cannot re-encrypt a repository" in str(refused.value)
    values, _ = creds.generate()
    creds.write_env(tmp_path / creds.ENV_FILE, values)
    with pytest.raises(rotation.RotationError):
        rotation.begin(tmp_path, [NAME, "POSTGRES_APP_PASS"])
    assert not (tmp_path / rotation.PENDING_FILE).exists() and not (tmp_path / rotation.PREV_FILE).exists()
    assert rotation.begin(tmp_path).credentials[NAME] == values[NAME]  # a rotation of everything leaves it alone


def test_cli_refuses_to_rotate_the_backup_key_with_exit_2(tmp_path: Path, real_inventory: Path) -> None:
    values, _ = creds.generate()
    creds.write_env(tmp_path / creds.ENV_FILE, values)
    shutil.copy(real_inventory, tmp_path / "servers.tsv")  # never reached: the name is refused first
    (tmp_path / "kbpg.toml").write_text('[network]\nlb_address = "198.18.0.10"\n')
    result = run_kbpg("credentials", "rotate", NAME, "--yes", workdir=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "BACKUP_CIPHER_PASS cannot be rotated" in result.stderr and "re-encrypt" in result.stderr
    assert values[NAME] not in result.stdout + result.stderr
    assert creds.read_env(tmp_path / creds.ENV_FILE) == values
    assert not (tmp_path / rotation.PENDING_FILE).exists()


def test_a_backup_key_kept_off_the_backup_host_is_taken_back_from_the_environment(tmp_path: Path) -> None:
    # the way back after losing postgres.env: the operator's copy of the key, typed into the environment
    kept = creds.generate()[0][NAME]
    result = run_kbpg("credentials", "export", "--from-env", workdir=tmp_path, env={NAME: kept})
    assert result.returncode == 0, result.stderr
    assert f"{NAME:<22} from environment" in result.stdout and kept not in result.stdout + result.stderr
    assert creds.read_env(tmp_path / creds.ENV_FILE)[NAME] == kept
    (tmp_path / "other").mkdir()
    bad = run_kbpg("credentials", "export", "--from-env", workdir=tmp_path / "other", env={NAME: f" {kept}"})
    assert bad.returncode == 2 and f"{NAME} must not start or end with a space" in bad.stderr
    assert kept not in bad.stdout + bad.stderr
