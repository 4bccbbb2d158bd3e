"""Putting a run together: settings + inventory + credentials + SSH → an engine ready to run steps.

The CLI and the TUI both call :func:`prepare` and then run steps with the engine;
they differ only in the event sink and the host-key prompt they pass.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from . import credentials as creds
from .engine import Context, Engine, StepReport
from .events import EventSink, Status
from .files import resolve
from .inventory import Selection, load_selection
from .logs import register_secret
from .settings import Settings
from .ssh import ConnectionPool, Host, HostKeyPrompt, KnownHosts, SshOptions

SUDO_ENV_FILE = Path("credentials") / "sudo.env"
SUDO_VARIABLE = "KBPG_SUDO_PASSWORD"


def sudo_passwords(workdir: Path):
    """Sudo passwords for non-root USER_SSH: KBPG_SUDO_PASSWORD[_<HOST>] from the environment or credentials/sudo.env."""
    values: dict[str, str] = {}
    path = workdir / SUDO_ENV_FILE
    if path.exists():
        problem = creds.file_mode_problem(path)
        if problem:
            raise creds.CredentialsError(f"{problem} (it holds sudo passwords)")
        values.update(creds.read_env(path))
    values.update({k: v for k, v in os.environ.items() if k.startswith(SUDO_VARIABLE)})
    for value in values.values():
        register_secret(value)

    def lookup(host: Host) -> str | None:
        specific = f"{SUDO_VARIABLE}_{re.sub(r'[^A-Z0-9]', '_', host.name.upper())}"
        return values.get(specific) or values.get(SUDO_VARIABLE)

    return lookup


def ssh_options(workdir: Path, settings: Settings) -> SshOptions:
    ssh = settings.ssh
    return SshOptions(
        key_file=str(resolve(workdir, ssh.key_file)) if ssh.key_file else None,
        connect_timeout=ssh.connect_timeout,
        command_timeout=ssh.command_timeout,
        pinned_host_keys=dict(ssh.pinned_host_keys),
        silence_timeout=ssh.silence_timeout,
    )


@dataclass
class Run:
    ctx: Context
    engine: Engine

    def close(self) -> None:
        self.ctx.pool.close()


def prepare(
    workdir: Path,
    settings: Settings,
    sink: EventSink,
    prompt: HostKeyPrompt | None = None,
    cancel: threading.Event | None = None,
    selection: Selection | None = None,
) -> Run:
    """Build the context of a run. Raises InventoryError / CredentialsError on bad input."""
    if selection is None:
        selection = load_selection(resolve(workdir, settings.inventory.path), settings.inventory.db_rule,
                                   settings.inventory.haproxy_rule, settings.inventory.backup_rule)
    cancel = cancel or threading.Event()
    known_hosts = KnownHosts(resolve(workdir, settings.ssh.known_hosts))
    pool = ConnectionPool(ssh_options(workdir, settings), known_hosts, sink, prompt, sudo_passwords(workdir), cancel)
    env_path = workdir / creds.ENV_FILE
    credentials = creds.read_env(env_path) if env_path.exists() else creds.Credentials()
    ctx = Context(settings, credentials, selection, workdir, pool, sink, cancel)
    return Run(ctx, Engine(ctx))


def summarize(reports: list[StepReport]) -> dict[str, int]:
    counts = {status.value: 0 for status in (Status.CHANGED, Status.UNCHANGED, Status.FAILED, Status.CANCELLED)}
    for report in reports:
        for task in report.tasks:
            if task.status.value in counts:
                counts[task.status.value] += 1
    return counts
