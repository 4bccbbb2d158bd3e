"""17. Every secret of postgres.env works where it is used, and, while ``credentials/postgres.env.prev`` exists (the
file before the last rotation), each previous value that differs from the current one is refused there.

One target per secret, each trying the current value, then the previous one, where the secret is used:

- POSTGRES_APP_PASS: the app role through the LB on the write port and on PgBouncer's port;
- POSTGRES_MONITOR_PASS: the monitor role through the LB's write port and on each DB node (where the diagnostics log
  in as it);
- POSTGRES_SUPERPASS: the superuser, from a DB node (SSH, then psql over TCP to the leader's address, verified with
  the node's copy of kbpg's CA when TLS is on): pg_hba lets it in from the DB nodes only;
- POSTGRES_REPL_PASS: a replication connection (``IDENTIFY_SYSTEM``) from a DB node to the leader, the same way;
- PATRONI_API_PASSWORD: ``PATCH /config`` with an empty body on each DB node's REST API (400 once the credentials
  are accepted, before the DCS is touched; 401 when they are not);
- HAPROXY_STATS_PASSWORD: the stats page of each HAProxy node (200; 401 when refused);
- PGBOUNCER_ADMIN_PASS, PGBOUNCER_STATS_PASS: PgBouncer's console (database "pgbouncer", ``SHOW VERSION``) on each
  HAProxy node.

PATRONI_RAFT_PASSWORD is not probed: check 4 covers Raft (a member with another password is not in the cluster),
and it is never rotated on a live cluster (see core/rotation.py).

A previous value counts as refused only when the service says so (a failed password authentication, HTTP 401);
anything else (no answer, pg_hba refusing before any password, another status) is a failure that cannot tell.
Messages name the secret's NAME and where, never a value; a password reaches a host only on stdin (SSH) or inside
the login itself. :func:`verify_all` is the same check for a rotation's verify step, with the values it converges to.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from functools import partial
from typing import Callable, Mapping

import psycopg
from psycopg.conninfo import make_conninfo

from .. import cluster, tls
from .. import credentials as creds
from ..bouncer import command
from ..cluster import ClusterUnreadable, NoAnswer
from ..engine import Context
from ..logs import redact, register_secret
from ..ops.switchover import REST_USER
from ..rotation import PENDING_FILE, PREV_FILE
from ..ssh import SshError
from .base import Check, CheckFailed, Probe, Target
from .probe import DEFAULT_TIMEOUT, ProbeContext
from .report import Verdict

ACCEPTED, REFUSED, UNCLEAR = "accepted", "refused", "unclear"
Answer = tuple[str, str]  # (ACCEPTED / REFUSED / UNCLEAR, what the service said: never a value)
AUTH_REFUSED = ("password authentication failed",  # PostgreSQL (and PgBouncer with plain passwords)
                "SASL authentication failed")  # PgBouncer refusing a SCRAM login


PLACE = re.compile(r'^(psql: error: )?(connection failed: )?(connection to server at "[^"]*", port \d+ failed: )?')


def classify(text: str) -> Answer:
    """What a failed login's error says: REFUSED for a failed password authentication, else UNCLEAR (no answer, a
    timeout, TLS, or pg_hba refusing before any password was asked: none of these says the password is wrong)."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "no output")
    detail = redact(PLACE.sub("", first))[:200]  # the message names the place already
    return (REFUSED if any(words in text for words in AUTH_REFUSED) else UNCLEAR), detail


# What can be wrong at one place: the message, with the secret's name, the place and what the service said.
ISSUES = {
    "refused": "{name} is refused at {where} ({detail})",
    "no login": "{name}: cannot log in at {where}: {detail}",
    "old accepted": "{name}: the previous value is still accepted at {where}",
    "cannot tell": "{name}: cannot tell whether the previous value is refused at {where} (not an authentication "
                   "refusal: {detail})",
}


class Findings:
    """What one secret's probe found: where its value was accepted, where the previous one was refused, and what is
    wrong where (``issues``: (kind of ISSUES, place, what the service said)) or in general (``others``)."""

    def __init__(self, name: str):
        self.name = name
        self.accepted: list[str] = []
        self.refused: list[str] = []
        self.issues: list[tuple[str, str, str]] = []
        self.others: list[str] = []

    @property
    def problems(self) -> list[str]:
        """One line per problem, naming the secret and the place."""
        return self.others + [ISSUES[kind].format(name=self.name, where=where, detail=detail)
                              for kind, where, detail in self.issues]

    def summary(self) -> str:
        """The problems in one line: the places with the same problem (and the same answer) together."""
        groups: dict[tuple[str, str], list[str]] = {}
        for kind in ISSUES:
            for issue_kind, where, detail in self.issues:
                if issue_kind == kind:
                    groups.setdefault((kind, detail), []).append(where)
        return "; ".join(self.others + [ISSUES[kind].format(name=self.name, where=", ".join(places), detail=detail)
                                        for (kind, detail), places in groups.items()])

    def judge(self, where: str, now: Answer, before: Answer | None) -> None:
        """``now``: the current value's answer at ``where``; ``before``: the previous value's (None: not tried)."""
        verdict, detail = now
        if verdict == ACCEPTED:
            self.accepted.append(where)
        else:
            self.issues.append(("refused" if verdict == REFUSED else "no login", where, detail))
        if before is None:
            return
        verdict, detail = before
        if verdict == REFUSED:
            self.refused.append(where)
        else:
            self.issues.append(("old accepted" if verdict == ACCEPTED else "cannot tell", where, detail))

    def pair(self, where: str, attempt: Callable[[str], Answer], current: str, old: str | None) -> None:
        """Try the current value, then the previous one (not when the current one got no clear answer: the place
        is not answering, and the current value's problem says so)."""
        now = attempt(current)
        self.judge(where, now, attempt(old) if old is not None and now[0] != UNCLEAR else None)

    def said(self, old: str | None) -> str:
        places = ", ".join(self.accepted)
        if old is None:
            return f"{self.name} accepted at {places}"
        return f"{self.name} accepted at {places}; its previous value refused at each"


# --- attempts ------------------------------------------------------------------------------------------------------

def login(p: ProbeContext, address: str, port: int, user: str, dbname: str, password: str,
          console: bool = False) -> Answer:
    """A login (verified TLS when on), then ``SELECT 1``, or ``SHOW VERSION`` on PgBouncer's ``console``."""
    try:
        with p.pg(address, port, user, password, dbname=dbname) as conn:
            if console:
                command(conn, "SHOW VERSION")  # the console speaks only the simple query protocol
            else:
                conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return classify(str(exc))
    return ACCEPTED, ""


def http(p: ProbeContext, url: str, user: str, method: str, accepted: int, password: str) -> Answer:
    """A request with Basic credentials: ``accepted`` when they are, 401 when they are not."""
    try:
        status, _ = p.request(url, (user, password), method)
    except NoAnswer as exc:
        return UNCLEAR, redact(str(exc))[:200]
    if status == accepted:
        return ACCEPTED, ""
    if status == 401:
        return REFUSED, "401"
    return UNCLEAR, f"{method} {url} answered {status}, expected {accepted} or 401"


ATTEMPT = ("echo '{marker}'; PGPASSWORD=${var} PGPASSFILE=/dev/null timeout {limit} "
           "psql -X -A -t -w -v ON_ERROR_STOP=1 -d {conninfo} -c {sql} 2>&1; echo \"{end} $?\"")
MARKER, END = "--- kbpg attempt", "--- kbpg exit"


def remote_script(conninfo: str, sql: str, limit: int) -> str:
    """psql on a DB node with the current value (first line of stdin), then the previous one (second line, if
    any): each password is read from stdin into PGPASSWORD, never in the script or any argv."""
    def attempt(var: str) -> str:
        return ATTEMPT.format(marker=MARKER, var=var, limit=limit, conninfo=shlex.quote(conninfo),
                              sql=shlex.quote(sql), end=END)
    return ("IFS= read -r kbpg_current || true\n"
            "if IFS= read -r kbpg_previous; then kbpg_more=1; else kbpg_more=; fi\n"
            f"{attempt('kbpg_current')}\n"
            f"if [ -n \"$kbpg_more\" ]; then {attempt('kbpg_previous')}; fi\n")


def parse_attempts(output: str, limit: int) -> list[Answer]:
    """The answers of :func:`remote_script`'s attempts, in order."""
    answers = []
    for block in output.split(MARKER + "\n")[1:]:
        lines = block.rstrip("\n").splitlines()
        status = re.fullmatch(rf"{re.escape(END)} (\d+)", lines[-1]) if lines else None
        text = "\n".join(lines[:-1] if status else lines)
        if status is None:
            answers.append((UNCLEAR, "psql did not finish"))
        elif status.group(1) == "0":
            answers.append((ACCEPTED, ""))
        elif status.group(1) == "124" and not text.strip():
            answers.append((UNCLEAR, f"no answer within {limit} s"))
        else:
            answers.append(classify(text))
    return answers


def leader(p: ProbeContext) -> tuple[str, str]:
    """(name, address) of the leader, from Patroni's REST API (read once per run)."""
    def read() -> tuple[str, str]:
        state = cluster.read_rest(p.ctx.db_hosts, p.settings.ports.patroni_rest, p.timeout,
                                  request=lambda url: p.request(url), scheme=p.scheme)
        member = state.leader
        if member is None:
            raise ClusterUnreadable([f"no leader right now ({state.summary()})"])
        hosts = {h.name: h.address for h in p.ctx.db_hosts}
        return member.name, hosts.get(member.name) or member.host
    return p.once("c17 leader", read)


def from_db_node(p: ProbeContext, find: Findings, user: str, current: str, old: str | None,
                 replication: bool) -> None:
    """Log in to the leader from a DB node (a replica first: a real network hop), over SSH, as pg_hba allows the
    superuser and the replication role only from the DB nodes."""
    try:
        name, address = leader(p)
    except ClusterUnreadable as exc:
        find.others.append(f"{find.name}: cannot find the leader to log in to: {redact(str(exc))[:200]}")
        return
    port = p.settings.ports.postgresql
    limit = max(2, int(p.timeout / 2))
    params = {"host": address, "port": str(port), "user": user, "connect_timeout": str(limit),
              "application_name": "kbpg-diagnose"}
    if replication:
        params["replication"] = "true"
    else:
        params["dbname"] = "postgres"
    if p.settings.tls.enabled:
        params.update(sslmode="verify-full", sslrootcert=f"{tls.DB_DIR}/ca.crt")  # the node's copy of kbpg's CA
    script = remote_script(make_conninfo(**params), "IDENTIFY_SYSTEM" if replication else "SELECT 1", limit)
    stdin = current + "\n" + (old + "\n" if old is not None else "")
    errors = []
    nodes = sorted(p.ctx.db_hosts, key=lambda h: h.name == name)
    for via in nodes:
        try:
            output = p.ssh(via, script, stdin=stdin, timeout=2 * limit + p.timeout)
        except SshError as exc:
            errors.append(redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:200])
            continue
        answers = parse_attempts(output, limit) + [(UNCLEAR, "no answer from psql")] * 2
        before = answers[1] if old is not None and answers[0][0] != UNCLEAR else None
        find.judge(f"{name} {address}:{port} from {via.name}", answers[0], before)
        return
    find.others.append(f"{find.name}: no DB node to log in from: {'; '.join(errors) or 'none selected'}")


# --- the secrets -----------------------------------------------------------------------------------------------------

def app(p: ProbeContext, find: Findings, values: Mapping[str, str], old: str | None) -> None:
    address, ports = p.settings.network.lb_address, p.settings.ports
    for port in (ports.haproxy_write, ports.pgbouncer):
        find.pair(f"LB {address}:{port}", partial(login, p, address, port, values["POSTGRES_APP_USER"],
                                                  values["POSTGRES_DB"]), values[find.name], old)


def monitor(p: ProbeContext, find: Findings, values: Mapping[str, str], old: str | None) -> None:
    user, port = values["POSTGRES_MONITOR_USER"], p.settings.ports.postgresql
    places = [(f"LB {p.settings.network.lb_address}:{p.settings.ports.haproxy_write}",
               p.settings.network.lb_address, p.settings.ports.haproxy_write)]
    places += [(f"{h.name}:{port}", h.address, port) for h in p.ctx.db_hosts]
    for where, address, number in places:
        find.pair(where, partial(login, p, address, number, user, "postgres"), values[find.name], old)


def superuser(p: ProbeContext, find: Findings, values: Mapping[str, str], old: str | None) -> None:
    from_db_node(p, find, values["POSTGRES_SUPERUSER"], values[find.name], old, replication=False)


def replication(p: ProbeContext, find: Findings, values: Mapping[str, str], old: str | None) -> None:
    from_db_node(p, find, values["POSTGRES_REPL_USER"], values[find.name], old, replication=True)


def rest(p: ProbeContext, find: Findings, values: Mapping[str, str], old: str | None) -> None:
    for host in p.ctx.db_hosts:
        find.pair(f"{host.name} REST :{p.settings.ports.patroni_rest}",
                  partial(http, p, p.rest_url(host, "/config"), REST_USER, "PATCH", 400), values[find.name], old)


def stats(p: ProbeContext, find: Findings, values: Mapping[str, str], old: str | None) -> None:
    port = p.settings.ports.haproxy_stats
    for host in p.ctx.haproxy_hosts:
        find.pair(f"{host.name} stats :{port}", partial(http, p, f"{p.scheme}://{host.address}:{port}/;csv",
                                                        values["HAPROXY_STATS_USER"], "GET", 200),
                  values[find.name], old)


def bouncer_console(user_name: str) -> Callable[[ProbeContext, Findings, Mapping[str, str], str | None], None]:
    def probe(p: ProbeContext, find: Findings, values: Mapping[str, str], old: str | None) -> None:
        port = p.settings.ports.pgbouncer
        for host in p.ctx.haproxy_hosts:
            find.pair(f"{host.name}:{port} console", partial(login, p, host.address, port, values[user_name],
                                                             "pgbouncer", console=True), values[find.name], old)
    return probe


@dataclass(frozen=True)
class Secret:
    name: str
    needs: tuple[str, ...]  # the other names of postgres.env the probe reads (user names, the database)
    probe: Callable[[ProbeContext, Findings, Mapping[str, str], str | None], None]


SECRETS: tuple[Secret, ...] = (
    Secret("POSTGRES_APP_PASS", ("POSTGRES_APP_USER", "POSTGRES_DB"), app),
    Secret("POSTGRES_MONITOR_PASS", ("POSTGRES_MONITOR_USER",), monitor),
    Secret("POSTGRES_SUPERPASS", ("POSTGRES_SUPERUSER",), superuser),
    Secret("POSTGRES_REPL_PASS", ("POSTGRES_REPL_USER",), replication),
    Secret("PATRONI_API_PASSWORD", (), rest),
    Secret("HAPROXY_STATS_PASSWORD", ("HAPROXY_STATS_USER",), stats),
    Secret("PGBOUNCER_ADMIN_PASS", ("PGBOUNCER_ADMIN_USER",), bouncer_console("PGBOUNCER_ADMIN_USER")),
    Secret("PGBOUNCER_STATS_PASS", ("PGBOUNCER_STATS_USER",), bouncer_console("PGBOUNCER_STATS_USER")),
)


def examine(p: ProbeContext, secret: Secret, values: Mapping[str, str], old: str | None) -> Findings:
    """``secret``'s current value (in ``values``) where it is used, and ``old`` refused there (None: not tried)."""
    find = Findings(secret.name)
    missing = [name for name in (secret.name, *secret.needs) if not values.get(name)]
    if missing:
        find.others.append(f"{', '.join(missing)} not in credentials/postgres.env: run `kbpg install`")
        return find
    secret.probe(p, find, values, None if old == values[secret.name] else old)
    return find


# --- diagnostics -----------------------------------------------------------------------------------------------------

def previous(p: ProbeContext) -> creds.Credentials | None:
    """credentials/postgres.env.prev (read once per run), or None when there is none."""
    path = p.ctx.workdir / PREV_FILE
    if not path.exists() and not path.is_symlink():
        return None
    try:
        return p.once("c17 previous", lambda: creds.read_env(path))
    except creds.CredentialsError as exc:
        raise CheckFailed(f"{PREV_FILE}: cannot be read, so its values cannot be checked: {exc}") from None


def diagnose(p: ProbeContext, secret: Secret) -> str:
    prev = previous(p)
    old = prev.get(secret.name) if prev is not None else None
    find = examine(p, secret, p.values, old)
    if find.problems:
        hint = ""
        if (p.ctx.workdir / PENDING_FILE).exists():
            hint = " (a credential rotation is pending: finish it with `kbpg credentials rotate`)"
        raise CheckFailed(find.summary() + hint)
    if prev is None:
        return find.said(None) + f"; no {PREV_FILE}"
    if old is None:
        return find.said(None) + f"; not in {PREV_FILE}"
    if old == p.values[secret.name]:
        return find.said(None) + f"; unchanged since {PREV_FILE}"
    return find.said(old)


def targets(p: ProbeContext) -> list[Target]:
    return [(secret.name, partial(diagnose, p, secret)) for secret in SECRETS]


CHECK = Check(17, "secrets", targets)


# --- a rotation's verify step ----------------------------------------------------------------------------------------

def verify_all(ctx: Context, values: Mapping[str, str], previous: Mapping[str, str] | None,
               timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    """The problems (one line each, naming the secret and where, never a value) with the secrets of ``values``
    (over ``ctx.credentials``: a rotation passes everything it converges to) where they are used, and with each value
    of ``previous`` that differs from the current one: it must be refused there. [] when all is well.

    Every secret is probed at once, as the diagnostics do (each bounded by ``timeout``); called from an engine task."""
    p = ProbeContext(ctx, timeout)
    merged = creds.Credentials({**ctx.credentials, **values})
    p.values = merged
    old = dict(previous or {})
    for value in old.values():
        register_secret(value)  # whatever an error quotes, the old values stay out of messages and logs too
    found: dict[str, Findings] = {}

    def run(secret: Secret) -> str:
        found[secret.name] = find = examine(p, secret, merged, old.get(secret.name))
        if find.problems:
            raise CheckFailed(find.problems[0])
        return ""

    from .runner import run_probes  # the runner imports the checks (this module among them)

    probes = [Probe(CHECK.number, CHECK.name, s.name, partial(run, s)) for s in SECRETS if s.name in values]
    report = run_probes(probes, timeout * 3 + 5)
    problems = []
    for result in report.results:
        if result.verdict is Verdict.PASS:
            continue
        find = found.get(result.target)
        if find is not None and find.problems:
            problems += find.problems
        else:  # no answer in time, or the probe's bug: the runner's reason, which names the target
            reason = result.reason
            problems.append(reason if reason.startswith(result.target) else f"{result.target}: {reason}")
    return [redact(problem) for problem in problems]
