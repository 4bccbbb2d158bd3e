"""12. Secrets stay secret: postgres.env here is 0600 in a 0700 directory, and no host has a secret in a
world-readable file."""

from __future__ import annotations

from .. import credentials as creds
from ..ssh import Host
from .base import Check, CheckFailed, CheckWarning, on_hosts, once
from .probe import ProbeContext

SECRET_SCAN = r"""
umask 077; shm=/dev/shm; [ -d "$shm" ] || shm=/tmp
patterns=$(mktemp -p "$shm"); trap 'rm -f "$patterns"' EXIT; cat > "$patterns"   # in memory, never on disk
find /etc /var/lib/postgresql /var/lib/patroni /var/log /root /home /tmp \
     -xdev -type f -perm -o+r -size -2M 2>/dev/null \
  | grep -v '^/etc/ssl/' | xargs -r -d '\n' grep -lF -f "$patterns" 2>/dev/null || true
"""


def local_secrets(p: ProbeContext) -> str:
    path = p.ctx.workdir / creds.ENV_FILE
    if not path.exists():
        raise CheckFailed(f"{path} is missing")
    problem = creds.file_mode_problem(path)
    if problem:
        raise CheckFailed(problem)
    return f"{creds.ENV_FILE} is 0600 in a 0700 directory"


def host_secrets(p: ProbeContext, host: Host) -> str:
    secret_values = [v for k, v in p.values.items() if creds.is_secret_name(k) and len(v) >= 8]
    if not secret_values:
        # An empty pattern list would be one empty line, and grep -F matches every file with it.
        raise CheckWarning(f"{host.name}: no secret of 8 characters or more to look for")
    # A walk over /etc, /var/log and /home takes longer than a query on a big host: a larger budget.
    found = p.ssh(host, SECRET_SCAN, stdin="\n".join(secret_values) + "\n", timeout=p.timeout * 3).split()
    if found:
        raise CheckFailed(f"{host.name}: a secret is in world-readable {', '.join(found[:3])}")
    return f"{host.name}: no secret in a world-readable file"


CHECK = Check(12, "secret files", on_hosts("all", host_secrets), once("credentials/postgres.env", local_secrets))
