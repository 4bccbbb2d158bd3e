"""credentials/postgres.env: the cluster's secrets, with the exact names later modules read.

- Generated passwords come from passlib's ``pwd.genword`` (the ``libpass`` fork),
  alphanumeric so they survive URLs, INI files and shells unquoted, with at
  least 128 bits of entropy.
- Typed passwords get a strength estimate; weak ones are refused unless confirmed.
- The file is written atomically, created 0600 in a 0700 directory, and quoted
  so that ``set -a; . credentials/postgres.env`` gives back every value exactly.
- A hand-edited file is read exactly as bash reads it, or refused with the line and the name (never the
  value): see :func:`read_env` for the accepted forms. No value may hold a control character or a line or
  paragraph separator (:func:`check_value`, used when a value is typed, read and written).
- The SCRAM-SHA-256 verifier is computed here, so a plain password never has to
  cross the wire to PostgreSQL, and PgBouncer can hold the byte-identical secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import re
import secrets as _secrets
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from passlib import pwd
from passlib.utils import saslprep

from .files import InputFileError, atomic_write, read_input_file
from .logs import register_secret

ENV_FILE = Path("credentials") / "postgres.env"

# Exact names, read by the company's later modules: keep them.
USER_NAMES = {
    "POSTGRES_SUPERUSER": "kb_admin",
    "POSTGRES_REPL_USER": "kb_repl",
    "POSTGRES_APP_USER": "kb_app",
    "POSTGRES_DB": "keybuzz",
    "PATRONI_CLUSTER_NAME": "keybuzz-pg",
    # Names added by kbpg for secrets the seed did not have (never reuse another's password).
    "HAPROXY_STATS_USER": "kb_stats",
    "PGBOUNCER_ADMIN_USER": "kb_pgbouncer",
    "PGBOUNCER_STATS_USER": "kb_pgbouncer_stats",
    "POSTGRES_MONITOR_USER": "kb_monitor",  # member of pg_monitor: diagnostics and the live view, never the superuser
}
PASSWORD_NAMES = (
    "POSTGRES_SUPERPASS",
    "POSTGRES_REPL_PASS",
    "POSTGRES_APP_PASS",
    "PATRONI_API_PASSWORD",
    "HAPROXY_STATS_PASSWORD",
    "PGBOUNCER_ADMIN_PASS",
    "PGBOUNCER_STATS_PASS",
    "PATRONI_RAFT_PASSWORD",  # Raft's port lets whoever reaches it rewrite the cluster's config: never open
    "POSTGRES_MONITOR_PASS",
    # pgBackRest's repository encryption key (repo1-cipher-pass), on the backup host only. Not PGBACKREST_*: pgBackRest
    # reads variables of that prefix and warns about unknown ones when postgres.env is sourced. Without it the backups
    # cannot be read; it cannot be rotated (pgBackRest does not re-encrypt a repository).
    "BACKUP_CIPHER_PASS",
)
BACKUP_CIPHER_NAME = "BACKUP_CIPHER_PASS"
# The path of credentials/tls/ca.crt (absolute), for the applications' sslrootcert; not a secret. Step 00 writes it
# when [tls] is enabled.
SSL_ROOT_CERT_NAME = "POSTGRES_SSL_ROOT_CERT"
# Names step 00 may add to the postgres.env of a cluster that already exists: each makes something new (a role, a
# path) and changes nothing the cluster already holds. Any other missing name is refused on a live cluster.
# BACKUP_CIPHER_PASS is additive only while the backup host holds no repository: step 06 refuses a new one otherwise.
ADDITIVE_NAMES = frozenset({"POSTGRES_MONITOR_USER", "POSTGRES_MONITOR_PASS", SSL_ROOT_CERT_NAME, BACKUP_CIPHER_NAME})
REQUIRED_NAMES = (
    "POSTGRES_SUPERUSER",
    "POSTGRES_SUPERPASS",
    "POSTGRES_REPL_USER",
    "POSTGRES_REPL_PASS",
    "POSTGRES_APP_USER",
    "POSTGRES_APP_PASS",
    "POSTGRES_DB",
    "PATRONI_CLUSTER_NAME",
    "PATRONI_API_PASSWORD",
)
GENERATED_ENTROPY_BITS = 160  # above the 128-bit floor, still short enough to type in an emergency
# Names generated with more entropy: the backup key encrypts data kept for months, off the cluster (AES-256).
ENTROPY_BITS = {BACKUP_CIPHER_NAME: 256}
MIN_TYPED_BITS = 60
MIN_TYPED_LENGTH = 12

_IDENTIFIER_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_CLUSTER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")


class CredentialsError(Exception):
    """Credentials are missing, unreadable or invalid; the message names the variable or line."""


def generate_password(entropy: int = GENERATED_ENTROPY_BITS) -> str:
    """A random alphanumeric password with at least ``entropy`` bits."""
    if entropy < 128:
        raise ValueError("generated passwords need at least 128 bits of entropy")
    return pwd.genword(entropy=entropy, charset="ascii_62")


@dataclass(frozen=True)
class Strength:
    """An estimate of a typed password's strength."""

    bits: float
    weak: bool
    reasons: tuple[str, ...]

    @property
    def label(self) -> str:
        if self.weak:
            return "weak"
        return "strong" if self.bits >= 100 else "fair"


_COMMON = ("password", "passw0rd", "postgres", "keybuzz", "admin", "secret", "qwerty", "azerty", "123456", "letmein", "changeme")


def password_strength(password: str) -> Strength:
    """Estimate entropy from length and character classes, with penalties for obvious patterns."""
    reasons: list[str] = []
    pool = 0
    if re.search(r"[a-z]", password):
        pool += 26
    if re.search(r"[A-Z]", password):
        pool += 26
    if re.search(r"[0-9]", password):
        pool += 10
    if re.search(r"[^A-Za-z0-9]", password):
        pool += 33
    distinct = len(set(password))
    # Repeats add little: count distinct characters fully, the rest at a quarter.
    effective_length = distinct + (len(password) - distinct) / 4
    bits = effective_length * math.log2(pool) if pool else 0.0
    lowered = password.casefold()
    for word in _COMMON:
        if word in lowered:
            bits -= 20
            reasons.append(f"contains the common word {word!r}")
    if re.search(r"(0123|1234|2345|3456|4567|5678|6789|abcd|bcde|cdef)", lowered):
        bits -= 10
        reasons.append("contains a sequence")
    bits = max(bits, 0.0)
    if len(password) < MIN_TYPED_LENGTH:
        reasons.insert(0, f"shorter than {MIN_TYPED_LENGTH} characters")
    if bits < MIN_TYPED_BITS:
        reasons.append(f"about {bits:.0f} bits of entropy, below {MIN_TYPED_BITS}")
    weak = len(password) < MIN_TYPED_LENGTH or bits < MIN_TYPED_BITS
    return Strength(round(bits, 1), weak, tuple(reasons))


# Characters no value may hold: control characters (C0, DEL, C1, NUL included: category Cc), Unicode line and
# paragraph separators (Zl, Zp: U+2028, U+2029) and lone surrogates (Cs: bytes that were not UTF-8, as Python
# decodes them from the environment). Each of them ends a line somewhere (a config file, a terminal, a log).
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs"})


def check_characters(name: str, value: str) -> str | None:
    """Why ``value`` has characters no credential may hold, or None. The message names ``name``, never the value."""
    for char in value:
        category = unicodedata.category(char)
        if category == "Cs":
            return f"{name} is not valid UTF-8 text; type it again"
        if category in _FORBIDDEN_CATEGORIES:
            return (f"{name} contains a control character or a line/paragraph separator (newline, tab, NUL, "
                    "U+0085, U+2028, U+2029, ...); only printable characters on one line are allowed")
    return None


def check_value(name: str, value: str) -> str | None:
    """Why ``value`` cannot be stored under ``name``, or None.

    The one check for every value, whether typed in the wizard, taken from the environment by
    ``kbpg credentials export --from-env``, read from postgres.env or about to be written to it.
    """
    if value == "":
        return f"{name} is empty"
    if (problem := check_characters(name, value)):
        return problem
    if name in ("POSTGRES_SUPERUSER", "POSTGRES_REPL_USER", "POSTGRES_APP_USER", "POSTGRES_DB",
                "HAPROXY_STATS_USER", "PGBOUNCER_ADMIN_USER", "PGBOUNCER_STATS_USER", "POSTGRES_MONITOR_USER"):
        if not _IDENTIFIER_RE.match(value):
            return f"{name} must be a lower-case identifier (a-z, 0-9, _; not starting with a digit), got {value!r}"
        if value.startswith("pg_"):
            return f"{name}: names starting with pg_ are reserved by PostgreSQL"
    if name == "PATRONI_CLUSTER_NAME" and not _CLUSTER_NAME_RE.match(value):
        return f"{name} must be letters, digits, '.', '_' or '-', got {value!r}"
    if name == SSL_ROOT_CERT_NAME and not os.path.isabs(value):
        return f"{name} must be an absolute path (of credentials/tls/ca.crt), got {value!r}"
    if name == BACKUP_CIPHER_NAME and value != value.strip(" \t"):
        # pgbackrest.conf (an INI file) drops the blanks around a value: the key would not be the one kept here
        return f"{name} must not start or end with a space (pgBackRest's configuration file would drop it)"
    return None


class Credentials(dict):
    """Name → value for the variables of postgres.env (a dict, so extra names survive a round trip)."""

    def __repr__(self) -> str:
        # Reprs end up in tracebacks and debug logs: names only, never values.
        return f"Credentials({', '.join(self)}; values hidden)"

    __str__ = __repr__

    def validate(self) -> list[str]:
        problems = [f"{name} is missing" for name in REQUIRED_NAMES if name not in self]
        problems += [problem for name, value in self.items() if (problem := check_value(name, value))]
        role_names = ("POSTGRES_SUPERUSER", "POSTGRES_REPL_USER", "POSTGRES_APP_USER", "PGBOUNCER_ADMIN_USER",
                      "PGBOUNCER_STATS_USER", "POSTGRES_MONITOR_USER")
        users = [self[name] for name in role_names if name in self]
        if len(set(users)) != len(users):
            problems.append(f"{', '.join(role_names)} must all be different roles")
        return problems

    def register_secrets(self) -> None:
        """Make sure no log file ever shows a password of this set."""
        for name, value in self.items():
            if is_secret_name(name):
                register_secret(value)


def is_secret_name(name: str) -> bool:
    """Whether a postgres.env variable holds a secret (POSTGRES_SUPERPASS, *_PASSWORD, ...)."""
    return name in PASSWORD_NAMES or name.endswith(("PASS", "PASSWORD", "SECRET"))


def generate(existing: Credentials | None = None) -> tuple[Credentials, list[str]]:
    """Fill in every missing name: default role names, fresh passwords.

    Existing values are kept: once a cluster exists, nothing is regenerated
    silently. Returns the credentials and the names that were generated.
    """
    credentials = Credentials(existing or {})
    generated = []
    for name, default in USER_NAMES.items():
        if name not in credentials:
            credentials[name] = default
            generated.append(name)
    for name in PASSWORD_NAMES:
        if name not in credentials:
            credentials[name] = generate_password(ENTROPY_BITS.get(name, GENERATED_ENTROPY_BITS))
            generated.append(name)
    credentials.register_secrets()
    return credentials, generated


def quote(value: str) -> str:
    """Single-quote for POSIX sh: nothing inside single quotes is special except the quote itself."""
    return "'" + value.replace("'", "'\\''") + "'"


def render_env(credentials: Credentials) -> str:
    ordered = [name for name in REQUIRED_NAMES if name in credentials]
    ordered += sorted(name for name in credentials if name not in REQUIRED_NAMES)
    lines = [
        "# PostgreSQL HA credentials, written by kbpg. Keep this file 0600.",
        "# Load with: set -a; . credentials/postgres.env; set +a",
    ]
    lines += [f"{name}={quote(credentials[name])}" for name in ordered]
    return "\n".join(lines) + "\n"


def write_env(path: str | Path, credentials: Credentials, tighten_directory: bool = True) -> bool:
    """Write postgres.env atomically: file 0600 from creation, in a directory created 0700 if missing.

    ``tighten_directory``: also set an existing directory to 0700 (kbpg's own ``credentials/``). Off for a
    directory the operator named (``export --to``): kbpg never changes the mode of a directory it did not
    create (``/tmp`` made 0700 breaks the machine); see :func:`directory_warning`.
    Returns False (and writes nothing) if the file already holds exactly these values.
    """
    problems = credentials.validate()
    if problems:
        raise CredentialsError("; ".join(problems))
    path = Path(path)
    directory = path.parent
    text = render_env(credentials)
    try:
        if path.is_dir():
            raise CredentialsError(f"{path}: is a directory; name the file to write (e.g. {path / 'postgres.env'})")
        if directory.exists() and not directory.is_dir():
            raise CredentialsError(f"{directory}: not a directory; cannot write {path.name} there")
        if not directory.is_dir():
            # mkdir's mode applies to the last component only; missing parents get the usual umask mode.
            directory.mkdir(mode=0o700, parents=True)
            os.chmod(directory, 0o700)  # whatever the umask
        elif tighten_directory and stat.S_IMODE(directory.stat().st_mode) != 0o700:
            os.chmod(directory, 0o700)  # tighten a directory an operator made by hand
        if path.exists():
            try:
                if read_env(path) == credentials and path.read_text(encoding="utf-8") == text:
                    if stat.S_IMODE(path.stat().st_mode) != 0o600:
                        os.chmod(path, 0o600)
                    return False
            except (CredentialsError, OSError, UnicodeDecodeError):
                pass
        atomic_write(path, text.encode("utf-8"), mode=0o600)
    except OSError as exc:
        raise CredentialsError(f"{path}: cannot write: {exc.strerror or exc}") from None
    return True


def directory_warning(path: str | Path) -> str | None:
    """A warning if others could replace ``path`` after kbpg wrote it: its existing directory is writable by
    group or others without the sticky bit (``/tmp``, 1777, is fine: only the owner may rename or delete)."""
    directory = Path(path).parent
    try:
        mode = directory.stat().st_mode
    except OSError:
        return None  # missing: it will be created 0700
    if mode & 0o022 and not mode & stat.S_ISVTX:
        return (f"{directory} is {stat.S_IMODE(mode):04o}: other users can replace {Path(path).name} in it "
                "(kbpg leaves the mode of an existing directory alone)")
    return None


MAX_ENV_BYTES = 64 * 1024  # a postgres.env is a few hundred bytes; anything this large is the wrong file

# Outside quotes, only these characters are taken literally by every POSIX shell in an assignment value
# (no expansion, no globbing, not an operator, not a word break). ``#`` is literal there: the value is glued
# to ``NAME=`` so it never starts a word.
_UNQUOTED_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_@%+=:,./-#")
_UNQUOTED_SPECIAL = {
    "$": "a $ outside single quotes (bash expands it)",
    "`": "a backquote outside single quotes (bash runs a command)",
    "\\": "a backslash outside single quotes (bash removes or interprets it; only the '\\'' escape is read)",
    "~": "a ~ outside quotes (bash expands it to a home directory)",
    "!": "a ! outside quotes (history expansion when pasted into an interactive bash)",
    **{op: f"the shell operator {op} outside quotes" for op in ";&|<>()"},
    **{glob: f"the pattern character {glob} outside quotes (other shells may expand it)" for glob in "*?[]"},
    **{brace: f"a brace {brace} outside quotes (bash expands {{a,b}} after export)" for brace in "{}"},
}
_DOUBLE_QUOTED_SPECIAL = {
    "$": "a $ inside double quotes (bash expands it)",
    "`": "a backquote inside double quotes (bash runs a command)",
    "\\": "a backslash inside double quotes (bash may remove it)",
}
_ASSIGNMENT_RE = re.compile(r"[ \t]*(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_]*)=")
# Names bash will not take a value for (read-only: it refuses the line) or gives its own value back
# (RANDOM, SECONDS, LINENO, ...), and the BASH* names it reserves.
_SHELL_NAMES = frozenset({
    "UID", "EUID", "PPID", "SHELLOPTS", "BASHOPTS", "RANDOM", "SRANDOM", "SECONDS", "LINENO", "EPOCHSECONDS",
    "EPOCHREALTIME", "HISTCMD", "FUNCNAME", "GROUPS", "DIRSTACK", "OPTIND", "PIPESTATUS",
})
_ONE_LINE = "a value must open and close its quotes on its own line"
_QUOTE_ADVICE = "write the value in single quotes: NAME='value' (a ' inside is written '\\'')"


class _LineProblem(Exception):
    def __init__(self, message: str, name: str | None = None):
        super().__init__(message)
        self.name = name


def _parse_assignment(line: str) -> tuple[str, str]:
    """``NAME=value`` as bash reads it, or :class:`_LineProblem` when bash would read something else.

    Accepted, and read exactly as bash does (the tests check each form against bash itself):
    ``[export ]NAME=`` followed by one word made of any mix of
    - ``'single quoted'`` text (anything but ``'``), and the ``\\'`` escape between single-quoted parts;
    - ``"double quoted"`` text without ``$``, backquotes or backslashes;
    - unquoted letters, digits and ``_@%+=:,./-#``;
    then optional blanks and an optional ``# comment``. Every other form is refused, never guessed.
    """
    match = _ASSIGNMENT_RE.match(line)
    if not match:
        raise _LineProblem("expected NAME=value (NAME in upper case, no space around =)")
    name = match.group(1)
    if not _ENV_NAME_RE.match(name):
        raise _LineProblem(f"{name}: names are upper-case letters, digits and _", name)
    if name in _SHELL_NAMES or name.startswith("BASH"):
        raise _LineProblem(f"{name}: bash keeps this name for itself and would not give the value back", name)
    value: list[str] = []
    i = match.end()
    while i < len(line):
        char = line[i]
        if char == "'":
            end = line.find("'", i + 1)
            if end < 0:
                raise _LineProblem(f"{name}: unbalanced ' quote: {_ONE_LINE}", name)
            value.append(line[i + 1:end])
            i = end + 1
        elif char == '"':
            end = line.find('"', i + 1)
            if end < 0:
                raise _LineProblem(f"{name}: unbalanced \" quote: {_ONE_LINE}", name)
            inner = line[i + 1:end]
            special = next((c for c in inner if c in _DOUBLE_QUOTED_SPECIAL), None)
            if special is not None:
                raise _LineProblem(f"{name}: {_DOUBLE_QUOTED_SPECIAL[special]}; {_QUOTE_ADVICE}", name)
            value.append(inner)
            i = end + 1
        elif char == "\\" and line[i + 1:i + 2] == "'":
            value.append("'")
            i += 2
        elif char in " \t":
            rest = line[i:].lstrip(" \t")
            if rest and not rest.startswith("#"):
                raise _LineProblem(f"{name}: a blank outside quotes ends the value and bash would run the rest as a "
                                   f"command; {_QUOTE_ADVICE}", name)
            break
        elif char == "\r":
            raise _LineProblem(f"{name}: Windows line end (CR): bash would keep the CR in the value; "
                               "save the file with Unix line ends (dos2unix)", name)
        elif char in _UNQUOTED_SAFE:
            value.append(char)
            i += 1
        else:
            what = _UNQUOTED_SPECIAL.get(char, "a character that must be quoted (control or non-ASCII, ...)")
            raise _LineProblem(f"{name}: {what}; {_QUOTE_ADVICE}", name)
    text = "".join(value)
    if (problem := check_characters(name, text)):
        raise _LineProblem(problem, name)
    return name, text


def read_env(path: str | Path) -> Credentials:
    """Read postgres.env exactly as ``set -a; . postgres.env`` in bash would, or refuse it.

    Every line that bash would read differently from its text is named (line number and variable, never
    the value), all at once, in one :class:`CredentialsError`; so is a name set twice.
    """
    path = Path(path)
    try:
        # A directory, FIFO, device or oversized file is refused without blocking or reading it all.
        data = read_input_file(path, MAX_ENV_BYTES, "postgres.env file")
    except InputFileError as exc:
        if not path.exists() and not path.is_symlink():
            raise CredentialsError(f"{path}: not found; run `kbpg credentials generate` first") from None
        raise CredentialsError(str(exc)) from None
    credentials = Credentials()
    first_line: dict[str, int] = {}
    problems: list[str] = []
    # Lines end at \n only, as in bash (str.splitlines would also split at U+2028, \x0b, \x1c ... in a value).
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"{path}:{number}: not UTF-8 text; save the file as UTF-8")
            continue
        if "\x00" in line:
            problems.append(f"{path}:{number}: NUL byte (bash drops it): this is not a text file")
            continue
        stripped = line.lstrip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        if stripped == "\r":
            problems.append(f"{path}:{number}: Windows line end (CR): bash would run it as a command; "
                            "save the file with Unix line ends (dos2unix)")
            continue
        try:
            name, value = _parse_assignment(line)
        except _LineProblem as problem:
            problems.append(f"{path}:{number}: {problem}")
            continue
        if name in first_line:
            problems.append(f"{path}:{number}: {name} is set again (first on line {first_line[name]}): "
                            "keep only one")
            continue
        first_line[name] = number
        credentials[name] = value
    credentials.register_secrets()  # even on refusal: the values read so far stay out of the logs
    if problems:
        raise CredentialsError("\n".join(problems))
    return credentials


def file_mode_problem(path: str | Path) -> str | None:
    """A message if postgres.env or its directory can be read by others."""
    path = Path(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return f"{path} is {mode:04o}; it must be 0600 (chmod 600 {path})"
    dir_mode = stat.S_IMODE(path.parent.stat().st_mode)
    if dir_mode & 0o077:
        return f"{path.parent} is {dir_mode:04o}; it must be 0700"
    return None


# --- SCRAM-SHA-256 (RFC 5802 / 7677), as PostgreSQL stores it -------------------------

SCRAM_ITERATIONS = 4096  # PostgreSQL's default scram_iterations
_SCRAM_RE = re.compile(r"^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$")


def _normalize(password: str) -> bytes:
    # PostgreSQL applies SASLprep and falls back to the raw bytes when the string is not valid for it.
    try:
        return saslprep(password).encode("utf-8")
    except (ValueError, TypeError):
        return password.encode("utf-8")


def scram_sha256_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The ``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`` string PostgreSQL stores."""
    salt = salt if salt is not None else _secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", _normalize(password), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda raw: base64.b64encode(raw).decode("ascii")  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def scram_matches(verifier: str, password: str) -> bool:
    """Whether ``verifier`` was made from ``password`` (to leave a correct role untouched on re-runs)."""
    match = _SCRAM_RE.match(verifier or "")
    if not match:
        return False
    iterations, salt = int(match.group(1)), base64.b64decode(match.group(2))
    return hmac.compare_digest(scram_sha256_verifier(password, salt, iterations), verifier)
