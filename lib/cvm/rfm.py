"""RFM scores, named segments (rules as data in `rules/rfm_segments.yaml`), segment tables and pair heat maps.

Scores are rank based: score = 1 + floor(bins x share of customers with a strictly lower value), so ties share a score,
the lowest value always scores 1 and skew does not matter. Recency is inverted (most recent = bins). With heavy ties
(e.g. 60 % one-time buyers) some scores cannot occur; `RFMResult.warnings` says so in words for the notebook.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from cvm.config import named_item, read_yaml
from cvm.errors import InputError
from cvm.keys import key_positions

DEFAULT_RULES = Path(__file__).parent / "rules" / "rfm_segments.yaml"
OTHER = "Other"
SCORE_KEYS = ("r", "f", "m", "fm")
RULE_KEYS = {"name", "description", "action", "colour", *SCORE_KEYS}
SCORE_COLS = {"r": "r_score", "f": "f_score", "m": "m_score"}


@dataclass(frozen=True)
class RFMResult:
    """Scores frame (id, r_score, f_score, m_score, same index as the features) and plain-language warnings."""

    scores: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    bins: int = 5


@dataclass(frozen=True)
class SegmentRule:
    """One named segment: inclusive score ranges (None = any), description, recommended action and hex colour."""

    name: str
    r: tuple[float, float] | None
    f: tuple[float, float] | None
    m: tuple[float, float] | None
    fm: tuple[float, float] | None
    description: str
    action: str
    colour: str
    bins: int = 5


def _rank_score(values: pd.Series, bins: int) -> np.ndarray:
    below = values.rank(method="min").to_numpy() - 1
    return (1 + np.floor(bins * below / len(values))).astype("int8")


def rfm_scores(features: pd.DataFrame, bins: int = 5, monetary: Literal["total", "mean"] = "total",
               recency_col: str = "recency_days", frequency_col: str = "frequency",
               id_col: str = "customer_id") -> RFMResult:
    """Rank-based R, F, M scores 1..bins (recency inverted); M from monetary_total or monetary_mean."""
    if not 2 <= bins <= 10:
        raise InputError(f"rfm_scores: bins must be between 2 and 10, got {bins}.")
    if monetary not in ("total", "mean"):
        raise InputError(f"rfm_scores: monetary must be 'total' or 'mean', got '{monetary}'.")
    monetary_col = f"monetary_{monetary}"
    cols = {"r": recency_col, "f": frequency_col, "m": monetary_col}
    missing = [c for c in [id_col, *cols.values()] if c not in features]
    if missing:
        raise InputError(f"rfm_scores: features lack column(s) {missing}; use cvm.features.customer_features.")
    if features.empty:
        raise InputError("rfm_scores: the features table has no rows.")
    warnings: list[str] = []
    out = pd.DataFrame({id_col: features[id_col]}, index=features.index)
    for key, col in cols.items():
        values = pd.to_numeric(features[col], errors="coerce")
        bad = values.isna()
        if bad.any():
            raise InputError(f"rfm_scores: column '{col}' has {int(bad.sum())} missing value(s) (e.g. customers "
                             f"without a purchase in the window); drop them or fill them before scoring.")
        out[SCORE_COLS[key]] = _rank_score(-values if key == "r" else values, bins)
        used = np.unique(out[SCORE_COLS[key]])
        if len(used) < bins:
            top_share = values.value_counts(normalize=True).iloc[0]
            top_value = values.value_counts().index[0]
            warnings.append(
                f"{SCORE_COLS[key]}: only {len(used)} of {bins} scores occur ({', '.join(map(str, used))}) because "
                f"{top_share:.0%} of customers share {col} = {top_value:g}; segments needing the missing scores "
                f"stay empty.")
    return RFMResult(out, warnings, bins)


# ---------------------------------------------------------------------------------------------------- segment rules


def _range(value: object, key: str, name: str, bins: int, where: Path) -> tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value, value]
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise InputError(f"{where}: segment '{name}': '{key}' must be [low, high] (inclusive), got {value!r}.")
    low, high = float(value[0]), float(value[1])
    if not 1 <= low <= high <= bins:
        raise InputError(f"{where}: segment '{name}': '{key}' range [{value[0]}, {value[1]}] is outside 1..{bins} "
                         f"or reversed.")
    return low, high


def _grid(rules: list[SegmentRule], bins: int) -> tuple[pd.DataFrame, list[list[str]]]:
    """All score cells (r x f, plus m when a rule uses m or fm) and the rule names that match each cell."""
    keys = ["r", "f"] + (["m"] if any(rule.m or rule.fm for rule in rules) else [])
    cells = pd.DataFrame(list(itertools.product(range(1, bins + 1), repeat=len(keys))),
                         columns=[SCORE_COLS[k] for k in keys])
    if "m_score" not in cells:
        cells["m_score"] = 1
    masks = _masks(cells, rules)
    names = [[r.name for r, m in zip(rules, row) if m] for row in np.column_stack(masks)]
    return cells[[SCORE_COLS[k] for k in keys]], names


def _masks(scores: pd.DataFrame, rules: list[SegmentRule]) -> list[np.ndarray]:
    values = {k: scores[c].to_numpy(dtype=float) for k, c in SCORE_COLS.items()}
    values["fm"] = (values["f"] + values["m"]) / 2
    masks = []
    for rule in rules:
        mask = np.ones(len(scores), dtype=bool)
        for key in SCORE_KEYS:
            rng = getattr(rule, key)
            if rng is not None:
                mask &= (values[key] >= rng[0]) & (values[key] <= rng[1])
        masks.append(mask)
    return masks


def check_rules(rules: list[SegmentRule]) -> list[str]:
    """Problems of a rule set over every score cell: cells no rule covers and cells several rules match."""
    bins = rules[0].bins
    cells, names = _grid(rules, bins)
    label = [" ".join(f"{c[0].upper()}={v}" for c, v in zip(cells.columns, row)) for row in cells.to_numpy()]
    uncovered = [lab for lab, n in zip(label, names) if not n]
    overlap = [f"{lab} ({', '.join(n)})" for lab, n in zip(label, names) if len(n) > 1]
    problems = []
    if uncovered:
        problems.append(f"{len(uncovered)} score cell(s) match no segment and would be '{OTHER}': "
                        f"{'; '.join(uncovered[:10])}{' ...' if len(uncovered) > 10 else ''}.")
    if overlap:
        problems.append(f"{len(overlap)} score cell(s) match several segments (the first wins): "
                        f"{'; '.join(overlap[:10])}{' ...' if len(overlap) > 10 else ''}.")
    return problems


def load_segment_rules(path: Path | None = None, allow_overlap: bool = False) -> list[SegmentRule]:
    """Read and validate segment rules (default: the packaged rfm_segments.yaml). Raises InputError on unknown keys,
    bad ranges or colours, cells matched by no rule, and (unless allow_overlap) cells matched by several rules."""
    where = Path(path) if path is not None else DEFAULT_RULES
    doc = read_yaml(where, "segment rules")
    if not isinstance(doc, dict) or not isinstance(doc.get("segments"), list) or not doc["segments"]:
        raise InputError(f"{where}: expected a mapping with 'bins' and a non-empty list 'segments'.")
    unknown_top = set(doc) - {"bins", "segments"}
    if unknown_top:
        raise InputError(f"{where}: unknown top-level key(s) {sorted(unknown_top)}; allowed: bins, segments.")
    bins = doc.get("bins", 5)
    if not isinstance(bins, int) or not 2 <= bins <= 10:
        raise InputError(f"{where}: 'bins' must be a whole number 2..10, got {bins!r}.")
    rules, seen = [], set()
    for i, item in enumerate(doc["segments"], start=1):
        name = named_item(item, i, RULE_KEYS, "segment", where)
        if name in seen or name == OTHER:
            raise InputError(f"{where}: segment name '{name}' is used twice or reserved.")
        seen.add(name)
        for key in ("description", "action", "colour"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise InputError(f"{where}: segment '{name}': '{key}' is required (text).")
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", item["colour"]):
            raise InputError(f"{where}: segment '{name}': colour '{item['colour']}' is not a hex colour like #1a9850.")
        ranges = {k: _range(item.get(k), k, name, bins, where) for k in SCORE_KEYS}
        if all(v is None for v in ranges.values()):
            raise InputError(f"{where}: segment '{name}' has no score range (r, f, m or fm).")
        rules.append(SegmentRule(name, **ranges, description=item["description"].strip(),
                                 action=item["action"].strip(), colour=item["colour"], bins=bins))
    for problem in check_rules(rules):
        if "match no segment" in problem or not allow_overlap:
            raise InputError(f"{where}: {problem} Edit the ranges so every cell belongs to exactly one segment.")
    return rules


def assign_segments(scores: pd.DataFrame | RFMResult, rules: list[SegmentRule]) -> pd.Series:
    """Segment per customer (first matching rule; 'Other' if none), an ordered categorical in rule order."""
    frame = scores.scores if isinstance(scores, RFMResult) else scores
    needed = ["r_score", "f_score"] + (["m_score"] if any(r.m or r.fm for r in rules) else [])
    missing = [c for c in needed if c not in frame]
    if missing:
        raise InputError(f"assign_segments: scores lack {missing}; use cvm.rfm.rfm_scores.")
    top = int(frame[needed].max().max())
    if top > rules[0].bins:
        raise InputError(f"assign_segments: scores go up to {top} but the rules are written for 1..{rules[0].bins}; "
                         f"score with bins={rules[0].bins}.")
    names = [r.name for r in rules]
    if "m_score" not in frame:
        frame = frame.assign(m_score=1)
    labels = np.select(_masks(frame, rules), names, default=OTHER)
    return pd.Series(pd.Categorical(labels, categories=names + [OTHER], ordered=True), index=frame.index,
                     name="segment")


def segment_colours(rules: list[SegmentRule]) -> dict[str, str]:
    """Segment name -> hex colour (with grey for 'Other'), for consistent charts across notebooks."""
    return {**{r.name: r.colour for r in rules}, OTHER: "#cccccc"}


# ---------------------------------------------------------------------------------------------------- tables


def segment_table(features: pd.DataFrame, scores: pd.DataFrame | RFMResult, segments: pd.Series,
                  id_col: str = "customer_id", revenue_col: str = "monetary_total", orders_col: str = "n_orders",
                  recency_col: str = "recency_days", frequency_col: str = "frequency") -> pd.DataFrame:
    """Per segment, in rule order: customers, share, revenue, share of revenue, AOV, mean recency, mean frequency."""
    frame = scores.scores if isinstance(scores, RFMResult) else scores
    if not frame.index.equals(segments.index):
        raise InputError("segment_table: segments must have the same index as the scores (use assign_segments).")
    missing = [c for c in (id_col, revenue_col, orders_col, recency_col, frequency_col) if c not in features]
    if missing:
        raise InputError(f"segment_table: features lack column(s) {missing}.")
    seg = pd.DataFrame({id_col: frame[id_col].to_numpy(), "segment": segments.array})
    df = features[[id_col, revenue_col, orders_col, recency_col, frequency_col]].merge(seg, on=id_col, how="inner")
    if len(df) != len(seg):
        raise InputError(f"segment_table: {len(seg) - len(df)} scored customer(s) are missing from the features or "
                         f"duplicated; score and tabulate the same features table.")
    out = df.groupby("segment", observed=False).agg(
        customers=(id_col, "size"), revenue=(revenue_col, "sum"), orders=(orders_col, "sum"),
        mean_recency_days=(recency_col, "mean"), mean_frequency=(frequency_col, "mean"))
    out["share_customers"] = out["customers"] / out["customers"].sum()
    total_revenue = out["revenue"].sum()
    out["share_revenue"] = out["revenue"] / total_revenue if total_revenue else np.nan
    out["aov"] = out["revenue"] / out["orders"].where(out["orders"] > 0)
    if OTHER in out.index and out.loc[OTHER, "customers"] == 0:
        out = out.drop(index=OTHER)
    cols = ["customers", "share_customers", "revenue", "share_revenue", "aov", "mean_recency_days", "mean_frequency"]
    return out[cols].reset_index()


def _score_col(name: str) -> str:
    col = SCORE_COLS.get(name, name)
    if col not in SCORE_COLS.values():
        raise InputError(f"pair_matrix: '{name}' is not one of r, f, m (or r_score, f_score, m_score).")
    return col


def pair_matrix(scores: pd.DataFrame | RFMResult, features: pd.DataFrame, x: str, y: str, value: str,
                id_col: str = "customer_id") -> pd.DataFrame:
    """Long table over the full x-score by y-score grid: customers per cell and the mean of `value` (a features
    column, e.g. monetary_total) per cell (NaN for empty cells)."""
    frame = scores.scores if isinstance(scores, RFMResult) else scores
    bins = scores.bins if isinstance(scores, RFMResult) else int(frame[list(SCORE_COLS.values())].max().max())
    xc, yc = _score_col(x), _score_col(y)
    if value not in features:
        raise InputError(f"pair_matrix: features lack column '{value}'.")
    pos = key_positions(frame[id_col], features[id_col])  # an inner join on the customer id, in the scores' order
    found = pos >= 0
    df = pd.DataFrame({xc: frame[xc].to_numpy()[found], yc: frame[yc].to_numpy()[found],
                       value: features[value].to_numpy()[pos[found]]})
    grid = pd.MultiIndex.from_product([range(1, bins + 1)] * 2, names=[xc, yc])
    out = df.groupby([xc, yc]).agg(customers=(value, "size"), mean_value=(value, "mean")).reindex(grid)
    out["customers"] = out["customers"].fillna(0).astype(int)
    return out.rename(columns={"mean_value": f"mean_{value}"}).reset_index()


PAIRS = (("r", "f", "monetary_total"), ("f", "m", "recency_days"), ("r", "m", "frequency"))


def plot_pair_matrices(scores: RFMResult, features: pd.DataFrame,
                       pairs: tuple[tuple[str, str, str], ...] = PAIRS, id_col: str = "customer_id",
                       title: str | None = None) -> Figure:
    """Heat maps of the R x F, F x M and R x M grids: colour = mean of the third variable, numbers = customers.
    The default title states where the largest group of customers sits."""
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4.8), squeeze=False)
    matrices = [pair_matrix(scores, features, x, y, value, id_col=id_col) for x, y, value in pairs]
    rf = matrices[0]
    for ax, (x, y, value), cells in zip(axes[0], pairs, matrices):
        xc, yc = _score_col(x), _score_col(y)
        colour = cells.pivot(index=yc, columns=xc, values=f"mean_{value}").sort_index(ascending=False)
        counts = cells.pivot(index=yc, columns=xc, values="customers").sort_index(ascending=False)
        sns.heatmap(colour, annot=counts, fmt="d", cmap="viridis", ax=ax,
                    cbar_kws={"label": f"mean {value.replace('_', ' ')}"})
        ax.set_xlabel(f"{x.upper()} score (5 = best)")
        ax.set_ylabel(f"{y.upper()} score (5 = best)")
        ax.set_title(f"{x.upper()} x {y.upper()}, colour: mean {value.replace('_', ' ')}", fontsize=11)
    if title is None:
        top = rf.loc[rf["customers"].idxmax()]
        share = top["customers"] / rf["customers"].sum()
        title = (f"{share:.0%} of customers sit in one cell: {pairs[0][0].upper()}={int(top.iloc[0])}, "
                 f"{pairs[0][1].upper()}={int(top.iloc[1])}")
    fig.suptitle(f"{title} (numbers in cells = customers)")
    fig.tight_layout()
    return fig


def rules_table(rules: list[SegmentRule]) -> pd.DataFrame:
    """Segment name, description and recommended action, for the segment table shown to the client."""
    return pd.DataFrame([{"segment": r.name, "description": r.description, "action": r.action} for r in rules])
