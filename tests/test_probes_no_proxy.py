"""HTTP probes (Patroni REST, HAProxy stats) go straight to the hosts, never through a proxy from the environment.

The stats and Patroni passwords travel in these requests: a proxy named in http_proxy must never see them.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from kbpg_tui.core import credentials as creds
from kbpg_tui.core import diagnostics as diag
from kbpg_tui.core.engine import Context
from kbpg_tui.core.settings import Settings

from .fakes import FakePool, serve_tls

PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


class FakeProxy:
    """A listening socket that records every connection made to it (and answers nothing)."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.socket.settimeout(0.1)
        self.port = self.socket.getsockname()[1]
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.socket.accept()
            except OSError:
                continue
            connection.settimeout(1)
            try:
                self.received.append(connection.recv(65536) or b"(connected)")
            except OSError:
                self.received.append(b"(connected)")
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.socket.close()


class _Host(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.dumps({"members": [{"name": "db-1", "host": "127.0.0.1", "role": "leader", "state": "running",
                                        "timeline": 1}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(params=["http", "https"])
def proxied(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A fake proxy named in every proxy variable, and a real HTTP server standing for a host: plain HTTP (TLS off
    in kbpg.toml), or HTTPS with a certificate of the CA kbpg made in ``tmp_path`` (TLS on)."""
    proxy = FakeProxy()
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Host)
    if request.param == "https":
        serve_tls(server, tmp_path)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    urllib.request.install_opener(None)  # urlopen would build its opener afresh, from this environment
    yield proxy, server.server_address[1], request.param, tmp_path
    server.shutdown()
    server.server_close()
    proxy.close()
    urllib.request.install_opener(None)


def test_the_environment_would_send_plain_urllib_through_the_fake_proxy(proxied) -> None:
    """The test's own check: without the protection, a request does reach the proxy."""
    proxy, port, scheme, _ = proxied
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/cluster", timeout=2)
    assert proxy.received


def _ctx(port: int, scheme: str, workdir: Path) -> Context:
    settings = Settings()
    settings.ports.patroni_rest = port
    settings.tls.enabled = scheme == "https"
    selection = SimpleNamespace(db_nodes=[SimpleNamespace(hostname="db-1", ip_private="127.0.0.1", user_ssh="root")],
                                haproxy_nodes=[])
    return Context(settings, creds.Credentials(), selection, workdir, FakePool(),  # type: ignore[arg-type]
                   lambda e: None, threading.Event())


def test_probes_with_a_password_never_reach_a_proxy(proxied) -> None:
    proxy, port, scheme, workdir = proxied
    diagnostics = diag.Diagnostics(_ctx(port, scheme, workdir), timeout=2)
    status, body = diagnostics.http(f"{scheme}://127.0.0.1:{port}/stats;csv", auth=("kb_stats", "Stats-secret-1"))
    assert status == 200 and b"members" in body
    assert proxy.received == []


def test_the_live_cluster_view_never_reaches_a_proxy(proxied) -> None:
    proxy, port, scheme, workdir = proxied
    members = diag.cluster_view(_ctx(port, scheme, workdir), timeout=2)
    assert [m.name for m in members] == ["db-1"]
    assert proxy.received == []
