"""Every path an application takes: through the LB stand-in and through each HAProxy node directly."""

from __future__ import annotations

import urllib.error
import urllib.request

import psycopg
import pytest

from kbpg_tui.core import cluster, tls

from .conftest import HAPROXY_HOSTS, LB, Installed

pytestmark = [pytest.mark.lab, pytest.mark.e2e]

ENTRY_POINTS = [("LB", LB.address)] + [(h.name, h.address) for h in HAPROXY_HOSTS]


def connect(installed: Installed, address: str, port: int, user: str | None = None, password: str | None = None,
            dbname: str | None = None) -> psycopg.Connection:
    values = installed.credentials
    return psycopg.connect(host=address, port=port, user=user or values["POSTGRES_APP_USER"],
                           password=password if password is not None else values["POSTGRES_APP_PASS"],
                           dbname=dbname or values["POSTGRES_DB"], connect_timeout=10, autocommit=True)


@pytest.mark.parametrize("name, address", ENTRY_POINTS)
def test_write_port_reaches_the_primary(installed: Installed, name: str, address: str) -> None:
    with connect(installed, address, 5432) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        conn.execute("CREATE TABLE IF NOT EXISTS path_check (via text)")
        conn.execute("INSERT INTO path_check VALUES (%s)", (name,))


@pytest.mark.parametrize("name, address", ENTRY_POINTS)
def test_read_port_lands_on_a_replica(installed: Installed, name: str, address: str) -> None:
    with connect(installed, address, 5433) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True


@pytest.mark.parametrize("name, address", ENTRY_POINTS)
def test_pgbouncer_scram_login_wrong_password_and_show_pools(installed: Installed, name: str, address: str) -> None:
    values = installed.credentials
    with connect(installed, address, 6432) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == values["POSTGRES_APP_USER"]
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
    with pytest.raises(psycopg.OperationalError, match="password authentication failed|SASL"):
        connect(installed, address, 6432, password="not-the-password").close()
    with connect(installed, address, 6432, user=values["PGBOUNCER_ADMIN_USER"], password=values["PGBOUNCER_ADMIN_PASS"],
                 dbname="pgbouncer") as admin:
        result = admin.pgconn.exec_(b"SHOW POOLS")  # the console speaks only the simple protocol
        assert result.status == psycopg.pq.ExecStatus.TUPLES_OK
        columns = [result.fname(i).decode() for i in range(result.nfields)]
        assert "pool_mode" in columns
        mode = result.get_value(0, columns.index("pool_mode")).decode()
        assert mode == "transaction"


def test_pgvector_distance_and_hnsw_index_through_pgbouncer(installed: Installed) -> None:
    with connect(installed, LB.address, 6432) as conn:
        assert conn.execute("SELECT '[1,2,3]'::vector <-> '[1,2,4]'::vector").fetchone()[0] == 1
        conn.execute("DROP TABLE IF EXISTS items")
        conn.execute("CREATE TABLE items (id bigserial PRIMARY KEY, embedding vector(3))")
        conn.execute("INSERT INTO items (embedding) SELECT ARRAY[random(), random(), random()]::vector FROM generate_series(1, 2000)")
        conn.execute("CREATE INDEX items_embedding ON items USING hnsw (embedding vector_l2_ops)")
        conn.execute("ANALYZE items")
        # In transaction pooling, SET and the query must share a transaction to share a server connection.
        with conn.transaction():
            conn.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN SELECT id FROM items ORDER BY embedding <-> '[0.5,0.5,0.5]' LIMIT 5"))
            rows = conn.execute("SELECT id FROM items ORDER BY embedding <-> '[0.5,0.5,0.5]' LIMIT 5").fetchall()
        assert "items_embedding" in plan, plan
        assert len(rows) == 5


@pytest.mark.parametrize("host", HAPROXY_HOSTS, ids=[h.name for h in HAPROXY_HOSTS])
def test_haproxy_stats_need_the_password(installed: Installed, host) -> None:
    url = f"https://{host.address}:8404/;csv"  # over HTTPS, its certificate verified with kbpg's CA
    context = tls.client_context(installed.workdir)
    with pytest.raises(urllib.error.HTTPError) as refused:
        cluster.direct_opener(context).open(url, timeout=10)
    assert refused.value.code == 401
    values = installed.credentials
    manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    manager.add_password(None, url, values["HAPROXY_STATS_USER"], values["HAPROXY_STATS_PASSWORD"])
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context),
                                         urllib.request.HTTPBasicAuthHandler(manager))
    body = opener.open(url, timeout=10).read().decode()
    up = [line.split(",")[1] for line in body.splitlines() if line.startswith("postgres_write,") and ",UP" in line
          and line.split(",")[1] not in ("FRONTEND", "BACKEND")]
    assert len(up) == 1
