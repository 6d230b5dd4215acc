"""Validation of a Parquet source inside DuckDB, without reading the file into pandas.

`validate_parquet` gives what `cvm.quality.validate(load_source(src))` gives (rows kept, rejected rows with the same
reason in the same priority order, counts), and a query that selects the kept rows, typed, from the file: the database
table is then written straight from the Parquet file. Only files whose column types make the SQL equal to the pandas
rules by construction are taken (`_columns`); for any other file, or any row that would need an error message (a
column of the wrong type, every row rejected), it returns None and the caller uses the pandas path.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cvm.config import SourceConfig
from cvm.contract import TABLES, Column
from cvm.quality import Validated, coerce, duplicate_key, duplicate_label, hash_repeats, validate
from cvm.sources import column_plan, file_kind, load_source, parquet_rows, shape

#: the characters pyarrow's utf8_trim_whitespace (pandas' str.strip on text) removes; a test checks every code point
WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
              "\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
#: a column with an allowed list is typed from its distinct values in pandas; beyond this many, the pandas path
MAX_ALLOWED_DISTINCT = 1000
#: pandas dtypes (from a file's pandas metadata) that reading restores as numpy or text columns, as the SQL assumes
PLAIN_NUMPY = {"object", "str", "bool", "float64", "float32", "datetime64[us]", "datetime64[ns]", "datetime64[ms]",
               "datetime64[s]"} | {f"{s}int{b}" for s in ("", "u") for b in (8, 16, 32, 64)}
TEXT = (pa.string(), pa.large_string())
FLOATS = (pa.float32(), pa.float64())
#: repeated-hash rows are read from their row groups when those hold at most this share of the file, else found by a
#: positional join with the whole file (20M lines in 21 row groups, 10 columns: 0.28 s CPU per row group read, the
#: join 1.2-2.7 s; validating the 1M-customer file, 3 repeated rows in 3 groups: 12.9 / 12.7 -> 11.6 / 12.0 s CPU)
MAX_CANDIDATE_SHARE = 0.25
#: name of the kept-row flag joined by position to the file when the table is written
KEEP = "cvm_kept_row"
#: up to this many rejected rows are left out by listing their positions, beyond it by the positional join of KEEP (at
#: 20M rows: 3 listed 7.0 s, 1000 listed 4.3 s for two columns, 5000 listed 18 s; the positional join 14.3 s)
MAX_LISTED_REJECTS = 100


@dataclass(frozen=True)
class _Col:
    """One column of the loaded frame: its contract column (None outside the contract), the file column it comes
    from (None for a constant), the SQL of its value as read, and the Arrow type it is read with (None: a constant)."""

    name: str
    column: Column | None
    file_col: str | None
    raw: str
    arrow: pa.DataType | None

    @property
    def trimmed_text(self) -> bool:
        """Whether pandas reads it as text and trims it (a contract column of kind id, str or category)."""
        return (self.arrow is None or self.arrow in TEXT) and self.column is not None \
            and self.column.kind in ("id", "str", "category")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _plain_pandas_metadata(schema: pa.Schema) -> bool:
    """Whether pandas reads the file's columns as plain numpy/text columns and no column becomes the index."""
    meta = schema.pandas_metadata
    if not meta:
        return True
    if any(not isinstance(index, dict) for index in meta.get("index_columns", [])):
        return False
    return all(c.get("numpy_type") in PLAIN_NUMPY for c in meta.get("columns", []))


def _trim(col: _Col, spaced: bool) -> str:
    """SQL of the value as pandas trims it; `spaced`: whether some value may start or end with a blank (else the value
    itself: the trim of a text that starts and ends with a printable ASCII character)."""
    return f"trim({col.raw}, {_literal(WHITESPACE)})" if spaced else col.raw


def _spaced(col: _Col) -> str:
    """SQL: the value starts or ends with something other than a printable ASCII character (byte order)."""
    return f"({col.raw} <> '' AND ({col.raw} < '!' OR {col.raw} >= '\x7f' OR reverse({col.raw}) < '!' " \
           f"OR reverse({col.raw}) >= '\x7f'))"


def _typed(col: _Col, spaced: bool) -> tuple[str, str] | None:
    """SQL of the typed value and of 'present' (as `cvm.quality.validate` types the column), or None when the pandas
    rules for that Arrow type are not reproduced here."""
    raw, arrow, column = col.raw, col.arrow, col.column
    if col.trimmed_text:
        trimmed = _trim(col, spaced)
        typed = trimmed if column.kind != "id" else \
            f"CASE WHEN ends_with({trimmed}, '.0') THEN regexp_replace({trimmed}, '\\.0$', '') ELSE {trimmed} END"
        return f"NULLIF({typed}, '')", f"NULLIF({trimmed}, '') IS NOT NULL"
    if column is None:  # an attribute outside the contract: kept as read (NaN reaches the database as NULL)
        if arrow is None or arrow in TEXT or arrow == pa.timestamp("us"):
            return raw, f"{raw} IS NOT NULL"
        if arrow == pa.float64():
            return f"CASE WHEN isnan({raw}) THEN NULL ELSE {raw} END", f"NOT COALESCE(isnan({raw}), TRUE)"
        return None
    if column.kind in ("float", "int") and arrow is not None and (pa.types.is_integer(arrow) or arrow in FLOATS):
        number = f"CAST({raw} AS DOUBLE)"
        return f"CASE WHEN isnan({number}) THEN NULL ELSE {number} END", f"NOT COALESCE(isnan({number}), TRUE)"
    if (column.kind == "date" and arrow == pa.timestamp("us")) or (column.kind == "bool" and arrow == pa.bool_()):
        return raw, f"{raw} IS NOT NULL"
    return None


def _columns(src: SourceConfig, schema: pa.Schema) -> list[_Col] | None:
    """The loaded frame's columns over the file (as `cvm.sources.shape` builds them), or None when the file or the
    configuration needs the pandas path."""
    spec = TABLES[src.table]
    header = [str(n).strip() for n in schema.names]
    reserved = {"file_row_number", KEEP}
    if src.values or src.outcomes or len({h.lower() for h in header} | reserved) != len(header) + len(reserved) \
            or not _plain_pandas_metadata(schema):
        return None
    plan = column_plan(src, header, spec)
    if src.control_arm is not None and "group" not in plan:
        return None
    sources: dict[str, str | None] = dict(plan)
    if spec.keep_extra:
        used = set(plan.values())
        sources.update({h: h for h in header if h not in used and h not in sources})
    for name, value in src.constants.items():
        if not isinstance(value, str):
            return None
        sources[name] = None
    if len({n.lower() for n in sources}) != len(sources):
        return None
    fields = dict(zip(header, schema))
    cols = [_Col(name, spec.column(name) if name in spec.names else None, file_col,
                 _literal(src.constants[name]) if file_col is None else _quote(fields[file_col].name),
                 None if file_col is None else fields[file_col].type) for name, file_col in sources.items()]
    return cols if all(_typed(c, False) is not None for c in cols) else None


def _allowed_map(con: duckdb.DuckDBPyConnection, base: str, col: _Col, column: Column) -> tuple[str, str] | None:
    """For a column with an allowed list: SQL of its typed value and of 'outside the list', from its distinct values
    typed by the pandas rules (`cvm.quality.coerce`, lower case); None when it has too many distinct values."""
    distinct = con.sql(f"SELECT DISTINCT {col.raw} AS v FROM {base} LIMIT {MAX_ALLOWED_DISTINCT + 1}")
    distinct = distinct.to_arrow_table().column("v").to_pandas(types_mapper={pa.string(): pd.StringDtype()}.get)
    if len(distinct) > MAX_ALLOWED_DISTINCT or distinct.str.contains("\x00", regex=False).any():
        return None
    values = distinct.dropna().astype("string")
    text = values.str.strip()
    present = text != ""
    lowered = coerce(column, values, text, {}).str.lower()
    outside = present & ~lowered.isin(column.allowed)
    cases = " ".join(f"WHEN {_literal(v)} THEN {_literal(w)}" for v, w in zip(values[~outside], lowered[~outside])
                     if pd.notna(w))
    typed = f"CASE {col.raw} {cases} END" if cases else "CAST(NULL AS VARCHAR)"
    bad = ", ".join(_literal(v) for v in values[outside])
    return typed, (f"COALESCE({col.raw} IN ({bad}), FALSE)" if bad else "FALSE")


def validate_parquet(src: SourceConfig, as_of: date) -> Validated | None:
    """Validate a Parquet source in DuckDB (see the module docstring); None when the pandas path must be used."""
    if file_kind(src.path) != "parquet" or not src.path.is_file() or src.path.stat().st_size == 0:
        return None
    try:
        schema = pq.read_schema(src.path)
        rows_read = pq.ParquetFile(src.path).metadata.num_rows
    except (pa.ArrowException, OSError):  # the pandas path reports it
        return None
    cols = _columns(src, schema) if rows_read else None
    if cols is None:
        return None
    table, spec = src.table, TABLES[src.table]
    base = f"read_parquet({_literal(str(src.path))}, file_row_number = true)"
    with duckdb.connect() as con:
        texts = [c for c in cols if c.trimmed_text]
        guards = con.sql(f"SELECT {', '.join(f'bool_or({_spaced(c)})' for c in texts) or 'NULL'} FROM {base}"
                             ).fetchall()[0]
        spaced = {c.name: bool(g) for c, g in zip(texts, guards)}
        typed, present = {}, {}
        for c in cols:
            typed[c.name], present[c.name] = _typed(c, spaced.get(c.name, False))
        masks: dict[str, str] = {}  # rejection reasons in priority order, as `cvm.quality.validate` lists them
        counted: dict[str, str] = {}  # counts over all rows: values set missing, flags, failures, missing integers
        for col in (c for column in spec.columns for c in cols if c.name == column.name):
            column = col.column
            if column.allowed is not None:
                allowed = _allowed_map(con, base, col, column)
                if allowed is None:
                    return None
                typed[col.name], outside = allowed
                if outside != "FALSE":
                    if column.required:
                        masks[f"{column.name} not one of {', '.join(column.allowed)}"] = outside
                    counted["coerced:" + column.name] = outside
                    counted["present:" + column.name] = present[col.name]
            if column.kind == "id":  # '.0' alone fails to parse: the pandas path has the rules and messages for it
                counted["failed:" + column.name] = f"{_trim(col, spaced.get(col.name, False))} = '.0'"
            if column.required:
                masks[f"missing {column.name}"] = f"NOT ({present[col.name]})"
        names = list(typed)
        if table == "transactions":
            if "order_id" not in names:
                typed["order_id"] = "'row-' || CAST(file_row_number + 1 AS VARCHAR)"
            if "amount" not in names:
                quantity, price = typed["quantity"], typed["unit_price"]
                typed["amount"] = f"CASE WHEN isnan({quantity} * {price}) THEN NULL ELSE {quantity} * {price} END"
                masks["missing quantity or unit_price (amount = quantity x unit_price)"] = \
                    f"{quantity} IS NULL OR {price} IS NULL"
                masks["non-numeric amount"] = f"isnan({quantity} * {price})"
            is_return = [f"COALESCE({typed['amount']} < 0, FALSE)"]
            if "quantity" in typed:
                is_return.append(f"COALESCE({typed['quantity']} < 0, FALSE)")
            cancellation = None
            if src.cancellation_prefix:
                cancellation = f"COALESCE(starts_with({typed['order_id']}, {_literal(src.cancellation_prefix)}), FALSE)"
                is_return.append(cancellation)
                counted["flag:cancellation_rows_read"] = cancellation
            typed["is_return"] = " OR ".join(is_return)
            counted["flag:return_rows_read"] = typed["is_return"]
            if cancellation:
                typed["is_cancellation"] = cancellation
            masks["future order_date (after as_of)"] = f"{typed['order_date']} > {_timestamp(as_of)}"
        if table == "contacts" and "contact_date" in typed:
            masks["future contact_date (after as_of)"] = f"{typed['contact_date']} > {_timestamp(as_of)}"
        if table == "contacts" and "customer_id" in names:
            masks["missing customer_id"] = f"{typed['customer_id']} IS NULL"
        for c in cols:
            if c.arrow is not None and pa.types.is_integer(c.arrow):
                counted["nulls:" + c.file_col] = f"{c.raw} IS NULL"
        totals = dict(zip(counted, con.sql(
            f"SELECT {', '.join(f'count_if({e})' for e in counted.values()) or 'NULL'} FROM {base}").fetchall()[0]))
        if any(v for k, v in totals.items() if k.startswith("failed:")) or any(
                v and v == totals["present:" + k[8:]] for k, v in totals.items() if k.startswith("coerced:")):
            return None
        labels = list(masks)
        code = "CASE " + " ".join(f"WHEN {m} THEN {i}" for i, m in enumerate(masks.values(), start=1)) + " ELSE 0 END"
        found = con.sql(f"SELECT r, code FROM (SELECT file_row_number AS r, {code} AS code FROM {base}) "
                            "WHERE code > 0 ORDER BY r").fetchnumpy()
        positions, codes = found["r"].astype(np.int64), found["code"].astype(np.int64)
        keys = duplicate_key(table, list(typed))
        if keys:
            labels.append(duplicate_label(table, keys))
            repeated = np.setdiff1d(_duplicate_rows(con, src, base, typed, keys), positions)
            positions = np.concatenate([positions, repeated])
            codes = np.concatenate([codes, np.full(len(repeated), len(labels))])
            order = np.argsort(positions, kind="stable")
            positions, codes = positions[order], codes[order]
    if len(positions) == rows_read:
        return None
    nullable_ints = {k[6:] for k, v in totals.items() if k.startswith("nulls:") and v}
    reason = pd.Series(np.asarray(labels, dtype=object)[codes - 1], dtype="string")
    rejected = shape(parquet_rows(src, positions, nullable_ints), src).astype("string").assign(
        reject_reason=reason.array).reset_index(drop=True)
    select = ", ".join(f"{expr} AS {_quote(name)}" for name, expr in typed.items())
    kept_sql = f"SELECT {select} FROM {base}"
    if 0 < len(positions) <= MAX_LISTED_REJECTS:
        kept_sql += f" WHERE file_row_number NOT IN ({', '.join(str(p) for p in positions)})"
    elif len(positions):
        kept_sql += f" POSITIONAL JOIN kept_rows WHERE kept_rows.{KEEP}"
    return Validated(
        table, str(src.path), None, rejected, rows_read, {str(k): int(v) for k, v in reason.value_counts().items()},
        {k[8:]: int(v) for k, v in totals.items() if k.startswith("coerced:") and v},
        {k[5:]: int(v) for k, v in totals.items() if k.startswith("flag:")}, rows_read - len(positions), list(typed),
        kept_sql, positions, lambda: validate(table, load_source(src), as_of, source=src.path, read=src.read,
                                              cancellation_prefix=src.cancellation_prefix).kept)


def _timestamp(as_of: date) -> str:
    """SQL of the first moment after `as_of` (rows dated later are 'future')."""
    return f"TIMESTAMP '{(as_of + timedelta(days=1)).isoformat()}'"


def _duplicate_rows(con: duckdb.DuckDBPyConnection, src: SourceConfig, base: str, typed: dict[str, str],
                    keys: list[str]) -> np.ndarray:
    """Positions of rows equal (in the typed key columns) to an earlier row. Rows are hashed, and only rows whose hash
    repeats (found by sorting the hashes) are compared; equal rows hash alike (NaN is NULL here, -0.0 hashes as 0.0).
    At 20M lines, hashes sorted in numpy take 3.9 s, where DuckDB's GROUP BY on them takes 5.5 s."""
    key_sql = ", ".join(f"{typed[k]} AS {_quote(k)}" for k in keys)
    hashes = con.sql(f"SELECT hash({', '.join(typed[k] for k in keys)}) AS h FROM {base}").fetchnumpy()["h"]
    candidates = hash_repeats(hashes)
    if not candidates.any():
        return np.zeros(0, dtype=np.int64)
    rows = _candidate_rows(src, np.flatnonzero(candidates), key_sql)
    if rows is None:
        con.register("candidate_rows", pa.table({"candidate": candidates}))
        rows_sql = f"SELECT file_row_number AS r, {key_sql} FROM {base} POSITIONAL JOIN candidate_rows " \
                   "WHERE candidate_rows.candidate"
    else:
        con.register("candidate_rows", rows)
        rows_sql = f"SELECT file_row_number AS r, {key_sql} FROM candidate_rows"
    quoted = ", ".join(_quote(k) for k in keys)
    return con.sql(f"""
        SELECT r FROM (SELECT r, row_number() OVER (PARTITION BY {quoted} ORDER BY r) AS n FROM ({rows_sql}))
        WHERE n > 1 ORDER BY r""").fetchnumpy()["r"].astype(np.int64)


def _candidate_rows(src: SourceConfig, rows: np.ndarray, key_sql: str) -> pa.Table | None:
    """The file's rows at these positions (ascending), with the columns `key_sql` names and their `file_row_number`,
    read from the row groups that hold them, one at a time; None when those row groups hold over MAX_CANDIDATE_SHARE
    of the file (then the positional join of the candidate flags to the whole file is cheaper)."""
    file = pq.ParquetFile(src.path)
    starts = np.cumsum([0] + [file.metadata.row_group(g).num_rows for g in range(file.num_row_groups)])
    groups = np.searchsorted(starts, rows, side="right") - 1
    touched = np.unique(groups)
    if (starts[touched + 1] - starts[touched]).sum() > MAX_CANDIDATE_SHARE * starts[-1]:
        return None
    columns = [n for n in file.schema_arrow.names if _quote(n) in key_sql]
    picked = pa.concat_tables([file.read_row_group(int(g), columns=columns).take(rows[groups == g] - starts[g])
                               for g in touched])
    return pa.table({**{n: picked[n] for n in columns}, "file_row_number": pa.array(rows, pa.int64())})
