"""Tests of cvm.rfm: rank scores on ties and skew, the segment rules as data, segment tables and pair matrices."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from cvm import rfm
from cvm.errors import InputError

matplotlib.use("Agg")


def _features(n: int = 1_000, seed: int = 0) -> pd.DataFrame:
    """Skewed features: 60 % one-time buyers, log-normal spend with a few whales, recency with ties and zeros."""
    rng = np.random.default_rng(seed)
    frequency = np.where(rng.random(n) < 0.6, 1, 1 + rng.geometric(0.3, n))
    total = np.round(rng.lognormal(3, 1.5, n) * frequency, 2)
    total[:3] = [0.0, -5.0, 1e6]  # a free order, a net return, a whale
    return pd.DataFrame({
        "customer_id": [f"C{i:05d}" for i in range(n)],
        "recency_days": rng.integers(0, 60, n).astype(float),
        "frequency": frequency,
        "n_orders": frequency,
        "monetary_total": total,
        "monetary_mean": total / frequency,
    })


def test_scores_on_hand_made_ties() -> None:
    f = pd.DataFrame({"customer_id": list("ABCDEFGHIJ"),
                      "recency_days": [0, 0, 5, 10, 10, 10, 30, 60, 90, 365],
                      "frequency": [1, 1, 1, 1, 1, 1, 2, 2, 3, 10],
                      "monetary_total": [10, 20, 30, 40, 50, 60, 70, 80, 90, 100.0],
                      "monetary_mean": [10] * 10})
    res = rfm.rfm_scores(f)
    s = res.scores.set_index("customer_id")
    assert list(s["m_score"]) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]  # distinct values: equal-sized bins
    assert s.loc["A", "r_score"] == s.loc["B", "r_score"] == 5 and s.loc["J", "r_score"] == 1  # recent = high
    assert s.loc["D", "r_score"] == s.loc["E", "r_score"] == s.loc["F", "r_score"]
    assert set(s.loc[list("ABCDEF"), "f_score"]) == {1}  # one-time buyers all score 1
    assert list(s.loc[["G", "H", "I", "J"], "f_score"]) == [4, 4, 5, 5]
    assert len(res.warnings) == 1 and res.warnings[0].startswith("f_score: only 3 of 5 scores occur (1, 4, 5)")
    assert "60% of customers share frequency = 1" in res.warnings[0]
    assert rfm.rfm_scores(f, monetary="mean").warnings[-1].startswith("m_score: only 1 of 5")


def test_scores_on_skewed_data_are_balanced() -> None:
    res = rfm.rfm_scores(_features(), bins=4)
    s = res.scores
    assert s.index.equals(_features().index) and s[["r_score", "f_score", "m_score"]].isin([1, 2, 3, 4]).all().all()
    shares = s["m_score"].value_counts(normalize=True)
    assert np.allclose(shares, 0.25, atol=0.01)  # the whale and the negatives do not distort rank bins
    assert s.loc[1, "m_score"] == 1 and s.loc[2, "m_score"] == 4
    assert any(w.startswith("f_score") for w in res.warnings)


@pytest.mark.parametrize("kwargs, message", [({"bins": 1}, "bins"), ({"monetary": "max"}, "monetary"),
                                             ({"frequency_col": "nope"}, "nope")])
def test_scores_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        rfm.rfm_scores(_features(20), **kwargs)


def test_scores_reject_missing_values() -> None:
    f = _features(20)
    f.loc[3, "monetary_total"] = np.nan
    with pytest.raises(InputError, match="1 missing"):
        rfm.rfm_scores(f)


def test_default_rules_partition_the_grid() -> None:
    rules = rfm.load_segment_rules()
    names = [r.name for r in rules]
    assert names == ["Champions", "Loyal", "Potential Loyalist", "New", "Promising", "Need Attention",
                     "About to Sleep", "At Risk", "Can't Lose Them", "Hibernating", "Lost"]
    assert rfm.check_rules(rules) == []
    assert all(r.description and r.action and r.colour.startswith("#") for r in rules)
    assert len(set(rfm.segment_colours(rules).values())) == len(rules) + 1


def test_assign_segments_on_known_cells() -> None:
    scores = pd.DataFrame({"customer_id": list("abcdefg"), "r_score": [5, 5, 1, 1, 3, 4, 2],
                           "f_score": [5, 1, 5, 1, 3, 1, 2], "m_score": [1] * 7})
    seg = rfm.assign_segments(scores, rfm.load_segment_rules())
    assert list(seg) == ["Champions", "New", "Can't Lose Them", "Lost", "Need Attention", "Promising", "Hibernating"]
    assert seg.cat.ordered and seg.index.equals(scores.index)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    return path


ONE = "  - {name: A, r: [1, 5], f: [1, 5], description: d, action: a, colour: '#000000'%s}\n"


@pytest.mark.parametrize("body, message", [
    ("bins: 5\nsegments:\n" + ONE % ", rr: [1, 2]", "unknown key"),
    ("bins: 5\nsegments:\n" + ONE.replace("[1, 5], f", "[0, 5], f") % "", "outside 1..5"),
    ("bins: 5\nsegments:\n" + ONE.replace("f: [1, 5]", "f: [2, 5]") % "", "5 score cell.*'Other'"),
    ("bins: 5\nsegments:\n" + ONE % "" + ONE.replace("name: A", "name: B") % "", "several segments"),
    ("bins: 5\nsegments:\n" + ONE.replace("'#000000'", "red") % "", "hex colour"),
    ("bins: 5\nsegments: []\n", "non-empty"),
    ("bins: 5\nsegment: []\n", "non-empty"),
])
def test_rule_validation(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        rfm.load_segment_rules(_write(tmp_path, body))


def test_overlap_allowed_first_match_wins_with_fm(tmp_path: Path) -> None:
    body = ("bins: 3\nsegments:\n"
            "  - {name: Top, r: [3, 3], fm: [2.5, 3], description: d, action: a, colour: '#111111'}\n"
            "  - {name: Rest, r: [1, 3], description: d, action: a, colour: '#222222'}\n")
    rules = rfm.load_segment_rules(_write(tmp_path, body), allow_overlap=True)
    scores = pd.DataFrame({"customer_id": [1, 2, 3], "r_score": [3, 3, 2], "f_score": [3, 2, 3],
                           "m_score": [2, 2, 3]})
    assert list(rfm.assign_segments(scores, rules)) == ["Top", "Rest", "Rest"]
    with pytest.raises(InputError, match="1..3"):
        rfm.assign_segments(pd.DataFrame({"r_score": [5], "f_score": [1], "m_score": [1]}), rules)


def test_segment_table_and_pair_matrix() -> None:
    f = _features()
    res = rfm.rfm_scores(f)
    seg = rfm.assign_segments(res, rfm.load_segment_rules())
    table = rfm.segment_table(f, res, seg)
    assert table["customers"].sum() == len(f) and np.isclose(table["share_customers"].sum(), 1)
    assert np.isclose(table["revenue"].sum(), f["monetary_total"].sum())
    assert list(table["segment"])[:2] == ["Champions", "Loyal"] and "Other" not in set(table["segment"])
    champions = f[seg == "Champions"]
    row = table.set_index("segment").loc["Champions"]
    assert row["aov"] == pytest.approx(champions["monetary_total"].sum() / champions["n_orders"].sum())
    pm = rfm.pair_matrix(res, f, "r", "f", "monetary_total")
    assert len(pm) == 25 and pm["customers"].sum() == len(f)
    cell = pm.query("r_score == 5 and f_score == 1")
    mask = (res.scores["r_score"] == 5) & (res.scores["f_score"] == 1)
    assert cell["mean_monetary_total"].iloc[0] == pytest.approx(f.loc[mask, "monetary_total"].mean())
    assert pm.query("f_score == 2")["customers"].sum() == 0  # impossible with 60 % one-time buyers: NaN mean
    assert pm.query("f_score == 2")["mean_monetary_total"].isna().all()
    fig = rfm.plot_pair_matrices(res, f)
    assert isinstance(fig, Figure) and len(fig.axes) == 6 and "of customers sit in one cell" in fig._suptitle.get_text()


def test_segment_table_rejects_misaligned_segments() -> None:
    f = _features(50)
    res = rfm.rfm_scores(f)
    seg = rfm.assign_segments(res, rfm.load_segment_rules())
    with pytest.raises(InputError, match="same index"):
        rfm.segment_table(f, res, seg.iloc[:-1])
