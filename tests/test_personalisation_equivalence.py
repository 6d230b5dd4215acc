"""The personalisation step's one-pass computations against their plain definitions, on the 5,000-customer demo and on
hand-made cases: behaviour at each contact date (one DuckDB query) against `features.customer_features` cut at the
day before each date, scoring variant by variant against scoring each variant's customers on their own, the demo's
true values against `cvm.demo.true_response` row by row, and the candidate grid against the product of its levels."""
from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from cvm import assignment, clv, uplift
from cvm import features as feat
from cvm import offers as off
from cvm import personalisation as pz
from cvm import policy as pol
from cvm.errors import InputError

AS_OF = pd.Timestamp("2026-06-30")


def _reference_behaviour(con: duckdb.DuckDBPyConnection, pairs: pd.DataFrame, fit: clv.BGNBDFit) -> pd.DataFrame:
    """The definition: customer_features with calibration_end = the day before each date (as_of from as_of on), then
    `pz.behaviour`; pairs whose customer has no transaction by then are left out."""
    parts = []
    for day in sorted(pairs["at"].unique()):
        day = pd.Timestamp(day)
        cal = None if day >= AS_OF else (day - pd.Timedelta(days=1)).date().isoformat()
        f = feat.customer_features(con, AS_OF.date(), frequency_basis="days", time_unit="W", calibration_end=cal)
        parts.append(pd.concat([f[["customer_id"]].assign(at=day), pz.behaviour(f, fit, 14)], axis=1))
    return pd.concat(parts).merge(pairs.drop_duplicates(), on=["customer_id", "at"])


def _compare(new: pd.DataFrame, ref: pd.DataFrame) -> None:
    keys = ["customer_id", "at"]
    pd.testing.assert_frame_equal(new.sort_values(keys).reset_index(drop=True),
                                  ref.sort_values(keys).reset_index(drop=True)[list(new.columns)],
                                  check_exact=False, rtol=1e-12, atol=0)


@pytest.fixture(scope="module")
def demo_con(demo_dir: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for table in ("transactions", "contacts"):
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM read_parquet('{demo_dir / (table + '.parquet')}')")
    return con


def test_behaviour_at_every_contact_equals_customer_features_per_date(demo_con: duckdb.DuckDBPyConnection):
    """Known truth: the per-date definition. Every contact of the demo's history (orders returned after a contact
    date included), plus pairs on as_of, after it, and before a customer's first transaction."""
    f = feat.customer_features(demo_con, AS_OF.date(), frequency_basis="days", time_unit="W")
    fit = clv.fit_bgnbd(*(f.loc[f["x"].notna() & (f["T"] > 0), c] for c in ("x", "t_x", "T")))
    history = demo_con.table("contacts").df()
    early = f["first_purchase"].quantile(0.05).normalize()   # most of these customers have not bought yet
    pairs = pd.concat([history[["customer_id", "contact_date"]].rename(columns={"contact_date": "at"}),
                       pd.DataFrame({"customer_id": f["customer_id"].iloc[:50],
                                     "at": np.repeat([AS_OF, AS_OF + pd.Timedelta(days=7)], 25)}),
                       pd.DataFrame({"customer_id": f["customer_id"].iloc[:200], "at": early})])
    pairs["at"] = pd.to_datetime(pairs["at"]).dt.normalize().astype("datetime64[us]")
    pairs = pairs.drop_duplicates().set_axis(np.arange(len(pairs.drop_duplicates()))[::-1] * 3)   # labels kept
    beh = pz.behaviour_at(demo_con, AS_OF, pairs, fit, 14)
    assert beh.index.is_unique and (np.diff(pairs.index.get_indexer(beh.index)) > 0).all()   # the rows, in order
    new = pd.concat([pairs.loc[beh.index], beh], axis=1)
    ref = _reference_behaviour(demo_con, pairs, fit)
    assert len(new) == len(ref) > len(history) * 0.9
    assert 0 < (new["at"] == early).sum() < 200
    _compare(new, ref)


def test_behaviour_at_hand_made_returns_and_gaps():
    """Truth by hand, and the per-date definition. Customer A buys order o1 (100) on 1 Jun and o2 (50) on 3 Jun and
    returns 120 of o1 on 5 Jun: on 4 Jun 2 purchase days, 2 orders, 75 per order; on 6 Jun o1's net is -20, so one
    purchase order and 30 net per order, still 2 purchase days (5 Jun has only a return). B has only a return line; C
    a zero-value purchase; D buys after the contact date and is left out."""
    lines = pd.DataFrame({
        "customer_id": ["A", "A", "A", "A", "B", "C", "D"],
        "order_id": ["o1", "o1", "o2", "o1", "r1", "z1", "d1"],
        "order_date": pd.to_datetime(["2026-06-01", "2026-06-01", "2026-06-03", "2026-06-05", "2026-06-02",
                                      "2026-06-02", "2026-06-20"]),
        "amount": [60.0, 40.0, 50.0, -120.0, -30.0, 0.0, 10.0]})
    con = duckdb.connect()
    con.register("transactions", lines)
    fit = clv.BGNBDFit(r=0.5, alpha=5.0, a=0.8, b=2.5, log_likelihood=0.0, se={}, converged=True, n_customers=4,
                       iterations=0)
    pairs = pd.DataFrame({"customer_id": ["A", "A", "B", "C", "D"],
                          "at": pd.to_datetime(["2026-06-05", "2026-06-07", "2026-06-10", "2026-06-10",
                                                "2026-06-10"]).astype("datetime64[us]")})
    beh = pz.behaviour_at(con, AS_OF, pairs, fit, 14)
    new = pd.concat([pairs.loc[beh.index], beh], axis=1).set_index(["customer_id", "at"])
    a4, a6 = new.loc[("A", pd.Timestamp("2026-06-05"))], new.loc[("A", pd.Timestamp("2026-06-07"))]
    assert (a4["purchase_days"], a4["avg_order_value"], a4["days_since_last"], a4["days_since_first"]) == (2, 75, 1, 3)
    assert (a6["purchase_days"], a6["avg_order_value"], a6["days_since_last"]) == (2, 30, 3)
    assert np.isnan(new.loc[("B", pd.Timestamp("2026-06-10")), "avg_order_value"])
    assert new.loc[("C", pd.Timestamp("2026-06-10")), "purchase_days"] == 1
    assert "D" not in new.index.get_level_values("customer_id")
    _compare(new.reset_index(), _reference_behaviour(con, pairs, fit))


@pytest.fixture(scope="module")
def demo_setup(demo_dir: Path, demo_con: duckdb.DuckDBPyConnection) -> pz.Setup:
    """A Setup on the demo: the customers file with behaviour at as_of and stand-ins for the knowledge step's columns
    the offers' eligibility reads (segments in turn, clv = order value x purchase days)."""
    f = feat.customer_features(demo_con, AS_OF.date(), frequency_basis="days", time_unit="W")
    fit = clv.fit_bgnbd(*(f.loc[f["x"].notna() & (f["T"] > 0), c] for c in ("x", "t_x", "T")))
    now = pd.concat([f[["customer_id", "last_purchase", "recency_days", "n_orders"]], pz.behaviour(f, fit, 14)], axis=1)
    customers = pd.read_csv(demo_dir / "customers.csv").merge(now, on="customer_id")
    segments = ["Champions", "Loyal", "Potential Loyalist", "Need Attention", "At Risk", "Can't Lose Them",
                "About to Sleep", "Hibernating", "Lost"]
    customers["rfm_segment"] = np.array(segments)[np.arange(len(customers)) % len(segments)]
    customers["expected_order_value"] = customers["avg_order_value"].fillna(40.0).clip(lower=1.0)
    customers["clv"] = customers["expected_order_value"] * customers["purchase_days"]
    rules = Path(pz.__file__).with_name("rules")
    offers = off.load_offers(rules / "offers_demo.yaml")
    policy = pol.load_policy(rules / "contact_policy_demo.yaml")
    return pz.Setup(AS_OF, customers, pd.DataFrame(), offers, policy, demo_con.table("contacts").df(),
                    pd.read_csv(demo_dir / "campaigns.csv"), pz.launch_dates(AS_OF, "", 2), fit, 14)


def test_score_equals_scoring_each_variant_on_its_own(demo_setup: pz.Setup, demo_con: duckdb.DuckDBPyConnection):
    """Known truth: the plain definition of `score`, each (offer, channel, discount) variant scoring its own
    customers (`uplift.score_offer`, purchase baseline), rows in variant order; model and prior variants both."""
    est = pz.learn(demo_setup, demo_con, "residual", seed=1)
    assert isinstance(est.model, pz.ResidualUplift)
    cands, _ = pz.candidate_contacts(demo_setup)
    scored = pz.score(demo_setup, est, cands)
    cust = demo_setup.customers.set_index("customer_id")
    parts = []
    for v in cands[["offer_id", "campaign_type", "channel", "discount_pct"]].drop_duplicates().itertuples():
        rows = cands[(cands["offer_id"] == v.offer_id) & (cands["channel"] == v.channel)
                     & (cands["discount_pct"] == v.discount_pct)]
        who = cust.loc[rows["customer_id"]].reset_index()
        s = uplift.score_offer(who, {"type": v.campaign_type, "channel": v.channel, "discount_pct": v.discount_pct},
                               est.model, est.priors, "rfm_segment", "expected_order_value")
        s = pz._with_baseline(s, who)
        parts.append(rows.reset_index(drop=True).join(s.drop(columns="source")).assign(source=s["source"]))
    ref = pd.concat(parts, ignore_index=True)
    assert set(ref["source"]) == {"model", "prior"}
    pd.testing.assert_frame_equal(scored.drop(columns="value"), ref)
    with_rows = pz.scored_candidates(demo_setup, est)[0]   # the policy's customer rows instead of a lookup
    pd.testing.assert_frame_equal(with_rows, scored, check_exact=True)


def test_residual_learner_scores_with_the_purchase_baseline(demo_setup: pz.Setup,
                                                             demo_con: duckdb.DuckDBPyConnection):
    """The residual learner's P(convert | not contacted) is the purchase model's; with baseline "uplift_model" the
    two-model scores instead. The row cap draws a seeded subset (None and a cap above the rows fit the same)."""
    est = pz.learn(demo_setup, demo_con, "residual", seed=1)
    who = demo_setup.customers.head(200)
    pred = est.model.predict(who, {"type": "retention", "channel": "email", "discount_pct": 10.0})
    np.testing.assert_array_equal(pred["p_control"], pz.baseline_rate(who))
    np.testing.assert_allclose(pred["uplift"], pred["p_treated"] - pred["p_control"])
    two = pz.learn(demo_setup, demo_con, "residual", seed=1, baseline="uplift_model")
    assert isinstance(two.model, uplift.UpliftModel)
    h = est.history
    n = int((h["group"] == "treatment").sum())
    offer = {"type": "retention", "channel": "email", "discount_pct": 10.0}
    full = pz.fit_residual_uplift(h, seed=3, max_rows=None).uplift(who, offer)
    np.testing.assert_array_equal(pz.fit_residual_uplift(h, seed=3, max_rows=n).uplift(who, offer), full)
    half = [pz.fit_residual_uplift(h, seed=3, max_rows=n // 2).uplift(who, offer) for _ in range(2)]
    np.testing.assert_array_equal(half[0], half[1])
    assert not np.array_equal(half[0], full)
    with pytest.raises(InputError, match="baseline"):
        pz.learn(demo_setup, demo_con, "residual", baseline="control_group")


@pytest.mark.parametrize(("method", "cap"), [("residual", None), ("residual", 2_000), ("two_model", None)])
def test_validate_equals_refitting_without_each_campaign(demo_setup: pz.Setup, demo_con: duckdb.DuckDBPyConnection,
                                                         monkeypatch: pytest.MonkeyPatch, method: str, cap: int | None):
    """Each held-out campaign is scored by the model refitted on the whole history without it (the residual learner
    on at most VALIDATION_FIT_ROWS treated rows, the same seeded subset): the lean copies the refits read change
    nothing."""
    est = pz.learn(demo_setup, demo_con, method, seed=5)
    monkeypatch.setattr(pz, "VALIDATION_FIT_ROWS", cap)
    v = pz.validate(est, method, 3, seed=5)
    h = est.history
    for row in v.table.itertuples():
        test, train = h[h["campaign_id"] == row.campaign_id], h[h["campaign_id"] != row.campaign_id]
        pred = (pz.fit_residual_uplift(train, seed=5, max_rows=cap).predict(test) if method == "residual" else
                uplift.fit_uplift_model(train, pz.MODEL_FEATURES, value_col=None, method=method, seed=5,
                                        monotone=pz.MONOTONE).predict(test))
        y, t = test["converted"].astype(int), (test["group"] == "treatment").astype(int)
        assert row.predicted_uplift == pytest.approx(float(pred["uplift"].mean()), rel=1e-12)
        assert row.qini == pytest.approx(uplift.qini_coefficient(y, t, pred["uplift"]), rel=1e-12)
    n_train = int(((h["group"] == "treatment") & (h["campaign_id"] != v.table["campaign_id"].iloc[0])).sum())
    assert cap is None or n_train > cap


def test_true_values_equal_true_response_row_by_row(demo_dir: Path, demo_setup: pz.Setup):
    """Known truth: `cvm.demo.true_response` for each row on its own, the margin less the contact cost; a customer
    without truth earns 0 and pays the contact."""
    from cvm import demo

    truth = demo.load_truth(demo_dir)
    cands, _ = pz.candidate_contacts(demo_setup)
    rows = cands.sample(300, random_state=0)
    rows.loc[rows.index[0], "customer_id"] = "no-such-customer"
    got = pz.true_values(rows, truth)
    ct = truth.customer_truth.set_index("customer_id")
    for i, r in rows.iterrows():
        if r["customer_id"] not in ct.index:
            assert got[i] == -r["cost"]
            continue
        t = demo.true_response(ct.loc[[r["customer_id"]]].reset_index(), r["campaign_type"], r["channel"],
                               r["discount_pct"], truth)
        want = uplift.incremental_margin(t["p_treated"], t["p_control"], t["expected_order_value"], r["margin_pct"],
                                         r["discount_pct"], 0.0)[0] - r["cost"]
        assert got[i] == pytest.approx(want, rel=1e-12, abs=1e-12)
    codes = assignment.solve_exact(rows.assign(value=1.0), assignment.Constraints()).codes
    pd.testing.assert_series_equal(pz.true_values(rows, truth, codes), got, check_exact=True)  # the oracle's path


def test_build_candidates_is_the_product_of_customers_channels_and_discounts():
    """Known truth: the grid as the product of its levels (customers outermost, discounts innermost), per offer and
    valid date, with the channel's contact cost."""
    offer = off.Offer("A", "Offer A", "retention", ("email", "sms"), (0.0, 10.0, 20.0), 40.0,
                      {"email": 0.02, "sms": 0.07}, {"tier": {"in": ["gold"]}})
    customers = pd.DataFrame({"customer_id": ["c1", "c2", "c3"], "tier": ["gold", "silver", "gold"]})
    dates = [pd.Timestamp("2026-07-07"), pd.Timestamp("2026-07-14")]
    got = off.build_candidates(customers, [offer], dates)
    ref = pd.concat([pd.MultiIndex.from_product([["c1", "c3"], offer.channels, offer.discount_levels],
                                                names=["customer_id", "channel", "discount_pct"]).to_frame(index=False)
                     .assign(offer_id="A", campaign_type="retention", contact_date=day)
                     for day in dates], ignore_index=True)
    ref["cost"] = ref["channel"].map(offer.cost_per_contact)
    ref["margin_pct"] = 40.0
    pd.testing.assert_frame_equal(got, ref[list(got.columns)])


def _reference_discount_table(scored: pd.DataFrame, segment_col: str, customers: pd.DataFrame) -> pd.DataFrame:
    """The definition: cheapest channel per (customer, offer, discount) by groupby idxmin, the segment by a merge."""
    first = scored[scored["contact_date"] == scored["contact_date"].min()]
    cheapest = first.loc[first.groupby(["customer_id", "offer_id", "discount_pct"])["cost"].idxmin()]
    if segment_col not in cheapest.columns:
        cheapest = cheapest.merge(customers[["customer_id", segment_col]], on="customer_id", how="left")
    parts = [uplift.segment_discounts(rows, float(rows["margin_pct"].iloc[0]), rows["cost"].to_numpy(),
                                      segment_col=segment_col).assign(offer_id=offer_id)
             for offer_id, rows in cheapest.groupby("offer_id")]
    out = pd.concat(parts, ignore_index=True)
    return out[["offer_id", segment_col, "discount_pct", "n", "p_control", "p_treated", "uplift", "margin", "best"]]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_discount_table_equals_groupby_idxmin_and_merge(seed: int):
    """Fuzzed: shuffled rows, tied costs, two dates, customers without a segment row, the segment in or out of the
    scored frame: the code-based table equals the groupby/merge definition."""
    rng = np.random.default_rng(seed)
    n = 3000
    ids = pd.array([f"C{i:04d}" for i in rng.integers(0, 400, n)], dtype="str")
    scored = pd.DataFrame({
        "customer_id": ids, "offer_id": pd.array(rng.choice(["OB", "OA", "OC"], n), dtype="str"),
        "discount_pct": rng.choice([0.0, 10.0, 20.0], n), "cost": rng.choice([0.1, 0.5, 0.5, 2.0], n),
        "margin_pct": 0.4, "p_treated": rng.uniform(0, 1, n), "p_control": rng.uniform(0, 0.5, n),
        "expected_order_value": rng.lognormal(3, 1, n),
        "contact_date": AS_OF + pd.to_timedelta(rng.integers(1, 3, n) * 7, "D")})
    scored["margin_pct"] = scored["offer_id"].map({"OA": 0.4, "OB": 0.3, "OC": 0.5})
    customers = pd.DataFrame({"customer_id": pd.array([f"C{i:04d}" for i in rng.permutation(380)], dtype="str"),
                              "rfm_segment": pd.array(rng.choice(["a", "b", "c"], 380), dtype="str")})
    new = pz.discount_table(scored, "rfm_segment", customers)
    pd.testing.assert_frame_equal(new, _reference_discount_table(scored, "rfm_segment", customers), check_exact=True)
    with_seg = scored.merge(customers, on="customer_id", how="left")
    pd.testing.assert_frame_equal(pz.discount_table(with_seg, "rfm_segment"),
                                  _reference_discount_table(with_seg, "rfm_segment", customers), check_exact=True)


@pytest.mark.parametrize("seed", range(6))
def test_write_csv_equals_pandas_to_csv_byte_for_byte(tmp_path: Path, seed: int):
    """Fuzzed: text with and without characters that need quotes (pandas' fallback), missing text and floats, floats
    pandas prints in exponent form: the file equals `to_csv(index=False)` byte for byte."""
    rng = np.random.default_rng(seed)
    n = 200
    values = np.array(["a", "C0001", "", "é", "b,c", 'q"x', "line\nbreak", "x\r"], dtype=object)
    pick = values[: 4 if seed % 2 else len(values)]
    frame = pd.DataFrame({"t": pd.Series(rng.choice(pick, n), dtype="str"),
                          "u": pd.Series(rng.choice(["k", None], n), dtype="str"),
                          "discount": rng.choice([10.0, 0.1, 12.5, np.nan, 1e-05, 1e20, 0.1 + 0.2, -3.0], n)})
    frame.to_csv(tmp_path / "pandas.csv", index=False)
    pz._write_csv(frame, tmp_path / "fast.csv")
    assert (tmp_path / "fast.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()


def test_training_history_keeps_each_contact_with_its_own_behaviour():
    """Hand-made: a contact of a campaign missing from the campaigns table (left out first) and one of a customer
    without any purchase (left out by behaviour_at); the others keep their own features: A 1 purchase day of 100, C
    1 of 10."""
    con = duckdb.connect()
    con.register("transactions", pd.DataFrame({
        "customer_id": ["A", "C"], "order_id": ["o1", "o2"],
        "order_date": pd.to_datetime(["2026-06-01", "2026-06-02"]), "amount": [100.0, 10.0]}))
    fit = clv.BGNBDFit(r=0.5, alpha=5.0, a=0.8, b=2.5, log_likelihood=0.0, se={}, converged=True, n_customers=2,
                       iterations=0)
    history = pd.DataFrame({"customer_id": ["X", "B", "A", "C"], "campaign_id": ["gone", "k1", "k1", "k1"],
                            "group": ["treatment", "treatment", "treatment", "control"],
                            "contact_date": pd.to_datetime(["2026-06-10"] * 4), "converted": [1, 0, 1, 0],
                            "discount_pct": [5.0, 10.0, 10.0, 0.0]})
    campaigns = pd.DataFrame({"campaign_id": ["k1"], "type": ["retention"], "channel": ["email"]})
    setup = pz.Setup(AS_OF, pd.DataFrame(), pd.DataFrame(), [], None, history, campaigns, [], fit, 14)
    out = pz.training_history(setup, con, seed=0)
    assert out["customer_id"].tolist() == ["A", "C"]
    assert out["avg_order_value"].tolist() == [100.0, 10.0] and out["purchase_days"].tolist() == [1, 1]
