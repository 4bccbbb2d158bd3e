"""16 tls: every certificate a client meets verifies with kbpg's CA for the address asked, is not about to expire, has
the SANs kbpg issues; plaintext is refused (PostgreSQL's pg_hba, Patroni's REST API, HAProxy's stats)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.server
import threading
from pathlib import Path

import psycopg
import pytest

from kbpg_tui.core import tls
from kbpg_tui.core.checks import c16_tls
from kbpg_tui.core.checks.base import CheckFailed, CheckWarning
from kbpg_tui.core.checks.probe import ProbeContext
from kbpg_tui.core.checks.report import Verdict
from kbpg_tui.core.checks.runner import run_probes

from ..fakes import FakePgConnection, serve_tls

LB = "198.18.0.10"
DB = {"db-master-01": "198.18.0.120", "db-slave-01": "198.18.0.121", "db-slave-02": "198.18.0.122"}
HAPROXY = {"haproxy-01": "198.18.0.11", "haproxy-02": "198.18.0.12"}


def cert(p, name: str | None, days: float = 200.0, sans: tuple[tuple[str, ...], tuple[str, ...]] | None = None):
    """The CertInfo of ``name``'s certificate as kbpg issues it (its wanted SANs), ``days`` left."""
    dns, ips = sans if sans is not None else (tls.wanted_sans(p.ctx, name) if name else ((), ()))
    return tls.CertInfo(subject_cn=name or "?", sans_dns=tuple(dns), sans_ip=tuple(ips),
                        not_after=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=days), days_left=days,
                        issuer_cn="kbpg private CA", fingerprint="00" * 32)


def healthy(make, **kwargs):
    """Every TLS endpoint of the lab answering with the certificate kbpg issued it; kbpg's CA in the workdir."""
    p = make(**kwargs)
    tls.ensure_ca(p.ctx.workdir)
    ports = p.settings.ports
    for name, address in DB.items():
        p.certs[(address, ports.postgresql)] = cert(p, name)
        p.certs[(address, ports.patroni_rest)] = cert(p, name)
    for name, address in HAPROXY.items():
        p.certs[(address, ports.pgbouncer)] = cert(p, name)
        p.certs[(address, ports.haproxy_stats)] = cert(p, name)
    for port, behind in ((ports.haproxy_write, "db-master-01"), (ports.haproxy_read, "db-slave-01"),
                         (ports.pgbouncer, "haproxy-01")):
        p.certs[(LB, port)] = cert(p, behind)
    return p


def results(p) -> dict[str, tuple[Verdict, str]]:
    report = run_probes(c16_tls.CHECK.probes(p), budget=10)
    return {r.target: (r.verdict, r.reason) for r in report.results}


def test_every_endpoint_verifying_passes_and_plaintext_is_refused_everywhere(make) -> None:
    p = healthy(make)
    found = results(p)
    assert set(found) == ({"CA"} | {f"{n}:5432" for n in DB} | {f"LB {LB}:{port}" for port in (5432, 5433, 6432)}
                          | {f"{n}:6432" for n in HAPROXY} | {f"{n} REST :8008" for n in DB}
                          | {f"{n} stats :8404" for n in HAPROXY})
    assert {verdict for verdict, _ in found.values()} == {Verdict.PASS}, found
    assert found["db-slave-01:5432"][1].startswith("db-slave-01:5432: 'db-slave-01' verifies with ca.crt for "
                                                   "198.18.0.121, 200 days left (until ")
    assert found["db-slave-01:5432"][1].endswith("; plaintext refused")
    assert found["db-master-01 REST :8008"][1].endswith("; plain HTTP gets no answer")
    assert found["haproxy-02 stats :8404"][1].endswith("; plain HTTP gets no answer")
    # PostgreSQL and PgBouncer after an SSLRequest, the REST API and the stats page as plain TLS
    assert sorted(p.cert_probes) == sorted(
        [(a, 5432, True) for a in DB.values()] + [(LB, 5432, True), (LB, 5433, True), (LB, 6432, True)]
        + [(a, 6432, True) for a in HAPROXY.values()] + [(a, 8008, False) for a in DB.values()]
        + [(a, 8404, False) for a in HAPROXY.values()])
    # the plaintext login is the monitor role's, to each DB node, without TLS
    assert sorted(p.plaintext_logins) == sorted((a, 5432, p.values["POSTGRES_MONITOR_USER"], "postgres")
                                                for a in DB.values())
    assert ("GET", "http://198.18.0.120:8008/", None) in p.requests  # plain HTTP knocked on


def test_tls_disabled_passes_saying_so_and_probes_nothing(make) -> None:
    p = make()
    p.settings.tls.enabled = False
    assert results(p) == {"cluster": (Verdict.PASS, "TLS disabled in kbpg.toml ([tls] enabled = false): every hop "
                                                    "is plaintext, nothing to verify")}
    assert p.cert_probes == [] and p.plaintext_logins == [] and p.requests == []


def test_a_certificate_under_renew_days_warns_and_an_expired_one_fails(make) -> None:
    p = healthy(make)
    host = p.ctx.db_hosts[1]
    p.certs[(host.address, 5432)] = cert(p, host.name, days=12.4)
    with pytest.raises(CheckWarning, match=r"^db-slave-01:5432: 'db-slave-01' verifies with ca.crt for 198.18.0.121, "
                                           r"12 days left .*: under renew_days \(30\); run `kbpg install` or "
                                           r"`kbpg tls renew`$"):
        c16_tls.db_node(p, host)
    p.settings.tls.renew_days = 10
    assert c16_tls.db_node(p, host).startswith("db-slave-01:5432: 'db-slave-01' verifies")
    p.certs[(host.address, 5432)] = cert(p, host.name, days=-1)
    with pytest.raises(CheckFailed, match=r"^db-slave-01:5432: certificate 'db-slave-01' expired on "):
        c16_tls.db_node(p, host)


@pytest.mark.parametrize("error, expected", [
    (tls.TlsProbeError("198.18.0.11:6432: certificate does not verify for 198.18.0.11: IP address mismatch",
                       "verify"),
     "haproxy-01:6432: 198.18.0.11:6432: certificate does not verify for 198.18.0.11: IP address mismatch"),
    (tls.TlsProbeError("198.18.0.11:6432: the server refuses TLS (ssl is off)", "refused"),
     "haproxy-01:6432: 198.18.0.11:6432: the server refuses TLS (ssl is off); re-run `kbpg install` to turn TLS on "
     "there"),
    (tls.TlsError("/w/credentials/tls/ca.crt is missing; run kbpg install (step 00) to make the CA"),
     "haproxy-01:6432: /w/credentials/tls/ca.crt is missing; run kbpg install (step 00) to make the CA"),
])
def test_a_certificate_that_does_not_verify_fails_naming_why(make, error: Exception, expected: str) -> None:
    p = healthy(make)
    p.certs[("198.18.0.11", 6432)] = error
    assert results(p)["haproxy-01:6432"] == (Verdict.FAIL, expected)


def test_an_endpoint_not_answering_fails(make) -> None:
    p = healthy(make)
    del p.certs[(LB, 5433)]
    assert results(p)[f"LB {LB}:5433"] == (
        Verdict.FAIL, f"LB {LB}:5433: {LB}:5433: cannot connect: Connection refused")


def test_sans_not_those_kbpg_issues_now_warn(make) -> None:
    p = healthy(make)
    host = p.ctx.haproxy_hosts[0]
    dns, ips = tls.wanted_sans(p.ctx, host.name)
    p.certs[(host.address, 8404)] = cert(p, host.name, sans=(tuple(dns), tuple(i for i in ips if i != LB)))
    with pytest.raises(CheckWarning, match=r"^haproxy-01 stats :8404: .*its SANs \(.*\) are not those kbpg issues "
                                           r"now \(.*198\.18\.0\.10\): re-run `kbpg install`$"):
        c16_tls.stats(p, host)


def test_a_plaintext_login_accepted_fails_and_an_odd_error_warns(make) -> None:
    p = healthy(make, plaintext=lambda *a: FakePgConnection())
    host = p.ctx.db_hosts[0]
    with pytest.raises(CheckFailed, match=r"^db-master-01:5432: a plaintext login \(sslmode=disable\) as \w+ is "
                                          r"accepted; pg_hba must accept remote logins over TLS only \(hostssl\)"):
        c16_tls.db_node(p, host)

    def odd(*a):
        raise psycopg.OperationalError("timeout expired")

    p.plaintext = odd
    with pytest.raises(CheckWarning, match=r"^db-master-01: cannot tell whether a plaintext login is refused: timeout "
                                           r"expired$"):
        c16_tls.db_node(p, host)


def test_a_rest_api_answering_plain_http_fails(make) -> None:
    p = healthy(make, rest={"http://198.18.0.122:8008/": (401, "")})
    with pytest.raises(CheckFailed, match=r"^db-slave-02 REST :8008: plain HTTP answered 401: it must speak HTTPS "
                                          r"only; re-run `kbpg install`$"):
        c16_tls.rest(p, p.ctx.db_hosts[2])


def test_the_ca_missing_fails_and_near_its_end_warns(make, monkeypatch: pytest.MonkeyPatch) -> None:
    p = make()
    with pytest.raises(CheckFailed, match=r"credentials/tls/ca.crt is missing; run kbpg install"):
        c16_tls.ca(p)
    tls.ensure_ca(p.ctx.workdir)
    assert "days left" in c16_tls.ca(p)
    real = tls.cert_info
    monkeypatch.setattr(tls, "cert_info", lambda pem: dataclasses.replace(real(pem), days_left=20.0))
    with pytest.raises(CheckWarning, match=r"under renew_days"):
        c16_tls.ca(p)


# --- the real probes, against a local HTTPS server ------------------------------------------------------------

class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def https_server(tmp_path_factory: pytest.TempPathFactory):
    """An HTTPS server on 127.0.0.1 whose certificate is of the CA in the directory it yields with it."""
    workdir = tmp_path_factory.mktemp("server")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    serve_tls(server, workdir)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, workdir
    server.shutdown()
    server.server_close()


def _real(fake) -> ProbeContext:
    return ProbeContext(fake.ctx, timeout=2)


def test_every_psycopg_connection_of_the_diagnostics_is_verify_full_with_kbpgs_ca(
        make, monkeypatch: pytest.MonkeyPatch) -> None:
    from kbpg_tui.core.checks import probe as probe_module

    seen: list[dict] = []
    monkeypatch.setattr(probe_module.psycopg, "connect", lambda **kwargs: seen.append(kwargs) or FakePgConnection())
    p = _real(make())
    p.app(LB, 5432)
    p.monitor("198.18.0.120", 5432)
    p.pg("198.18.0.120", 5432, "u", "pw", sslmode="disable")
    ca = str((p.ctx.workdir / tls.CA_CERT).absolute())
    assert [(k["user"], k["sslmode"], k["sslrootcert"]) for k in seen] == [
        (p.values["POSTGRES_APP_USER"], "verify-full", ca), (p.values["POSTGRES_MONITOR_USER"], "verify-full", ca),
        ("u", "disable", ca)]
    p.settings.tls.enabled = False
    p.app(LB, 5432)
    assert "sslmode" not in seen[-1]
    assert not hasattr(p, "admin")  # no superuser login over TCP left in the diagnostics


def test_the_real_probe_verifies_a_server_of_kbpgs_ca(make, https_server) -> None:
    server, workdir = https_server
    p = _real(make())
    p.ctx.workdir = workdir  # the CA that issued the server's certificate
    said = c16_tls.judge(p, "local", False, "127.0.0.1", server.server_address[1])
    assert said.startswith("local: 'db-local' verifies with ca.crt for 127.0.0.1, ")


def test_the_real_probe_fails_a_server_of_another_ca(make, https_server, tmp_path: Path) -> None:
    server, _ = https_server
    p = _real(make())
    tls.ensure_ca(p.ctx.workdir)  # kbpg's own CA, not the server's
    with pytest.raises(CheckFailed, match=r"^local: 127.0.0.1:\d+: certificate does not verify for 127.0.0.1"):
        c16_tls.judge(p, "local", False, "127.0.0.1", server.server_address[1])


def test_the_plaintext_probe_never_sends_a_roles_own_password(make) -> None:
    sent: list[str] = []

    def plaintext(host, port, user, password, dbname):
        sent.append(password)
        raise psycopg.OperationalError(f'FATAL:  password authentication failed for user "{user}"')

    p = healthy(make, plaintext=plaintext)
    with pytest.raises(CheckFailed, match=r"a plaintext login \(sslmode=disable\) as \w+ is accepted"):
        c16_tls.db_node(p, p.ctx.db_hosts[0])  # it got as far as a password: pg_hba let plaintext through
    secrets = {value for name, value in p.values.items() if name.endswith(("PASS", "PASSWORD"))}
    assert sent and not set(sent) & secrets
