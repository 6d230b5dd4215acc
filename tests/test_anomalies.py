"""Tests of cvm.anomalies: planted anomalies among skewed normal customers are caught, normal ones are not."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cvm.anomalies import anomaly_counts, anomaly_inputs, flag_anomalies, load_anomaly_rules
from cvm.errors import InputError


def _features(n: int = 300, seed: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n_orders = rng.geometric(0.4, n)                                    # skewed: many one-time buyers
    mean = rng.lognormal(np.log(40), 0.6, n)
    frame = pd.DataFrame({
        "customer_id": [f"C{i:04d}" for i in range(n)], "n_orders": n_orders, "monetary_mean": mean,
        "monetary_total": mean * n_orders, "return_rate": np.clip(rng.normal(0.05, 0.05, n), 0, 1),
        "max_order_value": mean * rng.uniform(1, 2, n), "mean_order_units": rng.uniform(1, 3, n),
        "day_order_share": 1 / n_orders})                                  # one order per day
    planted = pd.DataFrame({
        "customer_id": ["BULK", "BIGONE", "RETURNER", "RET2", "BURST", "TEST0001", "C-email", "ZERO"],
        "n_orders": [3, 1, 4, 2, 8, 30, 2, 1],
        "monetary_mean": [9000.0, 60.0, 50.0, 50.0, 40.0, 1.0, 45.0, 0.0],
        "monetary_total": [27000.0, 60.0, 200.0, 100.0, 320.0, 30.0, 90.0, 0.0],
        "return_rate": [0.0, 0.0, 0.8, 0.9, 0.0, 0.0, 0.0, np.nan],     # RET2: only 2 orders, not flagged
        "max_order_value": [12000.0, 60.0, 70.0, 60.0, 45.0, 1.0, 50.0, 0.0],
        "mean_order_units": [300.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        "day_order_share": [1 / 3, 1.0, 0.25, 0.5, 7 / 8, 0.1, 0.5, 1.0]})
    return pd.concat([frame, planted], ignore_index=True)


def _customers(features: pd.DataFrame) -> pd.DataFrame:
    email = [f"user{i}@shop.com" for i in range(len(features))]
    email[-2] = "dummy@shop.com"                                         # C-email
    email[0] = "contest.winner@gmail.com"                                # contains 'test' inside a word: normal
    email[1] = "jane.testa@gmail.com"
    email[2] = "anne@example.com"                                        # the domain alone is not a test sign
    return pd.DataFrame({"customer_id": features["customer_id"], "email": email})


def test_planted_anomalies_caught_normal_ones_not() -> None:
    features = _features()
    flags = flag_anomalies(features, _customers(features)).set_index("customer_id")
    flagged = set(flags.index[flags["anomaly_flag"]])
    assert flagged == {"BULK", "RETURNER", "BURST", "TEST0001", "C-email"}
    assert flags.loc["BULK", "flag_bulk_order_value"] and flags.loc["BULK", "flag_bulk_quantity"]
    assert flags.loc["BULK", "anomaly_reason"].count(";") == 2           # three reasons joined
    assert flags.loc["RETURNER", "anomaly_reason"].startswith("returned more than half")
    assert flags.loc["C0000", "anomaly_reason"] == ""
    counts = anomaly_counts(flags.reset_index()).set_index("check")
    assert counts.loc["test_account_id", "customers"] == 1 and counts.loc["test_account_email", "customers"] == 1
    assert counts.loc["any", "customers"] == 5
    assert (counts["status"] == "ran").all()


def test_customer_columns_no_check_reads_change_nothing() -> None:
    """Only the customer columns the checks read are joined; others (and their order) do not matter."""
    features = _features()
    customers = _customers(features)
    extra = customers.assign(name="x", city=None, phone=range(len(customers))).iloc[::-1]
    pd.testing.assert_frame_equal(flag_anomalies(features, extra), flag_anomalies(features, customers))


def test_checks_without_columns_do_not_run() -> None:
    features = _features()[["customer_id", "n_orders", "monetary_mean", "return_rate"]]
    flags = flag_anomalies(features)
    assert flags["flag_one_day_burst"].isna().all() and flags["flag_bulk_quantity"].isna().all()
    assert flags.set_index("customer_id").loc["TEST0001", "anomaly_flag"]   # the id alone is enough
    counts = anomaly_counts(flags).set_index("check")
    assert counts.loc["one_day_burst", "status"] == "not run: needs day_order_share, n_orders"
    assert counts.loc["test_account_id", "status"] == "ran"
    assert counts.loc["test_account_email", "status"] == "not run: needs email"


def test_identical_values_do_not_flag_everybody() -> None:
    """More than half the customers share one value (MAD = 0): the fallback spread keeps normal ones unflagged."""
    features = pd.DataFrame({"customer_id": [f"c{i}" for i in range(100)], "monetary_mean": [20.0] * 80
                             + list(np.linspace(15, 40, 19)) + [5000.0]})
    rules = [c for c in load_anomaly_rules() if c.name == "bulk_order_value"]
    flags = flag_anomalies(features, rules=rules)
    assert flags.loc[flags["anomaly_flag"], "customer_id"].tolist() == ["c99"]


def test_anomaly_inputs_by_hand() -> None:
    tx = pd.DataFrame({
        "customer_id": ["A", "A", "A", "A", "B", "B", "C"],
        "order_id": ["1", "2", "3", "3", "4", "5", "6"],
        "order_date": pd.to_datetime(["2024-01-01 09:00", "2024-01-01 10:00", "2024-01-02 12:00", "2024-01-02 12:00",
                                      "2024-01-05 12:00", "2024-01-06 12:00", "2024-01-07 12:00"]),
        "amount": [10.0, 20.0, 50.0, -10.0, 5.0, -5.0, -8.0],
        "quantity": [1, 2, 5, -1, 1, -1, -1],
    })
    out = anomaly_inputs(tx, "2024-12-31").set_index("customer_id")
    assert sorted(out.index) == ["A", "B"]                               # C has only a return
    a = out.loc["A"]
    assert (a["purchase_orders"], a["max_day_orders"], a["max_order_value"]) == (3, 2, 40.0)
    assert a["day_order_share"] == pytest.approx(2 / 3) and a["mean_order_units"] == pytest.approx((1 + 2 + 4) / 3)
    assert out.loc["B", "purchase_orders"] == 1
    assert anomaly_inputs(tx.drop(columns="quantity"), "2024-12-31")["mean_order_units"].isna().all()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "anomalies.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, message", [
    ("rules: []", "exactly one top-level key 'checks'"),
    ("checks: [{name: a, type: magic, reason: r}]", "'type' among"),
    ("checks: [{name: a, type: threshold, reason: r, when: {x: {'>': 1}}}, "
     "{name: a, type: threshold, reason: r, when: {x: {'>': 1}}}]", "used twice"),
    ("checks: [{name: a, type: threshold, when: {x: {'>': 1}}}]", "'reason'"),
    ("checks: [{name: a, type: threshold, reason: r, when: {x: {'=>': 1}}}]", "unknown operator"),
    ("checks: [{name: a, type: threshold, reason: r, when: {x: {'>': high}}}]", "must be a number"),
    ("checks: [{name: a, type: outlier, reason: r, column: x, z: 5, quantile: 2, factor: 3}]", "'quantile'"),
    ("checks: [{name: a, type: outlier, reason: r, z: 5, quantile: 0.9, factor: 3}]", "'column' is required"),
    ("checks: [{name: a, type: pattern, reason: r, columns: [x], pattern: '(unclosed'}]", "regular expression"),
    ("checks: [{name: a, type: pattern, reason: r, columns: [x], pattern: t, z: 3}]", "unknown key"),
])
def test_bad_rule_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_anomaly_rules(_write(tmp_path, text))


@pytest.mark.parametrize("email, flagged", [
    ("test@example.com", True), ("test+2@example.com", True), ("Dummy.User@shop.com", True),
    ("c0000001@example.com", False), ("contest.winner@gmail.com", False), ("jane.testa@gmail.com", False),
    (None, False),
])
def test_email_pattern(email: str | None, flagged: bool) -> None:
    rules = [c for c in load_anomaly_rules() if c.name == "test_account_email"]
    frame = pd.DataFrame({"customer_id": ["x"], "email": pd.array([email], dtype="string")})
    assert bool(flag_anomalies(frame, rules=rules)["anomaly_flag"].iloc[0]) is flagged
