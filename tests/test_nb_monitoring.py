"""The monitoring notebook run headless: the demo retailer against the generator's TRUE uplift, and two real tests
(Hillstrom 2008, Cookie Cats) against their published group figures (PROVENANCE.txt of each data folder)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from cvm import demo, uplift
from cvm.config import load_config
from cvm.runner import run

pytestmark = pytest.mark.notebook
ROOT = Path(__file__).resolve().parents[1]


def _run(config_path: Path, tmp_path: Path) -> Path:
    config = dataclasses.replace(load_config(config_path), output_dir=tmp_path / "output",
                                 steps=("data", "monitoring"))
    return run(config, progress=False).run_dir


def _true_uplift(demo_dir: Path, contacts: pd.DataFrame, campaigns: pd.DataFrame) -> pd.Series:
    """Average true uplift (p_treated - p_control) over each arm's treated customers at the contact date."""
    truth = demo.load_truth(demo_dir)
    ct = truth.customer_truth.set_index("customer_id", drop=False)
    types = campaigns.set_index("campaign_id")["type"]
    out = {}
    treated = contacts[contacts["group"] == "treatment"]
    for (cid, arm), rows in treated.groupby(["campaign_id", "arm"]):
        resp = demo.true_response(ct.loc[rows["customer_id"]].reset_index(drop=True), types[cid],
                                  rows["channel"].iloc[0], rows["discount_pct"].to_numpy(float), truth,
                                  at=rows["contact_date"].iloc[0])
        out[(cid, arm)] = float((resp["p_treated"] - resp["p_control"]).mean())
    return pd.Series(out)


def test_demo_monitoring_recovers_true_uplift(demo_config: Path, demo_dir: Path, tmp_path: Path) -> None:
    """Simulation with known truth (the demo generator): the true average uplift of each arm is the mean of
    p_treated - p_control over its treated customers. With 95% intervals and independent arms the number of
    intervals that miss is Binomial(n_arms, 0.05): with 25 arms, P(more than 20% miss) is about 0.1%, so we require at
    least 80% coverage (arms sharing a control group are positively correlated, which widens that spread a little;
    on the seed-42 demo 23 of 25 intervals cover). Every campaign gets a card; the feedback table is readable as the next run's priors."""
    run_dir = _run(demo_config, tmp_path)
    out = run_dir / "monitoring"
    summary = json.loads((out / "summary.json").read_text())
    contacts = pd.read_parquet(demo_dir / "contacts.parquet")
    campaigns = pd.read_csv(demo_dir / "campaigns.csv")
    truth = _true_uplift(demo_dir, contacts, campaigns)
    arms = {(a["campaign_id"], a["arm"]): a for a in summary["arms"]}
    assert set(arms) == set(truth.index)
    covered = [arms[k]["conversion_lift_ci"][0] <= truth[k] <= arms[k]["conversion_lift_ci"][1] for k in truth.index]
    assert np.mean(covered) >= 0.8, f"{sum(covered)} of {len(covered)} intervals cover the true uplift"
    for key, arm in arms.items():
        treated = contacts[(contacts["campaign_id"] == key[0]) & (contacts["arm"] == key[1])]
        control = contacts[(contacts["campaign_id"] == key[0]) & (contacts["group"] == "control")]
        assert arm["n_treated"] == len(treated) and arm["n_control"] == len(control)
        assert arm["conversion_rate_treated"] == pytest.approx(treated["converted"].mean())
        assert arm["revenue_per_customer_control"] == pytest.approx(control["revenue"].mean())
        low, high = arm["incremental_revenue_ci"]
        assert low <= arm["incremental_revenue"] <= high
        assert arm["recommendation"].split(":")[0] in {"stop", "scale", "continue", "check set-up"}
    assert summary["srm_flags"] == [], "the demo randomises exactly at the planned shares"
    assert summary["cuped"] is True
    assert {p.stem for p in (out / "cards").glob("*.html")} == set(campaigns["campaign_id"])
    priors = uplift.load_priors(pd.read_parquet(out / "feedback_priors.parquet"))
    assert len(priors) == summary["feedback_rows"] > 0
    with duckdb.connect(str(run_dir / "customer.duckdb"), read_only=True) as con:
        n_arms = con.execute("SELECT COUNT(*) FROM monitoring_arms").fetchone()[0]
        n_feedback = con.execute("SELECT COUNT(*) FROM monitoring_feedback").fetchone()[0]
    assert n_arms == len(arms) and n_feedback == len(priors)
    assert "@example.com" not in (out / "report.html").read_text()


@pytest.mark.real
def test_hillstrom_published_figures(real_data: Path, tmp_path: Path) -> None:
    """Published figures (Hillstrom 2008, PROVENANCE.txt): group sizes, visit, conversion and spend per customer of
    both e-mail arms and the shared "No E-Mail" control, reproduced to the published 5 decimals; no customer id,
    so CUPED is skipped and said so."""
    summary = json.loads((_run(ROOT / "configs" / "real" / "hillstrom.yaml", tmp_path) / "monitoring"
                          / "summary.json").read_text())
    published = {"Mens E-Mail": (21307, 0.18276, 0.01253, 1.42262), "Womens E-Mail": (21387, 0.15140, 0.00884, 1.07720)}
    arms = {a["arm"]: a for a in summary["arms"]}
    assert set(arms) == set(published)
    for arm, (n, visit, conversion, spend) in published.items():
        a = arms[arm]
        assert (a["n_treated"], a["n_control"]) == (n, 21306)
        assert round(a["conversion_rate_treated"], 5) == conversion
        assert round(a["conversion_rate_control"], 5) == 0.00573
        assert round(a["revenue_per_customer_treated"], 5) == spend
        assert round(a["revenue_per_customer_control"], 5) == 0.65279
        assert round(a["secondary"]["visit"]["treated"], 5) == visit
        assert round(a["secondary"]["visit"]["control"], 5) == 0.10617
        assert a["conversion_lift_ci"][0] > 0 and a["recommendation"].startswith("scale")
    assert summary["has_customer_ids"] is False and summary["cuped"] is False
    assert any("no customer id" in n for n in summary["notes"])
    assert summary["srm_flags"] == [] and summary["balance_red_flags"] == 0


@pytest.mark.real
def test_cookie_cats_published_figures(real_data: Path, tmp_path: Path) -> None:
    """Published figures (DataCamp/Kaggle Cookie Cats, PROVENANCE.txt): gate_30 44,700 / gate_40 45,489 players,
    7-day retention 19.02% vs 18.20% and 1-day 44.82% vs 44.23%; no revenue, so the decision rests on conversions."""
    summary = json.loads((_run(ROOT / "configs" / "real" / "cookie_cats.yaml", tmp_path) / "monitoring"
                          / "summary.json").read_text())
    (arm,) = summary["arms"]
    assert (arm["arm"], arm["n_treated"], arm["n_control"]) == ("gate_40", 45489, 44700)
    assert round(arm["conversion_rate_treated"] * 100, 2) == 18.20
    assert round(arm["conversion_rate_control"] * 100, 2) == 19.02
    assert round(arm["secondary"]["retention_1"]["treated"] * 100, 2) == 44.23
    assert round(arm["secondary"]["retention_1"]["control"] * 100, 2) == 44.82
    assert summary["primary_outcome"] == "retention_7" and summary["value_outcome"] is None
    assert arm["conversion_lift_ci"][1] < 0 and arm["recommendation"].startswith("stop")
    assert summary["srm_flags"] == []
