"""kbpg's private CA and node certificates (kbpg_tui.core.tls): SANs, the renewal rules, file modes, the client
context, and the probes against local TLS servers (a PostgreSQL-like one in a thread, and a real PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import stat
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kbpg_tui.core import inventory as inv
from kbpg_tui.core import tls
from kbpg_tui.core.settings import Settings, TlsSettings

LOCAL_IPS = ["127.0.0.1"]


def settings(**tls_values) -> Settings:
    value = Settings()
    value.tls = TlsSettings(**tls_values)
    return value


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def issue(workdir: Path, name: str = "db-1", dns: list[str] | None = None, ips: list[str] | None = None,
          **tls_values) -> tuple[bool, str]:
    tls.ensure_ca(workdir)
    return tls.ensure_node_cert(workdir, name, dns or [name], ips or LOCAL_IPS, settings(**tls_values))


def context(real_inventory: Path, lb: str = "10.0.0.10") -> SimpleNamespace:
    value = Settings()
    value.network.lb_address = lb
    return SimpleNamespace(selection=inv.load_selection(real_inventory), settings=value)


# --- SANs ---------------------------------------------------------------------------------------------------------

def test_a_db_node_carries_its_names_the_lb_and_every_haproxy_address(real_inventory: Path) -> None:
    dns, ips = tls.wanted_sans(context(real_inventory), "db-slave-01")
    assert dns == ["db-slave-01", "db-slave1.keybuzz.io"]
    # Clients of LB:5432/5433 and of haproxy-0N:5432 reach it through HAProxy's TCP pass-through.
    assert ips == ["10.0.0.121", "10.0.0.10", "10.0.0.11", "10.0.0.12"]


def test_a_haproxy_node_carries_its_names_and_the_lb(real_inventory: Path) -> None:
    dns, ips = tls.wanted_sans(context(real_inventory), "haproxy-02")
    assert dns == ["haproxy-02", "haproxy2.keybuzz.io"]
    assert ips == ["10.0.0.12", "10.0.0.10"]


def test_an_unselected_host_has_no_certificate(real_inventory: Path) -> None:
    with pytest.raises(tls.TlsError, match="not a selected DB or HAProxy node"):
        tls.wanted_sans(context(real_inventory), "mariadb-01")


def test_the_issued_certificate_has_exactly_the_wanted_sans(tmp_path: Path, real_inventory: Path) -> None:
    dns, ips = tls.wanted_sans(context(real_inventory), "db-master-01")
    changed, why = issue(tmp_path, "db-master-01", dns, ips)
    assert (changed, why) == (True, "issued")
    info = tls.cert_info(tls.node_files(tmp_path, "db-master-01")[0])
    assert info.subject_cn == "db-master-01"
    assert list(info.sans_dns) == dns and list(info.sans_ip) == ips
    assert info.issuer_cn == tls.cert_info(tls.ca_pem(tmp_path)).subject_cn
    assert 364 < info.days_left <= 365 and info.not_after.tzinfo is not None
    assert len(info.fingerprint) == 64


# --- the CA -------------------------------------------------------------------------------------------------------

def test_the_ca_is_made_once_and_kept(tmp_path: Path) -> None:
    changed, detail = tls.ensure_ca(tmp_path)
    assert changed and "made the CA" in detail
    first = tls.ca_pem(tmp_path), (tmp_path / tls.CA_KEY).read_bytes()
    changed, detail = tls.ensure_ca(tmp_path)
    assert not changed and "kept" in detail
    assert (tls.ca_pem(tmp_path), (tmp_path / tls.CA_KEY).read_bytes()) == first
    ca = x509.load_pem_x509_certificate(first[0])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp256r1"


def test_files_and_directory_modes(tmp_path: Path) -> None:
    old = os.umask(0)  # whatever the umask, keys are 0600 and the directory 0700
    try:
        issue(tmp_path)
    finally:
        os.umask(old)
    directory = tmp_path / tls.TLS_DIR
    assert mode(directory) == 0o700 and mode(directory.parent) == 0o700
    assert mode(tmp_path / tls.CA_KEY) == 0o600 and mode(tmp_path / tls.CA_CERT) == 0o644
    assert mode(directory / "db-1.key") == 0o600 and mode(directory / "db-1.crt") == 0o644


def test_loosened_modes_are_tightened_again(tmp_path: Path) -> None:
    issue(tmp_path)
    directory = tmp_path / tls.TLS_DIR
    os.chmod(directory, 0o755)
    os.chmod(tmp_path / tls.CA_KEY, 0o644)
    os.chmod(directory / "db-1.key", 0o640)
    changed, detail = tls.ensure_ca(tmp_path)
    assert changed and "ca.key set to 0600" in detail
    changed, detail = tls.ensure_node_cert(tmp_path, "db-1", ["db-1"], LOCAL_IPS, settings())
    assert changed and "db-1.key set to 0600" in detail
    assert mode(directory) == 0o700 and mode(tmp_path / tls.CA_KEY) == 0o600 and mode(directory / "db-1.key") == 0o600


def test_a_ca_without_its_key_is_refused_not_replaced(tmp_path: Path) -> None:
    tls.ensure_ca(tmp_path)
    before = tls.ca_pem(tmp_path)
    (tmp_path / tls.CA_KEY).unlink()
    with pytest.raises(tls.TlsError, match="ca.key is missing: the CA cannot sign; restore it"):
        tls.ensure_ca(tmp_path)
    assert tls.ca_pem(tmp_path) == before and not (tmp_path / tls.CA_KEY).exists()


def test_a_ca_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    tls.ensure_ca(tmp_path)
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / tls.CA_KEY).write_bytes(other)
    with pytest.raises(tls.TlsError, match="is not the key of"):
        tls.ensure_ca(tmp_path)


def test_an_expired_ca_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tls.ensure_ca(tmp_path)
    before = tls.ca_pem(tmp_path)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=tls.CA_DAYS + 1)
    monkeypatch.setattr(tls, "_now", lambda: later)
    changed, detail = tls.ensure_ca(tmp_path)
    assert changed and "the old one expired" in detail and tls.ca_pem(tmp_path) != before


# --- renewal rules ------------------------------------------------------------------------------------------------

def test_a_valid_certificate_is_kept(tmp_path: Path) -> None:
    issue(tmp_path)
    files = tls.node_files(tmp_path, "db-1")
    changed, detail = tls.ensure_node_cert(tmp_path, "db-1", ["db-1"], LOCAL_IPS, settings())
    assert not changed and "days left" in detail
    assert tls.node_files(tmp_path, "db-1") == files


def test_a_certificate_expiring_within_renew_days_is_renewed_with_a_new_key(tmp_path: Path) -> None:
    issue(tmp_path, cert_days=20)  # a short validity, as if it were issued 345 days ago
    cert, key = tls.node_files(tmp_path, "db-1")
    changed, why = tls.ensure_node_cert(tmp_path, "db-1", ["db-1"], LOCAL_IPS, settings(renew_days=30))
    assert changed and why == "renewed: expires in 20 days"
    new_cert, new_key = tls.node_files(tmp_path, "db-1")
    assert new_cert != cert and new_key != key
    assert tls.cert_info(new_cert).days_left > 364


def test_the_renewal_threshold_is_renew_days(tmp_path: Path) -> None:
    issue(tmp_path, cert_days=40)
    changed, _ = tls.ensure_node_cert(tmp_path, "db-1", ["db-1"], LOCAL_IPS, settings(renew_days=30))
    assert not changed  # 40 days left: not yet
    changed, why = tls.ensure_node_cert(tmp_path, "db-1", ["db-1"], LOCAL_IPS, settings(renew_days=45))
    assert changed and why == "renewed: expires in 40 days"


def test_an_expired_certificate_is_renewed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    issue(tmp_path)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=400)
    monkeypatch.setattr(tls, "_now", lambda: later)
    changed, why = tls.ensure_node_cert(tmp_path, "db-1", ["db-1"], LOCAL_IPS, settings())
    assert changed and why.startswith("renewed: expired 35 days ago")


def test_a_san_change_reissues(tmp_path: Path, real_inventory: Path) -> None:
    ctx = context(real_inventory)
    dns, ips = tls.wanted_sans(ctx, "haproxy-01")
    issue(tmp_path, "haproxy-01", dns, ips)
    key = tls.node_files(tmp_path, "haproxy-01")[1]
    dns, ips = tls.wanted_sans(context(real_inventory, lb="10.0.0.9"), "haproxy-01")  # the LB moved
    changed, why = tls.ensure_node_cert(tmp_path, "haproxy-01", dns, ips, settings())
    assert changed and why == "reissued: SANs changed (adds IP:10.0.0.9; drops IP:10.0.0.10)"
    cert, new_key = tls.node_files(tmp_path, "haproxy-01")
    assert "10.0.0.9" in tls.cert_info(cert).sans_ip and new_key != key


def test_san_order_and_case_do_not_count(tmp_path: Path) -> None:
    issue(tmp_path, dns=["db-1", "db-1.example.com"], ips=["127.0.0.1", "127.0.0.2"])
    changed, _ = tls.ensure_node_cert(tmp_path, "db-1", ["DB-1.example.com", "db-1"], ["127.0.0.2", "127.0.0.1"],
                                      settings())
    assert not changed


def test_a_certificate_of_another_ca_is_reissued_and_the_ca_kept(tmp_path: Path) -> None:
    issue(tmp_path)
    ca = tls.ca_pem(tmp_path)
    (tmp_path / tls.CA_CERT).unlink()
    (tmp_path / tls.CA_KEY).unlink()
    tls.ensure_ca(tmp_path)  # a new CA (the operator removed the old one)
    assert tls.ca_pem(tmp_path) != ca
    changed, why = tls.ensure_node_cert(tmp_path, "db-1", ["db-1"], LOCAL_IPS, settings())
    assert changed and why == "reissued: not signed by the current CA"
    assert tls.cert_info(tls.node_files(tmp_path, "db-1")[0]).issuer_cn == tls.cert_info(tls.ca_pem(tmp_path)).subject_cn


def test_a_key_not_matching_is_reissued(tmp_path: Path) -> None:
    issue(tmp_path)
    issue(tmp_path, "db-2")
    directory = tmp_path / tls.TLS_DIR
    (directory / "db-1.key").write_bytes((directory / "db-2.key").read_bytes())
    changed, why = tls.ensure_node_cert(tmp_path, "db-1", ["db-1"], LOCAL_IPS, settings())
    assert changed and why == "reissued: the key did not match the certificate"


@pytest.mark.parametrize("damage", ["cert missing", "key missing", "cert garbage"])
def test_a_damaged_certificate_is_reissued(tmp_path: Path, damage: str) -> None:
    issue(tmp_path)
    directory = tmp_path / tls.TLS_DIR
    if damage == "cert missing":
        (directory / "db-1.crt").unlink()
    elif damage == "key missing":
        (directory / "db-1.key").unlink()
    else:
        (directory / "db-1.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n")
    changed, why = tls.ensure_node_cert(tmp_path, "db-1", ["db-1"], LOCAL_IPS, settings())
    assert changed and why.startswith("reissued:")
    cert, key = tls.node_files(tmp_path, "db-1")
    assert tls.cert_info(cert).subject_cn == "db-1" and b"PRIVATE KEY" in key


def test_force_reissues_but_keeps_the_ca(tmp_path: Path, real_inventory: Path) -> None:
    ctx = context(real_inventory)
    ctx.workdir = tmp_path
    first = tls.renew_all(ctx)
    assert [name for name, _changed, _detail in first] == ["CA", "db-master-01", "db-slave-01", "db-slave-02",
                                                          "haproxy-01", "haproxy-02"]
    assert all(changed for _name, changed, _detail in first)
    ca = tls.ca_pem(tmp_path)
    assert not any(changed for _name, changed, _detail in tls.renew_all(ctx))
    forced = tls.renew_all(ctx, force=True)
    assert forced[0][1] is False and all(changed for _name, changed, _detail in forced[1:])
    assert tls.ca_pem(tmp_path) == ca


def test_a_host_name_cannot_escape_the_directory(tmp_path: Path) -> None:
    tls.ensure_ca(tmp_path)
    with pytest.raises(tls.TlsError, match="cannot name a certificate file"):
        tls.ensure_node_cert(tmp_path, "../db-1", ["db-1"], LOCAL_IPS, settings())


def test_node_files_and_ca_pem_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(tls.TlsError, match="ca.crt is missing; run kbpg install"):
        tls.ca_pem(tmp_path)
    tls.ensure_ca(tmp_path)
    with pytest.raises(tls.TlsError, match="db-9.crt is missing"):
        tls.node_files(tmp_path, "db-9")


# --- clients ------------------------------------------------------------------------------------------------------

def test_libpq_params(tmp_path: Path) -> None:
    assert tls.libpq_params(tmp_path, settings(enabled=False)) == {}
    params = tls.libpq_params(Path(os.path.relpath(tmp_path)), settings())
    assert params == {"sslmode": "verify-full", "sslrootcert": str(tmp_path.resolve() / tls.CA_CERT)}
    assert Path(params["sslrootcert"]).is_absolute()


def test_client_context_verifies_with_the_ca_only(tmp_path: Path) -> None:
    tls.ensure_ca(tmp_path)
    context = tls.client_context(tmp_path)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert len(context.get_ca_certs()) == 1  # not the system's CAs


# --- probes -------------------------------------------------------------------------------------------------------

class Server:
    """A TLS server on 127.0.0.1 in a thread, with a node certificate of ``workdir``; ``postgres``: answers
    PostgreSQL's SSLRequest first (``answer``: b"S" then TLS, b"N": no TLS)."""

    def __init__(self, workdir: Path, name: str, postgres: bool = False, answer: bytes = b"S", hold: float = 0):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.hold = hold  # after the handshake, wait this long without reading (a server that ignores the close)
        directory = workdir / tls.TLS_DIR
        self.context.load_cert_chain(directory / f"{name}.crt", directory / f"{name}.key")
        self.postgres, self.answer = postgres, answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    if self.postgres:
                        self.requests.append(conn.recv(8))
                        conn.sendall(self.answer)
                        if self.answer != b"S":
                            continue
                    with self.context.wrap_socket(conn, server_side=True) as secure:
                        time.sleep(self.hold)
                        secure.recv(1)
                except (OSError, ssl.SSLError):
                    pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    issue(tmp_path, "db-1", ["db-1", "localhost"], ["127.0.0.1"])
    yield tmp_path


def test_tls_probe_verifies_chain_and_ip(workdir: Path) -> None:
    server = Server(workdir, "db-1")
    try:
        info = tls.tls_probe("127.0.0.1", server.port, workdir / tls.CA_CERT, "127.0.0.1", timeout=5)
        assert info.subject_cn == "db-1" and info.fingerprint == tls.cert_info(tls.node_files(workdir, "db-1")[0]).fingerprint
        assert tls.tls_probe("127.0.0.1", server.port, workdir / tls.CA_CERT, "localhost", timeout=5).subject_cn == "db-1"
    finally:
        server.close()


def test_a_server_that_ignores_the_close_costs_at_most_a_second(workdir: Path) -> None:
    server = Server(workdir, "db-1", hold=8)
    try:
        started = time.monotonic()
        assert tls.tls_probe("127.0.0.1", server.port, workdir / tls.CA_CERT, "127.0.0.1", timeout=5).subject_cn == "db-1"
        assert time.monotonic() - started < 2
    finally:
        server.close()


def test_tls_probe_refuses_a_name_not_in_the_sans(workdir: Path) -> None:
    server = Server(workdir, "db-1")
    try:
        with pytest.raises(tls.TlsProbeError, match="does not verify for 127.0.0.2") as failed:
            tls.tls_probe("127.0.0.1", server.port, workdir / tls.CA_CERT, "127.0.0.2", timeout=5)
        assert failed.value.kind == "verify"
    finally:
        server.close()


def test_tls_probe_refuses_a_certificate_of_another_ca(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    other = tmp_path_factory.mktemp("other")
    tls.ensure_ca(other)
    server = Server(workdir, "db-1")
    try:
        with pytest.raises(tls.TlsProbeError) as failed:
            tls.tls_probe("127.0.0.1", server.port, other / tls.CA_CERT, "127.0.0.1", timeout=5)
        assert failed.value.kind == "verify" and "unable to get local issuer certificate" in failed.value.reason
    finally:
        server.close()


def test_a_probe_of_a_closed_port_is_unreachable(workdir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(tls.TlsProbeError) as failed:
        tls.pg_tls_probe("127.0.0.1", port, workdir / tls.CA_CERT, "127.0.0.1", timeout=2)
    assert failed.value.kind == "unreachable"


def test_pg_tls_probe_sends_the_ssl_request_then_verifies(workdir: Path) -> None:
    server = Server(workdir, "db-1", postgres=True)
    try:
        info = tls.pg_tls_probe("127.0.0.1", server.port, workdir / tls.CA_CERT, "127.0.0.1", timeout=5)
        assert info.subject_cn == "db-1"
        assert server.requests == [struct.pack("!II", 8, 80877103)]
    finally:
        server.close()


def test_pg_tls_probe_reports_a_server_without_tls(workdir: Path) -> None:
    server = Server(workdir, "db-1", postgres=True, answer=b"N")
    try:
        with pytest.raises(tls.TlsProbeError, match="refuses TLS") as failed:
            tls.pg_tls_probe("127.0.0.1", server.port, workdir / tls.CA_CERT, "127.0.0.1", timeout=5)
        assert failed.value.kind == "refused"
    finally:
        server.close()


def test_a_plain_tls_server_is_not_taken_for_postgres(workdir: Path) -> None:
    server = Server(workdir, "db-1")  # answers the SSLRequest with a TLS alert, not "S"
    try:
        with pytest.raises(tls.TlsProbeError) as failed:
            tls.pg_tls_probe("127.0.0.1", server.port, workdir / tls.CA_CERT, "127.0.0.1", timeout=5)
        assert failed.value.kind in ("refused", "unreachable")
    finally:
        server.close()


def test_a_certificate_that_ends_with_its_ca_is_not_reissued_on_every_run(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # A CA with 25 days left (under renew_days): the node certificate ends with it, and stays until the CA changes.
    monkeypatch.setattr(tls, "CA_DAYS", 25)
    assert issue(tmp_path) == (True, "issued")
    first = (tmp_path / tls.TLS_DIR / "db-1.crt").read_bytes()
    for _ in range(2):
        changed, why = issue(tmp_path)
        assert not changed, why
    assert (tmp_path / tls.TLS_DIR / "db-1.crt").read_bytes() == first
