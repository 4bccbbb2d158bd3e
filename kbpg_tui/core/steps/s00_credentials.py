"""Step 00: credentials/postgres.env exists, is valid and private; generated only before a cluster exists."""

from __future__ import annotations

import os
import shlex
import stat
from concurrent.futures import ThreadPoolExecutor

from .. import backup, rotation, tls
from .. import credentials as creds
from ..engine import Outcome, Step, Task, TaskError, TaskRun
from ..ssh import Cancelled, Host, SshError
from .s02_patroni import CONFIG_PATH, RAFT_DIR


def env_path(run: TaskRun):
    return run.ctx.workdir / creds.ENV_FILE


def cluster_traces(run: TaskRun) -> dict[str, list[str]]:
    """DB node name → what shows a cluster is already there (patroni.yml, an initialised data directory, Raft's
    journal), asked of every DB node at once. A node that cannot be asked fails the task: not knowing whether a
    cluster exists is no licence to generate passwords."""
    data_dir = shlex.quote(run.settings.postgresql.effective_data_dir)
    script = (f"[ -e {CONFIG_PATH} ] && echo {CONFIG_PATH}; "
              f"[ -e {data_dir}/PG_VERSION ] && echo {data_dir}/PG_VERSION; "
              f"[ -n \"$(ls -A {RAFT_DIR} 2>/dev/null)\" ] && echo {RAFT_DIR}; true")

    def traces(host: Host) -> list[str]:
        try:
            return run.run(script, host=host, on_line=None, what="looking for an existing cluster").stdout.split()
        except Cancelled:
            raise
        except SshError as exc:
            raise TaskError(f"cannot tell whether {host.name} already runs a cluster ({str(exc).splitlines()[0]}); "
                            "nothing was generated: credentials are generated only once no DB node has a cluster") from None

    hosts = run.ctx.db_hosts
    with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
        found = dict(zip([h.name for h in hosts], pool.map(traces, hosts), strict=True))
    return {name: paths for name, paths in found.items() if paths}


def refuse_if_cluster_exists(run: TaskRun, problem: str) -> None:
    """The "never regenerate silently" rule: once a cluster exists its passwords live in it (roles, Patroni, Raft,
    PgBouncer); new ones would lock out every client and break replication and Raft."""
    found = cluster_traces(run)
    if found:
        where = "; ".join(f"{name} ({', '.join(paths)})" for name, paths in found.items())
        raise TaskError(
            f"{problem}, but a cluster already exists: {where}. Restore {env_path(run)} from your backup and run "
            "again; kbpg never generates credentials for a live cluster (to change them, use `kbpg credentials rotate`). "
            "Nothing was generated or written."
        )


def refuse_if_repository_exists(run: TaskRun, path) -> None:
    """BACKUP_CIPHER_PASS is new only for a backup host without a repository: one made with another key would be
    unreadable with a new one. The backup host is asked (any stanza under the repository's backup/ or archive/);
    one that cannot be asked stops the run, like a DB node in :func:`cluster_traces`."""
    host = run.ctx.backup_host
    if host is None or not run.settings.backup.enabled:
        return
    repo = shlex.quote(backup.REPO_PATH)
    script = f"for d in {repo}/backup/* {repo}/archive/*; do [ -e \"$d\" ] && echo \"$d\"; done; true"
    try:
        found = run.run(script, host=host, on_line=None, what="looking for a backup repository").stdout.split()
    except Cancelled:
        raise
    except SshError as exc:
        raise TaskError(f"cannot tell whether {host.name} holds a backup repository ({str(exc).splitlines()[0]}); "
                        f"nothing was generated: {creds.BACKUP_CIPHER_NAME} is generated only for a backup host "
                        "without one") from None
    if found:
        raise TaskError(
            f"{path} lacks {creds.BACKUP_CIPHER_NAME}, but {host.name} holds a backup repository ({', '.join(found)}) "
            "made with it: restore postgres.env from your copy (without that value the backups cannot be read). "
            "Nothing was generated or written."
        )


def ensure_credentials(run: TaskRun) -> Outcome:
    path = env_path(run)
    rotation.refuse_if_pending(run.ctx.workdir)  # the hosts may hold newer values than postgres.env
    from ..ops import restore  # (not at the top: ops.restore imports the steps)

    restore.refuse_if_pending(run.ctx.workdir)  # Patroni stopped, data directories moved aside: no install now
    existing = None
    if path.exists():
        try:
            existing = creds.read_env(path)
        except creds.CredentialsError as exc:
            raise TaskError(f"{exc}; fix the file (kbpg never overwrites credentials it cannot read)") from None
    values, generated = creds.generate(existing)
    # A missing file, or one lacking names (a lost line, a hand edit): generate only before any cluster exists.
    # Names that only make something new (the monitoring role kbpg adds to clusters it installed before) are
    # exempt: adding them changes nothing the cluster holds.
    lacking = [name for name in generated if existing is None or name not in creds.ADDITIVE_NAMES]
    if lacking:
        refuse_if_cluster_exists(run, f"{path} is missing" if existing is None else f"{path} lacks {', '.join(lacking)}")
    if existing is not None and creds.BACKUP_CIPHER_NAME in generated:
        refuse_if_repository_exists(run, path)
    problems = values.validate()
    if problems:
        raise TaskError(f"{path}: " + "; ".join(problems))
    if existing is None:
        creds.write_env(path, values)
        run.ctx.credentials = values
        return Outcome.changed(f"generated {len(generated)} values into {path} (0600)")
    fixed = []
    if generated:
        creds.write_env(path, values)
        fixed.append(f"added {', '.join(generated)}")
    run.ctx.credentials = values
    if stat.S_IMODE(path.parent.stat().st_mode) != 0o700:
        os.chmod(path.parent, 0o700)
        fixed.append(f"{path.parent} set to 0700")
    if stat.S_IMODE(path.stat().st_mode) != 0o600:
        os.chmod(path, 0o600)
        fixed.append(f"{path} set to 0600")
    return Outcome.of(bool(fixed), "; ".join(fixed) or f"{path} present and valid")


def ensure_certificates(run: TaskRun) -> Outcome:
    """With [tls] enabled: kbpg's CA and a certificate per selected host in credentials/tls/ (issued, or renewed by
    tls.renewal_reason's rules), and POSTGRES_SSL_ROOT_CERT (ca.crt's absolute path) in postgres.env. Says what was
    issued or renewed and why; never shows key material."""
    if not run.settings.tls.enabled:
        return Outcome.unchanged("TLS disabled in kbpg.toml ([tls] enabled = false)")
    workdir = run.ctx.workdir
    try:
        done = tls.renew_all(run.ctx, force=bool(run.ctx.state.get("tls_renew_all")))  # kbpg tls renew --all
    except tls.TlsError as exc:
        raise TaskError(str(exc)) from None
    changes = [f"{name}: {detail}" for name, changed, detail in done if changed]
    run.ctx.state["tls_issued"] = {name for name, changed, _detail in done[1:] if changed}
    path = env_path(run)
    try:
        values = creds.read_env(path)
    except creds.CredentialsError as exc:
        raise TaskError(f"{exc}; fix the file (kbpg never overwrites credentials it cannot read)") from None
    root_cert = str(tls.ca_path(workdir))
    if values.get(creds.SSL_ROOT_CERT_NAME) != root_cert:
        if (problem := creds.check_value(creds.SSL_ROOT_CERT_NAME, root_cert)):
            raise TaskError(f"{problem}: move the work directory to a path without such characters")
        was = creds.SSL_ROOT_CERT_NAME in values
        values[creds.SSL_ROOT_CERT_NAME] = root_cert
        try:
            creds.write_env(path, values)
        except creds.CredentialsError as exc:
            raise TaskError(str(exc)) from None
        changes.append(f"{'updated' if was else 'added'} {creds.SSL_ROOT_CERT_NAME} in {path}")
    run.ctx.credentials[creds.SSL_ROOT_CERT_NAME] = root_cert
    if changes:
        return Outcome.changed("; ".join(changes))
    soonest = min((tls.cert_info(tls.node_files(workdir, name)[0]).days_left for name, _c, _d in done[1:]),
                  default=None)
    left = f", the first expires in {soonest:.0f} days" if soonest is not None else ""
    return Outcome.unchanged(f"CA and {len(done) - 1} node certificates valid{left}")


STEP = Step("00", "Credentials", [Task("credentials", "local", ensure_credentials),
                                  Task("tls", "local", ensure_certificates)])
