"""Lifecycle stages (new, reactivated, active, at risk, lapsed, lost) as rules in `rules/lifecycle.yaml`.

Inputs come from `lifecycle_inputs` (DuckDB window functions over purchase days, as in `cvm.features`). Thresholds can
be relative to each customer's own typical gap between purchases, so a monthly buyer is "at risk" sooner than a
once-a-year buyer. Rules are evaluated top to bottom with vectorised masks; the first matching stage wins.
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from cvm.config import named_item, read_yaml
from cvm.engine import fetch
from cvm.errors import InputError
from cvm.value import _connection, _lines, _to_date, days_sql

DEFAULT_RULES = Path(__file__).parent / "rules" / "lifecycle.yaml"
OPERATORS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq,
             "!=": operator.ne}
RELATIVE_KEYS = {"ref", "times", "min", "max", "default"}
STAGE_KEYS = {"name", "description", "colour", "when"}

SQL = """
    WITH custs AS (SELECT DISTINCT customer_id FROM ({lines})),
    days AS ({days}),
    gaps AS (
        SELECT customer_id, d, date_diff('day', LAG(d) OVER w, d) AS gap, LEAD(d) OVER w IS NULL AS is_last
        FROM days WINDOW w AS (PARTITION BY customer_id ORDER BY d)),
    agg AS (
        SELECT customer_id, MIN(d) AS first_purchase, MAX(d) AS last_purchase, COUNT(*) AS n_purchase_days,
               MAX(CASE WHEN is_last THEN gap END) AS last_gap_days,
               MAX(gap) AS max_gap_days,
               MEDIAN(gap) AS typical_gap_days,
               MEDIAN(CASE WHEN NOT is_last THEN gap END) AS prior_typical_gap_days
        FROM gaps GROUP BY customer_id)
    SELECT c.customer_id, a.* EXCLUDE (customer_id)
    FROM custs c LEFT JOIN agg a ON c.customer_id = a.customer_id"""


@dataclass(frozen=True)
class Relative:
    """Threshold = clip(times x ref column, min, max), `default` where the ref column is missing."""

    ref: str
    times: float
    low: float | None
    high: float | None
    default: float | None


@dataclass(frozen=True)
class Condition:
    """column <operator> threshold."""

    column: str
    op: str
    threshold: float | Relative


@dataclass(frozen=True)
class Stage:
    """One lifecycle stage: all its conditions must hold."""

    name: str
    description: str
    colour: str
    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class LifecycleRules:
    """Ordered stages (first match wins) and the label of customers matching none."""

    stages: tuple[Stage, ...]
    unmatched: str

    @property
    def order(self) -> list[str]:
        return [s.name for s in self.stages] + [self.unmatched]

    @property
    def colours(self) -> dict[str, str]:
        return {s.name: s.colour for s in self.stages} | {self.unmatched: "#bdbdbd"}


def lifecycle_inputs(con: duckdb.DuckDBPyConnection | pd.DataFrame, as_of: str | date,
                     table: str = "transactions", days: str | None = None) -> pd.DataFrame:
    """Per customer: first/last purchase, n_purchase_days, tenure_days, recency_days and gap columns (days).

    Gaps are between consecutive purchase days (net >= 0 with a non-return line) up to as_of: last_gap_days,
    max_gap_days, typical_gap_days (median gap) and prior_typical_gap_days (median gap before the last one).
    Customers with only returns keep a row with missing values. Rows are in no particular order. `days` names the
    table of `cvm.value.purchase_days(con, as_of)` to read instead of grouping the transactions again.
    """
    end = _to_date(as_of, "as_of")
    con = _connection(con, table)
    df = fetch(con.sql(SQL.format(lines=_lines(table, end), days=days_sql(table, end, days))))
    if df.empty:
        raise InputError(f"table '{table}': no rows on or before {end}; check as_of.")
    for col in ("first_purchase", "last_purchase"):
        df[col] = pd.to_datetime(df[col])
    day = np.timedelta64(1, "D")
    df["n_purchase_days"] = df["n_purchase_days"].fillna(0).astype("int64")
    df["tenure_days"] = (pd.Timestamp(end) - df["first_purchase"]) / day
    df["recency_days"] = (pd.Timestamp(end) - df["last_purchase"]) / day
    for col in ("last_gap_days", "max_gap_days", "typical_gap_days", "prior_typical_gap_days"):
        df[col] = df[col].astype("float64")
    return df


# ---------------------------------------------------------------------------------------------------- rules


def _number(value: Any, what: str, where: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: {what} must be a number, got {value!r}.")
    return float(value)


def _threshold(value: Any, what: str, where: Path) -> float | Relative:
    if not isinstance(value, dict):
        return _number(value, what, where)
    unknown = set(value) - RELATIVE_KEYS
    if unknown or "ref" not in value or not isinstance(value["ref"], str):
        raise InputError(f"{where}: {what}: a relative threshold needs 'ref' (a column) and may have times, min, max, "
                         f"default; got {value!r}.")
    opt = {k: _number(value[k], f"{what} '{k}'", where) if k in value else None for k in ("min", "max", "default")}
    if opt["min"] is not None and opt["max"] is not None and opt["min"] > opt["max"]:
        raise InputError(f"{where}: {what}: min {opt['min']:g} is above max {opt['max']:g}.")
    return Relative(value["ref"], _number(value.get("times", 1), f"{what} 'times'", where), opt["min"], opt["max"],
                    opt["default"])


def load_lifecycle_rules(path: str | Path | None = None) -> LifecycleRules:
    """Read and validate the lifecycle rules (default: the packaged lifecycle.yaml); InputError on any problem."""
    where = Path(path) if path is not None else DEFAULT_RULES
    doc = read_yaml(where, "lifecycle rules")
    if not isinstance(doc, dict) or not isinstance(doc.get("stages"), list) or not doc["stages"]:
        raise InputError(f"{where}: expected a mapping with a non-empty list 'stages' (and optionally 'unmatched').")
    unknown_top = set(doc) - {"stages", "unmatched"}
    if unknown_top:
        raise InputError(f"{where}: unknown top-level key(s) {sorted(unknown_top)}; allowed: stages, unmatched.")
    unmatched = str(doc.get("unmatched", "unclassified"))
    stages, seen = [], {unmatched}
    for i, item in enumerate(doc["stages"], start=1):
        name = named_item(item, i, STAGE_KEYS, "stage", where)
        if name in seen:
            raise InputError(f"{where}: stage name '{name}' is used twice (or equals 'unmatched').")
        seen.add(name)
        colour = str(item.get("colour", ""))
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", colour):
            raise InputError(f"{where}: stage '{name}': colour '{colour}' is not a hex colour like #1a9850.")
        when = item.get("when")
        if not isinstance(when, dict):
            raise InputError(f"{where}: stage '{name}': 'when' must map column -> {{operator: threshold}}; "
                             f"use when: {{}} for a catch-all stage.")
        conditions = []
        for column, spec in when.items():
            if not isinstance(spec, dict) or not spec:
                raise InputError(f"{where}: stage '{name}': condition on '{column}' must be {{operator: threshold}}, "
                                 f"got {spec!r}.")
            for op, value in spec.items():
                if op not in OPERATORS:
                    raise InputError(f"{where}: stage '{name}': unknown operator '{op}' on '{column}'; "
                                     f"use one of {', '.join(OPERATORS)}.")
                conditions.append(Condition(str(column), op, _threshold(value, f"stage '{name}' {column} {op}", where)))
        stages.append(Stage(name, str(item.get("description", "")).strip(), colour, tuple(conditions)))
    return LifecycleRules(tuple(stages), unmatched)


def _resolve(frame: pd.DataFrame, threshold: float | Relative) -> np.ndarray | float:
    if not isinstance(threshold, Relative):
        return threshold
    ref = pd.to_numeric(frame[threshold.ref], errors="coerce").to_numpy(dtype=float) * threshold.times
    ref = np.clip(ref, threshold.low if threshold.low is not None else -np.inf,
                  threshold.high if threshold.high is not None else np.inf)
    if threshold.default is not None:
        ref = np.where(np.isnan(ref), threshold.default, ref)
    return ref


def assign_lifecycle(frame: pd.DataFrame, rules: LifecycleRules | None = None) -> pd.Series:
    """Lifecycle stage per row (same index), first matching stage wins; missing values never match a condition."""
    rules = rules or load_lifecycle_rules()
    needed = {c.column for s in rules.stages for c in s.conditions} | {
        c.threshold.ref for s in rules.stages for c in s.conditions if isinstance(c.threshold, Relative)}
    missing = sorted(needed - set(frame.columns))
    if missing:
        raise InputError(f"assign_lifecycle: the customer frame lacks column(s) {missing} used by the lifecycle "
                         f"rules; build it with cvm.lifecycle.lifecycle_inputs or edit the rules.")
    stage = np.full(len(frame), rules.unmatched, dtype=object)
    free = np.ones(len(frame), dtype=bool)
    for s in rules.stages:
        mask = free.copy()
        for c in s.conditions:
            values = pd.to_numeric(frame[c.column], errors="coerce").to_numpy(dtype=float)
            threshold = _resolve(frame, c.threshold)
            with np.errstate(invalid="ignore"):
                mask &= ~np.isnan(values) & ~np.isnan(threshold) & OPERATORS[c.op](values, threshold)
        stage[mask] = s.name
        free &= ~mask
    return pd.Series(stage, index=frame.index, name="lifecycle_stage")


def lifecycle_table(stages: pd.Series, rules: LifecycleRules | None = None, value: pd.Series | None = None
                    ) -> pd.DataFrame:
    """Customers and share per stage in rule order (value share too when `value` is given), with descriptions."""
    rules = rules or load_lifecycle_rules()
    counts = stages.value_counts().reindex(rules.order, fill_value=0)
    out = pd.DataFrame({"stage": rules.order, "customers": counts.to_numpy(),
                        "share_customers": counts.to_numpy() / max(len(stages), 1)})
    if value is not None:
        totals = value.clip(lower=0).groupby(stages).sum().reindex(rules.order, fill_value=0.0)
        out["share_value"] = totals.to_numpy() / max(float(totals.sum()), 1e-12)
    described = {s.name: s.description for s in rules.stages}
    described[rules.unmatched] = "Matches no stage (e.g. only returns)."
    out["description"] = out["stage"].map(described)
    return out
