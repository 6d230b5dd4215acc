"""The single customer database: tables, the customer view with its source flags, silos and coverage."""
from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd

from cvm import customer_db as db
from cvm.contract import markdown
from cvm.quality import validate

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
