"""The failover drill and the planned switchover on the lab, measured twice: by kbpg and by a writer of the test's own.

Each drill mode runs once with synchronous_mode off and once with quorum + strict (applied live by `kbpg install`,
no restart): the cluster ends with one leader and every other member streaming on one timeline; with quorum +
strict no acknowledged row is lost; the drill's longest stall per entry point agrees with the test's own writer
within 0.5 s.
"""

from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest

from kbpg_tui.core import settings as cfg
from kbpg_tui.core.rto import plan_for

from .conftest import HAPROXY_HOSTS, LB, Installed, kbpg, on_host, own_writer_table, wait_healthy

pytestmark = [pytest.mark.lab, pytest.mark.e2e]

ENTRIES = {"LB:5432": 5432, "LB:6432": 6432}
AGREEMENT = 0.5  # seconds: the drill's longest stall against the test's own writer's


class OwnWriter(threading.Thread):
    """The test's own writer: one row per transaction through one LB port, on a connection kept open and
    reopened after a failure, as an application would; records when each write was acknowledged."""

    def __init__(self, installed: Installed, port: int, host: str = LB.address, via: str = "LB"):
        super().__init__(daemon=True)
        self.values = installed.credentials
        self.port, self.host, self.via = port, host, via
        self.stop = threading.Event()
        self.acks: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        v = self.values
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(host=self.host, port=self.port, user=v["POSTGRES_APP_USER"],
                                           password=v["POSTGRES_APP_PASS"], dbname=v["POSTGRES_DB"], autocommit=True,
                                           connect_timeout=2, prepare_threshold=None)
                conn.execute("INSERT INTO test_own_writer (port) VALUES (%s)", (self.port,))
                self.acks.append(time.monotonic())
            except psycopg.Error as exc:
                self.failures.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(0.02)
        if conn is not None:
            conn.close()

    def longest_stall(self) -> float:
        assert len(self.acks) >= 2, f"the test's writer through {self.via}:{self.port} got {len(self.acks)} acks: " \
                                    f"{self.failures[:3]}"
        return max(b - a for a, b in zip(self.acks, self.acks[1:], strict=False))

    def finish(self) -> None:
        self.stop.set()
        self.join(30)


@pytest.fixture(scope="module", autouse=True)
def own_table(installed: Installed) -> None:
    own_writer_table(installed)


def own_writers(installed: Installed, port: int) -> list[OwnWriter]:
    """The test's writers for one entry point: through the LB, and through each HAProxy node, one of which is the
    path the LB gave the drill's own writer (the LB balances connections over both; each HAProxy and PgBouncer
    sees a failover on its own checks and retries)."""
    return [OwnWriter(installed, port)] + [OwnWriter(installed, port, h.address, h.name) for h in HAPROXY_HOSTS]


def _set_sync(installed: Installed, mode: str, strict: bool) -> None:
    path = installed.workdir / "kbpg.toml"
    settings = cfg.load_settings(path)
    if (settings.patroni.synchronous_mode, settings.patroni.synchronous_mode_strict) == (mode, strict):
        return
    settings.patroni.synchronous_mode, settings.patroni.synchronous_mode_strict = mode, strict
    cfg.save_settings(settings, path)
    result = kbpg(installed.workdir, "install", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr


def wait_green(installed: Installed, timeout: float = 60) -> None:
    """Until diagnostics have no failure, as a drill requires (the one before may have ended while HAProxy's checks
    or a replica's replay were still catching up); the failures named if they stay."""
    deadline = time.monotonic() + timeout
    while True:
        result = kbpg(installed.workdir, "diagnose", "--json")
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            failing = ([f"{r['check']} {r['target']}: {r['reason']}" for r in json.loads(result.stdout)["results"]
                        if r["verdict"] == "fail"] if result.stdout.strip() else result.stderr)
            raise AssertionError(f"diagnostics not green after {timeout} s: {failing}")
        time.sleep(2)


@pytest.fixture(scope="module", params=["off", "quorum+strict"])
def sync_mode(request, installed: Installed):
    original = (installed.workdir / "kbpg.toml").read_text()
    mode, strict = ("quorum", True) if request.param == "quorum+strict" else ("off", False)
    _set_sync(installed, mode, strict)
    if strict:  # Patroni names the synchronous standbys within a loop or two
        wait_green(installed)
    yield request.param
    (installed.workdir / "kbpg.toml").write_text(original)
    assert kbpg(installed.workdir, "install", "--yes").returncode == 0


@pytest.mark.parametrize("mode", ["switchover", "kill", "stop", "cut"])
def test_drill_mode_measures_what_a_writer_feels_and_leaves_the_cluster_whole(installed: Installed, sync_mode: str,
                                                                             mode: str) -> None:
    wait_green(installed)
    own = {entry: own_writers(installed, port) for entry, port in ENTRIES.items()}
    for writers in own.values():
        for writer in writers:
            writer.start()
    try:
        result = kbpg(installed.workdir, "drill", mode, "--yes", "--json", timeout=900)
    finally:
        for writers in own.values():
            for writer in writers:
                writer.finish()
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert result.stdout.strip(), f"the drill printed no report (exit {result.returncode}):\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    (one,) = report["rounds"]
    print(f"\ndrill {mode} ({sync_mode}): {one['leader_before']} -> {one['leader_after']}, new leader after "
          f"{one['time_to_new_leader']} s, old leader streaming after {one['time_to_old_streaming']} s")
    for entry, figures in one["entries"].items():
        mine = ", ".join(f"{w.via} {w.longest_stall():.3f} s" for w in own[entry])
        print(f"  {entry}: longest stall {figures['longest_stall']} s (the test's writers: {mine}), "
              f"write gap {figures['write_gap']} s, failed {figures['failed']}, lost {figures['lost']}")
    healed = [problem for problem in one["problems"] if "the drill restarted Patroni there" in problem]
    if healed:
        # The upstream fault kbpg detects and heals (kbpg_tui/core/raft.py: pysyncobj 0.3.14 forgets its term on a
        # restart, its thread can then die on an assertion and freeze that member's DCS): the heal must leave the
        # cluster whole and green; the round's figures then measure the fault plus the heal, not the failover.
        members = wait_healthy(installed.workdir, timeout=120)
        assert len({m["TL"] for m in members}) == 1
        wait_green(installed, timeout=120)
        pytest.xfail(f"upstream Raft fault (pysyncobj, see kbpg_tui/core/raft.py), healed by the drill: {healed}")
    # Only lost rows (asynchronous replication under a hard fault) may make a drill's exit status 1.
    assert not report["problems"], report["problems"]
    assert all("lost" in problem for problem in one["problems"]), one["problems"]
    assert (result.returncode == 0) == report["ok"]
    # One leader, every other member streaming, one timeline, after the drill.
    members = wait_healthy(installed.workdir, timeout=60)
    assert len({m["TL"] for m in members}) == 1
    assert one["timeline_after"] is not None and one["timeline_after"] >= one["timeline_before"]
    if mode != "kill":
        assert one["leader_after"] != one["leader_before"]
    if sync_mode == "quorum+strict":
        assert all(figures["lost"] == 0 for figures in one["entries"].values()), one["entries"]
    # Each connection the LB hands out goes to either HAProxy node, and each node marks the new leader up on its own
    # checks: two writers on the same entry point can recover up to one HAProxy recovery apart (measured in CI: the
    # drill's writer 3.6 s, the test's three 1.6 s, its 71 failures all "server closed the connection").
    plan = plan_for(cfg.load_settings(installed.workdir / "kbpg.toml"))
    path_skew = (plan.downinter_ms + (plan.rise - 1) * plan.fastinter_ms) / 1000
    for entry, figures in one["entries"].items():
        assert figures["lost"] is not None, f"{entry}: acknowledged rows were not read back"
        stalls = [w.longest_stall() for w in own[entry]]
        shown = (f"{entry}: the drill measured {figures['longest_stall']} s ({figures['errors']}), the test's writers "
                 + ", ".join(f"{w.via} {w.longest_stall():.3f} s" for w in own[entry]))
        closest = min(abs(figures["longest_stall"] - stall) for stall in stalls)
        if closest > AGREEMENT:
            assert min(stalls) - AGREEMENT <= figures["longest_stall"] <= max(stalls) + path_skew + AGREEMENT, shown
            print(f"  {entry}: not within {AGREEMENT} s of one of the test's writers, within one HAProxy recovery "
                  f"({path_skew:g} s) of them: {shown}")


def test_kbpg_switchover_keeps_pooled_writes_waiting_instead_of_failing(installed: Installed) -> None:
    wait_healthy(installed.workdir)
    writer = OwnWriter(installed, 6432)
    writer.start()
    time.sleep(2)
    try:
        result = kbpg(installed.workdir, "switchover", "--yes", timeout=300)
        time.sleep(2)
    finally:
        writer.finish()
    print(f"\nkbpg switchover: LB:6432 longest stall {writer.longest_stall():.2f} s, failed writes {len(writer.failures)}"
          f"\n{result.stdout}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PgBouncer held queries for" in result.stdout
    assert writer.failures == [], writer.failures
    assert writer.longest_stall() < 10


def test_a_drill_refuses_a_cluster_whose_diagnostics_fail(installed: Installed) -> None:
    before = wait_healthy(installed.workdir)
    host = HAPROXY_HOSTS[0]
    on_host(installed.workdir, host.address, "systemctl stop pgbouncer")
    try:
        result = kbpg(installed.workdir, "drill", "stop", "--yes", timeout=300)
    finally:
        on_host(installed.workdir, host.address, "systemctl start pgbouncer")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "diagnostics are not green" in result.stderr and host.name in result.stderr
    after = wait_healthy(installed.workdir)
    leader = [(m["Member"], m["TL"]) for m in before if m["Role"] == "Leader"]
    assert leader == [(m["Member"], m["TL"]) for m in after if m["Role"] == "Leader"], "a refused drill changed the leader"


def pooled_sessions(installed: Installed, address: str) -> dict[str, int]:
    """HAProxy's sessions that PgBouncer opened through its local HAProxy on a node (127.0.0.1:5432, or with TLS the
    node's own address, which the DB nodes' certificates name), counted per HAProxy process id."""
    _code, out, _ = on_host(installed.workdir, address, "ss -Htnp state established")
    counts: dict[str, int] = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] in ("127.0.0.1:5432", f"{address}:5432") and '"haproxy"' in line \
                and fields[3].split(":")[0] in ("127.0.0.1", address):
            pid = line.split("pid=", 1)[1].split(",", 1)[0]
            counts[pid] = counts.get(pid, 0) + 1
    return counts


def test_an_haproxy_reload_leaves_no_pooled_server_connection_on_the_old_process(installed: Installed) -> None:
    """After a reload the old HAProxy process keeps its sessions and runs no checks: a PgBouncer server connection
    left there would hang its client after a failover. kbpg's reload is followed by PgBouncer's RECONNECT, so no
    server connection of PgBouncer stays on an old process."""
    values = installed.credentials
    host = HAPROXY_HOSTS[0]
    with psycopg.connect(host=host.address, port=6432, user=values["POSTGRES_APP_USER"], password=values["POSTGRES_APP_PASS"],
                         dbname=values["POSTGRES_DB"], connect_timeout=10, autocommit=True, prepare_threshold=None) as conn:
        conn.execute("SELECT 1")  # PgBouncer now holds a server connection through the local HAProxy
        before = pooled_sessions(installed, host.address)
        assert before, "PgBouncer holds no server connection through the local HAProxy: nothing to check"
        on_host(installed.workdir, host.address, "echo '# edited by hand' >> /etc/haproxy/haproxy.cfg")
        result = kbpg(installed.workdir, "install", "--yes", "--step", "03")
        assert result.returncode == 0, result.stdout + result.stderr
        assert any(host.name in line and "reloaded" in line and "PgBouncer reconnected" in line
                   for line in result.stdout.splitlines()), result.stdout
        conn.execute("SELECT 1")  # the client's own connection is untouched
        deadline = time.monotonic() + 15
        while True:
            now = pooled_sessions(installed, host.address)
            if not set(now) & set(before):
                break  # every server connection of PgBouncer is on the new process
            assert time.monotonic() < deadline, f"PgBouncer's server connections on old HAProxy processes: {before} -> {now}"
            time.sleep(0.5)
