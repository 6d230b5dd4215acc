"""Behavioural personas: scaled features, k chosen by silhouette on a sample, KMeans, profiles and readable names.

Nothing is quadratic in the number of customers: the silhouette is computed on a sample, KMeans is linear (mini-batch
above `MINIBATCH_ABOVE` rows), profiles are group-bys. Names come from `NAME_RULES` (rules as data on the profile
indices, 100 = the base average), first match per persona, most valuable persona first, names unique.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans, MiniBatchKMeans
from threadpoolctl import threadpool_limits

from cvm.errors import InputError
from cvm.keys import key_positions, repeated_keys, rows_at

MINIBATCH_ABOVE = 200_000
#: Behavioural columns used when present; the first five are log1p-transformed (right-skewed, >= 0).
SKEWED = ("recency_days", "frequency", "monetary_total", "monetary_mean", "tenure_days")
RATES = ("return_rate", "discount_share")
MIX_PREFIXES = ("category_share_", "channel_share_")
#: Key variables of a profile (when present), besides all mix shares.
PROFILE_COLS = (*SKEWED, *RATES)
MAX_LEVELS = 12
#: Spreads and base means below this are treated as zero (float32 rounding in the feature shares).
NOISE = 1e-6

#: Naming rules: conditions on profile columns `<variable>_index` (>= / <= a value); first match wins per persona.
NAME_RULES: list[dict] = [
    {"name": "Lapsed big spenders", "when": {"recency_days_index": {">=": 150}, "monetary_total_index": {">=": 150}}},
    {"name": "High-value loyalists", "when": {"monetary_total_index": {">=": 150}, "frequency_index": {">=": 150}}},
    {"name": "Serial returners", "when": {"return_rate_index": {">=": 200}}},
    {"name": "Discount hunters", "when": {"discount_share_index": {">=": 150}}},
    {"name": "Online regulars", "when": {"channel_share_online_index": {">=": 130}, "frequency_index": {">=": 100}}},
    {"name": "Store regulars", "when": {"channel_share_store_index": {">=": 130}, "frequency_index": {">=": 100}}},
    {"name": "App regulars", "when": {"channel_share_app_index": {">=": 130}, "frequency_index": {">=": 100}}},
    {"name": "Recent newcomers", "when": {"tenure_days_index": {"<=": 60}}},
    {"name": "One-off gift buyers", "when": {"frequency_index": {"<=": 80}, "monetary_mean_index": {">=": 130}}},
    {"name": "Big-basket occasionals", "when": {"frequency_index": {"<=": 90}, "monetary_mean_index": {">=": 130}}},
    {"name": "Dormant low spenders", "when": {"recency_days_index": {">=": 130}, "monetary_total_index": {"<=": 70}}},
    {"name": "Frequent small-basket buyers",
     "when": {"frequency_index": {">=": 130}, "monetary_mean_index": {"<=": 90}}},
    {"name": "Steady regulars", "when": {"frequency_index": {">=": 110}}},
    {"name": "Occasional low spenders", "when": {"monetary_total_index": {"<=": 80}}},
]
#: Words for a low / high index of each key variable, used to name personas no rule matches.
LABELS = {"recency_days": ("recent", "lapsed"), "frequency": ("infrequent", "frequent"),
          "monetary_total": ("low-spend", "high-spend"), "monetary_mean": ("small-basket", "big-basket"),
          "tenure_days": ("new", "long-standing"), "return_rate": ("low-return", "high-return"),
          "discount_share": ("full-price", "discount-heavy")}


def _check_id(frame: pd.DataFrame, id_col: str, what: str) -> None:
    if id_col not in frame:
        raise InputError(f"{what}: column '{id_col}' is missing.")
    repeated = repeated_keys(frame[id_col])
    if repeated:
        raise InputError(f"{what}: {repeated} duplicated {id_col}; keep one row per customer.")


def _zscore(values: pd.Series) -> pd.Series:
    values = values.fillna(values.median()).fillna(0.0)
    sd, mean = values.std(ddof=0), values.mean()
    # a spread at float32 rounding level (e.g. an 'other' share that is 1 - sum of the others) is noise, not signal
    return (values - mean) / sd if sd > NOISE * max(1.0, abs(mean)) else values * 0.0


def persona_features(features: pd.DataFrame, customers: pd.DataFrame | None = None,
                     extra_cols: Sequence[str] | None = None, id_col: str = "customer_id") -> pd.DataFrame:
    """Standardised clustering matrix indexed by customer id.

    log1p of the skewed RFM / tenure columns (negatives clipped to 0), return and discount rates, category and channel
    mix, plus `extra_cols` from `customers` (numeric: standardised; text with <= MAX_LEVELS values: one-hot). Every
    column is z-scored (missing -> median, mix shares missing -> 0); each mix or one-hot block is divided by
    sqrt(its number of columns) so that a block weighs like one variable however many categories it has.
    """
    _check_id(features, id_col, "persona_features: features")
    if features.empty:
        raise InputError("persona_features: the features table has no rows.")
    base = features.set_index(id_col)
    out: dict[str, pd.Series] = {}
    for col in SKEWED:
        if col in base:
            out[col] = _zscore(np.log1p(pd.to_numeric(base[col], errors="coerce").clip(lower=0)))
    for col in RATES:
        if col in base and base[col].notna().any():
            out[col] = _zscore(pd.to_numeric(base[col], errors="coerce"))
    blocks = [[c for c in base.columns if c.startswith(p)] for p in MIX_PREFIXES]
    if extra_cols:
        if customers is None:
            raise InputError("persona_features: extra_cols given without a customers table.")
        _check_id(customers, id_col, "persona_features: customers")
        missing = [c for c in extra_cols if c not in customers]
        if missing:
            raise InputError(f"persona_features: customers lack column(s) {missing}.")
        extra = rows_at(customers[list(extra_cols)], key_positions(features[id_col], customers[id_col]))
        extra.index = base.index
        for col in extra_cols:
            if pd.api.types.is_numeric_dtype(extra[col]) and not pd.api.types.is_bool_dtype(extra[col]):
                out[col] = _zscore(extra[col].astype(float))
                continue
            levels = extra[col].astype("string").fillna("unknown")
            if levels.nunique() > MAX_LEVELS:
                raise InputError(f"persona_features: customers column '{col}' has {levels.nunique()} distinct values "
                                 f"(more than {MAX_LEVELS}); group it into fewer bands before using it.")
            dummies = pd.get_dummies(levels, prefix=col, dtype=float)
            base = base.join(dummies)
            blocks.append(list(dummies.columns))
    for block in blocks:
        for col in block:
            out[col] = _zscore(pd.to_numeric(base[col], errors="coerce").fillna(0.0)) / np.sqrt(len(block))
    if not out:
        raise InputError("persona_features: none of the behavioural columns are present; use "
                         "cvm.features.customer_features.")
    return pd.DataFrame(out, index=base.index).astype("float64")


def _kmeans(n_rows: int, k: int, seed: int) -> KMeans | MiniBatchKMeans:
    if n_rows > MINIBATCH_ABOVE:
        return MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096)
    return KMeans(n_clusters=k, random_state=seed, n_init=4)


def choose_k(X: pd.DataFrame | np.ndarray, k_range: Sequence[int] = range(3, 9), sample_size: int = 20_000,
             seed: int = 0) -> pd.DataFrame:
    """Silhouette and inertia per k, on a random sample of at most `sample_size` rows; `chosen` marks the best
    silhouette (the smallest k on ties)."""
    values = np.asarray(X, dtype=float)
    ks = sorted({int(k) for k in k_range})
    if not ks or ks[0] < 2:
        raise InputError(f"choose_k: k_range must hold numbers of clusters >= 2, got {list(k_range)}.")
    if len(values) <= ks[-1]:
        raise InputError(f"choose_k: {len(values)} rows cannot be split into up to {ks[-1]} clusters.")
    rng = np.random.default_rng(seed)
    sample = values[rng.choice(len(values), size=sample_size, replace=False)] if len(values) > sample_size else values
    with threadpool_limits(1, user_api="openmp"):  # on a sample, one thread is faster than OpenMP's overhead
        models = [_kmeans(len(sample), k, seed).fit(sample) for k in ks]
    out = pd.DataFrame({"k": ks, "silhouette": silhouettes(sample, [m.labels_ for m in models]),
                        "inertia": [float(m.inertia_) for m in models], "sample_rows": len(sample)})
    out["chosen"] = out.index == out["silhouette"].idxmax()
    return out


def silhouettes(X: np.ndarray, labellings: Sequence[np.ndarray], block_rows: int = 512) -> list[float]:
    """Mean silhouette (as sklearn.metrics.silhouette_score, Euclidean) of each of several labellings of the same
    rows. The pairwise distances, the O(n^2) part, are computed once for all labellings and, being symmetric, once per
    pair of rows: block by block of block_rows rows, each block of distances summed per cluster of every labelling
    with one matrix product for its rows and one for its columns."""
    n = len(X)
    codes = [np.unique(labels, return_inverse=True)[1].ravel() for labels in labellings]
    sizes = [np.bincount(code) for code in codes]
    if any(not 2 <= len(size) < n for size in sizes):
        raise InputError(f"silhouettes: every labelling needs between 2 and {n - 1} clusters.")
    offsets = np.cumsum([0] + [len(size) for size in sizes])
    member = np.zeros((n, offsets[-1]))  # one column per cluster of every labelling
    for code, offset in zip(codes, offsets):
        member[np.arange(n), offset + code] = 1.0
    norms = np.einsum("ij,ij->i", X, X)
    sums = np.zeros((n, offsets[-1]))
    starts = range(0, n, block_rows)
    for i in starts:
        rows = slice(i, min(i + block_rows, n))
        for j in (j for j in starts if j >= i):
            cols = slice(j, min(j + block_rows, n))
            dist = X[rows] @ X[cols].T
            dist *= -2
            dist += norms[rows, None]
            dist += norms[None, cols]
            np.maximum(dist, 0, out=dist)
            np.sqrt(dist, out=dist)
            if i == j:
                np.fill_diagonal(dist, 0.0)
            sums[rows] += dist @ member[cols]
            if i != j:
                sums[cols] += dist.T @ member[rows]
    rows, out = np.arange(n), []
    for code, size, offset in zip(codes, sizes, offsets):
        per_cluster = sums[:, offset:offset + len(size)]
        with np.errstate(divide="ignore", invalid="ignore"):
            within = per_cluster[rows, code] / (size[code] - 1)
            mean = per_cluster / size
            mean[rows, code] = np.inf
            nearest = mean.min(axis=1)
            score = (nearest - within) / np.maximum(within, nearest)
        out.append(float(np.nan_to_num(score).mean()))
    return out


@dataclass(frozen=True)
class PersonaModel:
    """Fitted clustering: labels per customer (0 = largest persona), the model and the feature columns."""

    labels: pd.Series
    model: KMeans | MiniBatchKMeans
    columns: tuple[str, ...]
    k: int
    order: tuple[int, ...]

    def predict(self, X: pd.DataFrame) -> pd.Series:
        """Persona of new rows built with `persona_features` (same columns)."""
        missing = [c for c in self.columns if c not in X]
        if missing:
            raise InputError(f"PersonaModel.predict: the matrix lacks column(s) {missing}.")
        raw = self.model.predict(X[list(self.columns)].to_numpy(dtype=float))
        remap = np.empty(self.k, dtype=int)
        remap[list(self.order)] = np.arange(self.k)
        return pd.Series(remap[raw], index=X.index, name="persona")


def fit_personas(X: pd.DataFrame, k: int, seed: int = 0) -> PersonaModel:
    """KMeans on all rows (MiniBatchKMeans above MINIBATCH_ABOVE rows); personas numbered by size, largest first."""
    if k < 2 or k >= len(X):
        raise InputError(f"fit_personas: k must be between 2 and the number of rows - 1 ({len(X) - 1}), got {k}.")
    model = _kmeans(len(X), k, seed).fit(X.to_numpy(dtype=float))
    raw = model.labels_
    order = tuple(int(c) for c in np.argsort(-np.bincount(raw, minlength=k), kind="stable"))
    remap = np.empty(k, dtype=int)
    remap[list(order)] = np.arange(k)
    labels = pd.Series(remap[raw], index=X.index, name="persona")
    return PersonaModel(labels, model, tuple(X.columns), k, order)


def profile(features: pd.DataFrame, labels: pd.Series, value_col: str = "monetary_total",
            id_col: str = "customer_id", cols: Sequence[str] | None = None) -> pd.DataFrame:
    """Per persona: customers, share of customers and of value, and for each key variable its mean and index
    (persona mean / base mean x 100). `labels` is indexed by customer id (as from `fit_personas`)."""
    _check_id(features, id_col, "profile: features")
    return _profile(features, _labels_for(features[id_col], labels).to_numpy(), value_col, cols)


def _profile(frame: pd.DataFrame, persona: np.ndarray, value_col: str, cols: Sequence[str] | None) -> pd.DataFrame:
    """`profile` with the persona of every row of `frame` given (NaN: none)."""
    missing = int(pd.isna(persona).sum())
    if missing:
        raise InputError(f"profile: {missing} customer(s) of the features have no persona label; "
                         f"pass the labels of the same customers.")
    cols = list(cols) if cols is not None else [c for c in PROFILE_COLS if c in frame] + [
        c for c in frame.columns if c.startswith(MIX_PREFIXES)]
    numeric = frame[cols].apply(pd.to_numeric, errors="coerce")
    grouped = numeric.groupby(persona)
    out = pd.DataFrame({"customers": grouped.size()})
    out["share_customers"] = out["customers"] / len(frame)
    value = pd.to_numeric(frame[value_col], errors="coerce").clip(lower=0)
    out["share_value"] = value.groupby(persona).sum() / max(float(value.sum()), 1e-12)
    means, base = grouped.mean(), numeric.mean()
    for col in cols:
        out[f"{col}_mean"] = means[col]
        out[f"{col}_index"] = 100 * means[col] / base[col] if abs(base[col]) > NOISE else np.nan
    out.index = out.index.astype(int)
    out.index.name = "persona"
    return out


def _labels_for(ids: pd.Series, labels: pd.Series) -> pd.Series:
    """labels (indexed by customer id) for the customers `ids`, NaN where a customer has none."""
    return rows_at(labels.to_frame(), key_positions(ids, labels.index.to_series())).iloc[:, 0]


def _matches(row: pd.Series, when: dict) -> bool:
    for col, spec in when.items():
        if col not in row or pd.isna(row[col]):
            return False
        for op, value in spec.items():
            if (op == ">=" and not row[col] >= value) or (op == "<=" and not row[col] <= value):
                return False
    return True


def _describe(row: pd.Series) -> str:
    """Fallback name from the two most extreme indices (furthest from 100 on a log scale), e.g. 'Lapsed, infrequent
    customers'."""
    idx = {k: row[f"{k}_index"] for k in LABELS if f"{k}_index" in row and pd.notna(row[f"{k}_index"])}
    if not idx:
        return "Typical customers"
    ranked = sorted(idx, key=lambda k: -abs(np.log(max(idx[k], 1e-6) / 100)))[:2]
    words = [LABELS[k][int(idx[k] >= 100)] for k in ranked]
    return ", ".join(words).capitalize() + " customers"


def name_personas(prof: pd.DataFrame, rules: list[dict] | None = None) -> dict[int, str]:
    """Readable, unique names from a `profile` table: personas in decreasing value share take the first free rule
    that matches; the rest get a name from their most distinctive indices (suffixed 'B', 'C' if still taken)."""
    rules = NAME_RULES if rules is None else rules
    for rule in rules:
        if not isinstance(rule, dict) or not rule.get("name") or not isinstance(rule.get("when"), dict):
            raise InputError(f"name_personas: each rule needs 'name' and 'when' (column -> {{'>=' or '<=': value}}), "
                             f"got {rule!r}.")
        bad = [op for spec in rule["when"].values() for op in spec if op not in (">=", "<=")]
        if bad:
            raise InputError(f"name_personas: rule '{rule['name']}': unknown operator(s) {bad}; use '>=' or '<='.")
    names: dict[int, str] = {}
    taken: set[str] = set()
    for persona in prof.sort_values("share_value", ascending=False).index:
        row = prof.loc[persona]
        name = next((r["name"] for r in rules if r["name"] not in taken and _matches(row, r["when"])), None)
        if name is None:
            name = _describe(row)
            suffix = iter("BCDEFGHIJKLMNOPQRSTUVWXYZ")
            stem = name
            while name in taken:
                name = f"{stem} {next(suffix)}"
        names[int(persona)] = name
        taken.add(name)
    return dict(sorted(names.items()))


def _top_level(values: pd.Series, persona: np.ndarray) -> pd.Series:
    """Most common value per persona with its share, e.g. 'North (34%)'."""
    levels = values.astype("string").fillna("unknown")
    counts = pd.crosstab(persona, levels.to_numpy(), normalize="index")
    top, share = counts.idxmax(axis=1), counts.max(axis=1)
    return top.astype(str) + " (" + (100 * share).round().astype(int).astype(str) + "%)"


def persona_table(features: pd.DataFrame, labels: pd.Series, names: dict[int, str],
                  customers: pd.DataFrame | None = None, predictions: pd.DataFrame | None = None,
                  descriptive_cols: Sequence[str] = ("region", "age_band", "gender"),
                  behavioural_cols: Sequence[str] = ("recency_days", "frequency", "monetary_mean", "monetary_total",
                                                     "return_rate", "discount_share"),
                  predictive_cols: Sequence[str] = ("clv", "churn_risk"), value_col: str = "monetary_total",
                  id_col: str = "customer_id") -> pd.DataFrame:
    """One row per persona with descriptive (most common value), behavioural (mean) and predictive (mean) keys side
    by side; columns absent from the inputs are skipped. `predictions` has id_col and e.g. clv, churn_risk."""
    _check_id(features, id_col, "profile: features")
    ids = features[id_col]
    persona = _labels_for(ids, labels).to_numpy()
    prof = _profile(features, persona, value_col, [c for c in behavioural_cols if c in features])
    out = pd.DataFrame({"persona": [names.get(int(p), str(p)) for p in prof.index], "customers": prof["customers"],
                        "share_customers": prof["share_customers"], "share_value": prof["share_value"]},
                       index=prof.index)
    if customers is not None:
        _check_id(customers, id_col, "persona_table: customers")
        shown = [c for c in descriptive_cols if c in customers]
        cust = rows_at(customers[shown], key_positions(ids, customers[id_col]))
        for col in shown:
            out[col] = _top_level(cust[col], persona)
    for col in behavioural_cols:
        if f"{col}_mean" in prof:
            out[col] = prof[f"{col}_mean"]
    if predictions is not None:
        _check_id(predictions, id_col, "persona_table: predictions")
        shown = [c for c in predictive_cols if c in predictions]
        pred = rows_at(predictions[shown], key_positions(ids, predictions[id_col]))
        for col in shown:
            out[col] = pd.to_numeric(pred[col], errors="coerce").groupby(persona).mean()
    return out.sort_values("share_value", ascending=False)
