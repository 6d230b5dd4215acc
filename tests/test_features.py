"""Tests of cvm.features: hand-made transactions with the nasty cases, and the CDNOW summary published by Fader and
Hardie."""
from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from cvm.errors import InputError
from cvm.features import (
    HISTORY_COLUMNS,
    customer_features,
    daily_purchase_counts,
    days_basis_features,
    holdout_purchases,
)


def _tx() -> pd.DataFrame:
    rows = [
        # customer, order, date, amount, category, channel, discount
        ("C1", "O1", "2024-01-10 09:00", 10.0, "music", "web", 0.0),   # one-time buyer, two lines in one order
        ("C1", "O1", "2024-01-10 09:00", 5.0, "books", "web", 0.0),
        ("C2", "O2", "2024-01-01 10:00", 20.0, "music", "store", 0.0),  # two orders on one day: one purchase day
        ("C2", "O3", "2024-01-01 18:00", 30.0, "books", "web", 0.0),
        ("C2", "O4", "2024-02-01 12:00", 40.0, "music", "web", 10.0),
        ("C2", "O5", "2024-02-05 12:00", -10.0, "music", "web", 0.0),   # a return on its own: no purchase
        ("C2", "O6", "2024-03-01 12:00", 0.0, "books", "web", 0.0),     # a free order still is a purchase day
        ("C3", "O7", "2023-06-01 12:00", 50.0, "music", "store", 0.0),  # outside a 90-day lookback
        ("C3", "O8", "2024-02-10 12:00", -15.0, "music", "store", 0.0),  # only a return inside it
        ("C4", "O9", "2024-01-10 11:00", 15.0, "games's", "web", None),  # ties C1 on every RFM value; odd name
        ("C5", "O10", "2024-04-02 12:00", 99.0, "music", "web", 0.0),   # after as_of: ignored
    ]
    df = pd.DataFrame(rows, columns=["customer_id", "order_id", "order_date", "amount", "category", "channel",
                                     "discount"])
    df["order_date"] = pd.to_datetime(df["order_date"])
    return df


@pytest.fixture()
def con() -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    c.register("transactions", _tx())
    return c


def test_hand_made_values(con: duckdb.DuckDBPyConnection) -> None:
    f = customer_features(con, "2024-03-31", time_unit="D").set_index("customer_id")
    assert list(f.index) == ["C1", "C2", "C3", "C4"]
    c2 = f.loc["C2"]
    assert c2["n_orders"] == 4 and c2["n_purchase_days"] == 3 and c2["frequency"] == 4
    assert c2["x"] == 2 and c2["t_x"] == 60 and c2["T"] == 90 and c2["recency_days"] == 30
    assert c2["monetary_total"] == pytest.approx(80.0) and c2["monetary_mean"] == pytest.approx(20.0)
    assert c2["n_return_lines"] == 1 and c2["return_rate"] == pytest.approx(10 / 90)
    assert c2["mean_repeat_value"] == pytest.approx(20.0)  # (40 + 0) / 2, the first day excluded
    assert c2["discount_share"] == pytest.approx(10 / 100)
    assert c2["category_share_music"] == pytest.approx(60 / 90)
    assert c2["channel_share_store"] == pytest.approx(20 / 90)
    c1 = f.loc["C1"]
    assert c1["x"] == 0 and c1["t_x"] == 0 and np.isnan(c1["mean_repeat_value"]) and c1["return_rate"] == 0
    assert c1["T"] == c1["tenure_days"] == 81


def test_ties_and_odd_category_names(con: duckdb.DuckDBPyConnection) -> None:
    f = customer_features(con, "2024-03-31").set_index("customer_id")
    cols = ["recency_days", "frequency", "monetary_total", "x", "t_x", "T"]
    assert (f.loc["C1", cols] == f.loc["C4", cols]).all()
    assert f.loc["C4", "category_share_games_s"] == 1.0
    assert f.loc["C4", "discount_share"] == 0  # a missing discount is no discount
    shares = f.filter(like="category_share_").sum(axis=1)
    assert np.allclose(shares[["C1", "C2", "C4"]], 1.0)


def test_lookback_keeps_return_only_customer(con: duckdb.DuckDBPyConnection) -> None:
    f = customer_features(con, "2024-03-31", lookback_days=90).set_index("customer_id")
    c3 = f.loc["C3"]
    assert c3["n_orders"] == 0 and c3["monetary_total"] == -15 and np.isnan(c3["x"]) and np.isnan(c3["T"])
    full = customer_features(con, "2024-03-31").set_index("customer_id")
    assert full.loc["C3", "n_orders"] == 1 and full.loc["C3", "return_rate"] == pytest.approx(15 / 50)


def test_calibration_end_and_weeks(con: duckdb.DuckDBPyConnection) -> None:
    f = customer_features(con, "2024-03-31", calibration_end="2024-02-01", frequency_basis="days",
                          time_unit="W").set_index("customer_id")
    c2 = f.loc["C2"]
    assert c2["x"] == 1 and c2["t_x"] == pytest.approx(31 / 7) and c2["T"] == pytest.approx(31 / 7)
    assert c2["frequency"] == 2 and c2["recency_days"] == 0  # the calibration frame is seen from calibration_end


def test_minimal_columns_only() -> None:
    c = duckdb.connect()
    c.register("tx", _tx()[["customer_id", "order_id", "order_date", "amount"]])
    f = customer_features(c, "2024-03-31", table="tx")
    assert not any(col.startswith(("category_share", "channel_share")) for col in f)
    assert f["discount_share"].isna().all()


@pytest.mark.parametrize("kwargs, message", [
    ({"table": "nope"}, "not found"),
    ({"frequency_basis": "lines"}, "frequency_basis"),
    ({"calibration_end": "2025-01-01"}, "after as_of"),
    ({"as_of": "2000-01-01"}, "no rows"),
    ({"as_of": "not a date"}, "not a date"),
])
def test_bad_input(con: duckdb.DuckDBPyConnection, kwargs: dict, message: str) -> None:
    args = {"as_of": "2024-03-31", **kwargs}
    with pytest.raises(InputError, match=message):
        customer_features(con, **args)


def test_missing_column() -> None:
    c = duckdb.connect()
    c.register("transactions", _tx().drop(columns="order_id"))
    with pytest.raises(InputError, match="order_id"):
        customer_features(c, "2024-03-31")


def test_holdout_and_daily_counts(con: duckdb.DuckDBPyConnection) -> None:
    h = holdout_purchases(con, "2024-01-31", "2024-03-31").set_index("customer_id")["holdout_purchases"]
    assert h.to_dict() == {"C1": 0, "C2": 2, "C3": 0, "C4": 0}  # Feb 1 and Mar 1; the return day is not one
    d = daily_purchase_counts(con, "2024-01-31", "2024-03-31")
    assert d["n_first"].sum() == 4 and d["n_repeat"].sum() == 2  # C3's first purchase is 2023-06-01


def _random_lines(seed: int, n: int = 3000) -> pd.DataFrame:
    """Lines of 300 customers over 400 days: several orders and returns on one day, free lines."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"customer_id": rng.choice([f"K{i}" for i in range(300)], n),
                         "order_id": rng.integers(0, 900, n).astype(str),
                         "order_date": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 400 * 24, n),
                                                                                  unit="h"),
                         "amount": np.round(rng.choice([-1.0, 0.0, 1.0, 1.0], n) * rng.integers(0, 50, n), 0)})


@pytest.mark.parametrize("seed", range(5))
def test_holdout_matches_the_plain_definition(seed: int) -> None:
    """Fuzzed: the holdout query (days before calibration_end in one group per customer) against the definition in
    pandas: purchase days (net >= 0, a non-return line) after calibration_end, 0 for customers with rows only before
    it, absent for those without rows up to as_of; several orders and returns on one day, free lines."""
    tx = _random_lines(seed)
    con = duckdb.connect()
    con.register("transactions", tx)
    got = holdout_purchases(con, "2024-09-30", "2024-12-31").set_index("customer_id")["holdout_purchases"]
    kept = tx[tx["order_date"].dt.normalize() <= "2024-12-31"].assign(d=lambda f: f["order_date"].dt.normalize())
    days = kept.groupby(["customer_id", "d"]).agg(net=("amount", "sum"), buy=("amount", lambda a: (a >= 0).any()))
    bought = days[(days["net"] >= 0) & days["buy"]].reset_index()
    expected = (bought[bought["d"] > "2024-09-30"].groupby("customer_id").size()
                .reindex(kept["customer_id"].unique(), fill_value=0).sort_index())
    assert got.index.tolist() == expected.index.tolist()
    assert got.tolist() == expected.tolist() and got.dtype == "int32"


@pytest.mark.parametrize("seed", range(3))
def test_days_basis_features_equal_customer_features(seed: int) -> None:
    """Fuzzed: the days-basis columns rebuilt from an orders-basis frame's purchase-history summary equal those of a
    days-basis `customer_features` (return-only customers, several orders and returns on one day, free lines)."""
    tx = _random_lines(seed)
    con = duckdb.connect()
    con.register("transactions", tx)
    for unit in ("D", "W", "M"):
        orders = customer_features(con, "2024-12-31", time_unit=unit, btyd_basis="orders", top_categories=0)
        days = customer_features(con, "2024-12-31", frequency_basis="days", time_unit=unit, top_categories=0)
        got = days_basis_features(orders[list(HISTORY_COLUMNS)], "2024-12-31", unit)
        pd.testing.assert_frame_equal(got, days[got.columns], check_exact=True)
    with pytest.raises(InputError, match="re-run the knowledge step"):
        days_basis_features(orders.drop(columns="n_orders"), "2024-12-31")


def _cdnow(real_data: Path) -> duckdb.DuckDBPyConnection:
    raw = pd.read_csv(real_data / "cdnow" / "CDNOW_sample.txt", sep=r"\s+", header=None,
                      names=["customer_id", "sample_id", "ymd", "cds", "amount"], dtype={"customer_id": str,
                                                                                         "ymd": str})
    raw["order_date"] = pd.to_datetime(raw["ymd"], format="%Y%m%d")
    raw["order_id"] = raw["customer_id"] + "-" + raw["ymd"]
    c = duckdb.connect()
    c.register("transactions", raw)
    return c


@pytest.mark.real
def test_cdnow_summary_matches_published(real_data: Path) -> None:
    """The raw CDNOW sample through customer_features reproduces the published per-customer summary
    (cdnow_customers_summary_with_transactions.csv, Fader & Hardie): x exactly, t_x, T and zbar to its 2 decimals."""
    con = _cdnow(real_data)
    f = customer_features(con, "1998-06-30", calibration_end="1997-09-30", frequency_basis="days")
    raw = con.execute("SELECT DISTINCT customer_id, CAST(sample_id AS INTEGER) AS ID FROM transactions").df()
    pub = pd.read_csv(real_data / "cdnow" / "cdnow_customers_summary_with_transactions.csv")
    j = f.merge(raw, on="customer_id").merge(pub, on="ID", suffixes=("", "_pub"))
    assert len(j) == len(f) == 2357
    assert (j["x"] == j["x_pub"]).all() and j["x"].sum() == 2457
    assert np.abs(j["t_x"] - j["t_x_pub"]).max() <= 0.005
    assert np.abs(j["T"] - j["T_pub"]).max() <= 0.005
    assert np.abs(j["mean_repeat_value"].fillna(0) - j["zbar"]).max() <= 0.005 + 1e-9
    h = holdout_purchases(con, "1997-09-30", "1998-06-30")
    assert h["holdout_purchases"].sum() == 1882  # repeat purchase days in weeks 40-78, also counted with pandas below
    days = con.execute("SELECT DISTINCT customer_id, order_date FROM transactions").df()
    assert int((days["order_date"] > "1997-09-30").sum()) == 1882
