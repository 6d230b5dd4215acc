"""Read a client's file (CSV with any delimiter/encoding, CSV.gz, Parquet, Excel) into a contract table.

Reading does three things and no more: open the file with the configured options, rename the client's columns to
contract names (with value maps and constants applied), and fail early and clearly when the file cannot serve the
contract (missing file, unreadable encoding, empty, missing required column). Row-level checks live in `cvm.quality`.
"""
from __future__ import annotations

import difflib
import hashlib
import io
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cvm.config import SourceConfig
from cvm.contract import TABLES, Table
from cvm.errors import InputError

CSV_SUFFIXES = (".csv", ".txt", ".tsv", ".dat", ".csv.gz", ".txt.gz", ".tsv.gz", ".gz")


def file_kind(path: Path) -> str:
    """'parquet', 'excel' or 'csv', from the file name."""
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".xlsx", ".xlsm", ".xls")):
        return "excel"
    return "csv"


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, streamed (for the run manifest)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _csv_options(src: SourceConfig) -> dict:
    read = src.read
    options: dict = {"dtype": str, "keep_default_na": True, "na_values": ["", "NA", "NaN", "nan", "NULL", "null"]}
    sep = read.get("sep", ",")
    if sep in (r"\s+", "whitespace"):
        options["sep"] = r"\s+"
    else:
        options["sep"] = sep
    options["encoding"] = read.get("encoding", "utf-8")
    if "header" in read:
        options["header"] = read["header"]
    if "skiprows" in read:
        options["skiprows"] = read["skiprows"]
    return options


def read_header(src: SourceConfig) -> list[str]:
    """The file's column names, read cheaply, with the same errors as a full read (a header without rows included)."""
    head = read_raw(src, nrows=5)
    rows = pq.ParquetFile(src.path).metadata.num_rows if file_kind(src.path) == "parquet" else len(head)
    if rows == 0:
        raise InputError(f"{src.table}: file {src.path} has a header but no rows.")
    return list(head.columns)


def read_raw(src: SourceConfig, nrows: int | None = None) -> pd.DataFrame:
    """The file as the client wrote it (CSV/Excel as text, Parquet with its own types)."""
    path = src.path
    if not path.is_file():
        raise InputError(f"{src.table}: file not found: {path}. Check sources.{src.table}.path in the configuration.")
    if path.stat().st_size == 0:
        raise InputError(f"{src.table}: file {path} is empty (0 bytes).")
    kind = file_kind(path)
    try:
        if kind == "parquet":
            if nrows is not None:
                return pd.DataFrame(columns=pq.read_schema(path).names)
            # columns handed over one by one, then the decoder's spare memory returned (a large file would hold it)
            frame = pd.read_parquet(path, to_pandas_kwargs={"self_destruct": True, "split_blocks": True})
            pa.default_memory_pool().release_unused()
        elif kind == "excel":
            frame = pd.read_excel(path, sheet_name=src.read.get("sheet", 0), dtype=str, nrows=nrows,
                                  header=src.read.get("header", 0), skiprows=src.read.get("skiprows"))
        else:
            options = _csv_options(src)
            frame = pd.read_csv(path, nrows=nrows, **options)
    except UnicodeDecodeError as exc:
        encoding = src.read.get("encoding", "utf-8")
        raise InputError(f"{src.table}: file {path} cannot be read as {encoding} (byte {exc.start}: {exc.reason}). "
                         f"Set sources.{src.table}.read.encoding, e.g. 'latin-1' or 'cp1252'.") from exc
    except pd.errors.EmptyDataError as exc:
        raise InputError(f"{src.table}: file {path} is empty (no header, no rows).") from exc
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        raise InputError(f"{src.table}: file {path} cannot be read: {exc}. "
                         f"Check sources.{src.table}.read (sep, encoding, sheet).") from exc
    if len(frame.columns) == 0:
        raise InputError(f"{src.table}: file {path} has no columns.")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def column_plan(src: SourceConfig, header: list[str], table: Table | None = None) -> dict[str, str]:
    """Contract name → file column, checking that every required column can be found.

    An unmapped contract column is taken from a file column of the same name (case-insensitive). A required column
    that is neither mapped nor found raises an error that suggests the closest file column.
    """
    table = table or TABLES[src.table]
    lower = {c.lower(): c for c in header}
    plan: dict[str, str] = {}
    for name, file_col in src.columns.items():
        if file_col not in header:
            hint = difflib.get_close_matches(file_col, header, n=1, cutoff=0.5)
            raise InputError(
                f"{src.table}: file {src.path} has no column '{file_col}' (mapped to '{name}' in sources."
                f"{src.table}.columns)." + (f" Did you mean '{hint[0]}'?" if hint else "")
                + f" The file's columns are: {', '.join(header)}.")
        plan[name] = file_col
    for name in table.names:
        if name not in plan and name.lower() in lower and lower[name.lower()] not in plan.values():
            plan[name] = lower[name.lower()]
    derivable = {"amount": {"quantity", "unit_price"}, "group": set()}
    missing = []
    for name in table.required:
        if name in plan or name in src.constants:
            continue
        if name == "amount" and derivable["amount"] <= set(plan):
            continue
        if name == "group" and src.control_arm is not None and "arm" in plan:
            continue
        missing.append(name)
    if missing:
        lines = []
        for name in missing:
            hint = difflib.get_close_matches(name, header, n=1, cutoff=0.4)
            lines.append(f"'{name}'" + (f" (closest file column: '{hint[0]}'; map it with sources.{src.table}."
                                        f"columns.{name}: {hint[0]})" if hint else ""))
        raise InputError(f"{src.table}: file {src.path} lacks the required column(s) {', '.join(lines)}. "
                         f"The file's columns are: {', '.join(header)}.")
    return plan


def load_source(src: SourceConfig) -> pd.DataFrame:
    """The client's file as a frame with contract column names (values still as read; types come in `cvm.quality`)."""
    frame = shape(read_raw(src), src)
    if len(frame) == 0:
        raise InputError(f"{src.table}: file {src.path} has a header but no rows.")
    return frame


def shape(raw: pd.DataFrame, src: SourceConfig) -> pd.DataFrame:
    """Rows of the file as read (`read_raw`) with contract column names, constants and value maps applied."""
    table = TABLES[src.table]
    plan = column_plan(src, list(raw.columns), table)
    frame = pd.DataFrame({name: raw[file_col] for name, file_col in plan.items()}, copy=False)  # copy-on-write
    if table.keep_extra:
        used = set(plan.values())
        for col in raw.columns:
            if col not in used and col not in frame.columns:
                frame[col] = raw[col]
    for name, value in src.constants.items():
        frame[name] = value
    for name, mapping in src.values.items():
        if name not in frame.columns:
            raise InputError(f"{src.table}: sources.{src.table}.values maps column '{name}', which the table does "
                             f"not have. Its columns are: {', '.join(frame.columns)}.")
        frame[name] = frame[name].map(lambda v, m=mapping: m.get(v, v))
    if src.control_arm is not None and "group" not in plan:
        frame["group"] = (frame["arm"].astype(str) == src.control_arm).map({True: "control", False: "treatment"})
    return frame


def parquet_rows(src: SourceConfig, rows: np.ndarray, nullable_ints: set[str]) -> pd.DataFrame:
    """Rows of a Parquet file at these positions (ascending), as `read_raw` gives them from the whole file:
    `nullable_ints` names the integer columns that have missing values somewhere in the file (pandas reads them as
    floats)."""
    schema = pq.read_schema(src.path)
    with duckdb.connect() as con:
        con.register("wanted_rows", pa.table({"r": pa.array(rows, pa.int64())}))
        picked = con.sql("SELECT * EXCLUDE (file_row_number) FROM read_parquet(?, file_row_number = true) "
                         "WHERE file_row_number IN (SELECT r FROM wanted_rows) ORDER BY file_row_number",
                         params=[str(src.path)]).to_arrow_table()
    buffer = io.BytesIO()
    pq.write_table(picked.rename_columns(schema.names).cast(schema), buffer)  # the file's types and pandas metadata
    frame = pd.read_parquet(buffer)
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.astype({c: "float64" for c in nullable_ints})
