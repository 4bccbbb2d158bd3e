"""Diagnostics probes that can be checked without a cluster (the e2e tests run them all for real)."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest

from kbpg_tui.core import credentials as creds
from kbpg_tui.core import inventory as inv
from kbpg_tui.core.diagnostics import CheckFailed, CheckWarning, Diagnostics, stray_sessions
from kbpg_tui.core.engine import Context
from kbpg_tui.core.settings import Settings
from kbpg_tui.core.ssh import Host


def _diagnostics(real_inventory: Path, values: creds.Credentials) -> Diagnostics:
    ctx = Context(Settings(), values, inv.load_selection(real_inventory), Path("/nonexistent"),
                  pool=None, sink=lambda e: None, cancel=threading.Event())  # type: ignore[arg-type]
    return Diagnostics(ctx)


def test_the_secret_scan_sends_every_secret_on_stdin(real_inventory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values, _ = creds.generate()
    diagnostics = _diagnostics(real_inventory, values)
    sent: list[str] = []
    monkeypatch.setattr(diagnostics, "ssh", lambda host, script, stdin=None, timeout=None: sent.append(stdin) or "")
    diagnostics.check_host_secrets(diagnostics.ctx.db_hosts[0])
    patterns = sent[0].splitlines()
    assert "" not in patterns
    assert values["POSTGRES_SUPERPASS"] in patterns


def test_no_secret_to_look_for_is_a_warning_not_a_scan_that_matches_every_file(real_inventory: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    values = creds.Credentials({"POSTGRES_SUPERUSER": "kb_admin", "POSTGRES_SUPERPASS": "short"})
    diagnostics = _diagnostics(real_inventory, values)
    monkeypatch.setattr(diagnostics, "ssh", lambda *a, **k: pytest.fail("scanned with an empty pattern list"))
    with pytest.raises(CheckWarning, match="no secret"):
        diagnostics.check_host_secrets(diagnostics.ctx.db_hosts[0])


# --- 13: Patroni's unsafe REST endpoints refuse requests without credentials ---------------------------------

class _Patroni(http.server.BaseHTTPRequestHandler):
    status = 401
    seen: ClassVar[list[tuple[str, str, str | None, str | None]]] = []

    def do_PATCH(self) -> None:
        _Patroni.seen.append((self.command, self.path, self.headers.get("Authorization"), self.headers.get("Content-Length")))
        self.send_response(_Patroni.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_patroni(monkeypatch: pytest.MonkeyPatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Patroni)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Patroni.seen = []
    yield server
    server.shutdown()
    server.server_close()


def _rest_auth(real_inventory: Path, server, status: int) -> str:
    _Patroni.status = status
    diagnostics = _diagnostics(real_inventory, creds.generate()[0])
    diagnostics.settings.ports.patroni_rest = server.server_address[1]
    return diagnostics.check_rest_auth(Host("db-local", "127.0.0.1", "root"))


def test_rest_auth_passes_on_401_with_an_unauthenticated_empty_patch(real_inventory: Path, fake_patroni) -> None:
    assert "db-local" in _rest_auth(real_inventory, fake_patroni, 401)
    # No credentials, and nothing a Patroni without auth could act on (an empty body is a 400 before the DCS).
    assert _Patroni.seen == [("PATCH", "/config", None, "0")]


@pytest.mark.parametrize("status", [200, 400, 403, 500])
def test_rest_auth_fails_on_anything_but_401_naming_the_node(real_inventory: Path, fake_patroni, status: int) -> None:
    with pytest.raises(CheckFailed, match=f"db-local: PATCH /config without credentials answered {status}, expected 401"):
        _rest_auth(real_inventory, fake_patroni, status)


def test_rest_auth_is_probed_on_every_db_node(real_inventory: Path) -> None:
    diagnostics = _diagnostics(real_inventory, creds.generate()[0])
    targets = [p.target for p in diagnostics.probes() if p.number == 13]
    assert targets == ["db-master-01", "db-slave-01", "db-slave-02"]


# --- 14: client sessions on the primary from where applications should not connect -----------------------------

NODES = ["10.0.0.120", "10.0.0.121", "10.0.0.122", "10.0.0.11", "10.0.0.12"]


@pytest.mark.parametrize("session, expected", [
    (("10.0.0.11", "kb_app", 4), True),          # through HAProxy / PgBouncer
    (("10.0.0.121", "kb_app", 1), True),         # a DB node
    (("127.0.0.1", "kb_app", 1), True),
    (("::1", "kb_app", 1), True),
    (("10.0.5.7", "kb_app", 1), True),           # network.direct_clients
    (("10.0.0.50", "kb_admin", 1), True),        # the superuser from the private subnet (administrators)
    (("10.0.0.50", "kb_app", 2), False),         # an application pointed at the node
    (("::ffff:10.0.0.50", "kb_app", 1), False),
    (("10.0.0.120", "kb_app", 1), True),
    (("192.168.1.9", "kb_admin", 1), False),     # the superuser from outside the private subnet
    (("10.0.6.1", "kb_app", 1), False),
    (("not-an-address", "kb_app", 1), False),
])
def test_session_classification(session: tuple[str, str, int], expected: bool) -> None:
    strays = stray_sessions([session], NODES + ["10.0.5.0/24"], "kb_admin", "10.0.0.0/16")
    assert (strays == []) is expected


def test_stray_sessions_warn_naming_the_address(real_inventory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    diagnostics = _diagnostics(real_inventory, creds.generate()[0])
    rows = [("10.0.0.11", "kb_app", 3), ("10.0.0.77", "kb_app", 2), ("10.0.0.77", "kb_admin", 1)]

    class _Conn:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def execute(self, sql, *args):
            return SimpleNamespace(fetchone=lambda: ("10.0.0.120",), fetchall=lambda: rows)

    monkeypatch.setattr(diagnostics, "admin", lambda *a, **k: _Conn())
    with pytest.raises(CheckWarning, match=r"primary db-master-01: .*10\.0\.0\.77 \(kb_app, 2 sessions\); point those clients at the LB"):
        diagnostics.check_client_sessions()
    rows[1:] = [("10.0.0.77", "kb_admin", 1)]
    assert diagnostics.check_client_sessions() == "primary db-master-01: 4 client sessions, all from expected addresses"
    diagnostics.settings.network.direct_clients = ["10.0.0.77/32"]
    rows.append(("10.0.0.77", "kb_app", 2))
    assert "all from expected addresses" in diagnostics.check_client_sessions()
