"""Diagnostics on the installed lab: all pass; each broken condition fails its check, naming the host."""

from __future__ import annotations

import json
import re
import time

import pytest

from kbpg_tui.core import credentials as creds
from kbpg_tui.core import install as inst
from kbpg_tui.core import lab
from kbpg_tui.core.diagnostics import CHECK_NAMES, Diagnostics
from kbpg_tui.core.settings import load_settings

from .conftest import DB_HOSTS, HAPROXY_HOSTS, Installed, kbpg, on_host, superuser_sql, wait_healthy

pytestmark = [pytest.mark.lab, pytest.mark.e2e]


def diagnose(installed: Installed, *extra: str) -> tuple[int, dict]:
    result = kbpg(installed.workdir, "diagnose", "--json", *extra, timeout=180)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def failures(report: dict) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for result in report["results"]:
        if result["verdict"] == "fail":
            found.setdefault(result["number"], []).append(result["reason"])
    return found


def test_all_checks_pass_on_the_fresh_cluster(installed: Installed) -> None:
    code, report = diagnose(installed)
    assert code == 0, failures(report)
    numbers = {r["number"] for r in report["results"]}
    assert numbers == set(CHECK_NAMES)  # every check ran
    assert all(r["verdict"] in ("pass", "warn") for r in report["results"])
    assert list((installed.workdir / "reports").glob("diagnostics-*.md"))


def test_stopped_pgbouncer_fails_naming_the_host(installed: Installed) -> None:
    host = HAPROXY_HOSTS[0]
    on_host(installed.workdir, host.address, "systemctl stop pgbouncer")
    try:
        code, report = diagnose(installed)
        failed = failures(report)
        assert code == 1
        assert any(host.name in reason and "pgbouncer" in reason for reason in failed.get(3, []))
        assert any(reason.startswith(host.name) for reason in failed.get(8, []))
    finally:
        on_host(installed.workdir, host.address, "systemctl start pgbouncer")


def test_stopped_patroni_on_a_replica_fails_naming_it(installed: Installed) -> None:
    members = wait_healthy(installed.workdir)
    replica = next(m["Member"] for m in members if m["Role"] == "Replica")
    host = next(h for h in DB_HOSTS if h.name == replica)
    on_host(installed.workdir, host.address, "systemctl stop patroni")
    try:
        code, report = diagnose(installed)
        failed = failures(report)
        assert code == 1
        assert any(replica in reason for reason in failed.get(3, []))
        assert any(replica in reason for reason in failed.get(4, []))
    finally:
        on_host(installed.workdir, host.address, "systemctl start patroni")
        wait_healthy(installed.workdir)


def test_app_password_changed_in_the_database_only(installed: Installed) -> None:
    values = installed.credentials
    # As the superuser on the leader itself: it is refused through the LB.
    superuser_sql(installed.workdir, f"ALTER ROLE {values['POSTGRES_APP_USER']} PASSWORD "
                                     f"'{creds.scram_sha256_verifier('drifted')}';")
    try:
        code, report = diagnose(installed)
        failed = failures(report)
        assert code == 1
        assert 8 in failed and 6 in failed
    finally:
        result = kbpg(installed.workdir, "install", "--yes")  # restores the verifier and PgBouncer's copy
        assert result.returncode == 0, result.stdout


def test_dropped_pgvector_fails_check_10(installed: Installed) -> None:
    values = installed.credentials
    superuser_sql(installed.workdir, "DROP EXTENSION vector CASCADE;", database=values["POSTGRES_DB"])
    try:
        code, report = diagnose(installed)
        assert code == 1
        assert any("vector extension is not" in reason for reason in failures(report).get(10, []))
    finally:
        result = kbpg(installed.workdir, "install", "--yes", "--step", "05")
        assert result.returncode == 0 and "created vector" in result.stdout


def test_world_readable_secret_fails_check_12(installed: Installed) -> None:
    host = DB_HOSTS[1]
    on_host(installed.workdir, host.address, "chmod 0644 /etc/patroni/config.yml")
    try:
        code, report = diagnose(installed)
        assert code == 1
        assert any(host.name in reason and "/etc/patroni/config.yml" in reason for reason in failures(report).get(12, []))
    finally:
        on_host(installed.workdir, host.address, "chmod 0600 /etc/patroni/config.yml")


def test_a_host_cut_off_mid_run_fails_within_the_timeout(installed: Installed) -> None:
    host = HAPROXY_HOSTS[1]
    lab.set_host_link(host.name, up=False)
    try:
        started = time.monotonic()
        code, report = diagnose(installed, "--timeout", "3")
        elapsed = time.monotonic() - started
        failed = failures(report)
        assert code == 1
        assert any(host.name in reason for reason in failed.get(2, []))
        # The others finish: checks on the other HAProxy node still pass.
        other = HAPROXY_HOSTS[0].name
        assert any(r["verdict"] == "pass" and r["target"] == other for r in report["results"] if r["number"] == 3)
        assert elapsed < 3 * 3 + 5 + 15, f"took {elapsed:.1f} s"
    finally:
        lab.set_host_link(host.name, up=True)
    # With the link back, HAProxy's health checks bring the servers back by themselves within seconds.
    deadline = time.monotonic() + 60
    while True:
        code, report = diagnose(installed)
        if code == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert code == 0, failures(report)


def test_inventory_that_no_longer_selects_the_cluster_fails_check_1(installed: Installed) -> None:
    path = installed.workdir / "servers.tsv"
    original = path.read_text()
    run = inst.prepare(installed.workdir, load_settings(installed.workdir / "kbpg.toml"), lambda event: None)
    path.write_text(original.replace("\tpatroni-node\t", "\tpatroni-nod\t", 1))  # someone edits the inventory
    try:
        report = Diagnostics(run.ctx).run(only={1})
        cli = kbpg(installed.workdir, "diagnose", "--json")
    finally:
        run.close()
        path.write_text(original)
    assert report.failed
    assert "2 DB nodes match" in report.results[0].reason
    assert cli.returncode == 2 and "2 DB nodes match" in cli.stderr  # the CLI refuses to probe a wrong selection


def test_running_config_breaking_the_timing_rule_fails_check_5(installed: Installed) -> None:
    host = DB_HOSTS[0]
    code, out, err = on_host(installed.workdir, host.address,
                             "patronictl -c /etc/patroni/config.yml edit-config --force -s ttl=12 -s retry_timeout=5 -s loop_wait=5")
    assert code == 0, out + err
    try:
        deadline = time.monotonic() + 30  # the REST API serves the new DCS content after the next loop
        while True:
            code, report = diagnose(installed)
            timing = next(r for r in report["results"] if r["number"] == 5)
            # Until every node's Patroni has taken the edit, a reading may still show the plan's own timing, or
            # warn about a timing between the two: only the failure, or the deadline, ends the wait.
            if timing["verdict"] == "fail" or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert code == 1
        assert timing["verdict"] == "fail" and "(5 + 2*5 > 12)" in timing["reason"], timing
    finally:
        result = kbpg(installed.workdir, "install", "--yes", "--step", "02")  # the dynamic config task puts it back
        assert result.returncode == 0 and re.search(r"dynamic config\s+changed", result.stdout), result.stdout


def _break_haproxy(installed: Installed, host, sed: str) -> None:
    code, out, err = on_host(installed.workdir, host.address,
                             f"sed -i '{sed}' /etc/haproxy/haproxy.cfg && haproxy -c -q -f /etc/haproxy/haproxy.cfg && systemctl reload haproxy")
    assert code == 0, out + err
    time.sleep(6)  # health checks settle (inter 2s, rise 2)


def _restore(installed: Installed) -> None:
    result = kbpg(installed.workdir, "install", "--yes", "--step", "03")
    assert result.returncode == 0 and "reloaded" in result.stdout, result.stdout


def test_read_port_leading_to_the_primary_fails_check_7(installed: Installed) -> None:
    host = HAPROXY_HOSTS[0]
    _break_haproxy(installed, host, "s#OPTIONS /replica#OPTIONS /primary#")
    try:
        code, report = diagnose(installed)
        assert code == 1
        assert any(reason.startswith(f"{host.name} ") and "not a replica" in reason for reason in failures(report).get(7, []))
    finally:
        _restore(installed)


def test_a_tcp_checked_write_backend_fails_check_11(installed: Installed) -> None:
    host = HAPROXY_HOSTS[1]
    # The field failure: a plain TCP check marks every node UP, so writes can reach a replica.
    _break_haproxy(installed, host, "/listen postgres_write/,/^$/{/option httpchk/d;/http-check expect/d}")
    try:
        code, report = diagnose(installed)
        assert code == 1
        assert any(host.name in reason and "3 servers UP in the write backend" in reason for reason in failures(report).get(11, []))
    finally:
        _restore(installed)


def test_a_missing_role_fails_check_9(installed: Installed) -> None:
    # SCRAM secrets survive a rename (MD5 ones would not)
    superuser_sql(installed.workdir, "ALTER ROLE kb_repl RENAME TO kb_repl_gone;")
    try:
        code, report = diagnose(installed)
        assert code == 1
        assert any("missing: kb_repl" in reason for reason in failures(report).get(9, []))
    finally:
        superuser_sql(installed.workdir, "ALTER ROLE kb_repl_gone RENAME TO kb_repl;")
    code, report = diagnose(installed)
    assert code == 0, failures(report)
