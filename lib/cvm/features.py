"""Per-customer features from the transactions table, aggregated in DuckDB or Spark (`cvm.engine`).

All SQL lives in the `SQL` dict below and uses only SELECT / GROUP BY / JOIN / CASE / CAST / date literals and
`min_by`, so the same strings run on DuckDB and on Spark SQL: every function takes a DuckDB connection or a
`cvm.engine.Engine`. Date differences are taken in pandas (vectorised) because DuckDB and Spark spell `datediff`
differently; string literals avoid backslashes, which Spark reads as escapes.

Definitions (the notebook and the CLV model rely on them):

* a *line* is one row of the table; a *return line* has amount < 0;
* an *order* is a distinct (customer_id, order_id); a *purchase order* has net amount >= 0 and at least one
  non-return line;
* a *purchase day* is a calendar day whose net amount is >= 0 and that has at least one non-return line. Zero-value
  purchases count (in CDNOW 8 customers whose only purchase is $0 are in the published summaries); a day with only
  returns does not;
* recency_days, tenure_days, ``T`` are measured to end = ``calibration_end`` when given, else ``as_of``;
* ``x`` = purchase days - 1 (repeat purchase occasions), ``t_x`` = last - first purchase day, ``T`` = end - first
  purchase day, all in ``time_unit`` (D = 1 day, W = 7 days, M = 365.25 / 12 days);
* ``mean_repeat_value`` = mean net value of the repeat purchase days (first purchase day excluded), NaN when x = 0;
  with btyd_basis "orders", of the repeat purchase orders (of orders sharing the first timestamp, the smallest
  order_id is the first).

Customers whose only rows in the window are returns keep a row with n_orders = 0 and NaN BTYD fields.
"""
from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Literal

import duckdb
import numpy as np
import pandas as pd

from cvm.engine import Engine, as_engine
from cvm.errors import InputError

#: Length of one time unit in days.
TIME_UNIT_DAYS: dict[str, float] = {"D": 1.0, "W": 7.0, "M": 365.25 / 12}

REQUIRED = ("customer_id", "order_id", "order_date", "amount")
#: The purchase-history summary of a `customer_features` frame that later steps rebuild the days-basis features from
#: (`days_basis_features`); the knowledge step keeps it in the run database (`cvm.knowledge.save_purchase_history`).
HISTORY_COLUMNS = ("customer_id", "first_purchase", "last_purchase", "n_purchase_days", "n_orders", "monetary_total")

#: Every SQL statement of the module. Placeholders: {table}, {end}, {start_filter}, {extra_line_cols}, {lines},
#: {extra_aggs}, {first_order}, {first_order_value}, {first_order_join}, {col}, {cal_end}, {limit}.
SQL: dict[str, str] = {
    "lines": """
        SELECT customer_id, order_id, CAST(order_date AS DATE) AS d, CAST(order_date AS TIMESTAMP) AS ts,
               CAST(amount AS DOUBLE) AS amount{extra_line_cols}
        FROM {table}
        WHERE CAST(order_date AS DATE) <= DATE '{end}'{start_filter}""",
    "features": """
        WITH lines AS ({lines}),
        orders AS (
            SELECT customer_id, order_id, MIN(ts) AS ts, SUM(amount) AS net,
                   MAX(CASE WHEN amount >= 0 THEN 1 ELSE 0 END) AS has_buy
            FROM lines GROUP BY customer_id, order_id),
        porders AS (SELECT customer_id, order_id, ts, net FROM orders WHERE net >= 0 AND has_buy = 1),
        days AS (
            SELECT customer_id, d, SUM(amount) AS net, MAX(CASE WHEN amount >= 0 THEN 1 ELSE 0 END) AS has_buy
            FROM lines GROUP BY customer_id, d),
        pdays AS (SELECT customer_id, d, net FROM days WHERE net >= 0 AND has_buy = 1),
        line_agg AS (
            SELECT customer_id,
                   SUM(amount) AS monetary_total,
                   SUM(CASE WHEN amount > 0 THEN amount ELSE 0 END) AS gross,
                   SUM(CASE WHEN amount < 0 THEN -amount ELSE 0 END) AS returned,
                   SUM(CASE WHEN amount < 0 THEN 1 ELSE 0 END) AS n_return_lines{extra_aggs}
            FROM lines GROUP BY customer_id),
        order_agg AS (
            SELECT customer_id, COUNT(*) AS n_orders, MIN(ts) AS first_order_ts, MAX(ts) AS last_order_ts,
                   SUM(net) AS purchase_order_value
            FROM porders GROUP BY customer_id),
        day_agg AS (
            SELECT customer_id, COUNT(*) AS n_purchase_days, MIN(d) AS first_purchase, MAX(d) AS last_purchase,
                   SUM(net) AS purchase_day_value, min_by(net, d) AS first_day_value
            FROM pdays GROUP BY customer_id){first_order}
        SELECT l.*, o.n_orders, o.first_order_ts, o.last_order_ts, o.purchase_order_value, {first_order_value},
               p.n_purchase_days, p.first_purchase, p.last_purchase, p.purchase_day_value,
               p.first_day_value
        FROM line_agg l
        LEFT JOIN order_agg o ON l.customer_id = o.customer_id{first_order_join}
        LEFT JOIN day_agg p ON l.customer_id = p.customer_id""",
    # the value of each customer's first purchase order: only the orders basis reads it (mean_repeat_value)
    "first_order": """,
        first_order AS (
            SELECT p.customer_id, min_by(p.net, COALESCE(CAST(p.order_id AS STRING), '')) AS first_order_value
            FROM porders p JOIN order_agg f ON p.customer_id = f.customer_id AND p.ts = f.first_order_ts
            GROUP BY p.customer_id)""",
    "top_values": """
        SELECT CAST({col} AS STRING) AS v, SUM(CASE WHEN amount > 0 THEN amount ELSE 0 END) AS value
        FROM ({lines}) t WHERE {col} IS NOT NULL
        GROUP BY CAST({col} AS STRING) ORDER BY value DESC, v LIMIT {limit}""",
    "holdout": """
        WITH lines AS ({lines}),
        days AS (
            SELECT customer_id, hd, SUM(amount) AS net, MAX(CASE WHEN amount >= 0 THEN 1 ELSE 0 END) AS has_buy
            FROM (SELECT customer_id, CASE WHEN d > DATE '{cal_end}' THEN d END AS hd, amount FROM lines) t
            GROUP BY customer_id, hd)
        SELECT customer_id,
               SUM(CASE WHEN hd IS NOT NULL AND net >= 0 AND has_buy = 1 THEN 1 ELSE 0 END) AS holdout_purchases
        FROM days GROUP BY customer_id""",
    "daily_counts": """
        WITH lines AS ({lines}),
        days AS (
            SELECT customer_id, d FROM lines GROUP BY customer_id, d
            HAVING SUM(amount) >= 0 AND MAX(CASE WHEN amount >= 0 THEN 1 ELSE 0 END) = 1),
        firsts AS (SELECT customer_id, MIN(d) AS first_d FROM days GROUP BY customer_id)
        SELECT s.d AS day,
               SUM(CASE WHEN s.d = f.first_d THEN 1 ELSE 0 END) AS n_first,
               SUM(CASE WHEN s.d > f.first_d THEN 1 ELSE 0 END) AS n_repeat
        FROM days s JOIN firsts f ON s.customer_id = f.customer_id
        WHERE f.first_d <= DATE '{cal_end}'
        GROUP BY s.d ORDER BY s.d""",
}


def _to_date(value: str | date, what: str) -> date:
    try:
        return pd.Timestamp(value).date()
    except (ValueError, TypeError) as exc:
        raise InputError(f"{what}: '{value}' is not a date; use YYYY-MM-DD.") from exc


def table_columns(con: duckdb.DuckDBPyConnection | Engine, table: str) -> list[str]:
    """The columns of a transactions table or view, checked: a plain name, present, with the contract columns."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", table):
        raise InputError(f"table name '{table}' is not a plain identifier; register the data as a view first.")
    cols = as_engine(con).columns(table)
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise InputError(f"table '{table}': missing required column(s) {missing}; map them in the source config "
                         f"(contract: {', '.join(REQUIRED)}).")
    return cols


def _lines_sql(table: str, end: date, start: date | None, extra: list[str]) -> str:
    start_filter = f" AND CAST(order_date AS DATE) > DATE '{start.isoformat()}'" if start else ""
    extra_line_cols = "".join(f", {c}" for c in extra)
    return SQL["lines"].format(table=table, end=end.isoformat(), start_filter=start_filter,
                               extra_line_cols=extra_line_cols)


def _slug(value: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", value.lower()).strip("_") or "blank"


def _quote(value: str) -> str:
    """A string literal both dialects read the same: quotes doubled, backslashes (an escape in Spark) as CHR(92)."""
    parts = ["'" + part.replace("'", "''") + "'" for part in value.split("\\")]
    return parts[0] if len(parts) == 1 else "CONCAT(" + ", CHR(92), ".join(parts) + ")"


def _share_aggs(con: Engine, lines: str, col: str, top: int) -> tuple[str, list[str]]:
    """SQL aggregates for the positive-value share of the top `top` values of `col`, plus an 'other' share."""
    if top <= 0:
        return "", []
    values = con.query(SQL["top_values"].format(col=col, lines=lines, limit=top))["v"].tolist()
    aggs, names = [], []
    for v in values:
        name = f"{col}_share_{_slug(v)}"
        if name in names:
            continue
        names.append(name)
        aggs.append(f"SUM(CASE WHEN amount > 0 AND CAST({col} AS STRING) = {_quote(v)} THEN amount ELSE 0 END) "
                    f"AS {name}")
    return "".join(",\n                   " + a for a in aggs), names


def _features_sql(lines: str, extra_aggs: str, btyd_basis: str) -> str:
    """The features query; the first order's value (a join and a grouping of the purchase orders) only for the orders
    basis, NULL for the days basis, which does not read it (200k customers, one thread: the churn calibration frame
    0.99 -> 0.91 s CPU, the features with shares 1.96 -> 1.83 s)."""
    if btyd_basis == "orders":
        join = "\n        LEFT JOIN first_order fo ON l.customer_id = fo.customer_id"
        return SQL["features"].format(lines=lines, extra_aggs=extra_aggs, first_order=SQL["first_order"],
                                      first_order_value="fo.first_order_value", first_order_join=join)
    return SQL["features"].format(lines=lines, extra_aggs=extra_aggs, first_order="",
                                  first_order_value="CAST(NULL AS DOUBLE) AS first_order_value", first_order_join="")


def customer_features(
    con: duckdb.DuckDBPyConnection | Engine,
    as_of: str | date,
    table: str = "transactions",
    lookback_days: int | None = None,
    frequency_basis: Literal["orders", "days"] = "orders",
    time_unit: Literal["D", "W", "M"] = "W",
    calibration_end: str | None = None,
    top_categories: int = 8,
    btyd_basis: Literal["days", "orders"] = "days",
) -> pd.DataFrame:
    """One row per customer with RFM, returns, discount, category/channel shares and the BTYD summary (x, t_x, T).

    Rows with order_date <= end are used, end = calibration_end when given (T is then measured to it) else as_of;
    `lookback_days` keeps only (end - lookback_days, end]. recency_days and tenure_days are measured to end too, so a
    calibration frame describes the customer as seen on calibration_end.

    `btyd_basis` chooses what a purchase occasion is for x, t_x, T and mean_repeat_value: "days" (distinct purchase
    days, dates only: CDNOW and most retail extracts) or "orders" (purchase orders at their timestamps, with T
    measured to the end of the end day: for data with real order times, where several orders can share a day).
    `con` is a DuckDB connection or a `cvm.engine.Engine` (e.g. Spark); both give the same table.
    """
    if btyd_basis not in ("orders", "days"):
        raise InputError(f"btyd_basis must be 'orders' or 'days', got '{btyd_basis}'.")
    if frequency_basis not in ("orders", "days"):
        raise InputError(f"frequency_basis must be 'orders' or 'days', got '{frequency_basis}'.")
    if time_unit not in TIME_UNIT_DAYS:
        raise InputError(f"time_unit must be one of {list(TIME_UNIT_DAYS)}, got '{time_unit}'.")
    as_of_d = _to_date(as_of, "as_of")
    end = _to_date(calibration_end, "calibration_end") if calibration_end is not None else as_of_d
    if end > as_of_d:
        raise InputError(f"calibration_end {end} is after as_of {as_of_d}; it must be on or before it.")
    if lookback_days is not None and lookback_days <= 0:
        raise InputError(f"lookback_days must be positive or None, got {lookback_days}.")
    start = end - timedelta(days=lookback_days) if lookback_days else None
    con = as_engine(con)
    cols = table_columns(con, table)
    extra = [c for c in ("discount", "category", "channel") if c in cols]
    lines = _lines_sql(table, end, start, extra)

    extra_aggs, share_cols = "", []
    if "discount" in cols:
        extra_aggs += (",\n                   SUM(CASE WHEN amount > 0 THEN COALESCE(CAST(discount AS DOUBLE), 0) "
                       "ELSE 0 END) AS discount_value")
    for col in ("category", "channel"):
        if col in cols:
            aggs, names = _share_aggs(con, lines, col, top_categories)
            extra_aggs += aggs
            share_cols += names
    df = con.query(_features_sql(lines, extra_aggs, btyd_basis))
    if df.empty:
        raise InputError(f"table '{table}': no rows with order_date <= {end}"
                         f"{f' and after {start}' if start else ''}; check as_of / lookback_days.")
    return _finish(df, end, frequency_basis, time_unit, share_cols, "category" in cols, "channel" in cols,
                   btyd_basis)


def _finish(df: pd.DataFrame, end: date, basis: str, unit: str, share_cols: list[str],
            has_category: bool, has_channel: bool, btyd_basis: str = "days") -> pd.DataFrame:
    """Derived columns, vectorised: date differences, rates, shares and compact dtypes."""
    out = pd.DataFrame({"customer_id": df["customer_id"]})
    first = pd.to_datetime(df["first_purchase"])
    last = pd.to_datetime(df["last_purchase"])
    out["first_purchase"] = first
    out["last_purchase"] = last
    out["n_orders"] = df["n_orders"].fillna(0).astype("int32")
    out["n_purchase_days"] = df["n_purchase_days"].fillna(0).astype("int32")
    day = np.timedelta64(1, "D")
    out["recency_days"], out["tenure_days"] = _ages(first, last, end)
    out["frequency"] = out["n_orders"] if basis == "orders" else out["n_purchase_days"]
    gross = df["gross"].to_numpy(dtype=float)
    out["monetary_total"] = df["monetary_total"].astype("float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        out["monetary_mean"] = _per_order(out["monetary_total"], out["n_orders"])
        out["n_return_lines"] = df["n_return_lines"].astype("int32")
        out["return_rate"] = np.where(gross > 0, df["returned"] / gross, np.nan).astype("float32")
        if "discount_value" in df:
            list_value = gross + df["discount_value"].to_numpy(dtype=float)
            out["discount_share"] = np.where(list_value > 0, df["discount_value"] / list_value, np.nan
                                             ).astype("float32")
        else:
            out["discount_share"] = np.float32(np.nan)
        for col, present in (("category", has_category), ("channel", has_channel)):
            if not present:
                continue
            names = [c for c in share_cols if c.startswith(f"{col}_share_")]
            for name in names:
                out[name] = np.where(gross > 0, df[name] / gross, np.nan).astype("float32")
            other = 1.0 - out[names].sum(axis=1, min_count=1) if names else pd.Series(1.0, index=out.index)
            out[f"{col}_share_other"] = np.where(gross > 0, other.clip(lower=0), np.nan).astype("float32")
        unit_days = TIME_UNIT_DAYS[unit]
        if btyd_basis == "orders":
            first_t, last_t = pd.to_datetime(df["first_order_ts"]), pd.to_datetime(df["last_order_ts"])
            x = (out["n_orders"] - 1).where(out["n_orders"] > 0)
            out["t_x"] = (last_t - first_t) / day / unit_days
            out["T"] = (pd.Timestamp(end) + pd.Timedelta(days=1) - first_t) / day / unit_days
            repeat_value = (df["purchase_order_value"] - df["first_order_value"]) / x.where(x > 0)
        else:
            x, out["t_x"], out["T"] = _days_btyd(first, last, out["n_purchase_days"], end, unit_days)
            repeat_value = (df["purchase_day_value"] - df["first_day_value"]) / x.where(x > 0)
        out["x"] = x.astype("float64")
        out["mean_repeat_value"] = repeat_value.astype("float64")
    return out.sort_values("customer_id", kind="stable").reset_index(drop=True)


def _ages(first: pd.Series, last: pd.Series, end: date) -> tuple[pd.Series, pd.Series]:
    """recency_days and tenure_days (float32) at end."""
    day = np.timedelta64(1, "D")
    return ((pd.Timestamp(end) - last) / day).astype("float32"), ((pd.Timestamp(end) - first) / day).astype("float32")


def _per_order(total: pd.Series, n_orders: pd.Series) -> np.ndarray:
    """Net value per purchase order, NaN without one."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_orders > 0, total / n_orders, np.nan)


def _days_btyd(first: pd.Series, last: pd.Series, n_days: pd.Series, end: date, unit_days: float
               ) -> tuple[pd.Series, pd.Series, pd.Series]:
    """x (NaN without a purchase day), t_x and T of the days basis, in units of `unit_days`."""
    day = np.timedelta64(1, "D")
    return ((n_days - 1).where(n_days > 0), (last - first) / day / unit_days,
            (pd.Timestamp(end) - first) / day / unit_days)


def days_basis_features(history: pd.DataFrame, end: str | date, time_unit: str = "W") -> pd.DataFrame:
    """customer_id, n_purchase_days, recency_days, tenure_days, monetary_mean, x, t_x and T of the days basis at end,
    from a purchase-history summary (the HISTORY_COLUMNS of a `customer_features` frame of the same end): equal to
    those columns of `customer_features(..., btyd_basis="days", time_unit=time_unit)`, without reading the lines."""
    missing = [c for c in HISTORY_COLUMNS if c not in history.columns]
    if missing:
        raise InputError(f"purchase history: column(s) {missing} missing; re-run the knowledge step.")
    if time_unit not in TIME_UNIT_DAYS:
        raise InputError(f"time_unit must be one of {list(TIME_UNIT_DAYS)}, got '{time_unit}'.")
    end_d = _to_date(end, "as_of")
    first, last = pd.to_datetime(history["first_purchase"]), pd.to_datetime(history["last_purchase"])
    n_days = history["n_purchase_days"].astype("int32")
    out = pd.DataFrame({"customer_id": history["customer_id"], "n_purchase_days": n_days})
    out["recency_days"], out["tenure_days"] = _ages(first, last, end_d)
    out["monetary_mean"] = _per_order(history["monetary_total"].astype("float64"), history["n_orders"].astype("int32"))
    x, out["t_x"], out["T"] = _days_btyd(first, last, n_days, end_d, TIME_UNIT_DAYS[time_unit])
    out["x"] = x.astype("float64")
    return out


def holdout_purchases(con: duckdb.DuckDBPyConnection | Engine, calibration_end: str | date, as_of: str | date,
                      table: str = "transactions") -> pd.DataFrame:
    """customer_id, holdout_purchases: purchase days in (calibration_end, as_of], 0 for customers with none.

    The days up to calibration_end fall into one group per customer, so only the holdout's days are grouped one by
    one (200k customers, 4M lines: 0.48 -> 0.29 s CPU)."""
    cal = _to_date(calibration_end, "calibration_end")
    end = _to_date(as_of, "as_of")
    if cal >= end:
        raise InputError(f"calibration_end {cal} must be before as_of {end}.")
    table_columns(con, table)
    lines = _lines_sql(table, end, None, [])
    df = as_engine(con).query(SQL["holdout"].format(lines=lines, cal_end=cal.isoformat()))
    df["holdout_purchases"] = df["holdout_purchases"].fillna(0).astype("int32")
    return df.sort_values("customer_id", kind="stable").reset_index(drop=True)


def daily_purchase_counts(con: duckdb.DuckDBPyConnection | Engine, calibration_end: str | date, as_of: str | date,
                          table: str = "transactions") -> pd.DataFrame:
    """day, n_first, n_repeat: first and repeat purchase days per calendar day up to as_of, for the customers whose
    first purchase is on or before calibration_end (the input of `cvm.clv.cumulative_tracking`)."""
    cal = _to_date(calibration_end, "calibration_end")
    end = _to_date(as_of, "as_of")
    table_columns(con, table)
    lines = _lines_sql(table, end, None, [])
    df = as_engine(con).query(SQL["daily_counts"].format(lines=lines, cal_end=cal.isoformat()))
    df["day"] = pd.to_datetime(df["day"])
    return df.astype({"n_first": "int64", "n_repeat": "int64"})
