"""A real PostgreSQL server started here for the `pg` tests: its own data directory, socket directory and port
on 127.0.0.1, SCRAM for TCP logins, trust on the socket; stopped and removed at the end."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest


def pg_bindir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        pytest.fail("no PostgreSQL server binaries (apt-get install postgresql); .ci/run installs them")
    return Path(candidates[-1]).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalPostgres:
    """``initdb`` then ``pg_ctl start`` (as the postgres account when run as root: initdb refuses root)."""

    def __init__(self) -> None:
        self.bindir = pg_bindir()
        self.base = Path(tempfile.mkdtemp(prefix="kbpg-pg-"))
        self.data, self.sockets = self.base / "data", self.base / "sock"
        self.sockets.mkdir()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            for path in (self.base, self.sockets):
                os.chown(path, account.pw_uid, account.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        subprocess.run(self.as_user + [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                                       "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C"],
                       check=True, capture_output=True)

    def start(self) -> None:
        subprocess.run(self.as_user + [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-l",
                                       str(self.base / "log"), "-o",
                                       f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockets} "
                                       "-c password_encryption=scram-sha-256",
                                       "start"], check=True, capture_output=True)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(self.as_user + [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"],
                       capture_output=True)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def admin(self) -> psycopg.Connection:
        """The superuser, through the socket (trust)."""
        return psycopg.connect(host=str(self.sockets), port=self.port, user="postgres", dbname="postgres",
                               autocommit=True)

    def info(self) -> dict:
        return {"port": self.port, "sockets": str(self.sockets)}
