"""Failover on the lab: a switchover and a stopped leader, with writes through the LB following the primary."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from .conftest import DB_HOSTS, LB, Installed, on_host, patroni_members, wait_healthy

pytestmark = [pytest.mark.lab, pytest.mark.e2e]


class WriteProbe(threading.Thread):
    """Writes through one LB port every 0.1 s; records when writes were refused."""

    def __init__(self, installed: Installed, port: int):
        super().__init__(daemon=True)
        self.values = installed.credentials
        self.port = port
        self.stop = threading.Event()
        self.ok: list[float] = []
        self.refused: list[float] = []

    def run(self) -> None:
        v = self.values
        while not self.stop.is_set():
            at = time.monotonic()
            try:
                with psycopg.connect(host=LB.address, port=self.port, user=v["POSTGRES_APP_USER"], password=v["POSTGRES_APP_PASS"],
                                     dbname=v["POSTGRES_DB"], connect_timeout=2, autocommit=True) as conn:
                    conn.execute("CREATE TABLE IF NOT EXISTS failover_probe (at timestamptz DEFAULT now(), port int)")
                    conn.execute("INSERT INTO failover_probe (port) VALUES (%s)", (self.port,))
                self.ok.append(at)
            except psycopg.Error:
                self.refused.append(at)
            time.sleep(0.1)

    def refused_seconds(self) -> float:
        if not self.refused:
            return 0.0
        return max(self.refused) - min(self.refused) + 0.1


def leader(installed: Installed) -> str:
    return next(m["Member"] for m in wait_healthy(installed.workdir) if m["Role"] == "Leader")


def test_switchover_moves_writes_to_the_new_primary(installed: Installed) -> None:
    old = leader(installed)
    host = next(h for h in DB_HOSTS if h.name == old)
    probes = [WriteProbe(installed, 5432), WriteProbe(installed, 6432)]
    for probe in probes:
        probe.start()
    time.sleep(1)
    code, out, err = on_host(installed.workdir, host.address,
                             f"patronictl -c /etc/patroni/config.yml switchover --leader {old} --force")
    assert code == 0, out + err
    new = leader(installed)
    time.sleep(3)
    for probe in probes:
        probe.stop.set()
        probe.join(10)
    assert new != old
    for probe in probes:
        assert probe.ok and probe.ok[-1] > probe.refused[-1] if probe.refused else probe.ok
        print(f"switchover {old} -> {new}: writes through LB:{probe.port} refused for {probe.refused_seconds():.1f} s")
    values = installed.credentials
    with psycopg.connect(host=LB.address, port=5432, user=values["POSTGRES_APP_USER"], password=values["POSTGRES_APP_PASS"],
                         dbname=values["POSTGRES_DB"], connect_timeout=5) as conn:
        assert conn.execute("SELECT inet_server_addr()::text").fetchone()[0].split("/")[0] == \
            next(h.address for h in DB_HOSTS if h.name == new)


def test_stopping_patroni_on_the_leader_elects_a_replica(installed: Installed) -> None:
    old = leader(installed)
    host = next(h for h in DB_HOSTS if h.name == old)
    on_host(installed.workdir, host.address, "systemctl stop patroni")
    try:
        deadline = time.monotonic() + 90
        new = None
        while time.monotonic() < deadline:
            members = patroni_members(installed.workdir)
            leaders = [m["Member"] for m in members if m["Role"] == "Leader" and m["State"] == "running"]
            if leaders and leaders[0] != old:
                new = leaders[0]
                break
            time.sleep(1)
        assert new, f"no new leader after stopping {old}"
    finally:
        on_host(installed.workdir, host.address, "systemctl start patroni")
    members = wait_healthy(installed.workdir, timeout=120)
    assert next(m for m in members if m["Member"] == old)["Role"] == "Replica"  # the old leader rejoined
