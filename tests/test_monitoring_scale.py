"""The monitoring step at scale keeps its numbers. On the 5,000-customer demo, the contacts `monitoring.from_run`
prepares inside the run database (SQL joins of transactions, customer and customer_knowledge) equal a plain pandas
reference of the same definitions, and the same frames passed to `prepare` give the same result; the bootstrap that
resamples customers once for several value columns matches bootstrap theory."""
from __future__ import annotations

import math
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from cvm import customer_db
from cvm import experiments as ex
from cvm import monitoring as mon
from cvm.config import RunConfig, config_for_data, load_config

ROOT = Path(__file__).resolve().parents[1]
PRE_DAYS, ATTRIBUTION_DAYS = 90, 14


@pytest.fixture(scope="module")
def demo_run(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunConfig]:
    """The data step's database for the demo, plus a customer_knowledge table that misses every tenth customer, and
    repeated customers in customer and customer_knowledge whose later rows must not count (the first row does)."""
    tmp = tmp_path_factory.mktemp("monitoring_scale")
    config = load_config(config_for_data(ROOT / "configs" / "demo.yaml", demo_dir, tmp / "output", tmp / "demo.yaml"))
    run_dir = tmp / "run"
    customer_db.build_customer_db(customer_db.load_and_validate(config), run_dir, config.as_of)
    with duckdb.connect(str(run_dir / customer_db.DB_NAME)) as con:
        con.execute("""CREATE TABLE customer_knowledge AS
                       SELECT customer_id, ['Champions', 'At risk', 'Lost'][CAST(1 + hash(customer_id) % 3 AS BIGINT)] AS rfm_segment
                       FROM customer WHERE hash(customer_id) % 10 <> 0""")
        con.execute("INSERT INTO customer_knowledge SELECT customer_id, 'repeated' FROM customer_knowledge LIMIT 50")
        con.execute("INSERT INTO customer SELECT * REPLACE ('Nowhere' AS region) FROM customer LIMIT 50")
    return run_dir, config


def _first_rows(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop_duplicates("customer_id").set_index("customer_id")


def _reference(contacts: pd.DataFrame, transactions: pd.DataFrame, as_of: object, start_days: int, end_days: int
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Contacts up to as_of, and per contact the orders and spend of non-return transactions in [date + start_days,
    date + end_days), with pandas merges (the definitions `prepare` had before it joined in SQL)."""
    frame = contacts[contacts["contact_date"] <= pd.Timestamp(as_of)].reset_index(drop=True)
    keys = frame[["customer_id", "contact_date"]].assign(_row=np.arange(len(frame)))
    orders = transactions.loc[~transactions["is_return"].astype(bool), ["customer_id", "order_date", "amount"]]
    pairs = keys.merge(orders, on="customer_id")
    pairs = pairs[(pairs["order_date"] >= pairs["contact_date"] + pd.Timedelta(days=start_days))
                  & (pairs["order_date"] < pairs["contact_date"] + pd.Timedelta(days=end_days))]
    window = pairs.groupby("_row")["amount"].agg(orders="size", spend="sum").reindex(range(len(frame)),
                                                                                     fill_value=0)
    return frame, window


def test_from_run_equals_pandas_reference_and_frame_path(demo_run: tuple[Path, RunConfig]) -> None:
    """Real data (the demo): segment, CRM attributes, pre-period spend and orders, campaign attributes, group and
    launch week of every prepared contact equal the pandas reference; `prepare` on the frames agrees with the run
    database path (floating sums to 1e-9: SQL adds in another order)."""
    run_dir, config = demo_run
    with customer_db.connect(run_dir) as con:
        setup = mon.from_run(con, config, pre_period_days=PRE_DAYS)
        tables = {n: con.table(n).df() for n in ("contacts", "campaigns", "transactions", "customer",
                                                   "customer_knowledge")}
    got = setup.contacts
    frame, pre = _reference(tables["contacts"], tables["transactions"], config.as_of, -PRE_DAYS, 0)
    assert len(got) == len(frame) > 0 and (pre["orders"] > 0).mean() > 0.3
    np.testing.assert_allclose(got["pre_spend"], pre["spend"], rtol=1e-9)
    np.testing.assert_array_equal(got["pre_orders"], pre["orders"].astype(float))
    knowledge = _first_rows(tables["customer_knowledge"])["rfm_segment"]
    expected_segment = frame["customer_id"].map(knowledge).fillna("unknown")
    assert (got["segment"] == expected_segment).all() and "repeated" not in set(got["segment"])
    assert (got["segment"] == "unknown").any()
    customer = _first_rows(tables["customer"])
    for col in ("region", "gender", "acquisition_channel", "loyalty_tier"):
        pd.testing.assert_series_equal(got[col], frame["customer_id"].map(customer[col]).rename(col),
                                       check_dtype=False)
    assert "Nowhere" not in set(got["region"])
    campaigns = tables["campaigns"].set_index("campaign_id")
    treated = frame["group"].str.lower() == "treatment"
    for col, ref in (("campaign_type", frame["campaign_id"].map(campaigns["type"])),
                     ("margin_pct", frame["campaign_id"].map(campaigns["margin_pct"]).fillna(40.0)),
                     ("cost_per_contact", frame["campaign_id"].map(campaigns["cost_per_contact"]).fillna(0.0)),
                     ("group", frame["group"].str.lower()),
                     ("launch_week", frame["contact_date"].dt.to_period("W-SUN").dt.start_time)):
        assert (got[col].to_numpy() == ref.to_numpy()).all(), col
    assert ((got["discount_pct"] > 0) <= treated).all()
    with_frames = mon.prepare(tables["contacts"], as_of=config.as_of, campaigns=tables["campaigns"],
                              transactions=tables["transactions"], customer=tables["customer"],
                              knowledge=tables["customer_knowledge"], pre_period_days=PRE_DAYS)
    pd.testing.assert_frame_equal(with_frames.contacts, got, check_exact=False, rtol=1e-9)
    assert with_frames.notes == setup.notes and with_frames.segment_source == setup.segment_source


def test_attributed_outcomes_equal_pandas_reference(demo_run: tuple[Path, RunConfig]) -> None:
    """Real data (the demo) without outcome columns: converted = an order in [contact day, +14 days), revenue = its
    net value, attributed in the run database, equal the pandas reference."""
    run_dir, config = demo_run
    with customer_db.connect(run_dir) as con:
        contacts = con.table("contacts").df().drop(columns=["converted", "revenue"])
        setup = mon.prepare(contacts, as_of=config.as_of, campaigns=con.table("campaigns").df(), database=con,
                            attribution_days=ATTRIBUTION_DAYS)
        transactions = con.table("transactions").df()
    _, window = _reference(contacts, transactions, config.as_of, 0, ATTRIBUTION_DAYS)
    np.testing.assert_array_equal(setup.contacts["converted"], (window["orders"] > 0).astype(float))
    np.testing.assert_allclose(setup.contacts["revenue"], window["spend"], rtol=1e-9)
    assert setup.contacts["converted"].mean() > 0.02
    assert any("attributed from transactions" in n for n in setup.notes)


def test_joint_bootstrap_matches_theory() -> None:
    """Known truth: resampling customers jointly, the bootstrap means of each column have sd sqrt(var / n) and the
    covariance of two columns' means is cov / n; a column that is an affine function of the first (margin of revenue
    at a fixed discount) gets exactly that function of its means, through the shortcut that does not draw it."""
    rng = np.random.default_rng(11)
    n = 3000
    revenue = (rng.random(n) < 0.05) * rng.lognormal(3, 1.2, n)
    visits = revenue / 10 + (rng.random(n) < 0.2) * rng.poisson(3, n)
    values = np.c_[revenue, 0.4 * revenue - 0.5, visits]
    boots = ex.bootstrap_means(values, 20_000, np.random.default_rng(5))
    assert boots.shape == (20_000, 3)
    np.testing.assert_allclose(boots[:, 1], 0.4 * boots[:, 0] - 0.5, rtol=1e-9, atol=1e-9)
    for j in (0, 2):
        assert boots[:, j].std() == pytest.approx(math.sqrt(values[:, j].var() / n), rel=0.03)
        assert boots[:, j].mean() == pytest.approx(values[:, j].mean(), abs=3 * values[:, j].std() / n)
    cov = np.cov(values[:, 0], values[:, 2], ddof=0)[0, 1] / n
    assert np.cov(boots[:, 0], boots[:, 2])[0, 1] == pytest.approx(cov, rel=0.06)
