"""The backup host's selection rule ([inventory.backup_rule]): 0 or 1 row, never a cluster node; `kbpg inventory`.

Nothing here connects anywhere: the company's file holds real addresses (backup-01 is 10.0.0.153).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kbpg_tui.core import inventory as inv

from .conftest import run_kbpg
from .test_inventory import line_number_of, lines_of, set_field


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _problems(path: Path, **rules) -> list[str]:
    with pytest.raises(inv.InventoryError) as caught:
        inv.load_selection(path, **rules)
    return [problem.render(caught.value.source) for problem in caught.value.errors]


def test_the_company_file_selects_backup_01_and_nothing_else(real_inventory: Path) -> None:
    selection = inv.load_selection(real_inventory)
    assert [(s.hostname, s.ip_private, s.line) for s in selection.backup_nodes] == [("backup-01", "10.0.0.153", 37)]
    # the rest of the file's backup-ish and storage rows stay unselected, and the cluster is unchanged
    assert {s.hostname for s in selection.every_node} == {"db-master-01", "db-slave-01", "db-slave-02", "haproxy-01",
                                                         "haproxy-02", "backup-01"}
    assert "backup-01" not in {s.hostname for s in selection.all_nodes}  # "all" stays the DB and HAProxy nodes
    assert selection.warnings == ()
    assert selection.to_dict()["backup_nodes"][0]["hostname"] == "backup-01"


def test_no_backup_host_is_not_an_error(real_inventory: Path, tmp_path: Path) -> None:
    lines = [line for line in lines_of(real_inventory) if "\tbackup-01\t" not in line]
    selection = inv.load_selection(_write(tmp_path / "servers.tsv", lines))
    assert selection.backup_nodes == () and len(selection.db_nodes) == 3 and selection.warnings == ()


def test_the_rule_is_matched_like_the_others_by_column_and_case(real_inventory: Path, tmp_path: Path) -> None:
    lines = lines_of(real_inventory)
    index = line_number_of(lines, "backup-01") - 1
    lines[index] = set_field(set_field(lines[index], "ROLE", "BACKUP"), "SUBROLE", " backup ")
    selection = inv.load_selection(_write(tmp_path / "servers.tsv", lines))
    assert [s.hostname for s in selection.backup_nodes] == ["backup-01"]
    staging = inv.load_selection(real_inventory, backup_rule={"ENV": "staging", "ROLE": "backup"})
    assert staging.backup_nodes == ()


def test_two_backup_hosts_are_an_error_naming_both_lines(real_inventory: Path, tmp_path: Path) -> None:
    lines = lines_of(real_inventory)
    twin = set_field(set_field(lines[line_number_of(lines, "backup-01") - 1], "HOSTNAME", "backup-02"),
                     "IP_PRIVEE", "10.0.0.154")
    lines.append(twin)
    path = _write(tmp_path / "servers.tsv", lines)
    problems = _problems(path)
    assert len(problems) == 1
    assert ("2 backup hosts match ENV=prod, ROLE=backup, SUBROLE=backup; at most 1" in problems[0]
            and f"backup-01 (line 37), backup-02 (line {len(lines)})" in problems[0]
            and "[inventory.backup_rule]" in problems[0])
    result = run_kbpg("inventory", str(path), workdir=tmp_path)
    assert result.returncode == 2 and "2 backup hosts match" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("role, rule", [("DB", "db_rule"), ("HAProxy", "haproxy_rule")])
def test_a_row_selected_as_backup_host_and_cluster_node_is_an_error(real_inventory: Path, role: str,
                                                                     rule: str) -> None:
    # a backup rule so wide that it also matches the cluster's rows
    problems = _problems(real_inventory, backup_rule={"ENV": "prod", "CORE": "yes"} if role == "DB" else None,
                         **({rule: {"ENV": "prod", "ROLE": "backup"}} if role == "HAProxy" else {}))
    overlap = [p for p in problems if f"matches both the backup rule and the {role} rule" in p]
    assert overlap, problems
    if role == "HAProxy":
        assert overlap[0].startswith(f"{real_inventory}:37: error:")  # backup-01, chosen by both rules


def test_the_db_overlap_names_each_db_row(real_inventory: Path) -> None:
    problems = _problems(real_inventory, backup_rule={"ROLE": "db", "SUBROLE": "postgres",
                                                      "DOCKER_STACK": "patroni-node"})
    overlap = [p for p in problems if "matches both the backup rule and the DB rule" in p]
    assert [p.split(": error")[0].rsplit(":", 1)[1] for p in overlap] == ["10", "11", "12"]


def test_the_backup_host_row_is_checked_like_a_cluster_node(real_inventory: Path, tmp_path: Path) -> None:
    lines = lines_of(real_inventory)
    index = line_number_of(lines, "backup-01") - 1
    bad = lines.copy()
    bad[index] = set_field(bad[index], "IP_PRIVEE", "10.0.0.120")  # db-master-01's address
    problems = _problems(_write(tmp_path / "dup.tsv", bad))
    assert any(":37: column IP_PRIVEE (4): error: 10.0.0.120 is already used on line 10" in p for p in problems), problems
    bad = lines.copy()
    bad[index] = set_field(bad[index], "USER_SSH", "Root Admin")
    problems = _problems(_write(tmp_path / "user.tsv", bad))
    assert any(":37: column USER_SSH (6): error:" in p for p in problems), problems
    bad = lines.copy()
    bad[index] = set_field(bad[index], "IP_PRIVEE", "fd00::153")
    problems = _problems(_write(tmp_path / "v6.tsv", bad))
    assert any(":37: column IP_PRIVEE (4): error: fd00::153 is IPv6" in p for p in problems), problems


def test_an_empty_or_unknown_backup_rule_is_refused(real_inventory: Path) -> None:
    assert any("the backup selection rule is empty" in p for p in _problems(real_inventory, backup_rule={}))
    assert any("the backup selection rule names an unknown column 'SERVER_ROLE'" in p
               for p in _problems(real_inventory, backup_rule={"SERVER_ROLE": "backup"}))


def test_cli_inventory_shows_the_backup_host(real_inventory: Path, tmp_path: Path) -> None:
    result = run_kbpg("inventory", str(real_inventory), workdir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "3 DB nodes, 2 HAProxy nodes, 1 backup host" in result.stdout
    assert "Backup host (ENV=prod, ROLE=backup, SUBROLE=backup):\n  backup-01        10.0.0.153" in result.stdout
    report = json.loads(run_kbpg("inventory", str(real_inventory), "--json", workdir=tmp_path).stdout)
    assert [(n["hostname"], n["ip_private"]) for n in report["backup_nodes"]] == [("backup-01", "10.0.0.153")]
    assert report["backups_enabled"] is True


def test_cli_inventory_says_when_there_is_no_backup_host_or_backups_are_off(real_inventory: Path,
                                                                           tmp_path: Path) -> None:
    (tmp_path / "kbpg.toml").write_text('[inventory.backup_rule]\nENV = "staging"\nROLE = "backup"\n')
    result = run_kbpg("inventory", str(real_inventory), workdir=tmp_path)
    assert result.returncode == 0 and "0 backup hosts" in result.stdout
    assert "Backup host (ENV=staging, ROLE=backup):\n  none: backups are not set up" in result.stdout
    (tmp_path / "kbpg.toml").write_text("[backup]\nenabled = false\n")
    result = run_kbpg("inventory", str(real_inventory), workdir=tmp_path)
    assert "backup-01" in result.stdout and "not used: backups are turned off in kbpg.toml" in result.stdout
    assert json.loads(run_kbpg("inventory", str(real_inventory), "--json", workdir=tmp_path).stdout)[
        "backups_enabled"] is False


def test_cli_inventory_uses_the_backup_rule_of_kbpg_toml(real_inventory: Path, tmp_path: Path) -> None:
    (tmp_path / "kbpg.toml").write_text('[inventory.backup_rule]\nROLE = "storage"\n')  # the three MinIO nodes
    result = run_kbpg("inventory", str(real_inventory), workdir=tmp_path)
    assert result.returncode == 2 and "3 backup hosts match ROLE=storage; at most 1" in result.stderr
    assert "minio-01 (line 23), minio-02 (line 24), minio-03 (line 25)" in result.stderr
