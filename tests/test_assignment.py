"""Optimal assignment: exact MILP against brute force, the Lagrangian solver against the MILP and the LP bound."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from cvm.assignment import Constraints, _group_argmax, solve_exact, solve_scalable
from cvm.errors import InputError

DAY = pd.Timestamp("2026-07-06")
COST = {"email": 0.1, "sms": 0.5, "post": 2.0}


def random_case(n: int, k: int, seed: int, dates: int = 1) -> tuple[pd.DataFrame, Constraints]:
    """n customers x k offers (offer i on channel i mod 3) x dates; skewed values, a quarter of them negative."""
    rng = np.random.default_rng(seed)
    chans = np.array(list(COST))
    rows = pd.MultiIndex.from_product([np.arange(n), np.arange(dates), np.arange(k)],
                                      names=["customer_id", "d", "o"]).to_frame(index=False)
    scale = rng.lognormal(0, 1, n)[rows["customer_id"]]
    rows["value"] = np.round(scale * rng.uniform(-0.3, 1.0, len(rows)) * 10, 2)
    rows["offer_id"] = "O" + rows["o"].astype(str)
    rows["channel"] = chans[rows["o"] % 3]
    rows["discount_pct"] = 10.0
    rows["contact_date"] = DAY + pd.to_timedelta(rows["d"] * 7, "D")
    rows["cost"] = rows["channel"].map(COST)
    cons = Constraints(max_per_customer=1 if dates == 1 else 2,
                       offer_capacity={f"O{i}": int(n * 0.12) for i in range(k)},
                       channel_capacity={"sms": int(n * 0.15), "post": int(n * 0.06)}, budget=n * 0.25)
    return rows.drop(columns=["d", "o"]), cons


def feasible(plan: pd.DataFrame, cons: Constraints) -> bool:
    """Every constraint of the model holds for the plan."""
    per_cust_day = plan.groupby(["customer_id", "contact_date"]).size().max() if len(plan) else 0
    cap = cons.max_per_customer if isinstance(cons.max_per_customer, int) else None
    ok = per_cust_day <= 1 and (cap is None or plan.groupby("customer_id").size().max() <= cap)
    ok &= all(n <= cons.offer_capacity[o] for o, n in plan["offer_id"].value_counts().items()
              if o in cons.offer_capacity)
    ok &= all(n <= cons.channel_capacity[c] for (c, _), n in plan[["channel", "contact_date"]].value_counts().items()
              if c in cons.channel_capacity)
    return bool(ok and (cons.budget is None or plan["cost"].sum() <= cons.budget + 1e-9))


def test_exact_matches_brute_force():
    """Known truth by enumeration: 4 customers x (none or one of 3 rows), ties, negatives, a binding budget."""
    cand = pd.DataFrame({
        "customer_id": np.repeat(["a", "b", "c", "d"], 3),
        "offer_id": ["X", "Y", "Z"] * 4,
        "channel": ["email", "sms", "post"] * 4,
        "discount_pct": 0.0, "contact_date": DAY,
        "value": [5, 5, 9, 4, 6, 8, -1, 3, 7, -2, -1, 0],     # ties for a; d never worth contacting
        "cost": [1, 2, 6, 1, 2, 6, 1, 2, 6, 1, 2, 6.0],
    })
    cons = Constraints(offer_capacity={"Z": 1, "Y": 2}, budget=9)
    best = -np.inf
    for choice in itertools.product(range(4), repeat=4):       # 3 = no contact
        rows = [3 * i + c for i, c in enumerate(choice) if c < 3]
        plan = cand.iloc[rows]
        if feasible(plan, cons):
            best = max(best, plan["value"].sum())
    res = solve_exact(cand, cons)
    assert res.objective == pytest.approx(best)
    assert feasible(res.plan, cons)
    assert "d" not in set(res.plan["customer_id"])
    assert res.bound >= res.objective - 1e-9


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_scalable_agrees_with_exact(seed):
    """Known truth from the MILP: the Lagrangian plan is feasible, within 1% of the optimum, and both bounds
    (LP relaxation, Lagrangian dual) are >= both objectives."""
    cand, cons = random_case(400, 5, seed)
    exact, fast = solve_exact(cand, cons), solve_scalable(cand, cons)
    assert feasible(exact.plan, cons) and feasible(fast.plan, cons)
    assert fast.objective >= 0.99 * exact.objective
    for bound in (exact.bound, fast.bound):
        assert bound >= exact.objective - 1e-6 and bound >= fast.objective - 1e-6
    assert fast.gap <= 0.01


def test_scalable_on_a_sample_and_several_dates():
    """Known truth from the MILP on 2 contact dates with 2 contacts per customer; multipliers start from a 100-customer
    sample so the subgradient refinement has work to do."""
    cand, cons = random_case(600, 4, 7, dates=2)
    exact = solve_exact(cand, cons)
    fast = solve_scalable(cand, cons, sample_customers=100, seed=3)
    assert feasible(fast.plan, cons)
    assert fast.bound >= exact.objective - 1e-6
    assert fast.objective >= 0.99 * exact.objective


def test_per_customer_caps_from_a_series():
    """Hand-made: the cap Series (what the policy leaves after history) is respected, cap 0 excludes."""
    cand, _ = random_case(50, 3, 4, dates=3)
    cand["value"] = cand["value"].abs() + 1
    caps = pd.Series(np.arange(50) % 3, index=np.arange(50))
    res = solve_scalable(cand, Constraints(max_per_customer=caps))
    per = res.plan.groupby("customer_id").size()
    assert (per <= caps.reindex(per.index)).all()
    assert not set(res.plan["customer_id"]) & set(caps[caps == 0].index)
    assert res.objective == pytest.approx(res.bound)      # no coupling constraint: the greedy choice is optimal


def test_shadow_price_of_a_binding_capacity():
    """Known truth: one offer for 10 customers with values 10..1 and capacity 3; the LP dual of the capacity lies
    between the 4th and 3rd best values (7 and 8), and the budget is slack (dual 0, not binding)."""
    cand = pd.DataFrame({"customer_id": range(10), "offer_id": "X", "channel": "email", "discount_pct": 0.0,
                         "contact_date": DAY, "value": np.arange(10, 0, -1.0), "cost": 1.0})
    cons = Constraints(offer_capacity={"X": 3}, budget=100)
    for res in (solve_exact(cand, cons), solve_scalable(cand, cons)):
        assert sorted(res.plan["value"]) == [8, 9, 10]
        assert 7 - 1e-6 <= res.duals["offer:X"] <= 8 + 1e-6
        assert res.binding["offer:X"] and not res.binding["budget"]
        assert res.duals["budget"] == pytest.approx(0)


def test_non_positive_values_are_never_contacted():
    """Hand-made: sure things (value 0) and do-not-disturb (value < 0) get nothing even with free capacity."""
    cand = pd.DataFrame({"customer_id": ["a", "b", "c"], "offer_id": "X", "channel": "email", "discount_pct": 0.0,
                         "contact_date": DAY, "value": [0.0, -3.0, 2.0], "cost": 0.0})
    for solve in (solve_exact, solve_scalable):
        assert list(solve(cand, Constraints()).plan["customer_id"]) == ["c"]


def test_bad_candidates_raise_input_error():
    """Hand-made: a missing column and a missing value name the column and the row count."""
    cand, cons = random_case(5, 2, 0)
    with pytest.raises(InputError, match="value"):
        solve_scalable(cand.drop(columns="value"), cons)
    cand.loc[[0, 1], "value"] = np.nan
    with pytest.raises(InputError, match="2 missing"):
        solve_exact(cand, cons)


@pytest.mark.parametrize("seed", range(5))
def test_group_argmax_is_the_padded_argmax(seed):
    """Fuzzed: per-run maximum and first position equal np.argmax over the rows of the -inf padded matrix, with ties
    (rounded values) and runs of -inf."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 7, 500)
    x = np.round(rng.normal(size=sizes.sum()), 1)
    x[rng.random(len(x)) < 0.1] = -np.inf
    runs = np.cumsum(sizes) - sizes
    run = np.repeat(np.arange(len(sizes)), sizes)
    padded = np.full((len(sizes), sizes.max()), -np.inf)
    padded[run, np.arange(len(x)) - runs[run]] = x
    best, at = _group_argmax(x, runs, run)
    j = np.argmax(padded, axis=1)
    assert np.array_equal(best, padded[np.arange(len(sizes)), j])
    assert np.array_equal(at, runs + j)


def test_repeated_customer_caps_raise_input_error():
    """Hand-made: a cap Series with a customer twice is ambiguous."""
    cand, _ = random_case(5, 2, 0)
    caps = pd.Series([1, 1, 2, 1, 1, 1], index=[0, 1, 2, 2, 3, 4])
    with pytest.raises(InputError, match="repeated customer ids"):
        solve_scalable(cand, Constraints(max_per_customer=caps))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_codes_of_an_earlier_solve_give_the_same_plan(seed):
    """Fuzzed: a solve on new values with the codes of an earlier solve on the same rows (the oracle's re-solve) is
    identical to a fresh solve; codes of other rows are refused."""
    cand, cons = random_case(400, 4, seed, dates=2)
    cand = cand.sample(frac=1.0, random_state=seed).reset_index(drop=True)   # customers not in runs
    first = solve_scalable(cand, cons, sample_customers=100, seed=seed)
    other = cand.assign(value=np.random.default_rng(seed).normal(1.0, 3.0, len(cand)))
    for solve in (solve_exact, solve_scalable):
        kw = {"sample_customers": 100, "seed": seed} if solve is solve_scalable else {}
        fresh, reused = solve(other, cons, **kw), solve(other, cons, codes=first.codes, **kw)
        pd.testing.assert_frame_equal(fresh.plan, reused.plan)
        pd.testing.assert_frame_equal(fresh.constraints, reused.constraints)
        assert (fresh.objective, fresh.bound, fresh.gap) == (reused.objective, reused.bound, reused.gap)
    with pytest.raises(InputError, match="codes"):
        solve_scalable(other.iloc[:-1], cons, codes=first.codes)
