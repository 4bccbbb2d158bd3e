"""kbpg's own clients with TLS on and least privilege: every psycopg connection it opens (the drill's writers and
watcher, the switchover's watch, PgBouncer's console) is ``sslmode=verify-full`` with kbpg's CA and never the
superuser; every REST request (the switchover's, the drill's reads of /cluster) is HTTPS verified with that CA."""

from __future__ import annotations

import json
import ssl
import threading
import time
from pathlib import Path

import pytest

from kbpg_tui.core import bouncer, cluster, tls
from kbpg_tui.core import credentials as creds
from kbpg_tui.core.engine import Context
from kbpg_tui.core.inventory import load_selection
from kbpg_tui.core.lab.topology import LB_ADDRESS
from kbpg_tui.core.lab.workdir import write_servers_tsv
from kbpg_tui.core.ops import drill
from kbpg_tui.core.ops import switchover as so
from kbpg_tui.core.settings import Settings
from kbpg_tui.core.ssh import Host

from .fakes import FakePgConnection, FakePool


def lab_ctx(workdir: Path, enabled: bool = True) -> Context:
    write_servers_tsv(workdir)
    settings = Settings()
    settings.network.lb_address = LB_ADDRESS
    settings.tls.enabled = enabled
    tls.ensure_ca(workdir)
    return Context(settings, creds.generate()[0], load_selection(workdir / "servers.tsv"), workdir,
                   pool=FakePool(), sink=lambda event: None, cancel=threading.Event())  # type: ignore[arg-type]


class Connections:
    """psycopg.connect in its place: records the keywords of each connection, answers with ``answers``."""

    def __init__(self, answers: dict | None = None):
        self.seen: list[dict] = []
        self.answers = answers or {}

    def __call__(self, **kwargs) -> FakePgConnection:
        self.seen.append(kwargs)
        connection = FakePgConnection(self.answers)
        connection.closed = False  # type: ignore[attr-defined]
        connection.close = lambda: None  # type: ignore[attr-defined]
        return connection


def ca(workdir: Path) -> str:
    return str((workdir / tls.CA_CERT).absolute())


@pytest.mark.parametrize("enabled", [True, False])
def test_the_drill_writers_connect_as_the_app_role_over_verified_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     enabled: bool) -> None:
    ctx = lab_ctx(tmp_path, enabled)
    connect = Connections()
    monkeypatch.setattr(drill.psycopg, "connect", connect)
    drill._connector(ctx, 6432)()
    (seen,) = connect.seen
    assert (seen["host"], seen["port"], seen["user"]) == (LB_ADDRESS, 6432, ctx.credentials["POSTGRES_APP_USER"])
    if enabled:
        assert (seen["sslmode"], seen["sslrootcert"]) == ("verify-full", ca(tmp_path))
    else:
        assert "sslmode" not in seen and "sslrootcert" not in seen


def test_the_drills_leader_watch_logs_in_as_the_monitor_role_over_verified_tls(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = lab_ctx(tmp_path)
    connect = Connections({"pg_is_in_recovery": [(True,)]})
    monkeypatch.setattr(drill.psycopg, "connect", connect)
    watch = drill.LeaderWatch(ctx)
    watch.start()
    deadline = time.monotonic() + 5
    while len({c["host"] for c in connect.seen}) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    watch.close()
    assert {c["host"] for c in connect.seen} == {h.address for h in ctx.db_hosts}
    assert {(c["user"], c["password"], c["sslmode"], c["sslrootcert"]) for c in connect.seen} == {
        (ctx.credentials["POSTGRES_MONITOR_USER"], ctx.credentials["POSTGRES_MONITOR_PASS"], "verify-full",
         ca(tmp_path))}


def test_the_switchovers_promotion_watch_logs_in_as_the_monitor_role_over_verified_tls(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = lab_ctx(tmp_path)
    connect = Connections({"pg_is_in_recovery": [(False,)]})
    monkeypatch.setattr(so.psycopg, "connect", connect)
    with so.PromotionWatch(ctx, ctx.db_hosts[1:]) as watch:
        assert watch.writable() == "db-slave-01"
    assert [c["host"] for c in connect.seen] == ["198.18.0.121", "198.18.0.122"]
    assert all((c["user"], c["sslmode"], c["sslrootcert"]) == (ctx.credentials["POSTGRES_MONITOR_USER"],
                                                               "verify-full", ca(tmp_path)) for c in connect.seen)


def test_without_the_monitor_role_the_watches_refuse_before_connecting(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = lab_ctx(tmp_path)
    del ctx.credentials["POSTGRES_MONITOR_USER"]
    connect = Connections()
    monkeypatch.setattr(so.psycopg, "connect", connect)
    with pytest.raises(so.TaskError, match="POSTGRES_MONITOR_USER not in credentials/postgres.env"):
        drill.LeaderWatch(ctx)
    with pytest.raises(so.TaskError, match="POSTGRES_MONITOR_USER not in credentials/postgres.env"):
        so.PromotionWatch(ctx, ctx.db_hosts).__enter__()
    assert connect.seen == []


def test_pgbouncers_console_is_verify_full_as_its_admin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = lab_ctx(tmp_path)
    connect = Connections()
    monkeypatch.setattr(bouncer.psycopg, "connect", connect)
    bouncer.console(ctx, ctx.haproxy_hosts[0])
    (seen,) = connect.seen
    assert (seen["host"], seen["port"], seen["dbname"], seen["user"], seen["sslmode"], seen["sslrootcert"]) == (
        "198.18.0.11", 6432, "pgbouncer", ctx.credentials["PGBOUNCER_ADMIN_USER"], "verify-full", ca(tmp_path))


def test_the_switchovers_rest_requests_are_https_with_kbpgs_ca(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = lab_ctx(tmp_path)
    seen: list[tuple[str, object]] = []

    def request(url: str, timeout: float, auth=None, method: str = "GET", body=None, context=None):
        seen.append((url, context))
        if url.endswith("/cluster"):
            members = [{"name": h.name, "host": h.address, "role": "leader" if i == 0 else "replica",
                        "state": "running" if i == 0 else "streaming", "timeline": 1, "lag": 0}
                       for i, h in enumerate(ctx.db_hosts)]
            return 200, json.dumps({"members": members}).encode()
        return 200, b""

    monkeypatch.setattr(cluster, "http_request", request)
    monkeypatch.setattr(so, "http_request", request)
    assert so.read_state(ctx).leader.name == "db-master-01"  # type: ignore[union-attr]
    assert so.is_primary(ctx, Host("db-slave-01", "198.18.0.121"))
    assert [url for url, _ in seen] == ["https://198.18.0.120:8008/cluster", "https://198.18.0.121:8008/primary"]
    assert all(isinstance(context, ssl.SSLContext) for _, context in seen)
    seen.clear()
    assert drill._state(ctx).leader.name == "db-master-01"  # type: ignore[union-attr]
    assert seen[0][0] == "https://198.18.0.120:8008/cluster" and isinstance(seen[0][1], ssl.SSLContext)


def test_the_switchover_without_kbpgs_ca_stops_before_pausing_anything(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = lab_ctx(tmp_path)
    healthy = cluster.ClusterState(tuple(
        cluster.Member(h.name, h.address, "leader" if i == 0 else "replica", "running" if i == 0 else "streaming",
                       1, 0) for i, h in enumerate(ctx.db_hosts)))
    monkeypatch.setattr(so, "read_state", lambda ctx, first=None, timeout=2.0: healthy)
    (tmp_path / tls.CA_CERT).unlink()
    monkeypatch.setattr(so.Bouncers, "open", lambda self: pytest.fail("PgBouncer paused without a CA"))
    with pytest.raises(so.SwitchoverError, match=r"ca.crt is missing; run kbpg install .*: no switchover$"):
        so.switchover(ctx)
