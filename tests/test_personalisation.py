"""Tests of cvm.personalisation (the glue of the personalisation step) on small hand-made frames, plus the response
model on the UCI Bank Marketing file. Each statistical test says which truth it is checked against."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cvm import assignment
from cvm import personalisation as pz
from cvm.errors import InputError


def test_launch_dates_weekly_given_and_checked():
    assert pz.launch_dates("2026-06-30", "", 2) == [pd.Timestamp("2026-07-07"), pd.Timestamp("2026-07-14")]
    assert pz.launch_dates("2026-06-30", "2026-07-20, 2026-07-06", 5) == [pd.Timestamp("2026-07-06"),
                                                                        pd.Timestamp("2026-07-20")]
    assert pz.launch_dates("2026-06-30", ["2026-07-09"], 1) == [pd.Timestamp("2026-07-09")]
    with pytest.raises(InputError, match="not after as_of"):
        pz.launch_dates("2026-06-30", "2026-06-30", 1)
    with pytest.raises(InputError, match="not a date"):
        pz.launch_dates("2026-06-30", "next monday", 1)
    with pytest.raises(InputError, match="n_launches"):
        pz.launch_dates("2026-06-30", "", 0)


def test_baseline_rate_hand_computed():
    """Truth by hand: P(at least one purchase) = 1 - exp(-E[purchases]) for a Poisson count; no history gives 0."""
    frame = pd.DataFrame({"p_buy_window": [0.0, np.log(2), np.nan, 3.0]})
    np.testing.assert_allclose(pz.baseline_rate(frame), [0.0, 0.5, 0.0, 1 - np.exp(-3)])


def _plan_rows() -> pd.DataFrame:
    """Two campaigns; customer c3 is control. Order value 100, margin 40 %, 10 % discount on A, none on B."""
    return pd.DataFrame({
        "customer_id": ["c1", "c2", "c3", "c4"], "offer_id": ["A", "A", "A", "B"], "campaign_type": "retention",
        "channel": ["email", "sms", "email", "email"], "discount_pct": [10.0, 10.0, 10.0, 0.0],
        "contact_date": pd.Timestamp("2026-07-07"), "cost": [0.02, 0.07, 0.02, 0.02], "margin_pct": 40.0,
        "p_treated": [0.3, 0.5, 0.3, 0.2], "p_control": [0.1, 0.5, 0.1, 0.2], "expected_order_value": 100.0,
        "campaign_id": ["A-20260707", "A-20260707", "A-20260707", "B-20260707"],
        "arm": ["10pct_email", "10pct_sms", "10pct_email", "0pct_email"],
        "group": ["treatment", "treatment", "control", "treatment"]})


def test_campaign_table_hand_computed():
    """Truth by hand. A (treated c1, c2): value = uplift x 100 x 0.4 - 0.1 x 100 x p_t - cost = 8 - 3 - 0.02 and
    0 - 5 - 0.07; extra revenue = p_t x 90 - p_c x 100 = 17 and -5; conversion rate (0.3 + 0.5) / 2.
    B (c4, no uplift, no discount): value -0.02, revenue 0. Control counts 1 and 0."""
    rows = _plan_rows()
    rows["value"] = [4.98, -5.07, 4.98, -0.02]
    table = pz.campaign_table(rows).set_index("campaign_id")
    assert table.loc["A-20260707", "n_treated"] == 2 and table.loc["A-20260707", "n_control"] == 1
    assert table.loc["B-20260707", "n_control"] == 0
    assert table.loc["A-20260707", "expected_conversion_rate"] == pytest.approx(0.4)
    assert table.loc["A-20260707", "expected_incremental_revenue"] == pytest.approx(12.0)
    assert table.loc["A-20260707", "expected_incremental_margin"] == pytest.approx(-0.09)
    assert table.loc["B-20260707", "expected_incremental_revenue"] == pytest.approx(0.0)
    assert (table["margin_low"] <= table["expected_incremental_margin"]).all()
    assert (table["margin_high"] >= table["expected_incremental_margin"]).all()
    assert table.loc["A-20260707", "channels"] == "email, sms"


def _plan(rows: pd.DataFrame) -> pz.Plan:
    solved = assignment.Assignment(rows, 0.0, 0.0, 0.0, pd.DataFrame(), "test", 0.0)
    return pz.Plan(solved, rows, pz.campaign_table(rows), pd.DataFrame(), pd.DataFrame(), len(rows))


def test_target_lists_keep_contact_details_off_controls(tmp_path: Path):
    rows = _plan_rows().assign(value=1.0)
    customers = pd.DataFrame({"customer_id": ["c1", "c2", "c3", "c4"],
                              "email": ["a@x.com", "b@x.com", "c@x.com", "d@x.com"], "phone": ["1", "2", "3", "4"]})
    plain = pz.target_lists(_plan(rows), customers, tmp_path / "plain")
    assert sorted(p.name for p in plain) == ["email.csv", "sms.csv"]
    email = pd.read_csv(tmp_path / "plain" / "target_lists" / "email.csv")
    assert list(email.columns) == ["customer_id", "offer_id", "campaign_id", "discount", "arm", "group",
                                   "contact_date"]
    assert set(email["group"]) == {"treatment", "control"}
    pz.target_lists(_plan(rows), customers, tmp_path / "full", include_contact_details=True)
    full = pd.read_csv(tmp_path / "full" / "target_lists" / "email.csv").set_index("customer_id")
    assert full.loc["c1", "email"] == "a@x.com"
    assert pd.isna(full.loc["c3", "email"]) and pd.isna(full.loc["c3", "phone"])  # control: never contacted


def test_diffusive_spends_the_same_budget_on_random_customers():
    """Truth by construction: the diffusive campaign may not spend more than the plan, uses each offer's highest
    discount on the cheapest channel, one contact per customer, and dilution = discount x value x P(buy anyway)."""
    rng = np.random.default_rng(0)
    n = 200
    scored = pd.DataFrame({
        "customer_id": np.repeat([f"c{i}" for i in range(n)], 2), "offer_id": "A", "campaign_type": "retention",
        "channel": "email", "discount_pct": np.tile([0.0, 20.0], n), "contact_date": pd.Timestamp("2026-07-07"),
        "cost": 0.5, "margin_pct": 40.0, "p_control": np.repeat(rng.uniform(0, 0.3, n), 2),
        "expected_order_value": 50.0})
    scored["p_treated"] = scored["p_control"] + np.where(scored["discount_pct"] > 0, 0.05, 0.01)
    scored["value"] = 0.0
    best = scored[scored["discount_pct"] == 0].head(30).assign(group="treatment", campaign_id="A-20260707")
    table = pz.diffusive_vs_targeted(scored, _plan(best), seed=1).set_index("approach")
    diffusive = table.loc["diffusive, same budget"]
    assert diffusive["cost"] <= table.loc["targeted (plan)", "cost"] + 1e-9
    assert diffusive["contacts"] == 30
    assert table.loc["targeted (plan)", "margin_lost_to_dilution"] == 0.0
    assert diffusive["margin_lost_to_dilution"] > 0


def test_prior_source_default_feedback_and_errors(tmp_path: Path):
    table, label = pz.load_prior_source("")
    assert label == "prior" and len(table)
    feedback = pd.DataFrame({"segment": ["*"], "campaign_type": ["retention"], "discount_pct": [10.0],
                             "rate_control": [0.05], "uplift": [0.02], "uplift_shrunk": [0.01]})
    feedback.to_parquet(tmp_path / "feedback.parquet")
    table, label = pz.load_prior_source(tmp_path / "feedback.parquet")
    assert label == "feedback" and table["uplift_shrunk"].iloc[0] == 0.01
    with pytest.raises(InputError, match="customer.duckdb"):
        pz.load_prior_source(tmp_path)
    with pytest.raises(InputError, match="neither"):
        pz.load_prior_source(tmp_path / "missing.parquet")


def test_response_csv_errors(tmp_path: Path):
    with pytest.raises(InputError, match="not found"):
        pz.response_model_from_csv(tmp_path / "none.csv", "y")
    (tmp_path / "h.csv").write_text("a;b\n1;2\n")
    with pytest.raises(InputError, match="outcome column 'y'"):
        pz.response_model_from_csv(tmp_path / "h.csv", "y")


@pytest.mark.real
def test_bank_marketing_response_model_from_csv(real_data: Path):
    """Published figures (Moro et al. 2014, UCI; PROVENANCE.txt): 45,211 calls, 11.70 % yes. Without `duration`
    (known only after the call) published models reach a holdout AUC of about 0.75-0.80."""
    model = pz.response_model_from_csv(real_data / "bank_marketing" / "bank-full.csv", "y", seed=0)
    assert model.n_train + model.n_test == 45_211
    assert model.base_rate == pytest.approx(0.1170, abs=5e-4)
    assert 0.75 <= model.auc <= 0.85
    assert "duration" not in model.encoder.features


def test_campaign_cards_rendered_by_cvm_cards(tmp_path: Path):
    """One HTML card per campaign through `cvm.cards`, with the counts and expected figures of the campaign table
    (hand-made plan: A has 2 treated and 1 control, B 1 treated and 0 control)."""
    from cvm import offers as off

    rows = _plan_rows()
    rows["value"] = [4.98, -5.07, 4.98, -0.02]
    offers = [off.Offer(o, f"Offer {o}", "retention", ("email", "sms"), (0.0, 10.0), 40.0, {"email": 0.02},
                        description=f"offer {o} <b>") for o in ("A", "B")]
    setup = pz.Setup(pd.Timestamp("2026-06-30"), pd.DataFrame(), pd.DataFrame(), offers, None, pd.DataFrame(),
                     pd.DataFrame(), [pd.Timestamp("2026-07-07")], None, 14)
    paths = pz.write_cards(_plan(rows), setup, tmp_path)
    assert sorted(p.name for p in paths) == ["A-20260707.html", "B-20260707.html"]
    page = (tmp_path / "cards" / "A-20260707.html").read_text()
    assert "Offer A" in page and "offer A &lt;b&gt;" in page  # escaped
    assert "<b>2</b><span>treated contacts</span>" in page and "<b>1</b><span>control customers</span>" in page
    assert "40.0%" in page  # expected redemption rate (0.3 + 0.5) / 2


def _diffusive_reference(scored: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The diffusive pick by its plain definition: sorts and drop_duplicates on the text ids."""
    first = scored[scored["contact_date"] == scored["contact_date"].min()]
    top = first[first["discount_pct"] == first.groupby("offer_id")["discount_pct"].transform("max")]
    pick = top.assign(_u=np.random.default_rng(seed).random(len(top))).sort_values(["customer_id", "_u"])
    per_offer = pick.drop_duplicates(["customer_id", "offer_id"])
    return per_offer.sort_values(["customer_id", "cost", "_u"]).drop_duplicates("customer_id")


def test_diffusive_pick_equals_the_plain_sorts_on_random_candidates():
    """Known truth: the plain definition (text sorts, drop_duplicates) gives the same table on random candidates with
    repeated costs, several offers and dates, and ids whose text order differs from their order of appearance."""
    rng = np.random.default_rng(3)
    for seed in range(4):
        n = 300
        ids = np.array([f"c{i}" for i in rng.permutation(n)])
        rows = rng.integers(0, n, 2000)
        scored = pd.DataFrame({
            "customer_id": ids[rows], "offer_id": rng.choice(["A", "B", "C"], len(rows)),
            "discount_pct": rng.choice([0.0, 10.0, 20.0], len(rows)),
            "contact_date": pd.Timestamp("2026-07-07") + pd.to_timedelta(7 * rng.integers(0, 2, len(rows)), "D"),
            "cost": rng.choice([0.02, 0.07, 0.85], len(rows)), "p_control": rng.uniform(0, 0.3, len(rows)),
            "expected_order_value": rng.uniform(10, 90, len(rows)), "value": rng.normal(0, 1, len(rows))})
        scored["p_treated"] = scored["p_control"] + 0.05
        plan = scored.sample(80, random_state=seed).assign(group="treatment", campaign_type="retention",
                                                           channel="email", margin_pct=40.0, campaign_id="X")
        got = pz.diffusive_vs_targeted(scored, _plan(plan), seed=seed)
        spend = float(plan["cost"].sum())
        order = _diffusive_reference(scored, seed).sample(frac=1.0, random_state=seed)
        diffusive = order[order["cost"].cumsum() <= spend + 1e-9]
        want = got.iloc[1]
        assert want["contacts"] == len(diffusive) > 0
        assert want["cost"] == float(diffusive["cost"].sum())
        assert want["expected_incremental_margin"] == float(diffusive["value"].sum())


def test_stacked_distinct_customers_equal_np_unique():
    """Known truth: per variant np.unique of the customer positions (sorted) and its inverse, on random rows."""
    rng = np.random.default_rng(5)
    cands = pd.DataFrame({"offer_id": rng.choice(["A", "B"], 3000), "campaign_type": "retention",
                          "channel": rng.choice(["email", "sms"], 3000), "discount_pct": rng.choice([0.0, 10.0], 3000)})
    cands["campaign_type"] = cands["offer_id"].map({"A": "retention", "B": "upsell"})
    variants = pz._variants(cands)
    position = rng.integers(0, 500, len(cands))[variants.order]
    ids, stacked = pz._stack_distinct(position, variants, 500)
    offset = 0
    for (_, rows), distinct in zip(variants.slices(), ids, strict=True):
        unique, inverse = np.unique(position[rows], return_inverse=True)
        np.testing.assert_array_equal(distinct, unique)
        np.testing.assert_array_equal(stacked[rows], offset + inverse)
        offset += len(unique)


@pytest.mark.parametrize("seed", range(5))
def test_control_discounts_equal_the_per_campaign_draws(seed: int) -> None:
    """Fuzzed: the coded draw against its definition (campaigns in groupby order, each control row given one of its
    campaign's treated discounts in proportion to the treated rows, one seeded draw per campaign); campaigns without
    treated rows keep their control rows' discounts, unicode ids sort as pandas sorts them."""
    rng = np.random.default_rng(seed)
    n = 4000
    frame = pd.DataFrame({"campaign_id": pd.Series(rng.choice(["b2", "a1", "Ä3", "z", "ç5", "only_control"], n),
                                                   dtype="string"),
                          "discount_pct": rng.choice([0.0, 5.0, 10.0, 20.0], n),
                          "group": rng.choice(["treatment", "control"], n, p=[0.8, 0.2])})
    frame.loc[frame["campaign_id"] == "only_control", "group"] = "control"
    control = (frame["group"] == "control").to_numpy()
    expected, draws = frame.copy(), np.random.default_rng(seed + 100)
    for campaign, rows in expected[~control].groupby("campaign_id"):
        levels = rows["discount_pct"].value_counts(normalize=True).sort_index()
        idx = np.flatnonzero(control & (expected["campaign_id"] == campaign).to_numpy())
        expected.iloc[idx, expected.columns.get_loc("discount_pct")] = draws.choice(
            levels.index.to_numpy(), len(idx), p=levels.to_numpy())
    got = pz.control_discounts(frame["campaign_id"], frame["discount_pct"].to_numpy(), control,
                               np.random.default_rng(seed + 100))
    np.testing.assert_array_equal(got, expected["discount_pct"].to_numpy())
    assert (got[frame["campaign_id"].eq("only_control").to_numpy()]
            == frame.loc[frame["campaign_id"] == "only_control", "discount_pct"].to_numpy()).all()
