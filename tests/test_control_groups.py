"""Control groups: power calculation against the textbook formula and a simulation, stratified randomisation,
balance."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cvm.contract import CONTACTS
from cvm.control_groups import (
    assign_control,
    balance_table,
    control_share_needed,
    control_shares,
    control_size,
    global_holdout,
    to_contacts,
)
from cvm.errors import InputError
from cvm.policy import ContactPolicy, ControlRule
from scipy.stats import norm


def plan_frame(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Skewed strata (one huge, some of 1-3 customers), two arms, a customer with two rows in one arm."""
    rng = np.random.default_rng(seed)
    seg = rng.choice(["big", "mid", "small", "tiny"], n, p=[0.7, 0.25, 0.0493, 0.0007])
    plan = pd.DataFrame({"customer_id": np.arange(n), "offer_id": np.where(np.arange(n) % 3 == 0, "A", "B"),
                         "rfm_segment": seg, "channel": rng.choice(["email", "sms"], n), "clv": rng.lognormal(3, 1, n),
                         "discount_pct": 10.0, "contact_date": pd.Timestamp("2026-07-07")})
    plan.loc[5, "rfm_segment"] = None
    twice = plan.iloc[[0]].assign(contact_date=pd.Timestamp("2026-07-14"))
    return pd.concat([plan, twice], ignore_index=True)


def test_power_matches_hand_formula():
    """Textbook truth: n = (z_{1-a/2} + z_{1-b})^2 (p1 q1 + p2 q2) / d^2 (unpooled normal approximation). statsmodels
    works on Cohen's arcsine h, a different approximation of the same test: they agree within 1.5% here."""
    for p, d in [(0.10, 0.02), (0.05, 0.01), (0.30, 0.05)]:
        z = norm.ppf(0.975) + norm.ppf(0.8)
        hand = z ** 2 * (p * (1 - p) + (p + d) * (1 - p - d)) / d ** 2
        assert control_size(p, d, alpha=0.05, power=0.8) == pytest.approx(hand, rel=0.015)
    assert control_size(share=0.1, n_total=1005) == 101                    # round(100.5) half up


def test_power_by_simulation():
    """Simulation with known truth: with the returned n per group and a true lift equal to the MDE, a two-sided
    z-test at 5% rejects in about 80% of 4000 simulated experiments."""
    p, d = 0.10, 0.03
    n = control_size(p, d)
    rng = np.random.default_rng(5)
    c = rng.binomial(n, p, 4000) / n
    t = rng.binomial(n, p + d, 4000) / n
    se = np.sqrt(c * (1 - c) / n + t * (1 - t) / n)
    power = np.mean(np.abs(t - c) / se > norm.ppf(0.975))
    assert power == pytest.approx(0.8, abs=0.03)


def test_share_needed_is_consistent_with_size():
    """Known truth from control_size: the share found for N customers gives a control group of the size the power
    calculation asks for at the implied treatment/control ratio; NaN when 50/50 is not enough."""
    share = control_share_needed(100_000, 0.1, 0.01)
    n_c = round(share * 100_000)
    assert abs(control_size(0.1, 0.01, ratio=(100_000 - n_c) / n_c) - n_c) <= 2
    assert np.isnan(control_share_needed(500, 0.1, 0.01))


def test_stratified_shares_within_one_customer():
    """Exact arithmetic: every (arm, stratum) gets round(share x size) controls (within +-1, tiny strata included);
    with n_control the arm totals are exact."""
    plan = plan_frame()
    out = assign_control(plan, ["rfm_segment"], control_share={"A": 0.1, "B": 0.25}, seed=1)
    units = out.drop_duplicates(["offer_id", "customer_id"])
    cells = units.groupby(["offer_id", units["rfm_segment"].fillna("NA")])["group"]
    share = units["offer_id"].map({"A": 0.1, "B": 0.25}).groupby([units["offer_id"],
                                                                 units["rfm_segment"].fillna("NA")]).first()
    n_ctrl = cells.apply(lambda g: (g == "control").sum())
    assert (np.abs(n_ctrl - share * cells.size()) <= 1).all()
    assert out[out["customer_id"] == 0]["group"].nunique() == 1            # same group on both rows
    exact = assign_control(plan, ["rfm_segment", "channel"], n_control={"A": 100, "B": 7}, seed=2)
    per_arm = exact.drop_duplicates(["offer_id", "customer_id"]).query("group == 'control'")["offer_id"].value_counts()
    assert per_arm.to_dict() == {"A": 100, "B": 7}


def test_reproducible_by_seed():
    """Same seed, same groups; another seed, other customers in control."""
    plan = plan_frame()
    a = assign_control(plan, ["rfm_segment"], control_share=0.2, seed=42)["group"]
    b = assign_control(plan, ["rfm_segment"], control_share=0.2, seed=42)["group"]
    c = assign_control(plan, ["rfm_segment"], control_share=0.2, seed=43)["group"]
    assert a.equals(b) and not a.equals(c)


def test_bad_control_arguments():
    """Hand-made: both or neither of share / n, a missing arm, a missing stratum column."""
    plan = plan_frame(100)
    with pytest.raises(InputError):
        assign_control(plan, [], seed=0)
    with pytest.raises(InputError, match="B"):
        assign_control(plan, [], control_share={"A": 0.1}, seed=0)
    with pytest.raises(InputError, match="persona"):
        assign_control(plan, ["persona"], control_share=0.1, seed=0)


def test_balance_table():
    """Hand-computed SMD: treatment values 0,2 (mean 1, var 2) vs control 2,4 (mean 3, var 2): SMD = -2/sqrt(2)."""
    plan = pd.DataFrame({"group": ["treatment", "treatment", "control", "control"], "x": [0.0, 2, 2, 4],
                         "seg": ["a", "b", "a", "b"]})
    table = balance_table(plan, ["x", "seg"])
    assert table.loc["x", "smd"] == pytest.approx(-2 / np.sqrt(2))
    assert table.loc["x", "imbalanced"] and not table.loc["seg=a", "imbalanced"]
    randomised = assign_control(plan_frame(20_000, 3), ["rfm_segment"], control_share=0.3, seed=9)
    assert not balance_table(randomised, ["clv", "rfm_segment", "channel"])["imbalanced"].any()


def test_global_holdout_shares_from_policy_and_contacts():
    """Exact arithmetic on the holdout share; policy rules resolve by offer then type; contacts rows follow the
    contract's CONTACTS column names."""
    customers = plan_frame(1000).drop_duplicates("customer_id")
    hold = global_holdout(customers, 0.05, ["rfm_segment"], seed=1)
    assert abs((hold["group"] == "control").sum() - 50) <= 4                # one rounding per stratum
    policy = ContactPolicy(consent={"email": "consent_email"}, max_per_week=1, max_per_month=3, min_days_between=0,
                           quiet_days_after_purchase=0, campaign_priority=("retention",), channel_capacity_per_week={},
                           budget=None, control_per_campaign={"A": ControlRule(share=0.3),
                                                              "retention": ControlRule(baseline_rate=0.1,
                                                                                       mde_abs=0.2)})
    plan = plan_frame(1000).assign(campaign_type="retention")
    shares = control_shares(plan, policy).set_index("offer_id")
    assert shares.loc["A", "share"] == 0.3 and shares.loc["B", "rule"] == "power"
    assert 0 < shares.loc["B", "share"] < 0.1 and shares.loc["B", "powered"]
    contacts = to_contacts(assign_control(plan, [], control_share=0.1, seed=0))
    assert set(contacts.columns) <= set(CONTACTS.names) and set(CONTACTS.required) <= set(contacts.columns)
    assert contacts["arm"].iloc[0] == "10pct_" + plan["channel"].iloc[0]


def test_global_holdout_keeps_the_first_row_of_a_repeated_id():
    """Hand-made: with an id repeated (first row kept, as drop_duplicates keeps it) the holdout equals the one drawn
    on the deduplicated customers; without repeats, on the customers as given; the group column is text."""
    customers = plan_frame(1000).drop_duplicates("customer_id")
    repeated = pd.concat([customers, customers.iloc[[3, 0]].assign(rfm_segment="mid")])
    once = global_holdout(customers, 0.05, ["rfm_segment"], seed=1)
    pd.testing.assert_frame_equal(global_holdout(repeated, 0.05, ["rfm_segment"], seed=1), once)
    assert once["group"].dtype == pd.Series(["control"]).dtype


def test_to_contacts_same_frame_from_arrow_or_object_text():
    """Hand-made: a plan with Arrow text columns and the same plan with Python-object columns give the same contacts
    frame (text keeps the inferred text dtype, missing values included)."""
    plan = assign_control(plan_frame(300).assign(customer_id=lambda f: "C" + f["customer_id"].astype(str)),
                          ["rfm_segment"], control_share=0.2, seed=3)
    plan.loc[7, "channel"] = None
    arrow = plan.astype({"customer_id": "str", "channel": "str", "group": "str", "offer_id": "str"})
    objects = plan.astype({"customer_id": object, "channel": object, "group": object, "offer_id": object})
    pd.testing.assert_frame_equal(to_contacts(arrow), to_contacts(objects), check_exact=True)
    assert to_contacts(arrow)["customer_id"].dtype == pd.Series(["x"]).dtype
