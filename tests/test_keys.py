"""Customer-id lookups (`cvm.keys`) against the pandas operations they replace."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from cvm.keys import isin_keys, key_positions, per_distinct, repeated_keys, rows_at, text_at


def test_key_lookups_equal_pandas_on_the_demo_ids(demo_dir: Path) -> None:
    """key_positions / isin_keys / rows_at give what pandas' merge and isin give, on the demo's customer ids (Arrow
    strings), with customers missing from the part, ids in another order, integer and boolean columns that a left
    merge turns into float and object, and keys of another type or repeated."""
    ids = pd.read_csv(demo_dir / "customers.csv", usecols=["customer_id"], dtype={"customer_id": "str"})["customer_id"]
    part = ids.sample(frac=0.6, random_state=1).to_frame().reset_index(drop=True)
    part["n"] = np.arange(len(part))
    part["flag"] = part["n"] % 3 == 0
    part["value"] = np.linspace(0, 1, len(part)).astype("float32")
    expected = ids.to_frame().merge(part, on="customer_id", how="left")
    got = pd.concat([ids.to_frame(), rows_at(part.drop(columns="customer_id"),
                                             key_positions(ids, part["customer_id"]))], axis=1)
    pd.testing.assert_frame_equal(got, expected)
    assert (isin_keys(ids, part["customer_id"]) == ids.isin(part["customer_id"]).to_numpy()).all()
    assert (key_positions(ids, ids) == np.arange(len(ids))).all()                      # same keys: no lookup
    assert key_positions(pd.Series(["a", "b", "c"]), ["c", "a", "c"]).tolist() == [1, -1, 0]    # first of a repeat
    assert key_positions(pd.Series([1, 2, 3]), ["1", "3"]).tolist() == [-1, -1, -1]   # text never matches numbers
    assert key_positions(pd.Series([1, 2, 3]), [3.0, 1.5]).tolist() == [-1, -1, 0]
    assert key_positions(pd.Series(["a"]), pd.Series([], dtype=object)).tolist() == [-1]
    assert repeated_keys(ids) == 0 and repeated_keys(pd.Series(["a", "b", "a", None, None])) == 2



def test_key_positions_of_an_index_and_per_distinct() -> None:
    """Keys given as an Index (the policy's customer index) give Index.get_indexer; per_distinct equals the transform
    applied row by row, missing values kept."""
    index = pd.Index(["c", "a", "b"], dtype="string")
    values = pd.Series(["a", "z", "c", "b"], dtype="string")
    assert key_positions(values, index).tolist() == index.get_indexer(values).tolist() == [1, -1, 0, 2]
    chunked = pd.concat([values.iloc[:2], values.iloc[2:]], ignore_index=True)  # Arrow storage in two chunks
    assert key_positions(chunked, pd.Series(index)).tolist() == [1, -1, 0, 2]
    dates = pd.Series(pd.to_datetime(["2024-01-03", None, "2024-01-03", "2024-02-01"]), index=[5, 6, 7, 8])
    expected = dates.dt.to_period("M").dt.start_time
    pd.testing.assert_series_equal(per_distinct(dates, lambda d: d.dt.to_period("M").dt.start_time), expected)


def test_text_at_equals_the_object_array_column() -> None:
    """Fuzzed codes: text_at gives the column pandas makes of the Python strings, on any index when assigned."""
    codes = np.random.default_rng(0).integers(0, 3, 500)
    values = ["control", "treatment", "x"]
    pd.testing.assert_series_equal(text_at(values, codes), pd.Series(np.array(values, dtype=object)[codes]))
    frame = pd.DataFrame({"a": np.arange(500)}, index=np.arange(500) * 7)
    frame["t"] = text_at(values, codes).array
    assert frame["t"].tolist() == [values[c] for c in codes]
