"""Step 00: credentials/postgres.env exists, is valid and private; generated only before a cluster exists."""

from __future__ import annotations

import os
import shlex
import stat
from concurrent.futures import ThreadPoolExecutor

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
            "again; kbpg never generates credentials for a live cluster (rotating them is not supported yet). "
            "Nothing was generated or written."
        )


def ensure_credentials(run: TaskRun) -> Outcome:
    path = env_path(run)
    existing = None
    if path.exists():
        try:
            existing = creds.read_env(path)
        except creds.CredentialsError as exc:
            raise TaskError(f"{exc}; fix the file (kbpg never overwrites credentials it cannot read)") from None
    values, generated = creds.generate(existing)
    if generated:
        # A missing file, or one lacking names (a lost line, a hand edit): generate only before any cluster exists.
        refuse_if_cluster_exists(run, f"{path} is missing" if existing is None else f"{path} lacks {', '.join(generated)}")
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


STEP = Step("00", "Credentials", [Task("credentials", "local", ensure_credentials)])
