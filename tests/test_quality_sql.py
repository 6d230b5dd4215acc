"""The DuckDB validation of Parquet sources (`cvm.quality_sql`) against the pandas path on fuzzed files: the same
written table (values, types, row order), rejected rows, reasons and counts."""
from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from cvm import quality_sql
from cvm.config import SourceConfig
from cvm.customer_db import _write_kept
from cvm.engine import fetch
from cvm.errors import InputError
from cvm.quality import validate
from cvm.quality_sql import WHITESPACE, validate_parquet
from cvm.sources import load_source

AS_OF = date(2025, 6, 30)


def test_whitespace_is_pyarrows_trim_set() -> None:
    points = [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000]
    text = pa.array([chr(cp) for cp in points])
    blank = pc.equal(pc.utf8_trim_whitespace(text), "").to_numpy(zero_copy_only=False)
    assert "".join(chr(cp) for cp, b in zip(points, blank) if b) == WHITESPACE


def _text(rng: np.random.Generator, n: int, pool: list[str], messy: bool, ids: bool = False) -> list[str | None]:
    """Values from `pool`; when messy, a tenth of them missing, blank, padded or odd ('.0' alone only outside ids,
    where it fails to parse and the pandas path takes over)."""
    values = list(rng.choice(pool, n))
    if messy:
        odd = [None, "", "  ", " x ", "\u3000y", "z\xa0", "é", "v.0", " w.0 "] + ([] if ids else [".0"])
        for i in rng.choice(n, n // 10, replace=False):
            values[i] = odd[rng.integers(len(odd))]
    return values


def _numbers(rng: np.random.Generator, n: int) -> np.ndarray:
    values = rng.normal(20, 30, n).round(2)
    values[rng.choice(n, n // 15, replace=False)] = np.nan
    values[rng.choice(n, 3, replace=False)] = [0.0, -0.0, np.inf]
    return values


def _transactions(rng: np.random.Generator, n: int, messy: bool) -> pa.Table:
    customers = [f"C{i:03d}" for i in range(40)]
    dates = pd.Timestamp("2025-01-01") + pd.to_timedelta(rng.integers(0, 220, n), unit="D")
    order_date = pa.array(dates.to_numpy(dtype="datetime64[us]"), mask=rng.random(n) < 0.03)
    columns = {
        "Cust": _text(rng, n, customers + ["C001.0"], messy, ids=True),
        "Invoice": _text(rng, n, [f"O{i}" for i in range(60)] + ["X9", "X10"], messy, ids=True),
        "When": order_date,
        "Qty": pa.array(rng.integers(-2, 5, n), mask=rng.random(n) < 0.05),
        "Price": _numbers(rng, n),
        "product_id": _text(rng, n, ["A", "B", "C"], messy, ids=True),
        "channel": _text(rng, n, ["web", "shop"], messy),
        "Note": _text(rng, n, ["n1", "n2"], False),
        "Score": _numbers(rng, n),
    }
    table = pa.table(columns)
    dup = rng.choice(n, n // 8)
    return pa.concat_tables([table, table.take(dup)])


def _contacts(rng: np.random.Generator, n: int, messy: bool) -> pa.Table:
    return pa.table({
        "customer_id": _text(rng, n, [f"C{i:03d}" for i in range(40)], messy, ids=True),
        "arm": _text(rng, n, ["a", "b"], messy),
        "group": _text(rng, n, ["treatment", "control", "Control", " TREATMENT", "other"] if messy
                       else ["treatment", "control"], messy),
        "contact_date": pa.array((pd.Timestamp("2025-06-01") + pd.to_timedelta(rng.integers(0, 60, n), unit="D"))
                                 .to_numpy(dtype="datetime64[us]")),
        "revenue": _numbers(rng, n),
        "opened": pa.array(rng.random(n) < 0.5, mask=rng.random(n) < 0.1),
    })


def _both(src: SourceConfig) -> None:
    """Both ways of leaving rejected rows out of the written table (their positions listed, or joined by position)."""
    for listed in (0, 10**6):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(quality_sql, "MAX_LISTED_REJECTS", listed)
            _both_once(src)


def _both_once(src: SourceConfig) -> None:
    native = validate_parquet(src, AS_OF)
    assert native is not None and native.kept_sql is not None
    frame = validate(src.table, load_source(src), AS_OF, source=src.path, read=src.read,
                     cancellation_prefix=src.cancellation_prefix)
    assert (native.rows_read, native.n_kept, native.reasons, native.coerced, native.flagged, native.columns) == \
        (frame.rows_read, frame.n_kept, frame.reasons, frame.coerced, frame.flagged, frame.columns)
    pd.testing.assert_frame_equal(native.rejected, frame.rejected, check_exact=True)
    with duckdb.connect() as con:
        _write_kept(con, "a", native)
        _write_kept(con, "b", frame)
        assert con.sql("DESCRIBE a").fetchall() == con.sql("DESCRIBE b").fetchall()
        pd.testing.assert_frame_equal(fetch(con.table("a")), fetch(con.table("b")), check_exact=True)


@pytest.mark.parametrize("seed", range(6))
def test_transactions_match_the_pandas_path(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    messy = seed % 2 == 1
    path = tmp_path / "tx.parquet"
    pq.write_table(_transactions(rng, 400, messy), path, row_group_size=int(rng.integers(20, 500)))  # 1-23 groups
    columns = {"customer_id": "Cust", "order_date": "When", "quantity": "Qty", "unit_price": "Price"}
    if seed % 3:
        columns["order_id"] = "Invoice"
    _both(SourceConfig("transactions", path, columns=columns, cancellation_prefix="X" if seed < 4 else None,
                       constants={"store_id": " S1 "} if seed % 2 else {}))


@pytest.mark.parametrize("seed", range(4))
def test_few_repeated_rows_read_from_their_row_groups(tmp_path: Path, seed: int) -> None:
    """Repeated rows in a few of many row groups: compared after reading those row groups only."""
    rng = np.random.default_rng(seed)
    lines = _transactions(rng, 400, seed % 2 == 1).slice(0, 400)
    at = int(rng.integers(0, 398))
    lines = pa.concat_tables([lines.slice(0, at + 1), lines.slice(at, 1), lines.slice(at + 1)])
    path = tmp_path / "tx.parquet"
    pq.write_table(lines, path, row_group_size=int(rng.integers(10, 60)))
    reads = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quality_sql, "_candidate_rows",
                      lambda *a, read=quality_sql._candidate_rows: reads.append(read(*a)) or reads[-1])
        _both(SourceConfig("transactions", path, columns={"customer_id": "Cust", "order_date": "When",
                                                          "order_id": "Invoice", "quantity": "Qty",
                                                          "unit_price": "Price"}))
    assert reads and all(r is not None for r in reads)


@pytest.mark.parametrize("seed", range(4))
def test_contacts_match_the_pandas_path(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path = tmp_path / "contacts.parquet"
    pq.write_table(_contacts(rng, 300, seed % 2 == 1), path, row_group_size=int(rng.integers(10, 400)))
    _both(SourceConfig("contacts", path, constants={"campaign_id": "CMP-1"}))


def test_amount_column_and_pandas_written_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    frame = _transactions(rng, 300, True).to_pandas().rename(columns={"Price": "amount"})
    path = tmp_path / "tx.parquet"
    frame.to_parquet(path)  # with pandas metadata
    _both(SourceConfig("transactions", path, columns={"customer_id": "Cust", "order_date": "When",
                                                      "order_id": "Invoice"}))


def test_unsupported_files_take_the_pandas_path(tmp_path: Path) -> None:
    path = tmp_path / "tx.parquet"
    pq.write_table(pa.table({"customer_id": [1.0, 2.0], "order_date": pa.array([1, 2], pa.timestamp("us")),
                             "amount": [1.0, 2.0]}), path)
    assert validate_parquet(SourceConfig("transactions", path), AS_OF) is None  # a float id
    pq.write_table(pa.table({"customer_id": [".0", "A"], "order_date": pa.array([1, 2], pa.timestamp("us")),
                             "amount": [1.0, 2.0]}), path)
    assert validate_parquet(SourceConfig("transactions", path), AS_OF) is None  # an id that fails to parse
    pq.write_table(pa.table({"campaign_id": ["A"], "group": ["neither"]}), path)
    assert validate_parquet(SourceConfig("contacts", path), AS_OF) is None  # every group outside: an error
    with pytest.raises(InputError, match="none of the 1 values"):
        validate("contacts", load_source(SourceConfig("contacts", path)), AS_OF)


def test_missing_column_message_is_the_pandas_one(tmp_path: Path) -> None:
    path = tmp_path / "tx.parquet"
    pq.write_table(pa.table({"customer_id": ["A"], "amount": [1.0]}), path)
    with pytest.raises(InputError, match="lacks the required column"):
        validate_parquet(SourceConfig("transactions", path), AS_OF)
