"""The single customer database: a DuckDB file with every validated table and one `customer` row per customer.

`build_customer_db` writes `<run>/customer.duckdb` with the contract tables that were supplied, the rejected rows with
their reason (`rejected_rows`), the data-quality report (`data_quality`), and `customer`: every customer_id found in any
source, with flags for the sources it appears in, CRM and loyalty attributes, and transaction totals as of `as_of`.
"""
from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from cvm.config import RunConfig
from cvm.engine import fetch
from cvm.quality import Validated, validate
from cvm.quality_sql import KEEP, validate_parquet
from cvm.sources import load_source

DB_NAME = "customer.duckdb"
#: DuckDB's memory while it writes the database; beyond it, DuckDB spills to disk. Unbounded, it added 1-3 GB to the
#: validated tables held in memory at 1M customers; the customer view needs about 0.25 GB per million customers.
BUILD_MEMORY_LIMIT = "1GB"
ID_SOURCES = ("transactions", "customers", "loyalty", "contacts")
#: rows per Arrow batch handed to DuckDB: its row-group size, so that each batch fills one row group (Arrow chunks of
#: other sizes leave partial row groups, which DuckDB rewrites when it checkpoints the file: slower than a pandas scan)
ROW_GROUP_ROWS = 122_880


def load_and_validate(config: RunConfig) -> dict[str, Validated]:
    """Read and validate every configured source (errors name the file, the column and the row count)."""
    out: dict[str, Validated] = {}
    for table, src in config.sources.items():
        out[table] = validate_parquet(src, config.as_of) or validate(
            table, load_source(src), config.as_of, source=src.path, read=src.read,
            cancellation_prefix=src.cancellation_prefix, outcomes=src.outcomes)
    pa.default_memory_pool().release_unused()  # hand the files' freed buffers back before the database is written
    return out


def connect(run_dir: str | Path, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """Open the run's customer database."""
    return duckdb.connect(str(Path(run_dir) / DB_NAME), read_only=read_only)


def quality_report(tables: dict[str, Validated]) -> pd.DataFrame:
    """Rows read / kept / rejected per source, one line per rejection reason."""
    rows = [r for v in tables.values() for r in v.report_rows()]
    return pd.DataFrame(rows, columns=["table", "file", "rows_read", "rows_kept", "rows_rejected", "reason", "rows"])


def _customer_sql(id_tables: list[str], present: set[str], as_of: date) -> str:
    # each table's distinct ids, once: they make the id list and the flags (far less memory than the rows' ids, and
    # DuckDB can spill them under its memory limit)
    distinct = ",\n".join(f"ids_{t} AS (SELECT DISTINCT customer_id FROM {t} WHERE customer_id IS NOT NULL)"
                          for t in id_tables)
    ids = " UNION ".join(f"SELECT customer_id FROM ids_{t}" for t in id_tables)
    flags = ",\n  ".join(f"ids.customer_id IN (SELECT customer_id FROM ids_{t}) AS in_{t}" for t in id_tables)
    joins, cols = [], []
    if "customers" in present:
        joins.append("LEFT JOIN customers c USING (customer_id)")
        cols.append("c.* EXCLUDE (customer_id)")
    if "loyalty" in present:
        joins.append("LEFT JOIN loyalty l USING (customer_id)")
        cols.append("l.* EXCLUDE (customer_id)")
    if "transactions" in present:
        # n_orders = COUNT(DISTINCT order_id) of purchase lines, counted as distinct (customer, order) pairs
        until = f"order_date < DATE '{as_of.isoformat()}' + INTERVAL 1 DAY"
        joins.append(f"""LEFT JOIN (
            SELECT customer_id, first_order_date, last_order_date, COALESCE(orders.n, 0) AS n_orders, net_revenue,
                   returned_value
            FROM (SELECT customer_id, MIN(order_date) AS first_order_date, MAX(order_date) AS last_order_date,
                         SUM(amount) AS net_revenue, -SUM(amount) FILTER (WHERE is_return) AS returned_value
                  FROM transactions WHERE {until}
                  GROUP BY customer_id) totals
            LEFT JOIN (SELECT customer_id, COUNT(*) AS n
                       FROM (SELECT DISTINCT customer_id, order_id FROM transactions
                             WHERE {until} AND NOT is_return AND order_id IS NOT NULL)
                       GROUP BY customer_id) orders USING (customer_id)) tx USING (customer_id)""")
        cols.append("tx.* EXCLUDE (customer_id)")
    select = ",\n  ".join(["ids.customer_id", flags] + cols)
    return f"CREATE TABLE customer AS WITH {distinct}\nSELECT\n  {select}\nFROM ({ids}) ids\n" + "\n".join(joins) \
        + "\nORDER BY ids.customer_id"


def build_customer_db(tables: dict[str, Validated], run_dir: str | Path, as_of: date) -> Path:
    """Write the DuckDB file (replacing a previous one in this run folder) and return its path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / DB_NAME
    tmp = run_dir / (DB_NAME + ".building")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        con.execute(f"SET memory_limit = '{BUILD_MEMORY_LIMIT}'")
        for name, validated in tables.items():
            _write_kept(con, name, validated)
        rejected = pd.concat([v.rejected.assign(source_table=v.table) for v in tables.values()], ignore_index=True) \
            if tables else pd.DataFrame()
        rejected = rejected.astype("string") if len(rejected) else pd.DataFrame(
            {"source_table": pd.Series(dtype="string"), "reject_reason": pd.Series(dtype="string")})
        con.register("rejected_view", rejected)
        con.execute("CREATE TABLE rejected_rows AS SELECT * FROM rejected_view")
        con.register("quality_view", quality_report(tables))
        con.execute("CREATE TABLE data_quality AS SELECT * FROM quality_view")
        id_tables = [t for t in ID_SOURCES if t in tables and "customer_id" in tables[t].columns]
        if id_tables:
            con.execute(_customer_sql(id_tables, set(tables), as_of))
    finally:
        con.close()
    tmp.replace(path)
    return path


def _write_kept(con: duckdb.DuckDBPyConnection, name: str, validated: Validated) -> None:
    """Table `name` from the validated rows: straight from the source file when validated in DuckDB, else from the
    kept frame."""
    if validated.kept_sql is not None:
        kept = np.ones(validated.rows_read, dtype=bool)
        kept[validated.rejected_positions] = False
        con.register("kept_rows", pa.table({KEEP: kept}))  # read only when the query joins it (many rejected rows)
        con.execute(f"CREATE TABLE {name} AS {validated.kept_sql}")
        con.unregister("kept_rows")
        return
    con.register("frame_view", _row_batches(validated.kept))
    con.execute(f"CREATE TABLE {name} AS SELECT * FROM frame_view")
    con.unregister("frame_view")


def _row_batches(frame: pd.DataFrame) -> pa.RecordBatchReader | pd.DataFrame:
    """The frame as a stream of Arrow batches of DuckDB's row-group size, which DuckDB copies into a table about a
    fifth faster than it scans the pandas frame (the text columns are Arrow already; NaN and NaT become NULL as in
    the pandas scan). A frame with object or categorical columns stays pandas, typed by DuckDB as it always was."""
    if any(dtype == object or isinstance(dtype, pd.CategoricalDtype) for dtype in frame.dtypes):
        return frame
    table = pa.Table.from_pandas(frame, preserve_index=False)
    batches = (batch for start in range(0, table.num_rows, ROW_GROUP_ROWS)
               for batch in table.slice(start, ROW_GROUP_ROWS).combine_chunks().to_batches())
    return pa.RecordBatchReader.from_batches(table.schema, batches)


def silos(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Customers by the combination of sources they appear in (the 'silos' view), largest first."""
    if not has_table(con, "customer"):
        return pd.DataFrame(columns=["sources", "customers", "share"])
    flags = [c for c in con.execute("DESCRIBE customer").df()["column_name"] if c.startswith("in_")]
    if not flags:
        return pd.DataFrame(columns=["sources", "customers", "share"])
    label = " || ".join(f"CASE WHEN {f} THEN '{f[3:]} + ' ELSE '' END" for f in flags)
    frame = con.execute(f"""
        SELECT rtrim({label}, ' + ') AS sources, COUNT(*) AS customers
        FROM customer GROUP BY 1 ORDER BY customers DESC""").df()
    frame["share"] = frame["customers"] / frame["customers"].sum()
    return frame


def source_coverage(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Customers found in each source, and in each source AND the transactions (the join the models rely on)."""
    if not has_table(con, "customer"):
        return pd.DataFrame(columns=["source", "customers", "share_of_all"])
    flags = [c for c in con.execute("DESCRIBE customer").df()["column_name"] if c.startswith("in_")]
    total = con.execute("SELECT COUNT(*) FROM customer").fetchone()[0]
    rows = []
    for f in flags:
        n = con.execute(f"SELECT COUNT(*) FROM customer WHERE {f}").fetchone()[0]
        row = {"source": f[3:], "customers": n, "share_of_all": n / total if total else 0.0}
        if "in_transactions" in flags:
            row["with_transactions"] = con.execute(
                f"SELECT COUNT(*) FROM customer WHERE {f} AND in_transactions").fetchone()[0]
        rows.append(row)
    return pd.DataFrame(rows)


DATE_COLUMNS = {"transactions": "order_date", "customers": "signup_date", "loyalty": "loyalty_join_date",
                "campaigns": "start_date", "contacts": "contact_date"}


def date_coverage(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """First and last date, and rows per month, for every table that has a date column."""
    tables = set(con.execute("SHOW TABLES").df()["name"])
    rows = []
    for table, col in DATE_COLUMNS.items():
        if table not in tables or col not in set(con.execute(f"DESCRIBE {table}").df()["column_name"]):
            continue
        first, last, n, missing = con.execute(
            f"SELECT MIN({col}), MAX({col}), COUNT({col}), COUNT(*) - COUNT({col}) FROM {table}").fetchone()
        months = con.execute(f"SELECT COUNT(DISTINCT date_trunc('month', {col})) FROM {table}").fetchone()[0]
        rows.append({"table": table, "column": col, "first": first, "last": last, "rows_with_date": n,
                     "rows_without_date": missing, "months": months})
    return pd.DataFrame(rows)


def monthly_activity(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Orders, customers and net revenue per month (gaps and spikes show up here)."""
    if not has_table(con, "transactions"):
        return pd.DataFrame(columns=["month", "orders", "customers", "net_revenue", "return_lines"])
    return con.execute("""
        SELECT date_trunc('month', order_date) AS month, COUNT(DISTINCT order_id) AS orders,
               COUNT(DISTINCT customer_id) AS customers, SUM(amount) AS net_revenue,
               SUM(CASE WHEN is_return THEN 1 ELSE 0 END) AS return_lines
        FROM transactions GROUP BY 1 ORDER BY 1""").df()


def plot_monthly_activity(activity: pd.DataFrame) -> Figure:
    """Net revenue and active customers per month, one chart for the coverage section."""
    fig, ax = plt.subplots(figsize=(10, 4))
    if activity.empty:
        ax.set_title("No transactions supplied: this run can only measure campaigns")
        ax.axis("off")
        return fig
    ax.bar(activity["month"], activity["net_revenue"], width=20, align="edge", color="#4C72B0", label="net revenue")
    ax.set_ylabel("Net revenue per month")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax2 = ax.twinx()
    ax2.grid(False)
    ax2.plot(activity["month"] + pd.Timedelta(days=10), activity["customers"], color="#DD8452", marker="o", ms=3,
             label="active customers")
    ax2.set_ylabel("Active customers per month")
    ax.set_title("Transactions cover every month of the period without gaps" if _no_gaps(activity)
                 else "Some months have no transactions: check the extract before trusting trends")
    fig.legend(loc="upper left", bbox_to_anchor=(0.07, 0.88))
    fig.tight_layout()
    return fig


def _no_gaps(activity: pd.DataFrame) -> bool:
    months = pd.to_datetime(activity["month"])
    if len(months) < 2:
        return True
    expected = (months.max().year - months.min().year) * 12 + months.max().month - months.min().month + 1
    return expected == len(months)


def anomalies(con: duckdb.DuckDBPyConnection, as_of: date) -> pd.DataFrame:
    """Obvious anomalies in the raw transactions, each with a count and an example, so nobody is surprised later."""
    checks = {
        "zero-value lines": "amount = 0",
        "return lines (negative amount or quantity)": "is_return",
        "lines above 100x the median line value": "amount > 100 * (SELECT median(amount) FROM transactions "
                                                  "WHERE amount > 0)",
        "orders dated on or after as_of": f"order_date >= DATE '{as_of.isoformat()}'",
        # distinct orders are counted only on customer-days with over 50 lines (a cheap count that is never less),
        # and those only among customers with over 50 lines in all (at 1M customers, 20M lines: 2.2 -> 1.4 s CPU)
        "customers with over 50 orders on one day": "customer_id IN (SELECT t.customer_id FROM transactions t "
                                                    "SEMI JOIN (SELECT customer_id, CAST(order_date AS DATE) AS day "
                                                    "FROM transactions WHERE customer_id IN (SELECT customer_id "
                                                    "FROM transactions GROUP BY 1 HAVING COUNT(*) > 50) "
                                                    "GROUP BY 1, 2 HAVING COUNT(*) > 50) busy "
                                                    "ON t.customer_id IS NOT DISTINCT FROM busy.customer_id "
                                                    "AND CAST(t.order_date AS DATE) IS NOT DISTINCT FROM busy.day "
                                                    "GROUP BY t.customer_id, CAST(t.order_date AS DATE) "
                                                    "HAVING COUNT(DISTINCT t.order_id) > 50)",
    }
    rows: list[dict] = []
    if not has_table(con, "transactions"):
        return pd.DataFrame(rows, columns=["check", "rows", "example_order_id"])
    for label, where in checks.items():
        n, example = con.execute(
            f"SELECT COUNT(*), ANY_VALUE(order_id) FROM transactions WHERE {where}").fetchone()
        rows.append({"check": label, "rows": n, "example_order_id": example})
    return pd.DataFrame(rows)


def read_table(con: duckdb.DuckDBPyConnection, name: str) -> pd.DataFrame:
    """A table of the database as a pandas frame (text fetched through Arrow, see `cvm.engine.fetch`)."""
    return fetch(con.table(name))


def has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether the database holds a table of that name."""
    return name in set(con.execute("SHOW TABLES").df()["name"])


def quality_sentence(report: pd.DataFrame) -> str:
    """One plain sentence on what was read and rejected."""
    per_table = report.drop_duplicates("table")
    read, kept = int(per_table["rows_read"].sum()), int(per_table["rows_kept"].sum())
    worst = report[report["rows"] > 0].sort_values("rows", ascending=False).head(1)
    text = (f"{read:,} rows were read from {len(per_table)} source(s); {kept:,} ({kept / read:.1%}) passed the "
            f"checks and feed the analysis.")
    if len(worst):
        w = worst.iloc[0]
        text += (f" The largest rejection is '{w['reason']}' in {w['table']} ({int(w['rows']):,} rows): "
                 "every rejected row is kept in the table `rejected_rows` for the client to correct.")
    return text


def silos_sentence(frame: pd.DataFrame) -> str:
    """One sentence on how well the sources join."""
    if frame.empty:
        return "No source carries a customer id, so there is no single customer view (anonymised data)."
    top = frame.iloc[0]
    return (f"{int(frame['customers'].sum()):,} distinct customers in all; the largest group ({top['share']:.0%}) "
            f"appears in: {top['sources']}. Customers missing from a source cannot be analysed on what that source "
            "holds (e.g. CRM customers without transactions have no purchase history).")


def anomalies_sentence(frame: pd.DataFrame) -> str:
    """One sentence on the anomalies found."""
    found = frame[frame["rows"] > 0]
    if found.empty:
        return "No obvious anomaly in the transactions."
    return "Worth a look before modelling: " + "; ".join(
        f"{r['check']} ({int(r['rows']):,})" for _, r in found.iterrows()) + "."


def data_summary(tables: dict[str, Validated], con: duckdb.DuckDBPyConnection) -> dict:
    """Key figures of the data step, for summary.json."""
    out: dict = {"tables": {}}
    for name, v in tables.items():
        entry = {"rows_read": v.rows_read, "rows_kept": v.n_kept, "rows_rejected": len(v.rejected),
                 "rejected_by_reason": v.reasons, "values_set_missing": v.coerced, **v.flagged}
        if name == "transactions":
            returns, customers, first, last = con.execute(
                "SELECT COUNT(*) FILTER (WHERE is_return), COUNT(DISTINCT customer_id), MIN(order_date), "
                "MAX(order_date) FROM transactions").fetchone()
            entry.update(return_rows=int(returns), customers=int(customers), first_date=pd.Timestamp(first),
                         last_date=pd.Timestamp(last))
        out["tables"][name] = entry
    if has_table(con, "customer"):
        out["n_customers"] = con.execute("SELECT COUNT(*) FROM customer").fetchone()[0]
        out["silos"] = {r["sources"]: int(r["customers"]) for _, r in silos(con).iterrows()}
    return out


def export_parquet(con: duckdb.DuckDBPyConnection, out_dir: str | Path, tables: list[str]) -> list[Path]:
    """Copy database tables to `<out_dir>/<table>.parquet` (those that exist) for tools that read files."""
    written = []
    for name in tables:
        if has_table(con, name):
            path = Path(out_dir) / f"{name}.parquet"
            con.execute(f"COPY {name} TO '{path}' (FORMAT parquet)")
            written.append(path)
    return written


def write_table(con: duckdb.DuckDBPyConnection, name: str, frame: pd.DataFrame, out_dir: str | Path,
                file: str | None = None) -> Path:
    """A step's output as table `name` of the run database (replaced) and as `<out_dir>/<file or name>.parquet`."""
    clean = frame.copy()
    for col in clean.columns:
        if clean[col].dtype == object:
            clean[col] = clean[col].astype("string")
    table = pa.Table.from_pandas(clean, preserve_index=False)  # converted once for both writes (what to_parquet does)
    con.register("_output_frame", table)
    con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM _output_frame")
    con.unregister("_output_frame")
    path = Path(out_dir) / f"{file or name}.parquet"
    pq.write_table(table, path)
    return path
