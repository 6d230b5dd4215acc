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

from cvm import clv, features as feat, rfm
from cvm.errors import InputError

#: columns every later step relies on, in this order (then consents and descriptive attributes)
KNOWLEDGE_COLUMNS = ["customer_id", "recency_days", "frequency", "monetary", "n_orders", "last_purchase", "r_score",
                     "f_score", "m_score", "rfm_segment", "persona", "p_alive", "expected_purchases",
                     "expected_order_value", "next_purchase_date", "clv", "churn_risk", "churn_source",
                     "lifecycle_stage", "anomaly_flag", "anomaly_reason"]
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
        use &= ~features["customer_id"].isin(excluded)
    return features.loc[use]


def fit_clv(features: pd.DataFrame, excluded: pd.Series | None = None) -> CLVModels:
    """Fit BG/NBD on (x, t_x, T) and Gamma-Gamma on repeat customers' mean repeat value."""
    data = modelled(features, excluded)
    if len(data) < 50:
        raise InputError(f"knowledge: only {len(data)} customers with purchases to model; CLV needs at least 50.")
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
        {"check": "spend-frequency correlation (Gamma-Gamma assumes ~0)", "value": round(corr, 3),
         "status": "ok" if abs(corr) < 0.3 else "warning: spend model biased"},
        {"check": "share of one-time buyers", "value": round(one_time, 3),
         "status": "ok" if one_time < 0.8 else "warning: little repeat behaviour to learn from"},
        {"check": "BG/NBD converged", "value": models.bgnbd.converged,
         "status": "ok" if models.bgnbd.converged else f"warning: {models.bgnbd.message}"},
        {"check": "Gamma-Gamma converged", "value": models.gamma_gamma.converged,
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


def holdout_check(con: duckdb.DuckDBPyConnection, calibration_end: str, as_of: str | date, time_unit: str,
                  frequency_basis: str, excluded: pd.Series | None = None) -> HoldoutCheck:
    """Fit on transactions up to calibration_end; compare predicted and actual purchases after it."""
    cal = feat.customer_features(con, calibration_end, frequency_basis=frequency_basis, time_unit=time_unit)
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
    then consents and descriptive attributes carried from the customer table."""
    base = customer[["customer_id"]].drop_duplicates()
    cols = {"recency_days": "recency_days", "frequency": "frequency", "monetary_total": "monetary",
            "n_orders": "n_orders", "last_purchase": "last_purchase"}
    out = base.merge(features[["customer_id", *cols]].rename(columns=cols), on="customer_id", how="left")
    for part in parts:
        out = out.merge(part, on="customer_id", how="left")
    out["anomaly_flag"] = out["anomaly_flag"].fillna(False).astype(bool)
    carried = [c for c in CARRIED if c in customer.columns]
    out = out.merge(customer[["customer_id", *carried]], on="customer_id", how="left")
    first = [c for c in KNOWLEDGE_COLUMNS if c in out.columns]
    return out[first + [c for c in out.columns if c not in first]]


def segment_sentence(table: pd.DataFrame) -> str:
    """Where the customers are and where the revenue is."""
    biggest = table.sort_values("customers", ascending=False).iloc[0]
    richest = table.sort_values("share_revenue", ascending=False).iloc[0]
    return (f"The largest segment is {biggest['segment']} ({biggest['share_customers']:.0%} of customers); "
            f"{richest['segment']} bring the most revenue ({richest['share_revenue']:.0%} with "
            f"{richest['share_customers']:.0%} of customers).")


def plot_segments(table: pd.DataFrame, colours: dict[str, str]) -> "plt.Figure":
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


def rfm_frame(features: pd.DataFrame, scores: pd.DataFrame, segments: pd.Series) -> pd.DataFrame:
    """customer_id, r/f/m scores and the segment name, for the knowledge table."""
    out = scores[["customer_id", "r_score", "f_score", "m_score"]].copy()
    out["rfm_segment"] = segments.astype(str).to_numpy()
    return out


UNIT_LABELS = {"D": "days", "W": "weeks", "M": "months"}


def plot_clv_by_segment(values: pd.DataFrame, feats: pd.DataFrame, scores: rfm.RFMResult, segments: pd.Series,
                        colours: dict[str, str]) -> "plt.Figure":
    """Total expected value per RFM segment: where the future money is."""
    import matplotlib.pyplot as plt

    seg = pd.DataFrame({"customer_id": scores.scores["customer_id"].to_numpy(), "segment": segments.astype(str).array})
    frame = values.merge(seg, on="customer_id").groupby("segment")["clv"].agg(["sum", "mean", "size"])
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
    con.register("knowledge_view", table)
    con.execute("CREATE OR REPLACE TABLE customer_knowledge AS SELECT * FROM knowledge_view")
    con.unregister("knowledge_view")
    path = Path(out_dir) / "customer_knowledge.parquet"
    table.to_parquet(path, index=False)
    return path


def example_ids(table: pd.DataFrame, n: int = 3) -> list[str]:
    """Customers worth a card when none are named: the highest CLV, a high churn risk and a new customer."""
    picks = []
    ranked = table.dropna(subset=["clv"]).sort_values("clv", ascending=False)
    if len(ranked):
        picks.append(ranked["customer_id"].iloc[0])
    risky = table[(table["clv"] > table["clv"].median())].sort_values("churn_risk", ascending=False)
    if len(risky):
        picks.append(risky["customer_id"].iloc[0])
    newest = table.dropna(subset=["recency_days"]).sort_values(["n_orders", "recency_days"])
    if len(newest):
        picks.append(newest["customer_id"].iloc[0])
    return list(dict.fromkeys(picks))[:n]
