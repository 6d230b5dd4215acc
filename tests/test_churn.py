"""Tests of cvm.churn: a simulated population whose dropouts are known, and the fallback rules on hand-made labels."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cvm.churn import ChurnModel, HISTORY_RULES, churn_risk_from_p_alive, enough_history, fit_churn_classifier
from cvm.errors import InputError

FEATURES = ["recency_days", "frequency", "tenure_days", "monetary_mean"]


def _population(n: int = 3000, seed: int = 7) -> tuple[pd.DataFrame, pd.Series, np.ndarray]:
    """Poisson buyers (rate ~ Gamma per week) with an exponential lifetime; calibration = 52 weeks, holdout = 26.

    Returns calibration features, holdout purchases by customer id and the true 'dead at the calibration end' flag.
    """
    rng = np.random.default_rng(seed)
    start = rng.uniform(0, 40, n)                      # first purchase week
    lam = rng.gamma(1.5, 0.25, n)                      # purchases per week while alive
    death = start + rng.exponential(40, n)             # week of dropout
    cal_end, hold_end = 52.0, 78.0
    alive_cal = np.minimum(death, cal_end) - start
    repeats = rng.poisson(lam * alive_cal)
    last = start + alive_cal * rng.uniform(size=n) ** (1 / np.maximum(repeats, 1))
    last = np.where(repeats > 0, last, start)
    holdout = rng.poisson(lam * np.clip(np.minimum(death, hold_end) - cal_end, 0, None))
    ids = [f"C{i:05d}" for i in range(n)]
    features = pd.DataFrame({
        "customer_id": ids, "recency_days": 7 * (cal_end - last), "frequency": repeats + 1,
        "tenure_days": 7 * (cal_end - start), "monetary_mean": rng.gamma(4, 10, n),
    })
    return features, pd.Series(holdout, index=ids, name="holdout_purchases"), death <= cal_end


def test_classifier_recovers_known_churners() -> None:
    """Simulation with known truth: churn = no holdout purchase; validation AUC and AUC against true dropout > 0.7."""
    features, holdout, dead = _population()
    model = fit_churn_classifier(features, holdout, FEATURES, seed=1)
    assert isinstance(model, ChurnModel) and model.kind == "hgb"
    assert model.auc > 0.7
    assert model.n_train + model.n_validation == len(features)
    assert model.churn_rate == pytest.approx((holdout == 0).mean())
    scores = model.score(features)
    assert scores.index.equals(features.index) and scores.between(0, 1).all()
    assert roc_auc_score(dead, scores) > 0.7


def test_logistic_frame_input_missing_values_and_baseline() -> None:
    """Logistic model with the holdout frame of cvm.features, NaN features imputed, baseline AUC reported."""
    features, holdout, _ = _population(n=1500, seed=3)
    features.loc[features.index[:50], "monetary_mean"] = np.nan
    features["naive_risk"] = features["recency_days"] / features["recency_days"].max()
    frame = holdout.rename_axis("customer_id").reset_index()
    frame = frame[frame["holdout_purchases"] > 0]   # absent customers made no purchase
    model = fit_churn_classifier(features, frame, FEATURES, seed=2, kind="logistic", baseline_col="naive_risk")
    assert model.auc > 0.7 and model.baseline_auc is not None and 0.5 < model.baseline_auc < 1
    assert model.churn_rate == pytest.approx((holdout == 0).mean())
    with pytest.raises(InputError, match="lack column"):
        model.score(features.drop(columns="frequency"))


def test_classifier_input_errors() -> None:
    features, holdout, _ = _population(n=200, seed=5)
    with pytest.raises(InputError, match="lack column"):
        fit_churn_classifier(features, holdout, ["nope"], seed=0)
    with pytest.raises(InputError, match="both classes"):
        fit_churn_classifier(features, holdout * 0, FEATURES, seed=0)
    with pytest.raises(InputError, match="kind"):
        fit_churn_classifier(features, holdout, FEATURES, seed=0, kind="forest")
    dup = pd.concat([holdout, holdout.iloc[:1]])
    with pytest.raises(InputError, match="duplicated"):
        fit_churn_classifier(features, dup, FEATURES, seed=0)


def test_churn_risk_from_p_alive() -> None:
    p = pd.Series([1.0, 0.25, 0.0, np.nan], index=list("abcd"))
    risk = churn_risk_from_p_alive(p)
    assert risk.name == "churn_risk" and list(risk.index) == list("abcd")
    assert risk.iloc[:3].tolist() == [0.0, 0.75, 1.0] and np.isnan(risk.iloc[3])
    assert churn_risk_from_p_alive(np.array([0.5])).tolist() == [0.5]
    with pytest.raises(InputError, match="outside 0..1"):
        churn_risk_from_p_alive([1.2, 0.3])


def test_enough_history_rules() -> None:
    labels = pd.Series([True] * 60 + [False] * 500)
    ok = enough_history(365, 180, labels)
    assert ok and "560 customers" in ok.reason
    short = enough_history(300, 180, labels)
    assert not short and "shorter than 2 x the holdout" in short.reason and "1 - P(alive)" in short.reason
    few = enough_history(730, 180, pd.Series([True] * 49 + [False] * 451))
    assert not few and "only 49 churners" in few.reason and "retained" not in few.reason
    small = enough_history(730, 180, pd.Series([True] * 100 + [False] * 30))
    assert not small and "only 130 customers" in small.reason and "only 30 retained" in small.reason
    assert enough_history(730, 180, pd.Series([True] * 10 + [False] * 10), rules={"min_customers": 20,
                          "min_churners": 5, "min_retained": 5})
    assert HISTORY_RULES["min_customers"] == 500
    with pytest.raises(InputError, match="holdout_days"):
        enough_history(100, 0, labels)


def test_large_calibration_base_learns_from_a_stratified_sample() -> None:
    """Above max_rows customers the classifier learns from a seeded stratified sample of that size: the churn rate
    is kept, and its AUC and scores are statistically those of the model on every customer."""
    features, holdout, dead = _population(n=6000, seed=5)
    full = fit_churn_classifier(features, holdout, FEATURES, seed=1)
    sampled = fit_churn_classifier(features, holdout, FEATURES, seed=1, max_rows=3000)
    assert sampled.n_train + sampled.n_validation == 3000 and full.n_train + full.n_validation == 6000
    assert sampled.churn_rate == pytest.approx(full.churn_rate, abs=1e-3)
    assert abs(sampled.auc - full.auc) < 0.03
    assert roc_auc_score(dead, sampled.score(features)) > 0.7
    assert np.corrcoef(sampled.score(features), full.score(features))[0, 1] > 0.95
