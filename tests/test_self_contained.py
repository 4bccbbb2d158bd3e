"""A clone of the repository alone runs kbpg and its tests: nothing reads the shared directory beside the repository.

(The examples below are written with a {s} placeholder so that a plain grep for that directory finds no hit here.)
"""

from __future__ import annotations

import re
from pathlib import Path

from .conftest import REAL_INVENTORY, REPO

# `../{s}`, `/work/{s}`, the repository's parent joined with "{s}" (REPO.parent / "{s}", parents[1] / "{s}",
# os.path.join(root, "..", "{s}")) where {s} is NAME; a directory of that name inside tmp_path is fine.
NAME = "shar" "ed"  # the directory beside the repository (split so that a grep for it finds no hit here)
OUTSIDE = re.compile(
    r"""\.\./shared\b|/work/shared\b"""
    r"""|\.parents?(\[\d+\])?\s*/\s*["']shared["']"""
    r"""|["']\.\.["']\s*,\s*["']shared["']"""
)
SCANNED = ("kbpg_tui", "tests", "scripts", ".ci")


def scanned_files() -> list[Path]:
    files = []
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.resolve() != Path(__file__).resolve():
                files.append(path)
    return files


def test_no_file_refers_to_the_shared_directory_outside_the_repository() -> None:
    files = scanned_files()
    assert any(path.name == "conftest.py" for path in files) and any(path.parts[-2:] == (".ci", "run") for path in files)
    hits = []
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
    assert not hits, "files that read outside the repository (keep a copy under tests/fixtures/ instead):\n" + "\n".join(hits)


def test_the_pattern_finds_what_it_is_for() -> None:
    for line in ('SHARED = REPO.parent / "{s}"', "cat ../{s}/fixtures/x.tsv", "open('/work/{s}/docs/design.md')",
                 "os.path.join(root, '..', '{s}')", 'Path(__file__).parents[2] / "{s}" / "fixtures"',
                 'REPO.parent/"{s}"'):
        assert OUTSIDE.search(line.format(s=NAME)), line
    for line in ('shared_buffers = "256MB"', '"""Small helpers shared by the screens."""', 'target = tmp_path / "{s}"'):
        assert not OUTSIDE.search(line.format(s=NAME)), line


def test_the_company_inventory_is_a_copy_inside_the_repository() -> None:
    assert REAL_INVENTORY.resolve().is_relative_to(REPO.resolve())
    assert REAL_INVENTORY.is_file()
