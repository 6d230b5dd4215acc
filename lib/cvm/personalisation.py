"""Glue of the personalisation step: who gets which offer, on which channel, at what discount, when.

The models and solvers live elsewhere (`cvm.uplift`, `cvm.offers`, `cvm.policy`, `cvm.assignment`,
`cvm.control_groups`); this module chains them the way the notebook presents them:

1. `prepare`: the customers (the knowledge step's `customer_knowledge` plus behaviour features), the offer catalogue,
   the contact policy, the contact history, the launch dates and the global holdout.
2. `learn`: the uplift model trained on past campaigns with control groups (features at each contact date), the prior
   table (the package default, or the previous run's `monitoring_feedback` when `priors_from` is given), and which
   source scores each (offer, channel, discount).
3. `score`: every allowed (customer, offer, channel, discount, date) with P(convert | contacted), P(convert | not),
   expected order value and the expected incremental margin (`value`).
4. `make_plan`: the assignment (exact MILP when small, the Lagrangian solver otherwise), the randomised control groups
   per campaign, the campaigns with expected figures and ranges, the policy check.
5. Outputs: target lists per channel, contract `contacts` rows, tables in the run database, campaign card contents.
6. `diffusive_vs_targeted` and, on the demo, `oracle_check` against the generator's true response.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from matplotlib.figure import Figure

from cvm import assignment, cards, control_groups, customer_db, knowledge, uplift
from cvm import features as feat
from cvm import offers as off
from cvm import policy as pol
from cvm.engine import fetch
from cvm.errors import InputError
from cvm.keys import TEXT, isin_keys, key_positions, per_distinct, rows_at, text_at

#: customer behaviour features of the uplift model, computed at each contact date (history) and at as_of (scoring)
#: (own names, so they never clash with the knowledge table's columns used by the offers' eligibility rules)
BEHAVIOUR = ("days_since_last", "purchase_days", "days_since_first", "avg_order_value", "alive_prob", "p_buy_window")
#: offer attributes of the model (set from the offer at scoring time)
OFFER_FEATURES = ("type", "channel", "discount_pct")
MODEL_FEATURES = (*BEHAVIOUR, *OFFER_FEATURES)
#: more discount never lowers the response (also true of the negative uplifts of 'do not disturb' customers)
MONOTONE = {"discount_pct": 1}
#: the residual learner fits on at most this many treated contacts (a seeded random subset beyond): its cost is
#: linear in the rows (about 9 us per row and boosting iteration on one core, ~20 s for the 2.4M treated contacts of
#: a 1M-customer history), and on the 200k demo a 20 % subset plans as well as all rows (true margin within the
#: sample-to-sample spread)
MAX_FIT_ROWS = 500_000
#: the held-out validation's refits fit on at most this many treated contacts (seeded subset; a diagnostic: the plan's
#: model keeps MAX_FIT_ROWS); mean held-out Qini, all rows vs 150k: 1M 0.043 vs 0.041 (refit CPU 20 s vs 8 s), 200k
#: 0.043 vs 0.034 (caps 100k-200k there: 0.034-0.046, the subset-to-subset spread)
VALIDATION_FIT_ROWS = 150_000
#: covariates of the balance table
BALANCE = ("recency_days", "n_orders", "monetary", "clv", "p_alive", "rfm_segment")
Z95 = 1.959964


# ------------------------------------------------------------------------------------------------------------ inputs

@dataclass
class Setup:
    """Everything the plan is built from."""

    as_of: pd.Timestamp
    customers: pd.DataFrame          # customer_knowledge + behaviour features, holdout and anomalies removed
    holdout: pd.DataFrame            # global holdout: customer_id, rfm_segment (never contacted)
    offers: list[off.Offer]
    policy: pol.ContactPolicy
    history: pd.DataFrame            # past contacts (contract table), empty when the client has none
    campaigns: pd.DataFrame          # past campaigns (contract table), empty when none
    dates: list[pd.Timestamp]
    bgnbd: Any                       # the BG/NBD fit behind p_alive / p_buy_window
    window_days: int
    segment_col: str = "rfm_segment"


def load_knowledge(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """The knowledge step's `customer_knowledge` table (one row per customer)."""
    if not customer_db.has_table(con, "customer_knowledge"):
        raise InputError("customer database: table 'customer_knowledge' is missing. Run the knowledge step first "
                         "(steps: [data, knowledge, personalisation]).")
    table = fetch(con.table("customer_knowledge"))
    need = ["customer_id", "rfm_segment", "last_purchase", "expected_order_value"]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise InputError(f"customer_knowledge: column(s) {missing} missing ({len(table)} rows); re-run the knowledge "
                         "step with the current version.")
    return table


def launch_dates(as_of: str | pd.Timestamp, dates: str | Sequence[str] | None, n_launches: int,
                 every_days: int = 7) -> list[pd.Timestamp]:
    """The launch dates: the given ones (a list or comma-separated text), else `n_launches` weekly launches from
    as_of + every_days."""
    if isinstance(dates, str):
        dates = [d.strip() for d in dates.split(",") if d.strip()]
    if dates:
        try:
            out = sorted(pd.Timestamp(d).normalize() for d in dates)
        except ValueError as exc:
            raise InputError(f"launch_dates: {dates} holds a value that is not a date; use YYYY-MM-DD.") from exc
    else:
        if n_launches < 1:
            raise InputError(f"n_launches must be at least 1, got {n_launches}.")
        out = [pd.Timestamp(as_of).normalize() + pd.Timedelta(days=every_days * (k + 1)) for k in range(n_launches)]
    if out[0] <= pd.Timestamp(as_of):
        raise InputError(f"launch_dates: {out[0].date()} is not after as_of {pd.Timestamp(as_of).date()}.")
    return out


#: Per row (customer_id, end_day, row number) of the registered `_pairs` table, the customer's transactions up to
#: end_day summed as `cvm.features` defines them (purchase days; purchase orders: net >= 0 with a non-return line,
#: counted on the lines up to end_day, so an order returned later is still a purchase before its return). One pass: per
#: customer and day the net amount, whether it is a purchase day and the change in purchase orders; running sums by
#: day; an ASOF join picks each pair's last day <= end_day (pairs whose customer has no line by then are left out).
#: Customers are keyed by an integer (`custs`): windows and joins on it take 20 % less time than on the text ids (200k
#: customers). DuckDB SQL (ASOF JOIN): it reads the run database's `transactions`.
PAIR_STATE_SQL = """
    WITH custs AS (
        SELECT customer_id, CAST(ROW_NUMBER() OVER () AS INTEGER) AS k FROM (SELECT DISTINCT customer_id FROM _pairs)),
    pairs AS (
        SELECT k AS customer_id, "row", CAST(end_day AS DATE) AS end_day FROM _pairs JOIN custs USING (customer_id)),
    lines AS (
        SELECT k AS customer_id, order_id, CAST(order_date AS DATE) AS d, CAST(amount AS DOUBLE) AS amount
        FROM transactions JOIN custs USING (customer_id)
        WHERE CAST(order_date AS DATE) <= DATE '{end}'),
    order_days AS (
        SELECT customer_id, order_id, d, SUM(amount) AS net, MAX(CASE WHEN amount >= 0 THEN 1 ELSE 0 END) AS has_buy
        FROM lines GROUP BY customer_id, order_id, d),
    order_change AS (
        SELECT customer_id, d, net, has_buy,
               CASE WHEN SUM(net) OVER upto >= 0 AND MAX(has_buy) OVER upto = 1 THEN 1 ELSE 0 END
               - CASE WHEN SUM(net) OVER before >= 0 AND MAX(has_buy) OVER before = 1 THEN 1 ELSE 0 END AS change
        FROM order_days
        WINDOW upto AS (PARTITION BY customer_id, order_id ORDER BY d ROWS UNBOUNDED PRECEDING),
               before AS (PARTITION BY customer_id, order_id ORDER BY d
                          ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)),
    days AS (
        SELECT customer_id, d, SUM(net) AS net, SUM(change) AS order_change,
               CASE WHEN SUM(net) >= 0 AND MAX(has_buy) = 1 THEN 1 ELSE 0 END AS purchase_day
        FROM order_change GROUP BY customer_id, d),
    state AS (
        SELECT customer_id, d, SUM(net) OVER w AS monetary_total, CAST(SUM(order_change) OVER w AS BIGINT) AS n_orders,
               CAST(SUM(purchase_day) OVER w AS BIGINT) AS n_purchase_days,
               MIN(CASE WHEN purchase_day = 1 THEN d END) OVER w AS first_purchase,
               MAX(CASE WHEN purchase_day = 1 THEN d END) OVER w AS last_purchase
        FROM days WINDOW w AS (PARTITION BY customer_id ORDER BY d ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))
    SELECT p."row", s.monetary_total, s.n_orders, s.n_purchase_days, s.first_purchase, s.last_purchase
    FROM pairs p ASOF JOIN state s ON p.customer_id = s.customer_id AND s.d <= p.end_day"""


def behaviour(features: pd.DataFrame, bgnbd: Any, window_days: int) -> pd.DataFrame:
    """The model's behaviour columns (same index) from per-customer features named as `cvm.features` names them
    (recency_days, n_purchase_days, tenure_days, monetary_mean, x, t_x, T in weeks): days_since_last, purchase_days,
    days_since_first, avg_order_value (net per order), and from the BG/NBD fit alive_prob and p_buy_window (expected
    purchases in the next `window_days`, the attribution window); NaN for customers without a purchase."""
    ok = (features["x"].notna() & (features["T"] > 0)).to_numpy()
    x, t_x, big_t = (features[c].to_numpy(dtype=float)[ok] for c in ("x", "t_x", "T"))
    p_alive = np.full(len(features), np.nan)
    p_buy = np.full(len(features), np.nan)
    p_alive[ok] = knowledge.clv.bgnbd_p_alive(bgnbd, x, t_x, big_t)
    p_buy[ok] = knowledge.clv.bgnbd_expected_purchases(bgnbd, window_days / 7.0, x, t_x, big_t)
    return pd.DataFrame({"days_since_last": features["recency_days"].to_numpy(dtype=float),
                         "purchase_days": features["n_purchase_days"].to_numpy(dtype=float),
                         "days_since_first": features["tenure_days"].to_numpy(dtype=float),
                         "avg_order_value": features["monetary_mean"].to_numpy(dtype=float),
                         "alive_prob": p_alive, "p_buy_window": p_buy}, index=features.index)


def behaviour_at(con: duckdb.DuckDBPyConnection, as_of: str | pd.Timestamp, pairs: pd.DataFrame, bgnbd: Any,
                 window_days: int) -> pd.DataFrame:
    """The BEHAVIOUR columns of each (customer_id, at) row of `pairs` (its index label, in order), the customer as
    seen on the day before `at` (on as_of when `at` is not before it), with the fit's population parameters (the
    as_of ones). Rows whose customer has no transaction by then are left out. Equals
    `features.customer_features(..., calibration_end=day before at)` per date, in one DuckDB query."""
    as_of = pd.Timestamp(as_of).normalize()
    at = pd.to_datetime(pairs["at"]).dt.normalize()
    end = (at - pd.Timedelta(days=1)).where(at < as_of, as_of)
    con.register("_pairs", pa.table({"customer_id": pa.array(pairs["customer_id"], from_pandas=True),
                                     "row": np.arange(len(pairs)), "end_day": pa.array(end.to_numpy())}))
    try:
        state = fetch(con.sql(PAIR_STATE_SQL.format(end=end.max().date().isoformat() if len(end) else as_of.date())))
    finally:
        con.unregister("_pairs")
    state = state.iloc[np.argsort(state["row"].to_numpy(), kind="stable")]
    rows = state["row"].to_numpy()
    state = state.set_axis(pairs.index[rows])
    day = np.timedelta64(1, "D")
    end_day = pd.Series(end.to_numpy()[rows], index=state.index)
    first, last = (pd.to_datetime(state[c]) for c in ("first_purchase", "last_purchase"))
    n_days = state["n_purchase_days"].fillna(0).astype("int64")
    n_orders = state["n_orders"].fillna(0).to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(n_orders > 0, state["monetary_total"].to_numpy(dtype=float) / n_orders, np.nan)
    unit = feat.TIME_UNIT_DAYS["W"]
    features = pd.DataFrame({"recency_days": (end_day - last) / day, "n_purchase_days": n_days,
                             "tenure_days": (end_day - first) / day, "monetary_mean": mean,
                             "x": (n_days - 1).where(n_days > 0).astype("float64"),
                             "t_x": (last - first) / day / unit, "T": (end_day - first) / day / unit})
    return behaviour(features, bgnbd, window_days)


def prepare(con: duckdb.DuckDBPyConnection, as_of: str | pd.Timestamp, offers_path: str | Path,
            policy_path: str | Path, dates: str | Sequence[str] | None = None, n_launches: int = 2,
            seed: int = 0, window_days: int = 14, exclude_anomalies: bool = True) -> Setup:
    """Read the inputs, add behaviour features to the knowledge table, draw the global holdout (stratified by RFM
    segment, seeded) and drop it, with the flagged anomalies, from the customers the plan may contact."""
    as_of = pd.Timestamp(as_of).normalize()
    policy = pol.load_policy(policy_path)
    offers = off.load_offers(offers_path)
    know = load_knowledge(con)
    # the features behaviour and the BG/NBD fit read (purchase days, weeks), from the knowledge step's summary
    base = feat.days_basis_features(knowledge.load_purchase_history(con, as_of.date()), as_of.date(), "W")
    excluded = know.loc[know.get("anomaly_flag", pd.Series(False, index=know.index)).fillna(False).astype(bool),
                        "customer_id"]
    bgnbd = knowledge.fit_bgnbd(base, excluded)
    # the knowledge table's rows with their behaviour (a left merge on customer_id, by Arrow key positions)
    now = rows_at(behaviour(base, bgnbd, window_days), key_positions(know["customer_id"], base["customer_id"]))
    customers = pd.concat([know.drop(columns=[c for c in BEHAVIOUR if c in know.columns]), now], axis=1)
    customers["expected_order_value"] = pd.to_numeric(customers["expected_order_value"], errors="coerce").astype(float)
    fallback = customers["expected_order_value"].median()
    customers["expected_order_value"] = customers["expected_order_value"].fillna(fallback if fallback > 0 else 0.0)
    keep = np.ones(len(customers), dtype=bool)       # one copy of the wide table, after both exclusions
    if exclude_anomalies and "anomaly_flag" in customers.columns:
        keep = ~customers["anomaly_flag"].fillna(False).astype(bool).to_numpy()
    holdout = pd.DataFrame(columns=["customer_id", "rfm_segment"])
    if policy.global_holdout_share > 0:
        drawn = control_groups.global_holdout(customers.loc[keep, ["customer_id", "rfm_segment"]],
                                              policy.global_holdout_share, ["rfm_segment"], seed)
        holdout = drawn[drawn["group"] == "control"].drop(columns="group")
        keep &= ~isin_keys(customers["customer_id"], holdout["customer_id"])
    customers = customers[keep]
    history = fetch(con.table("contacts")) if customer_db.has_table(con, "contacts") else pd.DataFrame()
    campaigns = fetch(con.table("campaigns")) if customer_db.has_table(con, "campaigns") else pd.DataFrame()
    return Setup(as_of, customers.reset_index(drop=True), holdout.reset_index(drop=True), offers, policy, history,
                 campaigns, launch_dates(as_of, dates, n_launches, max(policy.week_days, policy.min_days_between)),
                 bgnbd, window_days)


def offers_sentence(setup: Setup) -> str:
    """What the plan works with."""
    dates = ", ".join(d.strftime("%d %b %Y") for d in setup.dates)
    return (f"{len(setup.customers):,} customers may be contacted ({len(setup.holdout):,} kept aside as a global "
            f"holdout that no campaign touches, to measure the whole programme); {len(setup.offers)} offers in the "
            f"catalogue; launches on {dates}; contact budget {setup.policy.budget or 0:,.0f}.")


# ------------------------------------------------------------------------------------------------------- learning

@dataclass
class Estimates:
    """The fitted model (None without usable history), the prior table and its label, and the history it learnt from."""

    model: uplift.UpliftModel | ResidualUplift | None
    priors: pd.DataFrame
    prior_label: str
    history: pd.DataFrame
    note: str


def training_history(setup: Setup, con: duckdb.DuckDBPyConnection, seed: int = 0) -> pd.DataFrame:
    """Past contacts with the campaign type, the behaviour features at the contact date and the offer attributes.

    A control row is not offered anything; it is given the discount of one of its campaign's treated arms at random
    (seeded, in proportion to the arms' sizes), so that every arm has its share of the campaign's randomised control
    group. Contacts without customer_id, date, campaign type or outcome are left out.
    """
    h = setup.history
    need = ["customer_id", "campaign_id", "group", "contact_date", "converted"]
    if h.empty or any(c not in h.columns for c in need) or setup.campaigns.empty:
        return pd.DataFrame()
    types = setup.campaigns.drop_duplicates("campaign_id").set_index("campaign_id")
    h = h.dropna(subset=need).reset_index(drop=True)
    h["type"] = h["campaign_id"].map(types["type"])
    if "channel" not in h.columns:
        h["channel"] = h["campaign_id"].map(types["channel"]) if "channel" in types else pd.NA
    h = h.dropna(subset=["type", "channel"])
    h["discount_pct"] = pd.to_numeric(h.get("discount_pct"), errors="coerce").fillna(0.0)
    h["contact_date"] = pd.to_datetime(h["contact_date"]).dt.normalize()
    h["discount_pct"] = control_discounts(h["campaign_id"], h["discount_pct"].to_numpy(),
                                          (h["group"] == "control").to_numpy(), np.random.default_rng(seed))
    pairs = pd.DataFrame({"customer_id": h["customer_id"], "at": h["contact_date"]})
    at_contact = behaviour_at(con, setup.as_of, pairs, setup.bgnbd, setup.window_days)
    if len(at_contact) < len(h):
        h = h.loc[at_contact.index]   # behaviour_at keeps the contacts' index labels
    return pd.concat([h.reset_index(drop=True), at_contact.reset_index(drop=True)], axis=1)


def control_discounts(campaign: pd.Series, discount: np.ndarray, control: np.ndarray, rng: np.random.Generator
                      ) -> np.ndarray:
    """`discount` with each control row given one of its campaign's treated discounts, drawn in proportion to the
    treated rows at each level; campaigns in sorted order, one draw each. Campaigns are compared as integer codes, not
    text, and the treated rows are not copied (1M customers, 2.9M contacts in 14 campaigns: 1.9 -> 0.4 s)."""
    codes, _ = pd.factorize(campaign, sort=True)
    out = discount.copy()
    treated_codes, treated_discount = codes[~control], discount[~control]
    for code in np.unique(treated_codes[treated_codes >= 0]):
        levels = pd.Series(treated_discount[treated_codes == code]).value_counts(normalize=True).sort_index()
        idx = np.flatnonzero(control & (codes == code))
        out[idx] = rng.choice(levels.index.to_numpy(), len(idx), p=levels.to_numpy())
    return out


def learn(setup: Setup, con: duckdb.DuckDBPyConnection, method: str = "two_model", priors_from: str = "",
          seed: int = 0, baseline: str = "purchase_model") -> Estimates:
    """Fit the uplift model on the history (when there is enough) and load the priors for the other offers.

    method "residual" with the purchase-model baseline fits the residual learner (`fit_residual_uplift`); with
    baseline "uplift_model" (the control arm's P(buy)) it scores with the two-model, as "two_model" does. The history
    must have both arms with at least `uplift.MIN_CLASS` converters and non-converters each, else the priors score.
    priors_from: "run" (this run's `monitoring_feedback`: steps data, knowledge, monitoring, personalisation), a
    previous run folder (its database's `monitoring_feedback` table is read), a Parquet/CSV file of that table, or a
    prior YAML file; empty: the package default `rules/uplift_priors.yaml`.
    """
    if method not in ("residual", "two_model", "x_learner"):
        raise InputError(f"uplift_method must be 'residual', 'two_model' or 'x_learner', got '{method}'.")
    if baseline not in ("purchase_model", "uplift_model"):
        raise InputError(f"baseline must be 'purchase_model' or 'uplift_model', got '{baseline}'.")
    history = training_history(setup, con, seed)
    model: uplift.UpliftModel | ResidualUplift | None = None
    note = "no campaign history with control groups: every estimate comes from the prior table"
    if len(history):
        try:
            if method == "residual" and baseline == "purchase_model":
                uplift.check_arms(history)
                model = fit_residual_uplift(history, MODEL_FEATURES, seed)
            else:
                model = uplift.fit_uplift_model(history, MODEL_FEATURES, value_col=None,
                                                method="two_model" if method == "residual" else method, seed=seed,
                                                monotone=MONOTONE)
            note = (f"uplift model ({method.replace('_', '-')}) trained on {model.n_treated:,} treated and "
                    f"{model.n_control:,} control contacts of {history['campaign_id'].nunique()} past campaigns")
        except InputError as exc:
            note = f"the history is too thin for a model ({exc}); every estimate comes from the prior table"
    priors, label = load_prior_source(priors_from, con)
    return Estimates(model, priors, label, history, note)


@dataclass
class ResidualUplift:
    """Uplift = E[converted - baseline | x, offer] on the treated rows of past campaigns: the X-learner's treated-arm
    step (Kuenzel et al. 2019) with the purchase model's baseline as the control-arm model. Control groups are used to
    check the baseline (`baseline_check`), not to fit it. Scores like `uplift.UpliftModel` (`predict`, `has_history`)
    with p_control = `baseline_rate`."""

    encoder: Any
    tau: Any
    features: list[str]
    offers_seen: pd.DataFrame
    n_treated: int
    n_control: int

    def uplift(self, customers: pd.DataFrame, offer: dict[str, Any] | None = None) -> np.ndarray:
        """Predicted uplift of each customer for one offer (type, channel, discount_pct; None: the customers' own)."""
        frame = customers.assign(**{k: v for k, v in (offer or {}).items() if k in self.features})
        return self.tau.predict(self.encoder.transform(frame, "customers"))

    def predict(self, customers: pd.DataFrame, offer: dict[str, Any] | None = None,
                order_value_col: str | None = None) -> pd.DataFrame:
        """Per customer (same index): p_control = `baseline_rate`, p_treated = clip(p_control + uplift, 0, 1),
        uplift = p_treated - p_control, expected_order_value (`order_value_col`, else NaN), source="model"."""
        base = baseline_rate(customers)
        p_treated = np.clip(base + self.uplift(customers, offer), 0.0, 1.0)
        value = (pd.to_numeric(customers[order_value_col], errors="coerce").to_numpy(dtype="float64")
                 if order_value_col else np.full(len(customers), np.nan))
        return pd.DataFrame({"p_treated": p_treated, "p_control": base, "uplift": p_treated - base,
                             "expected_order_value": value, "source": "model"}, index=customers.index)

    def has_history(self, offer: dict[str, Any]) -> bool:
        """`uplift.has_history` of the training data: the model has seen this offer's type, channel and discounts."""
        return uplift.has_history(self.offers_seen, offer)


def fit_residual_uplift(history: pd.DataFrame, features: Sequence[str] = MODEL_FEATURES, seed: int = 0,
                        max_rows: int | None = MAX_FIT_ROWS) -> ResidualUplift:
    """Fit the residual learner on the treated rows of `history` (needs converted, group and p_buy_window), at most
    `max_rows` of them (a random subset, seeded; None: all)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    is_treated = (history["group"] == "treatment").to_numpy()
    rows = np.flatnonzero(is_treated)
    if max_rows is not None and len(rows) > max_rows:
        rows = rows[np.sort(np.random.default_rng(seed).choice(len(rows), max_rows, replace=False))]
    # one copy of the rows fitted, of the columns the fit reads (the history's text columns stay behind)
    cols = [c for c in dict.fromkeys((*features, "converted", "p_buy_window")) if c in history.columns]
    treated = history[cols].iloc[rows]
    if len(treated) < uplift.MIN_VALUE_ROWS:
        raise InputError(f"history: {len(treated)} treated contacts; at least {uplift.MIN_VALUE_ROWS} are needed.")
    encoder = uplift._Encoder.fit(treated, list(features))
    target = treated["converted"].astype(float).to_numpy() - baseline_rate(treated)
    cst = [MONOTONE.get(c, 0) for c in encoder.features]
    tau = HistGradientBoostingRegressor(**uplift.BOOSTING, categorical_features=encoder.categorical,
                                        monotonic_cst=cst, random_state=seed)
    seen = uplift.offers_seen(history, is_treated.astype("int8"), [c for c in OFFER_FEATURES if c in features])
    return ResidualUplift(encoder, tau.fit(encoder.transform(treated, "history"), target), list(features), seen,
                          int(is_treated.sum()), int((~is_treated).sum()))


def load_prior_source(priors_from: str | Path = "", con: duckdb.DuckDBPyConnection | None = None
                      ) -> tuple[pd.DataFrame, str]:
    """(prior table, label): 'feedback' for a monitoring_feedback table (this run's or a previous run's), else
    'prior'."""
    if not priors_from:
        return uplift.load_priors(None), "prior"
    if str(priors_from) == "run":
        if con is None or not customer_db.has_table(con, "monitoring_feedback"):
            raise InputError("priors_from: 'run' reads this run's monitoring_feedback; run the monitoring step before "
                             "personalisation (steps: data, knowledge, monitoring, personalisation).")
        return uplift.load_priors(fetch(con.table("monitoring_feedback"))), "feedback"
    path = Path(priors_from)
    if path.is_dir():
        db_path = path / "customer.duckdb"
        if not db_path.is_file():
            raise InputError(f"priors_from: {path} has no customer.duckdb; point it at a previous run folder.")
        con = duckdb.connect(str(db_path), read_only=True)
        try:
            if not customer_db.has_table(con, "monitoring_feedback"):
                raise InputError(f"priors_from: {db_path} has no table 'monitoring_feedback'; run the monitoring "
                                 "step in that run first, or leave priors_from empty.")
            table = fetch(con.table("monitoring_feedback"))
        finally:
            con.close()
        return uplift.load_priors(table), "feedback"
    if not path.is_file():
        raise InputError(f"priors_from: {path} is neither a run folder nor a file.")
    if path.suffix == ".parquet":
        return uplift.load_priors(pd.read_parquet(path)), "feedback"
    if path.suffix == ".csv":
        return uplift.load_priors(pd.read_csv(path)), "feedback"
    return uplift.load_priors(path), "prior"


def estimate_sources(setup: Setup, est: Estimates) -> pd.DataFrame:
    """Per offer, channel and discount level: where the estimate comes from (model / prior / feedback)."""
    rows = []
    for o in setup.offers:
        for channel in o.channels:
            for d in o.discount_levels:
                seen = est.model is not None and est.model.has_history(
                    {"type": o.campaign_type, "channel": channel, "discount_pct": d})
                rows.append({"offer_id": o.offer_id, "campaign_type": o.campaign_type, "channel": channel,
                             "discount_pct": d, "source": "model" if seen else est.prior_label})
    return pd.DataFrame(rows)


def sources_sentence(est: Estimates, sources: pd.DataFrame) -> str:
    """Where the estimates come from, in one sentence."""
    counts = sources["source"].value_counts()
    parts = ", ".join(f"{n} from the {s}" for s, n in counts.items())
    return f"The {note_start(est.note)}. Of the {len(sources)} offer variants (offer x channel x discount), {parts}."


def note_start(note: str) -> str:
    """A note as the continuation of a sentence."""
    return note[0].lower() + note[1:] if note else note


@dataclass
class Validation:
    """Held-out campaign validation: the per-campaign table, pooled Qini curves and the calibration table."""

    table: pd.DataFrame
    curves: dict[str, pd.DataFrame]
    calibration: pd.DataFrame


def _fit_predict(train: pd.DataFrame, test: pd.DataFrame, method: str, seed: int) -> pd.DataFrame:
    """p_treated, p_control, uplift of the test rows from a model fitted on the train rows."""
    if method == "residual":
        return fit_residual_uplift(train, MODEL_FEATURES, seed, VALIDATION_FIT_ROWS).predict(test)
    model = uplift.fit_uplift_model(train, MODEL_FEATURES, value_col=None, method=method, seed=seed,
                                    monotone=MONOTONE)
    return model.predict(test)


def validate(est: Estimates, method: str = "residual", n_campaigns: int = 3, seed: int = 0) -> Validation | None:
    """Refit without each of the last `n_campaigns` past campaigns and score it: Qini, AUUC, uplift@30 %, observed vs
    predicted uplift, and calibration of predicted vs observed response of the treated rows. None without history."""
    h = est.history
    if est.model is None or h["campaign_id"].nunique() < 2 or n_campaigns < 1:
        return None
    last = h.groupby("campaign_id")["contact_date"].min().sort_values().index[-n_campaigns:].tolist()
    cols = [c for c in dict.fromkeys((*MODEL_FEATURES, "group", "converted", "p_buy_window")) if c in h.columns]
    rows, preds = [], []
    for campaign in last:
        in_test = (h["campaign_id"] == campaign).to_numpy()
        test = h[in_test]
        pred = _fit_predict(h.loc[~in_test, cols], test, method, seed)    # the columns the fit reads
        preds.append(pred)
        y, t = test["converted"].astype(int).to_numpy(), (test["group"] == "treatment").to_numpy().astype(int)
        both = 0 < t.sum() < len(t)
        rows.append({"campaign_id": campaign, "type": test["type"].iloc[0], "channel": test["channel"].iloc[0],
                     "n_treated": int(t.sum()), "n_control": int(len(t) - t.sum()),
                     "observed_uplift": float(y[t == 1].mean() - y[t == 0].mean()) if both else np.nan,
                     "predicted_uplift": float(pred["uplift"].mean()),
                     "qini": uplift.qini_coefficient(y, t, pred["uplift"]) if both else np.nan,
                     "auuc": uplift.auuc(y, t, pred["uplift"]) if both else np.nan,
                     "uplift_at_30pct": uplift.uplift_at_k(y, t, pred["uplift"], 0.3) if both else np.nan})
    test = h[h["campaign_id"].isin(last)]
    pred = pd.concat(preds).loc[test.index]
    treated = (test["group"] == "treatment").to_numpy()
    curves = {"uplift model": uplift.qini_curve(test["converted"], test["group"], pred["uplift"]),
              "P(buy anyway), lowest first": uplift.qini_curve(test["converted"], test["group"], -pred["p_control"])}
    bins = max(2, min(10, int(treated.sum()) // 50))
    calib = uplift.calibration_table(pred["p_treated"][treated], test["converted"][treated], bins=bins)
    return Validation(pd.DataFrame(rows), curves, calib)


def baseline_check(est: Estimates, bins: int = 5) -> pd.DataFrame | None:
    """The purchase-model baseline against the control rows of past campaigns (predicted vs observed by bin)."""
    h = est.history
    if h.empty or not (h["group"] == "control").any():
        return None
    ctl = h[h["group"] == "control"]
    return uplift.calibration_table(baseline_rate(ctl), ctl["converted"], bins=min(bins, max(2, len(ctl) // 100)))


def baseline_sentence(check: pd.DataFrame | None) -> str:
    """Is the no-contact baseline right?"""
    if check is None:
        return "No past control groups to check the purchase baseline against."
    pred = float((check["p_mean"] * check["n"]).sum() / check["n"].sum())
    obs = float((check["observed"] * check["n"]).sum() / check["n"].sum())
    return (f"Customers held out of past campaigns bought at {obs:.1%} within the window; the purchase model "
            f"predicted {pred:.1%} for them, and the chart checks the same by band of prediction.")


def scored_sentence(scored: pd.DataFrame) -> str:
    """How many candidate contacts are worth sending."""
    positive = scored[scored["value"] > 0]
    return (f"{len(scored):,} allowed candidate contacts for {scored['customer_id'].nunique():,} customers; "
            f"{len(positive):,} have a positive expected extra margin ({positive['customer_id'].nunique():,} "
            "customers). The others would cost more (discount to buyers anyway, contact cost) than they earn.")


def validation_sentence(v: Validation | None) -> str:
    """The validation headline."""
    if v is None:
        return "No held-out validation: there is no campaign history to learn from."
    t = v.table
    return (f"On {len(t)} held-out campaigns the model predicted a mean uplift of {t['predicted_uplift'].mean():+.1%} "
            f"against {t['observed_uplift'].mean():+.1%} observed; mean Qini coefficient {t['qini'].mean():.2f} "
            "(0 = random targeting, 1 = perfect). Campaigns of a few hundred customers are noisy: read the Qini "
            "with its campaign size.")


# --------------------------------------------------------------------------------------------------------- scoring

@dataclass(frozen=True)
class _Variants:
    """The offer variants (offer_id, campaign_type, channel, discount_pct) of a candidate frame in order of first
    appearance; `order` lists the frame's row positions variant by variant (frame order within a variant), variant i
    holding order[starts[i]:starts[i + 1]]."""

    table: pd.DataFrame
    order: np.ndarray
    starts: np.ndarray

    def slices(self) -> list[tuple[Any, slice]]:
        """(variant row, slice of `order`) per variant."""
        return [(v, slice(self.starts[i], self.starts[i + 1]))
                for i, v in enumerate(self.table.itertuples(index=False))]


def _variants(cands: pd.DataFrame) -> _Variants:
    codes = cands.groupby(["offer_id", "channel", "discount_pct"], sort=False).ngroup().to_numpy()
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(codes.max() + 2 if len(codes) else 1))
    table = cands.iloc[order[starts[:-1]]][["offer_id", "campaign_type", "channel", "discount_pct"]]
    return _Variants(table.reset_index(drop=True), order, starts)


def candidate_contacts(setup: Setup) -> tuple[pd.DataFrame, pd.Series]:
    """Every eligible (customer, offer, channel, discount, date) the contact policy allows, and each customer's cap."""
    allowed, cap, _ = _candidate_rows(setup)
    return allowed, cap


def _candidate_rows(setup: Setup) -> tuple[pd.DataFrame, pd.Series, np.ndarray]:
    """`candidate_contacts` and each candidate's row in the customers (`pol.apply_policy_rows`)."""
    cands = off.build_candidates(setup.customers, setup.offers, setup.dates)
    history = setup.history if len(setup.history) else pd.DataFrame(columns=["customer_id", "contact_date", "group"])
    return pol.apply_policy_rows(cands, setup.customers, history, setup.policy, setup.as_of)


def scored_candidates(setup: Setup, est: Estimates, baseline: str = "purchase_model") -> tuple[pd.DataFrame, pd.Series]:
    """`score` of the `candidate_contacts`, and each customer's cap; the unscored candidates are not kept (a copy of
    what the scored frame holds: 107 MB per million candidate rows, 5M rows at a million customers). The policy's
    customer rows are reused (a lookup of the ids costs 0.13 s per million rows against a million customers)."""
    cands, cap, rows = _candidate_rows(setup)
    return score(setup, est, cands, baseline, rows), cap


def baseline_rate(customers: pd.DataFrame) -> np.ndarray:
    """P(buy within the attribution window | not contacted) from the purchase model: 1 - exp(-expected purchases in
    the window) (Poisson while alive, weighted by P(alive) through the expectation); 0 without purchase history."""
    return -np.expm1(-pd.to_numeric(customers["p_buy_window"], errors="coerce").fillna(0.0).to_numpy(dtype=float))


def _with_baseline(scores: pd.DataFrame, customers: pd.DataFrame) -> pd.DataFrame:
    """Scores with p_control from the purchase model; the model keeps its P(convert | contacted), a prior keeps its
    uplift (p_treated = baseline + prior uplift)."""
    base = baseline_rate(customers)
    out = scores.copy()
    prior = (out["source"] != "model").to_numpy()
    p_treated = np.where(prior, np.clip(base + out["uplift"].to_numpy(), 0.0, 1.0), out["p_treated"].to_numpy())
    out["p_control"] = base
    out["p_treated"] = p_treated
    out["uplift"] = p_treated - base
    return out


def score(setup: Setup, est: Estimates, cands: pd.DataFrame, baseline: str = "purchase_model",
          rows: np.ndarray | None = None) -> pd.DataFrame:
    """The candidates with p_treated, p_control, uplift, expected_order_value, source and `value`, the expected
    incremental margin: uplift x order value x margin - discount x order value x P(redeem) (dilution) - contact cost.

    baseline="purchase_model": P(convert | not contacted) is the purchase model's (`baseline_rate`, learnt from every
    customer's transactions, not only the few control rows of past campaigns); "uplift_model": the uplift model's
    control arm (or the prior table's segment rate). rows: each candidate's row in setup.customers (as
    `pol.apply_policy_rows` gives them; None: looked up by customer_id)."""
    if baseline not in ("purchase_model", "uplift_model"):
        raise InputError(f"baseline must be 'purchase_model' or 'uplift_model', got '{baseline}'.")
    cols = ["p_treated", "p_control", "uplift", "expected_order_value", "source"]
    if cands.empty:
        out = cands.assign(**{c: pd.Series(dtype=float) for c in cols})
    else:
        out = _scores(setup, est, cands, baseline, rows)
    out["value"] = uplift.incremental_margin(out["p_treated"], out["p_control"], out["expected_order_value"],
                                             out["margin_pct"], out["discount_pct"], out["cost"])
    return out


def _scores(setup: Setup, est: Estimates, cands: pd.DataFrame, baseline: str,
            rows: np.ndarray | None = None) -> pd.DataFrame:
    """The candidates, variant by variant (`_Variants` order), with the scores of `score`: the distinct customers of
    each variant are stacked, the model scores the stack of every variant it has history for in one call (with the
    variants' offer columns; one pass over its trees instead of one per variant), the priors score the other variants,
    and the rows take their customer's scores."""
    variants = _variants(cands)
    out = cands.take(variants.order).reset_index(drop=True)
    position = (key_positions(out["customer_id"], setup.customers["customer_id"]) if rows is None
                else rows[variants.order])
    if (position < 0).any():
        raise InputError(f"candidates: {int((position < 0).sum())} rows have a customer_id that is not in the "
                         "customers; build them with candidate_contacts.")
    ids, stacked = _stack_distinct(position, variants, len(setup.customers))
    sizes = np.array([len(i) for i in ids])
    starts = np.r_[0, np.cumsum(sizes)]
    offers = [{"type": v.campaign_type, "channel": v.channel, "discount_pct": float(v.discount_pct)}
              for v in variants.table.itertuples(index=False)]
    modelled = np.array([est.model is not None and est.model.has_history(o) for o in offers], dtype=bool)
    need = [c for c in (*BEHAVIOUR, setup.segment_col, "expected_order_value") if c in setup.customers.columns]
    numbers = [c for c in need if c != setup.segment_col]
    who = setup.customers[numbers].take(np.concatenate(ids)).reset_index(drop=True)
    cols = ("p_treated", "p_control", "uplift", "expected_order_value")
    s = pd.DataFrame({c: np.empty(len(who)) for c in cols})
    in_model = np.repeat(modelled, sizes)
    if modelled.any():
        variant = np.repeat(np.arange(len(offers)), sizes)[in_model]
        offer_cols = {k: text_at([o[k] for o in offers], variant) for k in ("type", "channel")}
        offer_cols["discount_pct"] = np.array([o["discount_pct"] for o in offers])[variant]
        pred = est.model.predict(who[in_model].reset_index(drop=True).assign(**offer_cols), None,
                                 "expected_order_value")
        s.loc[in_model, list(cols)] = pred[list(cols)].to_numpy(dtype=float)
    prior_input = setup.customers[need] if not modelled.all() else None   # the columns copied once, not per variant
    for i in np.flatnonzero(~modelled):
        pred = uplift.segment_priors(prior_input.take(ids[i]), offers[i], est.priors, setup.segment_col,
                                     "expected_order_value")
        s.iloc[starts[i]:starts[i + 1], :len(cols)] = pred[list(cols)].to_numpy(dtype=float)
    s["source"] = pd.Categorical.from_codes((~in_model).astype(np.int8), categories=["model", "prior"])
    if baseline == "purchase_model":
        s = _with_baseline(s, who)
    scores = {c: s[c].to_numpy(dtype=float)[stacked] for c in cols}
    return out.assign(**scores, source=text_at(["model", est.prior_label], (~in_model[stacked]).astype(np.int8)))


def _stack_distinct(position: np.ndarray, variants: _Variants, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Per variant its distinct customer positions (ascending, as np.unique gives them), and for each row of the
    variant-ordered frame its row in the stack of those lists: one pass over an n-long mark array per variant instead
    of a sort."""
    seen = np.zeros(n, dtype=bool)
    ids, stacked, offset = [], np.empty(len(position), dtype=np.int64), 0
    for _, rows in variants.slices():
        at = position[rows]
        seen[at] = True
        distinct = np.flatnonzero(seen)
        stacked[rows] = offset + np.searchsorted(distinct, at)
        seen[distinct] = False
        ids.append(distinct)
        offset += len(distinct)
    return ids, stacked


def _first_launch(scored: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """The candidates of the first launch date, only the columns `cols` (the text columns a comparison does not read,
    campaign_type, channel and source, are not copied)."""
    return scored.loc[(scored["contact_date"] == scored["contact_date"].min()).to_numpy(), cols]


def _cheapest(first: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, pd.Index]:
    """Per (customer_id, offer_id, discount_pct), sorted as groupby sorts them, the position of its first row of least
    cost (`groupby(...)["cost"].idxmin()` on integer codes); the offer code of each and the sorted offer ids."""
    (cust, _), (offer, offer_ids), (disc, discounts) = (pd.factorize(first[c], sort=True)
                                                         for c in ("customer_id", "offer_id", "discount_pct"))
    known = np.flatnonzero((cust >= 0) & (offer >= 0) & (disc >= 0))   # groupby drops missing keys
    key = (cust[known].astype(np.int64) * len(offer_ids) + offer[known]) * len(discounts) + disc[known]
    order = np.lexsort((first["cost"].to_numpy(dtype=float)[known], key))   # stable: ties go to the first row
    key = key[order]
    at = known[order[np.r_[True, key[1:] != key[:-1]]]] if len(key) else known
    return at, offer[at], pd.Index(offer_ids)


def discount_table(scored: pd.DataFrame, segment_col: str = "rfm_segment",
                   customers: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per offer and segment, each discount level's mean uplift and total expected incremental margin (cheapest
    channel, first launch), with `best` marking the level that earns most for the whole segment."""
    cols = [c for c in ("customer_id", "offer_id", "discount_pct", "cost", "margin_pct", "p_treated", "p_control",
                        "expected_order_value", segment_col) if c in scored.columns]
    first = _first_launch(scored, cols)
    at, offer, offer_ids = _cheapest(first)
    cheapest = first.take(at)
    if segment_col not in cheapest.columns and customers is not None:   # a left merge on customer_id
        segment = rows_at(customers[[segment_col]], key_positions(cheapest["customer_id"], customers["customer_id"]))
        cheapest = pd.concat([cheapest.reset_index(drop=True), segment], axis=1)
    parts = []
    by_offer = np.argsort(offer, kind="stable")
    bounds = np.searchsorted(offer[by_offer], np.arange(len(offer_ids) + 1))
    for i, offer_id in enumerate(offer_ids):
        rows = cheapest.take(by_offer[bounds[i]:bounds[i + 1]])
        per_segment = uplift.segment_discounts(rows, float(rows["margin_pct"].iloc[0]), rows["cost"].to_numpy(),
                                               segment_col=segment_col)
        parts.append(per_segment.assign(offer_id=offer_id))
    out = pd.concat(parts, ignore_index=True)
    return out[["offer_id", segment_col, "discount_pct", "n", "p_control", "p_treated", "uplift", "margin", "best"]]


def discount_sentence(table: pd.DataFrame, segment_col: str = "rfm_segment") -> str:
    """Where a discount pays and where it only gives margin away."""
    best = table[table["best"]]
    varied = best.groupby("offer_id")["discount_pct"].nunique()
    varied = varied[varied > 1]
    losing = best[best["margin"] <= 0]
    text = (f"For {len(varied)} of {best['offer_id'].nunique()} offers the best discount differs by segment"
            + (f" (e.g. {varied.index[0]})" if len(varied) else "") + ". ")
    if len(losing):
        text += (f"In {len(losing)} offer-segment pairs even the best level loses money: those customers are not "
                 "contacted with that offer.")
    return text


# ------------------------------------------------------------------------------------------------------------ plan

@dataclass
class Plan:
    """The solved plan: assignment (solver output), plan rows with groups, campaigns, constraints, violations."""

    assignment: assignment.Assignment
    rows: pd.DataFrame
    campaigns: pd.DataFrame
    controls: pd.DataFrame
    violations: pd.DataFrame
    n_eligible: int


def solve(scored: pd.DataFrame, setup: Setup, cap: pd.Series, max_exact_rows: int = 20_000,
          seed: int = 0, codes: assignment.Codes | None = None) -> assignment.Assignment:
    """The best plan under the policy: exact MILP when at most `max_exact_rows` candidates have a positive value,
    else the scalable Lagrangian solver (its bound and gap say how far from optimal it can be). `codes`: those of an
    earlier solve on the same rows (`Assignment.codes`), to skip factorizing the keys again."""
    constraints = pol.constraints_for(setup.policy, setup.offers, cap)
    if int((scored["value"] > 0).sum()) <= max_exact_rows:
        return assignment.solve_exact(scored, constraints, codes=codes)
    return assignment.solve_scalable(scored, constraints, seed=seed, codes=codes)


def _day_text(dates: pd.Series, fmt: str) -> pd.Series:
    """The dates as text (`strftime` format), formatted once per distinct date (a plan repeats a few launch dates)."""
    return per_distinct(dates, lambda d: pd.to_datetime(d).dt.strftime(fmt))


def make_plan(setup: Setup, scored: pd.DataFrame, cap: pd.Series, max_exact_rows: int = 20_000,
              seed: int = 0) -> Plan:
    """Solve, then draw each campaign's randomised control group (share from the policy: fixed or a power
    calculation), stratified by arm and segment, and check the plan against the policy."""
    solved = solve(scored, setup, cap, max_exact_rows, seed)
    rows = solved.plan.copy()
    rows["campaign_id"] = control_groups.campaign_ids(rows)
    rows["arm"] = control_groups.arm_labels(rows)
    seg = setup.customers[setup.segment_col].astype("string").array
    where = key_positions(rows["customer_id"], setup.customers["customer_id"])
    rows[setup.segment_col] = pd.Series(seg.take(where, allow_fill=True), index=rows.index).fillna("unknown")
    shares = control_shares(rows, setup.policy)
    if len(rows):
        rows = control_groups.assign_control(rows, ["arm", setup.segment_col],
                                             control_share=shares.set_index("campaign_id")["share"].to_dict(),
                                             by="campaign_id", seed=seed)
    else:
        rows["group"] = pd.Series(dtype="string")
    history = setup.history if len(setup.history) else pd.DataFrame(columns=["customer_id", "contact_date", "group"])
    violations = pol.check_plan(rows, setup.customers, history, setup.policy, setup.as_of, setup.offers)
    n_eligible = int(scored["customer_id"].nunique())
    return Plan(solved, rows, campaign_table(rows), shares, violations, n_eligible)


def control_shares(rows: pd.DataFrame, policy: pol.ContactPolicy) -> pd.DataFrame:
    """Control share per campaign (offer x launch date) from the policy's rule for the offer or its type."""
    parts = []
    for campaign_id, part in rows.groupby("campaign_id", sort=True):
        shares = control_groups.control_shares(part, policy)
        parts.append(shares.assign(campaign_id=campaign_id))
    cols = ["campaign_id", "offer_id", "n_customers", "rule", "share", "powered"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def campaign_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per campaign: treated and control counts, expected redemptions, extra revenue and extra margin, each
    with a 95 % range from outcome randomness alone (binomial conversions; model error is not included)."""
    if rows.empty:
        return pd.DataFrame(columns=["campaign_id", "offer_id", "campaign_type", "contact_date", "channels",
                                     "discounts", "n_treated", "n_control", "cost", "expected_conversion_rate",
                                     "expected_incremental_revenue", "expected_incremental_margin"])
    t = rows[rows["group"] == "treatment"].copy()
    v, d, m = t["expected_order_value"], t["discount_pct"] / 100, t["margin_pct"] / 100
    t["_rev"] = t["p_treated"] * v * (1 - d) - t["p_control"] * v
    var_conv = t["p_treated"] * (1 - t["p_treated"]) + t["p_control"] * (1 - t["p_control"])
    t["_var_rev"] = var_conv * v ** 2
    t["_var_margin"] = var_conv * (v * m) ** 2
    agg = t.groupby("campaign_id").agg(
        offer_id=("offer_id", "first"), campaign_type=("campaign_type", "first"),
        contact_date=("contact_date", "first"), channels=("channel", lambda s: ", ".join(sorted(s.unique()))),
        discounts=("discount_pct", lambda s: ", ".join(f"{x:g}%" for x in sorted(set(s)))),
        n_treated=("customer_id", "size"), cost=("cost", "sum"), expected_conversion_rate=("p_treated", "mean"),
        expected_conversions=("p_treated", "sum"), expected_incremental_revenue=("_rev", "sum"),
        var_rev=("_var_rev", "sum"), expected_incremental_margin=("value", "sum"), var_margin=("_var_margin", "sum"),
        expected_control_rate=("p_control", "mean"))
    agg["n_control"] = rows[rows["group"] == "control"].groupby("campaign_id").size().reindex(agg.index).fillna(0)
    agg["n_control"] = agg["n_control"].astype(int)
    for what, var in (("revenue", "var_rev"), ("margin", "var_margin")):
        half = Z95 * np.sqrt(agg[var])
        agg[f"{what}_low"] = agg[f"expected_incremental_{what}"] - half
        agg[f"{what}_high"] = agg[f"expected_incremental_{what}"] + half
    cols = ["offer_id", "campaign_type", "contact_date", "channels", "discounts", "n_treated", "n_control", "cost",
            "expected_conversion_rate", "expected_control_rate", "expected_conversions",
            "expected_incremental_revenue", "revenue_low", "revenue_high", "expected_incremental_margin",
            "margin_low", "margin_high"]
    return agg[cols].reset_index().sort_values(["contact_date", "campaign_id"], ignore_index=True)


def constraint_table(solved: assignment.Assignment) -> pd.DataFrame:
    """The solver's coupling constraints: capacity, use, binding, and what one more unit is worth (LP dual)."""
    table = solved.constraints.reset_index()
    return table.sort_values(["binding", "dual"], ascending=[False, False], ignore_index=True)


def plan_sentence(plan: Plan) -> str:
    """The plan in one sentence, with its optimality certificate."""
    a = plan.assignment
    binding = plan.assignment.constraints
    binding = binding[binding["binding"]]
    treated = int((plan.rows["group"] == "treatment").sum())
    text = (f"Of {plan.n_eligible:,} customers with at least one allowed offer, {plan.rows['customer_id'].nunique():,} "
            f"are in the plan ({treated:,} contacts to send, {int((plan.rows['group'] == 'control').sum()):,} kept as "
            f"control). Expected extra margin {a.objective:,.0f} before control groups; the solver ({a.solver}) proves "
            f"no plan can beat {a.bound:,.0f} (gap {a.gap:.2%}). Customers whose best offer has an expected uplift "
            "in margin of zero or less are not contacted.")
    if len(binding):
        top = binding.sort_values("dual", ascending=False).index[0]
        text += (f" Binding: {', '.join(binding.index[:4])}; one more unit of {top} is worth "
                 f"{binding['dual'].iloc[0]:,.2f}.")
    else:
        text += " No capacity or budget limit binds: value, consent and contact caps decide."
    return text


def balance(plan: Plan, customers: pd.DataFrame) -> pd.DataFrame:
    """Treatment vs control balance of the plan (standardised mean differences), over all campaigns."""
    cols = [c for c in BALANCE if c in customers.columns]
    frame = plan.rows[["customer_id", "group"]].merge(customers[["customer_id", *cols]], on="customer_id", how="left")
    if frame["group"].nunique() < 2:
        return pd.DataFrame(columns=["mean_treatment", "mean_control", "smd", "imbalanced"])
    return control_groups.balance_table(frame, cols).reset_index()


def balance_sentence(table: pd.DataFrame) -> str:
    """Whether randomisation produced comparable groups."""
    if table.empty:
        return "No control group in this plan, so no balance to check."
    bad = table[table["imbalanced"]]
    worst = table["smd"].abs().max()
    if bad.empty:
        return (f"Treatment and control groups are comparable on every covariate (largest standardised difference "
                f"{worst:.2f}, threshold 0.10): the measured lift will be the campaign's effect.")
    return (f"{len(bad)} covariate(s) differ by more than 0.10 standard deviations ({', '.join(bad['covariate'][:3])})"
            ": small campaigns; use the covariate-adjusted estimate (CUPED) when measuring them.")


# ------------------------------------------------------------------------------------------------------- outputs

def calendar(plan: Plan) -> pd.DataFrame:
    """The launch calendar: one row per campaign in date order."""
    c = plan.campaigns
    return c[["contact_date", "campaign_id", "offer_id", "campaign_type", "channels", "discounts", "n_treated",
              "n_control", "expected_incremental_margin"]]


def plot_calendar(plan: Plan) -> Figure:
    """Contacts per launch date and channel: the workload of each week."""
    t = plan.rows[plan.rows["group"] == "treatment"]
    counts = t.groupby([_day_text(t["contact_date"], "%d %b"), "channel"]).size().unstack(fill_value=0)
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    counts.plot.bar(stacked=True, ax=ax, rot=0, color=[CHANNEL_COLOURS.get(c, "#888888") for c in counts.columns])
    ax.set_xlabel("launch date")
    ax.set_ylabel("contacts sent (control excluded)")
    busiest = counts.sum(axis=1)
    ax.set_title(f"The busiest launch sends {int(busiest.max()):,} contacts" if len(busiest) else "No contacts")
    return fig


CHANNEL_COLOURS = {"email": "#4C72B0", "sms": "#DD8452", "post": "#55A868", "phone": "#C44E52"}


def target_lists(plan: Plan, customers: pd.DataFrame, out_dir: str | Path,
                 include_contact_details: bool = False) -> list[Path]:
    """`<out_dir>/target_lists/<channel>.csv`: customer_id, offer_id, campaign_id, discount, arm, group, contact_date,
    control rows included (they must NOT be contacted); e-mail / phone only when asked, and only on treatment rows."""
    folder = Path(out_dir) / "target_lists"
    folder.mkdir(parents=True, exist_ok=True)
    cols = ["customer_id", "offer_id", "campaign_id", "discount_pct", "arm", "group", "contact_date"]
    rows = plan.rows[cols + ["channel"]].rename(columns={"discount_pct": "discount"})
    rows["contact_date"] = _day_text(rows["contact_date"], "%Y-%m-%d")
    if include_contact_details:
        details = [c for c in ("email", "phone") if c in customers.columns]
        rows = rows.merge(customers[["customer_id", *details]], on="customer_id", how="left")
        for c in details:
            rows[c] = rows[c].where(rows["group"] == "treatment")
    paths = []
    for channel, part in rows.groupby("channel", sort=True):
        path = folder / f"{channel}.csv"
        _write_csv(part.drop(columns="channel").sort_values(["contact_date", "campaign_id", "group", "customer_id"]),
                   path)
        paths.append(path)
    return paths


#: Characters that make a CSV field need quotes: pandas quotes only those fields, Arrow's writer all text or none.
_CSV_QUOTED = r'[,"\r\n]'


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    """`frame.to_csv(path, index=False)`, byte for byte, by Arrow's writer (ten times faster) when every column is
    Arrow text or float and no field or name needs quotes (floats are formatted as pandas does, once per distinct
    value); else by pandas."""
    text = [c for c in frame.columns if frame[c].dtype == TEXT]
    floats = [c for c in frame.columns if pd.api.types.is_float_dtype(frame[c].dtype)]
    names = pa.array([str(c) for c in frame.columns])
    if (len(text) + len(floats) < frame.shape[1] or frame.shape[1] < 2
            or pc.any(pc.match_substring_regex(names, _CSV_QUOTED)).as_py()
            or any(pc.any(pc.match_substring_regex(pa.array(frame[c], from_pandas=True), _CSV_QUOTED)).as_py()
                   for c in text)):
        frame.to_csv(path, index=False)
        return
    out = frame.assign(**{c: per_distinct(frame[c], lambda d: pd.Series(d.to_numpy().astype(str), dtype=TEXT))
                          for c in floats})
    with open(path, "wb") as f:   # the header as pandas writes it (Arrow would quote the names)
        f.write((",".join(str(c) for c in frame.columns) + "\n").encode())
        pcsv.write_csv(pa.Table.from_pandas(out, preserve_index=False), f,
                       pcsv.WriteOptions(include_header=False, quoting_style="none"))


def contacts_rows(plan: Plan) -> pd.DataFrame:
    """The plan as contract `contacts` rows (control rows included) for the monitoring step."""
    return control_groups.to_contacts(plan.rows)


def save(con: duckdb.DuckDBPyConnection, plan: Plan, out_dir: str | Path) -> list[Path]:
    """Tables `plan` (every planned row with its estimates), `plan_campaigns`, `plan_contacts` (contract rows) and
    `plan_holdout` in the run database, and the same as Parquet (`contacts_plan.parquet` for the contacts)."""
    out_dir = Path(out_dir)
    frames = {"plan": plan.rows, "plan_campaigns": plan.campaigns, "plan_contacts": contacts_rows(plan)}
    files = {"plan": "plan", "plan_campaigns": "plan_campaigns", "plan_contacts": "contacts_plan"}
    return [customer_db.write_table(con, name, frame, out_dir, files[name]) for name, frame in frames.items()]


def save_holdout(con: duckdb.DuckDBPyConnection, setup: Setup, out_dir: str | Path) -> Path:
    """The global holdout (customers no campaign of this plan contacts) as table `plan_holdout` and Parquet."""
    return customer_db.write_table(con, "plan_holdout", setup.holdout.assign(as_of=setup.as_of), out_dir)


def campaign_cards(plan: Plan, setup: Setup) -> list[cards.Card]:
    """One `cvm.cards.Card` per campaign: goal/type, target definition, offer and discount, channel, treated and
    control counts, expected redemption rate, expected extra revenue and extra margin with 95 % ranges."""
    by_id = {o.offer_id: o for o in setup.offers}
    out = []
    for c in plan.campaigns.itertuples(index=False):
        o = by_id[c.offer_id]
        target = "; ".join(f"{k} {v}" for k, v in o.eligibility.items()) or "every customer"
        setup_figs = {"launch date": pd.Timestamp(c.contact_date), "channel(s)": c.channels,
                      "discount(s)": c.discounts, "treated contacts": int(c.n_treated),
                      "control customers": int(c.n_control), "contact cost": float(c.cost)}
        expected = {"redemption rate, contacted": f"{c.expected_conversion_rate:.1%}",
                    "purchase rate without contact": f"{c.expected_control_rate:.1%}",
                    "extra revenue": float(c.expected_incremental_revenue),
                    "extra revenue, 95% range": f"{c.revenue_low:,.0f} to {c.revenue_high:,.0f}",
                    "extra margin": float(c.expected_incremental_margin),
                    "extra margin, 95% range": f"{c.margin_low:,.0f} to {c.margin_high:,.0f}"}
        out.append(cards.Card(
            title=f"{c.campaign_id} · {o.name}", subtitle=f"{o.campaign_type} campaign on {c.channels}",
            decision=f"Send on {pd.Timestamp(c.contact_date):%d %b %Y} to the {int(c.n_treated):,} treated "
                     f"customers; keep the {int(c.n_control):,} control customers uncontacted.",
            sections=(cards.Section("Goal / type", f"{o.campaign_type}: {o.description}"),
                      cards.Section("Target definition", f"{target}; consent for the channel, contact policy "
                                                         "respected, expected extra margin above zero."),
                      cards.Section("Offer, channel and counts", setup_figs),
                      cards.Section("Expected results (ranges: outcome randomness only)", expected))))
    return out


def write_cards(plan: Plan, setup: Setup, out_dir: str | Path) -> list[Path]:
    """One HTML card per campaign in `<out_dir>/cards/<campaign_id>.html` (rendered by `cvm.cards`)."""
    folder = Path(out_dir) / "cards"
    return [cards.write(card, folder, str(c)) for card, c in zip(campaign_cards(plan, setup),
                                                                 plan.campaigns["campaign_id"])]


# ----------------------------------------------------------------------------------------------------- comparisons

def diffusive_vs_targeted(scored: pd.DataFrame, plan: Plan, seed: int = 0) -> pd.DataFrame:
    """The plan against a diffusive campaign of the same budget: every eligible customer, in random order (seeded)
    until the plan's contact spend is reached, gets on the first launch date one offer he is eligible for (at random)
    at its highest discount on his cheapest allowed channel. Expected contacts, redemption rate, sales, extra margin
    and the margin given away to customers who would have bought anyway (dilution)."""
    treated = plan.rows[plan.rows["group"] == "treatment"]
    first = _first_launch(scored, ["customer_id", "offer_id", "discount_pct", "cost", "p_treated", "p_control",
                                   "expected_order_value", "value"])
    rng = np.random.default_rng(seed)
    top = first[first["discount_pct"] == first.groupby("offer_id")["discount_pct"].transform("max")]
    u = rng.random(len(top))
    # per customer (codes in text order) and offer the row with the lowest u, then per customer the cheapest of those
    # (lowest u among equal costs), in customer order: sorts and first-of-run picks on numbers, not on the text ids
    who, what = pd.factorize(top["customer_id"], sort=True)[0], pd.factorize(top["offer_id"])[0]
    by_u = np.lexsort((u, who))
    per_offer = by_u[np.sort(np.unique(who[by_u] * (int(what.max(initial=0)) + 1) + what[by_u], return_index=True)[1])]
    by_cost = per_offer[np.lexsort((u[per_offer], top["cost"].to_numpy()[per_offer], who[per_offer]))]
    cheapest = by_cost[np.r_[True, who[by_cost][1:] != who[by_cost][:-1]]] if len(by_cost) else by_cost
    order = top.assign(_u=u).iloc[cheapest].sample(frac=1.0, random_state=seed)
    spend = float(treated["cost"].sum())
    diffusive = order[order["cost"].cumsum() <= spend + 1e-9]
    rows = []
    for name, frame in (("targeted (plan)", treated), ("diffusive, same budget", diffusive)):
        v, d = frame["expected_order_value"], frame["discount_pct"] / 100
        rows.append({"approach": name, "contacts": len(frame), "cost": float(frame["cost"].sum()),
                     "expected_redemption_rate": float(frame["p_treated"].mean()) if len(frame) else np.nan,
                     "expected_sales": float((frame["p_treated"] * v * (1 - d)).sum()),
                     "expected_incremental_margin": float(frame["value"].sum()),
                     "margin_lost_to_dilution": float((d * v * frame["p_control"]).sum())})
    return pd.DataFrame(rows)


def diffusive_sentence(table: pd.DataFrame) -> str:
    """The targeting gain in one sentence."""
    t, d = table.iloc[0], table.iloc[1]
    return (f"With the same contact budget ({t['cost']:,.0f}), the targeted plan is expected to earn "
            f"{t['expected_incremental_margin']:,.0f} extra margin against {d['expected_incremental_margin']:,.0f} "
            f"for a diffusive campaign, which would also give {d['margin_lost_to_dilution']:,.0f} of discount to "
            f"customers who would have bought anyway (plan: {t['margin_lost_to_dilution']:,.0f}).")


def true_values(scored: pd.DataFrame, truth: Any, codes: assignment.Codes | None = None) -> pd.Series:
    """Demo only: the TRUE expected incremental margin of every scored candidate (same index), from the generator's
    response (`cvm.demo.true_response` with the `cvm.demo.DemoTruth`, state at as_of, true order value), less the
    contact cost. Customers without truth (test accounts) earn 0 (and pay the contact). `codes`: a solve's on these
    rows, to look up only the distinct customers."""
    from cvm import demo

    ct = truth.customer_truth
    if codes is None:
        position = key_positions(scored["customer_id"], ct["customer_id"])
    else:
        position = key_positions(pd.Series(codes.customers), ct["customer_id"])[codes.customer]
    gain = np.zeros(len(scored))
    variants = _variants(scored)
    for v, rows in variants.slices():
        at = variants.order[rows]
        known = position[at] >= 0
        ids, inverse = np.unique(position[at][known], return_inverse=True)
        resp = demo.true_response(ct.iloc[ids], v.campaign_type, v.channel, float(v.discount_pct), truth)
        value = uplift.incremental_margin(resp["p_treated"], resp["p_control"], resp["expected_order_value"],
                                          scored["margin_pct"].iloc[at[0]], v.discount_pct, 0.0)
        gain[at[known]] = value[inverse]
    return pd.Series(gain - scored["cost"].to_numpy(dtype=float), index=scored.index)


@dataclass
class OracleCheck:
    """Demo only: the plan's TRUE extra margin against the oracle plan's (same candidates, policy and solver)."""

    plan_true_margin: float
    oracle_true_margin: float
    plan_expected_margin: float
    table: pd.DataFrame

    @property
    def ratio(self) -> float:
        return self.plan_true_margin / self.oracle_true_margin if self.oracle_true_margin > 0 else float("nan")


def oracle_check(scored: pd.DataFrame, plan: Plan, setup: Setup, cap: pd.Series, truth_dir: str | Path,
                 max_exact_rows: int = 20_000, seed: int = 0) -> OracleCheck:
    """Assign with the TRUE response instead of the estimates (same candidates, policy, solver) and compare the true
    extra margin of both plans, before control groups (the same random share is held back from both). `plan` is
    `make_plan`'s on this `scored` (the oracle reuses its key codes)."""
    from cvm import demo

    truth = demo.load_truth(Path(truth_dir))
    codes = plan.assignment.codes
    oracle = solve(scored.assign(value=true_values(scored, truth, codes)), setup, cap, max_exact_rows, seed, codes)
    rows = []
    for name, chosen, expected, true in (
            ("plan (estimates)", plan.assignment.plan, plan.assignment.objective,
             true_values(plan.assignment.plan, truth)),
            ("oracle (true response)", oracle.plan, np.nan, oracle.plan["value"])):
        rows.append({"plan": name, "contacts": len(chosen), "customers": chosen["customer_id"].nunique(),
                     "expected_margin": expected, "true_margin": float(true.sum())})
    return OracleCheck(rows[0]["true_margin"], rows[1]["true_margin"], float(plan.assignment.objective),
                       pd.DataFrame(rows))


def oracle_sentence(check: OracleCheck | None) -> str:
    """How close the plan comes to the best possible plan (demo only)."""
    if check is None:
        return "No oracle check: this is not the demo (no generator truth)."
    return (f"Judged by the generator's TRUE response, the plan earns {check.plan_true_margin:,.0f} extra margin, "
            f"{check.ratio:.0%} of the {check.oracle_true_margin:,.0f} an oracle that knows every customer's true "
            f"response would earn under the same policy (the plan expected {check.plan_expected_margin:,.0f}).")


# ------------------------------------------------------------------------------------------- response on a CSV file

def response_model_from_csv(path: str | Path, outcome: str, exclude: Sequence[str] = ("duration",),
                            seed: int = 0) -> uplift.ResponseModel:
    """A plain response model on a contact-history CSV (separator sniffed), without the columns in `exclude` (known
    only after the contact, e.g. a call's duration); its AUC is measured on a stratified holdout."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"response_history: file not found: {path}.")
    frame = pd.read_csv(path, sep=None, engine="python")
    if outcome not in frame.columns:
        raise InputError(f"{path}: outcome column '{outcome}' missing ({len(frame)} rows; columns "
                         f"{list(frame.columns)[:20]}). Set response_outcome.")
    features = [c for c in frame.columns if c != outcome and c not in exclude]
    return uplift.fit_response_model(frame, features, outcome, seed=seed)


def response_sentence(model: uplift.ResponseModel | None, path: str) -> str:
    """The response model's headline."""
    if model is None:
        return "No contact-history file given (`response_history`): no separate response model in this run."
    return (f"Response model on `{Path(path).name}` ({model.n_train + model.n_test:,} contacts, response rate "
            f"{model.base_rate:.1%}): holdout AUC {model.auc:.3f} on {model.n_test:,} contacts, using only what is "
            "known before the contact.")


# ---------------------------------------------------------------------------------------------------------- summary

def summary(plan: Plan, setup: Setup, est: Estimates, sources: pd.DataFrame, comparison: pd.DataFrame,
            oracle: OracleCheck | None, validation: Validation | None,
            response: uplift.ResponseModel | None) -> dict[str, Any]:
    """The step's key figures for summary.json."""
    a = plan.assignment
    campaigns = [{"campaign_id": c.campaign_id, "offer_id": c.offer_id, "channel": c.channels,
                  "contact_date": pd.Timestamp(c.contact_date).date().isoformat(), "n_treated": int(c.n_treated),
                  "n_control": int(c.n_control), "expected_conversion_rate": float(c.expected_conversion_rate),
                  "expected_incremental_margin": float(c.expected_incremental_margin)}
                 for c in plan.campaigns.itertuples(index=False)]
    out: dict[str, Any] = {
        "n_customers": len(setup.customers) + len(setup.holdout), "n_global_holdout": len(setup.holdout),
        "n_eligible": plan.n_eligible, "n_contacted": int((plan.rows["group"] == "treatment").sum()),
        "n_customers_contacted": int(plan.rows.loc[plan.rows["group"] == "treatment", "customer_id"].nunique()),
        "n_control": int((plan.rows["group"] == "control").sum()), "campaigns": campaigns,
        "launch_dates": [d.date().isoformat() for d in setup.dates],
        "expected_incremental_margin": float(a.objective), "lp_bound": float(a.bound),
        "assignment_gap": float(a.gap), "solver": a.solver, "policy_violations": len(plan.violations),
        "estimate_sources": sources["source"].value_counts().to_dict(), "model_trained": est.model is not None,
        "prior_source": est.prior_label,
        "diffusive_incremental_margin": float(comparison.iloc[1]["expected_incremental_margin"]),
        "targeted_incremental_margin": float(comparison.iloc[0]["expected_incremental_margin"]),
    }
    if validation is not None:
        out["validation_mean_qini"] = float(validation.table["qini"].mean())
    if response is not None:
        out["response_model_auc"] = response.auc
    if oracle is not None:
        out.update({"true_incremental_margin": oracle.plan_true_margin,
                    "oracle_true_incremental_margin": oracle.oracle_true_margin, "oracle_ratio": oracle.ratio})
    return out
