"""Glue of the knowledge step: CLV fitting and scoring on the feature table, its checks, and `customer_knowledge`.

The models live in `cvm.clv`, `cvm.rfm`, `cvm.churn`, `cvm.lifecycle`, `cvm.personas` and `cvm.anomalies`; this module
chains them the way the notebook presents them and assembles the one table every later step reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
from matplotlib.figure import Figure

from cvm import anomalies, churn, clv, customer_db, lifecycle, personas, rfm
from cvm import features as feat
from cvm.config import RunConfig
from cvm.engine import DuckDBEngine, Engine, fetch, spark_engine
from cvm.errors import InputError
from cvm.keys import isin_keys, key_positions, repeated_keys, rows_at

#: columns every later step relies on, in this order (then consents and descriptive attributes)
KNOWLEDGE_COLUMNS = ["customer_id", "recency_days", "frequency", "monetary", "n_orders", "last_purchase", "r_score",
                     "f_score", "m_score", "rfm_segment", "persona", "p_alive", "expected_purchases",
                     "expected_order_value", "next_purchase_date", "clv", "churn_risk", "churn_source",
                     "lifecycle_stage", "anomaly_flag", "anomaly_reason"]
NO_PURCHASE = "No purchase in the window"
#: the purchase-history summary kept for the personalisation step (`save_purchase_history`)
HISTORY_TABLE = "purchase_history"
CARRIED = ("consent_email", "consent_sms", "consent_phone", "consent_post", "region", "age_band", "birth_year", "gender",
           "acquisition_channel", "acquisition_cost", "signup_date", "loyalty_tier", "email", "phone")


@dataclass(frozen=True)
class CLVModels:
    """The two fitted models and the modelled population."""

    bgnbd: clv.BGNBDFit
    gamma_gamma: clv.GammaGammaFit
    n_modelled: int
    n_repeat: int


def modelled(features: pd.DataFrame, excluded: pd.Series | None = None) -> pd.DataFrame:
    """Customers the models learn from: with a purchase (finite x, T > 0) and not flagged as anomalies."""
    use = features["x"].notna() & (features["T"] > 0)
    if excluded is not None:
        use &= ~isin_keys(features["customer_id"], excluded)
    return features.loc[use]


def _enough_modelled(features: pd.DataFrame, excluded: pd.Series | None) -> pd.DataFrame:
    data = modelled(features, excluded)
    if len(data) < 50:
        raise InputError(f"knowledge: only {len(data)} customers with purchases to model; CLV needs at least 50.")
    return data


def fit_bgnbd(features: pd.DataFrame, excluded: pd.Series | None = None) -> clv.BGNBDFit:
    """Fit BG/NBD alone on (x, t_x, T) of the modelled customers (the purchase model of later steps)."""
    data = _enough_modelled(features, excluded)
    return clv.fit_bgnbd(data["x"], data["t_x"], data["T"])


def fit_clv(features: pd.DataFrame, excluded: pd.Series | None = None) -> CLVModels:
    """Fit BG/NBD on (x, t_x, T) and Gamma-Gamma on repeat customers' mean repeat value."""
    data = _enough_modelled(features, excluded)
    bgnbd = clv.fit_bgnbd(data["x"], data["t_x"], data["T"])
    repeat = data.loc[(data["x"] > 0) & (data["mean_repeat_value"] > 0)]
    gamma_gamma = clv.fit_gamma_gamma(repeat["x"], repeat["mean_repeat_value"])
    return CLVModels(bgnbd, gamma_gamma, len(data), len(repeat))


def score_clv(features: pd.DataFrame, models: CLVModels, as_of: str | date, horizon_months: int,
              discount_rate_annual: float, time_unit: str, margin: float = 1.0) -> pd.DataFrame:
    """Per customer: P(alive), expected purchases over the horizon, expected order value, next purchase date, CLV."""
    data = features.loc[features["x"].notna() & (features["T"] > 0)]
    x, t_x, big_t = data["x"].to_numpy(), data["t_x"].to_numpy(), data["T"].to_numpy()
    horizon = horizon_months * feat.TIME_UNIT_DAYS["M"] / feat.TIME_UNIT_DAYS[time_unit]
    next_purchase = clv.bgnbd_next_purchase(models.bgnbd, x, big_t, as_of, time_unit)
    out = pd.DataFrame({
        "customer_id": data["customer_id"].to_numpy(),
        "p_alive": clv.bgnbd_p_alive(models.bgnbd, x, t_x, big_t),
        "expected_purchases": clv.bgnbd_expected_purchases(models.bgnbd, horizon, x, t_x, big_t),
        "expected_order_value": clv.gg_expected_order_value(models.gamma_gamma, x, data["mean_repeat_value"]),
        "next_purchase_date": next_purchase["next_purchase_date"].to_numpy(),
        "clv": clv.customer_lifetime_value(models.bgnbd, models.gamma_gamma, x, t_x, big_t,
                                           data["mean_repeat_value"], horizon_months, discount_rate_annual,
                                           time_unit, margin).to_numpy(),
    })
    for col in ("p_alive", "expected_purchases", "expected_order_value", "clv"):
        out[col] = out[col].astype("float32")
    return out


def parameter_table(models: CLVModels) -> pd.DataFrame:
    """The fitted parameters with standard errors and what each means."""
    meaning = {"r": "shape of purchase-rate heterogeneity", "alpha": "scale of purchase rates (time units)",
               "a": "dropout shape (a)", "b": "dropout shape (b)", "p": "shape of order values",
               "q": "shape of spend heterogeneity", "gamma": "scale of spend heterogeneity"}
    rows = []
    for name, fit in (("BG/NBD", models.bgnbd), ("Gamma-Gamma", models.gamma_gamma)):
        for key, value in fit.params().items():
            rows.append({"model": name, "parameter": key, "estimate": value, "std_error": fit.se.get(key, np.nan),
                         "meaning": meaning[key]})
    return pd.DataFrame(rows)


def guardrails(features: pd.DataFrame, models: CLVModels, excluded: pd.Series | None = None) -> pd.DataFrame:
    """The assumptions and fit checks a reader must see next to the CLV figures."""
    data = modelled(features, excluded)
    corr = clv.spend_frequency_correlation(data["x"], data["mean_repeat_value"])
    one_time = float((data["x"] == 0).mean())
    return pd.DataFrame([
        {"check": "spend-frequency correlation (Gamma-Gamma assumes ~0)", "value": f"{corr:+.2f}",
         "status": "ok" if abs(corr) < 0.3 else "warning: spend model biased"},
        {"check": "share of one-time buyers", "value": f"{one_time:.0%}",
         "status": "ok" if one_time < 0.8 else "warning: little repeat behaviour to learn from"},
        {"check": "BG/NBD converged", "value": "yes" if models.bgnbd.converged else "no",
         "status": "ok" if models.bgnbd.converged else f"warning: {models.bgnbd.message}"},
        {"check": "Gamma-Gamma converged", "value": "yes" if models.gamma_gamma.converged else "no",
         "status": "ok" if models.gamma_gamma.converged else f"warning: {models.gamma_gamma.message}"},
        {"check": "customers modelled / with repeat purchases", "value": f"{models.n_modelled:,} / {models.n_repeat:,}",
         "status": "ok" if models.n_repeat >= 100 else "warning: few repeat customers"},
    ])


@dataclass(frozen=True)
class HoldoutCheck:
    """Calibration fit and its holdout comparison."""

    models: CLVModels
    by_frequency: clv.HoldoutResult
    tracking: pd.DataFrame


def feature_engine(config: RunConfig, con: duckdb.DuckDBPyConnection) -> Engine:
    """Where the per-customer aggregation runs: the run database (engine: duckdb), or Spark reading the transactions
    source files directly (engine: spark; master, settings and location from the config's spark block)."""
    if config.engine == "spark":
        return spark_engine(config.sources["transactions"], config.spark)
    return DuckDBEngine(con)


def holdout_check(con: duckdb.DuckDBPyConnection | Engine, calibration_end: str, as_of: str | date, time_unit: str,
                  btyd_basis: str, excluded: pd.Series | None = None) -> HoldoutCheck:
    """Fit on transactions up to calibration_end; compare predicted and actual purchase days after it."""
    if btyd_basis != "days":
        raise InputError("calibration_end: the holdout check counts purchase days; run it with btyd_basis 'days'.")
    cal = feat.customer_features(con, calibration_end, time_unit=time_unit, btyd_basis="days")
    models = fit_clv(cal, excluded)
    holdout = feat.holdout_purchases(con, calibration_end, as_of)
    length = (pd.Timestamp(as_of) - pd.Timestamp(calibration_end)).days / feat.TIME_UNIT_DAYS[time_unit]
    by_frequency = clv.holdout_comparison(models.bgnbd, modelled(cal, excluded), holdout, length)
    daily = feat.daily_purchase_counts(con, calibration_end, as_of)
    tracking = clv.cumulative_tracking(models.bgnbd, daily, calibration_end, as_of, time_unit)
    return HoldoutCheck(models, by_frequency, tracking)


def holdout_sentence(check: HoldoutCheck, unit_label: str) -> str:
    """How well the model fitted on the past predicted the holdout."""
    result = check.by_frequency
    return (f"Fitted only on data before the holdout, the model predicted {result.total_predicted:,.0f} repeat "
            f"purchases against {result.total_actual:,.0f} actual ({result.total_pct_error:+.1f}%); mean absolute "
            f"error per customer {result.mae:.2f} purchases. The chart compares predicted and actual purchases "
            f"per {unit_label[:-1]} cumulatively.")


def clv_sentence(scores: pd.DataFrame, horizon_months: int) -> str:
    """The CLV headline for the client."""
    ranked = scores["clv"].sort_values(ascending=False)
    top = ranked.head(max(1, len(ranked) // 5)).sum() / ranked.sum() if ranked.sum() > 0 else float("nan")
    alive = float((scores["p_alive"] >= 0.5).mean())
    return (f"Expected value of the base over the next {horizon_months} months: {ranked.sum():,.0f} (discounted). "
            f"The top 20% of customers hold {top:.0%} of it; {alive:.0%} of customers are more likely than not "
            "still active.")


def assemble(customer: pd.DataFrame, features: pd.DataFrame, parts: list[pd.DataFrame]) -> pd.DataFrame:
    """`customer_knowledge`: one row per customer of the customer view, every model's columns joined on customer_id,
    then consents and descriptive attributes carried from the customer table (left joins on a unique key, matched
    through Arrow, `cvm.keys.key_positions`). Parts with the same customer_id column (the features' customers, their
    scores, risks and flags) are looked up once: at 1M customers each lookup costs 0.2 s, the comparison 1 ms."""
    ids = customer["customer_id"].drop_duplicates().reset_index(drop=True)
    cols = {"recency_days": "recency_days", "frequency": "frequency", "monetary_total": "monetary",
            "n_orders": "n_orders", "last_purchase": "last_purchase"}
    carried = [c for c in CARRIED if c in customer.columns]
    blocks = [ids.to_frame()]
    looked_up: list[tuple[pd.Series, np.ndarray]] = []
    for part in [features[["customer_id", *cols]].rename(columns=cols), *parts]:
        keys = part["customer_id"]
        repeated = repeated_keys(keys)
        if repeated:
            raise InputError(f"assemble: {repeated} repeated customer_id in the part with columns "
                             f"{list(part.columns[1:])}; give one row per customer.")
        positions = next((pos for seen, pos in looked_up if seen.array.equals(keys.array)), None)
        if positions is None:
            positions = key_positions(ids, keys)
            looked_up.append((keys, positions))
        blocks.append(rows_at(part.drop(columns="customer_id"), positions))
    blocks.append(rows_at(customer[carried], key_positions(ids, customer["customer_id"])))  # first row per customer
    out = pd.concat(blocks, axis=1)
    out["anomaly_flag"] = out["anomaly_flag"].fillna(False).astype(bool)
    out["rfm_segment"] = out["rfm_segment"].fillna(NO_PURCHASE)
    first = [c for c in KNOWLEDGE_COLUMNS if c in out.columns]
    return out[first + [c for c in out.columns if c not in first]]


def segment_sentence(table: pd.DataFrame) -> str:
    """Where the customers are and where the revenue is."""
    biggest = table.sort_values("customers", ascending=False).iloc[0]
    richest = table.sort_values("share_revenue", ascending=False).iloc[0]
    return (f"The largest segment is {biggest['segment']} ({biggest['share_customers']:.0%} of customers); "
            f"{richest['segment']} bring the most revenue ({richest['share_revenue']:.0%} with "
            f"{richest['share_customers']:.0%} of customers).")


def plot_segments(table: pd.DataFrame, colours: dict[str, str]) -> Figure:
    """Share of customers next to share of revenue per segment: where value concentrates."""
    import matplotlib.pyplot as plt

    shown = table[table["customers"] > 0].iloc[::-1]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(shown) + 1.5))
    y = np.arange(len(shown))
    ax.barh(y + 0.2, shown["share_customers"] * 100, height=0.4, color="#bbbbbb", label="share of customers")
    ax.barh(y - 0.2, shown["share_revenue"] * 100, height=0.4,
            color=[colours.get(s, "#4C72B0") for s in shown["segment"]], label="share of revenue")
    ax.set_yticks(y, shown["segment"])
    ax.set_xlabel("% of all customers / of all revenue")
    top = table.sort_values("share_revenue", ascending=False).iloc[0]
    ax.set_title(f"{top['segment']}: {top['share_customers']:.0%} of customers, {top['share_revenue']:.0%} of revenue")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def rfm_frame(scores: pd.DataFrame, segments: pd.Series) -> pd.DataFrame:
    """customer_id, r/f/m scores and the segment name, for the knowledge table."""
    out = scores[["customer_id", "r_score", "f_score", "m_score"]].copy()
    out["rfm_segment"] = segments.astype(str).to_numpy()
    return out


UNIT_LABELS = {"D": "days", "W": "weeks", "M": "months"}


def plot_clv_by_segment(values: pd.DataFrame, scores: rfm.RFMResult, segments: pd.Series,
                        colours: dict[str, str]) -> Figure:
    """Total expected value per RFM segment: where the future money is."""
    import matplotlib.pyplot as plt

    pos = key_positions(values["customer_id"], scores.scores["customer_id"])  # an inner join on the customer id
    found = pos >= 0
    segment = pd.Categorical(segments.astype(str).to_numpy()[pos[found]])
    frame = values["clv"][found].groupby(segment, observed=True).agg(["sum", "mean", "size"])
    frame.index = frame.index.astype(str)
    frame = frame.sort_values("sum")
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(frame) + 1.5))
    ax.barh(frame.index, frame["sum"], color=[colours.get(s, "#4C72B0") for s in frame.index])
    for y, (total, mean) in enumerate(zip(frame["sum"], frame["mean"])):
        ax.text(total, y, f"  {mean:,.0f} per customer", va="center", fontsize=9)
    ax.set_xlabel("Expected discounted value over the horizon (currency)")
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    share = frame["sum"].iloc[-1] / frame["sum"].sum()
    ax.set_title(f"{frame.index[-1]} hold {share:.0%} of the expected future value")
    fig.tight_layout()
    return fig


def save(con: duckdb.DuckDBPyConnection, table: pd.DataFrame, out_dir: Path) -> Path:
    """Write `customer_knowledge` to the run database (replacing it) and to `<out_dir>/customer_knowledge.parquet`."""
    return customer_db.write_table(con, "customer_knowledge", table, out_dir)


def save_purchase_history(con: duckdb.DuckDBPyConnection, features: pd.DataFrame, as_of: str | date) -> None:
    """Keep the purchase-history summary of an all-history `customer_features` frame (`cvm.features.HISTORY_COLUMNS`)
    as table `purchase_history` of the run database, with the as_of it was computed for: the personalisation step
    rebuilds its days-basis features from it instead of aggregating the transactions again (1M customers: 5 s)."""
    con.register("_history_frame", pa.Table.from_pandas(features[list(feat.HISTORY_COLUMNS)], preserve_index=False))
    try:
        con.execute(f"CREATE OR REPLACE TABLE {HISTORY_TABLE} AS "
                    f"SELECT *, DATE '{pd.Timestamp(as_of).date()}' AS as_of FROM _history_frame")
    finally:
        con.unregister("_history_frame")


def load_purchase_history(con: duckdb.DuckDBPyConnection, as_of: str | date) -> pd.DataFrame:
    """The `purchase_history` table the knowledge step saved for this as_of (its rows in their order); a clear error
    when it is missing or was computed for another date."""
    day = pd.Timestamp(as_of).date()
    if not customer_db.has_table(con, HISTORY_TABLE):
        raise InputError(f"customer database: table '{HISTORY_TABLE}' is missing. Run the knowledge step first "
                         "(steps: [data, knowledge, personalisation]).")
    (low, high), = con.execute(f"SELECT MIN(as_of), MAX(as_of) FROM {HISTORY_TABLE}").fetchall()
    if low != day or high != day:
        raise InputError(f"customer database: table '{HISTORY_TABLE}' was computed for as_of {low}, not {day}; "
                         "re-run the knowledge step with this as_of.")
    return fetch(con.sql(f"SELECT {', '.join(feat.HISTORY_COLUMNS)} FROM {HISTORY_TABLE}"))


def example_ids(table: pd.DataFrame, n: int = 3) -> list[str]:
    """Customers worth a card when none are named: the highest CLV, a high churn risk and a new customer."""
    picks = []
    table = table.loc[~table["anomaly_flag"], ["customer_id", "clv", "churn_risk", "n_orders", "recency_days"]]
    ranked = table["clv"].dropna().sort_values(ascending=False)
    if len(ranked):
        picks.append(table.at[ranked.index[0], "customer_id"])
    risky = table.loc[table["clv"] > table["clv"].median(), "churn_risk"].sort_values(ascending=False)
    if len(risky):
        picks.append(table.at[risky.index[0], "customer_id"])
    newest = table.dropna(subset=["recency_days"]).sort_values(["n_orders", "recency_days"])
    if len(newest):
        picks.append(newest["customer_id"].iloc[0])
    return list(dict.fromkeys(picks))[:n]


KPI_LABELS = {"customers_to_date": "customers to date", "active_customers": "active customers (bought in the window)",
              "orders": "orders in the window", "revenue": "net revenue in the window",
              "returns": "returns in the window", "aov": "average order value",
              "orders_per_active_customer": "orders per active customer",
              "revenue_per_active_customer": "revenue per active customer"}


def kpi_table(kpis: dict) -> pd.DataFrame:
    """The headline figures as a two-column table for the report."""
    rows = [{"figure": label, "value": f"{kpis[key]:,.2f}" if isinstance(kpis[key], float) else f"{kpis[key]:,}"}
            for key, label in KPI_LABELS.items()]
    rows.append({"figure": "window", "value": f"{kpis['window_start']} to {kpis['as_of']}"})
    return pd.DataFrame(rows)


def flag_customers(con: duckdb.DuckDBPyConnection, as_of: str | date, feats: pd.DataFrame,
                   customer: pd.DataFrame) -> pd.DataFrame:
    """Anomaly flags with the order-level inputs joined to the features (cvm.anomalies rules)."""
    inputs = anomalies.anomaly_inputs(con, as_of)
    joined = rows_at(inputs.drop(columns="customer_id"), key_positions(feats["customer_id"], inputs["customer_id"]))
    return anomalies.flag_anomalies(pd.concat([feats.reset_index(drop=True), joined], axis=1), customer)


def anomaly_sentence(flags: pd.DataFrame) -> str:
    """How many customers are set aside and why."""
    n = int(flags["anomaly_flag"].sum())
    if not n:
        return "No customer looks like a bulk buyer, extreme returner, burst or test account: everyone is modelled."
    reasons = flags.loc[flags["anomaly_flag"], "anomaly_reason"].str.split("; ").explode().value_counts()
    top = ", ".join(f"{r} ({c:,})" for r, c in reasons.head(3).items())
    return (f"{n:,} customers ({n / len(flags):.1%}) are set aside from modelling and campaigns: {top}. "
            "They stay in the customer table with the reason, for a human to review.")


@dataclass(frozen=True)
class ChurnResult:
    """Churn risk per customer (customer_id, churn_risk, churn_source), the sentence and the classifier's AUC."""

    scores: pd.DataFrame
    sentence: str
    auc: float | None
    baseline_auc: float | None


CHURN_FEATURES = ("recency_days", "frequency", "monetary_total", "monetary_mean", "tenure_days", "return_rate",
                  "discount_share", "n_orders")


def churn_scores(con: duckdb.DuckDBPyConnection | Engine, as_of: str | date, feats: pd.DataFrame,
                 values: pd.DataFrame, excluded: pd.Series, seed: int, horizon_days: int = 180) -> ChurnResult:
    """Churn = no purchase in the next `horizon_days`. A classifier trained on the period before as_of − horizon
    (label: bought again in the following horizon or not) when history allows; else 1 − P(alive)."""
    cal_end = (pd.Timestamp(as_of) - pd.Timedelta(days=horizon_days)).date()
    cal = feat.customer_features(con, cal_end, top_categories=0)  # the classifier uses no category or channel mix
    cal = cal[(cal["n_orders"] > 0) & ~isin_keys(cal["customer_id"], excluded)]
    first = pd.Timestamp(feats["first_purchase"].min()).date() if len(feats) else cal_end
    holdout = feat.holdout_purchases(con, cal_end, as_of)
    churned = ~isin_keys(cal["customer_id"], holdout.loc[holdout["holdout_purchases"] > 0, "customer_id"])
    check = churn.enough_history((cal_end - first).days, horizon_days, churned)
    if not check:
        p_alive = rows_at(values[["p_alive"]], key_positions(feats["customer_id"], values["customer_id"]))["p_alive"]
        frame = pd.DataFrame({"customer_id": feats["customer_id"].to_numpy(),
                              "churn_risk": churn.churn_risk_from_p_alive(p_alive.fillna(0.0)).to_numpy("float32"),
                              "churn_source": "1 - P(alive)"})
        return ChurnResult(frame, f"Churn risk = 1 − P(alive) from the CLV model: {check.reason}", None, None)
    cols = [c for c in CHURN_FEATURES if c in cal.columns and cal[c].nunique() > 1]  # informative columns only
    model = churn.fit_churn_classifier(cal, holdout, cols, seed)
    risk = model.score(feats).to_numpy()
    frame = pd.DataFrame({"customer_id": feats["customer_id"], "churn_risk": risk.astype("float32"),
                          "churn_source": "classifier"})
    sentence = (f"Churn risk = probability of no purchase in the next {horizon_days} days, from a classifier trained on "
                f"behaviour up to {cal_end} and checked on what customers did after: holdout AUC {model.auc:.2f} "
                f"(1 is perfect, 0.5 is chance). {float((risk >= 0.5).mean()):.0%} of customers are more likely than "
                "not to buy nothing in that period.")
    return ChurnResult(frame, sentence, model.auc, model.baseline_auc)


def lifecycle_frame(inputs: pd.DataFrame, rules: lifecycle.LifecycleRules) -> pd.DataFrame:
    """customer_id and lifecycle_stage."""
    return pd.DataFrame({"customer_id": inputs["customer_id"].to_numpy(),
                         "lifecycle_stage": lifecycle.assign_lifecycle(inputs, rules).to_numpy()})


def plot_lifecycle(stages: pd.DataFrame, rules: lifecycle.LifecycleRules) -> Figure:
    """Customers per lifecycle stage, in rule order."""
    import matplotlib.pyplot as plt

    table = lifecycle.lifecycle_table(stages["lifecycle_stage"], rules)
    table = table[table["customers"] > 0]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    ax.bar(table["stage"], table["customers"], color=[rules.colours.get(s, "#999999") for s in table["stage"]])
    for x, (n, share) in enumerate(zip(table["customers"], table["share_customers"])):
        ax.text(x, n, f"{share:.0%}", ha="center", va="bottom")
    ax.set_ylabel("Customers")
    worst = table[table["stage"].isin(["at_risk", "lapsed"])]["share_customers"].sum()
    ax.set_title(f"{worst:.0%} of customers are at risk or lapsed: the win-back pool")
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class Personas:
    """Persona labels per customer, their names, the k-selection table and the fitted model."""

    labels: pd.DataFrame
    names: dict[int, str]
    choice: pd.DataFrame | None
    model: personas.PersonaModel


def find_personas(feats: pd.DataFrame, customer: pd.DataFrame, k: int, sample_size: int, seed: int,
                  excluded: pd.Series) -> Personas:
    """Cluster the modelled customers (k chosen on a sample when k = 0) and name each cluster from its profile."""
    use = feats[(feats["n_orders"] > 0) & ~isin_keys(feats["customer_id"], excluded)].reset_index(drop=True)
    X = personas.persona_features(use, customer)
    choice = personas.choose_k(X, sample_size=sample_size, seed=seed) if not k else None
    chosen = int(choice.loc[choice["chosen"], "k"].iloc[0]) if choice is not None else k
    model = personas.fit_personas(X, chosen, seed)
    names = personas.name_personas(personas.profile(use, model.labels))
    labels = pd.DataFrame({"customer_id": model.labels.index.to_numpy(),
                           "persona": model.labels.map(names).to_numpy()})
    return Personas(labels, names, choice, model)


def persona_sentence(found: Personas) -> str:
    """How many personas and how clear the grouping is."""
    sizes = found.labels["persona"].value_counts(normalize=True)
    how = "chosen as the best-separated grouping on a sample" if found.choice is not None else "set by the analyst"
    text = (f"{len(found.names)} personas ({how}); the largest is '{sizes.index[0]}' ({sizes.iloc[0]:.0%} of "
            "modelled customers).")
    if found.choice is not None:
        sil = float(found.choice.loc[found.choice["chosen"], "silhouette"].iloc[0])
        if sil < 0.25:
            text += (f" The groups overlap (silhouette {sil:.2f}): read personas as tendencies, and use RFM segments "
                     "and CLV for hard targeting rules.")
    return text


def persona_profile(feats: pd.DataFrame, found: Personas, customer: pd.DataFrame, predictions: pd.DataFrame
                    ) -> pd.DataFrame:
    """Each persona's descriptive, behavioural and predictive keys side by side (cvm.personas.persona_table)."""
    use = feats[isin_keys(feats["customer_id"], found.labels["customer_id"])]
    return personas.persona_table(use, found.model.labels, found.names, customer, predictions)


def summary(table: pd.DataFrame, segments: pd.DataFrame, models: CLVModels, check: HoldoutCheck | None,
            risk: ChurnResult, found: Personas, kpis: dict) -> dict:
    """Key figures of the knowledge step, for summary.json."""
    out = {
        "n_customers": len(table),
        "n_with_purchases": int(table["n_orders"].fillna(0).gt(0).sum()),
        "n_modelled": models.n_modelled,
        "n_excluded_anomalies": int(table["anomaly_flag"].sum()),
        "segments": {r["segment"]: int(r["customers"]) for _, r in segments.iterrows() if r["customers"] > 0},
        "bgnbd": {**models.bgnbd.params(), "log_likelihood": models.bgnbd.log_likelihood,
                  "se": models.bgnbd.se, "converged": models.bgnbd.converged},
        "gamma_gamma": {**models.gamma_gamma.params(), "log_likelihood": models.gamma_gamma.log_likelihood,
                        "se": models.gamma_gamma.se, "converged": models.gamma_gamma.converged},
        "clv_total": float(table["clv"].sum()),
        "churn": {"source": str(risk.scores["churn_source"].iloc[0]) if len(risk.scores) else None,
                  "holdout_auc": risk.auc, "baseline_auc": risk.baseline_auc},
        "lifecycle": table["lifecycle_stage"].value_counts().to_dict(),
        "personas": table["persona"].value_counts().to_dict(),
        "kpis": kpis,
    }
    if check is not None:
        out["holdout"] = {"predicted": check.by_frequency.total_predicted, "actual": check.by_frequency.total_actual,
                          "pct_error": check.by_frequency.total_pct_error, "mae": check.by_frequency.mae,
                          "calibration_bgnbd": {**check.models.bgnbd.params(),
                                                "log_likelihood": check.models.bgnbd.log_likelihood},
                          "calibration_gamma_gamma": check.models.gamma_gamma.params()}
    return out


CARD_FIELDS = {
    "Value": ["rfm_segment", "r_score", "f_score", "m_score", "monetary", "n_orders", "recency_days",
              "expected_order_value", "clv"],
    "Outlook": ["p_alive", "expected_purchases", "next_purchase_date", "churn_risk", "lifecycle_stage", "persona"],
    "Profile": ["region", "age_band", "birth_year", "gender", "acquisition_channel", "signup_date", "loyalty_tier",
                "email", "phone"],
    "Consents": ["consent_email", "consent_sms", "consent_phone", "consent_post"],
}


def _card_value(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA or value is pd.NaT:
        return "–"
    if isinstance(value, (float, np.floating)):
        return f"{value:,.2f}"
    if isinstance(value, pd.Timestamp):
        return value.date().isoformat()
    return str(value)


def customer_card_html(row: pd.Series, history: pd.DataFrame, campaigns: pd.DataFrame | None = None) -> str:
    """One-page HTML card for one customer: value, outlook, profile (contact details masked), consents, the last
    orders and the campaigns received with the responses."""
    import html

    from cvm.report import mask_pii

    masked = mask_pii(row.to_frame().T).iloc[0]
    sections = []
    for title, fields in CARD_FIELDS.items():
        cells = "".join(f"<tr><th>{html.escape(f.replace('_', ' '))}</th><td>{html.escape(_card_value(masked[f]))}"
                        f"</td></tr>" for f in fields if f in masked.index)
        sections.append(f"<section><h2>{title}</h2><table>{cells}</table></section>")
    if row.get("anomaly_flag"):
        sections.insert(0, f"<p class='flag'>Set aside from modelling: {html.escape(str(row['anomaly_reason']))}</p>")
    orders = history.to_html(index=False, float_format=lambda v: f"{v:,.2f}", border=0) if len(history) else \
        "<p>No purchases.</p>"
    style = ("body{font-family:Helvetica,Arial,sans-serif;max-width:900px;margin:24px auto;color:#222}"
             "section{display:inline-block;vertical-align:top;width:48%;margin:0 1% 12px 0}"
             "th{text-align:left;font-weight:normal;color:#555;padding:2px 12px 2px 0}td{font-weight:bold}"
             ".flag{background:#fde0dc;padding:8px;border-left:4px solid #d73027}table.dataframe td{font-weight:normal}")
    received = ""
    if campaigns is not None:
        received = "<section style='width:98%'><h2>Campaigns received</h2>" + (
            campaigns.to_html(index=False, float_format=lambda v: f"{v:,.2f}", border=0, na_rep="–")
            if len(campaigns) else "<p>None.</p>") + "</section>"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Customer {html.escape(str(row['customer_id']))}"
            f"</title><style>{style}</style></head><body><h1>Customer {html.escape(str(row['customer_id']))}</h1>"
            + "".join(sections) + f"<section style='width:98%'><h2>Last orders</h2>{orders}</section>" + received
            + "</body></html>")


def _campaigns_received(con: duckdb.DuckDBPyConnection, tables: set[str], cid: str) -> pd.DataFrame | None:
    """The customer's rows in `contacts` (campaign, arm, group, date and whichever outcomes exist), newest first."""
    if "contacts" not in tables:
        return None
    cols = set(con.execute("DESCRIBE contacts").df()["column_name"])
    if "customer_id" not in cols:
        return None
    shown = [c for c in ("campaign_id", "arm", "group", "channel", "contact_date", "discount_pct", "opened",
                         "clicked", "converted", "revenue") if c in cols]
    order = " ORDER BY contact_date DESC" if "contact_date" in cols else ""
    select = ", ".join(f'"{c}"' for c in shown)
    return con.execute(f"SELECT {select} FROM contacts WHERE customer_id = ?{order}", [cid]).df()


def write_customer_cards(table: pd.DataFrame, con: duckdb.DuckDBPyConnection, out_dir: Path,
                         ids: list[str]) -> list[Path]:
    """Write `<out_dir>/cards/customer_<id>.html` for each id (an unknown id is an error naming it)."""
    wanted = pd.Series([str(cid) for cid in ids], dtype="str")
    rows = key_positions(wanted, table["customer_id"].astype("str"))
    unknown = sorted(set(wanted[rows < 0]))
    if unknown:
        raise InputError(f"customer_card_ids: {len(unknown)} id(s) not in the customer table, e.g. {unknown[:3]}.")
    folder = Path(out_dir) / "cards"
    folder.mkdir(parents=True, exist_ok=True)
    tables = set(con.execute("SHOW TABLES").df()["name"])
    paths = []
    for cid, at in zip(ids, rows):
        row = table.iloc[at]
        history = con.execute(
            "SELECT CAST(order_date AS DATE) AS date, order_id, SUM(amount) AS net_amount, COUNT(*) AS lines "
            "FROM transactions WHERE customer_id = ? GROUP BY 1, 2 ORDER BY 1 DESC LIMIT 12", [str(cid)]).df() \
            if "transactions" in tables else pd.DataFrame()
        path = folder / f"customer_{cid}.html"
        path.write_text(customer_card_html(row, history, _campaigns_received(con, tables, str(cid))), encoding="utf-8")
        paths.append(path)
    return paths


def buyers(feats: pd.DataFrame) -> pd.DataFrame:
    """Customers with at least one purchase in the window (those with only returns have no recency to score)."""
    return feats[(feats["n_orders"] > 0) & feats["recency_days"].notna()].reset_index(drop=True)
