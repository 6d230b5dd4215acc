"""Tests of the synthetic demo retailer (cvm.demo): determinism, contract conformance and recovery of its known truth.

The statistical checks compare the generated data with the closed-form properties of the models that generated it
(Fader, Hardie & Lee 2005 for BG/NBD; Fader & Hardie note 025 for Gamma-Gamma) or with the generator's own truth
probabilities (simulation with known truth). Tolerances are 4 standard errors computed from the sample size.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cvm.contract import CAMPAIGN_TYPES, TABLES
from cvm.demo import SEGMENTS, DemoTruth, _codes, generate, load_rules, load_truth, simulate_outcomes, true_response
from cvm.errors import InputError
from scipy import special, stats

N = 5000
SEED = 7
AS_OF = "2026-06-30"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], DemoTruth]:
    paths = generate(tmp_path_factory.mktemp("demo"), n_customers=N, seed=SEED, as_of=AS_OF)
    return paths, load_truth(paths["truth"].parent.parent)


@pytest.fixture(scope="module")
def tx(demo: tuple[dict[str, Path], DemoTruth]) -> pd.DataFrame:
    return pd.read_parquet(demo[0]["transactions"])


def _read(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _clean_sales(tx: pd.DataFrame, truth: DemoTruth) -> pd.DataFrame:
    """Positive lines of regular customers (returns and every listed anomaly removed)."""
    anomalies = {c for ids in truth.anomalies.values() for c in ids}
    return tx[~tx["order_id"].str.startswith("R") & (tx["amount"] > 0) & ~tx["customer_id"].isin(anomalies)]


def _bgnbd_expected(t: np.ndarray, r: float, alpha: float, a: float, b: float) -> np.ndarray:
    """E[X(t)], Fader, Hardie & Lee (2005) eq. 9."""
    z = t / (alpha + t)
    return (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + t)) ** r * special.hyp2f1(r, b, a + b - 1, z))


# ------------------------------------------------------------------------------------------------ determinism, API
def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path: Path) -> None:
    """Same seed => byte-identical files; another seed => different transactions and truth."""
    first = generate(tmp_path / "a", n_customers=1500, seed=3)
    generate(tmp_path / "b", n_customers=1500, seed=3)
    generate(tmp_path / "c", n_customers=1500, seed=4)
    assert set(first) >= {"customers", "transactions", "loyalty", "campaigns", "contacts", "truth",
                          "customer_truth", "uplift_truth"}
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b
    assert a["transactions.parquet"] != c["transactions.parquet"]
    assert a["truth/customer_truth.parquet"] != c["truth/customer_truth.parquet"]
    assert a["campaigns.csv"] == c["campaigns.csv"]  # campaigns depend on as_of and the rules only
    assert load_truth(tmp_path / "a" / "truth").customer_truth.equals(load_truth(tmp_path / "a").customer_truth)


def test_bad_arguments_raise_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="n_customers"):
        generate(tmp_path, n_customers=0)
    with pytest.raises(InputError, match="as_of"):
        generate(tmp_path, n_customers=10, as_of="not a date")
    with pytest.raises(InputError, match="missing"):
        load_truth(tmp_path / "nothing")


# ------------------------------------------------------------------------------------------------ contract
def test_every_file_matches_the_contract(demo: tuple[dict[str, Path], DemoTruth]) -> None:
    """Required columns present, no column outside the contract, types per contract kind, allowed values respected."""
    paths, _ = demo
    for name, table in TABLES.items():
        frame = _read(paths[name])
        assert set(table.required) <= set(frame.columns), name
        assert set(frame.columns) <= set(table.names), (name, set(frame.columns) - set(table.names))
        for col in frame.columns:
            kind, values = table.column(col).kind, frame[col]
            if kind == "float" or kind == "int":
                assert pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values), (name, col)
            elif kind == "bool":
                assert pd.api.types.is_bool_dtype(values), (name, col)
            elif kind == "date":
                assert pd.to_datetime(values, errors="coerce").notna().all(), (name, col)
            elif table.column(col).required:
                assert values.notna().all() and (values.astype(str).str.len() > 0).all(), (name, col)
            if table.column(col).allowed:
                assert values.isin(table.column(col).allowed).all(), (name, col)
        if table.key and name != "transactions":
            assert not frame.duplicated(list(table.key)).any(), name


def test_tables_are_consistent_and_realistic(demo: tuple[dict[str, Path], DemoTruth], tx: pd.DataFrame) -> None:
    """Keys join, shares are as specified in rules/demo.yaml (consents, loyalty, returns, lines per order)."""
    paths, truth = demo
    customers, loyalty = pd.read_csv(paths["customers"]), pd.read_csv(paths["loyalty"])
    assert len(customers) == N + len(truth.anomalies["test_accounts"])
    assert set(tx["customer_id"]) == set(customers["customer_id"])
    assert set(loyalty["customer_id"]) <= set(customers["customer_id"])
    assert abs(customers["consent_email"].mean() - 0.70) < 0.03 and abs(customers["consent_sms"].mean() - 0.40) < 0.03
    assert 0.38 < len(loyalty) / N < 0.52
    assert customers.groupby("acquisition_channel")["acquisition_cost"].mean().nunique() == 6
    assert (pd.to_datetime(tx["order_date"]) < pd.Timestamp(AS_OF) + pd.Timedelta(days=1)).all()
    sales = tx[~tx["order_id"].str.startswith("R")]
    returns = tx[tx["order_id"].str.startswith("R")]
    assert (returns["amount"] < 0).all() and (returns["quantity"] < 0).all() and (sales["amount"] > 0).all()
    assert set(returns["order_id"].str[1:]) <= set(sales["order_id"])
    share = len(returns) / len(sales)
    assert 0.045 < share < 0.085
    lines = sales.groupby("order_id").size()
    assert lines.min() == 1 and lines.max() == 4
    prices = sales[sales["quantity"] < 10].groupby("category")["amount"].mean()
    assert 6 <= len(prices) <= 8 and prices.max() > 1.8 * prices.min()
    times = sales.drop_duplicates("order_id")
    regular = times[~times["customer_id"].isin(truth.anomalies["test_accounts"])]
    assert not regular.duplicated(["customer_id", "order_date"]).any()  # every purchase is its own timed order
    assert 15 < len(tx) / N < 25


def test_anomalies_are_present_and_listed(demo: tuple[dict[str, Path], DemoTruth], tx: pd.DataFrame) -> None:
    paths, truth = demo
    an = truth.anomalies
    assert len(an["bulk_buyers"]) >= 3 and len(an["extreme_returners"]) >= 3 and len(an["test_accounts"]) == 2
    sales = tx[~tx["order_id"].str.startswith("R")]
    assert (sales[sales["customer_id"].isin(an["bulk_buyers"])]["quantity"] >= 40).all()
    assert (sales[~sales["customer_id"].isin(an["bulk_buyers"])]["quantity"] <= 3).all()
    flagged = tx[tx["customer_id"].isin(an["extreme_returners"])]
    assert flagged["order_id"].str.startswith("R").sum() > 0.5 * (~flagged["order_id"].str.startswith("R")).sum()
    customers = pd.read_csv(paths["customers"]).set_index("customer_id")
    assert customers.loc[an["test_accounts"], "email"].str.startswith("test").all()
    assert not set(an["test_accounts"]) & set(truth.customer_truth["customer_id"])


# ------------------------------------------------------------------------------------------------ BTYD truth
def test_truth_parameters_follow_their_distributions(demo: tuple[dict[str, Path], DemoTruth]) -> None:
    """Simulation with known truth: KS tests of lambda ~ Gamma(r, alpha), p ~ Beta(a, b), nu ~ Gamma(q, gamma)."""
    _, truth = demo
    ct, bg, gg = truth.customer_truth, truth.bgnbd, truth.gamma_gamma
    assert stats.kstest(ct["lam"], stats.gamma(bg["r"], scale=1 / bg["alpha"]).cdf).pvalue > 1e-3
    assert stats.kstest(ct["p_drop"], stats.beta(bg["a"], bg["b"]).cdf).pvalue > 1e-3
    assert stats.kstest(ct["nu"], stats.gamma(gg["q"], scale=1 / gg["gamma"]).cdf).pvalue > 1e-3


def test_repeat_purchases_match_bgnbd(demo: tuple[dict[str, Path], DemoTruth], tx: pd.DataFrame) -> None:
    """Published closed forms (Fader, Hardie & Lee 2005) at the true parameters, per customer age T (weeks, to the end
    of the as_of day): mean repeat purchases vs E[X(T)] (eq. 9) and the number of customers without repeat vs
    P(X(T)=0) = (alpha/(alpha+T))^r, tolerance 4 SE. Counted as purchase orders (each purchase is its own order)."""
    _, truth = demo
    sales = _clean_sales(tx, truth)
    orders = sales.groupby("customer_id").agg(n=("order_id", "nunique"), first=("order_date", "min"))
    end = truth.as_of + pd.Timedelta(days=1)
    t = ((end - orders["first"]).dt.total_seconds() / 86400 / 7).to_numpy()
    x = orders["n"].to_numpy() - 1
    bg = truth.bgnbd
    expected = _bgnbd_expected(t, bg["r"], bg["alpha"], bg["a"], bg["b"])
    resid = x - expected
    assert abs(resid.mean()) < 4 * resid.std() / np.sqrt(len(x))
    p0 = (bg["alpha"] / (bg["alpha"] + t)) ** bg["r"]
    assert abs((x == 0).sum() - p0.sum()) < 4 * np.sqrt((p0 * (1 - p0)).sum())
    assert 0.15 < (x == 0).mean() < 0.4  # many one-time buyers


def test_order_values_match_gamma_gamma(demo: tuple[dict[str, Path], DemoTruth], tx: pd.DataFrame) -> None:
    """Fader & Hardie note 025: first-order value has mean p*gamma/(q-1) and variance p(p+1)gamma^2/((q-1)(q-2)) - m^2;
    and given the true nu, value * nu / p ~ Gamma(p, 1)/p has mean 1, variance 1/p (checked over all orders)."""
    _, truth = demo
    gg = truth.gamma_gamma
    p, q, g = gg["p"], gg["q"], gg["gamma"]
    orders = _clean_sales(tx, truth).groupby(["customer_id", "order_id"], as_index=False).agg(
        value=("amount", "sum"), when=("order_date", "min"))
    first = orders.sort_values("when").drop_duplicates("customer_id")
    mean = p * g / (q - 1)
    sd = np.sqrt(p * (p + 1) * g ** 2 / ((q - 1) * (q - 2)) - mean ** 2)
    assert abs(first["value"].mean() - mean) < 4 * sd / np.sqrt(len(first))
    nu = orders["customer_id"].map(truth.customer_truth.set_index("customer_id")["nu"])
    scaled = orders["value"] * nu / p
    assert abs(scaled.mean() - 1) < 4 * np.sqrt(1 / p / len(scaled))


def test_uplift_segments_are_visible_in_behaviour(demo: tuple[dict[str, Path], DemoTruth], tx: pd.DataFrame) -> None:
    """Segments are derived from the truth (lambda, nu) and therefore show in frequency and spend."""
    _, truth = demo
    sales = _clean_sales(tx, truth)
    per = sales.groupby("customer_id").agg(orders=("order_id", "nunique"), spend=("amount", "sum"))
    per["aov"] = per["spend"] / per["orders"]
    seg = per.join(truth.customer_truth.set_index("customer_id")["uplift_segment"]).groupby("uplift_segment").mean()
    assert set(seg.index) == set(SEGMENTS)
    assert seg.loc["sure_things", "orders"] > seg.loc["persuadables", "orders"] > seg.loc["lost_causes", "orders"]
    assert seg.loc["do_not_disturb", "aov"] > 1.3 * seg.loc["persuadables", "aov"]


# ------------------------------------------------------------------------------------------------ campaigns
def test_contacts_respect_design_and_consent(demo: tuple[dict[str, Path], DemoTruth]) -> None:
    """Control share per campaign within 4 SE of the design; never a contact without consent for the channel."""
    paths, _ = demo
    contacts, campaigns = pd.read_parquet(paths["contacts"]), pd.read_csv(paths["campaigns"])
    customers = pd.read_csv(paths["customers"]).set_index("customer_id")
    design = {c["name"]: c["control"] for c in load_rules()["campaigns"]}
    assert 12 <= len(campaigns) <= 16 and set(campaigns["type"]) == set(CAMPAIGN_TYPES)
    assert (pd.to_datetime(campaigns["start_date"]) >= pd.Timestamp(AS_OF) - pd.Timedelta(days=365)).all()
    for row in campaigns.itertuples():
        rows = contacts[contacts["campaign_id"] == row.campaign_id]
        assert len(rows) > 150, row.name
        share, target = (rows["group"] == "control").mean(), design[row.name]
        assert abs(share - target) < 4 * np.sqrt(target * (1 - target) / len(rows)), row.name
        assert rows.loc[rows["group"] == "treatment", "arm"].nunique() >= 1
    for channel, rows in contacts.groupby("channel"):
        assert customers.loc[rows["customer_id"], f"consent_{channel}"].all(), channel
    control = contacts[contacts["group"] == "control"]
    assert not control[["delivered", "opened", "clicked"]].any().any() and (control["discount_pct"] == 0).all()
    assert (contacts.loc[~contacts["converted"], "revenue"] == 0).all()


def test_observed_uplift_matches_true_uplift(demo: tuple[dict[str, Path], DemoTruth]) -> None:
    """Simulation with known truth: per campaign arm, treated minus control conversion rate vs the true average
    uplift of the targeted customers (true_response at the contact date), SE from the true probabilities; every
    z within 4.5, and the first arm of each campaign (independent of each other) jointly chi-square."""
    paths, truth = demo
    contacts, campaigns = pd.read_parquet(paths["contacts"]), pd.read_csv(paths["campaigns"])
    ct = truth.customer_truth.set_index("customer_id")
    z, first_arm, true_effects = [], [], []
    for camp in campaigns.itertuples():
        rows = contacts[contacts["campaign_id"] == camp.campaign_id]
        control = rows[rows["group"] == "control"]
        targeted = ct.loc[rows["customer_id"]].reset_index()
        for k, (arm, treated) in enumerate(rows[rows["group"] == "treatment"].groupby("arm")):
            discount = treated["discount_pct"].iloc[0]
            resp = true_response(targeted, camp.type, camp.channel, discount, truth, at=camp.start_date)
            true_uplift = resp["uplift"].mean()
            p_t, p_c = resp["p_treated"].to_numpy(), resp["p_control"].to_numpy()
            se = np.sqrt((p_t * (1 - p_t)).mean() / len(treated) + (p_c * (1 - p_c)).mean() / len(control))
            z.append((treated["converted"].mean() - control["converted"].mean() - true_uplift) / se)
            first_arm.append(k == 0)
            true_effects.append(true_uplift)
    z = np.array(z)
    assert np.abs(z).max() < 4.5
    joint = z[np.array(first_arm)]
    assert len(joint) == len(campaigns) and stats.chi2.sf((joint ** 2).sum(), len(joint)) > 1e-3
    assert max(true_effects) > 0.03 and min(true_effects) < 0.03  # some arms work, some hardly


# ------------------------------------------------------------------------------------------------ response model
def _hand_truth() -> DemoTruth:
    """Six customers covering the nasty cases: dead, never-buying, each segment, a tiny-lambda do-not-disturb."""
    rules = load_rules()
    ct = pd.DataFrame({
        "customer_id": ["A", "B", "C", "D", "E", "F"],
        "lam": [0.8, 0.2, 0.01, 0.2, 0.2, 0.0001],
        "nu": [0.05, 0.05, 0.05, 0.02, 0.05, 0.02],
        "uplift_segment": ["sure_things", "persuadables", "lost_causes", "do_not_disturb", "persuadables",
                           "do_not_disturb"],
        "alive_at_as_of": [True, True, True, True, False, True],
        "first_purchase_date": pd.to_datetime(["2024-01-01"] * 6),
        "dropout_date": pd.to_datetime([None, None, None, None, "2025-01-01", None]),
    })
    return DemoTruth(seed=0, as_of=pd.Timestamp(AS_OF), n_customers=6, bgnbd=rules["bgnbd"],
                     gamma_gamma=rules["gamma_gamma"], segments=rules["segments"], response=rules["response"],
                     anomalies={}, customer_truth=ct, uplift_truth=pd.DataFrame())


def test_true_response_cases() -> None:
    """p_control = 1 - exp(-lambda * 2 weeks) when alive, 0 when dead; uplift signs per segment; concave discount
    response; probabilities stay in [0, 1]."""
    truth = _hand_truth()
    ct = truth.customer_truth
    r = true_response(ct, "retention", "sms", 10.0, truth).set_index("customer_id")
    assert r.loc["A", "p_control"] == pytest.approx(1 - np.exp(-0.8 * 2))
    assert r.loc["E", "p_control"] == 0 and r.loc["E", "uplift"] == 0  # dead before as_of
    assert r.loc["B", "uplift"] > 0.05 > abs(r.loc["A", "uplift"])  # persuadable vs sure thing
    assert abs(r.loc["C", "uplift"]) < 0.01  # lost cause
    assert r.loc["D", "uplift"] < 0  # do-not-disturb on sms retention
    assert r.loc["F", "p_treated"] == 0 and r.loc["F", "uplift"] > -r.loc["F", "p_control"] - 1e-12  # clipped
    assert ((r[["p_control", "p_treated"]] >= 0) & (r[["p_control", "p_treated"]] <= 1)).all().all()
    assert r.loc["B", "expected_order_value"] == pytest.approx(truth.gamma_gamma["p"] / 0.05)
    ups = [true_response(ct, "crosssell", "email", d, truth).set_index("customer_id").loc["B", "uplift"]
           for d in (0, 10, 20, 30)]
    assert ups[0] > 0 and np.all(np.diff(ups) > 0) and np.all(np.diff(ups, 2) < 0)  # increasing, concave
    before = true_response(ct, "retention", "sms", 10.0, truth, at="2024-06-01").set_index("customer_id")
    assert before.loc["E", "p_control"] > 0  # alive before its dropout date
    assert true_response(ct, "upsell", "email", np.array([0, 10, 20, 0, 0, 0]), truth)["uplift"].iloc[2] > 0
    with pytest.raises(InputError, match="campaign_type"):
        true_response(ct, "loyalty", "sms", 10.0, truth)
    with pytest.raises(InputError, match="discount_pct"):
        true_response(ct, "retention", "sms", 150.0, truth)
    with pytest.raises(InputError, match="lam"):
        true_response(ct.drop(columns="lam"), "retention", "sms", 10.0, truth)


@pytest.mark.parametrize("seed", range(5))
def test_codes_match_the_plain_lookup(seed: int) -> None:
    """Fuzzed: the once-per-distinct-value lookup equals Index.get_indexer on every value (str, object, categorical),
    and values outside (typos, missing) raise with their count and the first of them."""
    rng = np.random.default_rng(seed)
    values = np.array(SEGMENTS, dtype=object)[rng.integers(0, len(SEGMENTS), 1000)]
    for series in (pd.Series(values), pd.Series(values, dtype=object), pd.Series(values, dtype="category")):
        expected = pd.Index(SEGMENTS).get_indexer(series.astype(object))
        assert np.array_equal(_codes(series, SEGMENTS, "t", "c"), expected)
    bad = pd.Series(values)
    at = np.sort(rng.choice(len(bad), 7, replace=False))
    bad.iloc[at[:3]], bad.iloc[at[3:]] = "typo", None
    with pytest.raises(InputError, match=f"'c' has 7 rows outside .*e.g. {bad.iloc[at[0]]!r}"):
        _codes(bad, SEGMENTS, "t", "c")


def test_simulate_outcomes_reproduces_true_rates(demo: tuple[dict[str, Path], DemoTruth]) -> None:
    """Simulation with known truth: conversion rates per group and revenue per treated conversion match the
    probabilities and expected order value from true_response within 4 SE; same seed => same outcomes."""
    _, truth = demo
    ct = truth.customer_truth
    rng = np.random.default_rng(0)
    contacts = pd.DataFrame({
        "customer_id": np.tile(ct["customer_id"], 4), "campaign_id": "NEW-1", "type": "reactivation",
        "group": np.where(rng.random(4 * len(ct)) < 0.5, "treatment", "control"), "channel": "sms",
        "discount_pct": 20.0, "contact_date": truth.as_of,
    })
    contacts.loc[contacts["group"] == "control", "discount_pct"] = 0.0
    out = simulate_outcomes(contacts, truth, seed=11)
    resp = true_response(ct, "reactivation", "sms", 20.0, truth)
    resp = pd.concat([resp] * 4, ignore_index=True)
    for group, col in (("treatment", "p_treated"), ("control", "p_control")):
        mask = (out["group"] == group).to_numpy()
        p = resp.loc[mask, col].to_numpy()
        assert abs(out.loc[mask, "converted"].sum() - p.sum()) < 4 * np.sqrt((p * (1 - p)).sum()), group
        assert np.allclose(out.loc[mask, "true_p_" + group.replace("treatment", "treated")], p)
    treated = (out["group"] == "treatment") & out["converted"]
    eov = resp.loc[treated.to_numpy(), "expected_order_value"].to_numpy() * 0.8
    value = out.loc[treated, "revenue"].to_numpy()
    assert abs(value.mean() - eov.mean()) < 4 * value.std() / np.sqrt(len(value))
    assert not out.loc[out["group"] == "control", "delivered"].any()
    pd.testing.assert_frame_equal(out, simulate_outcomes(contacts, truth, seed=11))


def test_simulate_outcomes_inputs(demo: tuple[dict[str, Path], DemoTruth]) -> None:
    """The campaign type may come from a campaigns frame; unknown customers, types or groups are InputErrors."""
    paths, truth = demo
    campaigns = pd.read_csv(paths["campaigns"])
    contacts = pd.read_parquet(paths["contacts"]).head(200)
    out = simulate_outcomes(contacts, truth, seed=1, campaigns=campaigns)
    assert {"delivered", "opened", "clicked", "converted", "revenue"} <= set(out.columns) and len(out) == 200
    with pytest.raises(InputError, match="type"):
        simulate_outcomes(contacts, truth, seed=1)
    with pytest.raises(InputError, match="customer_id"):
        simulate_outcomes(contacts.assign(customer_id="TEST0001"), truth, seed=1, campaigns=campaigns)
    with pytest.raises(InputError, match="group"):
        simulate_outcomes(contacts.assign(group="holdout"), truth, seed=1, campaigns=campaigns)
    with pytest.raises(InputError, match="campaign_id"):
        simulate_outcomes(contacts.assign(campaign_id="X"), truth, seed=1, campaigns=campaigns)
