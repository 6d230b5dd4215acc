"""Row-level validation of contract tables: typed columns, rejected rows with their reason, and the quality report.

Nothing is dropped silently: every rejected row is kept with its reason in `Validated.rejected`, and the counts go into
the data-quality report. A whole column of the wrong type, or a table with every row rejected, is an `InputError`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from cvm.contract import TABLES, Column, pandera_schema
from cvm.errors import InputError
from cvm.keys import per_distinct, repeated_keys

TRUE = {"true", "t", "yes", "y", "1", "1.0", "oui", "ja", "si", "x"}
FALSE = {"false", "f", "no", "n", "0", "0.0", "non", "nein", "", "nan", "none"}
#: share of non-empty values that may fail to parse in a required column before the column is judged the wrong type
MAX_BAD_SHARE = 0.5
#: currency symbols allowed before or after an amount
CURRENCY = ("€", "$", "£")
#: text columns whose first REPEAT_SAMPLE values hold at most REPEAT_SHARE distinct ones are converted once per
#: distinct value (200k customers: birth_year 0.068 -> 0.006 s, acquisition_cost 0.060 -> 0.008 s, signup_date 0.052
#: -> 0.007 s CPU)
REPEAT_SAMPLE = 10_000
REPEAT_SHARE = 0.5
#: a row selection of at most this many runs of consecutive rows is assembled from slices (see `_rows`)
MAX_SLICED_RUNS = 1000


@dataclass
class Validated:
    """A validated table: kept rows (typed), rejected rows with a `reject_reason`, per-reason counts, and counts of
    rows flagged but kept (e.g. cancellations among all rows read).

    A Parquet source validated in DuckDB (`cvm.quality_sql`) holds no kept frame: `kept_sql` selects the kept rows from
    the file (given `kept_rows`, the file's rows but those at `rejected_positions`, by position), and `kept` is built
    on demand by the pandas path."""

    table: str
    source: str
    kept_frame: pd.DataFrame | None
    rejected: pd.DataFrame
    rows_read: int
    reasons: dict[str, int]
    coerced: dict[str, int]
    flagged: dict[str, int]
    n_kept: int
    columns: list[str]
    kept_sql: str | None = None
    rejected_positions: np.ndarray | None = None
    load_kept: Callable[[], pd.DataFrame] | None = None

    @property
    def kept(self) -> pd.DataFrame:
        """The kept rows as a typed frame."""
        if self.kept_frame is None and self.load_kept is not None:
            self.kept_frame = self.load_kept()
        return self.kept_frame

    def report_rows(self) -> list[dict]:
        """Rows for the data-quality report: one per rejection reason (or one 'ok' row)."""
        base = {"table": self.table, "file": self.source, "rows_read": self.rows_read,
                "rows_kept": self.n_kept, "rows_rejected": len(self.rejected)}
        if not self.reasons:
            return [{**base, "reason": "", "rows": 0}]
        return [{**base, "reason": r, "rows": n} for r, n in self.reasons.items()]


def _is_typed(series: pd.Series) -> bool:
    """Whether the column already holds typed values (numbers, dates, booleans), none of which can be blank text."""
    return (pd.api.types.is_numeric_dtype(series) or pd.api.types.is_datetime64_any_dtype(series)
            or pd.api.types.is_bool_dtype(series))


def _text(series: pd.Series) -> pd.Series:
    """The values as trimmed text; the column's own buffers when no value has surrounding blanks (no copy)."""
    text = series.astype("string")
    trimmed = text.str.strip()
    return text if trimmed.equals(text) else trimmed


def _blank_to_missing(text: pd.Series) -> pd.Series:
    """Empty text as missing (the same column, uncopied, when nothing is empty)."""
    blank = text == ""
    return text.mask(blank) if blank.any() else text


def _to_number(series: pd.Series, text: pd.Series | None, decimal: str, thousands: str | None) -> pd.Series:
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return series.astype("float64")
    text = _text(series) if text is None else text
    if thousands:
        text = text.str.replace(thousands, "", regex=False)
    if decimal != ".":
        text = text.str.replace(decimal, ".", regex=False)
    # pandas runs this regex in Python (because of \s), so only when some value starts or ends with a symbol
    if text.str.startswith(CURRENCY).any() or text.str.endswith(CURRENCY).any():
        text = text.str.replace(r"^[€$£]\s*|\s*[€$£]$", "", regex=True)
    return pd.to_numeric(text, errors="coerce").astype("float64")


def _to_date(series: pd.Series, text: pd.Series | None, date_format: str | None) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(series):
        out = series
    else:
        text = _text(series) if text is None else text
        options = {"format": date_format or "mixed", "errors": "coerce"}
        try:
            out = pd.to_datetime(text, **options)
        except ValueError:  # offsets that differ between rows: each time converted to UTC
            out = pd.to_datetime(text, utc=True, **options).dt.tz_convert(None)
    if getattr(out.dt, "tz", None) is not None:
        out = out.dt.tz_localize(None)
    return out.astype("datetime64[us]")


def _to_bool(series: pd.Series, text: pd.Series | None = None) -> pd.Series:
    if pd.api.types.is_bool_dtype(series):
        return series.astype("boolean")
    text = (_text(series) if text is None else text).str.lower()
    out = pd.Series(pd.NA, index=series.index, dtype="boolean")
    out[text.isin(TRUE).fillna(False)] = True
    out[text.isin(FALSE).fillna(False)] = False
    return out


def _to_id(series: pd.Series, text: pd.Series | None) -> pd.Series:
    if pd.api.types.is_float_dtype(series):
        whole = series.dropna()
        if len(whole) and (whole == np.floor(whole)).all():
            series = series.astype("Int64")
    text = _text(series) if text is None else text
    if text.str.endswith(".0").any():
        text = text.str.replace(r"\.0$", "", regex=True)
    return _blank_to_missing(text)


def coerce(column: Column, series: pd.Series, text: pd.Series | None, read: dict) -> pd.Series:
    """Convert one column to its contract type; unparseable values become missing. `text` is the column as trimmed
    text when the caller already has it (None for typed columns), so no column is converted to text twice. Numbers,
    dates and flags that repeat are converted once per distinct value."""
    if text is not None and column.kind in ("float", "int", "date", "bool") and _repeats(text):
        return per_distinct(text, lambda values: _convert(column, values, values, read)).rename(text.name)
    return _convert(column, series, text, read)


def _repeats(text: pd.Series) -> bool:
    """Whether the first REPEAT_SAMPLE values hold at most REPEAT_SHARE distinct ones."""
    sample = text.iloc[:REPEAT_SAMPLE]
    return len(sample) > 1 and sample.nunique(dropna=False) <= REPEAT_SHARE * len(sample)


def _convert(column: Column, series: pd.Series, text: pd.Series | None, read: dict) -> pd.Series:
    """`coerce`, value by value."""
    if column.kind == "float" or column.kind == "int":
        return _to_number(series, text, read.get("decimal", "."), read.get("thousands"))
    if column.kind == "date":
        return _to_date(series, text, read.get("date_format"))
    if column.kind == "bool":
        return _to_bool(series, text)
    if column.kind == "id":
        return _to_id(series, text)
    return _blank_to_missing(_text(series) if text is None else text)


def outcome_values(name: str, series: pd.Series, source: str) -> pd.Series:
    """An outcome column as numbers: booleans (true/false, yes/no, 1/0) become 1.0/0.0, amounts stay amounts."""
    as_bool = _to_bool(series)
    present = series.notna()
    if (as_bool.notna() | ~present).all():
        return as_bool.astype("Float64").astype("float64")
    numbers = _to_number(series, None, ".", None)
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
    out = frame.copy(deep=False)  # copy-on-write: replacing a column of `out` leaves `frame` as read
    coerced: dict[str, int] = {}
    flagged: dict[str, int] = {}
    bad_masks: dict[str, pd.Series] = {}
    for column in spec.columns:
        if column.name not in out.columns:
            continue
        before = out[column.name]
        text = None if _is_typed(before) else _text(before)
        present = before.notna() if text is None else before.notna() & (text != "").fillna(False)
        after = coerce(column, before, text, read)
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
            out["order_id"] = "row-" + pd.Series(np.arange(1, len(out) + 1), index=out.index).astype("string")
        if "amount" not in frame.columns:
            out["amount"] = out["quantity"] * out["unit_price"]
            bad_masks["missing quantity or unit_price (amount = quantity x unit_price)"] = (
                out["quantity"].isna() | out["unit_price"].isna())
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
    # each row's reason as a code: 0 = kept, i = the i-th label (the first that applies, as listed)
    labels = list(bad_masks)
    code = np.zeros(rows_read, dtype=np.int32)
    for number, mask in enumerate(bad_masks.values(), start=1):
        code[(code == 0) & mask.fillna(False).to_numpy(dtype=bool)] = number
    keys = duplicate_key(table, list(out.columns))
    if keys:
        labels.append(duplicate_label(table, keys))
        code[(code == 0) & _duplicated(out, keys)] = len(labels)
    rejected_mask = code > 0
    kept = pandera_schema(table).validate(_rows(out, ~rejected_mask).reset_index(drop=True), inplace=True)
    reason = pd.Series(np.asarray(labels, dtype=object)[code[rejected_mask] - 1], dtype="string")
    rejected = _rows(frame, rejected_mask).astype("string").assign(reject_reason=reason.array)
    reasons = reason.value_counts().to_dict()
    if len(kept) == 0:
        top = ", ".join(f"{k}: {v:,}" for k, v in reasons.items())
        raise InputError(f"{table}: every one of the {rows_read:,} rows of file {source} was rejected ({top}).")
    return Validated(table, source, kept, rejected.reset_index(drop=True), rows_read,
                     {str(k): int(v) for k, v in reasons.items()}, coerced, flagged, len(kept), list(kept.columns))


def _rows(frame: pd.DataFrame, keep: np.ndarray) -> pd.DataFrame:
    """`frame.loc[keep]` for a boolean array. A selection of few runs of consecutive rows (all rows but a few, or a
    few rows) is concatenated from slices: Arrow-backed text columns then share their buffers, where a take would first
    copy every chunk of the column into one."""
    if keep.all():
        return frame
    edges = np.flatnonzero(np.diff(np.concatenate(([False], keep, [False])).astype(np.int8)))
    starts, stops = edges[0::2], edges[1::2]
    if len(starts) == 0 or len(starts) > MAX_SLICED_RUNS:
        return frame.loc[keep]
    return pd.concat([frame.iloc[start:stop] for start, stop in zip(starts, stops)])


def duplicate_key(table: str, columns: list[str]) -> list[str]:
    """Columns (of the validated table's `columns`) whose repetition makes a row a duplicate."""
    if table == "transactions":
        return [c for c in columns if c not in ("is_return", "is_cancellation")]
    if table in ("customers", "loyalty"):
        return ["customer_id"]
    if table == "campaigns":
        return ["campaign_id"]
    return []


def duplicate_label(table: str, keys: list[str]) -> str:
    """The rejection reason of a duplicate row."""
    return "duplicate order line" if table == "transactions" else f"duplicate {', '.join(keys)}"


def _duplicated(frame: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """`frame.duplicated(subset=keys, keep="first")` as an array. With several key columns, rows are first hashed in
    DuckDB (equal rows always hash alike: NaN and missing both become NULL, -0.0 hashes as 0.0) and only rows whose
    hash repeats are compared, which is much faster on millions of rows."""
    subset = frame[keys]
    if len(keys) == 1 and isinstance(subset.dtypes.iloc[0], pd.StringDtype) and not repeated_keys(subset.iloc[:, 0]):
        return np.zeros(len(frame), dtype=bool)  # ids that never repeat (sorted ids: found at once, no hashing)
    if len(keys) == 1 or not all(_hashes_alike(subset.iloc[:, i]) for i in range(subset.shape[1])):
        return subset.duplicated(keep="first").to_numpy()
    rows = pa.Table.from_pandas(subset.set_axis([f"c{i}" for i in range(subset.shape[1])], axis=1),
                                preserve_index=False)
    columns = ", ".join(rows.column_names)
    with duckdb.connect() as con:
        con.register("key_rows", rows)
        hashes = con.sql(f"SELECT hash({columns}) AS h FROM key_rows").fetchnumpy()["h"]
    candidates = hash_repeats(hashes)
    duplicated = np.zeros(len(frame), dtype=bool)
    duplicated[candidates] = _rows(subset, candidates).duplicated(keep="first").to_numpy()
    return duplicated


def hash_repeats(hashes: np.ndarray) -> np.ndarray:
    """Whether each row's hash occurs more than once: the only rows that can be duplicates (found by sorting the
    hashes in numpy, faster than a GROUP BY on them at 20M rows)."""
    ordered = np.sort(hashes)
    return np.isin(hashes, ordered[1:][ordered[1:] == ordered[:-1]])


def _hashes_alike(series: pd.Series) -> bool:
    """Whether pandas-equal values of this column get equal DuckDB hashes once passed through Arrow."""
    dtype = series.dtype
    if isinstance(dtype, (pd.StringDtype, pd.BooleanDtype)):
        return True
    return isinstance(dtype, np.dtype) and (dtype.kind in "biuM" or dtype in (np.float32, np.float64))
