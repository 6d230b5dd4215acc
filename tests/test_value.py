"""Tests of cvm.value: hand-made transactions computed by hand, and published totals of CDNOW and UCI Online Retail."""
from __future__ import annotations

from pathlib import Path

import duckdb
import matplotlib
import numpy as np
import pandas as pd
import pytest
from cvm.errors import InputError
from cvm.lifecycle import lifecycle_inputs
from cvm.value import (
    base_kpis,
    cohort_retention,
    ltv_cac,
    ltv_cac_missing_sentence,
    pareto,
    pareto_headline,
    plot_cohort_heatmap,
    plot_pareto,
    purchase_days,
)

matplotlib.use("Agg")
AS_OF = "2024-03-15"


def _tx() -> pd.DataFrame:
    rows = [
        ("A", "O1", "2024-01-05", 20.0), ("A", "O2", "2024-02-10", 30.0),
        ("B", "O3", "2024-01-20", 40.0), ("B", "O4", "2024-03-01", 60.0),
        ("C", "O5", "2024-01-25", 25.0), ("C", "R1", "2024-02-03", -10.0),   # a return alone is no activity
        ("D", "O6", "2024-02-14", 15.0), ("D", "O7", "2024-02-20", 35.0), ("D", "O8", "2024-03-10", 50.0),
        ("E", "O9", "2024-03-02", 80.0),
        ("G", "O10", "2024-01-10", 50.0),
        ("G", "O11", "2024-02-05", 10.0), ("G", "R3", "2024-02-05", -30.0),   # net negative day: not a purchase day
        ("F", "O12", "2024-04-01", 99.0),                                     # after as_of: ignored
    ]
    df = pd.DataFrame(rows, columns=["customer_id", "order_id", "order_date", "amount"])
    df["order_date"] = pd.to_datetime(df["order_date"])
    return df


def test_base_kpis_by_hand() -> None:
    """Window (Feb 14, Mar 15]: D 35 + 50, B 60, E 80 = 4 orders by 3 customers, 225 revenue."""
    k = base_kpis(_tx(), AS_OF, active_days=30)
    assert (k["active_customers"], k["orders"], k["revenue"], k["returns"]) == (3, 4, 225.0, 0.0)
    assert k["aov"] == pytest.approx(56.25) and k["window_start"] == "2024-02-15"
    assert k["customers_to_date"] == 6  # F bought after as_of


def test_base_kpis_returns_and_connection() -> None:
    """60 days: 9 purchase orders (O11 counts, the returns R1 and R3 do not), net 305, returns 40."""
    con = duckdb.connect()
    con.register("tx", _tx())
    k = base_kpis(con, AS_OF, active_days=60, table="tx")
    assert (k["active_customers"], k["orders"]) == (6, 9)
    assert k["revenue"] == pytest.approx(305.0) and k["gross_revenue"] == pytest.approx(345.0)
    assert k["returns"] == pytest.approx(40.0) and k["aov"] == pytest.approx(345 / 9)
    with pytest.raises(InputError, match="active_days"):
        base_kpis(con, AS_OF, active_days=0, table="tx")
    with pytest.raises(InputError, match="missing required"):
        base_kpis(_tx().drop(columns="order_id"), AS_OF)


def test_pareto_shares_ties_and_negatives() -> None:
    f = pd.DataFrame({"customer_id": list("abcde"), "monetary_total": [10.0, 60.0, 10.0, 0.0, 20.0]})
    curve = pareto(f, steps=5)
    assert curve["customers"].tolist() == [1, 2, 3, 4, 5]
    assert curve["value_share"].tolist() == pytest.approx([0.6, 0.8, 0.9, 1.0, 1.0])
    assert pareto_headline(curve) == "The top 20% of customers (1 of 5) make 60% of revenue."
    ties = pareto(pd.DataFrame({"customer_id": list("abcd"), "monetary_total": [5.0] * 4}), steps=4)
    assert ties["value_share"].tolist() == pytest.approx([0.25, 0.5, 0.75, 1.0])
    neg = pareto(pd.DataFrame({"customer_id": list("abc"), "monetary_total": [30.0, 10.0, -5.0]}), steps=3)
    assert neg["value_share"].tolist() == pytest.approx([0.75, 1.0, 1.0])
    assert "1 customer(s) returned more" in pareto_headline(neg, top=1 / 3)
    assert plot_pareto(curve).axes[0].get_title().startswith("The top 20%")
    with pytest.raises(InputError, match="missing"):
        pareto(pd.DataFrame({"customer_id": ["a"], "monetary_total": [np.nan]}))
    with pytest.raises(InputError, match="no positive"):
        pareto(pd.DataFrame({"customer_id": ["a"], "monetary_total": [0.0]}))


def test_cohort_retention_by_hand() -> None:
    """Jan cohort = A, B, C, G (4): Feb only A buys (G's Feb day nets negative, C only returns), Mar only B."""
    r = cohort_retention(_tx(), AS_OF).set_index(["cohort", "periods_since"])
    jan, feb, mar = pd.Timestamp("2024-01-01"), pd.Timestamp("2024-02-01"), pd.Timestamp("2024-03-01")
    assert len(r) == 3 + 2 + 1
    assert r.loc[(jan, 0), ["cohort_size", "active"]].tolist() == [4, 4]
    assert r.loc[(jan, 1), "retention"] == pytest.approx(0.25) and r.loc[(jan, 2), "retention"] == pytest.approx(0.25)
    assert r.loc[(feb, 0), "cohort_size"] == 1 and r.loc[(feb, 1), "active"] == 1   # D's two Feb days count once
    assert r.loc[(mar, 0), "cohort_size"] == 1
    assert r["complete"].tolist() == [True, True, False, True, False, False]   # March still running on as_of
    q = cohort_retention(_tx(), AS_OF, period="Q")
    assert q[["cohort_size", "active"]].values.tolist() == [[6, 6]]
    w = cohort_retention(_tx(), "2024-01-21", period="W")   # A Fri 5 Jan: week of Mon 1 Jan; G, B in later weeks
    assert w["cohort"].min() == pd.Timestamp("2024-01-01") and w["cohort_size"].groupby(w["cohort"]).first().sum() == 3
    assert "buy again in the month after" in plot_cohort_heatmap(r.reset_index()).axes[0].get_title()
    with pytest.raises(InputError, match="period"):
        cohort_retention(_tx(), AS_OF, period="Y")


@pytest.mark.parametrize("seed", range(4))
def test_shared_purchase_days_give_the_same_tables(seed: int) -> None:
    """Cohorts and lifecycle inputs read from `purchase_days` equal those grouped from the transactions."""
    rng = np.random.default_rng(seed)
    n = 3000
    tx = pd.DataFrame({"customer_id": pd.array([f"C{i}" for i in rng.integers(0, 300, n)], dtype="string"),
                       "order_id": [f"O{i}" for i in rng.integers(0, 1500, n)],
                       "order_date": pd.Timestamp("2022-01-01") + pd.to_timedelta(rng.integers(0, 900, n), unit="D"),
                       "amount": np.round(rng.normal(30, 40, n), 2)})
    tx.loc[rng.random(n) < 0.02, "customer_id"] = None
    con = duckdb.connect()
    con.register("transactions", tx)
    as_of = "2024-03-31"
    days = purchase_days(con, as_of)
    for period in ("W", "M", "Q"):
        pd.testing.assert_frame_equal(cohort_retention(con, as_of, period=period, days=days),
                                      cohort_retention(con, as_of, period=period))
    shared = lifecycle_inputs(con, as_of, days=days).sort_values("customer_id", ignore_index=True)
    pd.testing.assert_frame_equal(shared, lifecycle_inputs(con, as_of).sort_values("customer_id", ignore_index=True))


def test_cohort_heatmap_without_complete_periods() -> None:
    r = cohort_retention(_tx(), "2024-01-31")
    assert "Not enough history" in plot_cohort_heatmap(r).axes[0].get_title()


def _acq() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    customers = pd.DataFrame({
        "customer_id": ["P1", "P2", "P3", "O1", "S1"],
        "acquisition_channel": ["paid", "paid", "paid", "organic", "social"],
        "acquisition_cost": [30.0, 30.0, np.nan, 0.0, 100.0],
        "signup_date": pd.to_datetime(["2024-01-01", "2024-01-01", "2024-06-01", None, "2024-10-01"]),
        "first_order_date": pd.to_datetime([None, None, None, "2024-05-01", None]),
    })
    tx = pd.DataFrame({
        "customer_id": ["P1", "P1", "P2", "P2", "O1", "S1"],
        "order_id": ["a", "b", "c", "d", "e", "f"],
        "order_date": pd.to_datetime(["2024-01-10", "2024-02-15", "2024-01-05", "2024-03-20", "2024-05-01",
                                      "2024-10-05"]),
        "amount": [20.0, 20.0, 10.0, 10.0, 5.0, 10.0],
    })
    clv = pd.DataFrame({"customer_id": ["P1", "O1", "S1"], "clv": [60.0, 3.0, 36.0]})
    return customers, tx, clv


def test_ltv_cac_by_hand() -> None:
    """paid: months 0-5 average P1-P3 (cum 10, 16.7, 20 ...), from month 6 only P1, P2 are observed long enough
    (cum 30 = CAC) so payback = 7 months; social: 10 observed in 2 months, then (100 - 10) / (36 / 36) months."""
    customers, tx, clv = _acq()
    out = ltv_cac(customers, clv, tx, "2024-12-31", horizon_months=36, min_customers=1).set_index(
        "acquisition_channel")
    paid = out.loc["paid"]
    assert (paid["customers"], paid["customers_with_cac"], paid["mean_cac"]) == (3, 2, 30.0)
    assert paid["mean_past_margin"] == pytest.approx(20.0) and paid["mean_future_clv"] == pytest.approx(20.0)
    assert paid["ltv_cac"] == pytest.approx(40 / 30)
    assert paid["payback_months"] == 7 and paid["payback_method"] == "observed"
    social = out.loc["social"]
    assert social["payback_months"] == pytest.approx(2 + 90)
    assert social["payback_method"] == "observed 2 months, then CLV / horizon"
    assert social["ltv_cac"] == pytest.approx(46 / 100)
    organic = out.loc["organic"]
    assert organic["payback_months"] == 0 and np.isnan(organic["ltv_cac"])


def test_ltv_cac_margin_quarters_and_missing_cost() -> None:
    customers, tx, clv = _acq()
    by_q = ltv_cac(customers, clv, tx, "2024-12-31", by=["acquisition_quarter"], margin=0.5, min_customers=1)
    assert dict(zip(by_q["acquisition_quarter"], by_q["customers"])) == {"2024Q1": 2, "2024Q2": 2, "2024Q4": 1}
    q1 = by_q.set_index("acquisition_quarter").loc["2024Q1"]
    assert q1["mean_past_margin"] == pytest.approx(15.0)   # margin applies to observed revenue
    assert q1["payback_method"].startswith("observed 11 months")   # 0.5 x 30 never reaches 30 in the history
    short = ltv_cac(customers, clv, tx, "2024-10-20", by=[], min_customers=1)   # S1 observed 0 full months
    assert short["customers"].tolist() == [5]
    assert ltv_cac(customers.drop(columns="acquisition_cost"), clv, tx, "2024-12-31") is None
    assert "acquisition_cost" in ltv_cac_missing_sentence()
    with pytest.raises(InputError, match="after as_of"):
        ltv_cac(customers, clv, tx, "2024-03-01")
    with pytest.raises(InputError, match="grouping column"):
        ltv_cac(customers, clv, tx, "2024-12-31", by=["region"])


def test_ltv_cac_clv_only_when_no_history() -> None:
    """A cohort acquired less than a month ago: payback = CAC / (mean CLV / horizon)."""
    customers = pd.DataFrame({"customer_id": ["N"], "acquisition_channel": ["x"], "acquisition_cost": [12.0],
                              "signup_date": pd.to_datetime(["2024-12-20"])})
    tx = pd.DataFrame({"customer_id": ["N"], "order_id": ["1"], "order_date": pd.to_datetime(["2024-12-21"]),
                       "amount": [5.0]})
    out = ltv_cac(customers, pd.DataFrame({"customer_id": ["N"], "clv": [24.0]}), tx, "2024-12-31",
                  horizon_months=12, min_customers=1)
    assert out["payback_months"].iloc[0] == pytest.approx(6.0)
    assert out["payback_method"].iloc[0] == "CLV / horizon (history too short)"


@pytest.mark.real
def test_cdnow_published_totals(real_data: Path) -> None:
    """Published CDNOW master figures (PROVENANCE): 23,570 customers, $2,500,315.63, first purchases Jan-Mar 1997."""
    raw = pd.read_csv(real_data / "cdnow" / "CDNOW_master.txt", sep=r"\s+", dtype={"customer_id": str})
    tx = pd.DataFrame({"customer_id": raw["customer_id"], "order_id": np.arange(len(raw)).astype(str),
                       "order_date": pd.to_datetime(raw["date"].astype(str), format="%Y%m%d"),
                       "amount": raw["dollar_value"]})
    k = base_kpis(tx, "1998-06-30", active_days=600)
    assert k["customers_to_date"] == k["active_customers"] == 23_570
    assert k["revenue"] == pytest.approx(2_500_315.63, abs=0.01)
    r = cohort_retention(tx, "1998-06-30")
    sizes = r.groupby("cohort")["cohort_size"].first()
    assert list(sizes.index.month) == [1, 2, 3] and sizes.sum() == 23_570


@pytest.mark.real
def test_online_retail_published_totals(real_data: Path) -> None:
    """Published UCI Online Retail figures (PROVENANCE): with CustomerID and Quantity > 0, 4,339 customers,
    18,536 invoices, revenue 8,911,407.90."""
    raw = pd.read_csv(real_data / "online_retail" / "online_retail.csv.gz", dtype={"InvoiceNo": str},
                      usecols=["InvoiceNo", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID"],
                      parse_dates=["InvoiceDate"])
    raw = raw[raw["CustomerID"].notna() & (raw["Quantity"] > 0)]
    tx = pd.DataFrame({"customer_id": raw["CustomerID"].astype("int64").astype(str), "order_id": raw["InvoiceNo"],
                       "order_date": raw["InvoiceDate"], "amount": raw["Quantity"] * raw["UnitPrice"]})
    k = base_kpis(tx, "2011-12-10", active_days=400)
    assert (k["active_customers"], k["orders"]) == (4_339, 18_536)
    assert k["revenue"] == pytest.approx(8_911_407.90, abs=0.05)
