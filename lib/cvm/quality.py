"""Row-level validation of contract tables: typed columns, rejected rows with their reason, and the quality report.

Nothing is dropped silently: every rejected row is kept with its reason in `Validated.rejected`, and the counts go into
the data-quality report. A whole column of the wrong type, or a table with every row rejected, is an `InputError`.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from cvm.contract import TABLES, Column, pandera_schema
from cvm.errors import InputError

TRUE = {"true", "t", "yes", "y", "1", "1.0", "oui", "ja", "si", "x"}
FALSE = {"false", "f", "no", "n", "0", "0.0", "non", "nein", "", "nan", "none"}
#: share of non-empty values that may fail to parse in a required column before the column is judged the wrong type
MAX_BAD_SHARE = 0.5


@dataclass
class Validated:
    """A validated table: kept rows (typed), rejected rows with a `reject_reason`, per-reason counts, and counts of
    rows flagged but kept (e.g. cancellations among all rows read)."""

    table: str
    source: str
    kept: pd.DataFrame
    rejected: pd.DataFrame
    rows_read: int
    reasons: dict[str, int]
    coerced: dict[str, int]
    flagged: dict[str, int]

    def report_rows(self) -> list[dict]:
        """Rows for the data-quality report: one per rejection reason (or one 'ok' row)."""
        base = {"table": self.table, "file": self.source, "rows_read": self.rows_read,
                "rows_kept": len(self.kept), "rows_rejected": len(self.rejected)}
        if not self.reasons:
            return [{**base, "reason": "", "rows": 0}]
        return [{**base, "reason": r, "rows": n} for r, n in self.reasons.items()]


def _text(series: pd.Series) -> pd.Series:
    return series.astype("string").str.strip()


def _to_number(series: pd.Series, decimal: str, thousands: str | None) -> pd.Series:
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return series.astype("float64")
    text = _text(series)
    if thousands:
        text = text.str.replace(thousands, "", regex=False)
    if decimal != ".":
        text = text.str.replace(decimal, ".", regex=False)
    text = text.str.replace(r"^[€$£]\s*|\s*[€$£]$", "", regex=True)
    return pd.to_numeric(text, errors="coerce").astype("float64")


def _to_date(series: pd.Series, date_format: str | None) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(series):
        out = series
    else:
        text = _text(series)
        if date_format:
            out = pd.to_datetime(text, format=date_format, errors="coerce")
        else:
            out = pd.to_datetime(text, errors="coerce", format="mixed")
    if getattr(out.dt, "tz", None) is not None:
        out = out.dt.tz_localize(None)
    return out.astype("datetime64[us]")


def _to_bool(series: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(series):
        return series.astype("boolean")
    text = _text(series).str.lower()
    out = pd.Series(pd.NA, index=series.index, dtype="boolean")
    out[text.isin(TRUE).fillna(False)] = True
    out[text.isin(FALSE).fillna(False)] = False
    return out


def _to_id(series: pd.Series) -> pd.Series:
    if pd.api.types.is_float_dtype(series):
        whole = series.dropna()
        if len(whole) and (whole == np.floor(whole)).all():
            series = series.astype("Int64")
    text = series.astype("string").str.strip()
    text = text.str.replace(r"\.0$", "", regex=True)
    return text.mask(text == "")


def coerce(column: Column, series: pd.Series, read: dict) -> pd.Series:
    """Convert one column to its contract type; unparseable values become missing."""
    if column.kind == "float" or column.kind == "int":
        return _to_number(series, read.get("decimal", "."), read.get("thousands"))
    if column.kind == "date":
        return _to_date(series, read.get("date_format"))
    if column.kind == "bool":
        return _to_bool(series)
    if column.kind == "id":
        return _to_id(series)
    text = series.astype("string").str.strip()
    return text.mask(text == "")


def outcome_values(name: str, series: pd.Series, source: str) -> pd.Series:
    """An outcome column as numbers: booleans (true/false, yes/no, 1/0) become 1.0/0.0, amounts stay amounts."""
    as_bool = _to_bool(series)
    present = series.notna()
    if (as_bool.notna() | ~present).all():
        return as_bool.astype("Float64").astype("float64")
    numbers = _to_number(series, ".", None)
    bad = int((present & numbers.isna()).sum())
    if bad:
        examples = ", ".join(repr(v) for v in series[present & numbers.isna()].astype(str).unique()[:3])
        raise InputError(f"contacts: outcome column '{name}' in file {source} has {bad:,} values that are neither "
                         f"yes/no nor numbers (e.g. {examples}).")
    return numbers


def validate(table: str, frame: pd.DataFrame, as_of: date, source: str | Path = "",
             read: dict | None = None, cancellation_prefix: str | None = None,
             outcomes: list[str] | None = None) -> Validated:
    """Type every contract column, reject bad rows with a reason, and fail on columns of the wrong type."""
    spec = TABLES[table]
    read = read or {}
    source = str(source)
    rows_read = len(frame)
    if rows_read == 0:
        raise InputError(f"{table}: file {source} has no rows.")
    out = frame.copy()
    coerced: dict[str, int] = {}
    flagged: dict[str, int] = {}
    bad_masks: dict[str, pd.Series] = {}
    for column in spec.columns:
        if column.name not in out.columns:
            continue
        before = out[column.name]
        present = before.notna() & (before.astype("string").str.strip() != "").fillna(False)
        after = coerce(column, before, read)
        failed = present & after.isna()
        n_failed = int(failed.sum())
        if column.allowed is not None:
            lowered = after.str.lower()
            outside = present & ~lowered.isin(column.allowed).fillna(False)
            if outside.any():
                examples = ", ".join(repr(v) for v in after[outside].drop_duplicates().head(5))
                if column.required:
                    bad_masks[f"{column.name} not one of {', '.join(column.allowed)}"] = outside
                if outside.all():
                    raise InputError(
                        f"{table}: column '{column.name}' in file {source}: none of the {int(present.sum()):,} values "
                        f"is one of {', '.join(column.allowed)} (found {examples}). Map them with "
                        f"sources.{table}.values.{column.name}.")
                coerced[column.name] = coerced.get(column.name, 0) + int(outside.sum())
            after = lowered.where(~outside)
        if n_failed:
            share = n_failed / max(int(present.sum()), 1)
            examples = ", ".join(repr(v) for v in before[failed].astype(str).drop_duplicates().head(3))
            if column.required and share > MAX_BAD_SHARE:
                hint = {"float": "check read.decimal / read.thousands", "int": "check read.decimal",
                        "date": "set read.date_format, e.g. '%d/%m/%Y'", "bool": "use true/false or yes/no"}
                raise InputError(
                    f"{table}: column '{column.name}' in file {source} has the wrong type: {n_failed:,} of "
                    f"{int(present.sum()):,} values are not a {column.kind} (e.g. {examples}); "
                    f"{hint.get(column.kind, 'check the column map')}.")
            if column.required:
                label = {"date": "unparseable", "float": "non-numeric", "int": "non-numeric"}.get(column.kind, "invalid")
                bad_masks[f"{label} {column.name}"] = failed
            else:
                coerced[column.name] = coerced.get(column.name, 0) + n_failed
        if column.required:
            bad_masks[f"missing {column.name}"] = ~present
        out[column.name] = after
    for name in outcomes or []:
        if name not in out.columns:
            raise InputError(f"{table}: outcome column '{name}' (sources.{table}.outcomes) is not in file {source}; "
                             f"its columns are: {', '.join(frame.columns)}.")
        if name not in spec.names:
            out[name] = outcome_values(name, out[name], source)
    if table == "transactions":
        if "order_id" not in frame.columns:
            out["order_id"] = pd.Series(range(1, len(out) + 1), index=out.index).map("row-{}".format).astype("string")
        if "amount" not in frame.columns:
            out["amount"] = out["quantity"] * out["unit_price"]
            bad_masks["non-numeric amount"] = out["amount"].isna() & out["quantity"].notna() & out["unit_price"].notna()
        out["is_return"] = (out["amount"] < 0).fillna(False)
        if "quantity" in out.columns:
            out["is_return"] |= (out["quantity"] < 0).fillna(False)
        if cancellation_prefix:
            out["is_cancellation"] = out["order_id"].str.startswith(cancellation_prefix).fillna(False)
            out["is_return"] |= out["is_cancellation"]
            flagged["cancellation_rows_read"] = int(out["is_cancellation"].sum())
        flagged["return_rows_read"] = int(out["is_return"].sum())
        bad_masks["future order_date (after as_of)"] = (out["order_date"] > pd.Timestamp(as_of) + pd.Timedelta(days=1)
                                                        ).fillna(False)
    if table == "contacts" and "contact_date" in out.columns:
        bad_masks["future contact_date (after as_of)"] = (out["contact_date"] > pd.Timestamp(as_of)
                                                          + pd.Timedelta(days=1)).fillna(False)
    if table == "contacts" and "customer_id" in frame.columns:
        bad_masks["missing customer_id"] = out["customer_id"].isna()
    reason = pd.Series(pd.NA, index=out.index, dtype="string")
    for label, mask in bad_masks.items():
        reason = reason.mask(reason.isna() & mask.fillna(False).astype(bool), label)
    keys = _duplicate_key(table, out)
    if keys:
        duplicated = out.duplicated(subset=keys, keep="first") & reason.isna()
        label = "duplicate order line" if table == "transactions" else f"duplicate {', '.join(keys)}"
        reason = reason.mask(duplicated, label)
    rejected_mask = reason.notna()
    kept = pandera_schema(table).validate(out.loc[~rejected_mask].reset_index(drop=True))
    rejected = frame.loc[rejected_mask].astype("string").assign(reject_reason=reason[rejected_mask])
    reasons = reason[rejected_mask].value_counts().to_dict()
    if len(kept) == 0:
        top = ", ".join(f"{k}: {v:,}" for k, v in reasons.items())
        raise InputError(f"{table}: every one of the {rows_read:,} rows of file {source} was rejected ({top}).")
    return Validated(table, source, kept, rejected.reset_index(drop=True), rows_read,
                     {str(k): int(v) for k, v in reasons.items()}, coerced, flagged)


def _duplicate_key(table: str, frame: pd.DataFrame) -> list[str]:
    """Columns whose repetition makes a row a duplicate."""
    if table == "transactions":
        return [c for c in frame.columns if c not in ("is_return", "is_cancellation")]
    if table in ("customers", "loyalty"):
        return ["customer_id"]
    if table == "campaigns":
        return ["campaign_id"]
    return []
