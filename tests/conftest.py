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


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 5,000-customer demo retailer (seed 42), generated once per test session, with its truth in truth/."""
    from cvm.demo import generate

    out = tmp_path_factory.mktemp("demo")
    generate(out, n_customers=5000, seed=42, as_of="2026-06-30")
    return out


@pytest.fixture()
def demo_config(demo_dir: Path, tmp_path: Path) -> Path:
    """configs/demo.yaml pointed at the session's demo data (and its truth), writing runs under tmp_path."""
    from cvm.config import config_for_data

    return config_for_data(ROOT / "configs" / "demo.yaml", demo_dir, tmp_path / "output", tmp_path / "demo.yaml")
