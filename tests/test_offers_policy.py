"""Offer catalogue, eligibility, contact policy: loading, filtering, and a zero-violation plan on 100,000 customers."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from cvm.assignment import solve_scalable
from cvm.control_groups import assign_control
from cvm.errors import InputError
from cvm.keys import key_positions
from cvm.offers import build_candidates, eligibility_mask, load_offers, offers_table
from cvm.policy import _as_bool, apply_policy, apply_policy_rows, check_plan, constraints_for, load_policy

RULES = Path(__file__).resolve().parents[1] / "lib" / "cvm" / "rules"
AS_OF = pd.Timestamp("2026-06-30")


@pytest.fixture(scope="module")
def offers():
    return load_offers(RULES / "offers_demo.yaml")


@pytest.fixture(scope="module")
def policy():
    return load_policy(RULES / "contact_policy_demo.yaml")


def test_demo_catalogue(offers):
    """Hand-checked against the YAML: six offers, the retention one with discounts 0/10/20, VIP without discount."""
    by_id = {o.offer_id: o for o in offers}
    assert len(offers) == 6
    assert by_id["RET-AT-RISK"].discount_levels == (0, 10, 20)
    assert by_id["VIP-EARLY-ACCESS"].discount_levels == (0,)
    assert {o.campaign_type for o in offers} == {"reactivation", "retention", "crosssell", "upsell", "acquisition"}
    assert len(offers_table(offers)) == 6


@pytest.mark.parametrize("field, value, message", [
    ("campaign_type", "winback", "campaign_type"),
    ("channels", ["fax"], "channels"),
    ("cost_per_contact", {"email": 0.1}, "cost_per_contact"),
    ("discount_levels", [10, 50], "margin"),
    ("eligibility", {"clv": {"~": 3}}, "operator"),
])
def test_catalogue_errors_name_file_offer_and_field(tmp_path, field, value, message):
    """Hand-made broken catalogues: the error names the file, the offer_id and the field."""
    offer = {"offer_id": "BAD-1", "name": "x", "campaign_type": "retention", "channels": ["email", "sms"],
             "discount_levels": [10], "margin_pct": 40, "cost_per_contact": {"email": 0.02, "sms": 0.07}}
    offer[field] = value
    path = tmp_path / "offers.yaml"
    path.write_text(yaml.safe_dump({"offers": [offer]}))
    with pytest.raises(InputError, match=message) as err:
        load_offers(path)
    assert "offers.yaml" in str(err.value) and "BAD-1" in str(err.value)


def test_eligibility_mask(offers):
    """Hand-made customers: list membership, numeric ranges with bounds included, missing values fail."""
    by_id = {o.offer_id: o for o in offers}
    customers = pd.DataFrame({
        "rfm_segment": ["Lost", "Hibernating", "Champions", None, "About to Sleep", "Lost"],
        "recency_days": [180, 541, 400, 300, np.nan, 540],
        "n_orders": [1, 2, 5, 1, 1, 3], "clv": [0, 10, 200, 5, 0, 1],
    })
    assert eligibility_mask(customers, by_id["REACT-WELCOME-BACK"]).tolist() == [True, False, False, False, False,
                                                                                 True]
    assert eligibility_mask(customers, by_id["VIP-EARLY-ACCESS"]).tolist() == [False, False, True, False, False,
                                                                               False]
    assert eligibility_mask(customers, by_id["XSELL-COMPLETE"]).tolist() == [False, False, True, False, False, False]
    with pytest.raises(InputError, match="rfm_segment"):
        eligibility_mask(customers.drop(columns="rfm_segment"), by_id["VIP-EARLY-ACCESS"])


def test_build_candidates_respects_validity(offers):
    """Hand-made: VIP early access is valid from March to October only; one row per channel x discount x date."""
    vip = [o for o in offers if o.offer_id == "VIP-EARLY-ACCESS"]
    customers = pd.DataFrame({"customer_id": ["a", "b"], "rfm_segment": ["Champions", "Lost"], "clv": [500, 500]})
    cand = build_candidates(customers, vip, ["2026-07-07", "2026-11-03"])
    assert len(cand) == 2 and set(cand["customer_id"]) == {"a"}
    assert set(cand["channel"]) == {"email", "post"} and (cand["contact_date"] == "2026-07-07").all()
    assert cand.set_index("channel")["cost"].to_dict() == {"email": 0.02, "post": 1.20}


def test_policy_demo_and_errors(policy, tmp_path):
    """Hand-checked against the YAML, and a broken policy names the field."""
    assert policy.max_per_week == 1 and policy.max_per_month == 3 and policy.budget == 25000
    assert policy.control_rule("RET-AT-RISK", "retention").mde_abs == 0.02
    assert policy.control_rule("VIP-EARLY-ACCESS", "upsell").share == 0.2
    path = tmp_path / "p.yaml"
    path.write_text("contact_policy:\n  consent: {email: consent_email}\n  max_per_week: 0\n  max_per_month: 2\n"
                    "  min_days_between: 3\n  quiet_days_after_purchase: 2\n")
    with pytest.raises(InputError, match="max_per_week"):
        load_policy(path)


def small_world():
    """Five customers, each built to trip exactly one rule at the first contact date (2026-07-07)."""
    customers = pd.DataFrame({
        "customer_id": ["ok", "no_consent", "just_bought", "recent_contact", "busy_month"],
        "consent_email": [True, "no", True, True, True], "consent_sms": [1, 0, 1, 1, 1],
        "consent_phone": False, "consent_post": [True, None, True, True, True],
        "last_purchase": pd.to_datetime(["2026-01-01", "2026-01-01", "2026-07-03", None, "2026-01-01"]),
    })
    history = pd.DataFrame({
        "customer_id": ["recent_contact", "busy_month", "busy_month", "busy_month", "ok"],
        "contact_date": pd.to_datetime(["2026-07-04", "2026-06-15", "2026-06-22", "2026-06-29", "2026-07-01"]),
        "group": ["treatment", "treatment", "treatment", "treatment", "control"],   # ok's row was not contacted
    })
    cand = pd.DataFrame({"customer_id": np.repeat(customers["customer_id"], 2).to_numpy(), "offer_id": "X",
                         "campaign_type": "retention", "channel": ["email", "sms"] * 5, "discount_pct": 0.0,
                         "contact_date": pd.Timestamp("2026-07-07"), "cost": 0.1, "value": 1.0})
    return customers, history, cand


def test_apply_policy_on_hand_made_cases(policy):
    """Hand-made truth: only 'ok' may be contacted on 2026-07-07 (consent, quiet days, cool-down, monthly cap)."""
    customers, history, cand = small_world()
    allowed, cap = apply_policy(cand, customers, history, policy, AS_OF)
    assert set(allowed["customer_id"]) == {"ok"}
    assert cap["busy_month"] == 0 and cap["ok"] == 3 and cap["recent_contact"] == 2
    assert (allowed["priority"] == 0).all()
    later = cand.assign(contact_date=pd.Timestamp("2026-07-28"))          # 3 weeks later most rules no longer bite
    allowed, _ = apply_policy(later, customers, history, policy, AS_OF)
    assert set(allowed["customer_id"]) == {"ok", "just_bought", "recent_contact", "busy_month"}
    with pytest.raises(InputError, match="days apart"):
        apply_policy(pd.concat([cand, later.assign(contact_date=pd.Timestamp("2026-07-10"))]), customers, history,
                     policy, AS_OF)


def test_apply_policy_counts_equal_the_per_row_definition(policy):
    """Known truth, on random histories: a candidate survives the weekly cap and the cool-down exactly when a plain
    per-row count of the customer's contacts around its date allows it; the cap is max_per_month minus the contacts
    in the month windows around the launches (contacts counted once per launch and customer, not per row)."""
    rng = np.random.default_rng(7)
    for _ in range(5):
        n = 60
        ids = np.array([f"c{i:03d}" for i in range(n)])
        customers = pd.DataFrame({"customer_id": ids, "consent_email": True, "consent_sms": True,
                                  "consent_post": True, "consent_phone": True,
                                  "last_purchase": pd.Timestamp("2025-01-01")})
        k = int(rng.integers(50, 300))
        history = pd.DataFrame({"customer_id": rng.choice(ids, k),
                                "contact_date": AS_OF + pd.to_timedelta(rng.integers(-40, 25, k), "D"),
                                "group": rng.choice(["treatment", "control"], k, p=[0.8, 0.2])})
        launches = [AS_OF + pd.Timedelta(days=d) for d in (3, 10, 24)]
        who = rng.choice(ids, 400)
        cand = pd.DataFrame({"customer_id": who, "offer_id": "X", "campaign_type": "retention",
                             "channel": rng.choice(["email", "sms"], len(who)), "discount_pct": 0.0,
                             "contact_date": [launches[i] for i in rng.integers(0, 3, len(who))], "cost": 0.1})
        allowed, cap = apply_policy(cand, customers, history, policy, AS_OF)
        made = history[history["group"] != "control"]

        def count(customer: str, day: pd.Timestamp, width: int, made: pd.DataFrame = made) -> int:
            days = made.loc[made["customer_id"] == customer, "contact_date"]
            return int(((days > day - pd.Timedelta(days=width)) & (days < day + pd.Timedelta(days=width))).sum())

        month = {c: max(policy.max_per_month - int(((made["customer_id"] == c)
                                                     & (made["contact_date"] > launches[0] - pd.Timedelta(days=30))
                                                     & (made["contact_date"] < launches[-1] + pd.Timedelta(days=30))
                                                     ).sum()), 0) for c in np.unique(who)}
        keep = [count(c, d, policy.week_days) < policy.max_per_week and count(c, d, policy.min_days_between) == 0
                and month[c] > 0 for c, d in zip(cand["customer_id"], cand["contact_date"])]
        expected = cand[keep].reset_index(drop=True)
        pd.testing.assert_frame_equal(allowed.drop(columns="priority"), expected)
        assert cap.to_dict() == month


def test_check_plan_finds_every_kind(policy, offers):
    """Hand-made bad plan: each violation kind is reported; the unfiltered plan breaks consent, quiet days,
    cool-down, weekly and monthly caps; capacity and budget come from a tight copy of the policy."""
    customers, history, cand = small_world()
    plan = cand[cand["channel"] == "email"].assign(offer_id="RET-AT-RISK")
    plan = pd.concat([plan, plan[plan["customer_id"] == "ok"].assign(contact_date=pd.Timestamp("2026-07-09"))])
    tight = replace(policy, channel_capacity_per_week={"email": 2}, budget=0.3)
    found = check_plan(plan, customers, history, tight, AS_OF, offers=offers)
    kinds = set(found["kind"])
    assert {"consent", "quiet days", "cool-down", "weekly cap", "monthly cap", "capacity", "budget"} <= kinds
    assert len(check_plan(plan.iloc[:0], customers, history, policy, AS_OF, offers=offers)) == 0
    vip_in_november = plan.iloc[[0]].assign(offer_id="VIP-EARLY-ACCESS", contact_date=pd.Timestamp("2026-11-03"))
    assert check_plan(vip_in_november, customers, history, policy, AS_OF, offers=offers)["kind"].tolist() == [
        "offer validity"]
    control = plan.assign(group="control")                                  # control rows are not contacted
    assert len(check_plan(control, customers, history, tight, AS_OF, offers=offers)) == 0
    repeated = pd.concat([customers, customers.iloc[[2, 0]].assign(consent_email=False)])   # first row per id counts
    pd.testing.assert_frame_equal(check_plan(plan, repeated, history, tight, AS_OF, offers=offers), found)
    allowed, cap = apply_policy(cand, customers, history, policy, AS_OF)
    again, cap_again = apply_policy(cand, repeated, history, policy, AS_OF)
    pd.testing.assert_frame_equal(again, allowed)
    pd.testing.assert_series_equal(cap_again, cap)
    for who in (customers, repeated, repeated.iloc[::-1]):   # the rows: the plain lookup of each allowed id
        allowed, _, rows = apply_policy_rows(cand, who, history, policy, AS_OF)
        np.testing.assert_array_equal(rows, key_positions(allowed["customer_id"], who["customer_id"]))


def test_zero_violations_on_100k_customers(offers, policy):
    """Simulation with known truth (every rule holds by construction of the pipeline, checked independently):
    100,000 seeded synthetic customers with random consents, purchases and contact history; candidates for the demo
    offers on two dates a week apart, values random; apply_policy -> solve_scalable -> control group -> check_plan."""
    rng = np.random.default_rng(11)
    n = 100_000
    segs = np.array(["Champions", "Loyal", "Potential Loyalist", "At Risk", "Can't Lose Them", "Need Attention",
                     "Hibernating", "Lost", "About to Sleep", "New"])
    customers = pd.DataFrame({
        "customer_id": np.arange(n), "rfm_segment": segs[rng.integers(0, len(segs), n)],
        "recency_days": rng.integers(0, 700, n), "n_orders": rng.integers(1, 8, n),
        "clv": rng.lognormal(4, 1, n),
        "consent_email": rng.random(n) < 0.8, "consent_sms": rng.random(n) < 0.3,
        "consent_phone": False, "consent_post": rng.random(n) < 0.5,
        "last_purchase": AS_OF - pd.to_timedelta(rng.integers(0, 400, n), "D"),
    })
    m = 150_000
    history = pd.DataFrame({"customer_id": rng.integers(0, n, m),
                            "contact_date": AS_OF - pd.to_timedelta(rng.integers(0, 40, m), "D"),
                            "group": np.where(rng.random(m) < 0.1, "control", "treatment")})
    dates = [AS_OF + pd.Timedelta(days=7), AS_OF + pd.Timedelta(days=14)]
    cand = build_candidates(customers, offers, dates)
    cand["value"] = np.round(rng.lognormal(0, 1, len(cand)) - 0.8, 2)
    allowed, cap, rows = apply_policy_rows(cand, customers, history, policy, AS_OF)
    np.testing.assert_array_equal(rows, key_positions(allowed["customer_id"], customers["customer_id"]))
    cons = constraints_for(policy, offers, cap)
    tight = replace(cons, offer_capacity={k: v // 4 for k, v in cons.offer_capacity.items()},
                    channel_capacity={"email": 30_000, "sms": 2_000, "post": 1_500}, budget=4_000.0)
    res = solve_scalable(allowed, tight)
    assert res.gap <= 0.01 and len(res.plan) > 10_000
    plan = assign_control(res.plan, ["rfm_segment"] if "rfm_segment" in res.plan else [], control_share=0.1)
    tight_policy = replace(policy, channel_capacity_per_week=dict(tight.channel_capacity), budget=tight.budget)
    found = check_plan(plan, customers, history, tight_policy, AS_OF, offers=offers)
    assert len(found) == 0, found["kind"].value_counts()
    # the same plan without the policy filter does break the rules: the check is not vacuous
    raw = solve_scalable(cand, tight)
    assert len(check_plan(raw.plan, customers, history, tight_policy, AS_OF, offers=offers)) > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_check_plan_capacity_and_consent_by_channel_codes(policy, offers, seed):
    """Fuzzed: a random plan over several channels (one unknown to the policy) and weeks, tight capacities with tied
    counts: the capacity rows equal the plain value_counts of the channel text, the consent rows the per-row check."""
    customers, history, _ = small_world()
    rng = np.random.default_rng(seed)
    n = 400
    plan = pd.DataFrame({"customer_id": pd.array(rng.choice(customers["customer_id"].to_numpy(), n), dtype="str"),
                         "channel": pd.array(rng.choice(["sms", "email", "post", "fax"], n), dtype="str"),
                         "contact_date": AS_OF + pd.to_timedelta(rng.integers(1, 30, n), "D"),
                         "offer_id": "RET-AT-RISK", "cost": 0.0})
    tight = replace(policy, channel_capacity_per_week={"email": 5, "sms": 5, "fax": 5})
    found = check_plan(plan, customers, history, tight, AS_OF)
    week = (((plan["contact_date"] - AS_OF).dt.days) - 1) // 7
    load = pd.DataFrame({"channel": plan["channel"].astype("string").to_numpy(), "week": week.to_numpy()})
    load = load.value_counts().rename("n").reset_index()
    over = load[load["channel"].map(tight.channel_capacity_per_week).notna()
                & (load["n"] > load["channel"].map(tight.channel_capacity_per_week))]
    got = found[found["kind"] == "capacity"]
    assert got["channel"].tolist() == over["channel"].tolist() and len(got) > 0
    caps = tight.channel_capacity_per_week
    assert got["detail"].tolist() == [f"{n} contacts in planning week {w} (capacity {caps[c]:g})"
                                      for c, w, n in zip(over["channel"], over["week"], over["n"], strict=True)]
    cust = customers.drop_duplicates("customer_id").set_index("customer_id")
    flags = {ch: pd.Series(_as_bool(cust[col]), index=cust.index) for ch, col in tight.consent.items()
             if col in cust.columns}
    no_consent = [not (ch in flags and bool(flags[ch][c])) for c, ch in zip(plan["customer_id"], plan["channel"])]
    assert (found["kind"] == "consent").sum() == sum(no_consent)
