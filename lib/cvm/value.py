"""The customer base and where its value sits: base KPIs, Pareto concentration, cohort retention and LTV/CAC.

Counting follows `cvm.features`: a *purchase order* is a (customer_id, order_id) with net amount >= 0 and at least one
non-return line; a *purchase day* is a calendar day with net amount >= 0 and at least one non-return line. All
aggregation over transactions runs in DuckDB; a pandas transactions frame is registered on a private connection.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any, Literal

import duckdb
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from cvm.engine import fetch
from cvm.errors import InputError
from cvm.features import table_columns
from cvm.keys import key_positions, rows_at

#: Days per month used for "months since acquisition".
MONTH_DAYS = 365.25 / 12
#: DuckDB date_trunc / date_diff unit and the interval of one period, per `period` code.
PERIODS: dict[str, tuple[str, str]] = {"W": ("week", "to_days(7 * {n})"), "M": ("month", "to_months({n})"),
                                       "Q": ("quarter", "to_months(3 * {n})")}

SQL: dict[str, str] = {
    "lines": """
        SELECT customer_id, order_id, CAST(order_date AS DATE) AS d, CAST(amount AS DOUBLE) AS amount
        FROM {table} WHERE CAST(order_date AS DATE) <= DATE '{as_of}' AND customer_id IS NOT NULL""",
    "kpis": """
        WITH lines AS NOT MATERIALIZED ({lines}),
        totals AS (  -- the distinct count in a subquery runs as a parallel grouping (200k customers: 0.75 -> 0.5 s CPU)
            SELECT (SELECT COUNT(*) FROM (SELECT DISTINCT customer_id FROM lines WHERE amount >= 0))
                       AS customers_to_date,
                   COALESCE(SUM(amount) FILTER (WHERE d > DATE '{start}'), 0) AS revenue,
                   COALESCE(SUM(amount) FILTER (WHERE d > DATE '{start}' AND amount > 0), 0) AS gross_revenue,
                   COALESCE(-SUM(amount) FILTER (WHERE d > DATE '{start}' AND amount < 0), 0) AS returns
            FROM lines),
        orders AS (
            SELECT customer_id, order_id, SUM(amount) AS net, MAX(CASE WHEN amount >= 0 THEN 1 ELSE 0 END) AS has_buy
            FROM lines WHERE d > DATE '{start}' GROUP BY customer_id, order_id),
        buys AS (
            SELECT COUNT(DISTINCT customer_id) AS active_customers, COUNT(*) AS orders,
                   COALESCE(SUM(net), 0) AS order_value
            FROM orders WHERE net >= 0 AND has_buy = 1)
        SELECT customers_to_date, active_customers, orders, order_value, revenue, gross_revenue, returns
        FROM totals, buys""",
    "days": """
        SELECT customer_id, d FROM ({lines}) GROUP BY customer_id, d
        HAVING SUM(amount) >= 0 AND MAX(CASE WHEN amount >= 0 THEN 1 ELSE 0 END) = 1""",
    "cohorts": """
        WITH days AS ({days}),
        act AS (SELECT DISTINCT customer_id, CAST(date_trunc('{unit}', d) AS DATE) AS p FROM days),
        firsts AS (SELECT customer_id, MIN(p) AS cohort FROM act GROUP BY customer_id),
        sizes AS (SELECT cohort, COUNT(*) AS cohort_size FROM firsts GROUP BY cohort),
        grid AS (
            SELECT cohort, cohort_size,
                   UNNEST(range(0, date_diff('{unit}', cohort, CAST(date_trunc('{unit}', DATE '{as_of}') AS DATE))
                                   + 1)) AS periods_since
            FROM sizes),
        cells AS (
            SELECT f.cohort, date_diff('{unit}', f.cohort, a.p) AS periods_since, COUNT(*) AS active
            FROM act a JOIN firsts f ON a.customer_id = f.customer_id GROUP BY ALL)
        SELECT g.cohort, CAST(g.periods_since AS INTEGER) AS periods_since, g.cohort_size,
               COALESCE(c.active, 0) AS active,
               g.cohort + {interval_next} - INTERVAL 1 DAY <= DATE '{as_of}' AS complete
        FROM grid g LEFT JOIN cells c ON g.cohort = c.cohort AND g.periods_since = c.periods_since
        ORDER BY g.cohort, g.periods_since""",
    "acquired_revenue": """
        WITH lines AS ({lines}),
        rev AS (
            SELECT a.pos, a.g, a.obs_months, l.amount,
                   LEAST(GREATEST(CAST(FLOOR(date_diff('day', a.acq_date, l.d) / {month_days}) AS INTEGER), 0),
                         a.obs_months) AS m
            FROM acq_view a JOIN lines l ON a.customer_id = l.customer_id)
        SELECT pos, g, m, obs_months, SUM(amount) AS net
        FROM rev GROUP BY GROUPING SETS ((pos), (g, m), (g, obs_months))""",
}


# ---------------------------------------------------------------------------------------------------- helpers


def _to_date(value: str | date, what: str) -> date:
    try:
        return pd.Timestamp(value).date()
    except (ValueError, TypeError) as exc:
        raise InputError(f"{what}: '{value}' is not a date; use YYYY-MM-DD.") from exc


def _connection(source: duckdb.DuckDBPyConnection | pd.DataFrame, table: str) -> duckdb.DuckDBPyConnection:
    """The source as a DuckDB connection holding `table` with the contract columns."""
    if isinstance(source, pd.DataFrame):
        con = duckdb.connect()
        con.register(table, source)
    else:
        con = source
    table_columns(con, table)
    return con


def _lines(table: str, as_of: date) -> str:
    return SQL["lines"].format(table=table, as_of=as_of.isoformat())


def days_sql(table: str, as_of: date, days: str | None) -> str:
    """The purchase days (customer_id, d) up to as_of: read from table `days` (made by `purchase_days` for the same
    as_of) or grouped from the transactions."""
    return f"SELECT customer_id, d FROM {days}" if days else SQL["days"].format(lines=_lines(table, as_of))


def purchase_days(con: duckdb.DuckDBPyConnection, as_of: str | date, table: str = "transactions",
                  name: str = "purchase_days") -> str:
    """Group the transactions into purchase days up to as_of once, as temporary table `name` (returned), for
    `cohort_retention` and `cvm.lifecycle.lifecycle_inputs` to share (200k customers: 1.8 -> 1.2 s CPU for both)."""
    end = _to_date(as_of, "as_of")
    con = _connection(con, table)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {days_sql(table, end, None)}")
    return name


# ---------------------------------------------------------------------------------------------------- base KPIs


def base_kpis(source: duckdb.DuckDBPyConnection | pd.DataFrame, as_of: str | date, active_days: int = 365,
              table: str = "transactions") -> dict[str, Any]:
    """Headline figures of the base over the window (as_of - active_days, as_of].

    active_customers made at least one purchase order in the window; revenue is the net value of every line in the
    window (returns subtracted); orders counts purchase orders; aov is the net value of those orders / orders.
    customers_to_date counts every customer with a purchase line up to as_of.
    """
    if active_days <= 0:
        raise InputError(f"base_kpis: active_days must be a positive number of days, got {active_days}.")
    end = _to_date(as_of, "as_of")
    start = end - timedelta(days=active_days)
    con = _connection(source, table)
    row = con.execute(SQL["kpis"].format(lines=_lines(table, end), start=start.isoformat())).df().iloc[0]
    active, orders = int(row["active_customers"]), int(row["orders"])
    return {
        "as_of": end.isoformat(), "window_start": (start + timedelta(days=1)).isoformat(), "active_days": active_days,
        "customers_to_date": int(row["customers_to_date"]), "active_customers": active, "orders": orders,
        "revenue": float(row["revenue"]), "gross_revenue": float(row["gross_revenue"]),
        "returns": float(row["returns"]),
        "aov": float(row["order_value"]) / orders if orders else float("nan"),
        "orders_per_active_customer": orders / active if active else float("nan"),
        "revenue_per_active_customer": float(row["revenue"]) / active if active else float("nan"),
    }


# ---------------------------------------------------------------------------------------------------- Pareto


def pareto(features: pd.DataFrame, value_col: str = "monetary_total", id_col: str = "customer_id",
           steps: int = 100) -> pd.DataFrame:
    """Share of value made by the top x % of customers, x = 1/steps .. 100 %.

    Customers are ranked by value, highest first (ties share a value, so their order does not change any share).
    Negative values (more returned than bought) count as 0 so that shares stay within 0..1; `pareto_headline` says
    how many there are. Columns: customer_share, customers, value_share.
    """
    if value_col not in features or id_col not in features:
        raise InputError(f"pareto: the features table lacks '{value_col}' or '{id_col}'; "
                         f"use cvm.features.customer_features or pass value_col.")
    values = pd.to_numeric(features[value_col], errors="coerce")
    if values.isna().any():
        raise InputError(f"pareto: column '{value_col}' has {int(values.isna().sum())} missing value(s); "
                         f"fill them (e.g. 0 for customers without purchases) or drop those rows.")
    n = len(values)
    if n == 0:
        raise InputError("pareto: the features table has no rows.")
    sorted_values = np.sort(values.clip(lower=0).to_numpy(dtype=float))[::-1]
    total = sorted_values.sum()
    if total <= 0:
        raise InputError(f"pareto: column '{value_col}' sums to {total:g}; there is no positive value to share.")
    cum = np.concatenate([[0.0], np.cumsum(sorted_values)])
    share = np.arange(1, steps + 1) / steps
    top_n = np.ceil(share * n - 1e-9).astype(int)
    out = pd.DataFrame({"customer_share": share, "customers": top_n, "value_share": cum[top_n] / total})
    out.attrs.update(value_col=value_col, n_customers=n, n_negative=int((values < 0).sum()))
    return out


def pareto_headline(curve: pd.DataFrame, top: float = 0.2) -> str:
    """'The top 20 % of customers (874 of 4,372) make 74 % of revenue.' from a `pareto` table."""
    if not 0 < top <= 1:
        raise InputError(f"pareto_headline: top must be a share in (0, 1], e.g. 0.2, got {top}.")
    row = curve.iloc[int(np.argmin(np.abs(curve["customer_share"].to_numpy() - top)))]
    n = curve.attrs.get("n_customers", int(curve["customers"].iloc[-1]))
    text = (f"The top {row['customer_share']:.0%} of customers ({int(row['customers']):,} of {n:,}) make "
            f"{row['value_share']:.0%} of revenue.")
    negative = curve.attrs.get("n_negative", 0)
    if negative:
        text += f" {negative:,} customer(s) returned more than they bought and count as zero."
    return text


def plot_pareto(curve: pd.DataFrame, top: float = 0.2) -> Figure:
    """Concentration curve (cumulative value share against customer share), titled with the headline."""
    fig, ax = plt.subplots(figsize=(7, 5))
    x = np.concatenate([[0.0], curve["customer_share"].to_numpy()])
    y = np.concatenate([[0.0], curve["value_share"].to_numpy()])
    ax.plot(x, y, color="#4C72B0", lw=2, label="customers ranked by value")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="equal shares")
    row = curve.iloc[int(np.argmin(np.abs(curve["customer_share"].to_numpy() - top)))]
    ax.plot([row["customer_share"]] * 2, [0, row["value_share"]], color="#DD8452", lw=1)
    ax.plot([0, row["customer_share"]], [row["value_share"]] * 2, color="#DD8452", lw=1)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("Share of customers (highest value first)")
    ax.set_ylabel("Share of revenue")
    ax.set_title(f"The top {row['customer_share']:.0%} of customers make {row['value_share']:.0%} of revenue")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------- cohorts


def cohort_retention(con: duckdb.DuckDBPyConnection | pd.DataFrame, as_of: str | date, table: str = "transactions",
                     period: Literal["W", "M", "Q"] = "M", days: str | None = None) -> pd.DataFrame:
    """Customers by first-purchase period x periods since, and the share of the cohort buying in that period.

    Columns: cohort (start of the first-purchase period), periods_since (0 = the first period, retention 1),
    cohort_size, active (customers with a purchase day in that period), retention = active / cohort_size, complete
    (False for the period containing as_of, which is still running and reads low). Weeks start on Monday.
    `days` names the table of `purchase_days(con, as_of)` to read instead of grouping the transactions again.
    """
    if period not in PERIODS:
        raise InputError(f"cohort_retention: period must be one of {list(PERIODS)}, got '{period}'.")
    end = _to_date(as_of, "as_of")
    con = _connection(con, table)
    unit, interval = PERIODS[period]
    sql = SQL["cohorts"].format(days=days_sql(table, end, days), unit=unit, as_of=end.isoformat(),
                                interval_next=interval.format(n="(g.periods_since + 1)"))
    out = fetch(con.sql(sql))
    if out.empty:
        raise InputError(f"table '{table}': no purchases on or before {end}; check as_of.")
    out["cohort"] = pd.to_datetime(out["cohort"])
    out["cohort_size"] = out["cohort_size"].astype("int64")
    out["active"] = out["active"].astype("int64")
    out["retention"] = out["active"] / out["cohort_size"]
    out["complete"] = out["complete"].astype(bool)
    out.attrs["period"] = period
    return out


def plot_cohort_heatmap(retention: pd.DataFrame, max_periods: int = 24, complete_only: bool = True) -> Figure:
    """Heat map of retention, cohorts down and periods since first purchase across (period 0 left out)."""
    data = retention[(retention["periods_since"] >= 1) & (retention["periods_since"] <= max_periods)]
    if complete_only:
        data = data[data["complete"]]
    unit = {"W": "weeks", "M": "months", "Q": "quarters"}[retention.attrs.get("period", "M")]
    fig, ax = plt.subplots(figsize=(11, max(3.0, 0.28 * data["cohort"].nunique() + 1.5)))
    if data.empty:
        ax.set_title("Not enough history for a cohort view: no complete period after the first purchase")
        ax.axis("off")
        return fig
    grid = data.pivot(index="cohort", columns="periods_since", values="retention")
    grid.index = [c.strftime("%Y-%m-%d") for c in grid.index]
    sns.heatmap(grid, ax=ax, cmap="Blues", vmin=0, cbar_kws={"format": PercentFormatter(1.0), "label": "still buying"},
                annot=grid.shape[1] <= 12, fmt=".0%")
    mean_first = data.loc[data["periods_since"] == 1, "active"].sum() / max(
        data.loc[data["periods_since"] == 1, "cohort_size"].sum(), 1)
    ax.set_title(f"{mean_first:.0%} of new customers buy again in the {unit[:-1]} after their first purchase")
    ax.set_xlabel(f"{unit.capitalize()} since the first purchase")
    ax.set_ylabel("Cohort (first purchase)")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------- LTV / CAC


def ltv_cac_missing_sentence() -> str:
    """What to supply when there is no acquisition cost."""
    return ("LTV/CAC and payback cannot be computed: the customer file has no acquisition_cost. Supply the cost of "
            "acquiring each customer (or the spend per acquisition channel and month, divided by the customers it "
            "brought) together with acquisition_channel and signup_date to get value-to-cost ratios and payback "
            "months by channel and cohort.")


def _acquisition(customers: pd.DataFrame, id_col: str, date_cols: Sequence[str], as_of: date) -> pd.Series:
    present = [c for c in date_cols if c in customers]
    if not present:
        raise InputError(f"ltv_cac: customers need an acquisition date in one of {list(date_cols)} "
                         f"(signup_date or first purchase); none is present.")
    acq = pd.Series(pd.NaT, index=customers.index, dtype="datetime64[us]")
    for col in present:
        acq = acq.fillna(pd.to_datetime(customers[col], errors="coerce").astype("datetime64[us]"))
    late = acq > pd.Timestamp(as_of)
    if late.any():
        raise InputError(f"ltv_cac: {int(late.sum())} customer(s) have an acquisition date after as_of {as_of}; "
                         f"check {present} or as_of.")
    return acq.dt.normalize()


def _payback(curve: pd.DataFrame, cac: float, clv_per_month: float) -> tuple[float, str]:
    """Months to recover `cac` from the observed cumulative margin curve (month, cum_margin), else CLV run-rate."""
    if cac <= 0:
        return 0.0, "no acquisition cost"
    reached = curve[curve["cum_margin"] >= cac]
    if len(reached):
        return float(reached["month"].iloc[0] + 1), "observed"
    observed = float(curve["month"].iloc[-1] + 1) if len(curve) else 0.0
    recovered = float(curve["cum_margin"].iloc[-1]) if len(curve) else 0.0
    if clv_per_month <= 0:
        return float("nan"), f"not recovered after {observed:.0f} observed months and no expected future margin"
    months = observed + (cac - recovered) / clv_per_month
    if observed:
        return months, f"observed {observed:.0f} months, then CLV / horizon"
    return months, "CLV / horizon (history too short)"


def ltv_cac(customers: pd.DataFrame, clv: pd.DataFrame, con: duckdb.DuckDBPyConnection | pd.DataFrame,
            as_of: str | date, by: Sequence[str] = ("acquisition_channel",), horizon_months: int = 36,
            margin: float = 1.0, table: str = "transactions", id_col: str = "customer_id", clv_col: str = "clv",
            cost_col: str = "acquisition_cost",
            date_cols: Sequence[str] = ("signup_date", "first_order_date", "first_purchase"),
            min_customers: int = 20, max_months: int = 120) -> pd.DataFrame | None:
    """Customers, mean CAC, mean LTV and LTV/CAC per group, with payback months; None without acquisition costs.

    LTV = observed margin to date (margin x net revenue since acquisition) + expected future CLV (`clv` frame,
    id_col and clv_col, from `cvm.clv.customer_lifetime_value` over `horizon_months` with the same margin;
    customers absent from it count 0). `by` may name any customer column and `acquisition_quarter` (derived).
    Payback: the first month m since acquisition where the mean cumulative margin of the group's customers observed
    for at least m months reaches the mean CAC (month m counted only while >= min_customers are observed); when not
    reached within the history, the remaining CAC is divided by mean CLV / horizon_months; `payback_method` says which.
    Acquisition date = first non-missing of date_cols. Customers without a cost are left out of mean_cac only.
    """
    if cost_col not in customers or customers[cost_col].isna().all():
        return None
    if not 0 < margin <= 1:
        raise InputError(f"ltv_cac: margin must be a share in (0, 1], e.g. 0.4, got {margin}.")
    if horizon_months < 1:
        raise InputError(f"ltv_cac: horizon_months must be >= 1, got {horizon_months}.")
    end = _to_date(as_of, "as_of")
    if id_col not in customers or id_col not in clv or clv_col not in clv:
        raise InputError(f"ltv_cac: customers need '{id_col}' and the CLV frame needs '{id_col}' and '{clv_col}'.")
    cust = customers.reset_index(drop=True)
    dup = cust[id_col].duplicated()
    if dup.any():
        raise InputError(f"ltv_cac: customers has {int(dup.sum())} duplicated {id_col}; keep one row per customer.")
    cost = pd.to_numeric(cust[cost_col], errors="coerce")
    if (cost < 0).any():
        raise InputError(f"ltv_cac: column '{cost_col}' has {int((cost < 0).sum())} negative value(s); "
                         f"costs must be >= 0.")
    acq = _acquisition(cust, id_col, date_cols, end)
    frame = pd.DataFrame({id_col: cust[id_col], "cac": cost, "acq_date": acq})
    by = list(by)
    if "acquisition_quarter" in by:
        frame["acquisition_quarter"] = acq.dt.to_period("Q").astype("string")
    for col in by:
        if col == "acquisition_quarter":
            continue
        if col not in cust:
            raise InputError(f"ltv_cac: customers lack the grouping column '{col}'.")
        frame[col] = cust[col].astype("string").fillna("unknown")
    frame["g"] = frame[by[0]].astype("string").str.cat(frame[by[1:]].astype("string"), sep=" | ") if by else "all"
    frame = frame.dropna(subset=["acq_date"]).reset_index(drop=True)
    future = pd.to_numeric(clv[clv_col], errors="coerce")
    frame["clv"] = rows_at(future.to_frame(), key_positions(frame[id_col], clv[id_col])).iloc[:, 0].fillna(0.0)
    frame["obs_months"] = np.floor((pd.Timestamp(end) - frame["acq_date"]).dt.days / MONTH_DAYS
                                   ).clip(upper=max_months).astype("int64")

    # One pass over the lines: net revenue per customer since acquisition, per group and month m since acquisition,
    # and per group and observed months (Revenue of month j of customer i counts in the cumulative margin of months
    # j .. obs_i - 1: +net at j, -net at obs_i, a difference array.)
    tx = _connection(con, table)
    tx.register("acq_view", frame[[id_col, "g", "acq_date", "obs_months"]].rename(columns={id_col: "customer_id"})
                .assign(pos=np.arange(len(frame))))
    try:
        rev = fetch(tx.sql(SQL["acquired_revenue"].format(lines=_lines(table, end), month_days=MONTH_DAYS)))
    finally:
        tx.unregister("acq_view")
    per_customer = rev[rev["pos"].notna()]
    past = np.zeros(len(frame))
    past[per_customer["pos"].to_numpy(dtype=np.intp)] = per_customer["net"].to_numpy(dtype=float)
    frame["past_margin"] = past * margin
    by_month = rev.loc[rev["m"].notna(), ["g", "m", "net"]]
    by_obs = rev.loc[rev["obs_months"].notna(), ["g", "obs_months", "net"]].rename(columns={"obs_months": "m"})
    delta = pd.concat([by_month, by_obs.assign(net=-by_obs["net"])]).astype({"m": "int64"})
    delta = delta.groupby(["g", "m"])["net"].sum()
    groups, rows = set(delta.index.get_level_values("g")), []
    for g, grp in frame.groupby("g", sort=True):
        months = int(grp["obs_months"].max())
        observed = np.bincount(grp["obs_months"], minlength=months + 1)[::-1].cumsum()[::-1][1:]  # obs >= m + 1
        d = delta.xs(g, level="g") if g in groups else pd.Series(dtype=float)
        d = d.reindex(range(months), fill_value=0.0)
        curve = pd.DataFrame({"month": np.arange(months), "n": observed[:months],
                              "cum_margin": margin * d.cumsum().to_numpy() / np.maximum(observed[:months], 1)})
        curve = curve[curve["n"] >= min_customers]
        has_cost = grp["cac"].notna()
        mean_cac = float(grp.loc[has_cost, "cac"].mean()) if has_cost.any() else float("nan")
        ltv = grp["past_margin"] + grp["clv"]
        months_pb, method = (_payback(curve, mean_cac, float(grp["clv"].mean()) / horizon_months)
                             if has_cost.any() else (float("nan"), "no acquisition cost recorded"))
        rows.append({**dict(zip(by, grp[by].iloc[0])), "customers": len(grp), "customers_with_cac": int(has_cost.sum()),
                     "mean_cac": mean_cac, "mean_past_margin": float(grp["past_margin"].mean()),
                     "mean_future_clv": float(grp["clv"].mean()), "mean_ltv": float(ltv.mean()),
                     "ltv_cac": float(ltv.mean()) / mean_cac if mean_cac > 0 else float("nan"),
                     "payback_months": months_pb, "payback_method": method})
    return pd.DataFrame(rows)
