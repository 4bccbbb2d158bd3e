"""credentials/postgres.env: the cluster's secrets, with the exact names later modules read.

- Generated passwords come from passlib's ``pwd.genword`` (the ``libpass`` fork),
  alphanumeric so they survive URLs, INI files and shells unquoted, with at
  least 128 bits of entropy.
- Typed passwords get a strength estimate; weak ones are refused unless confirmed.
- The file is written atomically, created 0600 in a 0700 directory, and quoted
  so that ``set -a; . credentials/postgres.env`` gives back every value exactly.
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
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path

from passlib import pwd
from passlib.utils import saslprep

from .files import atomic_write
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
)
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


def check_value(name: str, value: str) -> str | None:
    """Why ``value`` cannot be stored under ``name``, or None."""
    if value == "":
        return f"{name} is empty"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return f"{name} contains a control character (newline, tab, ...); type it on one line"
    if name in ("POSTGRES_SUPERUSER", "POSTGRES_REPL_USER", "POSTGRES_APP_USER", "POSTGRES_DB",
                "HAPROXY_STATS_USER", "PGBOUNCER_ADMIN_USER", "PGBOUNCER_STATS_USER"):
        if not _IDENTIFIER_RE.match(value):
            return f"{name} must be a lower-case identifier (a-z, 0-9, _; not starting with a digit), got {value!r}"
        if value.startswith("pg_"):
            return f"{name}: names starting with pg_ are reserved by PostgreSQL"
    if name == "PATRONI_CLUSTER_NAME" and not _CLUSTER_NAME_RE.match(value):
        return f"{name} must be letters, digits, '.', '_' or '-', got {value!r}"
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
                      "PGBOUNCER_STATS_USER")
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
            credentials[name] = generate_password()
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


def write_env(path: str | Path, credentials: Credentials) -> bool:
    """Write postgres.env atomically: directory 0700, file 0600 from creation.

    Returns False (and writes nothing) if the file already holds exactly these values.
    """
    problems = credentials.validate()
    if problems:
        raise CredentialsError("; ".join(problems))
    path = Path(path)
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(directory.stat().st_mode) != 0o700:
        os.chmod(directory, 0o700)  # tighten a directory an operator made by hand
    text = render_env(credentials)
    if path.exists():
        try:
            if read_env(path) == credentials and path.read_text(encoding="utf-8") == text:
                if stat.S_IMODE(path.stat().st_mode) != 0o600:
                    os.chmod(path, 0o600)
                return False
        except CredentialsError:
            pass
    atomic_write(path, text.encode("utf-8"), mode=0o600)
    return True


def read_env(path: str | Path) -> Credentials:
    """Parse postgres.env with shell quoting rules (without running a shell)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CredentialsError(f"{path}: not found; run `kbpg credentials generate` first") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"{path}: cannot read: {exc}") from None
    credentials = Credentials()
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            stripped = stripped[len("export "):].lstrip()
        name, sep, raw = stripped.partition("=")
        if not sep or not _ENV_NAME_RE.match(name):
            raise CredentialsError(f"{path}:{number}: expected NAME=value")
        try:
            words = shlex.split(_without_comment(raw), posix=True) or [""]
        except ValueError as exc:
            raise CredentialsError(f"{path}:{number}: {name}: bad quoting ({exc})") from None
        if len(words) != 1:
            raise CredentialsError(f"{path}:{number}: {name}: the value must be one quoted word")
        credentials[name] = words[0]
    credentials.register_secrets()
    return credentials


def _without_comment(raw: str) -> str:
    """``raw`` up to a shell comment: a ``#`` outside quotes at the start of a word, as bash reads it.

    (shlex's ``comments=True`` also cuts at a ``#`` inside a word: ``PASS=abc#def`` would read as ``abc``
    while ``. postgres.env`` gives ``abc#def``.)
    """
    quote, word_start, i = None, False, 0  # the value starts glued to "NAME=": not a word start
    while i < len(raw):
        char = raw[i]
        if quote == "'":
            quote = None if char == "'" else quote
        elif quote == '"':
            if char == "\\":
                i += 1
            elif char == '"':
                quote = None
        elif char == "\\":
            i += 1
        elif char in "'\"":
            quote = char
        elif char == "#" and word_start:
            return raw[:i]
        word_start = quote is None and char in " \t"
        i += 1
    return raw


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
