"""Credential rotation on a live cluster (``kbpg credentials rotate``): new passwords applied everywhere they are
used, without a restart, a failover or a dropped connection; postgres.env rewritten only once they work everywhere.

Files, all 0600 in ``credentials/`` (0700), and nowhere else:

- ``postgres.env.prev``: postgres.env as it was before the rotation, copied before any host is touched and kept
  after it (diagnostics' check 17 proves its values are refused while it exists; delete it once every application
  has reloaded postgres.env);
- ``rotation.pending``: the NEW values of the names being rotated, written before any host is touched and removed
  once postgres.env holds them. While it exists, ``kbpg install`` refuses to run (it would put the old values back)
  and ``kbpg credentials rotate`` resumes it with the same values.

Each part converges to the new values and is a no-op when a host already has them, so a rotation killed at any
point is finished by running the same command again. The order (see :func:`steps`) puts each value where it is
checked before where it is presented: the roles first (ALTER ROLE on the primary, the verifier computed here), then
PgBouncer's auth file (the verifiers read back from the primary), then Patroni's copies (patroni.yml, reload,
replicas first), then HAProxy's stats, then a check of every secret, old and new, and only then postgres.env.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import credentials as creds
from .engine import Outcome, Step, Task, TaskError, TaskRun
from .events import Status
from .files import atomic_write
from .logs import register_secret

PENDING_FILE = Path("credentials") / "rotation.pending"
PREV_FILE = Path("credentials") / "postgres.env.prev"
# How long the check after the changes asks again (Patroni applies a reload at its next loop: loop_wait <= 10 s on
# every timing plan, plus its REST server's restart).
VERIFY_SECONDS, VERIFY_PAUSE = 45.0, 2.0

# In the order they are listed to the operator; every password of postgres.env but Raft's.
ROTATABLE: tuple[str, ...] = (
    "POSTGRES_APP_PASS",
    "POSTGRES_SUPERPASS",
    "POSTGRES_REPL_PASS",
    "POSTGRES_MONITOR_PASS",
    "PATRONI_API_PASSWORD",
    "HAPROXY_STATS_PASSWORD",
    "PGBOUNCER_ADMIN_PASS",
    "PGBOUNCER_STATS_PASS",
)
RAFT_REASON = (
    "PATRONI_RAFT_PASSWORD cannot be rotated on a live cluster: Raft (pysyncobj) encrypts every message between the "
    "members with it, so members with different passwords cannot talk; changed one member at a time, no majority "
    "is left while the second member restarts, and Patroni demotes the primary when Raft is unreachable; and "
    "Patroni reads it only when it starts, which restarts PostgreSQL. Change it in a maintenance window "
    "(README, \"Rotating the Raft password\")."
)
BACKUP_CIPHER_REASON = (
    "BACKUP_CIPHER_PASS cannot be rotated: it is the encryption key of pgBackRest's repository on the backup host, "
    "and pgBackRest cannot re-encrypt a repository: every backup and archived WAL made so far can only be read with "
    "this value. Keep a copy of postgres.env off the backup host; to change it, start a new repository (README, "
    "\"Backups\")."
)
REFUSED: dict[str, str] = {"PATRONI_RAFT_PASSWORD": RAFT_REASON, "BACKUP_CIPHER_PASS": BACKUP_CIPHER_REASON}
# Where each rotatable secret is used, for the plan shown before a rotation.
WHERE: dict[str, str] = {
    "POSTGRES_APP_PASS": "the app role (ALTER ROLE) and PgBouncer's auth file",
    "POSTGRES_SUPERPASS": "the superuser role and Patroni's copy (patroni.yml, pg_rewind)",
    "POSTGRES_REPL_PASS": "the replication role and Patroni's copy (patroni.yml, the replicas' primary_conninfo)",
    "POSTGRES_MONITOR_PASS": "the monitoring role (diagnostics)",
    "PATRONI_API_PASSWORD": "Patroni's REST API and patronictl on every DB node (patroni.yml)",
    "HAPROXY_STATS_PASSWORD": "HAProxy's stats page on every HAProxy node",
    "PGBOUNCER_ADMIN_PASS": "PgBouncer's admin console user (auth file)",
    "PGBOUNCER_STATS_PASS": "PgBouncer's stats console user (auth file)",
}


class RotationError(Exception):
    """The rotation cannot start: a name that cannot be rotated, a value that cannot be stored, a pending rotation of
    other names. The message names the variable, never a value."""


@dataclass
class Rotation:
    names: tuple[str, ...]
    credentials: creds.Credentials  # postgres.env with the new values of ``names``: what the run converges to
    previous: creds.Credentials  # postgres.env before the rotation
    resumed: bool  # a rotation killed midway, taken up again with the values it had


def check_names(names: Sequence[str] | None) -> tuple[str, ...]:
    """The names to rotate, in ROTATABLE's order (none given: every rotatable one); RotationError for any other."""
    if not names:
        return ROTATABLE
    problems = []
    for name in names:
        if name in REFUSED:
            problems.append(REFUSED[name])
        elif name not in ROTATABLE:
            problems.append(f"{name}: not a secret kbpg rotates; one of {', '.join(ROTATABLE)}")
    if problems:
        raise RotationError("\n".join(dict.fromkeys(problems)))
    return tuple(name for name in ROTATABLE if name in names)


def pending_names(workdir: Path) -> tuple[str, ...] | None:
    """The names of a rotation that has not finished (credentials/rotation.pending), or None."""
    path = workdir / PENDING_FILE
    if not path.exists():
        return None
    return tuple(name for name in ROTATABLE if name in _read(path))


def _read(path: Path) -> creds.Credentials:
    try:
        return creds.read_env(path)
    except creds.CredentialsError as exc:
        raise RotationError(f"{exc}\n(kbpg never overwrites credentials it cannot read)") from None


def _write_private(path: Path, text: str) -> None:
    directory = path.parent
    if stat.S_IMODE(directory.stat().st_mode) != 0o700:
        os.chmod(directory, 0o700)
    atomic_write(path, text.encode("utf-8"), mode=0o600)


def _render_partial(values: Mapping[str, str]) -> str:
    lines = ["# kbpg: a credential rotation in progress (new values, not yet in postgres.env). Keep this file 0600.",
             "# Finish it with: kbpg credentials rotate"]
    return "\n".join(lines + [f"{name}={creds.quote(value)}" for name, value in values.items()]) + "\n"


def begin(workdir: Path, names: Sequence[str] | None = None, typed: Mapping[str, str] | None = None) -> Rotation:
    """Start a rotation (or take up the pending one): the new values are chosen (``typed``, else generated) and
    written to rotation.pending, and postgres.env is copied to postgres.env.prev, before any host is touched.

    A pending rotation is resumed with its own values: ``names`` must then be empty or the same names, and nothing
    may be typed (the hosts may already hold the pending values)."""
    env_path = workdir / creds.ENV_FILE
    if not env_path.exists():
        raise RotationError(f"{env_path}: not found; there is nothing to rotate before `kbpg install` made a cluster")
    current = _read(env_path)
    missing = [name for name in (*creds.REQUIRED_NAMES, *ROTATABLE) if name not in current]
    if missing:
        raise RotationError(f"{env_path} lacks {', '.join(missing)}; run `kbpg install` once first")
    pending_path = workdir / PENDING_FILE
    if pending_path.exists():
        pending = _read(pending_path)
        rotating = tuple(name for name in ROTATABLE if name in pending)
        unknown = [name for name in pending if name not in ROTATABLE]
        if unknown or not rotating:
            raise RotationError(f"{pending_path}: holds {', '.join(unknown) or 'no value'}; it is not a file kbpg "
                                "wrote. Move it away only if no rotation was started (else the hosts hold its values)")
        asked = check_names(names) if names else rotating
        if set(asked) != set(rotating) or typed:
            raise RotationError(
                f"a rotation of {', '.join(rotating)} is pending ({pending_path}): finish it first with "
                "`kbpg credentials rotate` (no name, nothing typed); some hosts may already hold its values")
        merged = creds.Credentials({**current, **{name: pending[name] for name in rotating}})
        prev_path = workdir / PREV_FILE
        previous = _read(prev_path) if prev_path.exists() else creds.Credentials(current)
        merged.register_secrets()
        return Rotation(rotating, merged, previous, resumed=True)
    rotating = check_names(names)
    typed = dict(typed or {})
    problems = [f"{name}: typed but not rotated" for name in typed if name not in rotating]
    new: dict[str, str] = {}
    for name in rotating:
        if name in typed:
            value = typed[name]
            if (problem := creds.check_value(name, value)):
                problems.append(problem)
            elif value == current[name]:
                problems.append(f"{name}: the new value is the current one")
            new[name] = value
        else:
            new[name] = creds.generate_password()
    if problems:
        raise RotationError("\n".join(problems))
    merged = creds.Credentials({**current, **new})
    if (invalid := merged.validate()):
        raise RotationError("; ".join(invalid))
    for value in new.values():
        register_secret(value)
    # postgres.env.prev first: a run killed before rotation.pending exists starts afresh and copies it again.
    _write_private(workdir / PREV_FILE, env_path.read_text(encoding="utf-8"))
    _write_private(pending_path, _render_partial(new))
    return Rotation(rotating, merged, creds.Credentials(current), resumed=False)


def refuse_if_pending(workdir: Path) -> None:
    """TaskError while a rotation is pending: postgres.env still holds the old values, which an install would put
    back on the hosts that already have the new ones."""
    try:
        names = pending_names(workdir)
    except RotationError as exc:
        raise TaskError(f"a credential rotation is pending ({workdir / PENDING_FILE}) but its file cannot be read: "
                        f"{exc}") from None
    if names is not None:
        raise TaskError(f"a credential rotation ({', '.join(names) or 'unreadable'}) is pending "
                        f"({workdir / PENDING_FILE}): finish it first with `kbpg credentials rotate`; this run would "
                        "put the old values back. Nothing was changed.")


def _finish(rotation: Rotation):
    def finish(run: TaskRun) -> Outcome:
        workdir = run.ctx.workdir
        env_path = workdir / creds.ENV_FILE
        try:
            written = creds.write_env(env_path, rotation.credentials)
        except creds.CredentialsError as exc:
            raise TaskError(str(exc)) from None
        pending = workdir / PENDING_FILE
        if pending.exists():
            pending.unlink()
        prev = workdir / PREV_FILE
        kept = f"; the old values are in {prev} (0600): delete it once every application has reloaded postgres.env"
        return Outcome.of(written, (f"{env_path} now holds the new {', '.join(rotation.names)}" if written
                                    else f"{env_path} already held the new values") + (kept if prev.exists() else ""))
    return finish


def _verify(rotation: Rotation):
    def verify(run: TaskRun) -> Outcome:
        from .checks.c17_secrets import verify_all

        changed = {name: value for name, value in rotation.previous.items()
                   if name in rotation.names and rotation.credentials.get(name) != value}
        # Patroni applies a reloaded patroni.yml (its REST password) at its next loop, up to loop_wait later: asked
        # again until VERIFY_SECONDS have passed.
        started = time.monotonic()
        while True:
            run.check_cancel()
            problems = verify_all(run.ctx, rotation.credentials, changed)
            waited = time.monotonic() - started
            if not problems:
                break
            if waited > VERIFY_SECONDS:
                raise TaskError("; ".join(problems) + f" (still after {waited:.0f} s) — postgres.env keeps the old "
                                "values until this passes; run the same command again")
            time.sleep(VERIFY_PAUSE)
        return Outcome.unchanged(f"{len(rotation.names)} new values accepted where they are used, "
                                 f"{len(changed)} old ones refused" + (f" (after {waited:.0f} s)" if waited > 1 else ""))
    return verify


# A run killed between a host's new file and its reload leaves the file right and the service on the old values: the
# re-run finds the file unchanged, and the install's tasks reload only what they changed. These reload it anyway.

def _reload_every_member(run: TaskRun) -> Outcome:
    """Before R3's reload: every running member is reloaded (replicas first), not only those whose patroni.yml this
    run changed; Patroni cannot be asked which passwords it holds (the replicas' primary_conninfo, pg_rewind's)."""
    run.ctx.state.setdefault("patroni_config_changed", set()).update(host.name for host in run.ctx.db_hosts)
    return Outcome.unchanged("every member is reloaded next (a stopped run may have left patroni.yml unloaded)")


def _configure_pgbouncer(run: TaskRun) -> Outcome:
    """R2: the install's task, and a RELOAD when it found nothing to write (a RELOAD keeps clients and server
    connections; a stopped run may have written the auth file and not reloaded it)."""
    from .steps import s04_pgbouncer as pgbouncer

    outcome = pgbouncer.configure_pgbouncer(run)
    if outcome.status is not Status.UNCHANGED:
        return outcome  # written: reloaded (or started) by the task itself
    run.run("systemctl reload pgbouncer", what="reloading pgbouncer")
    return Outcome.unchanged(f"{outcome.detail}; reloaded (the auth file of a stopped run is read)", outcome.warnings)


def _configure_haproxy(run: TaskRun) -> Outcome:
    """R4: the install's task, and a reload when it found nothing to write but the stats page still refuses the new
    password (a stopped run wrote haproxy.cfg and did not reload it)."""
    from .checks import c17_secrets
    from .checks.probe import ProbeContext
    from .steps import rest_tls
    from .steps import s03_haproxy as haproxy

    outcome = haproxy.configure_haproxy(run, reconnect_pgbouncer=False)  # no RECONNECT: see s03's apply
    host = run.host
    assert host is not None
    if outcome.status is not Status.UNCHANGED:
        return outcome
    p = ProbeContext(run.ctx)
    values = run.ctx.credentials
    url = f"{p.scheme}://{host.address}:{run.settings.ports.haproxy_stats}/;csv"
    verdict, _ = c17_secrets.http(p, url, values["HAPROXY_STATS_USER"], "GET", 200, values["HAPROXY_STATS_PASSWORD"])
    if verdict != c17_secrets.REFUSED:
        return outcome
    before = rest_tls.worker_pid(run, host)
    run.run("systemctl reload haproxy", what="reloading haproxy")  # established sessions stay on the old process
    warnings = list(outcome.warnings)
    if before and not rest_tls.wait_new_process(run, host, before):
        warnings.append(f"HAProxy's new process did not answer within {rest_tls.NEW_PROCESS_WAIT:.0f} s after the reload")
    return Outcome.changed("reloaded: the running HAProxy still refused the new stats password", warnings)


def steps(rotation: Rotation) -> list[Step]:
    """The engine's steps of a rotation, in the order each value must reach its users (see the module's doc).

    Tasks of the install are reused: each converges the hosts to ``ctx.credentials`` (the merged values), which
    the caller sets to ``rotation.credentials``."""
    from .steps import s02_patroni as patroni

    names = set(rotation.names)
    roles = {"POSTGRES_APP_PASS", "POSTGRES_SUPERPASS", "POSTGRES_REPL_PASS", "POSTGRES_MONITOR_PASS"}
    in_patroni = {"POSTGRES_SUPERPASS", "POSTGRES_REPL_PASS", "PATRONI_API_PASSWORD"}
    in_bouncer = {"POSTGRES_APP_PASS", "PGBOUNCER_ADMIN_PASS", "PGBOUNCER_STATS_PASS"}
    found: list[Step] = [Step("R0", "Cluster healthy", [Task("cluster", "cluster", patroni.wait_for_cluster)])]
    if names & roles:
        found.append(Step("R1", "Roles", [Task("roles", "cluster", patroni.ensure_roles)]))
    if names & in_bouncer:
        found.append(Step("R2", "PgBouncer", [Task("config", "haproxy", _configure_pgbouncer)]))
    if names & in_patroni:
        found.append(Step("R3", "Patroni", [Task("config", "db", patroni.write_config),
                                            Task("every member", "cluster", _reload_every_member),
                                            Task("reload", "cluster", patroni.start_cluster),
                                            Task("cluster", "cluster", patroni.wait_for_cluster)]))
    if "HAPROXY_STATS_PASSWORD" in names:
        found.append(Step("R4", "HAProxy", [Task("config", "haproxy", _configure_haproxy)]))
    found.append(Step("R5", "Check", [Task("secrets", "cluster", _verify(rotation))]))
    found.append(Step("R6", "postgres.env", [Task("postgres.env", "local", _finish(rotation))]))
    return found


__all__ = ["ROTATABLE", "REFUSED", "WHERE", "PENDING_FILE", "PREV_FILE", "Rotation", "RotationError", "begin",
           "check_names", "pending_names", "refuse_if_pending", "steps"]
