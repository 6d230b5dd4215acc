"""The knowledge notebook end to end: on the demo (known truth), on CDNOW (published parameters) and on UCI Online
Retail through its column map."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from cvm.config import load_config
from cvm.demo import load_truth
from cvm.knowledge import KNOWLEDGE_COLUMNS
from cvm.runner import run

pytestmark = pytest.mark.notebook
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def knowledge_run(config_path: Path, tmp_path: Path) -> tuple[Path, dict]:
    config = replace(load_config(config_path, steps=["data", "knowledge"]), output_dir=tmp_path / "out")
    run_dir = run(config, progress=False).run_dir
    return run_dir, json.loads((run_dir / "knowledge" / "summary.json").read_text())


def test_demo_knowledge_recovers_the_generator_truth(demo_config: Path, demo_dir: Path, tmp_path: Path) -> None:
    """Known truth (cvm.demo): the BG/NBD and Gamma-Gamma population parameters used to simulate the purchases, and
    the planted anomalies."""
    run_dir, summary = knowledge_run(demo_config, tmp_path)
    truth = load_truth(demo_dir)
    for model, params in (("bgnbd", truth.bgnbd), ("gamma_gamma", truth.gamma_gamma)):
        for name, true_value in params.items():
            estimate, se = summary[model][name], summary[model]["se"][name]
            assert abs(estimate - true_value) < 2 * se, f"{model}.{name}: {estimate:.3f} ± {se:.3f} vs {true_value}"
    table = pd.read_parquet(run_dir / "knowledge" / "customer_knowledge.parquet")
    assert list(table.columns[:len(KNOWLEDGE_COLUMNS)]) == KNOWLEDGE_COLUMNS
    assert table["customer_id"].is_unique and len(table) == summary["n_customers"]
    planted = {c for ids in truth.anomalies.values() for c in ids}
    flagged = set(table.loc[table["anomaly_flag"], "customer_id"])
    assert planted <= flagged, f"missed planted anomalies: {planted - flagged}"
    assert len(flagged) < 0.01 * len(table), "anomaly rules flag only a small share of normal customers"
    assert sum(summary["segments"].values()) == summary["n_with_purchases"]
    assert summary["churn"]["holdout_auc"] > 0.75
    alive = truth.customer_truth.set_index("customer_id")["alive_at_as_of"]
    scored = table.dropna(subset=["p_alive"]).set_index("customer_id")
    both = scored.index.intersection(alive.index)
    assert scored.loc[both, "p_alive"].corr(alive.loc[both].astype(float)) > 0.5, "P(alive) tracks the true state"
    cards = sorted((run_dir / "knowledge" / "cards").glob("customer_*.html"))
    assert len(cards) == 3 and not any("@example.com" in p.read_text() for p in cards)
    assert "@example.com" not in (run_dir / "knowledge" / "report.html").read_text()


@pytest.mark.real
def test_cdnow_published_parameters_through_the_notebook(tmp_path: Path, real_data: Path) -> None:
    """Fader, Hardie & Lee (2005): BG/NBD on the CDNOW sample, 39-week calibration to 1997-09-30, weeks, repeat
    purchase days: r=0.243, alpha=4.414, a=0.793, b=2.426, LL=-9582.4; Fader & Hardie note 025 Gamma-Gamma on the same
    calibration: p=6.25, q=3.74, gamma=15.44."""
    _, summary = knowledge_run(CONFIGS / "real" / "cdnow.yaml", tmp_path)
    bg = summary["holdout"]["calibration_bgnbd"]
    assert (round(bg["r"], 3), round(bg["alpha"], 3), round(bg["a"], 3), round(bg["b"], 3)) == \
        (0.243, 4.414, 0.793, 2.426)
    assert round(bg["log_likelihood"], 1) == -9582.4
    gg = summary["holdout"]["calibration_gamma_gamma"]
    assert (round(gg["p"], 2), round(gg["q"], 2), round(gg["gamma"], 2)) == (6.25, 3.74, 15.44)
    assert summary["n_customers"] == 2357
    assert summary["holdout"]["actual"] == 1882, "repeat purchase days in weeks 40-78, counted from the raw file"
    assert abs(summary["holdout"]["pct_error"]) < 15


@pytest.mark.real
def test_online_retail_through_its_column_map(tmp_path: Path, real_data: Path) -> None:
    """UCI Online Retail (PROVENANCE.txt): returns netted, 135,080 rows without CustomerID dropped; 4,339 customers
    with a purchase and 18,536 purchase invoices (the standard RFM-tutorial figures)."""
    run_dir, summary = knowledge_run(CONFIGS / "real" / "online_retail.yaml", tmp_path)
    data = json.loads((run_dir / "data" / "summary.json").read_text())
    assert data["tables"]["transactions"]["rejected_by_reason"]["missing customer_id"] == 135_080
    assert summary["n_customers"] == 4_372
    # customer 15802 bought and returned more on the same day: no net purchase day, so nothing to score
    assert summary["n_with_purchases"] == 4_338
    assert summary["kpis"]["customers_to_date"] == 4_339
    assert summary["bgnbd"]["converged"] and summary["gamma_gamma"]["converged"]
