"""Tests of cvm.lifecycle: gap features by hand, the default stages on customers with known histories, first-match
semantics and clear errors for bad rule files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cvm.errors import InputError
from cvm.lifecycle import assign_lifecycle, lifecycle_inputs, lifecycle_table, load_lifecycle_rules

AS_OF = "2024-12-31"


def _tx() -> pd.DataFrame:
    histories = {
        "NEW": ["2024-11-15"],
        "REACT": ["2022-01-10", "2022-02-10", "2022-03-10", "2024-12-01"],           # back after ~1,000 days
        "REACT2": ["2022-01-01", "2024-12-20"],                                      # two purchases, long gap
        "MONTHLY": [f"2024-{m:02d}-05" for m in range(1, 13) if m != 12] + ["2024-11-30"],
        "MONTHLY_LATE": [f"2023-{m:02d}-15" for m in range(1, 13)] + [f"2024-{m:02d}-15" for m in range(1, 10)],
        "YEARLY": ["2021-06-01", "2022-06-01", "2023-06-01", "2024-06-01"],          # same recency, own rhythm
        "ONCE": ["2024-03-01"],
        "ONCE_OLD": ["2023-06-01"],
        "GONE": ["2021-01-01", "2021-02-01"],
    }
    rows = [(c, f"{c}-{i}", d, 10.0) for c, dates in histories.items() for i, d in enumerate(dates)]
    rows += [("MONTHLY", "MONTHLY-dup", "2024-11-30", 5.0),       # a second order on the same day: one purchase day
             ("RETURNER", "R1", "2024-05-01", -20.0),              # only a return
             ("NEW", "late", "2025-01-05", 10.0)]                  # after as_of: ignored
    df = pd.DataFrame(rows, columns=["customer_id", "order_id", "order_date", "amount"])
    df["order_date"] = pd.to_datetime(df["order_date"])
    return df


@pytest.fixture(scope="module")
def inputs() -> pd.DataFrame:
    return lifecycle_inputs(_tx(), AS_OF).set_index("customer_id")


def test_gap_features_by_hand(inputs: pd.DataFrame) -> None:
    react = inputs.loc["REACT"]
    assert react["n_purchase_days"] == 4 and react["recency_days"] == 30
    assert react["last_gap_days"] == (pd.Timestamp("2024-12-01") - pd.Timestamp("2022-03-10")).days
    assert react["max_gap_days"] == react["last_gap_days"]
    assert react["typical_gap_days"] == pytest.approx(np.median([31, 28, react["last_gap_days"]]))
    assert react["prior_typical_gap_days"] == pytest.approx(29.5)
    assert inputs.loc["MONTHLY", "n_purchase_days"] == 12
    once = inputs.loc["ONCE"]
    assert once["tenure_days"] == once["recency_days"] == 305 and np.isnan(once["last_gap_days"])
    assert np.isnan(inputs.loc["REACT2", "prior_typical_gap_days"])
    assert inputs.loc["NEW", "n_purchase_days"] == 1                 # the 2025 order is after as_of
    assert inputs.loc["RETURNER", "n_purchase_days"] == 0 and np.isnan(inputs.loc["RETURNER", "recency_days"])


def test_default_stages(inputs: pd.DataFrame) -> None:
    """MONTHLY_LATE (107 days, monthly rhythm) is at risk while YEARLY (213 days, yearly rhythm) is active."""
    stage = assign_lifecycle(inputs)
    assert stage.name == "lifecycle_stage" and stage.index.equals(inputs.index)
    assert stage.to_dict() == {
        "NEW": "new", "REACT": "reactivated", "REACT2": "reactivated", "MONTHLY": "active",
        "MONTHLY_LATE": "at_risk", "YEARLY": "active", "ONCE": "at_risk", "ONCE_OLD": "lapsed", "GONE": "lost",
        "RETURNER": "no_purchase"}
    table = lifecycle_table(stage, value=pd.Series(1.0, index=stage.index))
    assert table["stage"].tolist() == ["new", "reactivated", "active", "at_risk", "lapsed", "lost", "no_purchase"]
    assert table["customers"].sum() == len(stage) and table["share_value"].sum() == pytest.approx(1.0)
    assert table.set_index("stage").loc["active", "customers"] == 2


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_first_match_wins_and_catch_all(tmp_path: Path) -> None:
    frame = pd.DataFrame({"recency_days": [10.0, 80.0, 500.0, np.nan]})
    broad_first = load_lifecycle_rules(_write(tmp_path, """
unmatched: none
stages:
  - {name: broad, colour: "#111111", when: {recency_days: {"<=": 100}}}
  - {name: narrow, colour: "#222222", when: {recency_days: {"<=": 50}}}
  - {name: rest, colour: "#333333", when: {}}
"""))
    assert assign_lifecycle(frame, broad_first).tolist() == ["broad", "broad", "rest", "rest"]
    narrow_first = load_lifecycle_rules(_write(tmp_path, """
stages:
  - {name: narrow, colour: "#222222", when: {recency_days: {"<=": 50, ">": 0}}}
  - {name: broad, colour: "#111111", when: {recency_days: {"<=": 100}}}
"""))
    assert assign_lifecycle(frame, narrow_first).tolist() == ["narrow", "broad", "unclassified", "unclassified"]


def test_relative_threshold_clip_and_default(tmp_path: Path) -> None:
    rules = load_lifecycle_rules(_write(tmp_path, """
stages:
  - name: ok
    colour: "#111111"
    when: {recency_days: {"<=": {ref: gap, times: 2, min: 30, max: 100, default: 50}}}
"""))
    frame = pd.DataFrame({"recency_days": [25, 35, 90, 120, 45, 55], "gap": [5, 20, 60, 60, np.nan, np.nan]})
    # thresholds: clip(10)=30, 40, clip(120)=100, 100, default 50, 50
    assert assign_lifecycle(frame, rules).tolist() == ["ok", "ok", "ok", "unclassified", "ok", "unclassified"]


@pytest.mark.parametrize("text, message", [
    ("stages: []", "non-empty list"),
    ("stages: [{name: a, colour: '#111111', when: {}}]\nextra: 1", "unknown top-level"),
    ("stages: [{name: a, colour: '#111111', when: {x: {'=>': 1}}}]", "unknown operator '=>'"),
    ("stages: [{name: a, colour: '#111111', when: {}}, {name: a, colour: '#111111', when: {}}]", "used twice"),
    ("stages: [{name: a, colour: red, when: {}}]", "not a hex colour"),
    ("stages: [{name: a, colour: '#111111'}]", "'when' must map"),
    ("stages: [{name: a, colour: '#111111', when: {x: {'<': {times: 2}}}}]", "needs 'ref'"),
    ("stages: [{name: a, colour: '#111111', when: {x: {'<': {ref: g, min: 9, max: 1}}}}]", "min 9 is above max 1"),
    ("stages: [{name: a, colour: '#111111', when: {x: {'<': ten}}}]", "must be a number"),
    ("stages: [{name: a, colour: '#111111', when: {x: 3}}]", "must be {operator: threshold}"),
    ("stages: [{name: a, colour: '#111111', when: {}, typo: 1}]", "unknown key"),
    ("stages: [{name: a, when: {}}\n", "cannot read"),
])
def test_bad_rule_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_lifecycle_rules(_write(tmp_path, text))


def test_missing_columns_named() -> None:
    with pytest.raises(InputError, match=r"lacks column\(s\) \['last_gap_days', 'n_purchase_days'"):
        assign_lifecycle(pd.DataFrame({"recency_days": [1.0], "tenure_days": [1.0]}))
