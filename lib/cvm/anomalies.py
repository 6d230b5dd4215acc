"""Customers who would distort models or campaigns: bulk buyers, extreme returners, one-day bursts, test accounts.

The checks and thresholds are data (`rules/anomalies.yaml`); evaluation is vectorised. Per-customer order statistics
the features do not carry (largest order, busiest day, units per order) come from `anomaly_inputs` in DuckDB.
"""
from __future__ import annotations

import operator
import re
import warnings
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from cvm.config import read_yaml
from cvm.engine import fetch
from cvm.errors import InputError
from cvm.keys import key_positions, rows_at
from cvm.value import _connection, _to_date

DEFAULT_RULES = Path(__file__).parent / "rules" / "anomalies.yaml"
OPERATORS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq,
             "!=": operator.ne}
MAX_CHECKS = 62
TYPES = {"outlier": {"column", "z", "quantile", "factor", "when"}, "threshold": {"when"},
         "pattern": {"columns", "pattern"}}

SQL = """
    WITH lines AS (
        SELECT customer_id, order_id, CAST(order_date AS DATE) AS d, CAST(amount AS DOUBLE) AS amount, {units} AS units
        FROM {table} WHERE CAST(order_date AS DATE) <= DATE '{as_of}' AND customer_id IS NOT NULL),
    orders AS (
        SELECT customer_id, order_id, MIN(d) AS d, SUM(amount) AS net, SUM(units) AS units
        FROM lines GROUP BY customer_id, order_id
        HAVING SUM(amount) >= 0 AND MAX(CASE WHEN amount >= 0 THEN 1 ELSE 0 END) = 1),
    per_day AS (
        SELECT customer_id, COUNT(*) AS n, MAX(net) AS max_net, SUM(units) AS units, COUNT(units) AS n_units
        FROM orders GROUP BY customer_id, d)
    SELECT customer_id, SUM(n) AS purchase_orders, MAX(max_net) AS max_order_value,
           SUM(units) / NULLIF(SUM(n_units), 0) AS mean_order_units, MAX(n) AS max_day_orders
    FROM per_day GROUP BY customer_id"""


@dataclass(frozen=True)
class Check:
    """One anomaly check as read from the rules file."""

    name: str
    kind: str
    reason: str
    params: dict[str, Any]

    @property
    def columns(self) -> list[str]:
        cols = list(self.params.get("when", {}))
        if self.kind == "outlier":
            cols.insert(0, self.params["column"])
        return cols


def anomaly_inputs(con: duckdb.DuckDBPyConnection | pd.DataFrame, as_of: str | date,
                   table: str = "transactions") -> pd.DataFrame:
    """Per customer with a purchase order (rows in no particular order): purchase_orders, max_order_value,
    mean_order_units (NaN without a quantity column), max_day_orders (purchase orders on the busiest day) and
    day_order_share = max_day_orders / purchase_orders. Merge it into the features before `flag_anomalies`."""
    end = _to_date(as_of, "as_of")
    con = _connection(con, table)
    cols = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
    units = "CAST(quantity AS DOUBLE)" if "quantity" in cols else "CAST(NULL AS DOUBLE)"
    df = fetch(con.sql(SQL.format(table=table, as_of=end.isoformat(), units=units)))
    df["purchase_orders"] = df["purchase_orders"].astype("int64")
    df["max_day_orders"] = df["max_day_orders"].astype("int64")
    df["day_order_share"] = df["max_day_orders"] / df["purchase_orders"]
    return df


def _conditions(when: Any, where: str) -> dict[str, dict[str, float]]:
    if not isinstance(when, dict) or not when:
        raise InputError(f"{where}: 'when' must map column -> {{operator: value}}.")
    for col, spec in when.items():
        if not isinstance(spec, dict) or not spec:
            raise InputError(f"{where}: condition on '{col}' must be {{operator: value}}, got {spec!r}.")
        for op, value in spec.items():
            if op not in OPERATORS:
                raise InputError(f"{where}: unknown operator '{op}' on '{col}'; use one of {', '.join(OPERATORS)}.")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"{where}: value for '{col}' {op} must be a number, got {value!r}.")
    return when


def load_anomaly_rules(path: str | Path | None = None) -> list[Check]:
    """Read and validate the anomaly checks (default: the packaged anomalies.yaml); InputError on any problem."""
    where = Path(path) if path is not None else DEFAULT_RULES
    doc = read_yaml(where, "anomaly rules")
    if not isinstance(doc, dict) or set(doc) != {"checks"} or not isinstance(doc["checks"], list):
        raise InputError(f"{where}: expected exactly one top-level key 'checks' holding a list.")
    checks, seen = [], set()
    for i, item in enumerate(doc["checks"], start=1):
        if not isinstance(item, dict) or not item.get("name") or item.get("type") not in TYPES:
            raise InputError(f"{where}: check #{i} needs a 'name' and a 'type' among {list(TYPES)}.")
        name, kind = str(item["name"]), item["type"]
        ctx = f"{where}: check '{name}'"
        if name in seen:
            raise InputError(f"{ctx}: the name is used twice.")
        seen.add(name)
        params = {k: v for k, v in item.items() if k not in ("name", "type", "reason")}
        unknown = set(params) - TYPES[kind]
        if unknown:
            raise InputError(f"{ctx}: unknown key(s) {sorted(unknown)} for type {kind}; allowed: "
                             f"{', '.join(sorted(TYPES[kind]))}, reason.")
        if not isinstance(item.get("reason"), str) or not item["reason"].strip():
            raise InputError(f"{ctx}: 'reason' (text shown to the user) is required.")
        if kind == "outlier":
            if not isinstance(params.get("column"), str):
                raise InputError(f"{ctx}: 'column' is required.")
            for key, low, high in (("z", 0, np.inf), ("quantile", 0, 1), ("factor", 0, np.inf)):
                value = params.get(key)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
                    raise InputError(f"{ctx}: '{key}' must be a number in ({low}, {high}], got {value!r}.")
            if "when" in params:
                _conditions(params["when"], ctx)
        elif kind == "threshold":
            _conditions(params.get("when"), ctx)
        else:
            if not isinstance(params.get("columns"), list) or not params["columns"]:
                raise InputError(f"{ctx}: 'columns' must be a non-empty list.")
            try:
                params["pattern"] = re.compile(str(params.get("pattern", "")), re.IGNORECASE)
            except re.error as exc:
                raise InputError(f"{ctx}: 'pattern' is not a valid regular expression: {exc}") from exc
        checks.append(Check(name, kind, item["reason"].strip(), params))
    return checks


def _when(frame: pd.DataFrame, when: dict[str, dict[str, float]]) -> np.ndarray:
    mask = np.ones(len(frame), dtype=bool)
    for col, spec in when.items():
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float)
        for op, value in spec.items():
            with np.errstate(invalid="ignore"):
                mask &= ~np.isnan(values) & OPERATORS[op](values, value)
    return mask


def _outlier(frame: pd.DataFrame, check: Check) -> np.ndarray:
    p = check.params
    values = pd.to_numeric(frame[p["column"]], errors="coerce").to_numpy(dtype=float)
    known = ~np.isnan(values)
    if not known.any():
        return np.zeros(len(frame), dtype=bool)
    logs = np.log1p(np.clip(values, 0, None))
    median = np.nanmedian(logs)
    spread = 1.4826 * np.nanmedian(np.abs(logs - median))
    if spread == 0:  # more than half share one value: fall back to the mean absolute deviation
        spread = 1.2533 * np.nanmean(np.abs(logs - median))
    with np.errstate(invalid="ignore", divide="ignore"):
        far = (logs - median) / spread > p["z"] if spread > 0 else np.zeros(len(frame), dtype=bool)
        above = values > p["factor"] * np.nanquantile(values, p["quantile"])
    mask = known & (far | above)
    return mask & _when(frame, p["when"]) if "when" in p else mask


def _pattern(frame: pd.DataFrame, check: Check) -> np.ndarray:
    mask = np.zeros(len(frame), dtype=bool)
    for col in check.params["columns"]:
        if col in frame:
            with warnings.catch_warnings():  # pandas warns about capture groups in a pattern; they do no harm here
                warnings.simplefilter("ignore", UserWarning)
                found = frame[col].astype("string").str.contains(check.params["pattern"], na=False)
            mask |= found.to_numpy(dtype=bool)
    return mask


def flag_anomalies(features: pd.DataFrame, customers: pd.DataFrame | None = None, rules: list[Check] | None = None,
                   id_col: str = "customer_id") -> pd.DataFrame:
    """customer_id, anomaly_flag, anomaly_reason (reasons joined by '; ') and one `flag_<check>` column per check
    (nullable boolean, <NA> when the check could not run for lack of columns). `customers` (e.g. with email) is
    joined on id_col; merge `anomaly_inputs` into `features` for the order-level checks."""
    rules = load_anomaly_rules() if rules is None else rules
    if id_col not in features:
        raise InputError(f"flag_anomalies: features lack '{id_col}'.")
    if len(rules) > MAX_CHECKS:
        raise InputError(f"flag_anomalies: {len(rules)} checks; at most {MAX_CHECKS} are supported.")
    frame = features.reset_index(drop=True)
    if customers is not None:
        if id_col not in customers:
            raise InputError(f"flag_anomalies: customers lack '{id_col}'.")
        used = {c for check in rules for c in (check.params["columns"] if check.kind == "pattern" else check.columns)}
        extra = [c for c in customers.columns if c not in frame.columns and c in used]  # only what the checks read
        frame = pd.concat([frame, rows_at(customers[extra], key_positions(frame[id_col], customers[id_col]))], axis=1)
    out = pd.DataFrame({id_col: frame[id_col]})
    fired = np.zeros(len(frame), dtype=np.int64)  # bit j: the j-th check that ran flags the customer
    ran: list[str] = []
    for check in rules:
        if check.kind == "pattern":
            runnable = any(c in frame for c in check.params["columns"])
        else:
            runnable = all(c in frame for c in check.columns)
        if not runnable:
            out[f"flag_{check.name}"] = pd.array([pd.NA] * len(frame), dtype="boolean")
            continue
        if check.kind == "outlier":
            mask = _outlier(frame, check)
        elif check.kind == "threshold":
            mask = _when(frame, check.params["when"])
        else:
            mask = _pattern(frame, check)
        out[f"flag_{check.name}"] = pd.array(mask, dtype="boolean")
        fired |= mask.astype(np.int64) << len(ran)
        ran.append(check.reason)
    combo, combos = pd.factorize(fired)  # the reasons are joined once per distinct combination of checks
    text = np.array(["; ".join(r for j, r in enumerate(ran) if c >> j & 1) for c in combos], dtype=object)
    out.insert(1, "anomaly_flag", fired > 0)
    out.insert(2, "anomaly_reason", pd.array(text[combo], dtype="string"))
    return out


def anomaly_counts(flags: pd.DataFrame, rules: list[Check] | None = None) -> pd.DataFrame:
    """Customers flagged per check (and in total), with the share of the base and whether the check ran."""
    rules = load_anomaly_rules() if rules is None else rules
    rows = []
    n = len(flags)
    for check in rules:
        col = flags.get(f"flag_{check.name}")
        ran = col is not None and not col.isna().all()
        count = int(col.fillna(False).sum()) if ran else 0
        missing = ", ".join(check.params["columns"] if check.kind == "pattern" else check.columns)
        rows.append({"check": check.name, "reason": check.reason, "customers": count,
                     "share": count / n if n else np.nan,
                     "status": "ran" if ran else f"not run: needs {missing}"})
    total = int(flags["anomaly_flag"].sum())
    rows.append({"check": "any", "reason": "at least one reason", "customers": total,
                 "share": total / n if n else np.nan, "status": "ran"})
    return pd.DataFrame(rows)
