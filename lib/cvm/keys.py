"""Customer-id lookups for million-row tables: positions of ids in a key column, membership, rows at positions, and
a transform worked out once per distinct value.

pandas 3 stores text as Arrow-backed strings; its isin, map, reindex and merge on them convert the keys one by one or
build slow indexes, which costs seconds per call at a million customers. These helpers look keys up in Arrow instead.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def key_positions(values: pd.Series, keys: pd.Series | Sequence[Any]) -> np.ndarray:
    """Position in `keys` of each of `values` (the first where a key repeats), -1 where absent: a hash lookup in
    Arrow. Keys of another kind than the values (not both text, not both integers) are matched by pandas."""
    left, right = _arrow(values), _arrow(pd.Series(keys))
    if len(right) == 0:
        return np.full(len(left), -1, dtype=np.intp)
    if right.type != left.type:
        if not any(kind(left.type) and kind(right.type) for kind in (_is_text, pa.types.is_integer)):
            keys = pd.Series(keys)
            first = ~keys.duplicated().to_numpy()
            found = pd.Index(keys[first]).get_indexer(pd.Series(values))
            return np.where(found >= 0, np.flatnonzero(first)[found], -1)
        right = right.cast(left.type)
    if left.equals(right) and not repeated_keys(right):  # the same keys in the same order: nothing to look up
        return np.arange(len(left))
    return pc.index_in(left, value_set=right).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.intp)


def _arrow(values: pd.Series) -> pa.Array:
    """The values as one Arrow array (Arrow-backed pandas columns may come as several chunks)."""
    array = pa.array(values, from_pandas=True)
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def repeated_keys(keys: pd.Series | pa.Array) -> int:
    """How many keys repeat an earlier one (0 at once for strictly increasing keys, the usual sorted ids)."""
    keys = keys if isinstance(keys, pa.Array) else _arrow(keys)
    if len(keys) < 2 or (keys.null_count == 0 and pc.all(pc.less(keys[:-1], keys[1:])).as_py()):
        return 0
    return len(keys) - pc.count_distinct(keys, mode="all").as_py()


def isin_keys(values: pd.Series, keys: pd.Series | Sequence[Any]) -> np.ndarray:
    """values.isin(keys) as a boolean array, through `key_positions`."""
    return key_positions(values, keys) >= 0


def rows_at(frame: pd.DataFrame, positions: np.ndarray) -> pd.DataFrame:
    """The rows of `frame` at `positions` (from `key_positions`) with a fresh RangeIndex; all missing where the
    position is -1, with the dtypes a left merge gives (integers become float, booleans object)."""
    frame = frame.reset_index(drop=True)
    if (positions < 0).any():
        frame = frame.reindex(range(len(frame) + 1))
        positions = np.where(positions < 0, len(frame) - 1, positions)
    return frame.take(positions).reset_index(drop=True)


#: The text dtype pandas infers for Python strings (Arrow storage, NaN for missing).
TEXT = pd.StringDtype("pyarrow", na_value=np.nan)


def text_at(values: Sequence[str], codes: np.ndarray) -> pd.Series:
    """values[codes] as a text column (an Arrow `take` of the few distinct values, not one Python string per row)."""
    return pd.Series(pa.array(list(values), pa.large_string()).take(pa.array(codes)), dtype=TEXT)


def first_per_key(frame: pd.DataFrame, key_col: str) -> pd.DataFrame:
    """The first row of each key: `frame` itself when no key repeats (drop_duplicates would hash the keys and copy
    the whole frame to drop nothing)."""
    return frame.drop_duplicates(key_col) if repeated_keys(frame[key_col]) else frame


def per_distinct(values: pd.Series, transform: Callable[[pd.Series], pd.Series]) -> pd.Series:
    """`transform` of each value, worked out once per distinct value (contacts repeat a few dates, groups and
    campaigns over millions of rows); missing values stay missing."""
    codes, distinct = pd.factorize(values)
    return transform(pd.Series(distinct)).reindex(codes).set_axis(values.index)
