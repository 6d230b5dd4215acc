"""The data notebook on the demo retailer: every generated row is accounted for, and the planted problems are found."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cvm.config import load_config
from cvm.runner import run

pytestmark = pytest.mark.notebook


def test_demo_data_step(demo_config: Path, demo_dir: Path) -> None:
    """Known truth: the generator's own files (row counts, customers) and its anomaly list."""
    result = run(load_config(demo_config, steps=["data"]), progress=False)
    summary = json.loads((result.run_dir / "data" / "summary.json").read_text())
    tx = pd.read_parquet(demo_dir / "transactions.parquet")
    crm = pd.read_csv(demo_dir / "customers.csv")
    assert summary["tables"]["transactions"]["rows_read"] == len(tx)
    assert summary["tables"]["transactions"]["rows_rejected"] == 0
    assert summary["tables"]["customers"]["rows_kept"] == len(crm)
    assert summary["tables"]["transactions"]["return_rows"] == int((tx["amount"] < 0).sum())
    assert summary["n_customers"] == len(set(crm["customer_id"]) | set(tx["customer_id"]))
    html = (result.run_dir / "data" / "report.html").read_text()
    assert "@example.com" not in html
    assert not any(phone in html for phone in crm["phone"].dropna()), "no phone number in the client report"
