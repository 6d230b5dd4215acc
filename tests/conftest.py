"""Shared fixtures: where the real public data sets live and a small demo retailer."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Folder of the real public data sets (read in place, never copied into the repo)."""
    if not REAL.is_dir():
        pytest.fail(f"real data sets not found at {REAL}: clone the project beside shared/")
    return REAL
