"""A second install on a healthy cluster changes nothing and keeps the data."""

from __future__ import annotations

import re
import time

import psycopg
import pytest

from .conftest import LB, Installed, kbpg

pytestmark = [pytest.mark.lab, pytest.mark.e2e]


def test_second_install_is_a_no_op_that_keeps_data(installed: Installed) -> None:
    values = installed.credentials
    marker = f"kept-{time.time_ns()}"
    with psycopg.connect(host=LB.address, port=5432, user=values["POSTGRES_APP_USER"], password=values["POSTGRES_APP_PASS"],
                         dbname=values["POSTGRES_DB"], connect_timeout=10, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kept_between_runs (note text)")
        conn.execute("INSERT INTO kept_between_runs VALUES (%s)", (marker,))
    result = kbpg(installed.workdir, "install", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = re.search(r"Summary: changed (\d+), unchanged (\d+), failed (\d+)", result.stdout)
    assert summary, result.stdout
    changed, unchanged, failed = map(int, summary.groups())
    assert (changed, failed) == (0, 0), result.stdout
    assert unchanged >= 30
    with psycopg.connect(host=LB.address, port=5432, user=values["POSTGRES_APP_USER"], password=values["POSTGRES_APP_PASS"],
                         dbname=values["POSTGRES_DB"], connect_timeout=10) as conn:
        assert conn.execute("SELECT count(*) FROM kept_between_runs WHERE note = %s", (marker,)).fetchone()[0] == 1
