"""What the wizard knows about the operator's work directory, loaded from and saved to the core's files."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..core import credentials as creds
from ..core import inventory as inv
from ..core import rotation
from ..core import settings as cfg
from ..core.files import atomic_write, resolve

ANSWERS_FILE = "kbpg.toml"


class AnswersInvalid(Exception):
    """kbpg.toml on disk is invalid: the wizard refuses to write over it (the operator's values would be lost)."""

    def __init__(self, errors: list[str]):
        super().__init__("kbpg.toml is invalid and is not overwritten:\n" + "\n".join(errors))
        self.errors = errors


@dataclass
class WizardState:
    workdir: Path
    settings: cfg.Settings = field(default_factory=cfg.Settings)
    settings_error: str = ""
    # The errors of the kbpg.toml on disk, each "kbpg.toml: key: what is allowed". While there are any, the
    # settings in memory are the defaults, not the operator's: nothing may save them over the file.
    answers_errors: list[str] = field(default_factory=list)
    answers_backup: Path | None = None  # where the invalid file was kept, once the operator chose to save over it
    credentials: creds.Credentials = field(default_factory=creds.Credentials)
    origins: dict[str, str] = field(default_factory=dict)  # name -> "kept" | "generated" | "typed"
    credentials_error: str = ""
    credentials_saved: bool = False
    selection: inv.Selection | None = None
    inventory_problems: list[inv.Problem] = field(default_factory=list)

    @property
    def answers_path(self) -> Path:
        return self.workdir / ANSWERS_FILE

    @property
    def env_path(self) -> Path:
        return self.workdir / creds.ENV_FILE

    @property
    def inventory_path(self) -> Path:
        return resolve(self.workdir, self.settings.inventory.path)

    def pending_rotation(self) -> tuple[tuple[str, ...] | None, str]:
        """The names of a credential rotation that has not finished (None: none), and why
        credentials/rotation.pending cannot be read ("" when it can)."""
        try:
            return rotation.pending_names(self.workdir), ""
        except (rotation.RotationError, OSError) as exc:
            return (), str(exc)

    def cluster_problems(self) -> list[str]:
        """Why nothing can be run against the cluster from this work directory ([]: it can)."""
        problems = []
        if not self.answers_path.exists():
            problems.append(f"no kbpg.toml in {self.workdir}")
        if self.settings_error:
            problems.append(self.settings_error)
        if not self.env_path.exists():
            problems.append("no credentials/postgres.env")
        if not self.selection:
            problems.append("servers.tsv has errors")
        return problems

    @classmethod
    def load(cls, workdir: Path) -> "WizardState":
        state = cls(workdir)
        state.load_settings()
        state.load_credentials()
        state.load_inventory()
        return state

    def load_settings(self) -> bool:
        """(Re)read kbpg.toml; returns True when it is absent or valid. Its errors go to ``answers_errors``."""
        path = self.answers_path
        self.answers_errors, self.settings_error = [], ""
        if not os.path.lexists(path):  # a dangling symlink is the operator's file too
            self.settings = cfg.Settings()
            return True
        try:
            self.settings = cfg.load_settings(path)
        except cfg.SettingsError as exc:
            self.settings = cfg.Settings()
            self.answers_errors = [f"{ANSWERS_FILE}: {error}" for error in exc.errors]
        except (OSError, ValueError, RecursionError) as exc:  # never a traceback for a file the operator broke
            self.settings = cfg.Settings()
            self.answers_errors = [f"{ANSWERS_FILE}: cannot read: {exc}"]
        self.settings_error = "\n".join(self.answers_errors)
        return not self.answers_errors

    def load_credentials(self) -> None:
        self.credentials_error = ""
        if not self.env_path.exists():
            return
        try:
            self.credentials = creds.read_env(self.env_path)
            self.origins = {name: "kept" for name in self.credentials}
            self.credentials_saved = True
        except creds.CredentialsError as exc:
            self.credentials_error = str(exc)

    def load_inventory(self) -> None:
        inventory = inv.parse_file(self.inventory_path)
        try:
            self.selection = inv.select(inventory, self.settings.inventory.db_rule, self.settings.inventory.haproxy_rule,
                                        self.settings.inventory.backup_rule)
            self.inventory_problems = list(self.selection.warnings)
        except inv.InventoryError as exc:
            self.selection = None
            self.inventory_problems = exc.problems

    def save_settings(self, backup: bool = False) -> bool:
        """Write kbpg.toml. While the file on disk is invalid this raises :class:`AnswersInvalid`, unless
        ``backup`` (the operator's explicit choice): then the file is first kept as kbpg.toml.bak."""
        if self.answers_errors:
            if not backup:
                raise AnswersInvalid(self.answers_errors)
            self.answers_backup = self.backup_answers()
            self.answers_errors, self.settings_error = [], ""
        self.workdir.mkdir(parents=True, exist_ok=True)
        return cfg.save_settings(self.settings, self.answers_path)

    def backup_answers(self) -> Path:
        """Copy kbpg.toml byte for byte to kbpg.toml.bak (or .bak.1, .bak.2 … if an older, different backup is
        there); raises OSError when it cannot be read or written, and then nothing is saved over it."""
        data = self.answers_path.read_bytes()
        mode = stat.S_IMODE(self.answers_path.stat().st_mode) & 0o666  # as private as the file was
        for n in range(1000):
            target = self.workdir / (f"{ANSWERS_FILE}.bak" + (f".{n}" if n else ""))
            if not os.path.lexists(target):
                break
            if target.is_file() and not target.is_symlink() and target.read_bytes() == data:
                return target  # already kept
        else:
            raise OSError(f"too many {ANSWERS_FILE}.bak files in {self.workdir}")
        atomic_write(target, data, mode=mode)
        return target
