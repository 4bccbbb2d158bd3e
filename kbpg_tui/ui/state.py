"""What the wizard knows about the operator's work directory, loaded from and saved to the core's files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core import credentials as creds
from ..core import inventory as inv
from ..core import settings as cfg
from ..core.files import resolve

ANSWERS_FILE = "kbpg.toml"


@dataclass
class WizardState:
    workdir: Path
    settings: cfg.Settings = field(default_factory=cfg.Settings)
    settings_error: str = ""
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

    @classmethod
    def load(cls, workdir: Path) -> "WizardState":
        state = cls(workdir)
        if state.answers_path.exists():
            try:
                state.settings = cfg.load_settings(state.answers_path)
            except cfg.SettingsError as exc:
                state.settings_error = str(exc)
        state.load_credentials()
        state.load_inventory()
        return state

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
            self.selection = inv.select(inventory, self.settings.inventory.db_rule, self.settings.inventory.haproxy_rule)
            self.inventory_problems = list(self.selection.warnings)
        except inv.InventoryError as exc:
            self.selection = None
            self.inventory_problems = exc.problems

    def save_settings(self) -> bool:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return cfg.save_settings(self.settings, self.answers_path)
