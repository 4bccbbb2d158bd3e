"""The core must never pull in Textual: it runs under the plain CLI and in tests without a screen."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import kbpg_tui.core


def core_modules() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.walk_packages(kbpg_tui.core.__path__, prefix="kbpg_tui.core.")
    ) + ["kbpg_tui.core", "kbpg_tui.cli"]


@pytest.mark.parametrize("module", core_modules())
def test_core_module_does_not_import_textual(module: str) -> None:
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        "leaked = sorted(name for name in sys.modules if name == 'textual' or name.startswith('textual.'))\n"
        "print(','.join(leaked))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{module} imports Textual: {result.stdout.strip()}"


def test_the_core_has_modules_to_check() -> None:
    modules = core_modules()
    for expected in ("kbpg_tui.core.inventory", "kbpg_tui.core.credentials", "kbpg_tui.core.settings", "kbpg_tui.core.events"):
        assert expected in modules
