"""2. SSH reaches every node, and commands run as root there (directly or through sudo)."""

from __future__ import annotations

from ..ssh import Host
from .base import Check, CheckFailed, on_hosts
from .probe import ProbeContext


def ssh_and_sudo(p: ProbeContext, host: Host) -> str:
    out = p.ssh(host, "id -un")
    if out.strip() != "root":
        raise CheckFailed(f"{host.name}: commands run as {out.strip()!r}, not root")
    mode = p.sudo_mode(host)
    return f"{host.name}: ssh as {host.user}" + (f", sudo ({mode})" if mode != "root" else "")


CHECK = Check(2, "ssh and sudo", on_hosts("all", ssh_and_sudo))
