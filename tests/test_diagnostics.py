"""Diagnostics as a whole: the one list of checks, the probes they make, the runner and the report.

Each check on its own is tested against fakes in tests/checks/; the e2e tests run them all for real.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest

from kbpg_tui.core import credentials as creds
from kbpg_tui.core import diagnostics as diag
from kbpg_tui.core import inventory as inv
from kbpg_tui.core.checks import ALL_CHECKS, CHECK_NAMES, c13_rest_auth
from kbpg_tui.core.checks.base import Check, CheckFailed, CheckWarning, Probe, once
from kbpg_tui.core.checks.report import CheckResult, Report, Verdict, write_reports
from kbpg_tui.core.checks.runner import Diagnostics, run_probes
from kbpg_tui.core.engine import Context
from kbpg_tui.core.settings import Settings
from kbpg_tui.core.ssh import Host, SshError

from .fakes import FakePool, serve_tls


def _diagnostics(real_inventory: Path, values: creds.Credentials | None = None, timeout: float = 8.0,
                 workdir: Path = Path("/nonexistent"), tls: bool = True) -> Diagnostics:
    settings = Settings()
    settings.tls.enabled = tls
    ctx = Context(settings, values or creds.generate()[0], inv.load_selection(real_inventory), workdir,
                  pool=FakePool(), sink=lambda e: None, cancel=threading.Event())  # type: ignore[arg-type]
    return Diagnostics(ctx, timeout=timeout)


# --- one list of checks ------------------------------------------------------------------------------------

def test_every_check_is_in_the_one_list_numbered_1_to_19() -> None:
    assert [c.number for c in ALL_CHECKS] == list(range(1, 20))
    assert CHECK_NAMES == {1: "inventory", 2: "ssh and sudo", 3: "services", 4: "patroni cluster",
                           5: "patroni timing", 6: "writes through the LB", 7: "read-only port", 8: "pgbouncer",
                           9: "roles and database", 10: "pgvector", 11: "haproxy", 12: "secret files",
                           13: "patroni rest auth", 14: "client sessions", 15: "synchronous replication", 16: "tls",
                           17: "secrets", 18: "backups", 19: "raft members"}
    assert diag.CHECK_NAMES is CHECK_NAMES and diag.Diagnostics is Diagnostics  # the names the CLI and UI import


def test_every_module_of_the_package_declares_one_listed_check() -> None:
    import importlib
    import pkgutil

    import kbpg_tui.core.checks as package

    modules = sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                     if m.name[0] == "c" and m.name[1:3].isdigit())
    declared = [importlib.import_module(f"kbpg_tui.core.checks.{name}").CHECK for name in modules]
    assert declared == list(ALL_CHECKS)
    assert [int(name[1:3]) for name in modules] == [c.number for c in declared]


def test_the_probes_of_the_company_inventory(real_inventory: Path) -> None:
    probes = _diagnostics(real_inventory).probes()
    targets: dict[int, list[str]] = {}
    for probe in probes:
        assert probe.check == CHECK_NAMES[probe.number]
        targets.setdefault(probe.number, []).append(probe.target)
    db, proxies = ["db-master-01", "db-slave-01", "db-slave-02"], ["haproxy-01", "haproxy-02"]
    assert targets == {
        1: ["servers.tsv"], 2: db + proxies, 3: db + proxies, 4: ["cluster"], 5: ["cluster"],
        6: ["LB 10.0.0.10:5432", "haproxy-01:5432", "haproxy-02:5432"],
        7: ["LB 10.0.0.10:5433", "haproxy-01:5433", "haproxy-02:5433"],
        8: ["LB 10.0.0.10:6432", "haproxy-01:6432", "haproxy-02:6432"],
        9: ["LB 10.0.0.10:5432"], 10: ["LB 10.0.0.10:6432"], 11: proxies,
        12: db + proxies + ["credentials/postgres.env"], 13: db, 14: ["LB 10.0.0.10:5432"], 15: ["cluster"],
        16: ["CA"] + [f"{n}:5432" for n in db] + ["LB 10.0.0.10:5432", "LB 10.0.0.10:5433", "LB 10.0.0.10:6432"]
            + [f"{n}:6432" for n in proxies] + [f"{n} REST :8008" for n in db] + [f"{n} stats :8404" for n in proxies],
        17: ["POSTGRES_APP_PASS", "POSTGRES_MONITOR_PASS", "POSTGRES_SUPERPASS", "POSTGRES_REPL_PASS",
             "PATRONI_API_PASSWORD", "HAPROXY_STATS_PASSWORD", "PGBOUNCER_ADMIN_PASS", "PGBOUNCER_STATS_PASS"],
        18: ["backup-01"], 19: db,
    }


def test_a_new_check_is_one_declaration() -> None:
    extra = Check(17, "made up", once("here", lambda p: "fine"))
    diagnostics = Diagnostics(Context(Settings(), creds.Credentials(), None, Path("/nonexistent"),  # type: ignore
                                      pool=FakePool(), sink=lambda e: None), checks=[extra])
    report = diagnostics.run()
    assert [(r.number, r.check, r.target, r.verdict, r.reason) for r in report.results] == [
        (17, "made up", "here", Verdict.PASS, "fine")]


# --- the runner ------------------------------------------------------------------------------------------------

def _probe(number: int, target: str, function) -> Probe:
    return Probe(number, CHECK_NAMES.get(number, "x"), target, function)


def test_each_probe_gets_its_own_verdict_and_a_bug_is_that_probes_failure() -> None:
    def warn() -> str:
        raise CheckWarning("careful")

    def fail() -> str:
        raise CheckFailed("broken\nsecond line")

    def down() -> str:
        raise SshError("haproxy-02 (10.0.0.12): no SSH answer within 10 s\nmore")

    def bug() -> str:
        raise KeyError("POSTGRES_DB")

    seen: list[CheckResult] = []
    report = run_probes([_probe(3, "b", bug), _probe(2, "haproxy-02", down), _probe(1, "a", lambda: "fine"),
                         _probe(4, "c", fail), _probe(5, "d", warn)], budget=5, on_result=seen.append)
    assert [(r.number, r.verdict, r.reason) for r in report.results] == [
        (1, Verdict.PASS, "fine"),
        (2, Verdict.FAIL, "haproxy-02 (10.0.0.12): no SSH answer within 10 s"),
        (3, Verdict.FAIL, "b: KeyError: 'POSTGRES_DB'"),
        (4, Verdict.FAIL, "broken"),
        (5, Verdict.WARN, "careful"),
    ]
    assert sorted(r.number for r in seen) == [1, 2, 3, 4, 5] and report.failed
    assert report.counts() == {"pass": 1, "warn": 1, "fail": 3}


def test_a_probe_that_hangs_is_failed_at_the_backstop_and_the_others_finish() -> None:
    release = threading.Event()
    started = time.monotonic()
    try:
        report = run_probes([_probe(1, "quick", lambda: "ok"), _probe(4, "cluster", lambda: str(release.wait(30)))],
                            budget=0.5)
    finally:
        release.set()
    assert time.monotonic() - started < 2
    assert [(r.verdict, r.reason) for r in report.results] == [
        (Verdict.PASS, "ok"), (Verdict.FAIL, "cluster: no answer within 0 s")]


def test_only_runs_the_checks_asked_for(real_inventory: Path) -> None:
    diagnostics = _diagnostics(real_inventory)
    assert {p.number for p in diagnostics.probes()} == set(range(1, 20))
    diagnostics.probes = lambda: [_probe(1, "servers.tsv", lambda: "one"),  # type: ignore[method-assign]
                                  _probe(2, "db-master-01", lambda: pytest.fail("not asked for"))]
    assert [r.number for r in diagnostics.run(only={1}).results] == [1]


# --- the report ------------------------------------------------------------------------------------------------

def test_the_report_keeps_its_json_shape_and_markdown(tmp_path: Path) -> None:
    results = [CheckResult(1, "inventory", "servers.tsv", Verdict.PASS, "3 DB + 2 HAProxy nodes", 0.01),
               CheckResult(11, "haproxy", "haproxy-01", Verdict.FAIL, "a | b", 0.2)]
    report = Report(results, started=1_700_000_000.0, elapsed=0.25, slowest=0.2)
    assert report.to_dict() == {
        "ok": False, "counts": {"pass": 1, "warn": 0, "fail": 1}, "elapsed": 0.25, "slowest_check": 0.2,
        "results": [
            {"number": 1, "check": "inventory", "target": "servers.tsv", "verdict": "pass",
             "reason": "3 DB + 2 HAProxy nodes", "duration": 0.01},
            {"number": 11, "check": "haproxy", "target": "haproxy-01", "verdict": "fail", "reason": "a | b",
             "duration": 0.2}]}
    markdown_path, json_path = write_reports(tmp_path, report)
    markdown = markdown_path.read_text()
    assert "- result: FAIL (1 pass, 0 warn, 1 fail)" in markdown
    assert "| 11 | haproxy | haproxy-01 | FAIL | a \\| b | 0.20s |" in markdown
    assert json.loads(json_path.read_text()) == report.to_dict()
    assert (tmp_path / "reports").stat().st_mode & 0o777 == 0o700


# --- 13 over real HTTP: Patroni's unsafe endpoints refuse requests without credentials --------------------------

class _Patroni(http.server.BaseHTTPRequestHandler):
    status = 401
    seen: ClassVar[list[tuple[str, str, str | None, str | None]]] = []

    def do_PATCH(self) -> None:  # noqa: N802 (http.server's naming)
        _Patroni.seen.append((self.command, self.path, self.headers.get("Authorization"),
                              self.headers.get("Content-Length")))
        self.send_response(_Patroni.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(params=["https", "http"])
def fake_patroni(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Patroni's REST API on loopback: over HTTPS with a certificate of the CA kbpg made in ``tmp_path`` (TLS on), or
    plain HTTP (TLS off)."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Patroni)
    server.workdir, server.tls = tmp_path, request.param == "https"  # type: ignore[attr-defined]
    if server.tls:  # type: ignore[attr-defined]
        serve_tls(server, tmp_path)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Patroni.seen = []
    yield server
    server.shutdown()
    server.server_close()


def _rest_auth(real_inventory: Path, server, status: int) -> str:
    _Patroni.status = status
    diagnostics = _diagnostics(real_inventory, workdir=server.workdir, tls=server.tls)
    diagnostics.settings.ports.patroni_rest = server.server_address[1]
    return c13_rest_auth.rest_auth(diagnostics, Host("db-local", "127.0.0.1", "root"))


def test_rest_auth_passes_on_401_with_an_unauthenticated_empty_patch(real_inventory: Path, fake_patroni) -> None:
    assert "db-local" in _rest_auth(real_inventory, fake_patroni, 401)
    # No credentials, and nothing a Patroni without auth could act on (an empty body is a 400 before the DCS).
    assert _Patroni.seen == [("PATCH", "/config", None, "0")]


@pytest.mark.parametrize("status", [200, 400, 403, 500])
def test_rest_auth_fails_on_anything_but_401_naming_the_node(real_inventory: Path, fake_patroni, status: int) -> None:
    expected = f"db-local: PATCH /config without credentials answered {status}, expected 401"
    with pytest.raises(CheckFailed, match=expected):
        _rest_auth(real_inventory, fake_patroni, status)


def test_no_answer_is_a_failure_naming_the_url(real_inventory: Path) -> None:
    diagnostics = _diagnostics(real_inventory, timeout=1, tls=False)
    diagnostics.settings.ports.patroni_rest = 9  # discard: nothing listens on loopback there
    with pytest.raises(CheckFailed, match=r"^http://127.0.0.1:9/config: no answer \("):
        c13_rest_auth.rest_auth(diagnostics, Host("db-local", "127.0.0.1", "root"))


@pytest.fixture
def https_patroni(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Patroni)
    serve_tls(server, tmp_path_factory.mktemp("server-ca"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Patroni.seen, _Patroni.status = [], 401
    yield server
    server.shutdown()
    server.server_close()


def test_with_tls_a_rest_api_whose_certificate_is_not_of_kbpgs_ca_is_no_answer(real_inventory: Path, https_patroni,
                                                                                tmp_path: Path) -> None:
    from kbpg_tui.core import tls
    tls.ensure_ca(tmp_path)  # kbpg's CA: not the one that issued the server's certificate
    diagnostics = _diagnostics(real_inventory, timeout=2, workdir=tmp_path)
    diagnostics.settings.ports.patroni_rest = https_patroni.server_address[1]
    with pytest.raises(CheckFailed, match=r"^https://127.0.0.1:\d+/config: no answer \(.*certificate verify failed"):
        c13_rest_auth.rest_auth(diagnostics, Host("db-local", "127.0.0.1", "root"))
    assert _Patroni.seen == []  # nothing was sent to it


def test_with_tls_and_no_ca_the_rest_probe_fails_naming_ca_crt(real_inventory: Path, https_patroni,
                                                               tmp_path: Path) -> None:
    diagnostics = _diagnostics(real_inventory, timeout=2, workdir=tmp_path)
    diagnostics.settings.ports.patroni_rest = https_patroni.server_address[1]
    with pytest.raises(CheckFailed, match=r"credentials/tls/ca.crt is missing; run kbpg install"):
        c13_rest_auth.rest_auth(diagnostics, Host("db-local", "127.0.0.1", "root"))


# --- 14: which client sessions are strays -------------------------------------------------------------------

NODES = ["10.0.0.120", "10.0.0.121", "10.0.0.122", "10.0.0.11", "10.0.0.12"]


@pytest.mark.parametrize("session, expected", [
    (("10.0.0.11", "kb_app", 4), True),          # through HAProxy / PgBouncer
    (("10.0.0.121", "kb_app", 1), True),         # a DB node
    (("127.0.0.1", "kb_app", 1), True),
    (("::1", "kb_app", 1), True),
    (("10.0.5.7", "kb_app", 1), True),           # network.direct_clients
    (("10.0.0.50", "kb_monitor", 1), True),      # the monitor role from the private subnet (diagnostics)
    (("10.0.0.50", "kb_admin", 1), False),       # the superuser logs in from the DB nodes only
    (("10.0.0.50", "kb_app", 2), False),         # an application pointed at the node
    (("::ffff:10.0.0.50", "kb_app", 1), False),
    (("::ffff:10.0.0.11", "kb_app", 1), True),   # IPv4-mapped: the HAProxy node
    (("10.0.0.120", "kb_app", 1), True),
    (("192.168.1.9", "kb_monitor", 1), False),   # the monitor role from outside the private subnet
    (("10.0.0.121", "kb_admin", 1), True),       # the superuser from a DB node
    (("10.0.6.1", "kb_app", 1), False),
    (("not-an-address", "kb_app", 1), False),
])
def test_session_classification(session: tuple[str, str, int], expected: bool) -> None:
    strays = diag.stray_sessions([session], NODES + ["10.0.5.0/24"], "kb_monitor", "10.0.0.0/16")
    assert (strays == []) is expected
