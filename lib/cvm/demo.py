"""The synthetic demo retailer: contract tables plus the ground truth that generated them.

The process (parameters in `rules/demo.yaml`, copied into `truth/truth.json`):

* Customers make their first purchase at a time spread over the `years` before `as_of`, with growing acquisitions.
* Purchases follow the BG/NBD story exactly (Fader, Hardie & Lee 2005), time unit WEEKS: lambda ~ Gamma(r, alpha),
  p ~ Beta(a, b); while active a customer buys at Poisson rate lambda and after each repeat purchase drops out with
  probability p. Purchases on the same calendar day are merged into one order (at most one order per customer per
  day; the number merged is recorded in truth.json), so frequency = number of distinct purchase DAYS minus one.
* Order value follows Gamma-Gamma (Fader & Hardie note 025): nu ~ Gamma(q, gamma), order value ~ Gamma(p, nu).
  The truth applies to the gross order value (sum of the positive lines of one order_id); it is split over 1-4 lines.
* Returns are separate rows (order_id "R" + original order_id, negative quantity and amount, 3-30 days later, only
  when before as_of). Anomalies (bulk buyers, extreme returners, test accounts) are listed in truth.json and must be
  excluded, with returns, from BTYD truth checks. Every transaction is strictly before `as_of` (midnight).
* Campaign response: p_control = 1 - exp(-lambda * 14 days) for a customer alive at the contact date, else 0;
  p_treated = clip(p_control + uplift, 0, 1) with uplift = table[segment][type] x discount response x channel factor
  (negative uplifts use an annoyance factor instead). Campaign outcomes live only in contacts.parquet: campaign
  conversions are NOT written to transactions.parquet, so the BTYD truth is untouched.

Every random draw comes from `numpy.random.SeedSequence(seed)`: the same seed gives byte-identical files. Customers are
generated in fixed-size chunks, so memory stays bounded up to millions of customers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from cvm.contract import CAMPAIGN_TYPES, CHANNELS
from cvm.errors import InputError

RULES_PATH = Path(__file__).parent / "rules" / "demo.yaml"
SEGMENTS = ("sure_things", "persuadables", "lost_causes", "do_not_disturb")
SALES_CHANNELS = ("online", "store", "app")
CHUNK = 200_000  # customers generated per chunk (fixed: part of the seed contract)
DAY_US = 86_400_000_000
WEEK_DAYS = 7.0
MAX_CUSTOMERS = 9_999_999  # customer ids have seven digits


@dataclass(frozen=True)
class DemoTruth:
    """What generated the demo data: population parameters, per-customer truth, response rules and anomalies."""

    seed: int
    as_of: pd.Timestamp
    n_customers: int
    bgnbd: dict[str, float]
    gamma_gamma: dict[str, float]
    segments: dict[str, float]
    response: dict[str, Any]
    anomalies: dict[str, list[str]]
    customer_truth: pd.DataFrame
    uplift_truth: pd.DataFrame
    counting: dict[str, Any] = field(default_factory=dict)


def load_rules(path: Path = RULES_PATH) -> dict[str, Any]:
    """The generator's settings (`rules/demo.yaml` unless another file is given)."""
    with Path(path).open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


# ---------------------------------------------------------------------------------------------------- small helpers
def _ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """prefix + zero-padded numbers, built in Arrow (no Python string per row)."""
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers, pa.int64()), pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _choice(rng: np.random.Generator, shares: dict[str, float] | list[float], size: int) -> np.ndarray:
    """Indices drawn with the given shares (normalised)."""
    prob = np.asarray(list(shares.values()) if isinstance(shares, dict) else shares, dtype=float)
    return np.searchsorted(np.cumsum(prob / prob.sum()), rng.random(size), side="right").clip(0, len(prob) - 1)


def _dates(day_us: np.ndarray) -> pa.Array:
    return pa.array(day_us, pa.int64()).cast(pa.timestamp("us"))


def _arms(campaign: dict[str, Any]) -> list[tuple[str, float]]:
    """(arm name, discount %) of each treatment arm of a campaign rule."""
    out = []
    for arm in campaign["arms"]:
        if isinstance(arm, dict):
            out.append((str(arm["name"]), float(arm["discount"])))
        else:
            out.append((f"{int(arm)}pct_{campaign['channel']}", float(arm)))
    return out


def campaigns_frame(rules: dict[str, Any], as_of: pd.Timestamp) -> pd.DataFrame:
    """The past campaigns (contract table `campaigns`); campaign discount_pct is the first arm's discount."""
    window = pd.Timedelta(days=rules["response"]["window_days"])
    rows = []
    for k, c in enumerate(rules["campaigns"], start=1):
        start = as_of - pd.Timedelta(days=int(c["days_before"]))
        rows.append({"campaign_id": f"CMP-{start.year}-{k:02d}", "type": c["type"], "start_date": start,
                     "name": c["name"], "channel": c["channel"], "end_date": start + window,
                     "discount_pct": _arms(c)[0][1], "cost_per_contact": rules["cost_per_contact"][c["channel"]],
                     "margin_pct": float(c.get("margin_pct", rules["margin_pct"]))})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------- response model
def _discount_response(discount: np.ndarray, spec: dict[str, float]) -> np.ndarray:
    """Increasing, concave response to the discount, 1 at the reference discount."""
    def f(d: np.ndarray | float) -> np.ndarray:
        return spec["floor"] + 1.0 - np.exp(-np.asarray(d, dtype=float) / spec["scale_pct"])
    return f(discount) / f(spec["reference_pct"])


def _uplift(segment: np.ndarray, alive: np.ndarray, ctype: np.ndarray, channel: np.ndarray, discount: np.ndarray,
            response: dict[str, Any]) -> np.ndarray:
    """Uplift before clipping; segment, ctype and channel are integer codes (SEGMENTS, CAMPAIGN_TYPES, CHANNELS)."""
    table = np.array([[response["uplift"][s][t] for t in CAMPAIGN_TYPES] for s in SEGMENTS], dtype=float)
    dead = np.array([response["dead_uplift"][t] for t in CAMPAIGN_TYPES], dtype=float)
    factor = np.array([response["channel_factor"][c] for c in CHANNELS], dtype=float)
    annoy = np.array([response["annoyance"][c] for c in CHANNELS], dtype=float)
    boost = _discount_response(discount, response["discount"]) * factor[channel]
    base = table[segment, ctype]
    return np.where(alive, np.where(base >= 0, base * boost, base * annoy[channel]), dead[ctype] * boost)


def _probabilities(lam: np.ndarray, segment: np.ndarray, alive: np.ndarray, ctype: np.ndarray, channel: np.ndarray,
                   discount: np.ndarray, response: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """p_control (first purchase within the window while alive) and p_treated = clip(p_control + uplift)."""
    p_control = np.where(alive, -np.expm1(-lam * response["window_days"] / WEEK_DAYS), 0.0)
    uplift = _uplift(segment, alive, ctype, channel, discount, response)
    return p_control, np.clip(p_control + uplift, 0.0, 1.0)


def _draw_outcomes(rng: np.random.Generator, p_control: np.ndarray, p_treated: np.ndarray, treated: np.ndarray,
                   channel: np.ndarray, discount: np.ndarray, nu: np.ndarray, response: dict[str, Any],
                   gg_p: float) -> dict[str, np.ndarray]:
    """delivered / opened / clicked / converted / revenue; control rows are not contacted (engagement False)."""
    n = len(p_control)
    u = rng.random((4, n))
    value = rng.gamma(gg_p, 1.0 / nu)
    deliv = np.array([response["delivered"][c] for c in CHANNELS])[channel]
    opened_p = np.array([response["opened"][c] for c in CHANNELS])[channel]
    click_p = np.array([response["clicked"][c] for c in CHANNELS])[channel]
    converted = u[0] < np.where(treated, p_treated, p_control)
    delivered = treated & (u[1] < deliv)
    opened = delivered & (u[2] < np.minimum(1.0, opened_p * np.where(converted, response["converted_open_boost"], 1)))
    clicked = opened & (u[3] < np.minimum(1.0, click_p * np.where(converted, response["converted_click_boost"], 1)))
    price = value * (1.0 - np.where(treated, discount, 0.0) / 100.0)
    return {"delivered": delivered, "opened": opened, "clicked": clicked, "converted": converted,
            "revenue": np.where(converted, np.round(price, 2), 0.0)}


# ---------------------------------------------------------------------------------------------------- one chunk
@dataclass
class _Chunk:
    customers: pd.DataFrame
    loyalty: pd.DataFrame
    transactions: pa.Table
    contacts: pa.Table
    truth: pa.Table
    n_orders: int
    merged: int


def _segments(lam: np.ndarray, nu: np.ndarray, rules: dict[str, Any]) -> np.ndarray:
    seg, p = rules["segments"], rules["gamma_gamma"]["p"]
    code = np.full(len(lam), SEGMENTS.index("persuadables"), dtype=np.int8)
    code[(p / nu >= seg["do_not_disturb_min_order_value"])] = SEGMENTS.index("do_not_disturb")
    code[lam < seg["lost_causes_max_lam"]] = SEGMENTS.index("lost_causes")
    code[lam >= seg["sure_things_min_lam"]] = SEGMENTS.index("sure_things")
    return code


def _chunk(start: int, m: int, rng: np.random.Generator, rules: dict[str, Any], as_of_us: int, years: float,
           bulk: np.ndarray, returners: np.ndarray, campaigns: pd.DataFrame, order_offset: int) -> _Chunk:
    """Customers start..start+m: their attributes, purchase history, loyalty, campaign contacts and truth."""
    bg, gg = rules["bgnbd"], rules["gamma_gamma"]
    gidx = np.arange(start, start + m)
    as_of_day = as_of_us // DAY_US
    # --- acquisition time (days since epoch, continuous), growing over the years
    g = rules["acquisition"]["growth_per_year"]
    since_start = np.log1p(rng.random(m) * np.expm1(g * years)) / g
    t0 = as_of_day - (years - since_start) * 365.25
    age_weeks = (as_of_day - t0) / WEEK_DAYS
    # --- BG/NBD truth
    lam = rng.gamma(bg["r"], 1.0 / bg["alpha"], m)
    p_drop = np.clip(rng.beta(bg["a"], bg["b"], m), 1e-12, 1.0)
    nu = rng.gamma(gg["q"], 1.0 / gg["gamma"], m)
    n_poisson = rng.poisson(lam * age_weeks)
    j_drop = rng.geometric(p_drop)
    x = np.minimum(n_poisson, j_drop)
    alive = n_poisson < j_drop
    # first x of the n_poisson sorted uniforms on (0, T): S_k / S_{n+1} with S partial sums of Exp(1)
    owner_rep = np.repeat(np.arange(m), x)
    gaps = rng.exponential(size=int(x.sum()))
    csum = np.cumsum(gaps)
    first = np.cumsum(x) - x
    has = x > 0
    base = np.zeros(m)
    base[has] = csum[first[has]] - gaps[first[has]]
    within = csum - base[owner_rep]
    last = np.zeros(m)
    last[has] = within[first[has] + x[has] - 1]
    rest = rng.gamma(n_poisson - x + 1.0)
    rep_days = t0[owner_rep] + WEEK_DAYS * age_weeks[owner_rep] * within / (last + rest)[owner_rep]
    # --- purchase occasions: first purchase then repeats, per customer, merged per calendar day
    counts = 1 + x
    starts = np.cumsum(counts) - counts
    occ = np.empty(int(counts.sum()))
    is_first = np.zeros(len(occ), dtype=bool)
    is_first[starts] = True
    occ[is_first] = t0
    occ[~is_first] = rep_days
    owner = np.repeat(np.arange(m), counts)
    day = np.minimum(np.floor(occ).astype(np.int64), as_of_day - 1)
    keep = np.ones(len(day), dtype=bool)
    keep[1:] = (owner[1:] != owner[:-1]) | (day[1:] != day[:-1])
    merged = int((~keep).sum())
    owner, day = owner[keep], day[keep]
    n_orders_c = np.bincount(owner, minlength=m)
    ostarts = np.cumsum(n_orders_c) - n_orders_c
    hour = np.where(rng.random(len(day)) < 0.5, rng.normal(12.5, 2.5, len(day)), rng.normal(19.0, 2.0, len(day)))
    ts = day * DAY_US + (np.clip(hour, 7.0, 22.99) * 3_600_000_000).astype(np.int64)
    first_ts = ts[ostarts]
    last_ts = ts[ostarts + n_orders_c - 1]
    dropout_ts = np.where(alive, np.iinfo(np.int64).max, last_ts)
    # --- customer attributes
    acq = rules["acquisition"]
    acq_names = list(acq["channels"])
    acq_ch = _choice(rng, {k: v["share"] for k, v in acq["channels"].items()}, m)
    mean_cost = np.array([acq["channels"][k]["cost"] for k in acq_names])[acq_ch]
    cost = np.round(mean_cost * rng.lognormal(-acq["cost_cv"] ** 2 / 2, acq["cost_cv"], m), 2)
    regions = list(rules["regions"])
    region = _choice(rng, rules["regions"], m)
    home_store = region * rules["stores_per_region"] + rng.integers(0, rules["stores_per_region"], m)
    genders = list(rules["genders"])
    gender = _choice(rng, rules["genders"], m)
    by = rules["birth_year"]
    birth = np.clip(np.round(rng.normal(by["mean"], by["sd"], m)), by["min"], by["max"]).astype(np.int64)
    consent = rng.random((len(CHANNELS), m)) < np.array([rules["consent"][c] for c in CHANNELS])[:, None]
    same_day = rng.random(m) < acq["signup_same_day"]
    signup_day = np.floor(t0 - np.where(same_day, 0.0, rng.exponential(acq["signup_mean_days_before"], m)))
    preferred = _choice(rng, rules["sales_channels"], m)
    cid = _ids("C", gidx + 1, 7)
    customers = pd.DataFrame({
        "customer_id": cid.to_pandas(),
        "signup_date": pd.to_datetime(signup_day.astype(np.int64), unit="D").strftime("%Y-%m-%d"),
        "acquisition_channel": np.array(acq_names)[acq_ch], "acquisition_cost": cost,
        "region": np.array(regions)[region], "birth_year": birth, "gender": np.array(genders)[gender],
        **{f"consent_{c}": consent[k] for k, c in enumerate(CHANNELS)},
        "email": pc.binary_join_element_wise(pc.utf8_lower(cid), "@example.com", "").to_pandas(),
        "phone": _ids("+44 7700 9", (gidx * 7919) % 100_000, 5).to_pandas(),
    })
    # --- orders and lines
    n_ord = len(ts)
    o_owner = owner
    value = rng.gamma(gg["p"], 1.0 / nu[o_owner])
    promo = rules["promo"]
    promo_rate = np.where(rng.random(n_ord) < promo["share"],
                          np.array(promo["rates"])[rng.integers(0, len(promo["rates"]), n_ord)], 0.0)
    sales = np.where(rng.random(n_ord) < rules["channel_loyalty"], preferred[o_owner],
                     rng.integers(0, len(SALES_CHANNELS), n_ord))
    n_lines = 1 + _choice(rng, rules["lines_per_order"], n_ord)
    l_order = np.repeat(np.arange(n_ord), n_lines)
    lstarts = np.cumsum(n_lines) - n_lines
    cats = rules["categories"]
    cat_names = list(cats)
    n_l = len(l_order)
    cat = _choice(rng, {k: v["share"] for k, v in cats.items()}, n_l)
    weight = np.array([cats[k]["price"] for k in cat_names])[cat] * rng.gamma(2.0, 1.0, n_l)
    amount = np.round(value[l_order] * weight / np.add.reduceat(weight, lstarts)[l_order], 2)
    quantity = (1 + _choice(rng, rules["quantity"], n_l)).astype(float)
    n_products = np.array([cats[k]["products"] for k in cat_names])
    product = cat * 1000 + np.floor(n_products[cat] * rng.random(n_l) ** 2.5).astype(np.int64)
    l_owner = o_owner[l_order]
    is_bulk = np.isin(gidx, bulk)[l_owner]
    factor = rng.integers(rules["anomalies"]["bulk_factor"][0], rules["anomalies"]["bulk_factor"][1] + 1, n_l)
    quantity = np.where(is_bulk, quantity * factor, quantity)
    amount = np.where(is_bulk, np.round(amount * factor, 2), amount)
    rate = promo_rate[l_order]
    discount = np.round(amount * rate / (1.0 - rate), 2)
    # --- returns
    ret_p = np.array([cats[k]["return_rate"] for k in cat_names])[cat]
    ret_p = np.where(np.isin(gidx, returners)[l_owner], rules["anomalies"]["returner_rate"], ret_p)
    r_days = rng.uniform(rules["returns"]["min_days"], rules["returns"]["max_days"], n_l)
    r_ts = ts[l_order] + (r_days * DAY_US).astype(np.int64)
    returned = (rng.random(n_l) < ret_p) & (r_ts < as_of_us)
    # --- transactions table (sales then returns, sorted by customer and time)
    order_no = order_offset + 1 + l_order
    ri = np.flatnonzero(returned)
    all_owner = np.concatenate([l_owner, l_owner[ri]])
    all_ts = np.concatenate([ts[l_order], r_ts[ri]])
    sort = np.lexsort((np.arange(len(all_ts)), all_ts, all_owner))
    oid = pa.concat_arrays([_ids("O", order_no, 9), _ids("RO", order_no[ri], 9)])
    store_names = _ids("S", np.arange(1, len(regions) * rules["stores_per_region"] + 1), 3)
    l_sales = sales[l_order]
    store = pa.array(np.where(l_sales == SALES_CHANNELS.index("store"), home_store[l_owner], -1), pa.int64())
    store = store_names.take(pc.if_else(pc.equal(store, -1), pa.scalar(None, pa.int64()), store))
    tx = pa.table({
        "customer_id": cid.take(pa.array(all_owner)),
        "order_id": oid,
        "order_date": _dates(all_ts),
        "amount": np.concatenate([amount, -amount[ri]]),
        "quantity": np.concatenate([quantity, -quantity[ri]]),
        "product_id": _ids("SKU-", np.concatenate([product, product[ri]]), 5),
        "category": pa.array(np.array(cat_names)[np.concatenate([cat, cat[ri]])]),
        "channel": pa.array(np.array(SALES_CHANNELS)[np.concatenate([l_sales, l_sales[ri]])]),
        "discount": np.concatenate([discount, -discount[ri]]),
        "store_id": pa.concat_arrays([store, store.take(pa.array(ri))]),
    }).take(pa.array(sort))
    # --- loyalty (more engaged customers join more often)
    net = np.bincount(all_owner, weights=np.concatenate([amount, -amount[ri]]), minlength=m)
    loy = rules["loyalty"]
    member = rng.random(m) < np.minimum(loy["max_share"], loy["base"] + loy["per_order"] * n_orders_c)
    join_day = np.floor(t0 + rng.random(m) * (as_of_day - t0))
    tiers = list(loy["tiers"])
    tier = np.searchsorted(np.array(list(loy["tiers"].values()), dtype=float), net, side="right") - 1
    points = np.floor(np.maximum(net, 0) * (1.0 - rng.uniform(0, loy["redeemed_max"], m)))
    loyalty = pd.DataFrame({
        "customer_id": customers["customer_id"][member].to_numpy(),
        "loyalty_tier": np.array(tiers)[np.maximum(tier, 0)][member],
        "points_balance": points[member],
        "loyalty_join_date": pd.to_datetime(join_day[member].astype(np.int64), unit="D").strftime("%Y-%m-%d"),
    })
    # --- truth and campaigns
    segment = _segments(lam, nu, rules)
    contacts = _contacts(rng, rules, campaigns, cid, lam, nu, segment, consent, ts, ostarts, n_orders_c,
                         first_ts, dropout_ts)
    truth = pa.table({
        "customer_id": cid, "lam": lam, "p_drop": p_drop, "alive_at_as_of": alive, "nu": nu,
        "uplift_segment": pa.array(np.array(SEGMENTS)[segment]),
        "first_purchase_date": _dates(first_ts),
        "dropout_date": pa.array(dropout_ts, pa.int64(), mask=alive).cast(pa.timestamp("us")),
    })
    return _Chunk(customers, loyalty, tx, contacts, truth, n_ord, merged)


def _contacts(rng: np.random.Generator, rules: dict[str, Any], campaigns: pd.DataFrame, cid: pa.Array,
              lam: np.ndarray, nu: np.ndarray, segment: np.ndarray, consent: np.ndarray, ts: np.ndarray,
              ostarts: np.ndarray, n_orders: np.ndarray, first_ts: np.ndarray, dropout_ts: np.ndarray) -> pa.Table:
    """Past campaign assignments: eligible customers randomised into control and treatment arms, with outcomes."""
    parts = []
    owner = np.repeat(np.arange(len(lam)), n_orders)
    for spec, camp in zip(rules["campaigns"], campaigns.itertuples(index=False)):
        c_us = int(pd.Timestamp(camp.start_date).value // 1000)
        before = ts < c_us
        n_before = np.bincount(owner[before], minlength=len(lam))
        last = np.maximum.reduceat(np.where(before, ts, -1), ostarts)
        recency = (c_us - last) / DAY_US
        age = (c_us - first_ts) / DAY_US
        rule = spec.get("rule", {})
        ok = (n_before > 0) & consent[CHANNELS.index(camp.channel)]
        ok &= (recency >= rule.get("min_recency", 0)) & (recency <= rule.get("max_recency", np.inf))
        ok &= (n_before >= rule.get("min_orders", 0)) & (n_before <= rule.get("max_orders", np.inf))
        ok &= age <= rule.get("max_age", np.inf)
        idx = np.flatnonzero(ok)
        arms = _arms(spec)
        u = rng.random(len(idx))
        arm_k = rng.integers(0, len(arms), len(idx))
        treated = u >= spec["control"]
        discount = np.where(treated, np.array([d for _, d in arms])[arm_k], 0.0)
        arm_name = np.where(treated, np.array([a for a, _ in arms])[arm_k], "control")
        alive = dropout_ts[idx] > c_us
        ch = np.full(len(idx), CHANNELS.index(camp.channel))
        ctype = np.full(len(idx), CAMPAIGN_TYPES.index(camp.type))
        p_c, p_t = _probabilities(lam[idx], segment[idx], alive, ctype, ch, discount, rules["response"])
        out = _draw_outcomes(rng, p_c, p_t, treated, ch, discount, nu[idx], rules["response"],
                             rules["gamma_gamma"]["p"])
        parts.append(pa.table({
            "customer_id": cid.take(pa.array(idx)), "campaign_id": pa.array([camp.campaign_id] * len(idx), pa.string()),
            "arm": pa.array(arm_name, pa.string()),
            "group": pa.array(np.where(treated, "treatment", "control"), pa.string()),
            "channel": pa.array([camp.channel] * len(idx), pa.string()),
            "contact_date": _dates(np.full(len(idx), c_us)), "discount_pct": discount, **out,
        }))
    return pa.concat_tables(parts)


def _test_accounts(rules: dict[str, Any], rng: np.random.Generator, as_of_us: int,
                   order_offset: int) -> tuple[pd.DataFrame, pa.Table]:
    """TEST0001...: internal test accounts with many tiny orders (several a day), test@ e-mails."""
    an = rules["anomalies"]
    k, n = an["test_accounts"], an["test_orders"]
    ids = [f"TEST{i:04d}" for i in range(1, k + 1)]
    customers = pd.DataFrame({
        "customer_id": ids,
        "signup_date": [(pd.Timestamp(as_of_us, unit="us") - pd.Timedelta(days=an["test_days"])).strftime("%Y-%m-%d")]
        * k,
        "acquisition_channel": "organic", "acquisition_cost": 0.0, "region": list(rules["regions"])[0],
        "birth_year": 1970, "gender": "X", **{f"consent_{c}": True for c in CHANNELS},
        "email": ["test@example.com"] + [f"test+{i}@example.com" for i in range(2, k + 1)],
        "phone": "+44 7700 900000",
    })
    owner = np.repeat(np.arange(k), n)
    ts = as_of_us - np.sort(rng.integers(1, an["test_days"] * DAY_US, k * n))
    order_no = order_offset + 1 + np.arange(k * n)
    tx = pa.table({
        "customer_id": pa.array(np.array(ids)[owner]), "order_id": _ids("O", order_no, 9),
        "order_date": _dates(np.sort(ts)), "amount": np.where(rng.random(k * n) < 0.5, 0.01, 1.0),
        "quantity": np.ones(k * n), "product_id": pa.array(["SKU-TEST"] * (k * n)),
        "category": pa.array([list(rules["categories"])[0]] * (k * n)), "channel": pa.array(["online"] * (k * n)),
        "discount": np.zeros(k * n), "store_id": pa.nulls(k * n, pa.string()),
    })
    return customers, tx


# ---------------------------------------------------------------------------------------------------- public API
def generate(out_dir: Path, n_customers: int = 5000, seed: int = 42, as_of: str = "2026-06-30",
             years: float = 3.0, rules: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write the demo retailer (contract tables + truth/) into out_dir; returns {table name: path}.

    Tables: customers.csv, transactions.parquet, loyalty.csv, campaigns.csv, contacts.parquet; truth: truth/truth.json,
    truth/customer_truth.parquet, truth/uplift_truth.csv. `rules` defaults to `rules/demo.yaml`.
    """
    if not 1 <= int(n_customers) <= MAX_CUSTOMERS:
        raise InputError(f"demo: n_customers must be between 1 and {MAX_CUSTOMERS:,}, got {n_customers}.")
    if not 0 < float(years) <= 30:
        raise InputError(f"demo: years must be in (0, 30], got {years}.")
    try:
        as_of_ts = pd.Timestamp(as_of).normalize()
    except ValueError as exc:
        raise InputError(f"demo: as_of '{as_of}' is not a date; give it as YYYY-MM-DD.") from exc
    rules = rules or load_rules()
    n_customers, years = int(n_customers), float(years)
    out_dir = Path(out_dir)
    (out_dir / "truth").mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f for name, f in (("customers", "customers.csv"), ("transactions", "transactions.parquet"),
                                              ("loyalty", "loyalty.csv"), ("campaigns", "campaigns.csv"),
                                              ("contacts", "contacts.parquet"), ("truth", "truth/truth.json"),
                                              ("customer_truth", "truth/customer_truth.parquet"),
                                              ("uplift_truth", "truth/uplift_truth.csv"))}
    as_of_us = int(as_of_ts.value // 1000)
    campaigns = campaigns_frame(rules, as_of_ts)
    campaigns.to_csv(paths["campaigns"], index=False, date_format="%Y-%m-%d")
    g_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    an = rules["anomalies"]
    n_bulk = min(n_customers, max(an["bulk_min"], round(an["bulk_share"] * n_customers)))
    picked = g_rng.choice(n_customers, size=min(n_customers, 2 * n_bulk + an["returner_min"]
                                                 + round(an["returner_share"] * n_customers)), replace=False)
    bulk, returners = np.sort(picked[:n_bulk]), np.sort(picked[n_bulk:])
    writers: dict[str, pq.ParquetWriter] = {}
    merged = n_orders = 0
    try:
        for k, start in enumerate(range(0, n_customers, CHUNK)):
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k + 1,)))
            ch = _chunk(start, min(CHUNK, n_customers - start), rng, rules, as_of_us, years, bulk, returners,
                        campaigns, n_orders)
            merged, n_orders = merged + ch.merged, n_orders + ch.n_orders
            for name, table in (("transactions", ch.transactions), ("contacts", ch.contacts),
                                ("customer_truth", ch.truth)):
                if name not in writers:
                    writers[name] = pq.ParquetWriter(paths[name], table.schema)
                writers[name].write_table(table)
            ch.customers.to_csv(paths["customers"], index=False, mode="a" if k else "w", header=not k)
            ch.loyalty.to_csv(paths["loyalty"], index=False, mode="a" if k else "w", header=not k)
        test_customers, test_tx = _test_accounts(rules, g_rng, as_of_us, n_orders)
        writers["transactions"].write_table(test_tx.cast(writers["transactions"].schema))
        test_customers.to_csv(paths["customers"], index=False, mode="a", header=False)
    finally:
        for writer in writers.values():
            writer.close()
    customer_truth = pd.read_parquet(paths["customer_truth"])
    _uplift_truth(customer_truth, rules["response"]).to_csv(paths["uplift_truth"], index=False)
    ids = customer_truth["customer_id"].to_numpy()
    truth = {
        "seed": int(seed), "as_of": as_of_ts.strftime("%Y-%m-%d"), "n_customers": n_customers, "years": years,
        "time_unit": "weeks", "bgnbd": rules["bgnbd"], "gamma_gamma": rules["gamma_gamma"],
        "segments": rules["segments"], "response": rules["response"], "uplift": rules["response"]["uplift"],
        "anomalies": {"bulk_buyers": ids[bulk].tolist(), "extreme_returners": ids[returners].tolist(),
                      "test_accounts": test_customers["customer_id"].tolist()},
        "counting": {
            "frequency": "distinct purchase days of positive lines minus one (one order per customer per day)",
            "exclude": "returns (order_id starting with R) and the anomalies",
            "monetary": "gross order value = sum of the positive lines of one order_id",
            "orders": n_orders, "same_day_merged": merged,
        },
    }
    paths["truth"].write_text(json.dumps(truth, indent=2, sort_keys=True), encoding="utf-8")
    return paths


def _uplift_truth(customer_truth: pd.DataFrame, response: dict[str, Any]) -> pd.DataFrame:
    """Long table segment x campaign type x channel x discount: the uplift of an alive customer (before clipping)
    and, over the segment's customers at as_of, mean p_control and mean uplift (dead customers and clipping included)."""
    seg = pd.Categorical(customer_truth["uplift_segment"], categories=SEGMENTS).codes.astype(np.int64)
    lam = customer_truth["lam"].to_numpy()
    alive = customer_truth["alive_at_as_of"].to_numpy(bool)
    n_seg = np.bincount(seg, minlength=len(SEGMENTS))
    every = np.arange(len(SEGMENTS))
    rows = []
    for t, ctype in enumerate(CAMPAIGN_TYPES):
        for c, channel in enumerate(CHANNELS):
            for d in (0.0, 10.0, 20.0):
                p_c, p_t = _probabilities(lam, seg, alive, np.full(len(lam), t), np.full(len(lam), c),
                                          np.full(len(lam), d), response)
                raw = _uplift(every, np.ones(len(every), bool), np.full(len(every), t), np.full(len(every), c),
                              np.full(len(every), d), response)
                sum_c = np.bincount(seg, weights=p_c, minlength=len(SEGMENTS))
                sum_u = np.bincount(seg, weights=p_t - p_c, minlength=len(SEGMENTS))
                for s, segment in enumerate(SEGMENTS):
                    rows.append({"segment": segment, "campaign_type": ctype, "channel": channel, "discount_pct": d,
                                 "uplift_if_alive": raw[s], "n_customers": int(n_seg[s]),
                                 "mean_p_control": sum_c[s] / max(n_seg[s], 1),
                                 "mean_uplift_at_as_of": sum_u[s] / max(n_seg[s], 1)})
    return pd.DataFrame(rows)
