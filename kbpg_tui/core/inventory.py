"""servers.tsv: the company's inventory, parsed by header, and the node selection.

The file is tab-separated with a header line and 12 columns. It is parsed by
column *name*, never by position, and tolerates a UTF-8 BOM, CRLF line ends,
blank lines, ``#`` comment lines and trailing spaces. Every other problem is
reported with its line number and column, all at once, never as a traceback.

Nodes are selected by rules on column values (``ENV=prod, ROLE=db, ...``),
never by hostname lists: the company renamed these hosts once already.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from .files import InputFileError, read_input_file

COLUMNS: tuple[str, ...] = (
    "ENV",
    "IP_PUBLIQUE",
    "HOSTNAME",
    "IP_PRIVEE",
    "FQDN",
    "USER_SSH",
    "POOL",
    "ROLE",
    "SUBROLE",
    "DOCKER_STACK",
    "CORE",
    "NOTES",
)

DEFAULT_DB_RULE: dict[str, str] = {"ENV": "prod", "ROLE": "db", "SUBROLE": "postgres", "DOCKER_STACK": "patroni-node"}
DEFAULT_HAPROXY_RULE: dict[str, str] = {"ENV": "prod", "ROLE": "lb", "SUBROLE": "internal-haproxy"}
# The backup host (pgBackRest's repository): 0 or 1 row; none selected means no backups, not an error.
DEFAULT_BACKUP_RULE: dict[str, str] = {"ENV": "prod", "ROLE": "backup", "SUBROLE": "backup"}
MAX_BACKUP_HOSTS = 1

# Columns a row may leave out at its end (editors that strip trailing whitespace drop an empty last field).
OPTIONAL_COLUMNS: tuple[str, ...] = ("NOTES",)

ALLOWED_DB_COUNTS = (3, 5)  # Raft needs an odd quorum; the seed runs 3
MAX_FILE_BYTES = 4 * 1024 * 1024

_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Problem:
    """One problem in the inventory, located by line (1-based) and column name."""

    line: int
    message: str
    column: str | None = None
    severity: str = "error"  # "error" | "warning"

    def render(self, source: str = "servers.tsv") -> str:
        where = f"{source}:{self.line}" if self.line else source
        if self.column:
            where += f": column {self.column}"
            if self.column in COLUMNS:
                where += f" ({COLUMNS.index(self.column) + 1})"
        return f"{where}: {self.severity}: {self.message}"


@dataclass(frozen=True)
class Server:
    """One row of servers.tsv."""

    line: int
    env: str
    ip_public: str
    hostname: str
    ip_private: str
    fqdn: str
    user_ssh: str
    pool: str
    role: str
    subrole: str
    docker_stack: str
    core: str
    notes: str

    def value(self, column: str) -> str:
        return getattr(self, _ATTRS[column])

    def to_dict(self) -> dict:
        return asdict(self)


_ATTRS = dict(
    zip(
        COLUMNS,
        (
            "env",
            "ip_public",
            "hostname",
            "ip_private",
            "fqdn",
            "user_ssh",
            "pool",
            "role",
            "subrole",
            "docker_stack",
            "core",
            "notes",
        ),
        strict=True,
    )
)


@dataclass
class Inventory:
    """Every row read from the file, and the problems found while reading it."""

    source: str
    servers: list[Server] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class Selection:
    """The nodes kbpg will install onto."""

    source: str
    db_nodes: tuple[Server, ...]
    haproxy_nodes: tuple[Server, ...]
    warnings: tuple[Problem, ...] = ()
    backup_nodes: tuple[Server, ...] = ()  # 0 or 1: the backup host (pgBackRest's repository)

    @property
    def all_nodes(self) -> tuple[Server, ...]:
        """The cluster's nodes: DB and HAProxy (the engine's "all" scope); not the backup host."""
        return self.db_nodes + self.haproxy_nodes

    @property
    def every_node(self) -> tuple[Server, ...]:
        """Every host kbpg connects to: the cluster's nodes and the backup host."""
        return self.db_nodes + self.haproxy_nodes + self.backup_nodes

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "db_nodes": [server.to_dict() for server in self.db_nodes],
            "haproxy_nodes": [server.to_dict() for server in self.haproxy_nodes],
            "backup_nodes": [server.to_dict() for server in self.backup_nodes],
            "warnings": [asdict(problem) for problem in self.warnings],
        }


class InventoryError(Exception):
    """The inventory cannot be used; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: Iterable[Problem]):
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(problem.render(source) for problem in self.problems))

    @property
    def errors(self) -> list[Problem]:
        return [problem for problem in self.problems if problem.severity == "error"]


def _decode(data: bytes) -> tuple[list[str], list[Problem]]:
    """Split raw bytes into text lines, reporting undecodable lines by number."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    problems: list[Problem] = []
    lines: list[str] = []
    # Split on \n only; a trailing \r (CRLF) is removed per line below.
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if b"\x00" in raw:
            problems.append(Problem(number, "binary data (NUL byte): this is not a text file"))
            lines.append("")
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(number, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at character {exc.start + 1})"))
            lines.append("")
            continue
        lines.append(text)  # control characters are reported with their column (_control_character)
    if lines and lines[-1] == "" and data.endswith(b"\n"):
        lines.pop()  # the final newline does not start a line
    return lines, problems


def _control_character(value: str) -> str | None:
    """The first control character, line or paragraph separator in ``value`` (code point and name), or None."""
    for char in value:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            return f"U+{ord(char):04X} ({unicodedata.name(char, 'control character')})"
    return None


def _skippable(text: str) -> bool:
    stripped = text.strip()
    return not stripped or stripped.startswith("#")


def parse_text(data: bytes | str, source: str = "servers.tsv") -> Inventory:
    """Parse servers.tsv content. Never raises: problems are collected in the result."""
    inventory = Inventory(source=source)
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not data.strip(b"\xef\xbb\xbf \t\r\n"):
        inventory.problems.append(Problem(1, "the file is empty: expected a tab-separated header line with columns " + ", ".join(COLUMNS)))
        return inventory
    lines, decode_problems = _decode(data)
    inventory.problems.extend(decode_problems)
    bad_lines = {problem.line for problem in decode_problems}

    header_line = next((i for i, text in enumerate(lines, start=1) if i not in bad_lines and not _skippable(text)), None)
    if header_line is None:
        if not decode_problems:
            inventory.problems.append(Problem(1, "no header line: only blank or comment lines"))
        return inventory
    raw_header = lines[header_line - 1].split("\t")
    for index, raw in enumerate(raw_header, start=1):
        if (bad := _control_character(raw)):
            inventory.problems.append(
                Problem(header_line, f"control character {bad} in header field {index}: only tabs separate columns")
            )
    header = [name.strip() for name in raw_header]
    positions: dict[str, int] = {}
    for index, name in enumerate(header):
        if not name:
            continue
        if name in positions:
            inventory.problems.append(Problem(header_line, f"column {name!r} appears twice in the header", column=name))
            continue
        positions[name] = index
    missing = [name for name in COLUMNS if name not in positions]
    if len(header) == 1 and len(missing) > 1:
        inventory.problems.append(Problem(header_line, "the header has no tab: servers.tsv must be tab-separated, not spaces or commas"))
        return inventory
    for name in missing:
        inventory.problems.append(Problem(header_line, "missing column in the header", column=name))
    if missing:
        return inventory

    for number in range(header_line + 1, len(lines) + 1):
        text = lines[number - 1]
        if number in bad_lines or _skippable(text):
            continue
        raw_fields = text.split("\t")
        row_problems = []
        for index, raw in enumerate(raw_fields):
            if (bad := _control_character(raw)):
                column = header[index] if index < len(header) and header[index] else None
                where = "" if column else f" (field {index + 1})"
                row_problems.append(Problem(number, f"control character {bad} in the value{where}: only tabs "
                                                    "separate columns, a value is one line of text", column=column))
        fields = [value.strip() for value in raw_fields]
        if len(fields) > len(header) and any(fields[len(header):]):
            row_problems.append(
                Problem(number, f"{len(fields)} tab-separated fields but the header has {len(header)}: a tab inside a value?")
            )
        missing = [name for name in header[len(fields):] if name in COLUMNS and name not in OPTIONAL_COLUMNS]
        if missing:
            row_problems.append(Problem(
                number,
                f"{len(fields)} tab-separated fields but the header has {len(header)}: no {', '.join(missing)} "
                f"(only {', '.join(OPTIONAL_COLUMNS)} may be left out at the end of a row); spaces instead of a tab?",
            ))
        if row_problems:
            inventory.problems.extend(row_problems)
            continue
        # Editors that strip trailing whitespace drop an empty last field (NOTES): read it as empty.
        fields += [""] * (len(header) - len(fields))
        values = {name: fields[positions[name]] for name in COLUMNS}
        inventory.servers.append(Server(number, *(values[name] for name in COLUMNS)))
    return inventory


def parse_file(path: str | Path) -> Inventory:
    """Read and parse a servers.tsv file. Never raises for bad content or a missing file."""
    path = Path(path)
    source = str(path)
    try:
        # A directory, FIFO, device or oversized file is refused without blocking or reading it all.
        data = read_input_file(path, MAX_FILE_BYTES, "servers.tsv file")
    except InputFileError as exc:
        return Inventory(source, problems=[Problem(0, exc.reason)])
    return parse_text(data, source)


def _matches(server: Server, rule: Mapping[str, str]) -> bool:
    return all(server.value(column).casefold() == wanted.strip().casefold() for column, wanted in rule.items())


def _check_rule(rule: Mapping[str, str], name: str) -> list[Problem]:
    problems = []
    if not rule:
        problems.append(Problem(0, f"the {name} selection rule is empty: it would select every row"))
    for column in rule:
        if column not in COLUMNS:
            problems.append(Problem(0, f"the {name} selection rule names an unknown column {column!r}; columns are {', '.join(COLUMNS)}"))
    return problems


def _check_server(server: Server) -> list[Problem]:
    """Problems of a row kbpg will connect to."""
    problems = []
    if not server.hostname:
        problems.append(Problem(server.line, "empty hostname", "HOSTNAME"))
    elif not _HOSTNAME_RE.match(server.hostname):
        problems.append(Problem(server.line, f"{server.hostname!r} is not a valid host name", "HOSTNAME"))
    problems += _check_ip(server, "IP_PRIVEE", required=True)
    problems += _check_ip(server, "IP_PUBLIQUE", required=False)
    if not server.user_ssh:
        problems.append(Problem(server.line, "empty SSH user: root, or a user with sudo", "USER_SSH"))
    elif not _USER_RE.match(server.user_ssh):
        problems.append(Problem(server.line, f"{server.user_ssh!r} is not a valid user name", "USER_SSH"))
    return problems


def _check_ip(server: Server, column: str, required: bool) -> list[Problem]:
    value = server.value(column)
    if not value:
        return [Problem(server.line, "empty address", column)] if required else []
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return [Problem(server.line, f"{value!r} is not a valid IP address", column)]
    if address.is_unspecified or address.is_multicast or address.is_loopback:
        return [Problem(server.line, f"{value} cannot be a server's address", column)]
    if column == "IP_PRIVEE" and address.version != 4:
        # Every config kbpg writes spells address:port and /32; an IPv6 address there would break them
        # (and "/32" on an IPv6 address in pg_hba would open a whole /32 network).
        return [Problem(server.line, f"{value} is IPv6; kbpg needs the node's private IPv4 address", column)]
    return []


def select(
    inventory: Inventory,
    db_rule: Mapping[str, str] | None = None,
    haproxy_rule: Mapping[str, str] | None = None,
    backup_rule: Mapping[str, str] | None = None,
) -> Selection:
    """Select the DB and HAProxy nodes and the backup host by rule, or raise :class:`InventoryError` with every
    problem. No backup host is not an error (no backups); two or more are, and so is a row that two rules select."""
    db_rule = DEFAULT_DB_RULE if db_rule is None else db_rule
    haproxy_rule = DEFAULT_HAPROXY_RULE if haproxy_rule is None else haproxy_rule
    backup_rule = DEFAULT_BACKUP_RULE if backup_rule is None else backup_rule
    problems = list(inventory.problems)
    problems += _check_rule(db_rule, "DB") + _check_rule(haproxy_rule, "HAProxy") + _check_rule(backup_rule, "backup")
    if any(problem.severity == "error" for problem in problems):
        # A file we could not read whole cannot be trusted for a selection.
        raise InventoryError(inventory.source, problems)

    db_nodes = tuple(server for server in inventory.servers if _matches(server, db_rule))
    haproxy_nodes = tuple(server for server in inventory.servers if _matches(server, haproxy_rule))
    both = {server.line for server in db_nodes} & {server.line for server in haproxy_nodes}
    for line in sorted(both):
        problems.append(Problem(line, "this row matches both the DB and the HAProxy rule"))
    backup_nodes = tuple(server for server in inventory.servers if _matches(server, backup_rule))
    for server in backup_nodes:
        for name, nodes in (("DB", db_nodes), ("HAProxy", haproxy_nodes)):
            if server.line in {node.line for node in nodes}:
                problems.append(Problem(server.line, f"this row matches both the backup rule and the {name} rule: the "
                                                     "backup host must be a server of its own (its backups must "
                                                     "outlive the cluster's nodes)"))

    cluster_lines = {server.line for server in db_nodes + haproxy_nodes}
    selected = db_nodes + haproxy_nodes + tuple(s for s in backup_nodes if s.line not in cluster_lines)
    for server in selected:
        problems += _check_server(server)
    problems += _duplicates(inventory.servers, {server.line for server in selected})

    db_rule_text = ", ".join(f"{k}={v}" for k, v in db_rule.items())
    haproxy_rule_text = ", ".join(f"{k}={v}" for k, v in haproxy_rule.items())
    if len(backup_nodes) > MAX_BACKUP_HOSTS:
        found = ", ".join(f"{s.hostname or '?'} (line {s.line})" for s in backup_nodes)
        problems.append(Problem(0, f"{len(backup_nodes)} backup hosts match {rule_text(backup_rule)}; at most "
                                   f"{MAX_BACKUP_HOSTS} (pgBackRest's repository): narrow [inventory.backup_rule]. "
                                   f"Found: {found}"))
    if len(db_nodes) not in ALLOWED_DB_COUNTS:
        found = ", ".join(f"{s.hostname or '?'} (line {s.line})" for s in db_nodes) or "none"
        problems.append(
            Problem(0, f"{len(db_nodes)} DB nodes match {db_rule_text}; Raft needs exactly 3 (or 5). Found: {found}")
        )
    if not haproxy_nodes:
        problems.append(Problem(0, f"no HAProxy node matches {haproxy_rule_text}; at least 1 is needed (2 recommended)"))
    elif len(haproxy_nodes) < 2:
        problems.append(
            Problem(0, f"only 1 HAProxy node matches {haproxy_rule_text}: the load balancer has no second path", severity="warning")
        )

    if any(problem.severity == "error" for problem in problems):
        raise InventoryError(inventory.source, problems)
    return Selection(inventory.source, db_nodes, haproxy_nodes, tuple(problems), backup_nodes)


def rule_text(rule: Mapping[str, str]) -> str:
    """A selection rule as the operator writes it: ENV=prod, ROLE=backup, SUBROLE=backup."""
    return ", ".join(f"{column}={value}" for column, value in rule.items())


def _duplicates(servers: list[Server], selected_lines: set[int]) -> list[Problem]:
    """Duplicate private IPs or hostnames: errors when a selected host is involved."""
    problems = []
    for column in ("IP_PRIVEE", "HOSTNAME"):
        first_seen: dict[str, Server] = {}
        for server in servers:
            value = server.value(column)
            if not value:
                continue
            key = value.casefold()
            if key not in first_seen:
                first_seen[key] = server
                continue
            other = first_seen[key]
            involved = server.line in selected_lines or other.line in selected_lines
            problems.append(
                Problem(
                    server.line,
                    f"{value} is already used on line {other.line} ({other.hostname})",
                    column,
                    "error" if involved else "warning",
                )
            )
    return problems


def load_selection(
    path: str | Path,
    db_rule: Mapping[str, str] | None = None,
    haproxy_rule: Mapping[str, str] | None = None,
    backup_rule: Mapping[str, str] | None = None,
) -> Selection:
    """Parse ``path`` and select the nodes; raises :class:`InventoryError`."""
    return select(parse_file(path), db_rule, haproxy_rule, backup_rule)
