"""17 secrets: every secret of postgres.env works where it is used, and each value of postgres.env.prev that differs is
refused there (an authentication refusal: a network error or pg_hba's refusal cannot tell); values never in messages
or argv. Against fakes: the lab's inventory, PostgreSQL/PgBouncer logins from a table, REST and stats answers from
functions of the credentials sent, and the DB nodes' psql a local script behind the real remote shell script."""

from __future__ import annotations

import os
import secrets
import threading
import time
from pathlib import Path

import psycopg
import pytest

from kbpg_tui.core import credentials as creds
from kbpg_tui.core.checks import c17_secrets
from kbpg_tui.core.checks.report import Verdict
from kbpg_tui.core.checks.runner import run_probes
from kbpg_tui.core.cluster import NoAnswer
from kbpg_tui.core.ssh import Host

from ..fakes import FakePgConnection, FakePool, LocalShellConnection, lab_probe_context, unreachable

LB = "198.18.0.10"
DB = {"db-master-01": "198.18.0.120", "db-slave-01": "198.18.0.121", "db-slave-02": "198.18.0.122"}
HAPROXY = {"haproxy-01": "198.18.0.11", "haproxy-02": "198.18.0.12"}
NAMES = ("POSTGRES_APP_PASS", "POSTGRES_MONITOR_PASS", "POSTGRES_SUPERPASS", "POSTGRES_REPL_PASS",
         "PATRONI_API_PASSWORD", "HAPROXY_STATS_PASSWORD", "PGBOUNCER_ADMIN_PASS", "PGBOUNCER_STATS_PASS")
USERS = {"POSTGRES_APP_PASS": "POSTGRES_APP_USER", "POSTGRES_MONITOR_PASS": "POSTGRES_MONITOR_USER",
         "POSTGRES_SUPERPASS": "POSTGRES_SUPERUSER", "POSTGRES_REPL_PASS": "POSTGRES_REPL_USER",
         "HAPROXY_STATS_PASSWORD": "HAPROXY_STATS_USER", "PGBOUNCER_ADMIN_PASS": "PGBOUNCER_ADMIN_USER",
         "PGBOUNCER_STATS_PASS": "PGBOUNCER_STATS_USER"}

FAKE_PSQL = r"""#!/bin/bash
# psql on a DB node: records its arguments, answers by the password in PGPASSWORD (files of the test's World).
d=$FAKE_PSQL_DIR
printf '%s\0' "$@" > "$d/argv.$$"; printf '\n' >> "$d/argv.$$"  # one file per run: the probes run in parallel
[ -n "${PGPASSWORD+set}" ] && echo set >> "$d/pgpassword"
where='connection to server at "198.18.0.120", port 5432 failed'
if grep -qxF -e "$PGPASSWORD" "$d/network" 2>/dev/null; then
  echo "psql: error: $where: Connection refused" >&2
  echo '	Is the server running on that host and accepting TCP/IP connections?' >&2; exit 2
fi
if grep -qxF -e "$PGPASSWORD" "$d/hba" 2>/dev/null; then
  echo "psql: error: $where: FATAL:  no pg_hba.conf entry for host \"198.18.0.121\", user \"x\", database \"postgres\"" >&2
  exit 2
fi
if grep -qxF -e "$PGPASSWORD" "$d/accepted" 2>/dev/null; then echo 1; exit 0; fi
echo "psql: error: $where: FATAL:  password authentication failed for user \"x\"" >&2; exit 2
"""


def fresh() -> creds.Credentials:
    """postgres.env's values, not registered for redaction: a value in a message would show as itself."""
    values = creds.Credentials({name: f"{name.lower()}-{secrets.token_hex(8)}" for name in NAMES})
    values.update({"POSTGRES_SUPERUSER": "kb_admin", "POSTGRES_REPL_USER": "kb_repl", "POSTGRES_APP_USER": "kb_app",
                   "POSTGRES_DB": "keybuzz", "PATRONI_CLUSTER_NAME": "keybuzz-pg", "HAPROXY_STATS_USER": "kb_stats",
                   "PGBOUNCER_ADMIN_USER": "kb_pgbouncer", "PGBOUNCER_STATS_USER": "kb_pgbouncer_stats",
                   "POSTGRES_MONITOR_USER": "kb_monitor", "PATRONI_RAFT_PASSWORD": "raft-" + secrets.token_hex(8)})
    return values


def old_values(values: creds.Credentials) -> dict[str, str]:
    return {name: "old-" + values[name] for name in NAMES}


class World:
    """The lab's services, answering each login by the password sent: ``accepted`` (per secret name) gets in, a
    password in ``network`` gets no answer, one in ``hba`` is refused by pg_hba, ``status`` gives the REST/stats
    answer for a password (instead of 400/200 or 401); anything else is a failed password authentication."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, values: creds.Credentials | None = None):
        self.values = values if values is not None else fresh()
        self.accepted: dict[str, set[str]] = {name: {self.values[name]} for name in NAMES}
        self.network: set[str] = set()
        self.hba: set[str] = set()
        self.status: dict[str, int] = {}
        self.psql = tmp_path / "psql-fake"
        (self.psql / "bin").mkdir(parents=True)
        script = self.psql / "bin" / "psql"
        script.write_text(FAKE_PSQL)
        script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{self.psql / 'bin'}:{os.environ['PATH']}")
        monkeypatch.setenv("FAKE_PSQL_DIR", str(self.psql))
        self.workdir = tmp_path / "work"
        self.workdir.mkdir()
        self.connections = {name: LocalShellConnection(Host(name, address, "root"), {})
                            for name, address in DB.items()}
        self.pool = FakePool(dict(self.connections))
        users = {self.values[user]: name for name, user in USERS.items()}
        self.users = users

    # PostgreSQL and PgBouncer

    def database(self, host: str, port: int, user: str, password: str, dbname: str) -> FakePgConnection:
        at = f'connection to server at "{host}", port {port} failed'
        if password in self.network:
            raise psycopg.OperationalError(f"{at}: Connection refused")
        if password in self.hba:
            raise psycopg.OperationalError(f'{at}: FATAL:  no pg_hba.conf entry for host "198.18.0.1", user '
                                           f'"{user}", database "{dbname}"')
        name = self.users.get(user)
        if name is not None and password in self.accepted[name]:
            return FakePgConnection()
        if port == 6432:  # PgBouncer
            raise psycopg.OperationalError(f"{at}: FATAL:  SASL authentication failed")
        raise psycopg.OperationalError(f'{at}: FATAL:  password authentication failed for user "{user}"')

    # REST and stats

    def answer(self, name: str, good: int):
        def respond(auth: tuple[str, str] | None) -> tuple[int, bytes]:
            password = auth[1] if auth else ""
            if password in self.network:
                raise NoAnswer("https://198.18.0.120:8008/config: no answer ([Errno 111] Connection refused)")
            if password in self.status:
                return self.status[password], b""
            return (good if password in self.accepted[name] else 401), b""
        return respond

    def rest(self) -> dict:
        table: dict = {}
        members = [{"name": name, "host": address, "role": "leader" if name == "db-master-01" else "replica",
                    "state": "running" if name == "db-master-01" else "streaming", "timeline": 3, "lag": 0}
                   for name, address in DB.items()]
        for address in DB.values():
            table[f"https://{address}:8008/cluster"] = (200, {"members": members})
            table[("PATCH", f"https://{address}:8008/config")] = self.answer("PATRONI_API_PASSWORD", 400)
        for address in HAPROXY.values():
            table[f"https://{address}:8404/;csv"] = self.answer("HAPROXY_STATS_PASSWORD", 200)
        return table

    def probe_context(self, values: creds.Credentials | None = None, timeout: float = 4.0):
        for file, passwords in (("accepted", self.accepted["POSTGRES_SUPERPASS"] | self.accepted["POSTGRES_REPL_PASS"]),
                                ("network", self.network), ("hba", self.hba)):
            (self.psql / file).write_text("".join(p + "\n" for p in passwords))
        return lab_probe_context(self.workdir, pool=self.pool, rest=self.rest(), databases=self.database,
                                 values=self.values if values is None else values, timeout=timeout)

    def write_prev(self, values: dict[str, str]) -> Path:
        path = self.workdir / "credentials" / "postgres.env.prev"
        path.parent.mkdir(mode=0o700, exist_ok=True)
        creds.write_env(path, creds.Credentials({**self.values, **values}))
        return path

    def psql_argv(self) -> str:
        """Each psql run's arguments, one line per run (a file per run: two runs appending to one file interleaved)."""
        return "".join(path.read_text() for path in sorted(self.psql.glob("argv.*")))


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    return World(tmp_path, monkeypatch)


def results(p) -> dict[str, tuple[Verdict, str]]:
    report = run_probes(c17_secrets.CHECK.probes(p), budget=30)
    return {r.target: (r.verdict, r.reason) for r in report.results}


def no_value_in(texts, *value_sets) -> None:
    for values in value_sets:
        for name in NAMES:
            value = values[name]
            for text in texts:
                assert value not in text, f"{name}'s value shown in: {text}"


# --- diagnostics ------------------------------------------------------------------------------------------------------

def test_every_secret_works_where_it_is_used(world: World) -> None:
    p = world.probe_context()
    found = results(p)
    assert list(found) == sorted(NAMES)  # one target per secret, each named
    assert {verdict for verdict, _ in found.values()} == {Verdict.PASS}, found
    assert found["POSTGRES_APP_PASS"][1] == ("POSTGRES_APP_PASS accepted at LB 198.18.0.10:5432, LB 198.18.0.10:6432; "
                                             "no credentials/postgres.env.prev")
    assert found["POSTGRES_SUPERPASS"][1].startswith(
        "POSTGRES_SUPERPASS accepted at db-master-01 198.18.0.120:5432 from db-slave-01")
    assert found["PGBOUNCER_STATS_PASS"][1].startswith("PGBOUNCER_STATS_PASS accepted at haproxy-01:6432 console, "
                                                       "haproxy-02:6432 console")
    values = world.values
    # where each is used, as whom
    assert sorted(c for c in p.connections if c[2] == "kb_app") == [(LB, 5432, "kb_app", "keybuzz"),
                                                                   (LB, 6432, "kb_app", "keybuzz")]
    assert sorted(c for c in p.connections if c[2] == "kb_monitor") == sorted(
        [(LB, 5432, "kb_monitor", "postgres")] + [(a, 5432, "kb_monitor", "postgres") for a in DB.values()])
    assert sorted(c for c in p.connections if c[2].startswith("kb_pgbouncer")) == sorted(
        (a, 6432, user, "pgbouncer") for a in HAPROXY.values() for user in ("kb_pgbouncer", "kb_pgbouncer_stats"))
    assert not [c for c in p.connections if c[2] in ("kb_admin", "kb_repl")]  # never from here: from a DB node
    assert sorted(r for r in p.requests if r[0] == "PATCH") == sorted(
        ("PATCH", f"https://{a}:8008/config", ("patroni", values["PATRONI_API_PASSWORD"])) for a in DB.values())
    assert sorted(r for r in p.requests if "8404" in r[1]) == sorted(
        ("GET", f"https://{a}:8404/;csv", ("kb_stats", values["HAPROXY_STATS_PASSWORD"])) for a in HAPROXY.values())


def test_the_superuser_and_replication_log_in_from_a_replica_to_the_leader_with_the_password_on_stdin(
        world: World) -> None:
    p = world.probe_context()
    found = results(p)
    assert found["POSTGRES_REPL_PASS"][0] is Verdict.PASS
    replica = world.connections["db-slave-01"]
    assert len(replica.calls) == 2 and not world.connections["db-master-01"].calls  # from a replica, not the leader
    argv = world.psql_argv()
    for script, stdin in replica.calls:
        for name in NAMES:
            assert world.values[name] not in script  # the script travels in argv (bash -c)
        assert stdin.decode() in (world.values["POSTGRES_SUPERPASS"] + "\n", world.values["POSTGRES_REPL_PASS"] + "\n")
    no_value_in([argv], world.values)
    assert (world.psql / "pgpassword").read_text() == "set\n" * 2  # psql got it from the environment
    script = replica.calls[0][0]  # and nothing else gets the variables that hold the passwords
    for var in ("kbpg_current", "kbpg_previous"):
        assert script.count(f"${var}") == 1 and f"PGPASSWORD=${var} " in script
    runs = [line.split("\0") for line in argv.splitlines()]
    conninfos = sorted(run[run.index("-d") + 1] for run in runs)
    assert all("host=198.18.0.120 port=5432" in c and "sslmode=verify-full" in c
               and "sslrootcert=/etc/patroni/tls/ca.crt" in c for c in conninfos), conninfos
    assert "user=kb_repl" in conninfos[1] and "replication=true" in conninfos[1] and "dbname" not in conninfos[1]
    assert "user=kb_admin" in conninfos[0] and "dbname=postgres" in conninfos[0]
    assert sorted(run[run.index("-c") + 1] for run in runs) == ["IDENTIFY_SYSTEM", "SELECT 1"]


def test_without_tls_the_db_node_login_asks_for_no_certificate(world: World) -> None:
    p = world.probe_context()
    p.settings.tls.enabled = False
    for address in DB.values():  # plain HTTP then
        p.rest[f"http://{address}:8008/cluster"] = p.rest[f"https://{address}:8008/cluster"]
    c17_secrets.superuser(p, find := c17_secrets.Findings("POSTGRES_SUPERPASS"), world.values, None)
    assert find.problems == [] and "sslmode" not in world.psql_argv()


def test_the_previous_values_refused_everywhere_pass(world: World) -> None:
    old = old_values(world.values)
    world.write_prev(old)
    p = world.probe_context()
    found = results(p)
    assert {verdict for verdict, _ in found.values()} == {Verdict.PASS}, found
    assert all(reason.endswith("; its previous value refused at each") for _, reason in found.values()), found
    # each old value was tried where the current one works
    assert sum(1 for r in p.requests if r[2] == ("patroni", old["PATRONI_API_PASSWORD"])) == 3
    assert sum(1 for r in p.requests if r[2] == ("kb_stats", old["HAPROXY_STATS_PASSWORD"])) == 2
    assert [stdin.decode().count("\n") for _, stdin in world.connections["db-slave-01"].calls] == [2, 2]


EVERYWHERE = {  # where each secret is used on the lab, as the messages name the places
    "POSTGRES_APP_PASS": "LB 198.18.0.10:5432, LB 198.18.0.10:6432",
    "POSTGRES_MONITOR_PASS": "LB 198.18.0.10:5432, db-master-01:5432, db-slave-01:5432, db-slave-02:5432",
    "POSTGRES_SUPERPASS": "db-master-01 198.18.0.120:5432 from db-slave-01",
    "POSTGRES_REPL_PASS": "db-master-01 198.18.0.120:5432 from db-slave-01",
    "PATRONI_API_PASSWORD": "db-master-01 REST :8008, db-slave-01 REST :8008, db-slave-02 REST :8008",
    "HAPROXY_STATS_PASSWORD": "haproxy-01 stats :8404, haproxy-02 stats :8404",
    "PGBOUNCER_ADMIN_PASS": "haproxy-01:6432 console, haproxy-02:6432 console",
    "PGBOUNCER_STATS_PASS": "haproxy-01:6432 console, haproxy-02:6432 console",
}


@pytest.mark.parametrize("name", NAMES)
def test_a_previous_value_still_accepted_fails_naming_the_secret_and_where(world: World, name: str) -> None:
    old = old_values(world.values)
    world.write_prev(old)
    world.accepted[name].add(old[name])
    found = results(world.probe_context())
    assert found[name] == (Verdict.FAIL, f"{name}: the previous value is still accepted at {EVERYWHERE[name]}")
    assert {v for n, (v, _) in found.items() if n != name} == {Verdict.PASS}
    no_value_in([r for _, r in found.values()], world.values, old)


HTTP = ("PATRONI_API_PASSWORD", "HAPROXY_STATS_PASSWORD")


@pytest.mark.parametrize("name, how", [(name, "network") for name in NAMES]
                         + [(name, "hba") for name in NAMES if name not in HTTP]  # pg_hba: PostgreSQL's
                         + [(name, "status") for name in HTTP])  # another status than 401
def test_a_previous_value_without_an_authentication_refusal_cannot_tell(world: World, name: str, how: str) -> None:
    old = old_values(world.values)
    world.write_prev(old)
    if how == "status":
        world.status[old[name]] = 403
    else:
        getattr(world, how).add(old[name])
    found = results(world.probe_context())
    verdict, reason = found[name]
    assert verdict is Verdict.FAIL, reason
    assert f"{name}: cannot tell whether the previous value is refused at " in reason
    assert "not an authentication refusal" in reason
    no_value_in([reason], world.values, old)


def test_the_current_value_refused_or_unreachable_fails_and_the_old_one_is_not_tried_where_nothing_answers(
        world: World) -> None:
    old = old_values(world.values)
    world.write_prev(old)
    world.accepted["HAPROXY_STATS_PASSWORD"] = {"something-else"}  # the hosts never got this postgres.env's value
    world.network.add(world.values["POSTGRES_APP_PASS"])
    p = world.probe_context()
    found = results(p)
    verdict, reason = found["HAPROXY_STATS_PASSWORD"]
    assert (verdict, reason) == (Verdict.FAIL, "HAPROXY_STATS_PASSWORD is refused at haproxy-01 stats :8404, "
                                               "haproxy-02 stats :8404 (401)")
    assert found["POSTGRES_APP_PASS"] == (Verdict.FAIL, "POSTGRES_APP_PASS: cannot log in at LB 198.18.0.10:5432, "
                                                        "LB 198.18.0.10:6432: Connection refused")
    assert not [c for c in p.connections if c[2] == "kb_app" and c[1] == 5432][1:]  # tried once: no second wait


def test_a_previous_value_equal_to_the_current_one_is_not_tried(world: World) -> None:
    world.write_prev({"HAPROXY_STATS_PASSWORD": world.values["HAPROXY_STATS_PASSWORD"]})  # the rest: the same too
    p = world.probe_context()
    found = results(p)
    assert {verdict for verdict, _ in found.values()} == {Verdict.PASS}, found
    assert found["HAPROXY_STATS_PASSWORD"][1].endswith("; unchanged since credentials/postgres.env.prev")
    assert len([r for r in p.requests if "8404" in r[1]]) == 2  # once per node: the current value only


def test_an_unreadable_prev_file_fails_naming_it(world: World) -> None:
    path = world.write_prev({})
    path.write_text("NOT A LINE OF ENV\n")
    found = results(world.probe_context())
    assert {verdict for verdict, _ in found.values()} == {Verdict.FAIL}
    assert all(reason.startswith("credentials/postgres.env.prev: cannot be read") for _, reason in found.values())


def test_a_pending_rotation_is_named_in_a_failure(world: World) -> None:
    world.accepted["PGBOUNCER_ADMIN_PASS"] = {"the-new-one"}
    (world.workdir / "credentials").mkdir(mode=0o700)
    (world.workdir / "credentials" / "rotation.pending").write_text("")
    verdict, reason = results(world.probe_context())["PGBOUNCER_ADMIN_PASS"]
    assert verdict is Verdict.FAIL and reason.endswith("(a credential rotation is pending: finish it with "
                                                       "`kbpg credentials rotate`)")


def test_no_db_node_over_ssh_and_no_leader_are_failures(world: World) -> None:
    world.pool.connections.update({name: unreachable(Host(name, address, "root")) for name, address in DB.items()})
    p = world.probe_context()
    verdict, reason = results(p)["POSTGRES_SUPERPASS"]
    assert verdict is Verdict.FAIL and reason.startswith("POSTGRES_SUPERPASS: no DB node to log in from: db-slave-01")
    p = world.probe_context()
    p.rest = {}
    verdict, reason = results(p)["POSTGRES_REPL_PASS"]
    assert verdict is Verdict.FAIL and reason.startswith("POSTGRES_REPL_PASS: cannot find the leader to log in to")


def test_a_missing_name_is_a_failure_naming_it(world: World) -> None:
    values = creds.Credentials(world.values)
    del values["PGBOUNCER_STATS_PASS"]
    verdict, reason = results(world.probe_context(values))["PGBOUNCER_STATS_PASS"]
    assert (verdict, reason) == (Verdict.FAIL, "PGBOUNCER_STATS_PASS not in credentials/postgres.env: run "
                                               "`kbpg install`")


# --- the pieces ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, verdict", [
    ('FATAL:  password authentication failed for user "kb_app"', c17_secrets.REFUSED),
    ("FATAL:  SASL authentication failed", c17_secrets.REFUSED),
    ('FATAL:  no pg_hba.conf entry for host "1.2.3.4", user "kb_app", database "x", no encryption',
     c17_secrets.UNCLEAR),
    ('FATAL:  pg_hba.conf rejects connection for host "1.2.3.4"', c17_secrets.UNCLEAR),
    ("Connection refused", c17_secrets.UNCLEAR),
    ("timeout expired", c17_secrets.UNCLEAR),
])
def test_only_a_failed_password_authentication_is_a_refusal(text: str, verdict: str) -> None:
    assert c17_secrets.classify(f'connection failed: connection to server at "h", port 5432 failed: {text}') == (
        verdict, text)
    assert c17_secrets.classify(f'psql: error: connection to server at "h", port 5432 failed: {text}\nmore') == (
        verdict, text)


def test_the_report_line_puts_the_places_with_the_same_problem_together_and_keeps_each_line_apart() -> None:
    find = c17_secrets.Findings("PATRONI_API_PASSWORD")
    find.judge("db-master-01", (c17_secrets.REFUSED, "401"), (c17_secrets.ACCEPTED, ""))
    find.judge("db-slave-01", (c17_secrets.UNCLEAR, "no answer"), None)
    find.judge("db-slave-02", (c17_secrets.REFUSED, "401"), (c17_secrets.UNCLEAR, "answered 503"))
    find.judge("db-slave-03", (c17_secrets.ACCEPTED, ""), (c17_secrets.REFUSED, "401"))
    assert find.summary() == (
        "PATRONI_API_PASSWORD is refused at db-master-01, db-slave-02 (401); PATRONI_API_PASSWORD: cannot log in at "
        "db-slave-01: no answer; PATRONI_API_PASSWORD: the previous value is still accepted at db-master-01; "
        "PATRONI_API_PASSWORD: cannot tell whether the previous value is refused at db-slave-02 (not an authentication "
        "refusal: answered 503)")
    assert find.problems == [
        "PATRONI_API_PASSWORD is refused at db-master-01 (401)",
        "PATRONI_API_PASSWORD: the previous value is still accepted at db-master-01",
        "PATRONI_API_PASSWORD: cannot log in at db-slave-01: no answer",
        "PATRONI_API_PASSWORD is refused at db-slave-02 (401)",
        "PATRONI_API_PASSWORD: cannot tell whether the previous value is refused at db-slave-02 (not an authentication "
        "refusal: answered 503)"]
    assert (find.accepted, find.refused) == (["db-slave-03"], ["db-slave-03"])


def test_psql_that_does_not_finish_or_times_out_cannot_tell() -> None:
    marker, end = c17_secrets.MARKER, c17_secrets.END
    assert c17_secrets.parse_attempts(f"{marker}\n1\n{end} 0\n{marker}\n{end} 124\n", 4) == [
        (c17_secrets.ACCEPTED, ""), (c17_secrets.UNCLEAR, "no answer within 4 s")]
    assert c17_secrets.parse_attempts(f"{marker}\npsql: error: x: FATAL:  password authentication failed\n", 4) == [
        (c17_secrets.UNCLEAR, "psql did not finish")]


# --- the rotation's verify step --------------------------------------------------------------------------------------

@pytest.fixture
def verify(world: World, monkeypatch: pytest.MonkeyPatch):
    """verify_all on the world's fakes (it builds its probe context from the engine's context: the fake's instead)."""
    made = []

    def verify_all(values, previous, **kwargs):
        p = world.probe_context()
        made.append(p)
        monkeypatch.setattr(c17_secrets, "ProbeContext", lambda ctx, timeout: p)
        return c17_secrets.verify_all(p.ctx, values, previous, **kwargs), p
    return verify_all


def test_verify_all_is_empty_when_new_values_work_and_old_ones_are_refused(world: World, verify) -> None:
    old = old_values(world.values)
    problems, p = verify(world.values, old)
    assert problems == []
    assert sum(1 for r in p.requests if r[2] == ("patroni", old["PATRONI_API_PASSWORD"])) == 3  # the old ones tried


def test_verify_all_lists_each_problem_by_name_and_place_without_values(world: World, verify) -> None:
    old = old_values(world.values)
    world.accepted["POSTGRES_APP_PASS"].add(old["POSTGRES_APP_PASS"])  # a host that kept the old value
    world.network.add(old["PATRONI_API_PASSWORD"])
    world.accepted["POSTGRES_SUPERPASS"].add(old["POSTGRES_SUPERPASS"])
    problems, _ = verify(world.values, old)
    assert sorted(problems) == sorted([
        "POSTGRES_APP_PASS: the previous value is still accepted at LB 198.18.0.10:5432",
        "POSTGRES_APP_PASS: the previous value is still accepted at LB 198.18.0.10:6432",
        "POSTGRES_SUPERPASS: the previous value is still accepted at db-master-01 198.18.0.120:5432 from db-slave-01",
    ] + [f"PATRONI_API_PASSWORD: cannot tell whether the previous value is refused at {n} REST :8008 (not an "
         f"authentication refusal: https://198.18.0.120:8008/config: no answer ([Errno 111] Connection refused))"
         for n in DB])
    no_value_in(problems, world.values, old)


def test_verify_all_checks_the_secrets_it_is_given_and_skips_unchanged_old_values(world: World, verify) -> None:
    problems, p = verify({"HAPROXY_STATS_PASSWORD": world.values["HAPROXY_STATS_PASSWORD"]},
                         {"HAPROXY_STATS_PASSWORD": world.values["HAPROXY_STATS_PASSWORD"]})
    assert problems == []
    assert [r[1] for r in p.requests] == [f"https://{a}:8404/;csv" for a in HAPROXY.values()]  # nothing else, once
    assert p.connections == [] and not world.connections["db-slave-01"].calls


def test_verify_all_reports_a_probe_that_never_answers(world: World, verify, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    original = c17_secrets.http

    def hang(*args, **kwargs):
        release.wait(30)
        return original(*args, **kwargs)
    monkeypatch.setattr(c17_secrets, "http", hang)
    started = time.monotonic()
    try:
        problems, _ = verify({"HAPROXY_STATS_PASSWORD": world.values["HAPROXY_STATS_PASSWORD"]}, None, timeout=0.1)
    finally:
        release.set()
    assert time.monotonic() - started < 10
    assert problems == ["HAPROXY_STATS_PASSWORD: no answer within 5 s"]


@pytest.mark.parametrize("secret", c17_secrets.SECRETS, ids=lambda s: s.name)
@pytest.mark.parametrize("trouble", ["refused and old accepted", "no answer", "old not refused"])
def test_messages_never_hold_a_value(world: World, secret, trouble: str) -> None:
    """Straight from the probe (before any redaction), with values never registered as secrets: each kind of problem
    names the secret and the place only."""
    old = old_values(world.values)
    if trouble == "refused and old accepted":
        world.accepted[secret.name] = {old[secret.name]}
    elif trouble == "no answer":
        world.network.add(world.values[secret.name])
    elif secret.name in HTTP:
        world.status[old[secret.name]] = 403
    else:
        world.hba.add(old[secret.name])
    find = c17_secrets.examine(world.probe_context(), secret, world.values, old[secret.name])
    assert find.problems and all(problem.startswith(secret.name) for problem in find.problems)
    no_value_in(find.problems + [find.summary()], world.values, old)
