"""The locally computed SCRAM-SHA-256 verifier, checked by a real PostgreSQL server started here."""

from __future__ import annotations

from typing import Iterator

import psycopg
import pytest

from kbpg_tui.core import credentials as creds

from .pg_local import LocalPostgres

pytestmark = pytest.mark.pg


@pytest.fixture(scope="module")
def pg_server() -> Iterator[dict]:
    server = LocalPostgres()
    try:
        server.start()
        yield server.info()
    finally:
        server.remove()


def _admin(pg: dict) -> psycopg.Connection:
    return psycopg.connect(host=pg["sockets"], port=pg["port"], user="postgres", dbname="postgres", autocommit=True)


def _login(pg: dict, user: str, password: str) -> bool:
    try:
        with psycopg.connect(host="127.0.0.1", port=pg["port"], user=user, password=password,
                             dbname="postgres", connect_timeout=5) as conn:
            return conn.execute("SELECT current_user").fetchone()[0] == user
    except psycopg.OperationalError as exc:
        assert "password authentication failed" in str(exc)
        return False


@pytest.mark.parametrize("password", [
    creds.generate_password(),
    "it's \"quoted\" $HOME `x` \\ % # spaced out",
    "non-ASCII: éàüß Ωμέγα 日本語",
    "Ａｂｃ－ｆｕｌｌｗｉｄｔｈ",  # SASLprep normalises these (NFKC)
])
def test_server_accepts_our_verifier(pg_server: dict, password: str) -> None:
    verifier = creds.scram_sha256_verifier(password)
    with _admin(pg_server) as conn:
        conn.execute("DROP ROLE IF EXISTS kb_test")
        # The verifier is a literal the server stores as is; the plain password never crosses the wire.
        conn.execute(psycopg.sql.SQL("CREATE ROLE kb_test LOGIN PASSWORD {}").format(psycopg.sql.Literal(verifier)))
        stored = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'kb_test'").fetchone()[0]
    assert stored == verifier
    assert _login(pg_server, "kb_test", password)
    assert not _login(pg_server, "kb_test", password + "x")
    assert not _login(pg_server, "kb_test", "wrong password")


def test_we_recognise_the_servers_own_verifier(pg_server: dict) -> None:
    password = "éàü server-side 'hash' $x"
    with _admin(pg_server) as conn:
        conn.execute("DROP ROLE IF EXISTS kb_test2")
        conn.execute(psycopg.sql.SQL("CREATE ROLE kb_test2 LOGIN PASSWORD {}").format(psycopg.sql.Literal(password)))
        stored = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'kb_test2'").fetchone()[0]
    assert stored.startswith("SCRAM-SHA-256$")
    assert creds.scram_matches(stored, password)
    assert not creds.scram_matches(stored, password + " ")


def test_verifier_is_deterministic_for_a_salt() -> None:
    salt = bytes(range(16))
    assert creds.scram_sha256_verifier("x", salt) == creds.scram_sha256_verifier("x", salt)
    assert creds.scram_sha256_verifier("x") != creds.scram_sha256_verifier("x")  # random salt by default
    assert not creds.scram_matches("md5abcdef", "x")
