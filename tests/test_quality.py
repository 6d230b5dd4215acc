"""Row validation: types, rejection reasons with counts, and the errors for columns of the wrong type."""
from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cvm import quality
from cvm.config import SourceConfig
from cvm.contract import TABLES
from cvm.errors import InputError
from cvm.quality import validate
from cvm.sources import load_source

AS_OF = date(2025, 6, 30)
DEMO_AS_OF = date(2026, 6, 30)


def tx(**over) -> pd.DataFrame:
    base = {"customer_id": ["A", "B", None, "D", "E", "E", "F"],
            "order_id": ["1", "2", "3", "4", "5", "5", "C6"],
            "order_date": ["2025-01-01", "2025-01-02", "2025-01-03", "not a date", "2025-01-05", "2025-01-05",
                           "2025-07-15"],
            "amount": ["10.5", "abc", "3", "4", "5", "5", "-6"]}
    base.update(over)
    return pd.DataFrame(base)


def test_each_bad_row_has_its_reason() -> None:
    v = validate("transactions", tx(), AS_OF, source="tx.csv", cancellation_prefix="C")
    assert v.rows_read == 7 and len(v.kept) == 2
    assert v.reasons == {"missing customer_id": 1, "unparseable order_date": 1, "non-numeric amount": 1,
                         "duplicate order line": 1, "future order_date (after as_of)": 1}
    assert set(v.rejected["reject_reason"]) == set(v.reasons)
    assert list(v.kept["customer_id"]) == ["A", "E"]
    assert v.kept["order_date"].dtype.kind == "M" and v.kept["amount"].dtype == "float64"


def test_returns_and_cancellations_flagged() -> None:
    frame = tx(order_date=["2025-01-0%d" % i for i in range(1, 8)], amount=["1", "2", "3", "-4", "5", "6", "-7"],
               customer_id=list("ABCDEFG"), order_id=["1", "2", "3", "4", "5", "6", "C7"])
    v = validate("transactions", frame, AS_OF, cancellation_prefix="C")
    assert v.flagged == {"cancellation_rows_read": 1, "return_rows_read": 2}
    assert list(v.kept["is_return"]) == [False, False, False, True, False, False, True]


def test_wrong_type_column_is_an_error_naming_file_column_and_rows() -> None:
    frame = tx(amount=["a", "b", "c", "d", "1", "2", "e"])
    with pytest.raises(InputError) as err:
        validate("transactions", frame, AS_OF, source="sales.csv")
    assert "column 'amount' in file sales.csv has the wrong type: 5 of 7 values" in str(err.value)
    assert "read.decimal" in str(err.value)


def test_dates_with_a_format_and_decimal_comma() -> None:
    frame = pd.DataFrame({"customer_id": ["A"], "order_id": ["1"], "order_date": ["31/01/2025"],
                          "amount": ["1.234,50"]})
    v = validate("transactions", frame, AS_OF, read={"date_format": "%d/%m/%Y", "decimal": ",", "thousands": "."})
    assert v.kept["amount"].iloc[0] == pytest.approx(1234.5)
    assert v.kept["order_date"].iloc[0] == pd.Timestamp("2025-01-31")


def test_dates_with_different_utc_offsets_are_read_in_utc() -> None:
    """Times with offsets that differ between rows (a daylight-saving change) are converted to UTC, not an error."""
    frame = pd.DataFrame({"customer_id": ["A", "B"], "order_id": ["1", "2"], "amount": ["1", "2"],
                          "order_date": ["2025-03-29 23:30:00+01:00", "2025-03-31 10:00:00+02:00"]})
    v = validate("transactions", frame, AS_OF)
    assert list(v.kept["order_date"]) == [pd.Timestamp("2025-03-29 22:30"), pd.Timestamp("2025-03-31 08:00")]


def test_amount_from_quantity_and_price_rejects_rows_missing_either() -> None:
    """Without an amount column, a row lacking quantity or unit_price is rejected with its reason (amount is required),
    not left to fail the schema check."""
    frame = pd.DataFrame({"customer_id": ["A", "B", "C"], "order_id": ["1", "2", "3"],
                          "order_date": ["2025-01-01"] * 3, "quantity": ["2", None, "1"],
                          "unit_price": ["5", "3", ""]})
    v = validate("transactions", frame, AS_OF, source="lines.csv")
    assert list(v.kept["amount"]) == [10.0]
    assert v.reasons == {"missing quantity or unit_price (amount = quantity x unit_price)": 2}


def test_all_rows_rejected_is_an_error() -> None:
    frame = tx(customer_id=[None] * 7)
    with pytest.raises(InputError, match=r"every one of the 7 rows of file f.csv was rejected \(missing customer_id: 7"):
        validate("transactions", frame, AS_OF, source="f.csv")


def test_customers_consents_and_duplicates() -> None:
    frame = pd.DataFrame({"customer_id": ["A", "B", "B", "C"], "consent_email": ["yes", "0", "1", "maybe"],
                          "signup_date": ["2024-01-01", "x", "2024-01-01", None], "segment_code": ["p", "q", "r", "s"]})
    v = validate("customers", frame, AS_OF)
    assert v.reasons == {"duplicate customer_id": 1}
    assert list(v.kept["consent_email"].astype(object)) == [True, False, pd.NA]
    assert v.coerced == {"consent_email": 1, "signup_date": 1}
    assert "segment_code" in v.kept.columns


def test_contacts_group_values_checked() -> None:
    frame = pd.DataFrame({"campaign_id": ["c"] * 4, "group": ["treatment", "Control", "holdout", "control"],
                          "customer_id": ["1", "2", "3", "4"]})
    v = validate("contacts", frame, AS_OF)
    assert v.reasons == {"group not one of treatment, control": 1}
    assert list(v.kept["group"]) == ["treatment", "control", "control"]
    with pytest.raises(InputError, match=r"none of the 2 values is one of treatment, control.*values.group"):
        validate("contacts", pd.DataFrame({"campaign_id": ["c", "c"], "group": ["A", "B"]}), AS_OF)


def test_ids_read_as_floats_lose_the_decimal() -> None:
    frame = pd.DataFrame({"customer_id": [12346.0, 12347.0], "order_id": ["1", "2"],
                          "order_date": pd.to_datetime(["2025-01-01", "2025-01-02"]), "amount": [1.0, 2.0]})
    v = validate("transactions", frame, AS_OF)
    assert list(v.kept["customer_id"]) == ["12346", "12347"]


def demo_lines_with_planted_problems(demo_dir: Path) -> pd.DataFrame:
    """The demo's transactions plus exact duplicates, a -0.0/0.0 pair, missing values and padded or blank ids."""
    lines = pd.read_parquet(demo_dir / "transactions.parquet")
    zero = lines.iloc[[10, 10]].assign(amount=[0.0, -0.0])
    missing = lines.iloc[[20, 20, 21]].assign(discount=np.nan, store_id=None)
    padded = lines.iloc[[30, 31, 32]].assign(customer_id=[" C_pad ", "", "  "], product_id=["P1.0", "P2", None])
    return pd.concat([lines, lines.iloc[[1, 2, 2, 500]], zero, missing, padded, lines.iloc[[30]]], ignore_index=True)


def test_typed_parquet_validates_like_the_same_rows_as_text(demo_dir: Path, tmp_path: Path) -> None:
    """Typed Parquet columns skip the text round trip: the same rows written as CSV (read as text, the general path)
    give the same kept table, reasons and counts."""
    lines = demo_lines_with_planted_problems(demo_dir)
    lines.to_parquet(tmp_path / "tx.parquet")
    lines.to_csv(tmp_path / "tx.csv", index=False)
    typed, text = (validate("transactions", load_source(SourceConfig(table="transactions", path=tmp_path / name)),
                            DEMO_AS_OF, cancellation_prefix="R") for name in ("tx.parquet", "tx.csv"))
    pd.testing.assert_frame_equal(typed.kept, text.kept, check_exact=True)
    assert typed.reasons == text.reasons and typed.reasons["duplicate order line"] == 7
    assert (typed.coerced, typed.flagged, len(typed.rejected)) == (text.coerced, text.flagged, len(text.rejected))


def test_duplicates_found_like_pandas(demo_dir: Path) -> None:
    """Hash-then-compare finds exactly pandas' duplicated(keep='first'), NaN, missing and -0.0 included; a column
    DuckDB cannot hash alike (objects) falls back to pandas."""
    lines = demo_lines_with_planted_problems(demo_dir)
    keys = list(lines.columns)
    expected = lines.duplicated(keep="first").to_numpy()
    assert expected.sum() == 7
    assert (quality._duplicated(lines, keys) == expected).all()
    mixed = lines.assign(note=pd.Series(["a", 1] * (len(lines) // 2) + ["a"] * (len(lines) % 2), dtype=object))
    assert (quality._duplicated(mixed, keys + ["note"]) == mixed.duplicated(keep="first").to_numpy()).all()


@pytest.mark.parametrize("selection", ["all", "all but a few", "a few", "none", "half at random"])
def test_row_selection_is_loc(demo_dir: Path, selection: str) -> None:
    """Slices for few runs of rows, a take otherwise: the same frame (values, dtypes, index) as frame.loc[mask]."""
    lines = pd.read_parquet(demo_dir / "transactions.parquet").astype({"customer_id": "string"})
    n = len(lines)
    mask = {"all": np.ones(n, bool), "all but a few": ~np.isin(np.arange(n), [0, 7, 8, n - 1]),
            "a few": np.isin(np.arange(n), [3, 4, 900]), "none": np.zeros(n, bool),
            "half at random": np.random.default_rng(1).random(n) < 0.5}[selection]
    pd.testing.assert_frame_equal(quality._rows(lines, mask), lines.loc[mask], check_exact=True)


@pytest.mark.parametrize("seed", range(4))
def test_single_text_key_duplicates_like_pandas(seed: int) -> None:
    """One text key: ids that never repeat (sorted or not) are found without hashing; repeats, missing ids included,
    as pandas' duplicated(keep='first')."""
    rng = np.random.default_rng(seed)
    ids = [f"C{i:05d}" for i in range(300)]
    for values in (ids, list(rng.permutation(ids)), list(rng.choice(ids, 300)), ids[:150] + [None] + ids[150:],
                   [None, *ids, None], list(rng.choice(ids[:5] + [None], 40))):
        frame = pd.DataFrame({"customer_id": pd.Series(values, dtype="str")})
        assert (quality._duplicated(frame, ["customer_id"]) == frame.duplicated(keep="first").to_numpy()).all()


COERCE_VALUES = {
    "float": ["1", "1,5", "1.234,50", "€5", "$ 3", "7 €", "-0", "1e3", "inf", "abc", "", None, "12.5", "0012"],
    "int": ["1980", "1980.0", "19 80", "x", "", None, "-3"],
    "date": ["2025-01-02", "02/01/2025", "2025-01-02 10:00:00", "2025-01-02T10:00:00+02:00",
             "2025-01-03 09:00:00+00:00", "31.12.2024", "bad", "", None],
    "bool": ["yes", "No", "1", "0.0", "x", "oui", "maybe", "", None, "TRUE"],
}


@pytest.mark.parametrize("seed", range(8))
def test_repeated_values_converted_once_like_each_value(seed: int) -> None:
    """A column of few distinct values is converted once per value: the same as converting every value (missing
    values, currencies, decimal commas, date formats and offsets, flags)."""
    rng = np.random.default_rng(seed)
    columns = {"float": TABLES["customers"].column("acquisition_cost"), "int": TABLES["customers"].column("birth_year"),
               "date": TABLES["customers"].column("signup_date"), "bool": TABLES["customers"].column("consent_email")}
    read = [{}, {"decimal": ",", "thousands": "."}, {"date_format": "%d/%m/%Y"}, {"date_format": "%Y-%m-%d"}][seed % 4]
    for kind, column in columns.items():
        pool = COERCE_VALUES[kind] if seed < 4 else [v for v in COERCE_VALUES[kind] if v is None or "+" not in v]
        raw = pd.Series(rng.choice(np.array(pool, dtype=object), 500), dtype="str", index=np.arange(500) + 7)
        text = quality._text(raw)
        assert quality._repeats(text)
        try:
            want = quality._convert(column, raw, text, read)
        except ValueError as exc:
            with pytest.raises(type(exc)):
                quality.coerce(column, raw, text, read)
            continue
        pd.testing.assert_series_equal(quality.coerce(column, raw, text, read), want, check_exact=True)
