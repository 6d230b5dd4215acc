"""The knowledge step's glue: assembling customer_knowledge, sentences, cards, CLV scoring on a simulated base."""
from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from cvm import knowledge
from cvm.errors import InputError


def simulated_base(n: int = 3000, seed: int = 1) -> pd.DataFrame:
    """A BG/NBD population with known parameters (r=0.5, alpha=5, a=1, b=4; weeks), as x, t_x, T."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(0.5, 1 / 5.0, n)
    p = rng.beta(1.0, 4.0, n)
    T = rng.uniform(20, 80, n)
    x, t_x = np.zeros(n), np.zeros(n)
    for i in range(n):
        t = 0.0
        while True:
            t += rng.exponential(1 / lam[i])
            if t > T[i]:
                break
            x[i] += 1
            t_x[i] = t
            if rng.random() < p[i]:
                break
    value = np.where(x > 0, rng.gamma(4.0, 1 / rng.gamma(3.0, 1 / 40.0, n)), np.nan)
    return pd.DataFrame({"customer_id": [f"c{i}" for i in range(n)], "x": x, "t_x": t_x, "T": T,
                         "mean_repeat_value": value})


def test_fit_and_score_clv_on_a_simulated_base() -> None:
    """Simulation with known truth: BG/NBD parameters recovered within 3 standard errors; scores are consistent."""
    base = simulated_base()
    models = knowledge.fit_clv(base)
    for name, true in {"r": 0.5, "alpha": 5.0, "a": 1.0, "b": 4.0}.items():
        assert abs(models.bgnbd.params()[name] - true) < 3 * models.bgnbd.se[name], name
    scores = knowledge.score_clv(base, models, "2026-06-30", 12, 0.1, "W")
    assert list(scores.columns) == ["customer_id", "p_alive", "expected_purchases", "expected_order_value",
                                    "next_purchase_date", "clv"]
    assert scores["p_alive"].between(0, 1).all() and (scores["clv"] >= 0).all()
    one_time_recent = scores.loc[(base["x"] == 0).to_numpy()]["p_alive"]
    assert (one_time_recent == 1).all(), "BG/NBD: a customer without repeat purchase cannot have dropped out yet"
    checks = knowledge.guardrails(base, models).set_index("check")["status"]
    assert (checks == "ok").all()


def test_too_few_customers_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="only 10 customers with purchases"):
        knowledge.fit_clv(simulated_base(10))


def test_fit_bgnbd_is_the_bgnbd_of_fit_clv() -> None:
    base = simulated_base()
    assert knowledge.fit_bgnbd(base).params() == knowledge.fit_clv(base).bgnbd.params()
    with pytest.raises(InputError, match="only 10 customers with purchases"):
        knowledge.fit_bgnbd(simulated_base(10))


def test_purchase_history_kept_for_its_as_of() -> None:
    """Saved and read back in order; a missing table or another as_of is a clear error naming the knowledge step."""
    con = duckdb.connect()
    with pytest.raises(InputError, match="'purchase_history' is missing. Run the knowledge step"):
        knowledge.load_purchase_history(con, "2026-06-30")
    rng = np.random.default_rng(0)
    first = pd.Timestamp("2025-01-01") + pd.to_timedelta(rng.integers(0, 300, 500), unit="D")
    feats = pd.DataFrame({"customer_id": [f"C{i:04d}" for i in rng.permutation(500)], "first_purchase": first,
                          "last_purchase": first + pd.to_timedelta(rng.integers(0, 100, 500), unit="D"),
                          "n_purchase_days": rng.integers(1, 9, 500).astype("int32"),
                          "n_orders": rng.integers(1, 12, 500).astype("int32"),
                          "monetary_total": rng.gamma(2.0, 40.0, 500), "x": 1.0})
    feats.loc[:9, ["first_purchase", "last_purchase"]] = pd.NaT  # customers with returns only
    knowledge.save_purchase_history(con, feats, "2026-06-30")
    back = knowledge.load_purchase_history(con, pd.Timestamp("2026-06-30"))
    assert list(back.columns) == ["customer_id", "first_purchase", "last_purchase", "n_purchase_days", "n_orders",
                                  "monetary_total"]
    assert back["customer_id"].tolist() == feats["customer_id"].tolist()
    for col in back.columns[1:]:
        np.testing.assert_array_equal(back[col].to_numpy(), feats[col].to_numpy(back[col].dtype))
    with pytest.raises(InputError, match="computed for as_of 2026-06-30, not 2026-07-31; re-run the knowledge step"):
        knowledge.load_purchase_history(con, "2026-07-31")


def test_assemble_keeps_every_customer_and_labels_non_buyers() -> None:
    customer = pd.DataFrame({"customer_id": ["a", "b", "c"], "consent_email": [True, False, True],
                             "email": ["a@x.com", None, "c@y.com"], "region": ["N", "S", "N"]})
    feats = pd.DataFrame({"customer_id": ["a", "b"], "recency_days": [3.0, 40.0], "frequency": [5, 1],
                          "monetary_total": [100.0, 20.0], "n_orders": [5, 1],
                          "last_purchase": pd.to_datetime(["2026-06-27", "2026-05-21"])})
    parts = [pd.DataFrame({"customer_id": ["a", "b"], "rfm_segment": ["Champions", "New"]}),
             pd.DataFrame({"customer_id": ["b"], "anomaly_flag": [True], "anomaly_reason": ["test account"]})]
    table = knowledge.assemble(customer, feats, parts)
    assert list(table["customer_id"]) == ["a", "b", "c"]
    assert list(table["rfm_segment"]) == ["Champions", "New", knowledge.NO_PURCHASE]
    assert list(table["anomaly_flag"]) == [False, True, False]
    assert list(table.columns[:5]) == ["customer_id", "recency_days", "frequency", "monetary", "n_orders"]
    assert {"consent_email", "region", "email"} <= set(table.columns)


def test_example_cards_skip_anomalies_and_mask_contacts(tmp_path: Path) -> None:
    table = pd.DataFrame({"customer_id": ["a", "b", "c"], "clv": [900.0, 50.0, 10.0], "churn_risk": [0.1, 0.9, 0.5],
                          "n_orders": [3, 2, 1], "recency_days": [5.0, 9.0, 2.0], "anomaly_flag": [True, False, False],
                          "anomaly_reason": ["bulk", "", ""], "email": ["a@x.com", "b@x.com", "c@x.com"],
                          "phone": ["+44 7700 900123", None, None], "rfm_segment": ["Champions", "New", "New"]})
    ids = knowledge.example_ids(table)
    assert "a" not in ids and ids
    con = duckdb.connect()
    con.execute("CREATE TABLE transactions AS SELECT 'a' AS customer_id, 'o1' AS order_id, "
                "TIMESTAMP '2026-06-01 10:00' AS order_date, 12.5 AS amount")
    con.execute("CREATE TABLE contacts AS SELECT 'a' AS customer_id, 'spring' AS campaign_id, 'treatment' AS \"group\", "
                "DATE '2026-05-01' AS contact_date, TRUE AS converted, 30.0 AS revenue")
    [card] = knowledge.write_customer_cards(table, con, tmp_path, ["a"])
    html = card.read_text()
    assert "Campaigns received" in html and "spring" in html and "30.00" in html
    assert "a@x.com" not in html and "7700 900123" not in html
    assert "Set aside from modelling: bulk" in html and "12.50" in html
    with pytest.raises(InputError, match="1 id\\(s\\) not in the customer table"):
        knowledge.write_customer_cards(table, con, tmp_path, ["zz"])


def test_sentences_speak_plain_business() -> None:
    table = pd.DataFrame({"segment": ["Champions", "Lost"], "customers": [10, 90], "share_customers": [0.1, 0.9],
                          "share_revenue": [0.6, 0.4]})
    assert knowledge.segment_sentence(table) == ("The largest segment is Lost (90% of customers); Champions bring "
                                                 "the most revenue (60% with 10% of customers).")
    flags = pd.DataFrame({"customer_id": ["a", "b"], "anomaly_flag": [True, False],
                          "anomaly_reason": ["looks like a test account", ""]})
    assert knowledge.anomaly_sentence(flags).startswith("1 customers (50.0%) are set aside")
    kpis = {"customers_to_date": 5, "active_customers": 4, "orders": 9, "revenue": 100.0, "returns": 3.0, "aov": 11.1,
            "orders_per_active_customer": 2.25, "revenue_per_active_customer": 25.0, "window_start": "2025-07-01",
            "as_of": "2026-06-30"}
    assert knowledge.kpi_table(kpis)["value"].tolist()[:3] == ["5", "4", "9"]


def test_assemble_equals_the_left_merges_on_the_demo_ids(demo_dir: Path) -> None:
    """assemble (Arrow key lookups) against the chain of pandas left merges it replaces, on the demo's customers:
    parts covering different customers in other orders, integer, boolean and text columns; repeated ids are an
    error rather than silently repeated rows."""
    customer = pd.read_csv(demo_dir / "customers.csv", dtype={"customer_id": "str"})
    feats = customer[["customer_id"]].sample(frac=0.9, random_state=2).reset_index(drop=True)
    feats["recency_days"] = np.arange(len(feats), dtype="float32")
    feats["frequency"] = feats.index % 7
    feats["monetary_total"] = feats["recency_days"] * 1.5
    feats["n_orders"] = (feats.index % 5).astype("int32")
    feats["last_purchase"] = pd.Timestamp("2026-06-30") - pd.to_timedelta(feats.index % 400, unit="D")
    segments = feats[["customer_id"]].sample(frac=0.8, random_state=3)
    segments["rfm_segment"] = np.where(segments.index % 2, "Champions", "Lost")
    flags = customer[["customer_id"]].sample(frac=1.0, random_state=4)
    flags["anomaly_flag"] = flags.index % 50 == 0
    flags["anomaly_reason"] = np.where(flags["anomaly_flag"], "bulk", "")
    scores = feats[["customer_id"]].assign(r_score=feats.index % 5 + 1)  # the features' ids: looked up once
    table = knowledge.assemble(customer, feats, [segments, scores, flags])
    cols = {"monetary_total": "monetary"}
    expected = customer[["customer_id"]].drop_duplicates().merge(feats.rename(columns=cols), on="customer_id",
                                                                 how="left")
    for part in (segments, scores, flags):
        expected = expected.merge(part, on="customer_id", how="left")
    expected["anomaly_flag"] = expected["anomaly_flag"].fillna(False).astype(bool)
    expected["rfm_segment"] = expected["rfm_segment"].fillna(knowledge.NO_PURCHASE)
    carried = [c for c in knowledge.CARRIED if c in customer.columns]
    expected = expected.merge(customer[["customer_id", *carried]], on="customer_id", how="left")
    pd.testing.assert_frame_equal(table, expected[table.columns])
    with pytest.raises(InputError, match="1 repeated customer_id"):
        knowledge.assemble(customer, feats, [pd.concat([segments, segments.iloc[:1]])])
