"""Diagnostics on the installed lab: all pass; each broken condition fails its check, naming the host."""

from __future__ import annotations

import json
import time

import psycopg
import pytest

from kbpg_tui.core import credentials as creds
from kbpg_tui.core import lab

from .conftest import DB_HOSTS, HAPROXY_HOSTS, LB, Installed, kbpg, on_host, wait_healthy

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
    assert numbers == set(range(1, 13))
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
    admin = dict(host=LB.address, port=5432, user=values["POSTGRES_SUPERUSER"], password=values["POSTGRES_SUPERPASS"],
                 dbname="postgres", connect_timeout=10, autocommit=True)
    with psycopg.connect(**admin) as conn:
        conn.execute(f"ALTER ROLE {values['POSTGRES_APP_USER']} PASSWORD '{creds.scram_sha256_verifier('drifted')}'")
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
    with psycopg.connect(host=LB.address, port=5432, user=values["POSTGRES_SUPERUSER"], password=values["POSTGRES_SUPERPASS"],
                         dbname=values["POSTGRES_DB"], connect_timeout=10, autocommit=True) as conn:
        conn.execute("DROP EXTENSION vector CASCADE")
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
