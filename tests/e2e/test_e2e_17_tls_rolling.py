"""TLS turned on for a cluster that runs without it, and certificates renewed, both under writers, on the lab.

The session's cluster is installed with TLS (the default). Here it is first taken back to plaintext (`[tls] enabled =
false`, re-run), then writers start on the LB's pooled and direct write ports, as applications that keep their
connection and reconnect after a failure (libpq's default sslmode=prefer), and `[tls] enabled = true` is re-run:
a rolling change, no failover (same leader, same timeline), the writers' failed writes counted (goal: 0) and
diagnostics green after. Then `kbpg tls renew --all` under the same kind of writers: every node serves a new
certificate and no connection is dropped.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from kbpg_tui.core import settings as cfg
from kbpg_tui.core import tls

from .conftest import DB_HOSTS, HAPROXY_HOSTS, LB, Installed, kbpg, leader_and_timeline, own_writer_table
from .test_e2e_15_drill import OwnWriter

pytestmark = [pytest.mark.lab, pytest.mark.e2e]

PORTS = (6432, 5432)


@pytest.fixture(scope="module", autouse=True)
def own_table(installed: Installed) -> None:
    own_writer_table(installed)


def set_tls(installed: Installed, enabled: bool) -> None:
    path = installed.workdir / "kbpg.toml"
    settings = cfg.load_settings(path)
    settings.tls.enabled = enabled
    cfg.save_settings(settings, path)




def under_writers(installed: Installed, *command: str) -> tuple[object, dict[int, OwnWriter]]:
    writers = {port: OwnWriter(installed, port) for port in PORTS}
    for writer in writers.values():
        writer.start()
    time.sleep(3)
    try:
        result = kbpg(installed.workdir, *command)
        time.sleep(3)
    finally:
        for writer in writers.values():
            writer.finish()
    for port, writer in writers.items():
        print(f"  LB:{port}: {len(writer.acks)} writes acknowledged, {len(writer.failures)} failed "
              f"{sorted(set(writer.failures))[:3]}, longest stall {writer.longest_stall():.3f} s")
    return result, writers


def plaintext_login(installed: Installed, port: int) -> str | None:
    """None when a login without TLS through the LB works, else the server's refusal."""
    values = installed.credentials
    try:
        with psycopg.connect(host=LB.address, port=port, user=values["POSTGRES_APP_USER"],
                             password=values["POSTGRES_APP_PASS"], dbname=values["POSTGRES_DB"], sslmode="disable",
                             connect_timeout=10, prepare_threshold=None) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        return str(exc)
    return None


def test_tls_turned_on_for_a_running_cluster_is_rolling_with_no_failover_and_no_failed_write(installed: Installed) -> None:
    set_tls(installed, False)
    try:
        result = kbpg(installed.workdir, "install", "--yes")
        assert result.returncode == 0, result.stdout + result.stderr
        assert plaintext_login(installed, 6432) is None and plaintext_login(installed, 5432) is None
        before = leader_and_timeline(installed)
    finally:
        set_tls(installed, True)
    print("\nTLS turned on under writers:")
    result, writers = under_writers(installed, "install", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert leader_and_timeline(installed) == before, "turning TLS on caused a failover"
    for port, writer in writers.items():
        assert writer.failures == [], f"LB:{port}: {len(writer.failures)} failed writes: {sorted(set(writer.failures))}"
    for port in (5432, 5433, 6432):
        refusal = plaintext_login(installed, port)
        assert refusal is not None, f"LB:{port} still takes a login without TLS"
    diagnose = kbpg(installed.workdir, "diagnose", "--json")
    assert diagnose.returncode == 0, diagnose.stdout[-3000:] + diagnose.stderr


def served_fingerprints(installed: Installed) -> dict[str, str]:
    ca = tls.ca_path(installed.workdir)
    seen = {h.name: tls.pg_tls_probe(h.address, 5432, ca, h.address).fingerprint for h in DB_HOSTS}
    seen |= {f"{h.name}:6432": tls.pg_tls_probe(h.address, 6432, ca, h.address).fingerprint for h in HAPROXY_HOSTS}
    seen |= {f"{h.name}:8008": tls.tls_probe(h.address, 8008, ca, h.address).fingerprint for h in DB_HOSTS}
    return seen


def test_renewal_under_writers_serves_new_certificates_and_drops_no_connection(installed: Installed) -> None:
    before = served_fingerprints(installed)
    print("\nkbpg tls renew --all under writers:")
    result, writers = under_writers(installed, "tls", "renew", "--all", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    for port, writer in writers.items():
        assert writer.failures == [], f"LB:{port}: {len(writer.failures)} failed writes: {sorted(set(writer.failures))}"
    after = served_fingerprints(installed)
    same = [where for where in before if before[where] == after[where]]
    assert not same, f"still serving the old certificate: {same}"
    diagnose = kbpg(installed.workdir, "diagnose", "--json")
    assert diagnose.returncode == 0, diagnose.stdout[-3000:] + diagnose.stderr
