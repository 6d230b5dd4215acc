"""Tests of cvm.personas: a simulated mixture with three known personas (known truth), and hand-made profiles."""
from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score

from cvm.errors import InputError
from cvm.features import customer_features
from cvm.personas import (choose_k, fit_personas, name_personas, persona_features, persona_table, profile,
                          silhouettes)

GROUPS = {  # frequency, mean order value, recency days, tenure days, discount share, online share
    "loyal": (20, 80.0, 10, 900, 0.05, 0.8),
    "hunter": (4, 30.0, 60, 500, 0.45, 0.5),
    "lapsed": (1, 60.0, 600, 650, 0.05, 0.2),
}


def _mixture(n_per: int = 700, seed: int = 11) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    parts, truth = [], []
    for g, (freq, aov, rec, ten, disc, online) in enumerate(GROUPS.values()):
        noise = lambda s: np.exp(rng.normal(0, s, n_per))  # noqa: E731 - log-normal noise
        frequency = np.maximum(1, np.round(freq * noise(0.2)))
        mean = aov * noise(0.2)
        online_share = np.clip(online + rng.normal(0, 0.08, n_per), 0, 1)
        parts.append(pd.DataFrame({
            "recency_days": rec * noise(0.25), "frequency": frequency, "monetary_mean": mean,
            "monetary_total": frequency * mean, "tenure_days": ten * noise(0.15),
            "return_rate": np.clip(rng.normal(0.05, 0.02, n_per), 0, 1),
            "discount_share": np.clip(disc + rng.normal(0, 0.04, n_per), 0, 1),
            "channel_share_online": online_share, "channel_share_store": 1 - online_share}))
        truth += [g] * n_per
    frame = pd.concat(parts, ignore_index=True)
    frame.insert(0, "customer_id", [f"C{i:05d}" for i in range(len(frame))])
    return frame, np.array(truth)


def test_mixture_recovered_and_named() -> None:
    """Simulation with known truth: choose_k picks 3, KMeans recovers the groups (ARI > 0.9), names fit them."""
    features, truth = _mixture()
    X = persona_features(features)
    ks = choose_k(X, k_range=range(2, 7), sample_size=1000, seed=0)
    assert ks.loc[ks["chosen"], "k"].tolist() == [3] and (ks["sample_rows"] == 1000).all()
    model = fit_personas(X, 3, seed=0)
    assert adjusted_rand_score(truth, model.labels.to_numpy()) > 0.9
    assert model.labels.value_counts().is_monotonic_decreasing            # persona 0 is the largest
    assert (model.predict(X) == model.labels).all()
    prof = profile(features, model.labels)
    names = name_personas(prof)
    by_truth = {g: names[int(pd.Series(model.labels.to_numpy()[truth == i]).mode()[0])]
                for i, g in enumerate(GROUPS)}
    assert by_truth["loyal"] == "High-value loyalists"
    assert by_truth["hunter"] == "Discount hunters"
    assert len(set(names.values())) == 3


def test_persona_features_scaling_blocks_and_enrichment() -> None:
    """Hand-made: log1p, median fill, z-scores, block weights and one-hot enrichment joined on the id."""
    features = pd.DataFrame({
        "customer_id": ["a", "b", "c", "d"], "recency_days": [0.0, 9.0, 99.0, np.nan],
        "frequency": [1, 1, 1, 5], "monetary_total": [10.0, -5.0, 30.0, 100.0],
        "discount_share": [np.nan] * 4,                          # no discount data: left out
        "category_share_x": [1.0, 0.0, 0.5, np.nan], "category_share_y": [0.0, 1.0, 0.5, np.nan]})
    customers = pd.DataFrame({"customer_id": ["d", "c", "b", "a"], "region": ["N", "S", "S", None],
                              "age": [30, 40, 50, 60]})
    X = persona_features(features, customers, extra_cols=["region", "age"])
    assert list(X.index) == ["a", "b", "c", "d"] and "discount_share" not in X
    assert X.mean().abs().max() < 1e-12
    logs = np.log1p(pd.Series([0.0, 9.0, 99.0, np.log1p(9.0)]))
    logs[3] = np.median(np.log1p([0.0, 9.0, 99.0]))              # missing recency -> median
    assert X["recency_days"].to_numpy() == pytest.approx(((logs - logs.mean()) / logs.std(ddof=0)).to_numpy())
    assert X["monetary_total"].iloc[1] == X["monetary_total"].min()   # negative clipped to 0 before log1p
    assert X["category_share_x"].std(ddof=0) == pytest.approx(1 / np.sqrt(2))   # a 2-column block weighs like one
    assert {"region_N", "region_S", "region_unknown"} <= set(X.columns)
    assert X[["region_N", "region_S", "region_unknown"]].std(ddof=0).pow(2).sum() == pytest.approx(1.0)
    assert X.loc["a", "age"] > 0                                  # joined on id, not on position
    noisy = persona_features(features.assign(channel_share_other=[0.0, 6e-8, 0.0, 1.2e-7]))
    assert (noisy["channel_share_other"] == 0).all()              # float32 rounding noise is not scaled up
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("cvm.personas.MAX_LEVELS", 2)
        with pytest.raises(InputError, match="3 distinct values"):
            persona_features(features, customers, extra_cols=["region"])
    with pytest.raises(InputError, match="duplicated"):
        persona_features(pd.concat([features, features.iloc[:1]]))
    with pytest.raises(InputError, match="without a customers table"):
        persona_features(features, extra_cols=["region"])


def test_profile_indices_by_hand() -> None:
    features = pd.DataFrame({"customer_id": list("abcd"), "monetary_total": [10.0, 30.0, 60.0, -4.0],
                             "frequency": [1, 1, 2, 4]})
    labels = pd.Series([0, 0, 1, 1], index=list("abcd"))
    prof = profile(features, labels)
    assert prof["customers"].tolist() == [2, 2] and prof["share_customers"].tolist() == [0.5, 0.5]
    assert prof["share_value"].tolist() == pytest.approx([0.4, 0.6])            # negatives count as 0
    assert prof.loc[1, "frequency_mean"] == 3 and prof.loc[1, "frequency_index"] == pytest.approx(150)
    assert prof.loc[0, "monetary_total_index"] == pytest.approx(100 * 20 / 24)
    with pytest.raises(InputError, match="no persona label"):
        profile(features, labels.iloc[:3])


def test_names_unique_rules_as_data_and_fallback() -> None:
    prof = pd.DataFrame({"share_value": [0.5, 0.3, 0.2], "discount_share_index": [200.0, 180.0, 90.0],
                         "frequency_index": [100.0, 100.0, 40.0], "recency_days_index": [90.0, 95.0, 300.0]},
                        index=[0, 1, 2])
    names = name_personas(prof)
    assert names[0] == "Discount hunters" and len(set(names.values())) == 3
    assert names[2] == "Lapsed, infrequent customers"                         # fallback from the extreme indices
    rules = [{"name": "Deal seekers", "when": {"discount_share_index": {">=": 150}}}]
    custom = name_personas(prof, rules)
    assert custom[0] == "Deal seekers" and custom[1] != "Deal seekers" and len(set(custom.values())) == 3
    twins = pd.DataFrame({"share_value": [0.6, 0.4], "frequency_index": [50.0, 50.0]}, index=[0, 1])
    assert name_personas(twins, rules=[]) == {0: "Infrequent customers", 1: "Infrequent customers B"}
    with pytest.raises(InputError, match="unknown operator"):
        name_personas(prof, [{"name": "x", "when": {"frequency_index": {">": 1}}}])


def test_persona_table_side_by_side() -> None:
    features = pd.DataFrame({"customer_id": list("abcd"), "monetary_total": [10.0, 30.0, 60.0, 0.0],
                             "frequency": [1, 1, 2, 4]})
    labels = pd.Series([0, 0, 1, 1], index=list("abcd"))
    customers = pd.DataFrame({"customer_id": list("dcba"), "region": ["N", "N", "S", None]})
    predictions = pd.DataFrame({"customer_id": list("abcd"), "clv": [1.0, 3.0, 10.0, 20.0],
                                "churn_risk": [0.9, 0.7, 0.2, 0.4]})
    table = persona_table(features, labels, {0: "Small", 1: "Big"}, customers, predictions)
    assert table["persona"].tolist() == ["Big", "Small"]                      # by value share
    big = table.set_index("persona").loc["Big"]
    assert big["region"] == "N (100%)" and big["clv"] == 15 and big["churn_risk"] == pytest.approx(0.3)
    assert big["frequency"] == 3 and "age_band" not in table
    assert table.set_index("persona").loc["Small", "region"] in ("S (50%)", "unknown (50%)")


def test_choose_k_and_fit_errors() -> None:
    X = pd.DataFrame(np.random.default_rng(0).normal(size=(5, 2)))
    with pytest.raises(InputError, match="cannot be split"):
        choose_k(X, k_range=range(3, 9))
    with pytest.raises(InputError, match=">= 2"):
        choose_k(X, k_range=[1, 2])
    with pytest.raises(InputError, match="k must be"):
        fit_personas(X, 5)


def test_silhouettes_equal_sklearn_on_the_demo(demo_dir: Path) -> None:
    """The one-pass silhouettes of several labellings equal sklearn's silhouette_score of each, on the demo's persona
    features (uneven last block, a singleton cluster included)."""
    con = duckdb.connect()
    con.execute(f"CREATE VIEW transactions AS SELECT * FROM read_parquet('{demo_dir / 'transactions.parquet'}')")
    feats = customer_features(con, "2026-06-30")
    X = persona_features(feats[feats["n_orders"] > 0]).to_numpy()[:2500]
    labellings = [KMeans(k, n_init=1, random_state=0).fit_predict(X) for k in (2, 4, 7)]
    labellings.append(np.where(np.arange(len(X)) == 5, 9, labellings[1]))          # customer 5 alone in cluster 9
    expected = [silhouette_score(X, labels) for labels in labellings]
    assert silhouettes(X, labellings, block_rows=256) == pytest.approx(expected, abs=1e-12)
