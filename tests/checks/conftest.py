"""Each diagnostic check against fakes (tests/fakes.py FakeProbeContext): no host, no database, no HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..fakes import FakeProbeContext, lab_probe_context


@pytest.fixture
def make(tmp_path: Path):
    """make(**kwargs) -> a FakeProbeContext on the lab's inventory (see tests/fakes.py lab_probe_context)."""
    def _make(**kwargs) -> FakeProbeContext:
        return lab_probe_context(tmp_path, **kwargs)
    return _make
