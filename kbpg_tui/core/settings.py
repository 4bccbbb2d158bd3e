"""kbpg.toml: the answers file.

Every wizard screen maps to a section; the wizard writes it back and
``kbpg install --answers kbpg.toml --yes`` replays it. Read with ``tomllib``,
written with ``tomli-w``. It never holds a secret: the schema has no field for
one, and unknown keys are refused.

Validation errors name the key (``postgresql.version``) and the allowed values.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from .files import atomic_write
from .inventory import COLUMNS, DEFAULT_DB_RULE, DEFAULT_HAPROXY_RULE

SUPPORTED_PG_VERSIONS = (13, 14, 15, 16, 17)

# Patroni failover timing. Each plan keeps loop_wait + 2*retry_timeout <= ttl.
TIMING_PLANS: dict[str, dict[str, int]] = {
    "standard": {"ttl": 30, "loop_wait": 10, "retry_timeout": 10},
    "fast": {"ttl": 20, "loop_wait": 5, "retry_timeout": 5},
}


def _opt(default: Any = dataclasses.MISSING, *, choices: tuple | None = None, min: int | None = None,
         max: int | None = None, check: Any = None, doc: str = "", factory: Any = None) -> Any:
    """A dataclass field with its validation rules in metadata."""
    metadata = {"choices": choices, "min": min, "max": max, "check": check, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _check_ip(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "an IP address, e.g. 10.0.0.10"
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


def _check_abs_path(value: str) -> str | None:
    if value == "" or value.startswith("/"):
        return None
    return "an absolute path on the hosts (or empty for the default)"


def _check_rule(value: dict) -> str | None:
    unknown = [column for column in value if column not in COLUMNS]
    if unknown:
        return f"columns of servers.tsv ({', '.join(COLUMNS)}); unknown: {', '.join(unknown)}"
    if not value:
        return "at least one column = value pair"
    return None


@dataclass
class InventorySettings:
    path: str = _opt("servers.tsv", doc="servers.tsv, relative to the work directory")
    db_rule: dict[str, str] = _opt(factory=lambda: dict(DEFAULT_DB_RULE), check=_check_rule)
    haproxy_rule: dict[str, str] = _opt(factory=lambda: dict(DEFAULT_HAPROXY_RULE), check=_check_rule)


@dataclass
class PostgresqlSettings:
    version: int = _opt(16, choices=SUPPORTED_PG_VERSIONS)
    data_dir: str = _opt("", check=_check_abs_path, doc="empty: /var/lib/postgresql/<version>/patroni")
    max_connections: int = _opt(200, min=20, max=10000)
    shared_buffers: str = _opt("256MB", check=_check_size)
    parameters: dict[str, str] = _opt(factory=dict, doc="extra postgresql.conf parameters, as strings")

    @property
    def effective_data_dir(self) -> str:
        return self.data_dir or f"/var/lib/postgresql/{self.version}/patroni"


@dataclass
class PackageSettings:
    source: str = _opt("pgdg", choices=("pgdg", "distro", "custom"))
    url: str = _opt("", doc="custom: repository URL")
    suite: str = _opt("", doc="custom: suite (distribution)")
    components: list[str] = _opt(factory=lambda: ["main"])
    key_file: str = _opt("", doc="custom: the repository's signing key, a local file")


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
    private_subnet: str = _opt("10.0.0.0/16", check=_check_network, doc="clients allowed by pg_hba")
    bind: str = _opt("private", choices=("private", "all"), doc="listen on the private address, or 0.0.0.0")


@dataclass
class PatroniSettings:
    dcs: str = _opt("raft", choices=("raft",))
    timing_plan: str = _opt("standard", choices=("standard", "fast", "custom"))
    ttl: int = _opt(30, min=5, max=3600)
    loop_wait: int = _opt(10, min=1, max=600)
    retry_timeout: int = _opt(10, min=1, max=600)
    maximum_lag_on_failover: int = _opt(1048576, min=0)
    synchronous_mode: bool = _opt(False)
    apply_pending_restarts: bool = _opt(False, doc="restart members a changed parameter waits for: replicas first, "
                                               "leader last (a few seconds without writes); false: only report them")


@dataclass
class PgbouncerSettings:
    pool_mode: str = _opt("transaction", choices=("transaction", "session", "statement"))
    default_pool_size: int = _opt(0, min=0, max=10000, doc="0: derived from max_connections and the PgBouncer count")
    max_client_conn: int = _opt(2000, min=10, max=100000)
    backend: str = _opt("local", choices=("local", "lb"), doc="local HAProxy (127.0.0.1) or through the LB")


@dataclass
class SshSettings:
    known_hosts: str = _opt("known_hosts", doc="kbpg's own known_hosts, relative to the work directory")
    key_file: str = _opt("", doc="private key; empty: the SSH agent and ~/.ssh defaults")
    connect_timeout: int = _opt(10, min=1, max=300)
    command_timeout: int = _opt(900, min=10, max=86400)
    pinned_host_keys: dict[str, str] = _opt(factory=dict, doc="address = \"SHA256:...\" accepted without asking")


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


def _load_section(cls: type, data: Any, prefix: str, errors: list[str]) -> Any:
    if not isinstance(data, dict):
        errors.append(f"{prefix}: must be a table ([{prefix}])")
        return cls()
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            errors.append(f"{prefix}.{key}: unknown key; allowed keys in [{prefix}]: {', '.join(known)}")
    values = {}
    for name, spec in known.items():
        if name not in data:
            continue
        key = f"{prefix}.{name}"
        value, expected = _coerce(hints[name], data[name])
        if expected:
            errors.append(f"{key}: must be {expected} (got {data[name]!r})")
            continue
        meta = spec.metadata
        if meta.get("choices") and value not in meta["choices"]:
            allowed = ", ".join(repr(choice) if isinstance(choice, str) else str(choice) for choice in meta["choices"])
            errors.append(f"{key}: must be one of {allowed} (got {value!r})")
            continue
        if meta.get("min") is not None and value < meta["min"]:
            errors.append(f"{key}: must be at least {meta['min']} (got {value})")
            continue
        if meta.get("max") is not None and value > meta["max"]:
            errors.append(f"{key}: must be at most {meta['max']} (got {value})")
            continue
        if meta.get("check") and (expected_form := meta["check"](value)):
            errors.append(f"{key}: must be {expected_form} (got {value!r})")
            continue
        values[name] = value
    return cls(**values)


def from_dict(data: dict, source: str = "kbpg.toml") -> Settings:
    """Build validated settings from parsed TOML; raises :class:`SettingsError` listing every problem."""
    errors: list[str] = []
    sections = {f.name: f for f in dataclasses.fields(Settings)}
    for key in data:
        if key not in sections:
            errors.append(f"{key}: unknown section; allowed sections: {', '.join(sections)}")
    built = {}
    for name, spec in sections.items():
        section_cls = spec.default_factory  # type: ignore[misc]
        built[name] = _load_section(section_cls, data.get(name, {}), name, errors)
    settings = Settings(**built)
    _cross_checks(settings, data.get("patroni", {}) if isinstance(data.get("patroni"), dict) else {}, errors)
    if errors:
        raise SettingsError(source, errors)
    return settings


def _cross_checks(settings: Settings, raw_patroni: dict, errors: list[str]) -> None:
    patroni = settings.patroni
    if patroni.timing_plan != "custom":
        plan = TIMING_PLANS[patroni.timing_plan]
        for key, planned in plan.items():
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
        for key in ("url", "suite", "key_file"):
            if not getattr(packages, key):
                errors.append(f"packages.{key}: required when packages.source = \"custom\"")
    budget = settings.pgbouncer.default_pool_size
    if budget and budget >= settings.postgresql.max_connections:
        errors.append(
            f"pgbouncer.default_pool_size: must stay under postgresql.max_connections "
            f"({budget} >= {settings.postgresql.max_connections})"
        )


def to_dict(settings: Settings) -> dict:
    """The TOML document for ``settings``; timing values are written only for the custom plan."""
    data = dataclasses.asdict(settings)
    if settings.patroni.timing_plan != "custom":
        for key in TIMING_PLANS["standard"]:
            data["patroni"].pop(key)
    return data


def load_settings(path: str | Path) -> Settings:
    """Read and validate kbpg.toml; raises :class:`SettingsError` (naming every bad key)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError(str(path), ["file not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(str(path), [f"not valid TOML: {exc}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(str(path), [f"cannot read: {exc}"]) from None
    return from_dict(data, str(path))


def save_settings(settings: Settings, path: str | Path) -> bool:
    """Write kbpg.toml atomically; returns False (and writes nothing) when the content is unchanged."""
    path = Path(path)
    header = "# kbpg answers file: replay with `kbpg install --answers kbpg.toml --yes`. No secrets here.\n"
    text = header + tomli_w.dumps(to_dict(settings))
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    atomic_write(path, text.encode("utf-8"), mode=0o644)
    return True
