"""servers.tsv parsing and node selection, on the company's real file and broken variants of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from kbpg_tui.core import inventory as inv

from .conftest import run_kbpg

EXPECTED_DB = [("db-master-01", "10.0.0.120"), ("db-slave-01", "10.0.0.121"), ("db-slave-02", "10.0.0.122")]
EXPECTED_HAPROXY = [("haproxy-01", "10.0.0.11"), ("haproxy-02", "10.0.0.12")]


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def line_number_of(lines: list[str], hostname: str) -> int:
    return next(i for i, line in enumerate(lines, start=1) if f"\t{hostname}\t" in line)


def set_field(line: str, column: str, value: str) -> str:
    fields = line.split("\t")
    fields[inv.COLUMNS.index(column)] = value
    return "\t".join(fields)


def test_real_inventory_selects_exactly_the_cluster(real_inventory: Path) -> None:
    selection = inv.load_selection(real_inventory)
    assert [(s.hostname, s.ip_private) for s in selection.db_nodes] == EXPECTED_DB
    assert [(s.hostname, s.ip_private) for s in selection.haproxy_nodes] == EXPECTED_HAPROXY
    chosen = {s.hostname for s in selection.all_nodes}
    for decoy in ("temporal-db-01", "analytics-db-01", "maria-01", "maria-02", "maria-03",
                  "proxysql-01", "proxysql-02", "api-gateway-01"):
        assert decoy not in chosen
    assert selection.warnings == ()
    # French notes with accents survive intact.
    assert "réplica" in selection.db_nodes[1].notes


def test_cli_inventory_json_on_real_file(real_inventory: Path) -> None:
    result = run_kbpg("inventory", str(real_inventory), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [(n["hostname"], n["ip_private"]) for n in report["db_nodes"]] == EXPECTED_DB
    assert [(n["hostname"], n["ip_private"]) for n in report["haproxy_nodes"]] == EXPECTED_HAPROXY


def test_tolerates_bom_crlf_comments_blank_lines_and_trailing_spaces(real_inventory: Path, tmp_path: Path) -> None:
    lines = lines_of(real_inventory)
    messy = ["# KeyBuzz inventory, exported by hand", ""]
    for index, line in enumerate(lines):
        messy.append(line + ("   " if index % 2 else ""))
        if index % 7 == 3:
            messy += ["", "   # a comment between rows", "\t"]
    path = tmp_path / "servers.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(messy).encode("utf-8") + b"\r\n\r\n")
    selection = inv.load_selection(path)
    assert [(s.hostname, s.ip_private) for s in selection.db_nodes] == EXPECTED_DB
    assert [(s.hostname, s.ip_private) for s in selection.haproxy_nodes] == EXPECTED_HAPROXY
    assert selection.db_nodes[0].notes.endswith('(conteneur docker "patroni")')


def test_columns_are_read_by_name_not_position(real_inventory: Path, tmp_path: Path) -> None:
    rows = [line.split("\t") for line in lines_of(real_inventory) if line.strip()]
    order = list(reversed(range(len(inv.COLUMNS))))
    path = tmp_path / "servers.tsv"
    path.write_text("\n".join("\t".join(row[i] for i in order) for row in rows) + "\n", encoding="utf-8")
    selection = inv.load_selection(path)
    assert [(s.hostname, s.ip_private) for s in selection.db_nodes] == EXPECTED_DB


def test_empty_trailing_fields_are_read_as_empty(real_inventory: Path, tmp_path: Path) -> None:
    lines = lines_of(real_inventory)
    lines = [line.rsplit("\t", 1)[0] if "db-slave-01" in line else line for line in lines]  # NOTES dropped
    path = tmp_path / "servers.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    selection = inv.load_selection(path)
    assert selection.db_nodes[1].notes == ""


def test_one_haproxy_node_is_a_warning_not_an_error(real_inventory: Path, tmp_path: Path) -> None:
    lines = [line for line in lines_of(real_inventory) if "haproxy-02" not in line]
    path = tmp_path / "servers.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_kbpg("inventory", str(path))
    assert result.returncode == 0
    assert "only 1 HAProxy node" in result.stderr


def test_five_db_nodes_are_allowed(real_inventory: Path, tmp_path: Path) -> None:
    lines = lines_of(real_inventory)
    db = lines[line_number_of(lines, "db-slave-02") - 1]
    extra = [
        set_field(set_field(db, "HOSTNAME", f"db-slave-0{n}"), "IP_PRIVEE", f"10.0.0.{190 + n}") for n in (3, 4)
    ]
    path = tmp_path / "servers.tsv"
    path.write_text("\n".join(lines + extra) + "\n", encoding="utf-8")
    assert len(inv.load_selection(path).db_nodes) == 5


def test_selection_rules_are_configurable(real_inventory: Path) -> None:
    # The temporal DB by its own stack: one node, so the Raft rule refuses it with a clear count.
    with pytest.raises(inv.InventoryError) as caught:
        inv.load_selection(real_inventory, db_rule={"ROLE": "db", "DOCKER_STACK": "temporal-db-docker"})
    assert "1 DB nodes match" in str(caught.value)
    assert "temporal-db-01" in str(caught.value)


# --- broken inventories: each one exit 2, line and column named, no traceback -------------

Mutation = Callable[[list[str]], "list[str] | bytes"]


def _replace_line(hostname: str, column: str, value: str) -> Mutation:
    def mutate(lines: list[str]) -> list[str]:
        number = line_number_of(lines, hostname)
        lines[number - 1] = set_field(lines[number - 1], column, value)
        return lines
    return mutate


def _drop_header_column(column: str) -> Mutation:
    def mutate(lines: list[str]) -> list[str]:
        index = inv.COLUMNS.index(column)
        return ["\t".join(f for i, f in enumerate(line.split("\t")) if i != index) for line in lines]
    return mutate


def _without(*hostnames: str) -> Mutation:
    return lambda lines: [line for line in lines if not any(f"\t{h}\t" in line for h in hostnames)]


def _with_extra_db(lines: list[str]) -> list[str]:
    db = lines[line_number_of(lines, "db-slave-02") - 1]
    return lines + [set_field(set_field(db, "HOSTNAME", "db-slave-03"), "IP_PRIVEE", "10.0.0.199")]


def _binary(lines: list[str]) -> bytes:
    return bytes(range(256)) * 8


def _latin1(lines: list[str]) -> bytes:
    text = "\n".join(lines) + "\n"
    return text.encode("utf-8").replace("réplica".encode("utf-8"), "réplica".encode("latin-1"))


def _spaces(lines: list[str]) -> list[str]:
    return [line.replace("\t", "    ") for line in lines]


def _tab_in_value(lines: list[str]) -> list[str]:
    number = line_number_of(lines, "db-slave-01")
    lines[number - 1] += "\textra\tjunk"
    return lines


def _short_row(keep: int, hostname: str = "db-slave-01") -> Mutation:
    def mutate(lines: list[str]) -> list[str]:
        number = line_number_of(lines, hostname)
        lines[number - 1] = "\t".join(lines[number - 1].split("\t")[:keep])
        return lines
    return mutate


def _spaces_in_one_row(lines: list[str]) -> list[str]:
    number = line_number_of(lines, "maria-02")  # a row kbpg does not even select
    lines[number - 1] = lines[number - 1].replace("\t", "  ", 3)
    return lines


def _header_control(lines: list[str]) -> list[str]:
    lines[0] = lines[0].replace("FQDN", "FQ\x1bDN")
    return lines


def _duplicate_header_column(lines: list[str]) -> list[str]:
    lines[0] = lines[0] + "\tHOSTNAME"
    return lines


BROKEN: dict[str, tuple[Mutation, str | None, str | None, str]] = {
    # name: (mutation, hostname whose line is expected or "header"/None, column, text in the message)
    "missing column": (_drop_header_column("IP_PRIVEE"), "header", "IP_PRIVEE", "missing column"),
    "missing selection column": (_drop_header_column("SUBROLE"), "header", "SUBROLE", "missing column"),
    "bad private IP": (_replace_line("db-slave-01", "IP_PRIVEE", "10.0.0.300"), "db-slave-01", "IP_PRIVEE", "not a valid IP"),
    "bad public IP": (_replace_line("haproxy-02", "IP_PUBLIQUE", "91.98.164"), "haproxy-02", "IP_PUBLIQUE", "not a valid IP"),
    "empty private IP": (_replace_line("db-master-01", "IP_PRIVEE", ""), "db-master-01", "IP_PRIVEE", "empty address"),
    "loopback IP": (_replace_line("db-slave-02", "IP_PRIVEE", "127.0.0.1"), "db-slave-02", "IP_PRIVEE", "cannot be a server"),
    "IPv6 private IP": (_replace_line("db-slave-02", "IP_PRIVEE", "fd00::122"), "db-slave-02", "IP_PRIVEE", "is IPv6"),
    "duplicate private IP": (_replace_line("db-slave-02", "IP_PRIVEE", "10.0.0.121"), "db-slave-02", "IP_PRIVEE", "already used on line"),
    "duplicate private IP with a decoy": (_replace_line("maria-01", "IP_PRIVEE", "10.0.0.11"), "maria-01", "IP_PRIVEE", "already used on line"),
    "duplicate hostname": (_replace_line("db-slave-02", "HOSTNAME", "db-slave-01"), "db-slave-02", "HOSTNAME", "already used on line"),
    "bad hostname": (_replace_line("haproxy-01", "HOSTNAME", "haproxy_01!"), None, "HOSTNAME", "not a valid host name"),
    "empty SSH user": (_replace_line("haproxy-01", "USER_SSH", ""), "haproxy-01", "USER_SSH", "empty SSH user"),
    "bad SSH user": (_replace_line("db-master-01", "USER_SSH", "root admin"), "db-master-01", "USER_SSH", "not a valid user name"),
    "2 DB nodes": (_without("db-slave-02"), None, None, "2 DB nodes match"),
    "4 DB nodes": (_with_extra_db, None, None, "4 DB nodes match"),
    "no DB node": (_without("db-master-01", "db-slave-01", "db-slave-02"), None, None, "0 DB nodes match"),
    "no HAProxy node": (_without("haproxy-01", "haproxy-02"), None, None, "no HAProxy node matches"),
    "empty file": (lambda lines: b"", None, None, "the file is empty"),
    "only blank lines": (lambda lines: b"\n\n  \r\n\n", None, None, "the file is empty"),
    "only comments": (lambda lines: ["# nothing here", "# still nothing"], None, None, "no header line"),
    "header only": (lambda lines: lines[:1], None, None, "0 DB nodes match"),
    "binary junk": (_binary, None, None, "not UTF-8 text"),
    "latin-1 text": (_latin1, "db-slave-01", None, "not UTF-8 text"),
    "spaces instead of tabs": (_spaces, "header", None, "tab-separated"),
    "tab inside a value": (_tab_in_value, "db-slave-01", None, "header has 12"),
    "duplicate header column": (_duplicate_header_column, "header", "HOSTNAME", "appears twice"),
    "short row": (_short_row(8), "db-slave-01", None,
                  "8 tab-separated fields but the header has 12: no SUBROLE, DOCKER_STACK, CORE "),
    "row without CORE and NOTES": (_short_row(10), "db-slave-01", None,
                                   "10 tab-separated fields but the header has 12: no CORE "),
    "short unselected row": (_short_row(4, "maria-01"), "maria-01", None,
                             "4 tab-separated fields but the header has 12"),
    "spaces instead of tabs in one row": (_spaces_in_one_row, "maria-02", None, "spaces instead of a tab?"),
    "escape character": (_replace_line("maria-01", "HOSTNAME", "maria\x1b[31m-01"), "maria-01", "HOSTNAME",
                         "control character U+001B (control character) in the value"),
    "line separator": (_replace_line("db-slave-01", "NOTES", "réplica\u2028second line"), "db-slave-01", "NOTES",
                       "control character U+2028 (LINE SEPARATOR) in the value"),
    "paragraph separator": (_replace_line("haproxy-01", "FQDN", "haproxy-01\u2029.example"), "haproxy-01", "FQDN",
                            "control character U+2029 (PARAGRAPH SEPARATOR)"),
    "next line (U+0085)": (_replace_line("db-master-01", "IP_PRIVEE", "10.0.0.120\x85"), "db-master-01", "IP_PRIVEE",
                           "control character U+0085"),
    "carriage return inside a line": (_replace_line("db-slave-02", "USER_SSH", "ro\rot"), "db-slave-02", "USER_SSH",
                                      "control character U+000D"),
    "DEL": (_replace_line("haproxy-02", "POOL", "pool\x7f"), "haproxy-02", "POOL", "control character U+007F"),
    "vertical tab at the end of a value": (_replace_line("db-slave-02", "ENV", "prod\x0b"), "db-slave-02", "ENV",
                                           "control character U+000B"),
    "control character in the header": (_header_control, "header", None,
                                        "control character U+001B (control character) in header field 5"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_inventory_is_refused_clearly(case: str, real_inventory: Path, tmp_path: Path) -> None:
    mutate, located_on, column, message = BROKEN[case]
    lines = lines_of(real_inventory)
    original = list(lines)
    content = mutate(list(lines))
    path = tmp_path / "servers.tsv"
    path.write_bytes(content if isinstance(content, bytes) else ("\n".join(content) + "\n").encode("utf-8"))

    result = run_kbpg("inventory", str(path))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert message in result.stderr
    assert "nothing selected" in result.stderr
    if located_on == "header":
        assert f"{path}:1:" in result.stderr
    elif located_on:
        assert f"{path}:{line_number_of(original, located_on)}:" in result.stderr
    if column:
        assert f"column {column} ({inv.COLUMNS.index(column) + 1})" in result.stderr


def test_only_notes_may_be_left_out_at_the_end_of_a_row(real_inventory: Path, tmp_path: Path) -> None:
    lines = lines_of(real_inventory)
    number = line_number_of(lines, "db-slave-01")
    lines[number - 1] = lines[number - 1].rsplit("\t", 1)[0]  # NOTES left out: fine
    path = tmp_path / "servers.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert inv.load_selection(path).db_nodes[1].notes == ""
    lines[number - 1] = lines[number - 1].rsplit("\t", 1)[0]  # CORE too: refused, naming the line and CORE
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    problems = inv.parse_file(path).problems
    assert [(p.line, p.severity) for p in problems] == [(number, "error")]
    assert "no CORE (only NOTES may be left out" in problems[0].message


def test_extra_empty_fields_and_extra_header_columns_are_accepted(real_inventory: Path, tmp_path: Path) -> None:
    lines = lines_of(real_inventory)
    lines[0] += "\tRACK"  # a column kbpg does not read, that some rows leave out
    lines = [line + ("\tr1" if "haproxy" in line else "") for line in lines]
    number = line_number_of(lines, "db-slave-02")
    lines[number - 1] += "\t\t \t"  # empty fields past the header: stray tabs, nothing lost
    path = tmp_path / "servers.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    selection = inv.load_selection(path)
    assert [(s.hostname, s.ip_private) for s in selection.db_nodes] == EXPECTED_DB
    assert [(s.hostname, s.ip_private) for s in selection.haproxy_nodes] == EXPECTED_HAPROXY


def test_the_real_inventory_has_no_problem_at_all(real_inventory: Path) -> None:
    inventory = inv.parse_file(real_inventory)
    assert inventory.problems == []
    assert len(inventory.servers) == 48
    assert all(len(line.split("\t")) == 12 for line in lines_of(real_inventory) if line.strip())


def test_control_characters_in_comment_lines_are_ignored(real_inventory: Path, tmp_path: Path) -> None:
    lines = lines_of(real_inventory)
    lines.insert(1, "# exported \x1b[1mby hand\x1b[0m\u2028")
    path = tmp_path / "servers.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert len(inv.load_selection(path).db_nodes) == 3


def test_every_problem_is_reported_not_just_the_first(real_inventory: Path, tmp_path: Path) -> None:
    lines = lines_of(real_inventory)
    lines = _replace_line("db-slave-01", "IP_PRIVEE", "999.1.1.1")(lines)
    lines = _replace_line("haproxy-02", "USER_SSH", "")(lines)
    lines = _replace_line("db-slave-02", "HOSTNAME", "db-master-01")(lines)
    path = tmp_path / "servers.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_kbpg("inventory", str(path), "--json")
    assert result.returncode == 2
    report = json.loads(result.stdout)
    columns = {problem["column"] for problem in report["problems"] if problem["severity"] == "error"}
    assert {"IP_PRIVEE", "USER_SSH", "HOSTNAME"} <= columns


def test_missing_file_is_bad_input(tmp_path: Path) -> None:
    result = run_kbpg("inventory", str(tmp_path / "nope.tsv"))
    assert result.returncode == 2
    assert "file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_inventory_path_and_rules_come_from_kbpg_toml(real_inventory: Path, tmp_path: Path) -> None:
    (tmp_path / "kbpg.toml").write_text(
        f'[inventory]\npath = "{real_inventory}"\n'
        '[inventory.haproxy_rule]\nENV = "prod"\nPOOL = "haproxy-pool"\nSUBROLE = "internal-haproxy"\n',
        encoding="utf-8",
    )
    result = run_kbpg("inventory", "--json", workdir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [n["hostname"] for n in json.loads(result.stdout)["haproxy_nodes"]] == ["haproxy-01", "haproxy-02"]
