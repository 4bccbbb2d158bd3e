"""Shared fixtures. Tests that connect anywhere use the lab's own files, never the real inventory's addresses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
REAL_INVENTORY = SHARED / "fixtures" / "keybuzz-servers.tsv"


@pytest.fixture
def real_inventory() -> Path:
    if not REAL_INVENTORY.exists():
        pytest.fail(f"the company's inventory fixture is missing: {REAL_INVENTORY}")
    return REAL_INVENTORY


def run_kbpg(*args: str, workdir: Path | None = None, env: dict | None = None, input: str | None = None):
    """Run the real ``kbpg`` entry point in a subprocess, as an operator would."""
    command = [sys.executable, "-m", "kbpg_tui"]
    if workdir is not None:
        command += ["--workdir", str(workdir)]
    command += list(args)
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=full_env, input=input, timeout=120)
