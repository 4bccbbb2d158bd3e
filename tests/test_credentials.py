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
    return dict(zip(parts[0::2], parts[1::2], strict=True))


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


def test_the_monitoring_role_gets_its_own_names() -> None:
    values, generated = creds.generate()
    assert values["POSTGRES_MONITOR_USER"] == "kb_monitor"
    assert {"POSTGRES_MONITOR_USER", "POSTGRES_MONITOR_PASS"} <= set(generated)
    assert creds.is_secret_name("POSTGRES_MONITOR_PASS") and not creds.is_secret_name("POSTGRES_SSL_ROOT_CERT")
    assert "POSTGRES_SSL_ROOT_CERT" not in values  # written by step 00 when TLS is on, not generated


@pytest.mark.parametrize(("value", "problem"), [
    ("Monitor", "POSTGRES_MONITOR_USER must be a lower-case identifier"),
    ("pg_monitor", "POSTGRES_MONITOR_USER: names starting with pg_ are reserved"),
    ("kb_monitor; DROP", "POSTGRES_MONITOR_USER must be a lower-case identifier"),
])
def test_the_monitoring_role_name_is_checked_like_the_others(value: str, problem: str) -> None:
    values, _ = creds.generate()
    values["POSTGRES_MONITOR_USER"] = value
    assert any(problem in line for line in values.validate())


def test_the_monitoring_role_is_not_another_role() -> None:
    values, _ = creds.generate()
    values["POSTGRES_MONITOR_USER"] = values["POSTGRES_SUPERUSER"]
    assert any("must all be different roles" in line for line in values.validate())


def test_the_ca_path_must_be_absolute() -> None:
    values, _ = creds.generate()
    values["POSTGRES_SSL_ROOT_CERT"] = "credentials/tls/ca.crt"
    assert values.validate() == ["POSTGRES_SSL_ROOT_CERT must be an absolute path (of credentials/tls/ca.crt), "
                                 "got 'credentials/tls/ca.crt'"]
    values["POSTGRES_SSL_ROOT_CERT"] = "/srv/kbpg work/credentials/tls/ca.crt"
    assert values.validate() == []


def bash_reads(env_file: Path, names: list[str]) -> tuple[dict[str, str | None], str]:
    """What bash makes of ``set -a; . FILE`` (None: not set), and what it said on stderr (it goes on after an error).

    Run in the file's directory with a nearly empty environment, so that a redirection or a command stays there.
    """
    script = ('set -a; . "$1"; shift; for n in "$@"; do if [ -n "${!n+set}" ]; then printf "%s\\0%s\\0" "$n" "${!n}"; '
              'fi; done')
    result = subprocess.run(
        ["bash", "-c", script, "bash", str(env_file), *names],
        capture_output=True, env={"PATH": os.environ["PATH"]}, cwd=env_file.parent, timeout=30, check=False,
    )
    parts = result.stdout.decode("utf-8", "surrogateescape").split("\0")[:-1]
    seen = dict(zip(parts[0::2], parts[1::2], strict=True))
    return {name: seen.get(name) for name in names}, result.stderr.decode("utf-8", "replace")


# Every form read_env accepts, as whole lines. Each is checked against bash itself below: kbpg reads exactly
# what the later modules get from `set -a; . postgres.env`.
ACCEPTED_LINES = {
    "plain word": r"KBPG_A_PASS=Plain_word-1.2:3,4@5%6+7/8=9",
    "a # inside a word is not a comment": r"KBPG_B_PASS=abc#def",
    "a # at the start of the value is not a comment either": r"KBPG_C_PASS=#leading",
    "single quoted: anything but a quote":
        r"""KBPG_D_PASS='sp ace $HOME ${X} $(id) `id` \ \n \" ! * ? [a] {a,b} ~ ; & | < > # é 日本'""",
    "the '\\'' escape kbpg writes": r"""KBPG_E_PASS='it'\''s a '\''quote'\'''""",
    "the \\' escape alone": r"KBPG_F_PASS=it\'s#1",
    "double quoted, without $ ` \\": r"""KBPG_G_PASS="sp ace 'single' ! * ? [a] {a,b} ~ ; & | # é" """,
    "glued parts": r"""KBPG_H_PASS=abc'd e'"f g"h""",
    "double quotes then a glued #": r'KBPG_I_PASS="dq#x"#glued',
    "a real comment after blanks": r"KBPG_J_PASS='quoted' # a real comment",
    "trailing blanks": "KBPG_K_PASS=plain  \t ",
    "export": "export KBPG_L_PASS='exported'",
    "leading blanks, export and a tab": '  \texport\t KBPG_M_PASS="x"',
    "empty": "KBPG_N_PASS=",
    "empty quotes": "KBPG_O_PASS=''\"\"",
    "a CR in a comment line is harmless": "# a comment with a Windows line end\r",
    "blank line": " \t ",
}


def test_every_accepted_form_reads_as_bash_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "postgres.env"
    path.write_text("\n".join(ACCEPTED_LINES.values()) + "\n", encoding="utf-8", newline="")
    names = [line.split("=")[0].split()[-1] for line in ACCEPTED_LINES.values() if "=" in line and "#" not in line[:3]]
    read = creds.read_env(path)
    bash, stderr = bash_reads(path, names)
    assert stderr == ""
    assert dict(read) == bash
    assert len(read) == len(names) == 15
    # Not vacuous: the quoting really was interpreted.
    assert read["KBPG_E_PASS"] == "it's a 'quote'" and read["KBPG_F_PASS"] == "it's#1"
    assert read["KBPG_B_PASS"] == "abc#def" and read["KBPG_J_PASS"] == "quoted" and read["KBPG_H_PASS"] == "abcd ef gh"


def test_a_file_kbpg_wrote_is_read_back_by_the_strict_reader(tmp_path: Path) -> None:
    values, _ = creds.generate()
    for index, value in enumerate(AWKWARD):
        values[f"KBPG_TEST_{index}_PASSWORD"] = value
    path = tmp_path / "credentials" / "postgres.env"
    creds.write_env(path, values)
    assert creds.read_env(path) == values


# Forms read_env refuses: (line 2 of the file, the name the message gives, the value the text seems to say).
# Each one reads differently under bash (checked below: another value, or an error), or is in AMBIGUOUS.
REFUSED_LINES = {
    "$ unquoted": ("KBPG_PASS=s3cr3t$HOME", "KBPG_PASS", "s3cr3t$HOME"),
    "${} unquoted": ("KBPG_PASS=s3cr3t${HOME}x", "KBPG_PASS", "s3cr3t${HOME}x"),
    "$ in double quotes": ('KBPG_PASS="s3cr3t$HOME"', "KBPG_PASS", "s3cr3t$HOME"),
    "command substitution": ("KBPG_PASS=s3cr3t$(echo x)", "KBPG_PASS", "s3cr3t$(echo x)"),
    "ANSI-C quoting": (r"KBPG_PASS=$'s3cr3t\tx'", "KBPG_PASS", r"$'s3cr3t\tx'"),
    "backquotes": ("KBPG_PASS=s3cr3t`echo x`", "KBPG_PASS", "s3cr3t`echo x`"),
    "backquotes in double quotes": ('KBPG_PASS="s3cr3t`echo x`"', "KBPG_PASS", "s3cr3t`echo x`"),
    "backslash unquoted": (r"KBPG_PASS=s3cr3t\x", "KBPG_PASS", r"s3cr3t\x"),
    "escaped blank": (r"KBPG_PASS=s3cr3t\ #x", "KBPG_PASS", r"s3cr3t\ #x"),
    "backslash in double quotes": (r'KBPG_PASS="s3cr3t\\x"', "KBPG_PASS", r"s3cr3t\\x"),
    "escaped double quote": (r'KBPG_PASS="s3cr3t\"x"', "KBPG_PASS", r's3cr3t\"x'),
    "unbalanced single quote": ("KBPG_PASS='s3cr3t", "KBPG_PASS", "'s3cr3t"),
    "unbalanced double quote": ('KBPG_PASS="s3cr3t', "KBPG_PASS", '"s3cr3t'),
    "two words": ("KBPG_PASS=s3cr3t more", "KBPG_PASS", "s3cr3t more"),
    "two assignments": ("KBPG_PASS=s3cr3t KBPG_OTHER=x", "KBPG_PASS", "s3cr3t KBPG_OTHER=x"),
    "a ;": ("KBPG_PASS=s3cr3t;x", "KBPG_PASS", "s3cr3t;x"),
    "a &": ("KBPG_PASS=s3cr3t&x", "KBPG_PASS", "s3cr3t&x"),
    "a |": ("KBPG_PASS=s3cr3t|x", "KBPG_PASS", "s3cr3t|x"),
    "a >": ("KBPG_PASS=s3cr3t>x", "KBPG_PASS", "s3cr3t>x"),
    "a <": ("KBPG_PASS=s3cr3t<x", "KBPG_PASS", "s3cr3t<x"),
    "a (": ("KBPG_PASS=(s3cr3t x)", "KBPG_PASS", "(s3cr3t x)"),
    "a ~": ("KBPG_PASS=~/s3cr3t", "KBPG_PASS", "~/s3cr3t"),
    "braces after export": ("export KBPG_PASS=s3cr3t{a,b}", "KBPG_PASS", "s3cr3t{a,b}"),
    "CRLF line end": ("KBPG_PASS='s3cr3t'\r", "KBPG_PASS", "s3cr3t"),
    "a line of CR only": ("\r", None, None),
    "spaces around =": ("KBPG_PASS = s3cr3t", None, "s3cr3t"),
    "read-only name": ("UID=s3cr3t", "UID", "s3cr3t"),
    "name with its own value": ("RANDOM=s3cr3t", "RANDOM", "s3cr3t"),
    "BASH name": ("BASH_XTRACEFD=s3cr3t", "BASH_XTRACEFD", "s3cr3t"),
    # Read the same by bash 5.2, refused anyway: AMBIGUOUS says why.
    "a ! unquoted": ("KBPG_PASS=s3cr3t!x", "KBPG_PASS", "s3cr3t!x"),
    "a * unquoted": ("KBPG_PASS=s3cr3t*", "KBPG_PASS", "s3cr3t*"),
    "braces without export": ("KBPG_PASS=s3cr3t{a,b}", "KBPG_PASS", "s3cr3t{a,b}"),
    "non-ASCII unquoted": ("KBPG_PASS=s3cr3té", "KBPG_PASS", "s3cr3té"),
    "lower-case name": ("kbpg_pass=s3cr3t", "kbpg_pass", "s3cr3t"),
    "export without a value": ("export KBPG_PASS", None, None),
    "append": ("KBPG_PASS+=s3cr3t", None, "s3cr3t"),
    "declare": ("declare KBPG_PASS=s3cr3t", None, "s3cr3t"),
}
AMBIGUOUS = {
    "a ! unquoted": "history expansion when the line is pasted into an interactive bash",
    "a * unquoted": "pathname expansion in shells that do not read export's arguments as assignments",
    "braces without export": "the same word is brace-expanded as soon as `export` is put in front (case above)",
    "non-ASCII unquoted": "how bytes outside ASCII split into characters depends on the locale",
    "lower-case name": "not a name the later modules read; upper case only",
    "export without a value": "exports whatever the loading shell already had under that name",
    "append": "appends to whatever the loading shell already had under that name",
    "declare": "`declare` inside a function makes the variable local",
}


@pytest.mark.parametrize("case", sorted(REFUSED_LINES))
def test_every_refused_form_is_named_by_line_and_would_read_differently(case: str, tmp_path: Path) -> None:
    line, name, seems = REFUSED_LINES[case]
    path = tmp_path / "postgres.env"
    path.write_text(f"# line 1\n{line}\nKBPG_AFTER_PASS=after\n", encoding="utf-8", newline="")
    with pytest.raises(creds.CredentialsError) as caught:
        creds.read_env(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:2: "), message
    if name:
        assert message.startswith(f"{path}:2: {name}: "), message
    assert "s3cr3t" not in message, "a refusal must never show the value"
    assert "\n" not in message, "one problem, one line"
    if "CR" in case:
        assert "Windows line end (CR)" in message
    if case in AMBIGUOUS:
        return
    variable = name or "KBPG_PASS"
    bash, stderr = bash_reads(path, [variable])
    assert bash[variable] != seems or stderr, f"bash reads {case!r} as written: accept it rather than refuse it"


def test_every_problem_is_named_at_once_and_duplicates_name_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "postgres.env"
    path.write_text("POSTGRES_SUPERUSER=kb_admin\nPOSTGRES_SUPERPASS=one$x\n\nPOSTGRES_SUPERUSER=kb_root\n"
                    "POSTGRES_APP_PASS='open\n", encoding="utf-8")
    with pytest.raises(creds.CredentialsError) as caught:
        creds.read_env(path)
    assert str(caught.value).splitlines() == [
        (f"{path}:2: POSTGRES_SUPERPASS: a $ outside single quotes (bash expands it); write the value in single "
         "quotes: NAME='value' (a ' inside is written '\\'')"),
        f"{path}:4: POSTGRES_SUPERUSER is set again (first on line 1): keep only one",
        f"{path}:5: POSTGRES_APP_PASS: unbalanced ' quote: a value must open and close its quotes on its own line",
    ]
    # bash silently takes the last one: kbpg would manage one role while the later modules use another.
    assert bash_reads(path, ["POSTGRES_SUPERUSER"])[0] == {"POSTGRES_SUPERUSER": "kb_root"}


def test_shell_names_refused_are_ones_bash_does_not_give_back(tmp_path: Path) -> None:
    path = tmp_path / "names.env"
    for name in [*sorted(creds._SHELL_NAMES), "BASH_XTRACEFD", "BASH_COMMAND", "BASHPID", "BASH_SUBSHELL"]:
        path.write_text(f"{name}=zq\n", encoding="utf-8")
        with pytest.raises(creds.CredentialsError, match=f":1: {name}: bash keeps this name"):
            creds.read_env(path)
        got, stderr = bash_reads(path, [name])
        assert got[name] != "zq" or stderr, name


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


# --- values no credential may hold: one check (check_value) when typed, read, written ----------------------

FORBIDDEN_CHARACTERS = {
    "newline": "\n", "carriage return": "\r", "tab": "\t", "NUL": "\x00", "escape": "\x1b", "DEL": "\x7f",
    "NEL (U+0085)": "\x85", "CSI (U+009B)": "\x9b", "line separator (U+2028)": "\u2028",
    "paragraph separator (U+2029)": "\u2029",
}


@pytest.mark.parametrize("kind", sorted(FORBIDDEN_CHARACTERS))
def test_check_value_refuses_control_characters_and_separators(kind: str) -> None:
    value = f"Str0ng-s3cr3t{FORBIDDEN_CHARACTERS[kind]}-passw"
    for name in ("POSTGRES_APP_PASS", "POSTGRES_APP_USER", "KBPG_EXTRA"):
        problem = creds.check_value(name, value)
        assert problem and problem.startswith(f"{name} contains a control character"), (kind, problem)
        assert "s3cr3t" not in problem


def test_check_value_refuses_bytes_that_were_not_utf8() -> None:
    value = os.fsdecode(b"s3cr3t\xff")  # what os.environ gives for a value that is not UTF-8
    assert creds.check_value("POSTGRES_APP_PASS", value) == "POSTGRES_APP_PASS is not valid UTF-8 text; type it again"


@pytest.mark.parametrize("value", ["éàü 日本語 ñ", "no\u00a0break space", "emoji 🐘", "zero\u200bwidth", "'\"$`\\"])
def test_check_value_keeps_printable_unicode(value: str) -> None:
    assert creds.check_value("POSTGRES_APP_PASS", value) is None


@pytest.mark.parametrize("kind", ["tab", "line separator (U+2028)", "NEL (U+0085)", "escape", "DEL"])
def test_a_file_holding_a_control_character_in_quotes_is_refused_by_name(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "postgres.env"
    path.write_bytes(f"POSTGRES_SUPERUSER=kb_admin\nPOSTGRES_APP_PASS='s3cr3t{FORBIDDEN_CHARACTERS[kind]}x'\n"
                     .encode())
    with pytest.raises(creds.CredentialsError) as caught:
        creds.read_env(path)
    assert str(caught.value).startswith(f"{path}:2: POSTGRES_APP_PASS contains a control character")
    assert "s3cr3t" not in str(caught.value)


def test_a_value_over_two_lines_is_refused(tmp_path: Path) -> None:
    # bash reads one value holding a newline; kbpg names the opening line (and the stray one after it).
    path = tmp_path / "postgres.env"
    path.write_text("POSTGRES_APP_PASS='s3cr3t\nsecond line'\n", encoding="utf-8")
    with pytest.raises(creds.CredentialsError) as caught:
        creds.read_env(path)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith(f"{path}:1: POSTGRES_APP_PASS: unbalanced ' quote")
    assert lines[1].startswith(f"{path}:2: ")
    assert "s3cr3t" not in str(caught.value) and "second line" not in str(caught.value)


@pytest.mark.parametrize("kind", ["line separator (U+2028)", "paragraph separator (U+2029)", "NEL (U+0085)"])
def test_unicode_separators_are_never_written(kind: str, tmp_path: Path) -> None:
    values, _ = creds.generate()
    values["PATRONI_API_PASSWORD"] = f"Str0ng-s3cr3t{FORBIDDEN_CHARACTERS[kind]}-passw"
    path = tmp_path / "credentials" / "postgres.env"
    with pytest.raises(creds.CredentialsError, match="^PATRONI_API_PASSWORD contains a control character") as caught:
        creds.write_env(path, values)
    assert "s3cr3t" not in str(caught.value)
    assert not path.exists()


@pytest.mark.parametrize("kind", ["newline", "line separator (U+2028)", "paragraph separator (U+2029)", "escape"])
def test_cli_export_from_env_refuses_control_characters(kind: str, tmp_path: Path) -> None:
    assert run_kbpg("credentials", "generate", workdir=tmp_path).returncode == 0
    path = tmp_path / "credentials" / "postgres.env"
    before = path.read_bytes()
    typed = f"Str0ng-s3cr3t{FORBIDDEN_CHARACTERS[kind]}-horse-battery"
    result = run_kbpg("credentials", "export", "--from-env", workdir=tmp_path, env={"POSTGRES_APP_PASS": typed})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("kbpg: POSTGRES_APP_PASS contains a control character")
    assert "s3cr3t" not in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert path.read_bytes() == before


def test_cli_export_from_env_refuses_a_value_that_is_not_utf8(tmp_path: Path) -> None:
    result = run_kbpg("credentials", "export", "--from-env", workdir=tmp_path,
                      env={"POSTGRES_APP_PASS": os.fsdecode(b"Str0ng-s3cr3t-\xff\xfe-horse")})
    assert result.returncode == 2
    assert result.stderr == "kbpg: POSTGRES_APP_PASS is not valid UTF-8 text; type it again\n"
    assert not (tmp_path / "credentials" / "postgres.env").exists()


async def test_wizard_refuses_a_typed_value_with_a_line_separator(tmp_path: Path) -> None:
    from textual.widgets import DataTable, Input, Static

    from kbpg_tui.ui.app import KbpgApp

    app = KbpgApp(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("1", "g")
        table = app.screen.query_one(DataTable)
        names = [str(table.get_cell_at((row, 0))) for row in range(table.row_count)]
        table.move_cursor(row=names.index("POSTGRES_APP_PASS"))
        before = app.state.credentials["POSTGRES_APP_PASS"]
        await pilot.press("e")
        app.screen.query_one("#editor-input", Input).value = "Str0ng-s3cr3t\u2028-horse-battery"
        await pilot.press("enter")
        await pilot.pause()
        shown = str(app.screen.query_one("#editor-strength", Static).render())
        assert "refused: POSTGRES_APP_PASS contains a control character" in shown
        assert "s3cr3t" not in shown
        assert app.state.credentials["POSTGRES_APP_PASS"] == before


# --- export --to: never changes the mode of a directory kbpg did not create --------------------------------

@pytest.mark.parametrize("mode", [0o755, 0o1777, 0o750])
def test_export_to_leaves_an_existing_directory_alone(mode: int, tmp_path: Path) -> None:
    assert run_kbpg("credentials", "generate", workdir=tmp_path / "work").returncode == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(mode)
    result = run_kbpg("credentials", "export", "--to", str(outside / "postgres.env"), workdir=tmp_path / "work")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(outside.stat().st_mode) == mode, "the directory's mode was changed"
    assert stat.S_IMODE((outside / "postgres.env").stat().st_mode) == 0o600
    assert "warning" not in result.stderr  # nobody else can replace the file there (1777: sticky)
    written = creds.read_env(tmp_path / "work" / "credentials" / "postgres.env")
    assert creds.read_env(outside / "postgres.env") == written


def test_export_to_warns_about_a_directory_others_can_write(tmp_path: Path) -> None:
    assert run_kbpg("credentials", "generate", workdir=tmp_path).returncode == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(0o777)
    result = run_kbpg("credentials", "export", "--to", str(outside / "pg.env"), workdir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == (f"kbpg: warning: {outside} is 0777: other users can replace pg.env in it "
                             "(kbpg leaves the mode of an existing directory alone)\n")
    assert stat.S_IMODE(outside.stat().st_mode) == 0o777
    assert stat.S_IMODE((outside / "pg.env").stat().st_mode) == 0o600


def test_export_to_creates_a_missing_directory_0700(tmp_path: Path) -> None:
    assert run_kbpg("credentials", "generate", workdir=tmp_path).returncode == 0
    target = tmp_path / "new" / "deeper" / "postgres.env"
    old = os.umask(0)
    try:
        result = run_kbpg("credentials", "export", "--to", str(target), workdir=tmp_path)
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_kbpgs_own_credentials_directory_is_still_tightened(tmp_path: Path) -> None:
    assert run_kbpg("credentials", "generate", workdir=tmp_path).returncode == 0
    directory = tmp_path / "credentials"
    directory.chmod(0o755)
    result = run_kbpg("credentials", "export", "--to", str(directory / "postgres.env"), workdir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_export_to_a_directory_or_under_a_file_is_bad_input(tmp_path: Path) -> None:
    assert run_kbpg("credentials", "generate", workdir=tmp_path).returncode == 0
    (tmp_path / "adir").mkdir()
    result = run_kbpg("credentials", "export", "--to", str(tmp_path / "adir"), workdir=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"kbpg: {tmp_path / 'adir'}: is a directory; name the file to write " \
                            f"(e.g. {tmp_path / 'adir' / 'postgres.env'})\n"
    (tmp_path / "afile").write_text("x")
    result = run_kbpg("credentials", "export", "--to", str(tmp_path / "afile" / "pg.env"), workdir=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"kbpg: {tmp_path / 'afile'}: not a directory; cannot write pg.env there\n"
    assert (tmp_path / "afile").read_text() == "x"
    result = run_kbpg("credentials", "export", "--to", "/proc/pg.env", workdir=tmp_path)  # no file can be made there
    assert result.returncode == 2
    assert result.stderr.startswith("kbpg: /proc/pg.env: cannot write: ") and len(result.stderr.splitlines()) == 1


# --- postgres.env that is not a text file of the right size: one line, exit 2, nothing overwritten ---------

def _bad_env_file(kind: str, path: Path) -> None:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    if kind == "a directory":
        path.mkdir()
    elif kind == "a named pipe":
        os.mkfifo(path, 0o600)
    elif kind == "not UTF-8":
        path.write_bytes(b"POSTGRES_SUPERUSER=kb_admin\nPOSTGRES_APP_PASS='caf\xe9'\n")
    elif kind == "NUL bytes":
        path.write_bytes(b"POSTGRES_SUPERUSER=kb_admin\nPOSTGRES_APP_PASS='a\x00b'\n")
    elif kind == "huge":
        path.write_bytes(b"# padding\n" * 200_000)
    elif kind == "CRLF line ends":
        path.write_bytes(b"POSTGRES_SUPERUSER=kb_admin\r\nPOSTGRES_APP_PASS='x'\r\n")


BAD_FILES = {
    "a directory": "{path}: is a directory, not a postgres.env file",
    "a named pipe": "{path}: is a FIFO (named pipe), not a regular postgres.env file",
    "not UTF-8": "{path}:2: not UTF-8 text; save the file as UTF-8",
    "NUL bytes": "{path}:2: NUL byte (bash drops it): this is not a text file",
    "huge": "{path}: is 2000000 bytes: too large for a postgres.env file (at most 65536 bytes)",
    "CRLF line ends": "{path}:1: POSTGRES_SUPERUSER: Windows line end (CR): bash would keep the CR in the value; "
                      "save the file with Unix line ends (dos2unix)",
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_a_postgres_env_that_is_not_a_text_file_is_one_line_exit_2(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "credentials" / "postgres.env"
    _bad_env_file(kind, path)
    expected = BAD_FILES[kind].format(path=path)
    if kind != "a named pipe":  # in this process a regression would hang the suite; the CLI below times out
        with pytest.raises(creds.CredentialsError) as caught:
            creds.read_env(path)
        assert str(caught.value).splitlines()[0] == expected
    for command in (["credentials", "generate"], ["credentials", "export"]):
        result = run_kbpg(*command, workdir=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"kbpg: {expected}\n"), result.stderr
        assert "Traceback" not in result.stderr
    if kind not in ("a directory", "a named pipe"):
        assert not [p for p in path.parent.iterdir() if p.name != "postgres.env"]


def test_a_0644_postgres_env_is_set_back_to_0600(tmp_path: Path) -> None:
    assert run_kbpg("credentials", "generate", workdir=tmp_path).returncode == 0
    path = tmp_path / "credentials" / "postgres.env"
    path.chmod(0o644)
    assert creds.file_mode_problem(path) == f"{path} is 0644; it must be 0600 (chmod 600 {path})"
    before = path.read_bytes()
    result = run_kbpg("credentials", "generate", workdir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() == before


def test_a_credentials_path_that_is_a_file_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "credentials").write_text("not a directory\n")
    result = run_kbpg("credentials", "generate", workdir=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"kbpg: {tmp_path / 'credentials'}: not a directory; cannot write postgres.env there\n"
    assert (tmp_path / "credentials").read_text() == "not a directory\n"
