"""kbpg.toml: the answers file.

Every wizard screen maps to a section; the wizard writes it back and
``kbpg install --answers kbpg.toml --yes`` replays it. Read with ``tomllib``,
written with ``tomli-w``. It never holds a secret: the schema has no field for
one, and unknown keys are refused.

Validation errors name the key (``postgresql.version``) and the allowed values.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import re
import reprlib
import tomllib
import typing
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from .files import MAX_INPUT_BYTES, InputFileError, atomic_write, read_input_file
from .inventory import COLUMNS, DEFAULT_BACKUP_RULE, DEFAULT_DB_RULE, DEFAULT_HAPROXY_RULE
from .rto import PATRONI_KEYS, TIMING_PLANS

SUPPORTED_PG_VERSIONS = (13, 14, 15, 16, 17)

# The failover timing plans (TIMING_PLANS: Patroni, HAProxy and PgBouncer timing together) live in
# kbpg_tui.core.rto, with the worst-case failover time each one allows; each keeps loop_wait + 2*retry_timeout <= ttl.


def _opt(default: Any = dataclasses.MISSING, *, choices: tuple | None = None, min: int | None = None,
         max: int | None = None, check: Any = None, items: Any = None, doc: str = "", factory: Any = None,
         upgrade: Any = None) -> Any:
    """A dataclass field with its validation rules in metadata.

    ``check(value)`` returns what the value must be, or None; for a table, ``items(name, value)`` returns
    the problem of one entry (reported under its own key, e.g. ``postgresql.parameters.wal_level``), or None.
    ``upgrade(value)`` reads what an older kbpg.toml wrote: it returns (the value now, a note for the operator or
    None), before the value is checked.
    """
    metadata = {"choices": choices, "min": min, "max": max, "check": check, "items": items, "doc": doc,
                "upgrade": upgrade}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


_CONTROL_CATEGORIES = ("Cc", "Cf", "Zl", "Zp")  # control, format (bidi overrides...), line/paragraph separators


def _control_char(value: str) -> str | None:
    """The first control character of ``value``, shown as U+XXXX, or None."""
    for char in value:
        if unicodedata.category(char) in _CONTROL_CATEGORIES:
            return f"U+{ord(char):04X}"
    return None


_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother, _repr.maxlevel = 80, 80, 3


def _show(value: Any) -> str:
    """A short repr for error messages: bounded in length and depth, whatever the file held."""
    return _repr.repr(value)


def _key(name: str) -> str:
    """A TOML key as it can be written in an error line: bare if it can be, else quoted; bounded."""
    if len(name) <= 80 and re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return name
    return '"' + _show(name)[1:-1] + '"'


def _check_text(value: str) -> str | None:
    if (char := _control_char(value)):
        return f"text without control characters (found {char})"
    return None


def _check_ip(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "an IP address, e.g. 10.0.0.10"
    if "%" in value:  # an IPv6 scope (fe80::1%eth0) may hold any character, a newline included
        return "an IP address without a %scope, e.g. 10.0.0.10"
    return None


def _check_network(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return "a network in CIDR form, e.g. 10.0.0.0/16"
    return None


def _check_size(value: str) -> str | None:
    if re.fullmatch(r"[1-9][0-9]*(kB|MB|GB|TB)", value):
        return None
    return "a PostgreSQL size such as 128MB or 2GB"


# Directories of the system that a data directory must never be (step 02 chowns it to postgres, mode 0700).
_SYSTEM_TOPS = {"bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "run", "sbin", "sys"}
_SYSTEM_DIRS = {"/var/lib", "/var/log", "/var/cache", "/var/spool", "/var/mail", "/var/tmp", "/var/backups",
                "/var/opt", "/var/local", "/var/run", "/var/lock", "/var/www"}
_DATA_DIR_FORM = ("a normalised absolute path with at least two components, e.g. /srv/postgresql/data "
                  "(empty: the default)")


def _check_data_dir(value: str) -> str | None:
    """A data directory that cannot name the root, a system directory or a path that resolves elsewhere."""
    if value == "":
        return None
    if (char := _control_char(value)):
        return f"{_DATA_DIR_FORM}, without control characters (found {char})"
    if any(char.isspace() for char in value):
        return f"{_DATA_DIR_FORM}, without spaces"
    if not value.startswith("/"):
        return f"{_DATA_DIR_FORM}; this one is relative"
    if not re.fullmatch(r"[A-Za-z0-9._+@:,~/-]+", value):  # it goes into shell commands, YAML and unit files
        return f"{_DATA_DIR_FORM}, of ASCII letters, digits and / . _ - + @ : , ~ only"
    if value != "/" and value.endswith("/"):
        return f"{_DATA_DIR_FORM}, without a trailing '/'"
    parts = value[1:].split("/")
    if "" in parts and value != "/":
        return f"{_DATA_DIR_FORM}, without '//'"
    if ".." in parts or "." in parts:
        return f"{_DATA_DIR_FORM}, without '.' or '..' components"
    if value == "/" or len(parts) < 2:
        return f"{_DATA_DIR_FORM}; {value} would be chowned to postgres with mode 0700"
    if parts[0] in _SYSTEM_TOPS or value in _SYSTEM_DIRS or (parts[0] in ("usr", "home") and len(parts) == 2):
        return f"{_DATA_DIR_FORM}, not a system directory ({value} would be chowned to postgres with mode 0700)"
    return None


def _check_abs_path(value: str) -> str | None:
    if (problem := _check_text(value)):
        return problem
    if value == "" or value.startswith("/"):
        return None
    return "an absolute path on the hosts (or empty for the default)"


_PARAMETER_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")  # used with fullmatch: "$" would let a final newline in
# Parameters kbpg sets itself (or will), with where they come from. Matched case-insensitively, as PostgreSQL does.
OWNED_PARAMETERS: dict[str, str] = {
    "password_encryption": "kbpg stores SCRAM-SHA-256 verifiers",
    "wal_level": "replication and failover need 'replica'",
    "hot_standby": "replicas must answer read-only queries",
    "wal_log_hints": "pg_rewind needs it to bring an old primary back",
    "listen_addresses": "from network.bind",
    "port": "from ports.postgresql",
    "max_connections": "use postgresql.max_connections",
    "shared_buffers": "use postgresql.shared_buffers",
    "data_directory": "use postgresql.data_dir",
    "hba_file": "Patroni writes pg_hba.conf",
    "ident_file": "Patroni manages the configuration files",
    "config_file": "Patroni manages the configuration files",
    "external_pid_file": "Patroni manages the server process",
    "unix_socket_directories": "Patroni and kbpg's local connections rely on /var/run/postgresql",
    "archive_mode": "kbpg will own archiving with backups",
    "archive_command": "kbpg will own archiving with backups",
    "restore_command": "kbpg will own archiving with backups",
    "primary_conninfo": "Patroni manages replication",
    "primary_slot_name": "Patroni manages replication",
    "synchronous_standby_names": "use patroni.synchronous_mode",
}
_INCLUDE_DIRECTIVES = ("include", "include_dir", "include_if_exists")


def parameter_problem(name: str, value: str) -> str | None:
    """Why ``name = value`` may not go into postgresql.parameters, or None."""
    if not _PARAMETER_NAME_RE.fullmatch(name):
        return f"parameter names match ^[A-Za-z_][A-Za-z0-9_.]*$ (got {_show(name)})"
    lowered = name.lower()
    if lowered in _INCLUDE_DIRECTIVES:
        return "an include directive, not a parameter: set each parameter here instead"
    if lowered in OWNED_PARAMETERS:
        return f"set by kbpg ({OWNED_PARAMETERS[lowered]})"
    if lowered.startswith("ssl"):
        return "set by kbpg (TLS: [tls] in kbpg.toml)"
    if lowered.startswith("recovery_target") or lowered == "promote_trigger_file":
        return "set by kbpg (Patroni manages recovery)"
    if (char := _control_char(value)):
        return f"a value without control characters (found {char})"
    return None


_URL_FORBIDDEN = set("\"'`<>\\#")
_APT_WORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/+~-]*")
_FINGERPRINT_RE = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")


def _check_url(value: str) -> str | None:
    if value == "":
        return None
    form = "an http:// or https:// URL without spaces, quotes or '#', e.g. https://apt.example.com/debian"
    if _control_char(value) or any(c.isspace() or c in _URL_FORBIDDEN for c in value):
        return form
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        return form
    if parts.scheme not in ("http", "https") or not host:
        return form
    return None


def _check_apt_word(value: str) -> str | None:
    if value == "" or _APT_WORD_RE.fullmatch(value):
        return None
    return "one word of letters, digits and . _ / + ~ - (starting with a letter or digit), e.g. bookworm-pgdg"


def _check_components(value: list) -> str | None:
    bad = [item for item in value if not _APT_WORD_RE.fullmatch(item)]
    if bad:
        return f"words of letters, digits and . _ / + ~ - (starting with a letter or digit), e.g. main; not {_show(bad[0])}"
    return None


def pinned_key_problem(address: str, fingerprint: str) -> str | None:
    """Why ``address = fingerprint`` is not a host key pin, or None."""
    if _check_ip(address):
        return "pinned host keys are keyed by IP address (the servers.tsv IP_PRIVEE), e.g. \"10.0.0.120\""
    if not _FINGERPRINT_RE.fullmatch(fingerprint) or _canonical_b64(fingerprint[7:]) is None:
        return (f"must be \"SHA256:\" and 43 base64 characters, as OpenSSH prints it "
                f"(ssh-keygen -lf on the host key file) (got {_show(fingerprint)})")
    return None


def _canonical_b64(text: str) -> bytes | None:
    try:
        raw = base64.b64decode(text + "=", validate=True)
    except ValueError:
        return None
    return raw if len(raw) == 32 and base64.b64encode(raw).decode().rstrip("=") == text else None


def _check_networks(value: list) -> str | None:
    for item in value:
        if _check_network(item):
            return f"a list of networks in CIDR form, e.g. [\"10.0.1.0/24\"]; {_show(item)} is not one"
    return None


WIDE_IPV4_PREFIX, WIDE_IPV6_PREFIX = 16, 64


def _wide(network: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The network if it is wider than a /16 (IPv4) or a /64 (IPv6), else None."""
    try:
        parsed = ipaddress.ip_network(network, strict=False)
    except ValueError:
        return None
    limit = WIDE_IPV4_PREFIX if parsed.version == 4 else WIDE_IPV6_PREFIX
    return parsed if parsed.prefixlen < limit else None


def _check_rule(value: dict) -> str | None:
    for column, wanted in value.items():
        if (char := _control_char(wanted)):
            return f"column = value pairs without control characters ({column}: found {char})"
    unknown = [column for column in value if column not in COLUMNS]
    if unknown:
        return f"columns of servers.tsv ({', '.join(COLUMNS)}); unknown: {', '.join(unknown)}"
    if not value:
        return "at least one column = value pair"
    return None


SYNCHRONOUS_MODES = ("off", "on", "quorum")
LEGACY_TIMING_PLANS = {"standard": "norm"}  # renamed plans: an older kbpg.toml's name -> today's


def _upgrade_timing_plan(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, str) and value in LEGACY_TIMING_PLANS:
        new = LEGACY_TIMING_PLANS[value]
        return new, (f"the {value!r} timing plan is now called {new!r} (the same timing); read as {new!r}, "
                     f"and saving kbpg.toml writes {new!r}")
    return value, None


def _upgrade_synchronous_mode(value: Any) -> tuple[Any, str | None]:
    """Older kbpg.toml files wrote synchronous_mode as true/false."""
    if isinstance(value, bool):
        return ("on" if value else "off"), None
    return value, None


@dataclass
class InventorySettings:
    path: str = _opt("servers.tsv", check=_check_text, doc="servers.tsv, relative to the work directory")
    db_rule: dict[str, str] = _opt(factory=lambda: dict(DEFAULT_DB_RULE), check=_check_rule)
    haproxy_rule: dict[str, str] = _opt(factory=lambda: dict(DEFAULT_HAPROXY_RULE), check=_check_rule)
    backup_rule: dict[str, str] = _opt(factory=lambda: dict(DEFAULT_BACKUP_RULE), check=_check_rule,
                                       doc="the backup host (pgBackRest's repository): 0 or 1 row; none: no backups")


@dataclass
class PostgresqlSettings:
    version: int = _opt(16, choices=SUPPORTED_PG_VERSIONS)
    data_dir: str = _opt("", check=_check_data_dir, doc="empty: /var/lib/postgresql/<version>/patroni")
    max_connections: int = _opt(200, min=20, max=10000)
    shared_buffers: str = _opt("256MB", check=_check_size)
    parameters: dict[str, str] = _opt(factory=dict, items=parameter_problem,
                                      doc="extra postgresql.conf parameters, as strings; not those kbpg sets")

    @property
    def effective_data_dir(self) -> str:
        return self.data_dir or f"/var/lib/postgresql/{self.version}/patroni"


@dataclass
class PackageSettings:
    source: str = _opt("pgdg", choices=("pgdg", "distro", "custom"))
    url: str = _opt("", check=_check_url, doc="custom: repository URL (http or https)")
    suite: str = _opt("", check=_check_apt_word, doc="custom: suite (distribution)")
    components: list[str] = _opt(factory=lambda: ["main"], check=_check_components)
    key_file: str = _opt("", check=_check_text, doc="custom: the repository's signing key, a local file")


@dataclass
class PortSettings:
    postgresql: int = _opt(5432, min=1, max=65535)
    haproxy_write: int = _opt(5432, min=1, max=65535)
    haproxy_read: int = _opt(5433, min=1, max=65535)
    pgbouncer: int = _opt(6432, min=1, max=65535)
    patroni_rest: int = _opt(8008, min=1, max=65535)
    raft: int = _opt(7000, min=1, max=65535)
    haproxy_stats: int = _opt(8404, min=1, max=65535)


@dataclass
class NetworkSettings:
    lb_address: str = _opt("10.0.0.10", check=_check_ip)
    private_subnet: str = _opt("10.0.0.0/16", check=_check_network,
                               doc="clients allowed by pg_hba; wider than /16 needs a confirmation")
    direct_clients: list[str] = _opt(factory=list, check=_check_networks,
                                     doc="clients allowed to connect to the DB nodes directly besides the "
                                         "HAProxy and DB nodes (CIDRs)")
    bind: str = _opt("private", choices=("private", "all"), doc="listen on the private address, or 0.0.0.0")


@dataclass
class PatroniSettings:
    dcs: str = _opt("raft", choices=("raft",))
    timing_plan: str = _opt("norm", choices=(*TIMING_PLANS, "custom"), upgrade=_upgrade_timing_plan,
                            doc="Patroni's ttl/loop_wait/retry_timeout, HAProxy's checks and PgBouncer's login "
                                "retry, chosen together: fast fails over soonest, safe rides out the longest "
                                "network stalls; custom: ttl, loop_wait and retry_timeout from kbpg.toml")
    ttl: int = _opt(30, min=20, max=3600, doc="custom plan only (Patroni raises a ttl under 20 to 20)")
    loop_wait: int = _opt(10, min=1, max=600, doc="custom plan only")
    retry_timeout: int = _opt(10, min=3, max=600, doc="custom plan only (Patroni raises a smaller one to 3)")
    maximum_lag_on_failover: int = _opt(1048576, min=0)
    synchronous_mode: str = _opt("off", choices=SYNCHRONOUS_MODES, upgrade=_upgrade_synchronous_mode,
                                 doc="off: asynchronous (a failover may lose the last commits); on: one synchronous "
                                     "standby confirms each commit; quorum: any one of the standbys does (Patroni 4). "
                                     "Applied live, no restart")
    synchronous_mode_strict: bool = _opt(False, doc="with on/quorum: writes wait while no synchronous standby is "
                                                    "there, rather than go on unprotected")
    apply_pending_restarts: bool = _opt(False, doc="restart members a changed parameter waits for: replicas first, "
                                               "leader last (a few seconds without writes); false: only report them")
    raft_watchdog: bool = _opt(True, doc="a watchdog on each DB node restarts Patroni when its Raft (DCS) stops "
                                         "answering for 30 s (a known upstream fault after a crash and quick "
                                         "restart), at most once in 10 minutes; false: none (check 3 still names it)")


@dataclass
class PgbouncerSettings:
    pool_mode: str = _opt("transaction", choices=("transaction", "session", "statement"))
    default_pool_size: int = _opt(0, min=0, max=10000, doc="0: derived from max_connections and the PgBouncer count")
    max_client_conn: int = _opt(2000, min=10, max=100000)
    backend: str = _opt("local", choices=("local", "lb"), doc="local HAProxy (127.0.0.1) or through the LB")


@dataclass
class TlsSettings:
    enabled: bool = _opt(True, doc="TLS on every hop with kbpg's own CA (credentials/tls/): PostgreSQL, replication, "
                                    "PgBouncer, Patroni's REST API, HAProxy's checks and stats; turning it on for a "
                                    "running cluster is a rolling change (re-run kbpg install)")
    cert_days: int = _opt(365, min=30, max=3650, doc="validity of the node certificates kbpg issues")
    renew_days: int = _opt(30, min=1, max=365, doc="kbpg install (or kbpg tls renew) reissues a node certificate "
                                                   "expiring within this many days; diagnostics warn from then on")


# systemd OnCalendar expressions ("Sun *-*-* 01:00:00", "Mon..Sat *-*-* 01:00:00", "daily"); systemd-analyze calendar
# on the backup host judges the rest. They go into unit files: no ';', quote, '#', '%', control character or newline.
_CALENDAR_RE = re.compile(r"[A-Za-z0-9*:.,/~-][A-Za-z0-9*:.,/~ -]{0,63}")
_CALENDAR_FORM = ("a systemd OnCalendar expression of at most 64 characters among letters, digits, spaces and "
                  "* : . , / ~ -, e.g. \"Sun *-*-* 01:00:00\"")


def _check_calendar(value: str) -> str | None:
    if (char := _control_char(value)):
        return f"{_CALENDAR_FORM} (found the control character {char})"
    if not _CALENDAR_RE.fullmatch(value) or value.endswith(" "):
        return _CALENDAR_FORM
    return None


# pgBackRest's size options (powers of 1024); archive-push-queue-max bounds.
_SIZE_UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
               "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
MIN_QUEUE_BYTES, MAX_QUEUE_BYTES = 64 << 20, 64 << 40
_QUEUE_RE = re.compile(r"([1-9][0-9]{0,8})(KiB|MiB|GiB|TiB|KB|MB|GB|TB)")


def pgbackrest_size_bytes(value: str) -> int | None:
    """Bytes of a pgBackRest size such as "4GiB" (pgBackRest reads KB/MB/GB/TB as powers of 1024 too), or None."""
    match = _QUEUE_RE.fullmatch(value)
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)] if match else None


def _check_queue_max(value: str) -> str | None:
    size = pgbackrest_size_bytes(value)
    if size is None or not MIN_QUEUE_BYTES <= size <= MAX_QUEUE_BYTES:
        return "a size from 64MiB to 64TiB: a number and one of KiB, MiB, GiB, TiB (powers of 1024), e.g. \"4GiB\""
    return None


@dataclass
class BackupSettings:
    enabled: bool = _opt(True, doc="with a backup host selected ([inventory.backup_rule]): pgBackRest backups and WAL "
                                   "archiving; false: none (step 06 skipped, archiving neutralised)")
    full_schedule: str = _opt("Sun *-*-* 01:00:00", check=_check_calendar,
                              doc="full backups: systemd OnCalendar (checked on the host by systemd-analyze calendar)")
    diff_schedule: str = _opt("Mon..Sat *-*-* 01:00:00", check=_check_calendar,
                              doc="differential backups: systemd OnCalendar")
    retention_full: int = _opt(2, min=1, max=99, doc="full backups kept (repo1-retention-full)")
    retention_diff: int = _opt(6, min=1, max=99, doc="differential backups kept (repo1-retention-diff)")
    archive_timeout: int = _opt(30, min=5, max=300, doc="seconds: PostgreSQL's archive_timeout, the RPO under light "
                                                        "load")
    archive_push_queue_max: str = _opt("4GiB", check=_check_queue_max,
                                       doc="WAL a DB node keeps for an unreachable repository before pgBackRest drops "
                                           "it (protects pg_wal; a drop breaks point-in-time recovery until the next "
                                           "backup)")
    process_max: int = _opt(2, min=1, max=16, doc="pgBackRest processes for a backup and for archive-push")
    warn_backup_age_hours: int = _opt(26, min=8, max=2400, doc="diagnostics warn when the newest backup is older")
    warn_archive_lag_seconds: int = _opt(120, min=30, max=86400,
                                         doc="diagnostics warn when the newest archived WAL is older")
    drill_timeout: int = _opt(3600, min=300, max=86400, doc="seconds a restore drill may run (its unit's "
                                                            "RuntimeMaxSec)")


@dataclass
class SshSettings:
    known_hosts: str = _opt("known_hosts", check=_check_text, doc="kbpg's own known_hosts, relative to the work directory")
    key_file: str = _opt("", check=_check_text, doc="private key; empty: the SSH agent and ~/.ssh defaults")
    connect_timeout: int = _opt(10, min=1, max=300)
    command_timeout: int = _opt(900, min=10, max=86400)
    silence_timeout: int = _opt(120, min=30, max=3600, doc="a host that answers nothing for this long fails its "
                                                           "task; shown as not answering after 30 s")
    pinned_host_keys: dict[str, str] = _opt(factory=dict, items=pinned_key_problem,
                                            doc="address = \"SHA256:...\" accepted without asking")


@dataclass
class Settings:
    inventory: InventorySettings = field(default_factory=InventorySettings)
    postgresql: PostgresqlSettings = field(default_factory=PostgresqlSettings)
    packages: PackageSettings = field(default_factory=PackageSettings)
    ports: PortSettings = field(default_factory=PortSettings)
    network: NetworkSettings = field(default_factory=NetworkSettings)
    patroni: PatroniSettings = field(default_factory=PatroniSettings)
    pgbouncer: PgbouncerSettings = field(default_factory=PgbouncerSettings)
    ssh: SshSettings = field(default_factory=SshSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    backup: BackupSettings = field(default_factory=BackupSettings)

    def __post_init__(self) -> None:
        self.notes: list[str] = []  # what reading an older kbpg.toml changed (not written back): settings_notes


class SettingsError(Exception):
    """kbpg.toml is invalid; ``errors`` holds one line per problem, each naming its key."""

    def __init__(self, source: str, errors: list[str]):
        self.source = source
        self.errors = errors
        super().__init__("\n".join(f"{source}: {error}" for error in errors))


def _type_name(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin is dict:
        return "a table of strings"
    if origin is list:
        return "a list of strings"
    return {int: "an integer", str: "a string", bool: "true or false"}.get(kind, str(kind))


def _coerce(kind: Any, value: Any) -> tuple[Any, str | None]:
    """Return (value, None) if ``value`` has type ``kind``, else (None, what was expected)."""
    origin = typing.get_origin(kind)
    if origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, (str, int, float, bool)) for k, v in value.items()):
            return {k: v if isinstance(v, str) else _toml_scalar(v) for k, v in value.items()}, None
        return None, _type_name(kind)
    if origin is list:
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return list(value), None
        return None, _type_name(kind)
    if kind is bool:
        return (value, None) if isinstance(value, bool) else (None, _type_name(kind))
    if kind is int:
        return (value, None) if isinstance(value, int) and not isinstance(value, bool) else (None, _type_name(kind))
    if kind is str:
        return (value, None) if isinstance(value, str) else (None, _type_name(kind))
    return None, _type_name(kind)


def _toml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _load_section(cls: type, data: Any, prefix: str, errors: list[str], notes: list[str] | None = None) -> Any:
    if not isinstance(data, dict):
        errors.append(f"{prefix}: must be a table ([{prefix}])")
        return cls()
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            errors.append(f"{prefix}.{_key(key)}: unknown key; allowed keys in [{prefix}]: {', '.join(known)}")
    values = {}
    for name, spec in known.items():
        if name not in data:
            continue
        key = f"{prefix}.{name}"
        meta = spec.metadata
        raw = data[name]
        if meta.get("upgrade"):
            raw, note = meta["upgrade"](raw)
            if note and notes is not None:
                notes.append(f"{key}: {note}")
        value, expected = _coerce(hints[name], raw)
        if expected:
            errors.append(f"{key}: must be {expected} (got {_show(data[name])})")
            continue
        if meta.get("choices") and value not in meta["choices"]:
            allowed = ", ".join(repr(choice) if isinstance(choice, str) else str(choice) for choice in meta["choices"])
            errors.append(f"{key}: must be one of {allowed} (got {_show(value)})")
            continue
        if meta.get("min") is not None and value < meta["min"]:
            errors.append(f"{key}: must be at least {meta['min']} (got {value})")
            continue
        if meta.get("max") is not None and value > meta["max"]:
            errors.append(f"{key}: must be at most {meta['max']} (got {value})")
            continue
        if meta.get("check") and (expected_form := meta["check"](value)):
            errors.append(f"{key}: must be {expected_form} (got {_show(value)})")
            continue
        if meta.get("items"):
            problems = [(item, problem) for item, item_value in value.items()
                        if (problem := meta["items"](item, item_value))]
            for item, problem in problems:
                errors.append(f"{key}.{_key(item)}: {problem}")
            if problems:
                continue
        values[name] = value
    return cls(**values)


MAX_ERRORS = 100  # a file full of junk gets a readable answer, not thousands of lines


def from_dict(data: dict, source: str = "kbpg.toml") -> Settings:
    """Build validated settings from parsed TOML; raises :class:`SettingsError` listing every problem."""
    errors: list[str] = []
    sections = {f.name: f for f in dataclasses.fields(Settings)}
    for key in data:
        if key not in sections:
            errors.append(f"{_key(key)}: unknown section; allowed sections: {', '.join(sections)}")
    built = {}
    notes: list[str] = []
    for name, spec in sections.items():
        section_cls = typing.cast(type, spec.default_factory)  # each section's default factory is its class
        built[name] = _load_section(section_cls, data.get(name, {}), name, errors, notes)
    settings = Settings(**built)
    settings.notes = notes
    _cross_checks(settings, data.get("patroni", {}) if isinstance(data.get("patroni"), dict) else {}, errors)
    if len(errors) > MAX_ERRORS:
        errors[MAX_ERRORS:] = [f"... and {len(errors) - MAX_ERRORS} more problem(s)"]
    if errors:
        raise SettingsError(source, errors)
    return settings


def _cross_checks(settings: Settings, raw_patroni: dict, errors: list[str]) -> None:
    patroni = settings.patroni
    if patroni.timing_plan != "custom":
        plan = TIMING_PLANS[patroni.timing_plan]
        for key in PATRONI_KEYS:
            planned = getattr(plan, key)
            if key in raw_patroni and raw_patroni[key] != planned:
                errors.append(
                    f"patroni.{key}: the {patroni.timing_plan!r} timing plan sets {planned}; "
                    f"set patroni.timing_plan = \"custom\" to choose it by hand"
                )
            setattr(patroni, key, planned)
    if patroni.loop_wait + 2 * patroni.retry_timeout > patroni.ttl:
        errors.append(
            f"patroni.ttl: loop_wait + 2*retry_timeout must be <= ttl "
            f"({patroni.loop_wait} + 2*{patroni.retry_timeout} > {patroni.ttl})"
        )
    if patroni.synchronous_mode_strict and patroni.synchronous_mode == "off":
        errors.append("patroni.synchronous_mode_strict: true needs patroni.synchronous_mode = \"on\" or \"quorum\" "
                      "(with \"off\" no standby is synchronous); set it to false, or choose a synchronous mode")
    if settings.tls.renew_days >= settings.tls.cert_days:
        errors.append(f"tls.renew_days: must be less than tls.cert_days ({settings.tls.renew_days} >= "
                      f"{settings.tls.cert_days}): a certificate would be renewed by every kbpg install")
    ports = settings.ports
    # The write port shares 5432 with PostgreSQL by design: they live on different hosts.
    db_ports = {"ports.postgresql": ports.postgresql, "ports.patroni_rest": ports.patroni_rest, "ports.raft": ports.raft}
    proxy_ports = {
        "ports.haproxy_write": ports.haproxy_write,
        "ports.haproxy_read": ports.haproxy_read,
        "ports.pgbouncer": ports.pgbouncer,
        "ports.haproxy_stats": ports.haproxy_stats,
    }
    for group in (db_ports, proxy_ports):
        seen: dict[int, str] = {}
        for key, port in group.items():
            if port in seen:
                errors.append(f"{key}: port {port} is already used by {seen[port]} on the same hosts")
            seen[port] = key
    packages = settings.packages
    if packages.source == "custom":
        for key in ("url", "suite", "key_file", "components"):
            if not getattr(packages, key) and not any(error.startswith(f"packages.{key}:") for error in errors):
                errors.append(f"packages.{key}: required when packages.source = \"custom\"")
    backup = settings.backup
    errored = {error.split(":", 1)[0] for error in errors}
    if backup.full_schedule == backup.diff_schedule and not errored & {"backup.full_schedule", "backup.diff_schedule"}:
        errors.append(f"backup.diff_schedule: must differ from backup.full_schedule ({backup.diff_schedule!r}): both "
                      "timers would start at once and one backup would fail on pgBackRest's lock")
    if backup.warn_archive_lag_seconds <= backup.archive_timeout and not errored & {
            "backup.warn_archive_lag_seconds", "backup.archive_timeout"}:
        errors.append(f"backup.warn_archive_lag_seconds: must be more than backup.archive_timeout "
                      f"({backup.warn_archive_lag_seconds} <= {backup.archive_timeout}): a quiet cluster archives a WAL "
                      "segment only every archive_timeout seconds, so diagnostics would warn all the time")
    budget = settings.pgbouncer.default_pool_size
    if budget and budget >= settings.postgresql.max_connections:
        errors.append(
            f"pgbouncer.default_pool_size: must stay under postgresql.max_connections "
            f"({budget} >= {settings.postgresql.max_connections})"
        )


def settings_warnings(settings: Settings) -> list[str]:
    """Valid but risky choices the operator must confirm, one line each naming its key.

    ``kbpg install --yes`` refuses them unless ``--allow-wide-subnet``; an interactive install asks.
    """
    warnings = []
    network = settings.network
    for key, value in (("network.private_subnet", network.private_subnet),
                       *(("network.direct_clients", item) for item in network.direct_clients)):
        if (wide := _wide(value)) is not None:
            limit = WIDE_IPV4_PREFIX if wide.version == 4 else WIDE_IPV6_PREFIX
            warnings.append(f"{key}: {wide} is wider than /{limit}: pg_hba lets {wide.num_addresses:,} addresses "
                            f"connect to PostgreSQL with a password")
    return warnings


def settings_notes(settings: Settings) -> list[str]:
    """What reading an older kbpg.toml changed (a renamed value), one line each naming its key: nothing to
    confirm, the settings mean what they meant; saving kbpg.toml writes today's spelling."""
    return list(settings.notes)


def to_dict(settings: Settings) -> dict:
    """The TOML document for ``settings``; timing values are written only for the custom plan."""
    data = dataclasses.asdict(settings)
    if settings.patroni.timing_plan != "custom":
        for key in PATRONI_KEYS:
            data["patroni"].pop(key)
    return data


def load_settings(path: str | Path) -> Settings:
    """Read and validate kbpg.toml; raises :class:`SettingsError` (naming every bad key).

    A file that is not a small regular UTF-8 file (a directory, a FIFO, a device, over 1 MiB,
    other bytes) or TOML nested too deeply to parse is one error line, never a traceback.
    """
    path = Path(path)
    try:
        raw = read_input_file(path, MAX_INPUT_BYTES, "kbpg.toml answers file")
    except InputFileError as exc:
        raise SettingsError(str(path), [exc.reason]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SettingsError(str(path), [f"not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line})"]) from None
    try:
        data = tomllib.loads(text.removeprefix("\ufeff"))  # a BOM some editors add
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(str(path), [f"not valid TOML: {exc}"]) from None
    except RecursionError:
        raise SettingsError(str(path), ["not a kbpg.toml: arrays or tables nested too deeply to read"]) from None
    try:
        return from_dict(data, str(path))
    except RecursionError:
        raise SettingsError(str(path), ["not a kbpg.toml: values nested too deeply to check"]) from None


def save_settings(settings: Settings, path: str | Path) -> bool:
    """Write kbpg.toml atomically; returns False (and writes nothing) when the content is unchanged."""
    path = Path(path)
    header = "# kbpg answers file: replay with `kbpg install --answers kbpg.toml --yes`. No secrets here.\n"
    text = header + tomli_w.dumps(to_dict(settings))
    try:
        if read_input_file(path).decode("utf-8") == text:
            return False
    except (InputFileError, UnicodeDecodeError):
        pass
    atomic_write(path, text.encode("utf-8"), mode=0o644)
    return True
