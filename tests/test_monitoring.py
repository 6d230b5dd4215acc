"""The monitoring glue on small hand-made contacts: outcomes, attribution windows, checks, breakdowns, feedback."""
from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest
from cvm import monitoring as mon
from cvm.errors import InputError


def _contacts(rows: list[tuple]) -> pd.DataFrame:
    """(customer_id, campaign_id, arm, group, converted, revenue) rows, all contacted on 2025-03-03 by e-mail."""
    frame = pd.DataFrame(rows, columns=["customer_id", "campaign_id", "arm", "group", "converted", "revenue"])
    return frame.assign(contact_date=pd.Timestamp("2025-03-03"), channel="email")


def _simple(n_t: int = 40, n_c: int = 20, x_t: int = 8, x_c: int = 2, arms: tuple[str, ...] = ("a",)) -> pd.DataFrame:
    rows = []
    for arm in arms:
        rows += [(f"T{arm}{i}", "K1", arm, "treatment", i < x_t, 50.0 if i < x_t else 0.0) for i in range(n_t)]
    rows += [(f"C{i}", "K1", "control", "control", i < x_c, 40.0 if i < x_c else 0.0) for i in range(n_c)]
    return _contacts(rows)


def test_prepare_defaults_anonymised_and_late_contacts() -> None:
    """No customer id, no arm column, mixed-case groups, a contact after as_of: row identity, notes, exclusion."""
    frame = pd.DataFrame({"campaign_id": ["X"] * 4, "group": ["Treatment", "treatment", "Control", "control"],
                          "visit": [1, 0, 0, 0], "contact_date": pd.to_datetime(["2025-01-01"] * 3 + ["2025-02-01"])})
    setup = mon.prepare(frame, as_of="2025-01-15", outcomes=["visit"], config_primary="visit", value_outcome="spend")
    assert len(setup.contacts) == 3
    assert list(setup.contacts["arm"]) == ["treatment", "treatment", "control"]
    assert setup.primary == "visit" and setup.value is None and not setup.has_ids
    text = mon.notes_sentence(setup)
    assert "no customer id" in text and "after 2025-01-15" in text and "No spend column" in text
    assert setup.campaigns.loc[0, "type"] == "unknown" and setup.campaigns.loc[0, "margin_pct"] == 40.0


def test_prepare_missing_outcome_without_transactions_raises() -> None:
    frame = pd.DataFrame({"campaign_id": ["X", "X"], "group": ["treatment", "control"]})
    with pytest.raises(InputError, match="primary outcome column 'converted'"):
        mon.prepare(frame, as_of="2025-01-01")


def test_attribution_window_is_half_open_and_ignores_returns() -> None:
    """Orders on the contact day count, on day 14 do not; returns are not purchases; no orders gives zero."""
    contacts = pd.DataFrame({"customer_id": ["A", "B", "C", "D"], "campaign_id": "K", "group": "treatment",
                             "contact_date": pd.Timestamp("2025-03-03")})
    tx = pd.DataFrame({"customer_id": ["A", "A", "B", "C", "C"],
                       "order_date": pd.to_datetime(["2025-03-03 10:00", "2025-03-10 00:00", "2025-03-17 00:00",
                                                     "2025-03-05 00:00", "2025-03-06 00:00"]),
                       "amount": [10.0, 5.0, 99.0, 30.0, -30.0], "is_return": [False, False, False, False, True]})
    out = mon.attribute_outcomes(contacts, tx, 14)
    assert out["converted"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert out["revenue"].tolist() == [15.0, 0.0, 30.0, 0.0]
    with pytest.raises(InputError, match="customer_id"):
        mon.attribute_outcomes(contacts.drop(columns="customer_id"), tx, 14)


def test_prepare_attributes_outcomes_and_pre_period_spend() -> None:
    contacts = pd.DataFrame({"customer_id": ["A", "B"], "campaign_id": "K", "group": ["treatment", "control"],
                             "contact_date": pd.Timestamp("2025-03-03")})
    tx = pd.DataFrame({"customer_id": ["A", "A", "B"], "order_date": pd.to_datetime(["2025-01-10", "2025-03-04",
                                                                                     "2024-10-01"]),
                       "amount": [20.0, 7.0, 50.0], "is_return": False})
    setup = mon.prepare(contacts, as_of="2025-06-30", transactions=tx, pre_period_days=90)
    assert setup.primary == "converted" and setup.value == "revenue" and setup.has_pre
    assert setup.contacts["converted"].tolist() == [1.0, 0.0]
    assert setup.contacts["pre_spend"].tolist() == [20.0, 0.0], "B's order is older than 90 days"
    assert any("attributed from transactions" in n for n in setup.notes)


def test_srm_planned_share_sources_and_flag() -> None:
    """A 30% control share judged against 50/50 is a red flag; against the nearest design share (30%) it is not."""
    rng = np.random.default_rng(1)
    frame = _simple(n_t=700, n_c=300, x_t=50, x_c=20)
    frame["converted"] = rng.random(len(frame)) < 0.1
    setup = mon.prepare(frame, as_of="2025-06-30")
    inferred = mon.srm(setup)
    assert inferred.loc[0, "control_share_planned"] == pytest.approx(0.3)
    assert not inferred.loc[0, "srm_flag"]
    forced = mon.srm(setup, planned_control_share=0.5)
    assert forced.loc[0, "srm_flag"] and forced.loc[0, "planned_from"].startswith("notebook")
    assert "RED FLAG" in mon.srm_sentence(forced)
    campaigns = pd.DataFrame({"campaign_id": ["K1"], "type": ["upsell"], "start_date": [pd.Timestamp("2025-03-03")],
                              "control_share": [0.3]})
    from_table = mon.srm(mon.prepare(frame, as_of="2025-06-30", campaigns=campaigns), planned_control_share=0.5)
    assert from_table.loc[0, "planned_from"] == "campaigns.control_share" and not from_table.loc[0, "srm_flag"]


def test_arm_table_shared_control_and_zero_control_conversions() -> None:
    """Two arms share one control: each is compared with the same 20 controls; with no control conversion the
    power calculation is impossible and the recommendation says so instead of failing."""
    frame = _simple(n_t=40, n_c=20, x_t=8, x_c=0, arms=("a", "b"))
    setup = mon.prepare(frame, as_of="2025-06-30")
    arms = mon.arm_table(setup, mon.srm(setup), n_boot=200, seed=3)
    assert arms["n_control"].tolist() == [20, 20] and arms["n_treated"].tolist() == [40, 40]
    assert arms["conversion_rate_treated"].tolist() == [0.2, 0.2]
    assert arms["incremental_revenue"].tolist() == pytest.approx([400.0, 400.0])
    assert arms["decision"].isin(["scale", "continue"]).all()
    assert not arms["recommendation"].str.contains("nan").any()


def test_secondary_outcomes_rate_and_mean() -> None:
    frame = _simple(n_t=10, n_c=10, x_t=5, x_c=2).assign(visit=[1] * 6 + [0] * 4 + [1] * 3 + [0] * 7,
                                                          basket=[2.0] * 10 + [1.0] * 10)
    setup = mon.prepare(frame, as_of="2025-06-30", outcomes=["converted", "visit", "basket"])
    sec = mon.secondary_results(setup).set_index("outcome")
    assert sec.loc["visit", "kind"] == "rate" and sec.loc["visit", "diff"] == pytest.approx(0.3)
    assert sec.loc["basket", "kind"] == "mean" and sec.loc["basket", "diff"] == pytest.approx(1.0)


def test_breakdown_sums_cells_and_keeps_cells_without_control_out() -> None:
    """Per channel: cells are matched to their own campaign and channel; a channel without controls has no lift."""
    a = _simple(n_t=20, n_c=10, x_t=6, x_c=1)
    b = _simple(n_t=30, n_c=10, x_t=3, x_c=3).assign(campaign_id="K2", channel="sms")
    c = _simple(n_t=5, n_c=0, x_t=1, x_c=0).assign(campaign_id="K2", channel="post")
    c = c[c["group"] == "treatment"]
    setup = mon.prepare(pd.concat([a, b, c], ignore_index=True), as_of="2025-06-30")
    table = mon.breakdown(setup, ["channel"]).set_index("channel")
    assert table.loc["email", "incremental_conversions"] == pytest.approx(20 * (6 / 20 - 1 / 10))
    assert table.loc["sms", "incremental_conversions"] == pytest.approx(30 * (3 / 30 - 3 / 10))
    assert table.loc["post", "cells_without_control"] == 1
    assert np.isnan(table.loc["post", "extra_conversions_per_1000"])


def test_breakdown_interval_covers_known_truth_in_simulation() -> None:
    """Simulation with known truth: two campaigns in one channel with uplifts 0.05 and 0.10 on base rates 0.1 and
    0.2; the 95% interval of the summed incremental conversions covers the true expected total in 90-99% of 300
    replications (expected 95%; Monte Carlo sd 1.3 points)."""
    rng = np.random.default_rng(7)
    n_t, n_c, reps = 400, 200, 300
    truth = n_t * 0.05 + n_t * 0.10
    parts = []
    for cid, base, lift in (("K1", 0.1, 0.05), ("K2", 0.2, 0.10)):
        treated = rng.random((reps, n_t)) < base + lift
        control = rng.random((reps, n_c)) < base
        parts.append(pd.DataFrame({
            "campaign_id": cid, "rep": np.repeat(np.arange(reps), n_t + n_c).astype(str),
            "arm": np.tile(["a"] * n_t + ["control"] * n_c, reps),
            "group": np.tile(["treatment"] * n_t + ["control"] * n_c, reps),
            "converted": np.c_[treated, control].ravel()}))
    setup = mon.prepare(pd.concat(parts, ignore_index=True), as_of="2025-06-30", value_outcome="")
    table = mon.breakdown(setup, ["rep"])  # each replication is one level: both campaigns summed per level
    assert len(table) == reps
    hits = ((table["incremental_conversions_low"] <= truth) & (truth <= table["incremental_conversions_high"])).mean()
    assert 0.90 <= hits <= 0.99


def test_trend_rolling_sums_not_average_of_rates() -> None:
    """Rolling redemption = conversions / contacts over the window (a small week does not count as much)."""
    w1 = _simple(n_t=100, n_c=50, x_t=10, x_c=5)
    w2 = _simple(n_t=10, n_c=50, x_t=5, x_c=5).assign(campaign_id="K2", contact_date=pd.Timestamp("2025-03-10"))
    setup = mon.prepare(pd.concat([w1, w2], ignore_index=True), as_of="2025-06-30")
    weekly = mon.trend(setup)
    assert weekly["redemption_rate"].tolist() == pytest.approx([0.1, 0.5])
    assert weekly["rolling_redemption_rate"].tolist() == pytest.approx([0.1, 15 / 110])


def test_targeting_class_column_then_name() -> None:
    campaigns = pd.DataFrame({"campaign_id": ["1", "2", "3", "4"],
                              "name": ["Mass newsletter", "Uplift model picks", "Spring sale", "Broadcast"],
                              "targeting": [pd.NA, pd.NA, pd.NA, "Targeted"]})
    assert mon.targeting_class(campaigns).tolist() == ["diffusive", "targeted", pd.NA, "targeted"]


def test_balance_red_flag_needs_size_and_significance() -> None:
    """A one-sd shift on 500 per group is a red flag; a 0.15 sd chance-size gap on 30 per group is not."""
    rng = np.random.default_rng(2)
    big = _simple(n_t=500, n_c=500, x_t=50, x_c=50)
    big["history"] = np.r_[rng.normal(1, 1, 500), rng.normal(0, 1, 500)]
    small = _simple(n_t=30, n_c=30, x_t=3, x_c=3).assign(campaign_id="K2")
    small["history"] = np.r_[np.full(15, 0.15), np.zeros(15), np.full(15, 1.0), np.full(15, -1.0)] + \
        np.r_[np.zeros(30), np.zeros(30)]
    setup = mon.prepare(pd.concat([big, small], ignore_index=True), as_of="2025-06-30")
    table = mon.balance(setup, mon.balance_covariates(setup, ["history"])).set_index("campaign_id")
    assert table.loc["K1", "red_flag"] and not table.loc["K2", "red_flag"]
    assert "RED FLAG" in mon.balance_sentence(table.reset_index(), setup)
    with pytest.raises(InputError, match="balance_columns"):
        mon.balance_covariates(setup, ["nope"])


def test_feedback_counts_controls_once_per_discount_level() -> None:
    frame = _simple(n_t=20, n_c=10, x_t=4, x_c=1, arms=("a", "b"))
    frame["discount_pct"] = np.where(frame["arm"] == "a", 10.0, np.where(frame["arm"] == "b", 20.0, 0.0))
    campaigns = pd.DataFrame({"campaign_id": ["K1"], "type": ["retention"], "start_date": [pd.Timestamp("2025-03-03")]})
    table = mon.feedback(mon.prepare(frame, as_of="2025-06-30", campaigns=campaigns))
    assert table["discount_pct"].tolist() == [10.0, 20.0]
    assert table["n_control"].tolist() == [10, 10] and table["n_treated"].tolist() == [20, 20]
    assert (table["segment"] == mon.ANY_SEGMENT).all() and (table["campaign_type"] == "retention").all()


def test_write_tables_database_and_parquet(tmp_path) -> None:
    con = duckdb.connect()
    frame = pd.DataFrame({"a": [1, 2], "b": pd.Series(["x", None], dtype=object)})
    paths = mon.write_tables(con, tmp_path, {"monitoring_feedback": frame, "monitoring_trend": pd.DataFrame()})
    assert [p.name for p in paths] == ["feedback_priors.parquet"]
    assert con.execute("SELECT COUNT(*) FROM monitoring_feedback").fetchone()[0] == 2
    con.close()


def test_arm_headline_reads_like_a_slide() -> None:
    """The client table: counts, rates, lift and extra revenue with their intervals in words, Holm p and decision."""
    from cvm.monitoring import arm_headline

    arms = pd.DataFrame({"campaign_id": ["c"], "arm": ["a"], "n_treated": [1200], "n_control": [300],
                         "conversion_rate_treated": [0.05], "conversion_rate_control": [0.04],
                         "conversion_lift_abs": [0.01], "conversion_lift_abs_low": [-0.002],
                         "conversion_lift_abs_high": [0.022], "incremental_revenue": [1500.0],
                         "incremental_revenue_low": [float("nan")], "incremental_revenue_high": [3100.0],
                         "p_value_adjusted": [0.11], "decision": ["continue"]})
    row = arm_headline(arms).iloc[0]
    assert row["treated / control"] == "1,200 / 300"
    assert row["lift, points (95% CI)"] == "+1.00 [-0.20, +2.20]"
    assert row["extra revenue (95% CI)"] == "+1,500 [–, +3,100]"


def test_srm_and_overview_equal_simple_definitions_on_random_contacts() -> None:
    """The grouped counts of `srm` and `overview` equal per-campaign counting on random campaigns and arms (one arm,
    several arms, a campaign without treated rows, a control share taken from the campaigns table)."""
    rng = np.random.default_rng(7)
    n = 3000
    campaign = rng.choice(["K1", "K2", "K3", "K4"], n)
    group = np.where(rng.random(n) < 0.3, "control", "treatment")
    group[campaign == "K4"] = "control"
    arm = np.where(campaign == "K2", "solo", rng.choice(["b", "a", "c"], n))
    frame = pd.DataFrame({"customer_id": [f"C{i}" for i in range(n)], "campaign_id": campaign, "group": group,
                          "arm": np.where(group == "control", "control", arm), "converted": rng.random(n) < 0.2,
                          "contact_date": pd.Timestamp("2025-03-03"), "channel": "email"})
    frame["revenue"] = np.where(frame["converted"], rng.gamma(2.0, 30.0, n), 0.0)
    campaigns = pd.DataFrame({"campaign_id": ["K3"], "control_share": [0.25]})
    setup = mon.prepare(frame, as_of="2025-06-30", campaigns=campaigns)
    srm, over = mon.srm(setup), mon.overview(setup).set_index("campaign_id")
    for row in srm.itertuples():
        part = setup.contacts[setup.contacts["campaign_id"] == row.campaign_id]
        treated = part[part["group"] == "treatment"]
        assert (row.n_treated, row.n_control) == (len(treated), len(part) - len(treated))
        plan = row.control_share_planned
        counts = part["group"].value_counts().reindex(["control", "treatment"], fill_value=0)
        expected = mon.ex.srm_check(counts, {"control": plan, "treatment": 1 - plan})
        assert row.srm_p_value == pytest.approx(expected.p_value, rel=1e-12)
        arms = sorted(treated["arm"].unique())
        if len(arms) > 1:
            cells = part["arm"].where(part["group"] == "treatment", "__control__").value_counts()
            shares = {"__control__": plan, **{a: (1 - plan) / len(arms) for a in arms}}
            assert row.srm_arms_p_value == pytest.approx(mon.ex.srm_check(cells, shares).p_value, rel=1e-12)
        else:
            assert np.isnan(row.srm_arms_p_value)
        got = over.loc[row.campaign_id]
        assert (got["n_treated"], got["n_control"]) == (len(treated), len(part) - len(treated))
        assert got["arms"] == ", ".join(arms) if len(arms) else pd.isna(got["arms"])
        assert got["converted_treated"] == pytest.approx(treated["converted"].sum() if len(treated) else np.nan,
                                                         nan_ok=True)
        assert got["revenue_control"] == pytest.approx(part.loc[part["group"] == "control", "revenue"].sum())
    assert srm.set_index("campaign_id").loc["K3", "planned_from"] == "campaigns.control_share"
    assert pd.isna(over.loc["K4", "arms"]) and over.loc["K4", "n_treated"] == 0


def test_sequential_looks_plan_per_campaign_and_skips_one_sided_campaigns() -> None:
    """Hand-made: K1 (two arms of 40, control 20, one week) is looked at with its own plan (largest arm 40, control
    20: information fraction 1 at its only look); K2 has no control and K3 no treated rows, so both are skipped."""
    k1 = _simple(arms=("a", "b"))
    k2 = _contacts([(f"X{i}", "K2", "a", "treatment", i < 3, 0.0) for i in range(10)])
    k3 = _contacts([(f"Y{i}", "K3", "control", "control", i < 3, 0.0) for i in range(10)])
    setup = mon.prepare(pd.concat([k1, k2, k3], ignore_index=True), as_of="2025-03-31")
    looks = mon.sequential_looks(setup, "2025-03-31")
    assert list(looks["campaign_id"]) == ["K1", "K1"] and list(looks["arm"]) == ["a", "b"]
    assert list(looks["n_treated"]) == [40, 40] and list(looks["n_control"]) == [20, 20]
    assert looks["info_fraction"].to_numpy() == pytest.approx([1.0, 1.0])
