"""Tests for cvm.experiments: published figures (Hillstrom, Cookie Cats, SeqBounds.jl), simulations with known truth,
and small hand-computed examples. Each statistical test says which in its docstring."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from cvm import experiments as ex
from cvm.errors import InputError
from matplotlib.figure import Figure

matplotlib.use("Agg")

HILLSTROM = "Kevin_Hillstrom_MineThatData_E-MailAnalytics_DataMiningChallenge_2008.03.20.csv"


def _z(q: float) -> float:
    """Standard normal quantile by bisection on math.erfc (keeps the hand formulas free of the code under test)."""
    lo, hi = -10.0, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _contacts(n_t: int, conv_t: int, n_c: int, conv_c: int, rev_t: float = 0.0, rev_c: float = 0.0,
              campaign: str = "C1", arm: str = "A") -> pd.DataFrame:
    """Hand-made contacts: the first conv_* rows of each group converted and paid rev_* each."""
    rows = [{"campaign_id": campaign, "arm": arm, "group": "treatment", "converted": int(i < conv_t),
             "revenue": rev_t if i < conv_t else 0.0} for i in range(n_t)]
    rows += [{"campaign_id": campaign, "arm": "control", "group": "control", "converted": int(i < conv_c),
              "revenue": rev_c if i < conv_c else 0.0} for i in range(n_c)]
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------- real, published figures

@pytest.mark.real
def test_hillstrom_published_rates(real_data: Path) -> None:
    """Published figures (Hillstrom 2008, PROVENANCE.txt): n 21,307/21,387/21,306, conversion 0.01253/0.00884/0.00573,
    spend per customer 1.42262/1.07720/0.65279, visit 0.18276/0.15140/0.10617; both arms share the No E-Mail control."""
    raw = pd.read_csv(real_data / "hillstrom" / HILLSTROM)
    contacts = pd.DataFrame({"campaign_id": "hillstrom", "arm": raw["segment"],
                             "group": np.where(raw["segment"] == "No E-Mail", "control", "treatment"),
                             "conversion": raw["conversion"], "visit": raw["visit"], "spend": raw["spend"],
                             "channel": raw["channel"]})
    res = ex.arm_results(contacts, "conversion", "spend", n_boot=500).set_index("arm")
    assert res.loc["Mens E-Mail", "n_treated"] == 21_307 and res.loc["Womens E-Mail", "n_treated"] == 21_387
    assert (res["n_control"] == 21_306).all()
    assert round(res.loc["Mens E-Mail", "conversion_rate_treated"], 5) == 0.01253
    assert round(res.loc["Womens E-Mail", "conversion_rate_treated"], 5) == 0.00884
    assert (res["conversion_rate_control"].round(5) == 0.00573).all()
    assert round(res.loc["Mens E-Mail", "revenue_per_customer_treated"], 5) == 1.42262
    assert round(res.loc["Womens E-Mail", "revenue_per_customer_treated"], 5) == 1.07720
    assert (res["revenue_per_customer_control"].round(5) == 0.65279).all()
    visit = ex.arm_results(contacts, "visit", n_boot=0).set_index("arm")
    assert round(visit.loc["Mens E-Mail", "conversion_rate_treated"], 5) == 0.18276
    assert round(visit.loc["Womens E-Mail", "conversion_rate_treated"], 5) == 0.15140
    assert (visit["conversion_rate_control"].round(5) == 0.10617).all()
    by_channel = ex.arm_results(contacts, "visit", by=["campaign_id", "arm", "channel"], n_boot=0)
    assert by_channel.groupby("arm")["n_treated"].sum().to_dict() == {"Mens E-Mail": 21_307, "Womens E-Mail": 21_387}
    assert by_channel.groupby("arm")["n_control"].sum().eq(21_306).all()


@pytest.mark.real
def test_cookie_cats_published_retention_and_srm(real_data: Path) -> None:
    """Published figures (DataCamp/Kaggle Cookie Cats): 1-day retention 44.82% (gate_30, control) vs 44.23% (gate_40),
    7-day 19.02% vs 18.20%. SRM on 44,700 vs 45,489 planned 50/50, by the formula: E = 45,094.5 per group,
    chi2 = 2 * 394.5^2 / 45,094.5 = 6.9024, and for 1 degree of freedom p = erfc(sqrt(chi2 / 2)) = 0.0086
    (the well-known 'about 0.009')."""
    raw = pd.read_csv(real_data / "cookie_cats" / "cookie_cats.csv")
    contacts = pd.DataFrame({"campaign_id": "cookie_cats", "arm": raw["version"],
                             "group": np.where(raw["version"] == "gate_30", "control", "treatment"),
                             "retention_1": raw["retention_1"], "retention_7": raw["retention_7"]})
    r1 = ex.arm_results(contacts, "retention_1", n_boot=0).iloc[0]
    r7 = ex.arm_results(contacts, "retention_7", n_boot=0).iloc[0]
    assert (r1["n_control"], r1["n_treated"]) == (44_700, 45_489)
    assert round(100 * r1["conversion_rate_control"], 2) == 44.82
    assert round(100 * r1["conversion_rate_treated"], 2) == 44.23
    assert round(100 * r7["conversion_rate_control"], 2) == 19.02
    assert round(100 * r7["conversion_rate_treated"], 2) == 18.20
    srm = ex.srm_check({"gate_30": 44_700, "gate_40": 45_489}, {"gate_30": 0.5, "gate_40": 0.5})
    chi2 = 2 * 394.5 ** 2 / 45_094.5
    assert srm.chi2 == pytest.approx(chi2, rel=1e-9)
    assert srm.p_value == pytest.approx(math.erfc(math.sqrt(chi2 / 2)), rel=1e-6)
    assert round(srm.p_value, 3) == 0.009
    table = ex.srm_table(contacts, {"gate_30": 0.5, "gate_40": 0.5}, unit_col="arm")
    assert table["srm_p_value"].iloc[0] == pytest.approx(srm.p_value)


# ------------------------------------------------------------------------------------------- coverage simulations

def test_proportion_interval_coverage_small_rates() -> None:
    """Simulation with known truth: 2,000 experiments, 4,000 per group, control 1.0%, treated 1.3% (true difference
    0.3 pp, ratio 1.3); the 95% Newcomb (difference) and log (ratio) intervals cover the truth 93-97% of the time
    (binomial sd of the coverage is 0.5 pp)."""
    rng = np.random.default_rng(11)
    reps, n, p_c, p_t = 2000, 4000, 0.010, 0.013
    x_t, x_c = rng.binomial(n, p_t, reps), rng.binomial(n, p_c, reps)
    low, high = ex.proportion_diff_ci(x_t, n, x_c, n)
    cover = np.mean((low <= p_t - p_c) & (p_t - p_c <= high))
    rlow, rhigh = ex.proportion_ratio_ci(x_t, n, x_c, n)
    rcover = np.mean((rlow <= p_t / p_c) & (p_t / p_c <= rhigh))
    assert 0.93 <= cover <= 0.97, cover
    assert 0.93 <= rcover <= 0.97, rcover


def test_revenue_interval_coverage_zero_inflated_lognormal() -> None:
    """Simulation with known truth: spend is 0 with probability 1 - q and lognormal(mu=3, sigma=1) otherwise, so the
    true mean is q * exp(3.5); q = 6% treated vs 5% control, 2,000 per group. Welch (2,000 experiments) and the
    percentile bootstrap (1,000 experiments, 500 resamples each) cover the true difference 93-97% of the time."""
    rng = np.random.default_rng(5)
    n, q_t, q_c = 2000, 0.06, 0.05
    truth = (q_t - q_c) * math.exp(3.5)

    def spend(q: float, reps: int) -> np.ndarray:
        return (rng.random((reps, n)) < q) * rng.lognormal(3.0, 1.0, (reps, n))

    y_t, y_c = spend(q_t, 2000), spend(q_c, 2000)
    low, high, _ = ex.welch_diff_ci(y_t.mean(1), y_t.var(1, ddof=1), n, y_c.mean(1), y_c.var(1, ddof=1), n)
    cover = np.mean((low <= truth) & (truth <= high))
    assert 0.93 <= cover <= 0.97, cover
    boot_rng = np.random.default_rng(6)
    hits = [lo <= truth <= hi for lo, hi in (ex.bootstrap_diff_ci(y_t[i], y_c[i], 500, rng=boot_rng)
                                             for i in range(1000))]
    assert 0.93 <= np.mean(hits) <= 0.97, np.mean(hits)


def test_bootstrap_means_match_bootstrap_theory() -> None:
    """Known truth: bootstrap means of a sample have mean = sample mean and sd = sqrt(var_ddof0 / n); the shortcut
    that draws only the non-modal values must reproduce that on mostly-zero data and on data with no repeats."""
    rng = np.random.default_rng(3)
    for values in ((rng.random(3000) < 0.04) * rng.lognormal(3, 1.5, 3000), rng.normal(5, 2, 400)):
        boots = ex.bootstrap_means(values, 20_000, np.random.default_rng(4))
        se = math.sqrt(values.var() / len(values))
        assert boots.mean() == pytest.approx(values.mean(), abs=4 * se / math.sqrt(20_000) * 3)
        assert boots.std() == pytest.approx(se, rel=0.03)
    assert (ex.bootstrap_means(np.zeros(10), 5, rng) == 0).all()
    assert (ex.bootstrap_means(np.full(10, -0.5), 5, rng) == -0.5).all()


def test_cuped_variance_reduction_and_unbiased_difference() -> None:
    """Simulation with known truth: pre ~ N(10, 2^2), y = 0.8 pre + 0.25 * treated + N(0, 1.6^2), so the true
    difference is 0.25 and corr(y, pre)^2 = 2.56 / (2.56 + 2.56) = 0.5: CUPED must remove about half the variance,
    keep the estimate on the truth and shorten the interval by about 1 - sqrt(0.5) = 29%."""
    rng = np.random.default_rng(8)
    n = 20_000
    pre = rng.normal(10, 2, 2 * n)
    treated = np.r_[np.ones(n), np.zeros(n)].astype(bool)
    y = 0.8 * pre + 0.25 * treated + rng.normal(0, 1.6, 2 * n)
    contacts = pd.DataFrame({"campaign_id": "C", "arm": np.where(treated, "A", "ctl"),
                             "group": np.where(treated, "treatment", "control"), "converted": 0, "spend": y,
                             "pre_spend": pre})
    plain = ex.arm_results(contacts, "converted", "spend", n_boot=0).iloc[0]
    cuped = ex.arm_results(contacts, "converted", "spend", n_boot=0, pre_period="pre_spend").iloc[0]
    assert cuped["cuped_variance_reduction"] == pytest.approx(0.5, abs=0.02)
    assert cuped["cuped_theta"] == pytest.approx(0.8, abs=0.02)
    assert cuped["revenue_diff_welch_low"] < 0.25 < cuped["revenue_diff_welch_high"]
    width = lambda r: r["revenue_diff_welch_high"] - r["revenue_diff_welch_low"]
    assert width(cuped) / width(plain) == pytest.approx(math.sqrt(0.5), abs=0.03)
    direct = ex.cuped_adjust(y, pre)
    assert direct.adjusted.mean() == pytest.approx(y.mean())


# --------------------------------------------------------------------------------------------------- sequential

def test_sequential_bounds_published_values() -> None:
    """Published figure: SeqBounds.jl README (github.com/PharmCat/SeqBounds.jl), one-sided O'Brien-Fleming-type
    Lan-DeMets spending, alpha 0.05, looks at 0.25/0.5/0.75/1: z = 3.74955, 2.53993, 2.01604, 1.72014 and
    cumulative spend 8.85754e-5 at 0.25. Two-sided alpha 0.05 spends 0.025 per side, so its boundaries equal the
    one-sided 0.025 ones; for 5 equal looks these are the widely tabulated 4.877, 3.357, 2.680, 2.290, 2.031."""
    one = ex.sequential_bounds([0.25, 0.5, 0.75, 1.0], 0.05, sides=1)
    assert one["z_bound"].to_numpy() == pytest.approx([3.74955, 2.53993, 2.01604, 1.72014], abs=2e-3)
    assert one["alpha_spent"].iloc[0] == pytest.approx(8.85754e-5, rel=1e-4)
    two = ex.sequential_bounds(np.arange(1, 6) / 5, 0.05, sides=2)
    assert two["z_bound"].to_numpy() == pytest.approx(
        ex.sequential_bounds(np.arange(1, 6) / 5, 0.025, sides=1)["z_bound"].to_numpy(), abs=1e-3)
    assert two["z_bound"].to_numpy() == pytest.approx([4.877, 3.357, 2.680, 2.290, 2.031], abs=2e-3)
    assert ex.sequential_bounds([1.0])["z_bound"].iloc[0] == pytest.approx(_z(0.975), abs=1e-6)


def test_sequential_aa_false_alarm_rate() -> None:
    """Simulation with known truth (A/A, no effect): 4,000 campaigns, 6 weekly looks of 400 contacts per group at 5%
    conversion. Testing |z| > 1.96 every week raises a false alarm far more often than 5% (theory ~ 14% for 6 looks);
    the Lan-DeMets O'Brien-Fleming bounds keep it at or below 5% + 3 binomial sd (0.35 pp each)."""
    rng = np.random.default_rng(21)
    sims, looks, per_week, p = 4000, 6, 400, 0.05
    x_t = rng.binomial(per_week, p, (sims, looks)).cumsum(1)
    x_c = rng.binomial(per_week, p, (sims, looks)).cumsum(1)
    n = per_week * np.arange(1, looks + 1)
    pool = (x_t + x_c) / (2 * n)
    z = (x_t - x_c) / n / np.sqrt(pool * (1 - pool) * 2 / n)
    bounds = ex.sequential_bounds(np.arange(1, looks + 1) / looks, 0.05)["z_bound"].to_numpy()
    naive = np.mean((np.abs(z) > 1.96).any(1))
    guarded = np.mean((np.abs(z) >= bounds).any(1))
    assert naive > 0.10, naive
    assert guarded <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / sims), guarded


def test_sequential_monitor_weekly_looks() -> None:
    """Hand-made: three weeks of 1,000 contacts per group and week; week 1 treated converts 10% vs 10% control,
    then 30% vs 10%: cumulative rates are (100+300)/2000 = 20% after week 2, and the huge z crosses the boundary."""
    weeks = pd.to_datetime(["2025-11-03", "2025-11-10", "2025-11-17"])
    rows = []
    for w, rate_t in zip(weeks, (0.1, 0.3, 0.3)):
        for group, rate in (("treatment", rate_t), ("control", 0.1)):
            conv = np.arange(1000) < rate * 1000
            rows.append(pd.DataFrame({"campaign_id": "C", "arm": "A" if group == "treatment" else "ctl",
                                      "group": group, "contact_date": w, "converted": conv.astype(int)}))
    contacts = pd.concat(rows, ignore_index=True)
    weekly = ex.sequential_monitor(contacts, "converted", "2025-11-30", planned_n_treated=3000,
                                   planned_n_control=3000)
    assert list(weekly["n_treated"]) == [1000, 2000, 3000]
    assert weekly["conversion_rate_treated"].iloc[1] == pytest.approx(0.2)
    assert weekly["info_fraction"].to_numpy() == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert weekly["decision"].iloc[0] == "continue" and weekly["decision"].iloc[1] == "efficacy"
    early = ex.sequential_monitor(contacts, "converted", "2025-11-05", 3000, 3000)
    assert len(early) == 1
    fig = ex.weekly_trend_plot(weekly, "C / A")
    assert isinstance(fig, Figure) and "efficacy" in fig._suptitle.get_text()


@pytest.mark.parametrize("seed", range(4))
def test_sequential_monitor_per_campaign_plans_match_separate_calls(seed: int) -> None:
    """Fuzzed: one call over several campaigns with per-campaign planned sizes gives the rows of one call per
    campaign (each campaign's looks at its own contact weeks)."""
    rng = np.random.default_rng(seed)
    n = 3000
    contacts = pd.DataFrame({"campaign_id": rng.choice(["c1", "c2", "c3"], n),
                             "group": rng.choice(["treatment", "control"], n, p=[0.8, 0.2]),
                             "converted": (rng.random(n) < 0.2).astype(int)})
    contacts["arm"] = np.where(contacts["group"] == "treatment", rng.choice(["a", "b"], n), "ctl")
    start = contacts["campaign_id"].map({"c1": 0, "c2": 20, "c3": 40})  # campaigns in partly different weeks
    contacts["contact_date"] = pd.Timestamp("2025-09-01") + pd.to_timedelta(start + rng.integers(0, 30, n), unit="D")
    plan_t = {c: int(rng.integers(500, 1500)) for c in ("c1", "c2", "c3")}
    plan_c = {c: int(rng.integers(100, 500)) for c in ("c1", "c2", "c3")}
    kw = {"by": ("campaign_id", "arm"), "control_match": ("campaign_id",)}
    together = ex.sequential_monitor(contacts, "converted", "2025-11-30", plan_t, plan_c, **kw)
    apart = pd.concat([ex.sequential_monitor(part, "converted", "2025-11-30", plan_t[c], plan_c[c], **kw)
                       for c, part in contacts.groupby("campaign_id")], ignore_index=True)
    pd.testing.assert_frame_equal(together, apart)


# ----------------------------------------------------------------------------------------- hand-computed examples

def test_holm_hand_example() -> None:
    """Hand: p = (0.01, 0.04, 0.03) sorted 0.01, 0.03, 0.04 -> 3*0.01 = 0.03, 2*0.03 = 0.06, max(1*0.04, 0.06) = 0.06;
    adjusted in the original order (0.03, 0.06, 0.06)."""
    assert ex.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(ex.holm([0.01, np.nan])[1])


def test_holm_within_campaign_in_arm_results() -> None:
    """Hand: two arms share one campaign's control, a third campaign has one arm: Holm multiplies the smaller p of the
    first campaign by 2 and leaves the single-arm campaign unadjusted; 'report' scope adjusts across all three."""
    a = _contacts(1000, 60, 1000, 40, arm="A")
    b = _contacts(1000, 45, 0, 0, arm="B")
    c = _contacts(500, 30, 500, 20, campaign="C2", arm="A")
    res = ex.arm_results(pd.concat([a, b, c]), "converted", n_boot=0)
    first = res[res["campaign_id"] == "C1"].sort_values("p_value")
    assert first["n_control"].tolist() == [1000, 1000]
    assert first["p_value_adjusted"].iloc[0] == pytest.approx(2 * first["p_value"].iloc[0])
    single = res[res["campaign_id"] == "C2"].iloc[0]
    assert single["p_value_adjusted"] == pytest.approx(single["p_value"])
    report = ex.arm_results(pd.concat([a, b, c]), "converted", n_boot=0, holm_scope="report")
    assert report["p_value_adjusted"].to_numpy() == pytest.approx(ex.holm(report["p_value"]))


def test_srm_hand_example() -> None:
    """Hand: 520 vs 480 planned 50/50 -> chi2 = (20^2 + 20^2) / 500 = 1.6, p = erfc(sqrt(0.8)) = 0.2059;
    a 90/10 plan with 880 vs 120: chi2 = 20^2/900 + 20^2/100 = 4.444, p = erfc(sqrt(2.222)) = 0.0350."""
    res = ex.srm_check(pd.Series({"treatment": 520, "control": 480}), {"treatment": 0.5, "control": 0.5})
    assert res.chi2 == pytest.approx(1.6)
    assert res.p_value == pytest.approx(math.erfc(math.sqrt(0.8)), rel=1e-9)
    res = ex.srm_check({"treatment": 880, "control": 120}, {"treatment": 9, "control": 1})
    assert res.chi2 == pytest.approx(400 / 900 + 400 / 100)
    assert res.p_value == pytest.approx(math.erfc(math.sqrt(res.chi2 / 2)), rel=1e-9)
    with pytest.raises(InputError, match="planned"):
        ex.srm_check({"treatment": 1, "ctl": 1}, {"treatment": 0.5, "control": 0.5})


def test_dilution_and_roi_hand_example() -> None:
    """Hand: 1,000 treated, 60 converters paying 80 net after a 20% discount (gross 100, discount 20 each); 1,000
    controls, 40 converters paying 100. Margin 40%, contact 0.50.
    discount_cost = 60 x 20 = 1,200; dilution = 4% x 1,000 x 20 = 800 (two thirds of the discount);
    incremental gross sales = 6,000 - 4,000 = 2,000, margin 800; contact cost 500;
    net = 800 - 1,200 - 500 = -900; ROI = -900 / (500 + 1,200) = -0.5294."""
    contacts = _contacts(1000, 60, 1000, 40, rev_t=80.0, rev_c=100.0)
    econ = ex.Economics(margin_pct=40, discount_pct=20, cost_per_contact=0.5)
    row = ex.dilution(contacts, "converted", "revenue", econ).iloc[0]
    assert row["avg_discount_per_redemption"] == pytest.approx(20)
    assert row["discount_cost"] == pytest.approx(1200)
    assert row["dilution_cost"] == pytest.approx(800)
    assert row["dilution_share"] == pytest.approx(2 / 3)
    assert row["incremental_revenue_gross"] == pytest.approx(2000)
    assert row["incremental_margin"] == pytest.approx(800)
    assert row["contact_cost"] == pytest.approx(500)
    assert row["net_incremental_margin"] == pytest.approx(-900)
    assert row["roi"] == pytest.approx(-900 / 1700)
    arms = ex.arm_results(contacts, "converted", "revenue", economics=econ, n_boot=200).iloc[0]
    assert arms["incremental_margin"] == pytest.approx(800)
    assert arms["incremental_margin_net"] == pytest.approx(-900)
    gross = ex.Economics(margin_pct="margin_pct", discount_pct="discount_pct", cost_per_contact=0.5,
                         revenue_is_net=False)
    as_gross = _contacts(1000, 60, 1000, 40, rev_t=100.0, rev_c=100.0).assign(margin_pct=40.0, discount_pct=20.0)
    assert ex.dilution(as_gross, "converted", "revenue", gross).iloc[0]["roi"] == pytest.approx(-900 / 1700)


def test_required_sample_size_matches_formula() -> None:
    """Formula (Cohen's h, normal approximation): h = 2 asin(sqrt(0.12)) - 2 asin(sqrt(0.10)) = 0.06398;
    equal groups n = 2 (z_0.975 + z_0.8)^2 / h^2 = 3,834.6 -> 3,835 per group; with ratio r = n_t / n_c = 2,
    n_c = (1 + 1/r) (z_0.975 + z_0.8)^2 / h^2 and n_t = 2 n_c."""
    h = 2 * math.asin(math.sqrt(0.12)) - 2 * math.asin(math.sqrt(0.10))
    zz = (_z(0.975) + _z(0.8)) ** 2
    size = ex.required_sample_size(0.10, 0.02)
    assert size.n_control == math.ceil(2 * zz / h ** 2) == 3835
    assert size.n_treated == size.n_control
    unequal = ex.required_sample_size(0.10, 0.02, ratio=2)
    assert unequal.n_control == math.ceil(1.5 * zz / h ** 2)
    assert unequal.n_treated == pytest.approx(2 * 1.5 * zz / h ** 2, abs=1)
    row = {"conversion_rate_control": 0.10, "n_treated": 1000, "n_control": 1000}
    assert ex.additional_contacts_needed(row, mde_rel=0.2) == 3835 - 1000
    with pytest.raises(InputError):
        ex.required_sample_size(0.0, 0.01)


def test_recommend_rules() -> None:
    """Hand-made rows for each rule: SRM alarm first, then the interval of the first decision metric present."""
    base = {"conversion_rate_control": 0.10, "n_treated": 1000, "n_control": 1000, "srm_p_value": 0.5}
    srm = ex.recommend({**base, "srm_p_value": 1e-5, "incremental_revenue": 5, "incremental_revenue_low": 1,
                        "incremental_revenue_high": 9})
    assert srm.startswith("check set-up")
    stop = ex.recommend({**base, "incremental_margin_net": -50, "incremental_margin_net_low": -90,
                         "incremental_margin_net_high": -10, "incremental_revenue": 5,
                         "incremental_revenue_low": 1, "incremental_revenue_high": 9})
    assert stop.startswith("stop") and "incremental_margin_net" in stop
    scale = ex.recommend({**base, "incremental_revenue": 5, "incremental_revenue_low": 1,
                          "incremental_revenue_high": 9}, capacity="call centre takes 2,000 more a week")
    assert scale.startswith("scale") and "2,000 more a week" in scale
    cont = ex.recommend({**base, "incremental_conversions": 3, "incremental_conversions_low": -5,
                         "incremental_conversions_high": 11})
    n_more = ex.additional_contacts_needed(base)
    assert n_more > 0 and cont == f"continue: need {n_more:,} more contacts per group to detect a 10% relative lift"
    big = {**base, "n_treated": 10 ** 6, "n_control": 10 ** 6, "incremental_conversions": 3,
           "incremental_conversions_low": -5, "incremental_conversions_high": 11}
    assert ex.recommend(big).startswith("stop: no effect")
    with pytest.raises(InputError, match="decision_metrics|none of"):
        ex.recommend(base)


def test_balance_table_hand_example() -> None:
    """Hand: treated x = 1, 2, 3 and control x = 2, 3, 4 (variances 1) -> SMD = -1 / sqrt((1 + 1) / 2) = -1, flagged;
    region share 'N' 2/3 vs 2/3 -> SMD 0, not flagged."""
    contacts = pd.DataFrame({"group": ["treatment"] * 3 + ["control"] * 3, "x": [1, 2, 3, 2, 3, 4],
                             "region": ["N", "N", "S", "N", "S", "N"]})
    table = ex.balance_table(contacts, ["x", "region"]).set_index("covariate")
    assert table.loc["x", "smd"] == pytest.approx(-1.0) and table.loc["x", "flag"]
    assert table.loc["region=N", "smd"] == pytest.approx(0.0) and not table.loc["region=N", "flag"]


def _balance_by_definition(contacts: pd.DataFrame, covariates: list[str], by: list[str]) -> pd.DataFrame:
    """balance_table's rows by its definition: per sorted cell and covariate, pandas mean and var of each group (one
    0/1 indicator per level, levels in order of appearance in the cell)."""
    is_t = (contacts["group"] == "treatment").to_numpy()
    rows = []
    for key, pos in contacts.groupby(by, sort=True, dropna=False).indices.items():
        head = {**dict(zip(by, key if isinstance(key, tuple) else (key,))), "n_treated": int(is_t[pos].sum()),
                "n_control": int((~is_t[pos]).sum())}
        for cov in covariates:
            col = contacts[cov].iloc[pos]
            if pd.api.types.is_numeric_dtype(col):
                parts = {cov: col.to_numpy(float)}
            else:
                parts = {f"{cov}={v}": (col == v).fillna(False).to_numpy(float) for v in col.dropna().unique()}
            for name, x in parts.items():
                xt, xc = pd.Series(x[is_t[pos]]), pd.Series(x[~is_t[pos]])
                pooled, diff = np.sqrt((xt.var() + xc.var()) / 2), xt.mean() - xc.mean()
                smd = diff / pooled if pooled > 0 else (0.0 if diff == 0 else np.inf)
                rows.append({**head, "covariate": name, "mean_treated": xt.mean(), "mean_control": xc.mean(),
                             "smd": smd, "flag": bool(abs(smd) > 0.1)})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", range(6))
def test_balance_table_matches_definition_on_random_cells(seed: int) -> None:
    """Fuzzed: the balance table equals the per-cell pandas definition (missing numbers skipped, missing
    levels counted as 0, cells with one row or one group, levels in order of appearance) to rounding."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    contacts = pd.DataFrame({
        "campaign_id": pd.array(rng.choice(["c1", "c2", "c3", "c4"], n, p=[0.5, 0.3, 0.19, 0.01]), dtype="string"),
        "group": pd.array(rng.choice(["treatment", "control"], n, p=[0.7, 0.3]), dtype="string"),
        "x": np.where(rng.random(n) < 0.1, np.nan, rng.lognormal(size=n)), "k": rng.integers(0, 3, n),
        "region": pd.array(np.where(rng.random(n) < 0.1, None, rng.choice(["N", "S", "E"], n)), dtype="string")})
    got = ex.balance_table(contacts, ["x", "k", "region"], by=["campaign_id"], smd_flag=0.1)
    want = _balance_by_definition(contacts, ["x", "k", "region"], ["campaign_id"])
    pd.testing.assert_frame_equal(got, want, check_dtype=False, rtol=1e-9)


def test_feedback_priors_shrinkage_beats_raw_rates() -> None:
    """Simulation with known truth: 300 cells per campaign type, true control and treated rates drawn from
    Beta(mu * 40, (1 - mu) * 40) (prior strength 40), cell sizes 10-200. The empirical-Bayes rates must be closer to
    the true rates than the raw ones (lower mean squared error), the estimated strength near 40, and a huge cell
    must keep its own rate."""
    rng = np.random.default_rng(2)
    cells = pd.MultiIndex.from_product([[f"s{i}" for i in range(300)], ["retention", "upsell"],
                                        ["control", "treatment"]], names=["segment", "campaign_type", "group"])
    cells = cells.to_frame(index=False)
    mu = np.where(cells["campaign_type"] == "retention", 0.10, 0.25) * np.where(cells["group"] == "treatment", 1.2, 1)
    cells["true_rate"] = rng.beta(mu * 40, (1 - mu) * 40)
    cells["n"] = np.where(cells["segment"] == "s0", 20_000, rng.integers(10, 200, len(cells)))
    contacts = cells.loc[cells.index.repeat(cells["n"])].reset_index(drop=True)
    contacts["converted"] = (rng.random(len(contacts)) < contacts["true_rate"]).astype(int)
    contacts["discount_pct"] = 10.0
    priors = ex.feedback_priors(contacts, "converted")
    for group, name in (("control", "control"), ("treatment", "treated")):
        true = priors.merge(cells[cells["group"] == group], on=["segment", "campaign_type"])["true_rate"]
        mse_shrunk = np.mean((priors[f"rate_{name}"] - true) ** 2)
        mse_raw = np.mean((priors[f"rate_{name}_raw"] - true) ** 2)
        assert mse_shrunk < 0.8 * mse_raw, (group, mse_shrunk, mse_raw)
        assert priors[f"prior_strength_{name}"].between(25, 65).all(), priors[f"prior_strength_{name}"].unique()
    huge = priors[priors["segment"] == "s0"]
    assert (huge["rate_control"] - huge["rate_control_raw"]).abs().max() < 0.002


# ------------------------------------------------------------------------------------------- nasty cases and errors

def test_arm_results_nasty_cases() -> None:
    """Hand-made: no conversion at all (p = 1, relative lift undefined), zero revenue everywhere (interval [0, 0]),
    bool outcomes, and a breakdown cell without controls (NaN statistics, n_control = 0)."""
    none = _contacts(50, 0, 50, 0)
    row = ex.arm_results(none, "converted", "revenue", n_boot=100).iloc[0]
    assert row["p_value"] == 1.0 and np.isnan(row["conversion_lift_rel"])
    assert row["revenue_diff"] == 0 and row["revenue_diff_boot_low"] == 0 == row["revenue_diff_boot_high"]
    assert row["revenue_diff_welch_low"] == 0 == row["revenue_diff_welch_high"]
    mixed = _contacts(100, 10, 100, 5).assign(converted=lambda d: d["converted"].astype(bool),
                                              region=["N"] * 150 + ["S"] * 50)
    cells = ex.arm_results(mixed, "converted", by=["campaign_id", "arm", "region"], n_boot=0).set_index("region")
    assert cells.loc["N", "n_treated"] == 100 and cells.loc["N", "n_control"] == 50
    one_buyer = _contacts(200, 1, 200, 0, rev_t=499.0)
    skew = ex.arm_results(one_buyer, "converted", "revenue", n_boot=300).iloc[0]
    assert skew["revenue_diff"] == pytest.approx(499 / 200)
    assert skew["revenue_diff_boot_low"] == 0.0 <= skew["revenue_diff_boot_high"]
    assert np.isnan(skew["conversion_lift_rel"]) and skew["conversion_lift_rel_high"] > 0


def test_arm_results_breakdown_without_controls_gives_nan() -> None:
    """Hand-made: treated in region S but every control in N: the S cell has n_control = 0 and NaN statistics."""
    contacts = _contacts(40, 4, 40, 2).assign(region=["N"] * 20 + ["S"] * 20 + ["N"] * 40)
    res = ex.arm_results(contacts, "converted", "revenue", by=["campaign_id", "arm", "region"], n_boot=50)
    s = res.set_index("region").loc["S"]
    assert s["n_control"] == 0 and np.isnan(s["conversion_lift_abs"]) and np.isnan(s["p_value"])


def test_input_errors_say_what_is_wrong() -> None:
    """Bad input raises InputError naming the column and the row count."""
    good = _contacts(10, 1, 10, 1)
    with pytest.raises(InputError, match="'converted'.*2 of 20"):
        ex.arm_results(good.assign(converted=[np.nan, 2] + [0] * 18), "converted", n_boot=0)
    with pytest.raises(InputError, match="'group'.*1 rows"):
        ex.arm_results(good.assign(group=["test"] + list(good["group"][1:])), "converted", n_boot=0)
    with pytest.raises(InputError, match="not found"):
        ex.arm_results(good, "bought", n_boot=0)
    with pytest.raises(InputError, match="no control rows"):
        ex.arm_results(pd.concat([good, _contacts(5, 1, 0, 0, campaign="C9")]), "converted", n_boot=0)
    with pytest.raises(InputError, match="'revenue'.*1 of 20"):
        ex.arm_results(good.assign(revenue=[None] + [0.0] * 19), "converted", "revenue", n_boot=0)


def test_forest_plot_title_states_the_message() -> None:
    """The forest plot is a Figure whose title counts the confident wins/losses and whose x axis has units."""
    res = pd.DataFrame({"campaign_id": ["C1", "C1", "C2"], "arm": ["A", "B", "A"],
                        "conversion_lift_abs": [0.01, -0.004, 0.001],
                        "conversion_lift_abs_low": [0.005, -0.007, -0.002],
                        "conversion_lift_abs_high": [0.015, -0.001, 0.004]})
    fig = ex.forest_plot(res)
    ax = fig.axes[0]
    assert isinstance(fig, Figure)
    assert ax.get_title() == "1 of 3 arms confidently positive, 1 negative, 1 inconclusive"
    assert "percentage points" in ax.get_xlabel()


def test_dilution_equals_per_group_sums_on_random_cells() -> None:
    """Grouped with the group flag as a key, dilution equals sums over the treated and control rows taken apart, per
    campaign x arm against the campaign's shared control; with no control_match every control row counts."""
    rng = np.random.default_rng(3)
    n = 4000
    contacts = pd.DataFrame({"campaign_id": rng.choice(["K2", "K1", "K3"], n), "group": "treatment",
                             "arm": rng.choice(["b", "a"], n), "converted": (rng.random(n) < 0.2).astype(int),
                             "discount_pct": rng.choice([0.0, 10.0, 20.0], n)})
    control = rng.random(n) < 0.3
    contacts.loc[control, ["group", "arm"]] = ["control", "control"]
    contacts["revenue"] = np.where(contacts["converted"] == 1, rng.gamma(2.0, 40.0, n), 0.0)
    econ = ex.Economics(margin_pct=35, discount_pct="discount_pct", cost_per_contact=0.4)
    out = ex.dilution(contacts, "converted", "revenue", econ, by=["campaign_id", "arm"], control_match=["campaign_id"])
    assert list(out["campaign_id"]) == sorted(out["campaign_id"]) and len(out) == 6
    for row in out.itertuples():
        t = contacts[(contacts["campaign_id"] == row.campaign_id) & (contacts["arm"] == row.arm)]
        c = contacts[(contacts["campaign_id"] == row.campaign_id) & (contacts["group"] == "control")]
        gross = t["revenue"] / (1 - np.where(t["converted"] == 1, t["discount_pct"] / 100, 0.0))
        assert (row.n_treated, row.n_control, row.redemptions) == (len(t), len(c), t["converted"].sum())
        assert row.discount_cost == pytest.approx((gross - t["revenue"]).sum(), rel=1e-12)
        expected = 0.35 * (gross.sum() - c["revenue"].sum() * len(t) / len(c))
        assert row.incremental_margin == pytest.approx(expected, rel=1e-12)
    pooled = ex.dilution(contacts, "converted", "revenue", econ, by=["arm"], control_match=[])
    assert list(pooled["n_control"]) == [int(control.sum())] * 2
