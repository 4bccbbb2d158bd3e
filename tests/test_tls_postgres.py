"""kbpg's certificates served by a real PostgreSQL (ssl = on) started here: the SSLRequest probe, kbpg's own
verify-full connection (tls.libpq_params), and a renewed certificate picked up by a reload without dropping a
session."""

from __future__ import annotations

import os
import pwd
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest

from kbpg_tui.core import tls
from kbpg_tui.core.settings import Settings

from .pg_local import LocalPostgres

pytestmark = pytest.mark.pg

PASSWORD = "tls-test-Password-42"


def install_files(workdir: Path, server: LocalPostgres) -> Path:
    """The node certificate and key where the server's account can read them (the key 0600, its own)."""
    directory = server.base / "tls"
    directory.mkdir(exist_ok=True)
    cert, key = tls.node_files(workdir, "pg")
    for name, data, mode in (("node.crt", cert, 0o644), ("node.key", key, 0o600), ("ca.crt", tls.ca_pem(workdir), 0o644)):
        path = directory / name
        path.write_bytes(data)
        os.chmod(path, mode)
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        for path in (directory, *directory.iterdir()):
            os.chown(path, account.pw_uid, account.pw_gid)
    return directory


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    workdir = tmp_path_factory.mktemp("workdir")
    tls.ensure_ca(workdir)
    tls.ensure_node_cert(workdir, "pg", ["pg", "localhost"], ["127.0.0.1"], Settings())
    server = LocalPostgres()
    try:
        directory = install_files(workdir, server)
        with open(server.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(f"ssl = on\nssl_cert_file = '{directory}/node.crt'\nssl_key_file = '{directory}/node.key'\n"
                       f"ssl_ca_file = '{directory}/ca.crt'\nssl_min_protocol_version = 'TLSv1.2'\n")
        server.start()
        with server.admin() as admin:
            admin.execute(f"ALTER ROLE postgres PASSWORD '{PASSWORD}'")
        yield SimpleNamespace(server=server, workdir=workdir)
    finally:
        server.remove()
        shutil.rmtree(workdir, ignore_errors=True)


def connect(pg: SimpleNamespace, **params) -> psycopg.Connection:
    return psycopg.connect(host="127.0.0.1", port=pg.server.port, user="postgres", password=PASSWORD,
                           dbname="postgres", connect_timeout=5, autocommit=True, **params)


def test_the_probe_sees_postgres_certificate(pg: SimpleNamespace) -> None:
    info = tls.pg_tls_probe("127.0.0.1", pg.server.port, pg.workdir / tls.CA_CERT, "127.0.0.1", timeout=5)
    assert info.subject_cn == "pg"
    assert info.fingerprint == tls.cert_info(tls.node_files(pg.workdir, "pg")[0]).fingerprint
    with pytest.raises(tls.TlsProbeError) as failed:
        tls.pg_tls_probe("127.0.0.1", pg.server.port, pg.workdir / tls.CA_CERT, "db.example.com", timeout=5)
    assert failed.value.kind == "verify"


def test_the_probe_leaves_no_error_in_postgres_log(pg: SimpleNamespace) -> None:
    # Diagnostics probe every node again and again: a probe that reset its connection would fill the server's log
    # with "could not receive data from client: Connection reset by peer".
    log = pg.server.base / "log"
    start = log.stat().st_size
    for _ in range(3):
        tls.pg_tls_probe("127.0.0.1", pg.server.port, pg.workdir / tls.CA_CERT, "127.0.0.1", timeout=5)
    with pg.server.admin() as admin:  # a backend that logs nothing, to know the probes' backends are gone
        admin.execute("SELECT 1")
    time.sleep(0.5)
    with open(log, encoding="utf-8", errors="replace") as handle:
        handle.seek(start)
        written = handle.read()
    assert "could not receive data" not in written and "incomplete startup packet" not in written, written


def test_kbpg_connects_verify_full_with_the_ca(pg: SimpleNamespace) -> None:
    params = tls.libpq_params(pg.workdir, Settings())
    with connect(pg, **params) as conn:
        ssl_on, version = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert ssl_on and version in ("TLSv1.2", "TLSv1.3")


def test_verify_full_refuses_another_ca(pg: SimpleNamespace, tmp_path: Path) -> None:
    tls.ensure_ca(tmp_path)
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        connect(pg, **tls.libpq_params(tmp_path, Settings()))


def test_a_renewed_certificate_is_served_after_a_reload_and_no_session_drops(pg: SimpleNamespace) -> None:
    ca = pg.workdir / tls.CA_CERT
    before = tls.pg_tls_probe("127.0.0.1", pg.server.port, ca, "127.0.0.1", timeout=5).fingerprint
    with connect(pg, **tls.libpq_params(pg.workdir, Settings())) as session:
        changed, why = tls.ensure_node_cert(pg.workdir, "pg", ["pg", "localhost"], ["127.0.0.1"], Settings(),
                                            force=True)
        assert changed and why == "renewed: asked for"
        install_files(pg.workdir, pg.server)
        with pg.server.admin() as admin:
            assert admin.execute("SELECT pg_reload_conf()").fetchone()[0]
        deadline = time.monotonic() + 10
        after = before
        while after == before and time.monotonic() < deadline:
            time.sleep(0.2)
            after = tls.pg_tls_probe("127.0.0.1", pg.server.port, ca, "127.0.0.1", timeout=5).fingerprint
        assert after != before
        assert after == tls.cert_info(tls.node_files(pg.workdir, "pg")[0]).fingerprint
        assert session.execute("SELECT 1").fetchone() == (1,)  # the session opened before is still there


def test_a_server_with_ssl_off_refuses_tls(pg: SimpleNamespace) -> None:
    with pg.server.admin() as admin:
        admin.execute("ALTER SYSTEM SET ssl = off")
        admin.execute("SELECT pg_reload_conf()")
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                tls.pg_tls_probe("127.0.0.1", pg.server.port, pg.workdir / tls.CA_CERT, "127.0.0.1", timeout=5)
            except tls.TlsProbeError as exc:
                assert exc.kind == "refused" and "refuses TLS" in exc.reason
                break
            assert time.monotonic() < deadline, "ssl = off was not applied"
            time.sleep(0.2)
    finally:
        with pg.server.admin() as admin:
            admin.execute("ALTER SYSTEM RESET ssl")
            admin.execute("SELECT pg_reload_conf()")
