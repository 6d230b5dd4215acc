"""Response and uplift models: who converts if contacted, who would have converted anyway, and what an offer earns.

Trained on past campaigns with control groups (the `contacts` table, one row per customer per campaign, joined with the
customer's features at contact time and the offer's type / channel / discount), so that one model scores every offer.

* `fit_uplift_model` -> `UpliftModel.predict`: P(convert | contacted), P(convert | not contacted), uplift and
  expected order value per customer for one offer (two-model / T-learner, or the X-learner of Kuenzel et al. 2019,
  PNAS 116:4156).
* `load_priors` / `segment_priors` / `score_offer`: where there is no history for an offer, the estimate comes from a
  prior table (segment x campaign type x discount); every estimate carries `source` = "model" | "prior".
* `incremental_margin`, `score_discounts`, `best_discount` / `segment_discounts`: the money, and the discount level
  that maximises it.
* Metrics: `uplift_curve`, `qini_curve`, `qini_coefficient`, `auuc`, `uplift_at_k`, `calibration_table`, plots, and
  `holdout_by_campaign` (validation on held-out campaigns). `fit_response_model` is the plain response model.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split

from cvm.config import read_yaml
from cvm.contract import CAMPAIGN_TYPES
from cvm.errors import InputError
from cvm.keys import per_distinct

Method = Literal["two_model", "x_learner"]
Calibration = Literal["isotonic", "sigmoid", "none"]

#: offer attributes that are features of the model and are set from the offer dict at scoring time
OFFER_COLS = ("type", "channel", "discount_pct")
#: the default prior table shipped with the package
DEFAULT_PRIORS = Path(__file__).with_name("rules") / "uplift_priors.yaml"
#: columns a prior table must have; `uplift_shrunk` (optional) is used instead of `uplift` where it is given
PRIOR_COLUMNS = ("segment", "campaign_type", "discount_pct", "rate_control", "uplift")
#: the segment value in a prior table that applies to every segment without a row of its own
ANY_SEGMENT = "*"
#: HistGradientBoosting handles at most 255 levels per categorical feature; rarer levels are scored as missing
MAX_LEVELS = 250
#: fewest converters (and non-converters) per arm needed to fit the arm's model
MIN_CLASS = 10
#: fewest converters with a value needed to fit the order-value regressor (else their mean is used)
MIN_VALUE_ROWS = 50
#: clip of the X-learner's propensity estimate, so a tiny arm share never gets all the weight
PROPENSITY_CLIP = (0.05, 0.95)
#: gradient-boosting settings of every model here: regularised for weak signals, early stopping on 15 % of the rows
BOOSTING: dict[str, Any] = {"learning_rate": 0.05, "max_iter": 200, "max_leaf_nodes": 15, "min_samples_leaf": 50,
                            "l2_regularization": 1.0, "early_stopping": True, "validation_fraction": 0.15,
                            "n_iter_no_change": 20}
TRUE_TEXT = {"1", "1.0", "true", "yes", "y", "t", "treatment", "treated"}
FALSE_TEXT = {"0", "0.0", "false", "no", "n", "f", "control"}


# --------------------------------------------------------------------------------------------------------------------
# input checks and feature encoding
# --------------------------------------------------------------------------------------------------------------------

def _require(frame: pd.DataFrame, columns: Sequence[str], table: str, hint: str = "") -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{table}: missing column(s) {missing} ({len(frame)} rows; columns present: "
                         f"{list(frame.columns)[:20]}). {hint or 'Rename or add them, or pass other column names.'}")
    if frame.empty:
        raise InputError(f"{table}: the table has no rows. Pass a table with at least one row.")


def _binary(series: pd.Series, table: str, column: str) -> np.ndarray:
    """0/1 from bool, 0/1 numbers or yes/no, true/false, treatment/control text; anything else is an InputError."""
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        values = pd.to_numeric(series, errors="coerce").astype("float64")
        bad = ~values.isin([0.0, 1.0])
        out = values.to_numpy()
    else:
        text = series.astype("string").str.strip().str.lower()
        bad = ~(text.isin(TRUE_TEXT) | text.isin(FALSE_TEXT)).fillna(False)
        out = text.isin(TRUE_TEXT).fillna(False).to_numpy(dtype="float64")
    if bad.any():
        examples = series[bad.to_numpy()].astype("string").unique()[:5].tolist()
        raise InputError(f"{table}: column '{column}' has {int(bad.sum())} of {len(series)} rows that are not "
                         f"yes/no, 1/0 or treatment/control (e.g. {examples}). Fix or drop those rows.")
    return out.astype("int8")


def _both_arms(treated: np.ndarray, table: str, column: str) -> None:
    n_t = int(treated.sum())
    if n_t == 0 or n_t == len(treated):
        raise InputError(f"{table}: column '{column}' has {n_t} treated and {len(treated) - n_t} control rows; an "
                         "uplift model needs both. Include the campaigns' control groups.")


@dataclass(frozen=True)
class _Encoder:
    """Features as a float matrix: numbers as they are, text/categories as codes of the levels seen in training."""

    features: tuple[str, ...]
    levels: dict[str, tuple[str, ...]]

    @classmethod
    def fit(cls, frame: pd.DataFrame, features: Sequence[str]) -> _Encoder:
        levels: dict[str, tuple[str, ...]] = {}
        for col in features:
            s = frame[col]
            if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
                counts = s.dropna().astype("string").value_counts()
                levels[col] = tuple(sorted(counts.index[:MAX_LEVELS]))
        return cls(tuple(features), levels)

    @property
    def categorical(self) -> np.ndarray:
        return np.array([c in self.levels for c in self.features])

    def transform(self, frame: pd.DataFrame, table: str) -> np.ndarray:
        _require(frame, self.features, table, "The model was trained on these features; the customers must have them.")
        cols = []
        for col in self.features:
            s = frame[col]
            if col in self.levels:   # coded once per distinct value (scoring repeats a few offer levels)
                levels = list(self.levels[col])
                codes = per_distinct(s, lambda d, levels=levels: pd.Series(
                    pd.Categorical(d.astype("string"), categories=levels).codes)).to_numpy("float64", na_value=np.nan)
                cols.append(np.where(codes < 0, np.nan, codes))
            else:
                values = pd.to_numeric(s.astype("float64") if pd.api.types.is_bool_dtype(s) else s, errors="coerce")
                bad = values.isna() & s.notna()
                if bad.any():
                    raise InputError(f"{table}: feature '{col}' was numeric in training but {int(bad.sum())} rows "
                                     "here are not numbers. Fix the column's values or type.")
                cols.append(values.to_numpy(dtype="float64"))
        return np.column_stack(cols) if cols else np.empty((len(frame), 0))


def _classifier(encoder: _Encoder, seed: int, calibration: Calibration,
                monotone: Mapping[str, int] | None, max_iter: int | None = None) -> Any:
    cst = [int((monotone or {}).get(c, 0)) for c in encoder.features]
    base = HistGradientBoostingClassifier(**{**BOOSTING, "max_iter": max_iter or BOOSTING["max_iter"]},
                                          categorical_features=encoder.categorical, monotonic_cst=cst,
                                          random_state=seed)
    if calibration == "none":
        return base
    return CalibratedClassifierCV(base, method=calibration, cv=StratifiedKFold(3, shuffle=True, random_state=seed))


def _regressor(encoder: _Encoder, seed: int) -> HistGradientBoostingRegressor:
    return HistGradientBoostingRegressor(**BOOSTING, categorical_features=encoder.categorical, random_state=seed)


def _check_classes(y: np.ndarray, what: str) -> None:
    n_pos = int(y.sum())
    if min(n_pos, len(y) - n_pos) < MIN_CLASS:
        raise InputError(f"history: the {what} rows have {n_pos} converters and {len(y) - n_pos} non-converters; "
                         f"at least {MIN_CLASS} of each are needed. Add campaigns or use the prior table.")


def check_arms(history: pd.DataFrame, treatment_col: str = "group",
               outcome_col: str = "converted") -> tuple[np.ndarray, np.ndarray]:
    """(treated, converted) as 0/1 arrays, checked as an uplift model needs them: both arms present, each with at
    least MIN_CLASS converters and non-converters; InputError otherwise."""
    treated = _binary(history[treatment_col], "history", treatment_col)
    _both_arms(treated, "history", treatment_col)
    y = _binary(history[outcome_col], "history", outcome_col)
    _check_classes(y[treated == 1], "treated")
    _check_classes(y[treated == 0], "control")
    return treated, y


def offers_seen(history: pd.DataFrame, treated: np.ndarray, offer_cols: Sequence[str]) -> pd.DataFrame:
    """Treated and control row counts of the history per combination of its offer columns (e.g. type, channel,
    discount_pct); one row of totals without offer columns. The input of `has_history`."""
    if not offer_cols:
        return pd.DataFrame({"n_treated": [int(treated.sum())], "n_control": [int((treated == 0).sum())]})
    grouped = history.assign(_t=treated).groupby(list(offer_cols), dropna=False)["_t"]
    return grouped.agg(n_treated="sum", n_control=lambda s: int((s == 0).sum())).reset_index()


def has_history(seen: pd.DataFrame, offer: Mapping[str, Any]) -> bool:
    """True when the training data (`offers_seen`) had treated and control rows for this offer's categorical
    attributes (type, channel) and the offer's discount lies within the discounts seen for them: a model trained on
    it is not extrapolating."""
    keys = [c for c in seen.columns if c in offer and c not in ("discount_pct", "n_treated", "n_control")]
    rows = seen[(seen["n_treated"] > 0) & (seen["n_control"] > 0)]
    for col in keys:
        rows = rows[rows[col].astype("string") == str(offer[col])]
    if rows.empty:
        return False
    if "discount_pct" in seen.columns and "discount_pct" in offer:
        return bool(rows["discount_pct"].min() <= float(offer["discount_pct"]) <= rows["discount_pct"].max())
    return True


# --------------------------------------------------------------------------------------------------------------------
# the uplift model
# --------------------------------------------------------------------------------------------------------------------

@dataclass
class UpliftModel:
    """A fitted uplift model; `predict` scores customers for one offer. Build it with `fit_uplift_model`."""

    method: Method
    encoder: _Encoder
    mu_treated: Any
    mu_control: Any
    tau_treated: Any | None
    tau_control: Any | None
    propensity: Any | None
    value_model: HistGradientBoostingRegressor | float | None
    offers_seen: pd.DataFrame
    n_treated: int
    n_control: int
    features: list[str] = field(default_factory=list)

    def _with_offer(self, customers: pd.DataFrame, offer: Mapping[str, Any] | None) -> pd.DataFrame:
        used = {k: v for k, v in (offer or {}).items() if k in self.features}
        return customers.assign(**used) if used else customers

    def predict(self, customers: pd.DataFrame, offer: Mapping[str, Any] | None = None,
                order_value_col: str | None = None) -> pd.DataFrame:
        """Per customer (same index): p_treated, p_control, uplift, expected_order_value, source="model".

        `offer` sets the offer features (e.g. {"type": "retention", "channel": "email", "discount_pct": 10}) on every
        customer; keys that are not model features are ignored. expected_order_value is `order_value_col` of the
        customers when given, else the order-value regressor's estimate, else NaN (model fitted with value_col=None).
        For the X-learner, p_control is the control model and p_treated = clip(p_control + tau, 0, 1), so the
        three columns always satisfy uplift = p_treated - p_control.
        """
        frame = self._with_offer(customers, offer)
        x = self.encoder.transform(frame, "customers")
        p_control = self.mu_control.predict_proba(x)[:, 1]
        if self.method == "two_model":
            p_treated = self.mu_treated.predict_proba(x)[:, 1]
        else:
            g = np.clip(self.propensity.predict_proba(x)[:, 1], *PROPENSITY_CLIP)
            tau = g * self.tau_control.predict(x) + (1 - g) * self.tau_treated.predict(x)
            p_treated = np.clip(p_control + tau, 0.0, 1.0)
        if order_value_col is not None:
            _require(customers, [order_value_col], "customers")
            value = pd.to_numeric(customers[order_value_col], errors="coerce").to_numpy(dtype="float64")
        elif isinstance(self.value_model, HistGradientBoostingRegressor):
            value = np.maximum(self.value_model.predict(x), 0.0)
        else:
            value = np.full(len(frame), np.nan if self.value_model is None else self.value_model)
        return pd.DataFrame({"p_treated": p_treated, "p_control": p_control, "uplift": p_treated - p_control,
                             "expected_order_value": value, "source": "model"}, index=customers.index)

    def has_history(self, offer: Mapping[str, Any]) -> bool:
        """`has_history` of the training data: the model has seen this offer's type, channel and discount range."""
        return has_history(self.offers_seen, offer)


def fit_uplift_model(history: pd.DataFrame, features: Sequence[str], treatment_col: str = "group",
                     outcome_col: str = "converted", value_col: str | None = "revenue", method: Method = "two_model",
                     seed: int = 0, calibration: Calibration = "isotonic", monotone: Mapping[str, int] | None = None,
                     offer_cols: Sequence[str] = OFFER_COLS) -> UpliftModel:
    """Fit P(convert | treated, x) and P(convert | control, x) on past campaigns with control groups.

    history: one row per customer per campaign; `features` are the customer's features at contact time plus the offer
    attributes (`offer_cols` that are among the features: campaign type, channel, discount_pct) so one model scores
    every offer. treatment_col: "treatment"/"control" (or 1/0, bool). outcome_col: converted yes/no.
    value_col: revenue of converters, for the order-value regressor (None: no regressor).
    method: "two_model" (one gradient-boosting classifier per arm) or "x_learner" (Kuenzel et al. 2019: imputed
    effects D1 = y - mu0(x) on treated rows and D0 = mu1(x) - y on control rows, one regressor each, combined as
    tau = g(x) tau0 + (1 - g(x)) tau1 with g the treated share estimated from the features).
    calibration: probabilities are calibrated by 3-fold isotonic (or sigmoid) regression unless "none".
    monotone: optional monotone constraints, e.g. {"discount_pct": 1} (more discount never lowers response).
    """
    features = list(features)
    if not features:
        raise InputError("history: no features given. Pass the customer and offer columns the model should use.")
    needed = [*features, treatment_col, outcome_col] + ([value_col] if value_col else [])
    _require(history, needed, "history", "Pass value_col=None to fit without an order-value model."
             if value_col and value_col not in history.columns else "")
    treated, y = check_arms(history, treatment_col, outcome_col)
    encoder = _Encoder.fit(history, features)
    x = encoder.transform(history, "history")
    t1, t0 = treated == 1, treated == 0
    mu1 = _classifier(encoder, seed, calibration, monotone).fit(x[t1], y[t1])
    mu0 = _classifier(encoder, seed, calibration, monotone).fit(x[t0], y[t0])
    tau1 = tau0 = prop = None
    if method == "x_learner":
        d1 = y[t1] - mu0.predict_proba(x[t1])[:, 1]
        d0 = mu1.predict_proba(x[t0])[:, 1] - y[t0]
        tau1 = _regressor(encoder, seed).fit(x[t1], d1)
        tau0 = _regressor(encoder, seed).fit(x[t0], d0)
        prop = _classifier(encoder, seed, "none", None, max_iter=50).fit(x, treated)
    elif method != "two_model":
        raise InputError(f"fit_uplift_model: unknown method '{method}'. Use 'two_model' or 'x_learner'.")
    value_model: HistGradientBoostingRegressor | float | None = None
    if value_col:
        v = pd.to_numeric(history[value_col], errors="coerce").to_numpy(dtype="float64")
        rows = (y == 1) & np.isfinite(v) & (v > 0)
        if rows.sum() >= MIN_VALUE_ROWS:
            value_model = _regressor(encoder, seed).fit(x[rows], v[rows])
        elif rows.any():
            value_model = float(v[rows].mean())
    seen = offers_seen(history, treated, [c for c in offer_cols if c in features])
    return UpliftModel(method, encoder, mu1, mu0, tau1, tau0, prop, value_model, seen, int(t1.sum()), int(t0.sum()),
                       features)


# --------------------------------------------------------------------------------------------------------------------
# priors: estimates for offers without history
# --------------------------------------------------------------------------------------------------------------------

def load_priors(source: str | Path | pd.DataFrame | None = None) -> pd.DataFrame:
    """The prior table, checked: a DataFrame (e.g. the monitoring driver's feedback table), a YAML file with a
    `priors:` list of rows, or None for the package default `rules/uplift_priors.yaml`.

    Columns: segment (a segment name or "*" for every segment), campaign_type, discount_pct (percent), rate_control
    (conversion rate without contact), uplift (rate_treated - rate_control); optional uplift_shrunk (used instead of
    uplift where present: the monitoring driver's shrunk estimate), n_treated, n_control, rate_treated (kept as is).
    """
    if isinstance(source, pd.DataFrame):
        table, where = source.copy(), "prior table"
    else:
        path = Path(source) if source is not None else DEFAULT_PRIORS
        doc = read_yaml(path, "prior table")
        if not isinstance(doc, dict) or not isinstance(doc.get("priors"), list):
            raise InputError(f"{path}: expected a top-level key 'priors' holding a list of rows.")
        table, where = pd.DataFrame(doc["priors"]), str(path)
    _require(table, PRIOR_COLUMNS, where)
    out = table.assign(segment=table["segment"].astype("string"), campaign_type=table["campaign_type"].astype("string"))
    for col in ("discount_pct", "rate_control", "uplift", *(["uplift_shrunk"] if "uplift_shrunk" in out else [])):
        out[col] = pd.to_numeric(out[col], errors="coerce")
    bad = out[["discount_pct", "rate_control", "uplift"]].isna().any(axis=1)
    bad |= ~out["rate_control"].between(0, 1) | ~(out["rate_control"] + out["uplift"]).between(0, 1)
    if bad.any():
        raise InputError(f"{where}: {int(bad.sum())} rows have a missing or impossible discount_pct, rate_control or "
                         "uplift (rates must lie in [0, 1], rate_control + uplift too). Fix those rows.")
    dupes = out.duplicated(["segment", "campaign_type", "discount_pct"])
    if dupes.any():
        raise InputError(f"{where}: {int(dupes.sum())} duplicate (segment, campaign_type, discount_pct) rows. "
                         "Keep one row per combination.")
    return out


def _prior_curve(priors: pd.DataFrame, segment: str, campaign_type: str) -> pd.DataFrame:
    rows = priors[(priors["campaign_type"] == campaign_type) & (priors["segment"] == segment)]
    if rows.empty:
        rows = priors[(priors["campaign_type"] == campaign_type) & (priors["segment"] == ANY_SEGMENT)]
    if rows.empty:
        raise InputError(f"prior table: no row for campaign type '{campaign_type}' (segment '{segment}' or "
                         f"'{ANY_SEGMENT}'). Add rows for it to the prior table.")
    return rows.sort_values("discount_pct")


def segment_priors(customers: pd.DataFrame, offer: Mapping[str, Any],
                   priors: pd.DataFrame | str | Path | None = None, segment_col: str | None = "segment",
                   order_value_col: str | None = None) -> pd.DataFrame:
    """Per customer: p_treated, p_control, uplift, expected_order_value, source="prior", from the prior table.

    The row is the customer's segment and the offer's `type` (else the "*" segment row for that type); the discount is
    interpolated linearly between the table's discount levels and held flat beyond them. uplift_shrunk is used where
    present, else uplift; p_treated = clip(rate_control + uplift, 0, 1). segment_col=None uses the "*" rows only.
    expected_order_value is the customers' `order_value_col` when given, else NaN (the prior table holds rates only).
    """
    if "type" not in offer:
        raise InputError(f"offer {dict(offer)}: needs a 'type' (one of {CAMPAIGN_TYPES}) to look up the prior table.")
    table = load_priors(priors)
    if "uplift_shrunk" in table:
        table = table.assign(uplift=table["uplift_shrunk"].fillna(table["uplift"]))
    if segment_col is not None:
        _require(customers, [segment_col], "customers", "Pass segment_col=None to use the all-segment rows.")
        segments = customers[segment_col].astype("string").fillna(ANY_SEGMENT)
    else:
        segments = pd.Series(ANY_SEGMENT, index=customers.index, dtype="string")
    discount = float(offer.get("discount_pct", 0.0))
    base = pd.Series(np.nan, index=customers.index)
    lift = pd.Series(np.nan, index=customers.index)
    for seg in segments.unique():
        curve = _prior_curve(table, str(seg), str(offer["type"]))
        mask = segments == seg
        base[mask] = np.interp(discount, curve["discount_pct"], curve["rate_control"])
        lift[mask] = np.interp(discount, curve["discount_pct"], curve["uplift"])
    p_treated = np.clip(base + lift, 0.0, 1.0)
    value = (pd.to_numeric(customers[order_value_col], errors="coerce") if order_value_col
             else pd.Series(np.nan, index=customers.index))
    return pd.DataFrame({"p_treated": p_treated, "p_control": base, "uplift": p_treated - base,
                         "expected_order_value": value.astype("float64"), "source": "prior"}, index=customers.index)


def score_offer(customers: pd.DataFrame, offer: Mapping[str, Any], model: UpliftModel | None = None,
                priors: pd.DataFrame | str | Path | None = None, segment_col: str | None = "segment",
                order_value_col: str | None = None) -> pd.DataFrame:
    """The model's estimate when it has history for this offer (`UpliftModel.has_history`), else the prior table's;
    the `source` column says which."""
    if model is not None and model.has_history(offer):
        return model.predict(customers, offer, order_value_col)
    return segment_priors(customers, offer, priors, segment_col, order_value_col)


# --------------------------------------------------------------------------------------------------------------------
# money
# --------------------------------------------------------------------------------------------------------------------

def incremental_margin(p_treated: Any, p_control: Any, order_value: Any, margin_pct: Any, discount_pct: Any,
                       cost_per_contact: Any) -> np.ndarray:
    """Expected extra margin of contacting one customer, in currency (element-wise, numpy broadcasting):

        (p_treated - p_control) * order_value * margin_pct/100
        - discount_pct/100 * order_value * p_treated
        - cost_per_contact

    order_value is the order value before discount; margin_pct is the gross margin on sales before discount. The
    discount is paid to EVERY redeemer, including those who would have bought anyway (dilution), hence p_treated in the
    second term. Percentages are in percent (15 = 15 %).
    """
    pt, pc, v, m, d, c = (np.asarray(a, dtype="float64") for a in
                          (p_treated, p_control, order_value, margin_pct, discount_pct, cost_per_contact))
    for name, arr, low, high in (("p_treated", pt, 0, 1), ("p_control", pc, 0, 1), ("margin_pct", m, 0, 100),
                                 ("discount_pct", d, 0, 100)):
        bad = ~((arr >= low) & (arr <= high))
        if bad.any():
            raise InputError(f"incremental_margin: {int(bad.sum())} values of {name} are missing or outside "
                             f"[{low}, {high}]. Percentages are in percent (15 = 15 %), probabilities in [0, 1].")
    return (pt - pc) * v * m / 100.0 - d / 100.0 * v * pt - c


def score_discounts(customers: pd.DataFrame, offer: Mapping[str, Any], discounts: Sequence[float],
                    model: UpliftModel | None = None, priors: pd.DataFrame | str | Path | None = None,
                    segment_col: str | None = "segment", order_value_col: str | None = None,
                    customer_col: str = "customer_id") -> pd.DataFrame:
    """Long table, one row per customer per discount level: customer_col, segment_col, discount_pct and the
    `score_offer` columns (response by discount level from the model where it has history, else from the priors)."""
    keep = [customer_col] + ([segment_col] if segment_col else [])
    _require(customers, keep, "customers")
    parts = []
    for level in discounts:
        scored = score_offer(customers, {**offer, "discount_pct": float(level)}, model, priors, segment_col,
                             order_value_col)
        parts.append(pd.concat([customers[keep], scored], axis=1).assign(discount_pct=float(level)))
    return pd.concat(parts, ignore_index=True)


@dataclass(frozen=True)
class DiscountChoice:
    """`per_customer`: the best discount per customer; `per_segment`: each level's totals per segment with `best`."""

    per_customer: pd.DataFrame
    per_segment: pd.DataFrame


def _margins(scores: pd.DataFrame, margin_pct: float, cost_per_contact: Any, customer_col: str, segment_col: str,
             discount_col: str) -> pd.DataFrame:
    """The scores' columns of `best_discount`, checked, with each row's expected incremental `margin`."""
    cols = [customer_col, segment_col, discount_col, "p_treated", "p_control", "expected_order_value"]
    _require(scores, cols, "scores")
    if scores["expected_order_value"].isna().any():
        raise InputError(f"scores: {int(scores['expected_order_value'].isna().sum())} rows have no "
                         "expected_order_value. Fit the model with a value_col or pass order_value_col.")
    return scores[cols].assign(margin=incremental_margin(
        scores["p_treated"], scores["p_control"], scores["expected_order_value"], margin_pct, scores[discount_col],
        cost_per_contact))


def segment_discounts(scores: pd.DataFrame, margin_pct: float, cost_per_contact: Any,
                      customer_col: str = "customer_id", segment_col: str = "segment",
                      discount_col: str = "discount_pct") -> pd.DataFrame:
    """`best_discount`'s per_segment table: one row per segment and discount level with n, mean rates and total
    expected margin; `best` marks the level with the highest total. Ties go to the lower discount."""
    return _per_segment(_margins(scores, margin_pct, cost_per_contact, customer_col, segment_col, discount_col),
                        customer_col, segment_col, discount_col)


def _per_segment(frame: pd.DataFrame, customer_col: str, segment_col: str, discount_col: str) -> pd.DataFrame:
    per_segment = (frame.groupby([segment_col, discount_col], as_index=False)
                   .agg(n=(customer_col, "size"), p_treated=("p_treated", "mean"), p_control=("p_control", "mean"),
                        expected_order_value=("expected_order_value", "mean"), margin=("margin", "sum")))
    per_segment["uplift"] = per_segment["p_treated"] - per_segment["p_control"]
    top = (per_segment.sort_values([segment_col, "margin", discount_col], ascending=[True, False, True],
                                   kind="mergesort").drop_duplicates(segment_col).index)
    per_segment["best"] = per_segment.index.isin(top)
    return per_segment


def best_discount(scores: pd.DataFrame, margin_pct: float, cost_per_contact: float,
                  customer_col: str = "customer_id", segment_col: str = "segment",
                  discount_col: str = "discount_pct") -> DiscountChoice:
    """The discount level that maximises expected incremental margin, per customer and per segment.

    scores: one row per customer per discount level with p_treated, p_control, expected_order_value (e.g. from
    `score_discounts`). per_customer: customer_col, segment_col, best discount, its p_treated / p_control / margin.
    per_segment: `segment_discounts` (one discount for the whole segment). Ties go to the lower discount.
    """
    frame = _margins(scores, margin_pct, cost_per_contact, customer_col, segment_col, discount_col)
    ordered = frame.sort_values([customer_col, "margin", discount_col], ascending=[True, False, True], kind="mergesort")
    per_customer = ordered.drop_duplicates(customer_col).reset_index(drop=True)
    return DiscountChoice(per_customer, _per_segment(frame, customer_col, segment_col, discount_col))


# --------------------------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------------------------

def _metric_inputs(y: Any, treatment: Any, score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y_arr = _binary(pd.Series(np.asarray(y)), "metrics", "y")
    t_arr = _binary(pd.Series(np.asarray(treatment)), "metrics", "treatment")
    s_arr = np.asarray(score, dtype="float64")
    if not (len(y_arr) == len(t_arr) == len(s_arr)) or np.isnan(s_arr).any():
        raise InputError(f"metrics: y, treatment and score must have the same length ({len(y_arr)}, {len(t_arr)}, "
                         f"{len(s_arr)}) and score no NaN ({int(np.isnan(s_arr).sum())} rows). Align or drop rows.")
    _both_arms(t_arr, "metrics", "treatment")
    return y_arr.astype("float64"), t_arr.astype("float64"), s_arr


def _cumulative(y: Any, treatment: Any, score: Any) -> pd.DataFrame:
    """Cumulative counts at every distinct score, best score first (tied rows enter together), from (0, 0)."""
    y_a, t_a, s_a = _metric_inputs(y, treatment, score)
    order = np.argsort(-s_a, kind="mergesort")
    y_a, t_a, s_a = y_a[order], t_a[order], s_a[order]
    last = np.r_[s_a[1:] != s_a[:-1], True]
    n = np.arange(1, len(s_a) + 1)[last]
    n_t, n_c = np.cumsum(t_a)[last], np.cumsum(1 - t_a)[last]
    y_t, y_c = np.cumsum(y_a * t_a)[last], np.cumsum(y_a * (1 - t_a))[last]
    rate_t = np.divide(y_t, n_t, out=np.zeros_like(y_t), where=n_t > 0)
    rate_c = np.divide(y_c, n_c, out=np.zeros_like(y_c), where=n_c > 0)
    frame = pd.DataFrame({"n_targeted": n, "fraction": n / len(s_a), "n_treated": n_t, "n_control": n_c,
                          "conv_treated": y_t, "conv_control": y_c,
                          "incremental": (rate_t - rate_c) * n,
                          "qini": y_t - np.divide(y_c * n_t, n_c, out=np.zeros_like(y_c), where=n_c > 0)})
    start = pd.DataFrame({c: [0.0] for c in frame.columns})
    return pd.concat([start, frame], ignore_index=True)


def uplift_curve(y: Any, treatment: Any, score: Any) -> pd.DataFrame:
    """Cumulative incremental conversions when the top fraction by score is targeted:
    incremental = (conv_treated/n_treated - conv_control/n_control) * n_targeted (a rate is 0 while its arm is empty),
    at every distinct score (ties enter together), with `random` = the straight line to the final value."""
    frame = _cumulative(y, treatment, score).drop(columns="qini")
    frame["random"] = frame["fraction"] * frame["incremental"].iloc[-1]
    return frame


def qini_curve(y: Any, treatment: Any, score: Any) -> pd.DataFrame:
    """Radcliffe's (2007) Qini curve: qini = conv_treated - conv_control * n_treated / n_control among the top
    fraction by score (0 control term while no control row is in), with `random` = the line to the final value."""
    frame = _cumulative(y, treatment, score).drop(columns="incremental")
    frame["random"] = frame["fraction"] * frame["qini"].iloc[-1]
    return frame


def _area(frame: pd.DataFrame, col: str) -> float:
    return float(np.trapezoid(frame[col], frame["fraction"]))


def qini_coefficient(y: Any, treatment: Any, score: Any, normalize: bool = True) -> float:
    """Area between the Qini curve and the random line, over fraction targeted in [0, 1].

    normalize=True (Radcliffe 2007): divided by the same area for the optimum ranking (treated converters first,
    control converters last), so 1 is a perfect ranking, 0 random, negative worse than random; this is
    scikit-uplift's `qini_auc_score(negative_effect=True)`. normalize=False: the raw area, in conversions.
    """
    frame = qini_curve(y, treatment, score)
    area = _area(frame, "qini") - _area(frame, "random")
    if not normalize:
        return area
    y_a, t_a, _ = _metric_inputs(y, treatment, score)
    perfect = qini_curve(y_a, t_a, y_a * t_a - y_a * (1 - t_a))
    best = _area(perfect, "qini") - _area(perfect, "random")
    return area / best if best > 0 else float("nan")


def auuc(y: Any, treatment: Any, score: Any, normalize: bool = True) -> float:
    """Area under the uplift curve over fraction targeted (trapezoid over distinct scores). normalize=True divides
    the curve by its final value (total incremental conversions), so a random ranking scores 0.5, as causalml's
    auuc_score (which integrates by a per-row mean); NaN when the total is 0."""
    frame = uplift_curve(y, treatment, score)
    area = _area(frame, "incremental")
    if not normalize:
        return area
    total = abs(float(frame["incremental"].iloc[-1]))
    return area / total if total > 0 else float("nan")


def uplift_at_k(y: Any, treatment: Any, score: Any, k: float = 0.3) -> float:
    """Conversion rate of treated minus control among the top ceil(k * n) rows by score (ties keep input order);
    NaN when that top has no treated or no control row."""
    if not 0 < k <= 1:
        raise InputError(f"uplift_at_k: k={k} must be a fraction in (0, 1].")
    y_a, t_a, s_a = _metric_inputs(y, treatment, score)
    top = np.argsort(-s_a, kind="mergesort")[: math.ceil(k * len(s_a))]
    yt, tt = y_a[top], t_a[top]
    if tt.sum() == 0 or tt.sum() == len(tt):
        return float("nan")
    return float(yt[tt == 1].mean() - yt[tt == 0].mean())


def calibration_table(p_pred: Any, y: Any, bins: int = 10) -> pd.DataFrame:
    """Predicted vs observed response by equal-count bins of the prediction (deciles by default; tied predictions
    are split by input order): bin, n, p_mean, observed, se (binomial standard error of observed)."""
    p = np.asarray(p_pred, dtype="float64")
    y_a = _binary(pd.Series(np.asarray(y)), "calibration", "y").astype("float64")
    if len(p) != len(y_a) or np.isnan(p).any() or len(p) < bins:
        raise InputError(f"calibration_table: {len(p)} predictions, {len(y_a)} outcomes, {int(np.isnan(p).sum())} "
                         f"NaN predictions, {bins} bins: need equal lengths, no NaN and at least one row per bin.")
    rank = pd.Series(p).rank(method="first").to_numpy() - 1
    frame = pd.DataFrame({"bin": (rank * bins // len(p)).astype(int) + 1, "p": p, "y": y_a})
    out = frame.groupby("bin", as_index=False).agg(n=("y", "size"), p_mean=("p", "mean"), observed=("y", "mean"))
    out["se"] = np.sqrt(out["observed"] * (1 - out["observed"]) / out["n"])
    return out


def plot_uplift_curves(curves: Mapping[str, pd.DataFrame], kind: Literal["qini", "incremental"] = "qini",
                       title: str | None = None) -> Figure:
    """The Qini (or uplift) curves of several scores on one chart, with the random line of the first."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for name, frame in curves.items():
        ax.plot(frame["fraction"] * 100, frame[kind], label=name)
    first = next(iter(curves.values()))
    ax.plot(first["fraction"] * 100, first["random"], linestyle="--", color="grey", label="random")
    ax.set_xlabel("customers targeted, % (best score first)")
    ax.set_ylabel("Qini: incremental conversions" if kind == "qini" else "incremental conversions")
    ax.set_title(title or "Targeting by model score finds more incremental buyers than random")
    ax.legend()
    return fig


def plot_calibration(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Observed vs predicted response per bin of a `calibration_table`, with +-2 standard errors and the diagonal."""
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.errorbar(table["p_mean"] * 100, table["observed"] * 100, yerr=2 * table["se"] * 100, fmt="o")
    top = float(max(table["p_mean"].max(), table["observed"].max())) * 100
    ax.plot([0, top], [0, top], linestyle="--", color="grey")
    ax.set_xlabel("predicted response, %")
    ax.set_ylabel("observed response, %")
    ax.set_title(title or "Predicted response matches observed response")
    return fig


# --------------------------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------------------------

def holdout_by_campaign(history: pd.DataFrame, features: Sequence[str], campaign_col: str = "campaign_id",
                        held_out: Sequence[Any] | None = None, treatment_col: str = "group",
                        outcome_col: str = "converted", method: Method = "two_model", k: float = 0.3, seed: int = 0,
                        calibration: Calibration = "isotonic") -> pd.DataFrame:
    """Validation on held-out campaigns: for each campaign in `held_out` (default: every campaign) the model is fitted
    on all OTHER campaigns and evaluated on this one. One row per held-out campaign: n, n_treated, n_control,
    observed_uplift (treated minus control rate), predicted_uplift (mean), observed / predicted treated rate,
    qini (normalised, Radcliffe), auuc (normalised), uplift_at_k, auc_treated (response AUC on treated rows)."""
    _require(history, [campaign_col, treatment_col, outcome_col], "history")
    campaigns = list(held_out) if held_out is not None else sorted(history[campaign_col].dropna().unique().tolist())
    if len(history[campaign_col].dropna().unique()) < 2:
        raise InputError(f"history: column '{campaign_col}' has fewer than 2 campaigns; holding one out needs 2+.")
    rows = []
    for campaign in campaigns:
        test_mask = (history[campaign_col] == campaign).to_numpy()
        if not test_mask.any():
            raise InputError(f"history: campaign '{campaign}' has no rows in column '{campaign_col}'.")
        model = fit_uplift_model(history[~test_mask], features, treatment_col, outcome_col, None, method, seed,
                                 calibration)
        test = history[test_mask]
        pred = model.predict(test)
        y = _binary(test[outcome_col], "history", outcome_col)
        t = _binary(test[treatment_col], "history", treatment_col)
        row: dict[str, Any] = {campaign_col: campaign, "n": len(test), "n_treated": int(t.sum()),
                               "n_control": int((1 - t).sum()), "predicted_uplift": float(pred["uplift"].mean()),
                               "predicted_rate_treated": float(pred["p_treated"][t == 1].mean()) if t.any() else np.nan}
        has_both = 0 < t.sum() < len(t)
        row["observed_rate_treated"] = float(y[t == 1].mean()) if t.any() else np.nan
        row["observed_uplift"] = float(y[t == 1].mean() - y[t == 0].mean()) if has_both else np.nan
        row["qini"] = qini_coefficient(y, t, pred["uplift"]) if has_both else np.nan
        row["auuc"] = auuc(y, t, pred["uplift"]) if has_both else np.nan
        row["uplift_at_k"] = uplift_at_k(y, t, pred["uplift"], k) if has_both else np.nan
        y_t = y[t == 1]
        row["auc_treated"] = (float(roc_auc_score(y_t, pred["p_treated"][t == 1]))
                              if 0 < y_t.sum() < len(y_t) else np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------------
# plain response model
# --------------------------------------------------------------------------------------------------------------------

@dataclass
class ResponseModel:
    """A fitted response (propensity) model with its stratified-holdout AUC; `predict` gives P(respond)."""

    model: Any
    encoder: _Encoder
    auc: float
    base_rate: float
    n_train: int
    n_test: int

    def predict(self, customers: pd.DataFrame) -> pd.Series:
        """P(respond) per customer (same index)."""
        return pd.Series(self.model.predict_proba(self.encoder.transform(customers, "customers"))[:, 1],
                         index=customers.index, name="p_response")


def fit_response_model(df: pd.DataFrame, features: Sequence[str], outcome: str, test_size: float = 0.25,
                       seed: int = 0, calibration: Calibration = "isotonic") -> ResponseModel:
    """P(outcome | features) by calibrated gradient boosting; AUC on a stratified, seeded holdout of `test_size`.

    Use only features known BEFORE the contact (e.g. not a call's duration). base_rate is the outcome rate of `df`.
    """
    _require(df, [*features, outcome], "contacts")
    y = _binary(df[outcome], "contacts", outcome)
    encoder = _Encoder.fit(df, features)
    x = encoder.transform(df, "contacts")
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)
    _check_classes(y_tr, "training")
    model = _classifier(encoder, seed, calibration, None).fit(x_tr, y_tr)
    auc = float(roc_auc_score(y_te, model.predict_proba(x_te)[:, 1]))
    return ResponseModel(model, encoder, auc, float(y.mean()), len(y_tr), len(y_te))
