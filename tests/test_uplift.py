"""Tests of cvm.uplift: hand-computed metrics and margins, simulations with known uplift, and the real data sets
(UCI Bank Marketing, Hillstrom e-mail test). Each statistical test says which truth it is checked against."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cvm import uplift as u
from cvm.contract import CAMPAIGN_TYPES
from cvm.errors import InputError
from matplotlib.figure import Figure
from scipy.stats import spearmanr
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

SIM_FEATURES = ["x1", "x2", "x3", "region"]
HILLSTROM = "Kevin_Hillstrom_MineThatData_E-MailAnalytics_DataMiningChallenge_2008.03.20.csv"
HILLSTROM_FEATURES = ["recency", "history", "mens", "womens", "zip_code", "newbie", "channel"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Gradient boosting on one OpenMP thread: on the shared 2-core machine two threads are many times slower."""
    with threadpool_limits(1, user_api="openmp"):
        yield


def simulate(n: int, seed: int) -> pd.DataFrame:
    """Customers with a KNOWN uplift `tau`: base rate rises with x1; uplift rises with x2 and is negative for
    x2 < 0.4 (sleeping dogs); sure things (x1 > 0.8) buy at a high rate whatever happens (tau 0); region east
    halves the effect; x3 is noise. Treatment randomised 50/50."""
    rng = np.random.default_rng(seed)
    x1, x2, x3 = rng.uniform(size=(3, n))
    region = rng.choice(["north", "south", "east"], size=n)
    p0 = 0.05 + 0.4 * x1
    tau = np.where(x1 > 0.8, 0.0, 0.25 * (x2 - 0.4)) * np.where(region == "east", 0.5, 1.0)
    t = rng.integers(0, 2, size=n)
    y = rng.uniform(size=n) < np.clip(p0 + t * tau, 0, 1)
    return pd.DataFrame({"x1": x1, "x2": x2, "x3": x3, "region": region, "group": np.where(t, "treatment", "control"),
                         "converted": y, "tau": tau, "p_treated_true": np.clip(p0 + tau, 0, 1)})


@pytest.fixture(scope="module")
def sim() -> dict:
    train, test = simulate(20_000, 1), simulate(20_000, 2)
    preds = {m: u.fit_uplift_model(train, SIM_FEATURES, value_col=None, method=m, seed=0).predict(test)
             for m in ("two_model", "x_learner")}
    return {"test": test, "preds": preds}


# ---------------------------------------------------------------------------------------------------- metrics

TINY = pd.DataFrame({"score": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], "t": [1, 0, 1, 0, 1, 0], "y": [1, 0, 0, 1, 1, 0]})


def test_curves_on_hand_computed_example():
    """Truth computed by hand. Cumulative (n_t, n_c, conv_t, conv_c) after each row: (1,0,1,0) (1,1,1,0) (2,1,1,0)
    (2,2,1,1) (3,2,2,1) (3,3,2,1). Uplift = (conv_t/n_t - conv_c/n_c) * n: 1, 2, 1.5, 0, 5/6, 2.
    Qini = conv_t - conv_c * n_t / n_c: 1, 1, 1, 0, 0.5, 1."""
    up = u.uplift_curve(TINY["y"], TINY["t"], TINY["score"])
    qi = u.qini_curve(TINY["y"], TINY["t"], TINY["score"])
    np.testing.assert_allclose(up["incremental"], [0, 1, 2, 1.5, 0, 5 / 6, 2])
    np.testing.assert_allclose(qi["qini"], [0, 1, 1, 1, 0, 0.5, 1])
    np.testing.assert_allclose(qi["fraction"], np.arange(7) / 6)
    np.testing.assert_allclose(qi["random"], np.arange(7) / 6)


def test_qini_auuc_uplift_at_k_hand_computed():
    """Truth by hand. Qini area (trapezoid, step 1/6) = 4/6, random 1/2, so raw = 1/6. Optimum ranking (treated
    converters, then the rest, then the control converter): points (0,0) (2/6,2) (5/6,2) (1,1), area 19/12, so
    optimum minus random = 13/12 and Q = (1/6)/(13/12) = 2/13. AUUC area = 19/18, final value 2, normalised 19/36.
    Top 50 %: treated 1 of 2 converted, control 0 of 1: uplift@50% = 0.5."""
    y, t, s = TINY["y"], TINY["t"], TINY["score"]
    assert u.qini_coefficient(y, t, s, normalize=False) == pytest.approx(1 / 6)
    assert u.qini_coefficient(y, t, s) == pytest.approx(2 / 13)
    assert u.auuc(y, t, s, normalize=False) == pytest.approx(19 / 18)
    assert u.auuc(y, t, s) == pytest.approx(19 / 36)
    assert u.uplift_at_k(y, t, s, k=0.5) == pytest.approx(0.5)
    assert np.isnan(u.uplift_at_k(y, t, s, k=1 / 6))  # the top row alone has no control row
    assert u.qini_coefficient(y, t, y * t - y * (1 - t)) == pytest.approx(1.0)  # the optimum itself scores 1


def test_tied_scores_enter_together():
    """Truth by construction: rows with the same score are targeted together, so reordering them changes nothing."""
    y = np.array([1, 0, 0, 1, 1, 0, 1, 0])
    t = np.array([1, 0, 1, 1, 0, 0, 1, 0])
    s = np.array([0.5, 0.5, 0.5, 0.2, 0.2, 0.9, 0.0, 0.0])
    curve = u.qini_curve(y, t, s)
    assert len(curve) == 5  # origin + 4 distinct scores
    flip = np.array([2, 1, 0, 4, 3, 5, 7, 6])
    pd.testing.assert_frame_equal(curve, u.qini_curve(y[flip], t[flip], s[flip]))
    assert u.qini_coefficient(y, t, s) == pytest.approx(u.qini_coefficient(y[flip], t[flip], s[flip]))


def test_metric_inputs_checked():
    with pytest.raises(InputError, match="treatment"):
        u.qini_coefficient([1, 0], [1, 1], [0.2, 0.1])
    with pytest.raises(InputError, match="same length"):
        u.uplift_curve([1, 0, 1], [1, 0], [0.2, 0.1])
    with pytest.raises(InputError, match="'y'"):
        u.uplift_curve(["maybe", "no"], [1, 0], [0.2, 0.1])
    with pytest.raises(InputError, match="k="):
        u.uplift_at_k([1, 0], [1, 0], [0.2, 0.1], k=0)


def test_calibration_table_hand_computed():
    """Truth by hand: 2 bins of 4; predictions 0.1 x4 (1 of 4 converted) and 0.6 x4 (3 of 4); ties split by order."""
    p = [0.1, 0.6, 0.1, 0.6, 0.1, 0.6, 0.1, 0.6]
    y = [0, 1, 0, 1, 1, 1, 0, 0]
    table = u.calibration_table(p, y, bins=2)
    assert table["n"].tolist() == [4, 4]
    np.testing.assert_allclose(table["p_mean"], [0.1, 0.6])
    np.testing.assert_allclose(table["observed"], [0.25, 0.75])
    np.testing.assert_allclose(table["se"], [np.sqrt(0.25 * 0.75 / 4)] * 2)
    assert isinstance(u.plot_calibration(table), Figure)


# ---------------------------------------------------------------------------------------- simulation, known truth

@pytest.mark.parametrize("method", ["two_model", "x_learner"])
def test_models_rank_by_true_uplift(sim, method):
    """Simulation with known truth (see `simulate`; 20,000 training and 20,000 test customers): the model's uplift
    ranks customers like the true uplift (Spearman > 0.5), its Qini lies between the oracle's (true uplift as score)
    and random (mean of 20 random scores, ~0), and its uplift@30% is at least 60 % of the oracle's."""
    test, pred = sim["test"], sim["preds"][method]
    y, t = test["converted"], test["group"]
    assert spearmanr(pred["uplift"], test["tau"]).statistic > 0.5
    rng = np.random.default_rng(0)
    random_q = np.mean([u.qini_coefficient(y, t, rng.uniform(size=len(test))) for _ in range(20)])
    oracle_q, model_q = u.qini_coefficient(y, t, test["tau"]), u.qini_coefficient(y, t, pred["uplift"])
    assert abs(random_q) < 0.01
    assert oracle_q > model_q > 0.03
    assert u.uplift_at_k(y, t, pred["uplift"]) > 0.6 * u.uplift_at_k(y, t, test["tau"])
    np.testing.assert_allclose(pred["uplift"], pred["p_treated"] - pred["p_control"])
    assert (pred["source"] == "model").all()


def test_sleeping_dogs_and_sure_things_found(sim):
    """Simulation with known truth: customers with true uplift < -0.05 (sleeping dogs) get a negative predicted
    uplift on average; sure things (x1 > 0.8, tau 0) have the highest base rate but a predicted uplift near 0
    (within 0.03: trees blur the x1 = 0.8 edge) and far below the persuadables' (true uplift > 0.08)."""
    test, pred = sim["test"], sim["preds"]["two_model"]
    dogs, sure, persuadable = test["tau"] < -0.05, test["x1"] > 0.8, test["tau"] > 0.08
    assert pred["uplift"][dogs].mean() < -0.02
    assert abs(pred["uplift"][sure].mean()) < 0.03
    assert pred["uplift"][persuadable].mean() > pred["uplift"][sure].mean() + 0.07
    assert pred["p_control"][sure].mean() > pred["p_control"][~sure].mean() + 0.15


def test_predicted_probabilities_calibrated(sim):
    """Simulation with known truth: by decile of predicted P(convert | treated), the mean prediction is within
    0.03 of the TRUE mean probability of those treated test customers."""
    test, pred = sim["test"], sim["preds"]["two_model"]
    treated = (test["group"] == "treatment").to_numpy()
    table = u.calibration_table(pred["p_treated"][treated], test["converted"][treated])
    truth = (pd.Series(test["p_treated_true"][treated].to_numpy())
             .groupby((pd.Series(pred["p_treated"][treated].to_numpy()).rank(method="first").to_numpy() - 1) * 10
                      // treated.sum()).mean())
    assert len(table) == 10
    np.testing.assert_allclose(table["p_mean"], truth.to_numpy(), atol=0.03)
    curves = {"model": u.qini_curve(test["converted"], test["group"], pred["uplift"])}
    assert isinstance(u.plot_uplift_curves(curves), Figure)


def campaign_history(seed: int) -> pd.DataFrame:
    """Six retention e-mail campaigns (two at each discount 0/10/20 %) with a KNOWN price sensitivity: base rate 0.10
    everywhere; uplift 0.02/0.15/0.20 at 0/10/20 % for 'deal' customers, 0.03/0.04/0.05 for 'full' customers;
    converters spend 100 on average."""
    rng = np.random.default_rng(seed)
    frames = []
    for i, discount in enumerate([0, 10, 20, 0, 10, 20]):
        n = 5000
        segment = rng.choice(["deal", "full"], size=n)
        lift = np.where(segment == "deal", {0: 0.02, 10: 0.15, 20: 0.20}[discount],
                        {0: 0.03, 10: 0.04, 20: 0.05}[discount])
        t = rng.integers(0, 2, size=n)
        y = rng.uniform(size=n) < 0.10 + t * lift
        frames.append(pd.DataFrame({
            "customer_id": [f"K{i}-{j}" for j in range(n)], "campaign_id": f"C{i}", "type": "retention",
            "channel": "email", "discount_pct": float(discount), "segment": segment, "tenure": rng.uniform(0, 5, n),
            "group": np.where(t, "treatment", "control"), "converted": y,
            "revenue": np.where(y, rng.gamma(4.0, 25.0, n), 0.0)}))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def campaigns() -> dict:
    history = campaign_history(7)
    features = ["segment", "tenure", "type", "channel", "discount_pct"]
    model = u.fit_uplift_model(history, features, seed=0, monotone={"discount_pct": 1})
    return {"history": history, "features": features, "model": model}


def test_best_discount_recovers_true_price_sensitivity(campaigns):
    """Simulation with known truth (`campaign_history`, margin 40 %, contact cost 0.1): true incremental margin per
    contact is 0.8/3.5/2.0 at 0/10/20 % for 'deal' (best 10 %) and 1.2/0.2/-1.0 for 'full' (best 0 %); the model
    learns the response by discount level from history and `best_discount` picks those levels per segment. The
    'deal' uplift by level is within 0.04 of the truth (early stopping shrinks the 10 -> 20 % step: up to 0.03
    low across simulation seeds)."""
    customers = campaign_history(8).drop_duplicates("customer_id").head(2000)[["customer_id", "segment", "tenure"]]
    scores = u.score_discounts(customers, {"type": "retention", "channel": "email"}, [0, 10, 20],
                               model=campaigns["model"])
    choice = u.best_discount(scores, margin_pct=40, cost_per_contact=0.1)
    best = choice.per_segment[choice.per_segment["best"]].set_index("segment")["discount_pct"]
    assert best.to_dict() == {"deal": 10.0, "full": 0.0}
    deal = choice.per_segment[choice.per_segment["segment"] == "deal"].set_index("discount_pct")["uplift"]
    np.testing.assert_allclose(deal.to_numpy(), [0.02, 0.15, 0.20], atol=0.04)
    assert (scores["source"] == "model").all()
    assert scores["expected_order_value"].mean() == pytest.approx(100, rel=0.1)  # gamma(4, 25) has mean 100


def test_holdout_by_campaign_matches_truth(campaigns):
    """Simulation with known truth: on held-out campaigns C1 (10 %) and C5 (20 %), trained on the other five, the
    mean predicted uplift is within 0.04 of the TRUE mean uplift (C1: (0.15 + 0.04) / 2 = 0.095, C5:
    (0.20 + 0.05) / 2 = 0.125; the model is conservative about discount steps) and the Qini is positive (the
    deal/full heterogeneity is real)."""
    table = u.holdout_by_campaign(campaigns["history"], campaigns["features"], held_out=["C1", "C5"], seed=0)
    assert table["campaign_id"].tolist() == ["C1", "C5"]
    np.testing.assert_allclose(table["predicted_uplift"], [0.095, 0.125], atol=0.04)
    assert (table["qini"] > 0).all()
    assert (table["n_treated"] + table["n_control"] == table["n"]).all()


# ---------------------------------------------------------------------------------------------------- money

def test_incremental_margin_hand_computed():
    """Truth by hand: (0.3 - 0.2) * 100 * 0.40 - 0.10 * 100 * 0.3 - 0.5 = 4 - 3 - 0.5 = 0.5; a sure thing
    (p_t = p_c = 0.5) with 10 % off loses 0.10 * 100 * 0.5 + 0.5 = 5.5; no discount, no cost: 4."""
    out = u.incremental_margin([0.3, 0.5, 0.3], [0.2, 0.5, 0.2], 100, 40, [10, 10, 0], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(out, [0.5, -5.5, 4.0])
    with pytest.raises(InputError, match="p_treated"):
        u.incremental_margin(1.2, 0.2, 100, 40, 10, 0.5)
    with pytest.raises(InputError, match="discount_pct"):
        u.incremental_margin(0.3, 0.2, 100, 40, 150, 0.5)


def test_best_discount_hand_computed():
    """Truth by hand (order value 100, margin 40 %, no contact cost): A (p_c .1; p_t .12/.25/.30 at 0/10/20 %):
    0.8/3.5/2.0, best 10; C (p_c 0; p_t 0/.1/.3): 0/3/6, best 20; segment 'price' totals 0.8/6.5/8.0, best 20.
    B (p_c .5; p_t .52/.55/.58): 0.8/-3.5/-8.4, best 0; D (no response at all): 0/0/0, a tie, lowest discount wins."""
    rows = {"A": ("price", 0.1, [0.12, 0.25, 0.30]), "C": ("price", 0.0, [0.0, 0.1, 0.3]),
            "B": ("loyal", 0.5, [0.52, 0.55, 0.58]), "D": ("loyal", 0.0, [0.0, 0.0, 0.0])}
    scores = pd.DataFrame([{"customer_id": c, "segment": s, "discount_pct": d, "p_treated": pt, "p_control": pc,
                            "expected_order_value": 100.0}
                           for c, (s, pc, pts) in rows.items() for d, pt in zip([0, 10, 20], pts)])
    choice = u.best_discount(scores, margin_pct=40, cost_per_contact=0.0)
    per_customer = choice.per_customer.set_index("customer_id")
    assert per_customer["discount_pct"].to_dict() == {"A": 10, "B": 0, "C": 20, "D": 0}
    np.testing.assert_allclose(per_customer.loc[["A", "B", "C", "D"], "margin"], [3.5, 0.8, 6.0, 0.0])
    seg = choice.per_segment.set_index(["segment", "discount_pct"])
    np.testing.assert_allclose(seg.loc["price", "margin"], [0.8, 6.5, 8.0])
    np.testing.assert_allclose(seg.loc["loyal", "margin"], [0.8, -3.5, -8.4])
    assert seg[seg["best"]].index.tolist() == [("loyal", 0), ("price", 20)]
    with pytest.raises(InputError, match="expected_order_value"):
        u.best_discount(scores.assign(expected_order_value=np.nan), 40, 0.0)


# ---------------------------------------------------------------------------------------------------- priors

def test_default_priors_cover_every_campaign_type():
    priors = u.load_priors()
    assert set(priors.loc[priors["segment"] == u.ANY_SEGMENT, "campaign_type"]) == set(CAMPAIGN_TYPES)


def test_segment_priors_from_feedback_table(tmp_path: Path):
    """Truth by hand: 'vip' has its own retention rows (uplift_shrunk 0.02 at 0 %, 0.06 at 20 %: 0.04 at 10 %
    by interpolation), other segments fall back to '*'; beyond the last level the rate is held flat."""
    feedback = pd.DataFrame({
        "segment": ["vip", "vip", "*", "*"], "campaign_type": "retention", "discount_pct": [0, 20, 0, 20],
        "n_treated": 500, "n_control": 500, "rate_treated": [0.13, 0.17, 0.06, 0.08],
        "rate_control": [0.10, 0.10, 0.05, 0.05], "uplift": [0.03, 0.07, 0.01, 0.03],
        "uplift_shrunk": [0.02, 0.06, np.nan, 0.02]})
    customers = pd.DataFrame({"segment": ["vip", "new", None], "eov": [80.0, 40.0, 50.0]}, index=[10, 11, 12])
    out = u.segment_priors(customers, {"type": "retention", "discount_pct": 10}, feedback, order_value_col="eov")
    np.testing.assert_allclose(out["uplift"], [0.04, 0.015, 0.015])
    np.testing.assert_allclose(out["p_control"], [0.10, 0.05, 0.05])
    np.testing.assert_allclose(out["p_treated"], [0.14, 0.065, 0.065])
    assert out.index.tolist() == [10, 11, 12] and (out["source"] == "prior").all()
    assert out["expected_order_value"].tolist() == [80.0, 40.0, 50.0]
    beyond = u.segment_priors(customers, {"type": "retention", "discount_pct": 50}, feedback)
    np.testing.assert_allclose(beyond["uplift"], [0.06, 0.02, 0.02])
    with pytest.raises(InputError, match="upsell"):
        u.segment_priors(customers, {"type": "upsell"}, feedback)
    path = tmp_path / "priors.yaml"
    path.write_text("priors:\n  - {segment: '*', campaign_type: upsell, discount_pct: 0, rate_control: 1.2, "
                    "uplift: 0.1}\n")
    with pytest.raises(InputError, match="impossible"):
        u.load_priors(path)


def test_score_offer_uses_model_only_with_history(campaigns):
    """The model scores the offers it has seen (retention e-mail, 0-20 %); a new type, a new channel or a discount
    outside the seen range goes to the prior table, and `source` says so."""
    model = campaigns["model"]
    customers = campaigns["history"].head(5)
    assert model.has_history({"type": "retention", "channel": "email", "discount_pct": 15})
    seen = u.score_offer(customers, {"type": "retention", "channel": "email", "discount_pct": 15}, model)
    assert (seen["source"] == "model").all()
    for offer in ({"type": "upsell", "channel": "email", "discount_pct": 10},
                  {"type": "retention", "channel": "sms", "discount_pct": 10},
                  {"type": "retention", "channel": "email", "discount_pct": 30}):
        assert (u.score_offer(customers, offer, model)["source"] == "prior").all()


# ---------------------------------------------------------------------------------------------------- bad input

def test_fit_rejects_bad_history():
    history = simulate(400, 3)
    with pytest.raises(InputError, match="value_col=None"):
        u.fit_uplift_model(history, SIM_FEATURES)  # no revenue column
    with pytest.raises(InputError, match="both"):
        u.fit_uplift_model(history.assign(group="treatment"), SIM_FEATURES, value_col=None)
    with pytest.raises(InputError, match="3 of 400"):
        u.fit_uplift_model(history.assign(converted=["yes"] * 397 + ["??"] * 3), SIM_FEATURES, value_col=None)
    with pytest.raises(InputError, match="converters"):
        u.fit_uplift_model(history.assign(converted=False), SIM_FEATURES, value_col=None)


# ---------------------------------------------------------------------------------------------------- real data

@pytest.mark.real
def test_bank_marketing_response_model(real_data: Path):
    """Published figures (Moro et al. 2014, UCI; PROVENANCE.txt): 45,211 calls, 5,289 yes = 11.70 %. Without the
    `duration` column (known only after the call) published models reach an AUC of about 0.75-0.80; measured here
    on a stratified 25 % holdout (seed 0): 0.80."""
    bank = pd.read_csv(real_data / "bank_marketing" / "bank-full.csv", sep=";")
    features = [c for c in bank.columns if c not in ("duration", "y")]
    model = u.fit_response_model(bank, features, "y", seed=0)
    assert len(bank) == 45_211
    assert round(model.base_rate * 100, 2) == 11.70
    assert model.n_test == 11_303
    assert 0.72 < model.auc < 0.85
    assert model.predict(bank.head(3)).between(0, 1).all()


@pytest.mark.real
def test_hillstrom_womens_email_uplift(real_data: Path):
    """Published figures (Hillstrom 2008; PROVENANCE.txt): visit rate 15.14 % with the Womens e-mail, 10.62 %
    without. Fitted on one half (stratified, seed 0), evaluated on the other: the Qini coefficient for visit is
    positive (measured 0.049 two-model), the mean predicted uplift matches the observed one within 1 pp, and the
    expected order value matches the mean spend of converters within 15 %."""
    raw = pd.read_csv(real_data / "hillstrom" / HILLSTROM)
    data = raw[raw["segment"].isin(["Womens E-Mail", "No E-Mail"])].assign(
        group=lambda d: np.where(d["segment"] == "Womens E-Mail", "treatment", "control"))
    assert data.groupby("group")["visit"].mean().round(4).to_dict() == {"control": 0.1062, "treatment": 0.1514}
    train, test = train_test_split(data, test_size=0.5, stratify=data["group"] + data["visit"].astype(str),
                                   random_state=0)
    model = u.fit_uplift_model(train, HILLSTROM_FEATURES, outcome_col="visit", value_col="spend", seed=0)
    pred = model.predict(test)
    observed = test.groupby("group")["visit"].mean()
    assert u.qini_coefficient(test["visit"], test["group"], pred["uplift"]) > 0
    assert pred["uplift"].mean() == pytest.approx(observed["treatment"] - observed["control"], abs=0.01)
    spend = test.loc[test["spend"] > 0, "spend"].mean()
    assert pred["expected_order_value"].mean() == pytest.approx(spend, rel=0.15)


@pytest.mark.parametrize("seed", range(5))
def test_encoder_codes_text_levels_as_the_plain_categorical_does(seed: int):
    """Known truth: the plain definition, `pd.Categorical(column.astype("string"), categories=levels).codes` row by
    row (-1 as NaN), on random columns of Arrow text, object text, categoricals and numbers held as objects, with
    missing values and levels never seen in training."""
    rng = np.random.default_rng(seed)
    n = 500
    words = np.array(["email", "sms", "post", "phone", "x"], dtype=object)
    word = words[rng.integers(0, len(words), n)]
    word[rng.random(n) < 0.1] = None
    frame = pd.DataFrame({"arrow": pd.Series(word, dtype="str"), "obj": pd.Series(word, dtype=object),
                          "cat": pd.Categorical(word), "num": pd.Series(rng.integers(0, 4, n), dtype=object),
                          "x": rng.random(n)})
    enc = u._Encoder(("arrow", "obj", "cat", "num", "x"), {c: ("email", "post", "sms") for c in ("arrow", "obj", "cat")}
                     | {"num": ("1", "2")})
    shuffled = frame.sample(frac=1.0, random_state=seed)   # a label index out of order
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = enc.transform(shuffled, "t")
    for j, col in enumerate(enc.features):
        if col in enc.levels:
            with warnings.catch_warnings():   # pandas warns of values outside the categories (coded -1)
                warnings.simplefilter("ignore")
                codes = pd.Categorical(shuffled[col].astype("string"), categories=list(enc.levels[col])).codes
            want = np.where(codes < 0, np.nan, codes).astype("float64")
        else:
            want = shuffled[col].to_numpy(dtype="float64")
        np.testing.assert_array_equal(got[:, j], want)
