"""A settings change on a running cluster: applied through Patroni and by reloading PgBouncer (same process),
without a failover."""

from __future__ import annotations

import re

import psycopg
import pytest

from kbpg_tui.core import settings as cfg

from .conftest import HAPROXY_HOSTS, LB, Installed, kbpg, on_host, wait_healthy

pytestmark = [pytest.mark.lab, pytest.mark.e2e]


def test_changed_settings_reach_the_cluster_without_a_failover(installed: Installed) -> None:
    values = installed.credentials
    before = wait_healthy(installed.workdir)
    leader = next(m for m in before if m["Role"] == "Leader")
    path = installed.workdir / "kbpg.toml"
    original = path.read_text()
    settings = cfg.load_settings(path)
    settings.postgresql.parameters = {**settings.postgresql.parameters, "work_mem": "3MB"}
    settings.pgbouncer.max_client_conn = settings.pgbouncer.max_client_conn + 11
    cfg.save_settings(settings, path)
    pids_before = {h.name: on_host(installed.workdir, h.address, "systemctl show -p MainPID --value pgbouncer")[1].strip()
                   for h in HAPROXY_HOSTS}
    try:
        result = kbpg(installed.workdir, "install", "--yes")
        assert result.returncode == 0, result.stdout
        assert re.search(r"02 cluster\s+dynamic config\s+changed", result.stdout)
        assert re.search(r"04 haproxy-0\d\s+config\s+changed .*reloaded", result.stdout)
        pids_after = {h.name: on_host(installed.workdir, h.address, "systemctl show -p MainPID --value pgbouncer")[1].strip()
                      for h in HAPROXY_HOSTS}
        assert pids_after == pids_before, "PgBouncer was restarted (clients dropped) instead of reloaded"
        with psycopg.connect(host=LB.address, port=5432, user=values["POSTGRES_APP_USER"], password=values["POSTGRES_APP_PASS"],
                             dbname=values["POSTGRES_DB"], connect_timeout=10) as conn:
            assert conn.execute("SHOW work_mem").fetchone()[0] == "3MB"
        with psycopg.connect(host=LB.address, port=6432, user=values["POSTGRES_APP_USER"], password=values["POSTGRES_APP_PASS"],
                             dbname=values["POSTGRES_DB"], connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone()[0] == 1
        after = wait_healthy(installed.workdir)
        now_leader = next(m for m in after if m["Role"] == "Leader")
        assert (now_leader["Member"], now_leader["TL"]) == (leader["Member"], leader["TL"]), "a needless failover"
    finally:
        path.write_text(original)
        assert kbpg(installed.workdir, "install", "--yes").returncode == 0


def test_a_parameter_needing_a_restart_is_reported_then_applied_replicas_first(installed: Installed) -> None:
    values = installed.credentials
    path = installed.workdir / "kbpg.toml"
    original = path.read_text()
    settings = cfg.load_settings(path)
    settings.postgresql.shared_buffers = "48MB"
    cfg.save_settings(settings, path)

    def shared_buffers() -> str:
        with psycopg.connect(host=LB.address, port=5432, user=values["POSTGRES_APP_USER"], password=values["POSTGRES_APP_PASS"],
                             dbname=values["POSTGRES_DB"], connect_timeout=10) as conn:
            return conn.execute("SHOW shared_buffers").fetchone()[0]

    before = wait_healthy(installed.workdir)
    leader = next(m for m in before if m["Role"] == "Leader")
    try:
        reported = kbpg(installed.workdir, "install", "--yes")
        assert reported.returncode == 0, reported.stdout
        assert "warning: restart pending on" in reported.stdout and "apply_pending_restarts" in reported.stdout
        assert shared_buffers() != "48MB"  # only reported: nothing restarted behind the operator's back

        settings.patroni.apply_pending_restarts = True
        cfg.save_settings(settings, path)
        applied = kbpg(installed.workdir, "install", "--yes")
        assert applied.returncode == 0, applied.stdout
        line = re.search(r"02 cluster\s+restarts\s+changed .*restarted (.+) one at a time", applied.stdout)
        assert line, applied.stdout
        order = [name.strip() for name in line.group(1).split(",")]
        assert order[-1] == leader["Member"] and len(order) == 3  # the leader last
        assert shared_buffers() == "48MB"
        after = wait_healthy(installed.workdir)
        now_leader = next(m for m in after if m["Role"] == "Leader")
        assert (now_leader["Member"], now_leader["TL"]) == (leader["Member"], leader["TL"]), "a needless failover"
    finally:
        path.write_text(original)
        restore = cfg.load_settings(path)
        restore.patroni.apply_pending_restarts = True  # put the old shared_buffers back, restarting as needed
        cfg.save_settings(restore, path)
        assert kbpg(installed.workdir, "install", "--yes").returncode == 0
        path.write_text(original)
