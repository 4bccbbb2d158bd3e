"""`kbpg credentials rotate` on the lab's live cluster.

- Everything rotated under two writers (LB:6432 and LB:5432, connections kept): no failover (same leader and
  timeline), no replica out of pg_stat_replication for more than 5 s, no failed write, the new values accepted and
  the old ones refused everywhere they are used, diagnostics green (check 17 included).
- Killed (SIGKILL) at two points, then the same command: postgres.env keeps the old values until the end (never a new
  value before every host accepts it), the install refuses to run meanwhile, and the re-run ends rotated and green.
- One name rotated changes only that name's users and files (the others' files unchanged byte for byte).
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import threading
import time

import pytest

from kbpg_tui.core import credentials as creds
from kbpg_tui.core import rotation
from kbpg_tui.core.steps import s02_patroni, s03_haproxy, s04_pgbouncer

from .conftest import (
    DB_HOSTS,
    HAPROXY_HOSTS,
    LB,
    REPO,
    Installed,
    kbpg,
    kbpg_command,
    leader_and_timeline,
    leader_host,
    on_host,
    own_writer_table,
    superuser_sql,
)
from .test_e2e_15_drill import wait_green
from .test_e2e_17_tls_rolling import under_writers

pytestmark = [pytest.mark.lab, pytest.mark.e2e]

MAX_REPLICA_GAP = 5.0
FILES = {"db": (s02_patroni.CONFIG_PATH,),
         "haproxy": (s03_haproxy.CONFIG_PATH, s04_pgbouncer.CONFIG_PATH, s04_pgbouncer.USERLIST_PATH)}


@pytest.fixture(scope="module", autouse=True)
def own_table(installed: Installed) -> None:
    own_writer_table(installed)


class ReplicaWatch(threading.Thread):
    """pg_stat_replication on the leader, read every ~0.3 s over SSH (the superuser over the local socket: no
    password a rotation changes); the longest time each replica was not streaming."""

    def __init__(self, installed: Installed):
        super().__init__(daemon=True)
        self.workdir = installed.workdir
        self.leader = leader_host(installed.workdir)
        self.replicas = [h.name for h in DB_HOSTS if h.name != self.leader.name]
        self.stop = threading.Event()
        self.samples: list[tuple[float, set[str]]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                out = superuser_sql(self.workdir, "SELECT application_name FROM pg_stat_replication "
                                                  "WHERE state = 'streaming';", host=self.leader)
                self.samples.append((time.monotonic(), set(out.split())))
            except AssertionError:
                pass
            time.sleep(0.3)

    def finish(self) -> dict[str, float]:
        self.stop.set()
        self.join(30)
        gaps = {}
        for name in self.replicas:
            longest, since = 0.0, None
            for moment, streaming in self.samples:
                if name in streaming:
                    if since is not None:
                        longest = max(longest, moment - since)
                    since = None
                elif since is None:
                    since = moment
            if since is not None:
                longest = max(longest, self.samples[-1][0] - since)
            gaps[name] = longest
        return gaps


def login_on_node(installed: Installed, node, password: str, user_key: str = "POSTGRES_APP_USER",
                  dbname: str | None = None, port: int = 5432) -> str:
    """A psql login from ``node`` to its own address (the app role may log in from the DB and HAProxy nodes), TLS
    verify-full; the password on stdin. "ok" or the server's words."""
    values = installed.credentials
    ca = "/etc/patroni/tls/ca.crt"
    conninfo = (f"host={node.address} port={port} user={values[user_key]} "
                f"dbname={dbname or values['POSTGRES_DB']} sslmode=verify-full sslrootcert={ca} connect_timeout=10")
    code, out, err = on_host(installed.workdir, node.address,
                             f"read -r PGPASSWORD; export PGPASSWORD; psql -X -At '{conninfo}' -c 'SELECT 1'",
                             stdin_text=password + "\n")
    return "ok" if code == 0 and out.strip() == "1" else (err or out).strip()


def app_login_everywhere(installed: Installed, password: str) -> dict[str, str]:
    """The app role's login through the LB (5432, 5433, 6432), through each HAProxy node's 5432, 5433 and 6432 (from
    this machine, as a client), and from each DB node to its own PostgreSQL (psql there: pg_hba admits the app role
    from the cluster's nodes)."""
    import psycopg

    from .conftest import tls_params

    values = installed.credentials
    seen = {}
    for name, address in [("LB", LB.address)] + [(h.name, h.address) for h in HAPROXY_HOSTS]:
        for port in (5432, 5433, 6432):
            try:
                with psycopg.connect(host=address, port=port, user=values["POSTGRES_APP_USER"], password=password,
                                     dbname=values["POSTGRES_DB"], connect_timeout=10,
                                     **tls_params(installed.workdir)) as c:
                    c.execute("SELECT 1")
                seen[f"{name}:{port}"] = "ok"
            except psycopg.OperationalError as exc:
                seen[f"{name}:{port}"] = str(exc).strip().splitlines()[-1]
    for node in DB_HOSTS:
        seen[f"{node.name}:5432"] = login_on_node(installed, node, password)
    return seen


def fingerprints(installed: Installed) -> dict[str, str]:
    """sha256 of every configuration file that holds a secret, on every host; and each role's stored verifier."""
    seen = {}
    for kind, hosts in (("db", DB_HOSTS), ("haproxy", HAPROXY_HOSTS)):
        for host in hosts:
            for path in FILES[kind]:
                code, out, err = on_host(installed.workdir, host.address, f"sha256sum {path}")
                assert code == 0, err
                seen[f"{host.name}:{path}"] = out.split()[0]
    roles = superuser_sql(installed.workdir, "SELECT rolname, rolpassword FROM pg_authid WHERE rolname NOT LIKE 'pg\\_%';")
    for line in roles.splitlines():
        name, _, verifier = line.partition("|")
        seen[f"role {name}"] = hashlib.sha256(verifier.encode()).hexdigest()
    return seen


def test_everything_rotated_under_writers_without_failover_or_failed_write(installed: Installed) -> None:
    before = installed.credentials
    leader = leader_and_timeline(installed)
    watch = ReplicaWatch(installed)
    watch.start()
    print("\nkbpg credentials rotate (every name) under writers:")
    started = time.monotonic()
    result, writers = under_writers(installed, "credentials", "rotate", "--yes")
    elapsed = time.monotonic() - started - 6  # under_writers waits 3 s before and after the command
    gaps = watch.finish()
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"  rotation took {elapsed:.1f} s; replicas' longest time out of streaming: "
          + ", ".join(f"{name} {gap:.1f} s" for name, gap in gaps.items()))
    assert leader_and_timeline(installed) == leader, "the rotation caused a failover"
    for port, writer in writers.items():
        assert writer.failures == [], f"LB:{port}: {len(writer.failures)} failed writes: {sorted(set(writer.failures))}"
    assert all(gap <= MAX_REPLICA_GAP for gap in gaps.values()), gaps
    after = installed.credentials
    for name in rotation.ROTATABLE:
        assert after[name] != before[name], f"{name} was not rotated"
    for name in set(before) - set(rotation.ROTATABLE):
        assert after[name] == before[name], f"{name} changed"
    assert creds.read_env(installed.workdir / rotation.PREV_FILE) == before
    assert not (installed.workdir / rotation.PENDING_FILE).exists()
    for secret in rotation.ROTATABLE:
        assert before[secret] not in result.stdout + result.stderr and after[secret] not in result.stdout
    new = app_login_everywhere(installed, after["POSTGRES_APP_PASS"])
    assert all(answer == "ok" for answer in new.values()), {w: a for w, a in new.items() if a != "ok"}
    old = app_login_everywhere(installed, before["POSTGRES_APP_PASS"])
    refusals = ("password authentication failed", "SASL authentication failed")  # PostgreSQL's, PgBouncer's words
    accepted = [where for where, answer in old.items() if not any(words in answer for words in refusals)]
    assert not accepted, f"the old app password was not refused (by its password) at: {[(w, old[w]) for w in accepted]}"
    wait_green(installed)  # green within 60 s (a run that failed names each failing check; CI once lost an SSH link)
    diagnose = kbpg(installed.workdir, "diagnose", "--json")
    assert '"secrets"' in diagnose.stdout
    # The replicas' own copy of the replication password (Patroni's passfile) is the new one: their walsenders are
    # ended on the primary and they must log in again, with it, and stream within seconds.
    leader = leader_host(installed.workdir)
    superuser_sql(installed.workdir, "SELECT pg_terminate_backend(pid) FROM pg_stat_replication;", host=leader)
    deadline = time.monotonic() + 20
    while True:
        streaming = set(superuser_sql(installed.workdir, "SELECT application_name FROM pg_stat_replication WHERE "
                                                         "state = 'streaming';", host=leader).split())
        if streaming >= set(watch.replicas):
            break
        assert time.monotonic() < deadline, f"replicas not streaming again 20 s after their walsenders ended: {streaming}"
        time.sleep(0.5)
    print(f"  replicas streaming again {20 - (deadline - time.monotonic()):.1f} s after their walsenders were ended")


def _killed_at(installed: Installed, header: str) -> str:
    """`kbpg credentials rotate --yes`, SIGKILLed as soon as the step ``header`` (e.g. "== R2") starts."""
    process = subprocess.Popen(kbpg_command(installed.workdir, "credentials", "rotate", "--yes"), cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if line.startswith(header):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=120)
    output = "".join(lines)
    assert process.returncode == -signal.SIGKILL, f"the rotation was expected to be killed at {header}:\n{output}"
    return output


@pytest.mark.parametrize("header", ["== R2", "== R5"])
def test_a_rotation_killed_midway_is_finished_by_the_same_command(installed: Installed, header: str) -> None:
    env_path = installed.workdir / creds.ENV_FILE
    before_bytes = env_path.read_bytes()
    before = installed.credentials
    _killed_at(installed, header)
    # Killed after the roles (and Patroni) changed: postgres.env still holds exactly the old values, the new ones wait
    # in rotation.pending (0600); an install, which would put the old values back, refuses to run.
    assert env_path.read_bytes() == before_bytes
    pending = creds.read_env(installed.workdir / rotation.PENDING_FILE)
    assert set(pending) == set(rotation.ROTATABLE)
    install = kbpg(installed.workdir, "install", "--yes")
    assert install.returncode != 0 and "kbpg credentials rotate" in install.stdout + install.stderr
    assert env_path.read_bytes() == before_bytes
    result = kbpg(installed.workdir, "credentials", "rotate", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "finishing the pending rotation" in result.stdout
    after = installed.credentials
    assert all(after[name] == pending[name] for name in rotation.ROTATABLE)
    assert all(after[name] != before[name] for name in rotation.ROTATABLE)
    assert not (installed.workdir / rotation.PENDING_FILE).exists()
    wait_green(installed)


@pytest.mark.parametrize("name, touched", [
    ("HAPROXY_STATS_PASSWORD", {s03_haproxy.CONFIG_PATH}),
    ("POSTGRES_APP_PASS", {s04_pgbouncer.USERLIST_PATH, "role kb_app"}),
])
def test_one_name_changes_only_its_own_users_and_files(installed: Installed, name: str, touched: set[str]) -> None:
    before = fingerprints(installed)
    values = installed.credentials
    result = kbpg(installed.workdir, "credentials", "rotate", name, "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    after = fingerprints(installed)
    changed = {key for key in before if before[key] != after.get(key)}
    expected = {key for key in before if key.split(":", 1)[-1] in touched or key in touched}
    assert expected and changed == expected, f"changed: {sorted(changed)}; expected: {sorted(expected)}"
    now = installed.credentials
    assert [n for n in now if now[n] != values[n]] == [name]
