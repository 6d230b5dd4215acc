"""The data step on real public data sets, through the runner and the shipped column maps (configs/real/)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from cvm.config import load_config
from cvm.runner import run

pytestmark = [pytest.mark.real, pytest.mark.notebook]
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "real"


def data_summary(name: str, tmp_path: Path, real_data: Path) -> dict:
    config = load_config(CONFIGS / f"{name}.yaml", steps=["data"])
    config = replace(config, output_dir=tmp_path)
    result = run(config, progress=False)
    return json.loads((result.run_dir / "data" / "summary.json").read_text())


def test_online_retail_published_figures(tmp_path: Path, real_data: Path) -> None:
    """UCI Online Retail (PROVENANCE.txt and the standard RFM tutorials): 541,909 rows, 135,080 without CustomerID,
    9,288 cancellation rows, 4,372 customers; dropping exact duplicates leaves 401,604 rows (5,225 duplicates)."""
    tx = data_summary("online_retail", tmp_path, real_data)["tables"]["transactions"]
    assert tx["rows_read"] == 541_909
    assert tx["rejected_by_reason"] == {"missing customer_id": 135_080, "duplicate order line": 5_225}
    assert tx["rows_kept"] == 401_604
    assert tx["cancellation_rows_read"] == 9_288
    assert tx["customers"] == 4_372


def test_online_retail_ii_parquet_schema(tmp_path: Path, real_data: Path) -> None:
    """UCI Online Retail II 2009-2010 (PROVENANCE.txt): 525,461 rows, 107,927 without Customer ID, 4,383 customers,
    10,206 'C' invoices; read from Parquet through another column map."""
    tx = data_summary("online_retail_ii", tmp_path, real_data)["tables"]["transactions"]
    assert tx["rows_read"] == 525_461
    assert tx["rejected_by_reason"]["missing customer_id"] == 107_927
    assert tx["customers"] == 4_383
    assert tx["cancellation_rows_read"] == 10_206


def test_contacts_only_sources(tmp_path: Path, real_data: Path) -> None:
    """Hillstrom (64,000 anonymised rows) and Cookie Cats (90,189 users) load with value maps, a control arm and
    constants; Hillstrom has no customer id, so no customer view is built (PROVENANCE.txt row counts)."""
    hill = data_summary("hillstrom", tmp_path, real_data)
    assert hill["tables"]["contacts"]["rows_kept"] == 64_000 and "n_customers" not in hill
    cats = data_summary("cookie_cats", tmp_path / "cats", real_data)
    assert cats["tables"]["contacts"]["rows_kept"] == 90_189 and cats["n_customers"] == 90_189
