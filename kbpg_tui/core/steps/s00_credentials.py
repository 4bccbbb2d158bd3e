"""Step 00: credentials/postgres.env exists, is valid and private; generated only before a cluster exists."""

from __future__ import annotations

import os
import stat

from .. import credentials as creds
from ..engine import Outcome, Step, Task, TaskError, TaskRun


def env_path(run: TaskRun):
    return run.ctx.workdir / creds.ENV_FILE


def ensure_credentials(run: TaskRun) -> Outcome:
    path = env_path(run)
    if path.exists():
        try:
            values = creds.read_env(path)
        except creds.CredentialsError as exc:
            raise TaskError(f"{exc}; fix the file (kbpg never overwrites credentials it cannot read)") from None
        problems = values.validate()
        if problems:
            raise TaskError(f"{path}: " + "; ".join(problems))
        # Names added by later kbpg versions (new secrets) are filled in; existing values are never touched.
        values, generated = creds.generate(values)
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
    # Once a cluster exists its passwords live in it: generating new ones would lock everybody out.
    for host in run.ctx.db_hosts:
        probe = run.run("test -e /etc/patroni/config.yml && echo cluster || true", host=host)
        if "cluster" in probe.stdout:
            raise TaskError(
                f"{path} is missing but {host.name} already runs a cluster configured by kbpg; restore the file "
                "from your backup (new credentials cannot be generated silently for a live cluster)"
            )
    values, generated = creds.generate()
    creds.write_env(path, values)
    run.ctx.credentials = values
    return Outcome.changed(f"generated {len(generated)} values into {path} (0600)")


STEP = Step("00", "Credentials", [Task("credentials", "local", ensure_credentials)])
