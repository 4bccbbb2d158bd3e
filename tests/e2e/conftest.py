"""End-to-end: kbpg installs onto the lab's bare hosts for real, then everything is checked for real.

The session's first install is killed in the middle of step 02 and run again, as an operator whose
terminal died would; the resumed run must end with a healthy cluster. While both run, every host's
process list is sampled to prove no password ever shows up in argv.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from kbpg_tui.core import credentials as creds
from kbpg_tui.core import tls
from kbpg_tui.core.lab import ssh as lab_ssh
from kbpg_tui.core.lab.topology import HOSTS
from kbpg_tui.core.settings import load_settings

CLUSTER_HOSTS = [h for h in HOSTS if h.kind in ("db", "haproxy", "backup")]  # every host kbpg installs onto
DB_HOSTS = [h for h in HOSTS if h.kind == "db"]
HAPROXY_HOSTS = [h for h in HOSTS if h.kind == "haproxy"]
BACKUP_HOST = next(h for h in HOSTS if h.kind == "backup")
LB = next(h for h in HOSTS if h.kind == "lb")
REPO = Path(__file__).resolve().parents[2]


def kbpg_command(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "kbpg_tui", "--workdir", str(workdir), *args]


def kbpg(workdir: Path, *args: str, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(kbpg_command(workdir, *args), capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})


def on_host(workdir: Path, address: str, command: str, stdin_text: str | None = None, timeout: float = 120) -> tuple[int, str, str]:
    """Run a command as root on a lab host (the lab's own access, not kbpg's)."""
    client = lab_ssh.connect(workdir, address, timeout=10)
    try:
        return lab_ssh.execute(client, command, stdin_text=stdin_text, timeout=timeout)
    finally:
        client.close()


def patroni_members(workdir: Path) -> list[dict]:
    for host in DB_HOSTS:
        code, out, _ = on_host(workdir, host.address, "patronictl -c /etc/patroni/config.yml list -f json")
        if code == 0:
            return json.loads(out)
    return []


REPLICA_ROLES = ("Replica", "Sync Standby", "Quorum Standby")


# --- connecting as kbpg's clients do: TLS verify-full with kbpg's CA, never the superuser over TCP ----------------

def tls_params(workdir: Path) -> dict:
    """libpq's TLS keywords for a client of the cluster in ``workdir``: verify-full with credentials/tls/ca.crt when
    its kbpg.toml has TLS on (the default), nothing when it is off."""
    path = workdir / "kbpg.toml"
    settings = load_settings(path) if path.exists() else None
    if settings is not None and not settings.tls.enabled:
        return {}
    return {"sslmode": "verify-full", "sslrootcert": str(tls.ca_path(workdir))}


def connect(workdir: Path, role: str = "app", host: str | None = None, port: int = 5432, dbname: str | None = None,
            **kwargs) -> psycopg.Connection:
    """A session as ``role``: "app" (the application's) or "monitor" (pg_monitor: read-only). The superuser logs in
    only on the DB nodes themselves: use :func:`superuser_sql`."""
    values = creds.read_env(workdir / creds.ENV_FILE)
    prefix = {"app": "POSTGRES_APP", "monitor": "POSTGRES_MONITOR"}[role]
    options = {"connect_timeout": 10, "autocommit": True, **tls_params(workdir), **kwargs}
    return psycopg.connect(host=host or LB.address, port=port, user=values[f"{prefix}_USER"],
                           password=values[f"{prefix}_PASS"],
                           dbname=dbname or (values["POSTGRES_DB"] if role == "app" else "postgres"), **options)


def leader_host(workdir: Path):
    members = wait_healthy(workdir)
    name = next(m["Member"] for m in members if m["Role"] == "Leader")
    return next(h for h in DB_HOSTS if h.name == name)


def superuser_sql(workdir: Path, sql: str, database: str = "postgres", host=None) -> str:
    """SQL as the superuser where it may log in: on a DB node itself (the leader by default), psql over the local
    socket; the SQL on stdin. Its output (unaligned, tuples only); AssertionError on failure."""
    target = host or leader_host(workdir)
    superuser = creds.read_env(workdir / creds.ENV_FILE)["POSTGRES_SUPERUSER"]
    code, out, err = on_host(workdir, target.address,
                             "runuser -u postgres -- psql -X -q -At -v ON_ERROR_STOP=1 -h /var/run/postgresql "
                             f"-p 5432 -U {superuser} -d {database}", stdin_text=sql)
    assert code == 0, f"{target.name}: {err or out}"
    return out


def wait_healthy(workdir: Path, timeout: float = 120) -> list[dict]:
    deadline = time.monotonic() + timeout
    members: list[dict] = []
    while time.monotonic() < deadline:
        members = patroni_members(workdir)
        leaders = [m for m in members if m["Role"] == "Leader" and m["State"] == "running"]
        # patronictl's roles of a replica: "Replica", and with synchronous replication "Sync Standby" / "Quorum Standby"
        streaming = [m for m in members if m["Role"] in REPLICA_ROLES and m["State"] == "streaming"]
        if len(leaders) == 1 and len(streaming) == 2 and len({m["TL"] for m in leaders + streaming}) == 1:
            return members
        time.sleep(1)
    raise AssertionError(f"cluster not healthy after {timeout} s: {members}")


class ProcessSampler(threading.Thread):
    """Samples `ps -eo args` on every cluster host until stopped."""

    def __init__(self, workdir: Path):
        super().__init__(daemon=True)
        self.workdir = workdir
        self.stop = threading.Event()
        self.samples: list[str] = []
        self.rounds = 0

    def run(self) -> None:
        clients = {}
        while not self.stop.is_set():
            for host in CLUSTER_HOSTS:
                try:
                    if host.name not in clients:
                        clients[host.name] = lab_ssh.connect(self.workdir, host.address, timeout=5)
                    _, out, _ = lab_ssh.execute(clients[host.name], "ps -eo args --no-headers", timeout=10)
                    self.samples.append(out)
                except Exception:  # a host busy installing may miss a beat; the next round samples again
                    clients.pop(host.name, None)
            self.rounds += 1
            time.sleep(0.2)
        for client in clients.values():
            client.close()


@dataclass
class Installed:
    workdir: Path
    killed_output: str
    output: str
    seconds: float
    ps_samples: list[str] = field(default_factory=list)
    ps_rounds: int = 0

    @property
    def credentials(self) -> creds.Credentials:
        return creds.read_env(self.workdir / creds.ENV_FILE)


@pytest.fixture(scope="session")
def installed(lab_workdir: Path) -> Installed:
    workdir = lab_workdir
    sampler = ProcessSampler(workdir)
    sampler.start()
    started = time.monotonic()
    # First run: killed hard as soon as step 02 has started Patroni, before the cluster has formed.
    process = subprocess.Popen(kbpg_command(workdir, "install", "--yes"), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    killed_lines = []
    assert process.stdout is not None
    for line in process.stdout:
        killed_lines.append(line)
        if line.split()[:3] == ["02", "cluster", "start"]:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    killed_output = "".join(killed_lines)
    assert process.returncode == -signal.SIGKILL, f"the first run was expected to be killed in step 02:\n{killed_output}"
    # Second run: the same command, resuming from whatever state the hosts are in.
    result = kbpg(workdir, "install", "--yes")
    seconds = time.monotonic() - started
    sampler.stop.set()
    sampler.join(timeout=30)
    assert result.returncode == 0, f"resumed install failed:\n{result.stdout}\n{result.stderr}"
    return Installed(workdir, killed_output, result.stdout, seconds, sampler.samples, sampler.rounds)


def own_writer_table(installed: "Installed") -> None:
    """The table of the tests' own writers (test_e2e_15_drill's OwnWriter), made once per module that uses them
    (writers starting together would race to create it)."""
    with connect(installed.workdir, "app", port=5432) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS test_own_writer (port int, at timestamptz DEFAULT clock_timestamp())")


def leader_and_timeline(installed: "Installed") -> tuple[str, int]:
    """The healthy cluster's (leader, timeline)."""
    members = wait_healthy(installed.workdir)
    (found,) = [(m["Member"], m["TL"]) for m in members if m["Role"] == "Leader"]
    return found
