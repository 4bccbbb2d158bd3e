"""Wizard tests: the real app on a copy of a demo work directory. Nothing here connects to a host
(diagnostics and SSH checks are exercised for real by the tmux test on the lab)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent / "demo"
SIZE = (100, 30)


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A work dir with servers.tsv, kbpg.toml and postgres.env (fixed fake values), as the relative path "demo"."""
    shutil.copytree(DEMO, tmp_path / "demo")
    os.chmod(tmp_path / "demo" / "credentials", 0o700)
    os.chmod(tmp_path / "demo" / "credentials" / "postgres.env", 0o600)
    monkeypatch.chdir(tmp_path)
    return Path("demo")


@pytest.fixture
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A first install: servers.tsv only, no kbpg.toml, no credentials."""
    (tmp_path / "fresh").mkdir()
    shutil.copy(DEMO / "servers.tsv", tmp_path / "fresh" / "servers.tsv")
    monkeypatch.chdir(tmp_path)
    return Path("fresh")
