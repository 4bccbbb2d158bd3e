"""credentials/postgres.env: exact names, shell round trip, file modes, generation, strength."""

from __future__ import annotations

import math
import os
import stat
import subprocess
from pathlib import Path

import pytest

from kbpg_tui.core import credentials as creds

from .conftest import run_kbpg

AWKWARD = [
    "it's a 'single' quote",
    'double "quoted" value',
    "dollar $HOME ${PATH} $(id) $1",
    "back\\slash \\n \\\\ end\\",
    "back`tick` `id`",
    "  leading and trailing spaces  ",
    "percent %s %d 100%",
    "hash # not a comment #",
    "non-ASCII: éàüß Ωμέγα 日本語 ñ",
    "mix '\"$`\\ %#!*?[]{}();&|<>~=",
]


def shell_values(env_file: Path, names: list[str]) -> dict[str, str]:
    """What a later module sees after `set -a; . postgres.env` in bash."""
    script = 'set -a; . "$1"; shift; for n in "$@"; do printf "%s\\0%s\\0" "$n" "${!n}"; done'
    result = subprocess.run(
        ["bash", "-c", script, "bash", str(env_file), *names],
        capture_output=True, check=True, env={"PATH": os.environ["PATH"]},
    )
    parts = result.stdout.decode("utf-8").split("\0")[:-1]
    return dict(zip(parts[0::2], parts[1::2]))


def test_round_trip_through_bash_keeps_every_character(tmp_path: Path) -> None:
    base, _ = creds.generate()
    values = dict(base)
    for index, value in enumerate(AWKWARD):
        values[f"POSTGRES_{['SUPERPASS', 'REPL_PASS', 'APP_PASS'][index % 3]}"] = value
        values["PATRONI_API_PASSWORD"] = AWKWARD[-1 - index]
        path = tmp_path / f"run{index}" / "credentials" / "postgres.env"
        creds.write_env(path, creds.Credentials(values))
        seen = shell_values(path, list(values))
        assert seen == values
        assert creds.read_env(path) == values


def test_all_awkward_values_at_once_under_extra_names(tmp_path: Path) -> None:
    values, _ = creds.generate()
    for index, value in enumerate(AWKWARD):
        values[f"KBPG_TEST_{index}_PASSWORD"] = value
    path = tmp_path / "credentials" / "postgres.env"
    creds.write_env(path, values)
    assert shell_values(path, list(values)) == dict(values)


def test_file_is_0600_in_a_0700_directory(tmp_path: Path) -> None:
    values, _ = creds.generate()
    path = tmp_path / "credentials" / "postgres.env"
    creds.write_env(path, values)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert creds.file_mode_problem(path) is None
    # A directory an operator made too open is tightened.
    path.parent.chmod(0o755)
    creds.write_env(path, values)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_file_is_never_readable_by_others_while_written(tmp_path: Path) -> None:
    # umask 0 would make a naive open() create 0666; the file must still be born 0600.
    old = os.umask(0)
    try:
        values, _ = creds.generate()
        path = tmp_path / "credentials" / "postgres.env"
        creds.write_env(path, values)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in path.parent.iterdir() if p.name != "postgres.env"], "temp files left behind"


def test_the_nine_exact_names_and_defaults() -> None:
    values, generated = creds.generate()
    assert list(creds.REQUIRED_NAMES) == [
        "POSTGRES_SUPERUSER", "POSTGRES_SUPERPASS", "POSTGRES_REPL_USER", "POSTGRES_REPL_PASS",
        "POSTGRES_APP_USER", "POSTGRES_APP_PASS", "POSTGRES_DB", "PATRONI_CLUSTER_NAME", "PATRONI_API_PASSWORD",
    ]
    assert set(creds.REQUIRED_NAMES) <= set(generated)
    assert {"HAPROXY_STATS_PASSWORD", "PGBOUNCER_ADMIN_PASS"} <= set(generated)  # new secrets get new names
    assert values["POSTGRES_SUPERUSER"] == "kb_admin"
    assert values["POSTGRES_REPL_USER"] == "kb_repl"
    assert values["POSTGRES_APP_USER"] == "kb_app"
    assert values["POSTGRES_DB"] == "keybuzz"
    assert values["PATRONI_CLUSTER_NAME"] == "keybuzz-pg"


def test_generated_passwords_have_at_least_128_bits() -> None:
    values, _ = creds.generate()
    passwords = [values[name] for name in creds.PASSWORD_NAMES]
    assert len(set(passwords)) == len(passwords)
    for password in passwords:
        assert password.isalnum() and password.isascii()
        assert len(password) * math.log2(62) >= 128
    with pytest.raises(ValueError):
        creds.generate_password(entropy=64)


def test_generate_never_replaces_an_existing_value() -> None:
    first, _ = creds.generate()
    partial = creds.Credentials({k: v for k, v in first.items() if k != "POSTGRES_APP_PASS"})
    second, generated = creds.generate(partial)
    assert generated == ["POSTGRES_APP_PASS"]
    assert all(second[k] == first[k] for k in first if k != "POSTGRES_APP_PASS")


@pytest.mark.parametrize("weak", ["password123", "keybuzz2024!", "aaaaaaaaaaaaaaaa", "Short1!", "123456789012"])
def test_weak_typed_passwords_are_weak(weak: str) -> None:
    assert creds.password_strength(weak).weak


@pytest.mark.parametrize("strong", ["correct-Horse-battery-Staple-91", "tX9#kq!2vLp@8zR4", creds.generate_password()])
def test_strong_typed_passwords_pass(strong: str) -> None:
    assert not creds.password_strength(strong).weak


def test_invalid_values_are_refused(tmp_path: Path) -> None:
    values, _ = creds.generate()
    values["POSTGRES_APP_PASS"] = "line one\nline two"
    with pytest.raises(creds.CredentialsError, match="POSTGRES_APP_PASS contains a control character"):
        creds.write_env(tmp_path / "credentials" / "postgres.env", values)
    values, _ = creds.generate()
    values["POSTGRES_APP_USER"] = "Robert'); DROP"
    with pytest.raises(creds.CredentialsError, match="POSTGRES_APP_USER must be a lower-case identifier"):
        creds.write_env(tmp_path / "credentials" / "postgres.env", values)
    assert not (tmp_path / "credentials" / "postgres.env").exists()


def test_a_hand_edited_file_reads_as_bash_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "postgres.env"
    lines = {
        "KBPG_A_PASS": "abc#def",  # a # inside a word is not a comment
        "KBPG_B_PASS": "'quoted' # a real comment",
        "KBPG_C_PASS": '"dq#x"#glued',  # glued to the closing quote: still the same word
        "KBPG_D_PASS": "x\\ #y",  # an escaped space keeps the word going
        "KBPG_E_PASS": "#leading",
        "KBPG_F_PASS": "it\\'s#1",
    }
    path.write_text("".join(f"{name}={raw}\n" for name, raw in lines.items()))
    assert dict(creds.read_env(path)) == shell_values(path, list(lines))


def test_unreadable_file_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "postgres.env"
    path.write_text("POSTGRES_SUPERUSER=kb_admin\nPOSTGRES_SUPERPASS='unterminated\n")
    with pytest.raises(creds.CredentialsError, match=r"postgres.env:2: POSTGRES_SUPERPASS: bad quoting"):
        creds.read_env(path)


# --- the CLI -------------------------------------------------------------------------

def test_cli_generate_writes_then_keeps(tmp_path: Path) -> None:
    first = run_kbpg("credentials", "generate", workdir=tmp_path)
    assert first.returncode == 0, first.stderr
    path = tmp_path / "credentials" / "postgres.env"
    values = creds.read_env(path)
    for name in creds.PASSWORD_NAMES:
        assert values[name] not in first.stdout + first.stderr, "a secret was printed"
    second = run_kbpg("credentials", "generate", workdir=tmp_path)
    assert second.returncode == 0
    assert "nothing regenerated" in second.stdout
    assert creds.read_env(path) == values


def test_cli_export_takes_typed_values_and_refuses_weak_ones(tmp_path: Path) -> None:
    typed = "Tr0ub4dor&3-horse-battery-\"$HOME\"-'x'"
    ok = run_kbpg("credentials", "export", "--from-env", workdir=tmp_path, env={"POSTGRES_APP_PASS": typed})
    assert ok.returncode == 0, ok.stderr
    assert typed not in ok.stdout + ok.stderr
    path = tmp_path / "credentials" / "postgres.env"
    assert shell_values(path, ["POSTGRES_APP_PASS"])["POSTGRES_APP_PASS"] == typed
    before = path.read_bytes()

    weak = run_kbpg("credentials", "export", "--from-env", workdir=tmp_path, env={"POSTGRES_SUPERPASS": "password1"})
    assert weak.returncode == 2
    assert "POSTGRES_SUPERPASS is weak" in weak.stderr and "password1" not in weak.stderr
    assert path.read_bytes() == before, "a refused export must not touch the file"

    forced = run_kbpg("credentials", "export", "--from-env", "--allow-weak", workdir=tmp_path,
                      env={"POSTGRES_SUPERPASS": "password1"})
    assert forced.returncode == 0
    assert creds.read_env(path)["POSTGRES_SUPERPASS"] == "password1"


def test_cli_refuses_to_overwrite_a_file_it_cannot_read(tmp_path: Path) -> None:
    path = tmp_path / "credentials" / "postgres.env"
    path.parent.mkdir(mode=0o700)
    path.write_text("this is not an env file\n")
    result = run_kbpg("credentials", "generate", workdir=tmp_path)
    assert result.returncode == 2
    assert "never overwrites" in result.stderr
    assert path.read_text() == "this is not an env file\n"


def test_every_password_name_counts_as_a_secret() -> None:
    for name in creds.PASSWORD_NAMES:
        assert creds.is_secret_name(name), name
    for name in creds.USER_NAMES:
        assert not creds.is_secret_name(name), name


def test_credentials_never_show_values_in_reprs() -> None:
    values, _ = creds.generate()
    for text in (repr(values), str(values), f"{values}", repr([values])):
        for name in creds.PASSWORD_NAMES:
            assert values[name] not in text
    assert "POSTGRES_SUPERPASS" in repr(values)
