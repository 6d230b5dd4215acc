"""The single customer database: tables, the customer view with its source flags, silos and coverage."""
from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from cvm import customer_db as db
from cvm.config import SourceConfig
from cvm.contract import markdown
from cvm.quality import validate
from cvm.sources import load_source

AS_OF = date(2025, 6, 30)


def build(tmp_path: Path) -> Path:
    tables = {
        "transactions": validate("transactions", pd.DataFrame({
            "customer_id": ["A", "A", "B", "X", None], "order_id": ["1", "2", "3", "4", "5"],
            "order_date": ["2025-01-01", "2025-03-01", "2025-02-01", "2025-02-02", "2025-02-03"],
            "amount": ["10", "-4", "20", "5", "1"]}), AS_OF),
        "customers": validate("customers", pd.DataFrame({
            "customer_id": ["A", "B", "C"], "region": ["N", "S", "S"], "email": ["a@x.com", None, "c@y.org"]}), AS_OF),
        "loyalty": validate("loyalty", pd.DataFrame({"customer_id": ["B", "C"], "loyalty_tier": ["gold", "blue"]}),
                            AS_OF),
    }
    return db.build_customer_db(tables, tmp_path, AS_OF)


def test_customer_table_joins_every_source(tmp_path: Path) -> None:
    path = build(tmp_path)
    assert path.name == "customer.duckdb" and not (tmp_path / "customer.duckdb.building").exists()
    con = db.connect(tmp_path)
    customer = con.execute("SELECT * FROM customer ORDER BY customer_id").df().set_index("customer_id")
    assert list(customer.index) == ["A", "B", "C", "X"]
    assert customer.loc["X", "in_customers"] == False  # noqa: E712 - flags are real booleans, never NULL
    assert customer.loc["C", "in_transactions"] == False  # noqa: E712
    assert customer.loc["A", "net_revenue"] == 6.0 and customer.loc["A", "returned_value"] == 4.0
    assert customer.loc["A", "n_orders"] == 1
    assert customer.loc["B", "loyalty_tier"] == "gold" and customer.loc["C", "region"] == "S"
    rejected = con.execute("SELECT source_table, reject_reason FROM rejected_rows").df()
    assert rejected.to_dict("records") == [{"source_table": "transactions", "reject_reason": "missing customer_id"}]


def test_silos_and_coverage(tmp_path: Path) -> None:
    build(tmp_path)
    con = db.connect(tmp_path)
    silos = db.silos(con).set_index("sources")["customers"].to_dict()
    assert silos == {"transactions + customers": 1, "transactions + customers + loyalty": 1,
                     "customers + loyalty": 1, "transactions": 1}
    coverage = db.source_coverage(con).set_index("source")
    assert coverage.loc["customers", "customers"] == 3 and coverage.loc["customers", "with_transactions"] == 2
    dates = db.date_coverage(con).set_index("table")
    assert dates.loc["transactions", "first"] == pd.Timestamp("2025-01-01")
    assert dates.loc["transactions", "months"] == 3


def test_anomalies_and_quality_sentences(tmp_path: Path) -> None:
    build(tmp_path)
    con = db.connect(tmp_path)
    found = db.anomalies(con, AS_OF).set_index("check")["rows"]
    assert found["return lines (negative amount or quantity)"] == 1
    report = db.quality_report({"transactions": validate("transactions", pd.DataFrame({
        "customer_id": ["A", None], "order_id": ["1", "2"], "order_date": ["2025-01-01"] * 2,
        "amount": ["1", "2"]}), AS_OF)})
    assert db.quality_sentence(report).startswith("2 rows were read from 1 source(s); 1 (50.0%) passed")


def test_data_readme_documents_the_contract() -> None:
    """data/README.md holds the contract exactly as cvm.contract declares it (one schema, documented once)."""
    readme = (Path(__file__).resolve().parents[1] / "data" / "README.md").read_text(encoding="utf-8")
    start = readme.index("-->", readme.index("<!-- contract:start")) + 4
    end = readme.index("<!-- contract:end -->")
    assert readme[start:end] == markdown()


def test_customer_view_matches_pandas_on_the_demo(demo_dir: Path, tmp_path: Path) -> None:
    """Source flags, order counts, dates and totals of the customer view, recomputed in pandas from the kept rows."""
    as_of = date(2026, 3, 31)  # the demo runs to 2026-06-30: later lines are rejected, so some customers drop out
    tables = {name: validate(name, load_source(SourceConfig(table=name, path=demo_dir / file)), as_of)
              for name, file in [("transactions", "transactions.parquet"), ("customers", "customers.csv"),
                                 ("loyalty", "loyalty.csv"), ("contacts", "contacts.parquet")]}
    db.build_customer_db(tables, tmp_path, as_of)
    customer = db.connect(tmp_path).execute("SELECT * FROM customer").df().set_index("customer_id")
    lines = tables["transactions"].kept
    until = lines[lines["order_date"] < pd.Timestamp(as_of) + pd.Timedelta(days=1)]
    by_customer = until.groupby("customer_id")
    expected = pd.DataFrame({
        "first_order_date": by_customer["order_date"].min(), "last_order_date": by_customer["order_date"].max(),
        "n_orders": until[~until["is_return"]].groupby("customer_id")["order_id"].nunique(),
        "net_revenue": by_customer["amount"].sum(),
        "returned_value": -until[until["is_return"]].groupby("customer_id")["amount"].sum()})
    expected["n_orders"] = expected["n_orders"].fillna(0).astype("int64")
    ids = sorted(set().union(*(set(v.kept["customer_id"].dropna()) for v in tables.values())))
    assert list(customer.index) == ids
    for name, validated in tables.items():
        assert (customer[f"in_{name}"] == customer.index.isin(set(validated.kept["customer_id"].dropna()))).all()
    got = customer.loc[expected.index, list(expected.columns)]
    pd.testing.assert_frame_equal(got, expected, check_names=False, check_dtype=False, check_index_type=False,
                                  rtol=1e-9)
    assert customer.loc[~customer.index.isin(expected.index), "n_orders"].isna().all()


def test_busy_day_anomaly_counts_distinct_orders(tmp_path: Path) -> None:
    """'over 50 orders on one day' counts distinct orders: 60 lines of 40 orders are not flagged, 51 orders are."""
    day = ["2025-03-01 10:00"]
    lines = pd.concat([
        pd.DataFrame({"customer_id": "A", "order_id": [str(i % 40) for i in range(60)], "order_date": day * 60}),
        pd.DataFrame({"customer_id": "B", "order_id": [str(i) for i in range(51)], "order_date": day * 51}),
        pd.DataFrame({"customer_id": "C", "order_id": [str(i) for i in range(51)],
                      "order_date": [f"2025-03-{1 + i % 2:02d}" for i in range(51)]})]).assign(amount="1")
    db.build_customer_db({"transactions": validate("transactions", lines, AS_OF)}, tmp_path, AS_OF)
    found = db.anomalies(db.connect(tmp_path), AS_OF).set_index("check")
    assert found.loc["customers with over 50 orders on one day", "rows"] == 51
    assert found.loc["customers with over 50 orders on one day", "example_order_id"] in set(lines["order_id"])


@pytest.mark.parametrize("seed", range(5))
def test_busy_day_anomaly_matches_its_definition(tmp_path: Path, seed: int) -> None:
    """The busy-day check (narrowed to customers with over 50 lines) against its definition in pandas on random
    lines: every line of a customer with over 50 distinct orders on some day."""
    rng = np.random.default_rng(seed)
    n = 1700  # about 47 lines per customer-day: some customers have a day over 50 orders, all have over 50 lines
    lines = pd.DataFrame({"customer_id": [f"C{i}" for i in rng.integers(0, 12, n)],
                          "order_id": [str(i) for i in rng.integers(0, 700, n)],
                          "order_date": [f"2025-03-0{d} 10:00" for d in rng.integers(1, 4, n)], "amount": "1"})
    db.build_customer_db({"transactions": validate("transactions", lines, AS_OF)}, tmp_path, AS_OF)
    kept = db.read_table(db.connect(tmp_path), "transactions")
    per_day = kept.groupby(["customer_id", kept["order_date"].dt.date])["order_id"].nunique()
    busy = set(per_day[per_day > 50].index.get_level_values(0))
    found = db.anomalies(db.connect(tmp_path), AS_OF).set_index("check")
    assert found.loc["customers with over 50 orders on one day", "rows"] == kept["customer_id"].isin(busy).sum()
    assert 0 < len(busy) < 12


def test_customer_with_only_returns_has_zero_orders(tmp_path: Path) -> None:
    """n_orders counts purchase orders: 0 (not missing) for a customer whose lines are all returns."""
    lines = pd.DataFrame({"customer_id": ["R", "R", "P"], "order_id": ["1", "2", None],
                          "order_date": ["2025-01-01"] * 3, "amount": ["-5", "-1", "3"]})
    db.build_customer_db({"transactions": validate("transactions", lines, AS_OF)}, tmp_path, AS_OF)
    customer = db.connect(tmp_path).execute("SELECT * FROM customer").df().set_index("customer_id")
    assert customer.loc["R", "n_orders"] == 0 and customer.loc["R", "net_revenue"] == -6.0
    assert customer.loc["P", "n_orders"] == 0 and customer.loc["P", "net_revenue"] == 3.0  # a line without order id


def test_row_batches_give_duckdb_the_same_table_as_the_pandas_frame() -> None:
    """Arrow batches of the row-group size: same column types, values (NaN, NaT and NA as NULL) and row order as
    DuckDB's scan of the frame; a frame with an object column is handed over as it is."""
    n = db.ROW_GROUP_ROWS + 5  # two batches, the second partial
    frame = pd.DataFrame({
        "amount": np.where(np.arange(n) % 7 == 0, np.nan, np.arange(n) * 0.5),
        "order_date": pd.Series(pd.to_datetime("2025-01-01") + pd.to_timedelta(np.arange(n) % 400, "D")).mask(
            np.arange(n) % 11 == 0).astype("datetime64[us]"),
        "customer_id": pd.array([None if i % 13 == 0 else f"C{i}" for i in range(n)], dtype="string"),
        "consent": pd.array([None if i % 3 == 0 else i % 2 == 0 for i in range(n)], dtype="boolean"),
        "is_return": np.arange(n) % 5 == 0,
        "units": pd.array([None if i % 17 == 0 else i for i in range(n)], dtype="Int64"),
    })
    frame = pd.concat([frame.iloc[:1000], frame.iloc[1001:]])  # chunked text columns, as validation leaves them
    with duckdb.connect() as con:
        con.register("as_pandas", frame)
        con.register("as_batches", db._row_batches(frame))
        con.execute("CREATE TABLE p AS SELECT * FROM as_pandas")
        con.execute("CREATE TABLE b AS SELECT * FROM as_batches")
        assert con.execute("DESCRIBE p").fetchall() == con.execute("DESCRIBE b").fetchall()
        differing = con.execute("SELECT COUNT(*) FROM (SELECT * FROM p) x POSITIONAL JOIN (SELECT * FROM b) y WHERE "
                                + " OR ".join(f"x.{c} IS DISTINCT FROM y.{c}" for c in frame.columns)).fetchone()[0]
        assert differing == 0 and con.execute("SELECT COUNT(*) FROM b").fetchone()[0] == n - 1
    mixed = pd.DataFrame({"extra": pd.Series([1, "a"], dtype=object)})
    assert db._row_batches(mixed) is mixed
