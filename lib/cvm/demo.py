"""The synthetic demo retailer: contract tables plus the ground truth that generated them.

The process (parameters in `rules/demo.yaml`, copied into `truth/truth.json`):

* Customers make their first purchase at a time spread over the `years` before `as_of`, with growing acquisitions.
* Purchases follow the BG/NBD story exactly (Fader, Hardie & Lee 2005), time unit WEEKS: lambda ~ Gamma(r, alpha),
  p ~ Beta(a, b); while active a customer buys at Poisson rate lambda and after each repeat purchase drops out with
  probability p. Every purchase is its own order at its exact time (seconds), so the truth is recovered from
  purchase ORDERS and their timestamps (`cvm.features.customer_features(..., btyd_basis="orders")`); counting
  distinct purchase days would merge the ~3% of purchases that share a day and bias the rate downwards.
* Order value follows Gamma-Gamma (Fader & Hardie note 025): nu ~ Gamma(q, gamma), order value ~ Gamma(p, nu).
  The truth applies to the gross order value (sum of the positive lines of one order_id); it is split over 1-4 lines.
* Returns are separate rows (order_id "R" + original order_id, negative quantity and amount, 3-30 days later, only
  when before as_of). Anomalies (bulk buyers, extreme returners, test accounts) are listed in truth.json and must be
  excluded, with returns, from BTYD truth checks. Transactions run to the end of the `as_of` day (the playbook
  counts that day as observed).
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
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import yaml

from cvm.contract import CAMPAIGN_TYPES, CHANNELS, GROUPS
from cvm.errors import InputError

RULES_PATH = Path(__file__).parent / "rules" / "demo.yaml"
SEGMENTS = ("sure_things", "persuadables", "lost_causes", "do_not_disturb")
SALES_CHANNELS = ("online", "store", "app")
CHUNK = 200_000  # customers generated per chunk (fixed: part of the seed contract)
DAY_US = 86_400_000_000
WEEK_DAYS = 7.0
MAX_CUSTOMERS = 9_999_999  # customer ids have seven digits
CSV_OPTIONS = pa_csv.WriteOptions(quoting_style="needed")
#: the big table: dictionary-encode the repetitive columns only, statistics where readers filter (faster writes)
PARQUET_OPTIONS = {"transactions": {"use_dictionary": ["customer_id", "product_id", "category", "channel", "store_id"],
                                    "write_statistics": ["customer_id", "order_date"]}}


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
def _ids(prefix: str, numbers: np.ndarray, width: int, suffix: str = "") -> pa.Array:
    """prefix + zero-padded numbers + suffix as an Arrow string array, written straight into its buffers (no Python
    string per row)."""
    head, tail = np.frombuffer(prefix.encode(), np.uint8), np.frombuffer(suffix.encode(), np.uint8)
    n, w = len(numbers), len(head) + width + len(tail)
    data = np.empty((n, w), dtype=np.uint8)
    data[:, :len(head)] = head
    data[:, w - len(tail):] = tail
    num = np.asarray(numbers, dtype=np.int64).copy()
    for k in range(len(head) + width - 1, len(head) - 1, -1):
        data[:, k] = 48 + num % 10
        num //= 10
    offsets = np.arange(n + 1, dtype=np.int64) * w
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data)).cast(pa.string())


def _labels(names: list[str] | tuple[str, ...], codes: np.ndarray) -> pa.Array:
    """Category names for integer codes (negative code = null)."""
    codes = np.asarray(codes)
    return pa.array(list(names), pa.string()).take(pa.array(codes, pa.int64(), mask=codes < 0))


def _days(day_numbers: np.ndarray) -> pa.Array:
    """Calendar dates from day numbers since 1970-01-01."""
    return pa.array(np.asarray(day_numbers, dtype=np.int32), pa.int32()).cast(pa.date32())


def _choice(rng: np.random.Generator, shares: dict[str, float] | list[float], size: int) -> np.ndarray:
    """Indices drawn with the given shares (normalised)."""
    prob = np.asarray(list(shares.values()) if isinstance(shares, dict) else shares, dtype=float)
    return np.searchsorted(np.cumsum(prob / prob.sum()), rng.random(size), side="right").clip(0, len(prob) - 1)


def _dates(day_us: np.ndarray) -> pa.Array:
    """Timestamps from microseconds since 1970-01-01."""
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
    customers: pa.Table
    loyalty: pa.Table
    transactions: pa.Table
    contacts: pa.Table
    truth: pa.Table
    n_orders: int


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
    age_weeks = (as_of_day + 1 - t0) / WEEK_DAYS  # purchases run to the end of the as_of day, which counts as seen
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
    # --- purchase occasions: first purchase then repeats, per customer, at their exact (continuous) times
    counts = 1 + x
    ostarts = np.cumsum(counts) - counts
    occ = np.empty(int(counts.sum()))
    is_first = np.zeros(len(occ), dtype=bool)
    is_first[ostarts] = True
    occ[is_first] = t0
    occ[~is_first] = rep_days
    owner = np.repeat(np.arange(m), counts)
    n_orders_c = counts
    ts = np.minimum(np.round(occ * 86_400).astype(np.int64) * 1_000_000, as_of_us + DAY_US - 1_000_000)
    first_ts = ts[ostarts]
    last_ts = ts[ostarts + n_orders_c - 1]
    dropout_ts = np.where(alive, np.iinfo(np.int64).max, last_ts)
    # --- customer attributes
    acq = rules["acquisition"]
    acq_ch = _choice(rng, {k: v["share"] for k, v in acq["channels"].items()}, m)
    mean_cost = np.array([v["cost"] for v in acq["channels"].values()])[acq_ch]
    cost = np.round(mean_cost * rng.lognormal(-acq["cost_cv"] ** 2 / 2, acq["cost_cv"], m), 2)
    region = _choice(rng, rules["regions"], m)
    home_store = region * rules["stores_per_region"] + rng.integers(0, rules["stores_per_region"], m)
    gender = _choice(rng, rules["genders"], m)
    by = rules["birth_year"]
    birth = np.clip(np.round(rng.normal(by["mean"], by["sd"], m)), by["min"], by["max"]).astype(np.int64)
    consent = rng.random((len(CHANNELS), m)) < np.array([rules["consent"][c] for c in CHANNELS])[:, None]
    same_day = rng.random(m) < acq["signup_same_day"]
    signup_day = np.floor(t0 - np.where(same_day, 0.0, rng.exponential(acq["signup_mean_days_before"], m)))
    preferred = _choice(rng, rules["sales_channels"], m)
    cid = _ids("C", gidx + 1, 7)
    customers = pa.table({
        "customer_id": cid, "signup_date": _days(signup_day), "acquisition_channel": _labels(list(acq["channels"]),
                                                                                             acq_ch),
        "acquisition_cost": cost, "region": _labels(list(rules["regions"]), region), "birth_year": birth,
        "gender": _labels(list(rules["genders"]), gender),
        **{f"consent_{c}": consent[k] for k, c in enumerate(CHANNELS)},
        "email": _ids("c", gidx + 1, 7, "@example.com"), "phone": _ids("+44 7700 9", (gidx * 7919) % 100_000, 5),
    })
    # --- orders (Gamma-Gamma value, promotion, sales channel) and their lines
    n_ord = len(ts)
    value = rng.gamma(gg["p"], 1.0 / nu[owner])
    promo = rules["promo"]
    promo_rate = np.where(rng.random(n_ord) < promo["share"],
                          np.array(promo["rates"])[rng.integers(0, len(promo["rates"]), n_ord)], 0.0)
    sales = np.where(rng.random(n_ord) < rules["channel_loyalty"], preferred[owner],
                     rng.integers(0, len(SALES_CHANNELS), n_ord))
    n_lines = 1 + _choice(rng, rules["lines_per_order"], n_ord)
    l_order = np.repeat(np.arange(n_ord), n_lines)
    cats = rules["categories"]
    n_l = len(l_order)
    cat = _choice(rng, {k: v["share"] for k, v in cats.items()}, n_l)
    weight = np.array([v["price"] for v in cats.values()])[cat] * rng.gamma(2.0, 1.0, n_l)
    share = weight / np.add.reduceat(weight, np.cumsum(n_lines) - n_lines)[l_order]
    amount = np.maximum(np.round(value[l_order] * share, 2), 0.01)
    quantity = (1 + _choice(rng, rules["quantity"], n_l)).astype(float)
    n_products = np.array([v["products"] for v in cats.values()])
    skew = rng.random(n_l)
    product = cat * 1000 + (n_products[cat] * skew * skew).astype(np.int64)
    l_owner = owner[l_order]
    an = rules["anomalies"]
    factor = rng.integers(an["bulk_factor"][0], an["bulk_factor"][1] + 1, n_l)
    factor = np.where(np.isin(gidx, bulk)[l_owner], factor, 1)
    quantity, amount = quantity * factor, np.round(amount * factor, 2)
    rate = promo_rate[l_order]
    discount = np.round(amount * rate / (1.0 - rate), 2)
    # --- returns: whole lines, some days later, only when before as_of
    ret_p = np.array([v["return_rate"] for v in cats.values()])[cat]
    ret_p = np.where(np.isin(gidx, returners)[l_owner], an["returner_rate"], ret_p)
    ri = np.flatnonzero(rng.random(n_l) < ret_p)
    r_ts = ts[l_order[ri]] + (rng.uniform(rules["returns"]["min_days"], rules["returns"]["max_days"], len(ri))
                              * 86_400).astype(np.int64) * 1_000_000
    ri, r_ts = ri[r_ts < as_of_us + DAY_US], r_ts[r_ts < as_of_us + DAY_US]
    # --- transactions: sales then returns, sorted by customer and time
    row = np.concatenate([np.arange(n_l), ri])
    is_return = np.arange(len(row)) >= n_l
    row_ts = np.concatenate([ts[l_order], r_ts])
    sort = np.argsort(l_owner[row] * (1 << 34) + row_ts // 1_000_000 - as_of_us // 1_000_000 + (1 << 33),
                      kind="stable")
    row, is_return, row_ts = row[sort], is_return[sort], row_ts[sort]
    sign = np.where(is_return, -1.0, 1.0)
    # order ids: one per order, then "R" + id per returned line; each row takes its id from that dictionary
    order_ids = pa.concat_arrays([_ids("O", order_offset + 1 + np.arange(n_ord), 9),
                                  _ids("RO", order_offset + 1 + l_order[ri], 9)])
    oid_index = np.where(is_return, n_ord + sort - n_l, l_order[row])
    store = np.where(sales[l_order] == SALES_CHANNELS.index("store"), home_store[l_owner], -1)
    tx = pa.table({
        "customer_id": cid.take(pa.array(l_owner[row])), "order_id": order_ids.take(pa.array(oid_index)),
        "order_date": _dates(row_ts), "amount": sign * amount[row], "quantity": sign * quantity[row],
        "product_id": _ids("SKU-", np.arange(len(cats) * 1000), 5).take(pa.array(product[row])),
        "category": _labels(list(cats), cat[row]), "channel": _labels(SALES_CHANNELS, sales[l_order][row]),
        "discount": sign * discount[row] + 0.0,
        "store_id": _labels([f"S{k + 1:03d}" for k in range(len(rules["regions"]) * rules["stores_per_region"])],
                            store[row]),
    })
    # --- loyalty (more engaged customers join more often; tier and points from net spend)
    net = np.bincount(l_owner[row], weights=sign * amount[row], minlength=m)
    loy = rules["loyalty"]
    member = rng.random(m) < np.minimum(loy["max_share"], loy["base"] + loy["per_order"] * n_orders_c)
    join_day = np.floor(t0 + rng.random(m) * (as_of_day - t0))
    tier = np.maximum(np.searchsorted(np.array(list(loy["tiers"].values()), float), net, side="right") - 1, 0)
    points = np.floor(np.maximum(net, 0) * (1.0 - rng.uniform(0, loy["redeemed_max"], m)))
    keep_m = pa.array(np.flatnonzero(member))
    loyalty = pa.table({"customer_id": cid.take(keep_m), "loyalty_tier": _labels(list(loy["tiers"]), tier[member]),
                        "points_balance": points[member], "loyalty_join_date": _days(join_day[member])})
    # --- truth and campaigns
    segment = _segments(lam, nu, rules)
    contacts = _contacts(rng, rules, campaigns, cid, lam, nu, segment, consent, ts, ostarts, n_orders_c,
                         first_ts, dropout_ts)
    truth = pa.table({
        "customer_id": cid, "lam": lam, "p_drop": p_drop, "alive_at_as_of": alive, "nu": nu,
        "uplift_segment": _labels(SEGMENTS, segment), "first_purchase_date": _dates(first_ts),
        "dropout_date": pa.array(dropout_ts, pa.int64(), mask=alive).cast(pa.timestamp("us")),
    })
    return _Chunk(customers, loyalty, tx, contacts, truth, n_ord)


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
        alive = dropout_ts[idx] > c_us
        ch = np.full(len(idx), CHANNELS.index(camp.channel))
        ctype = np.full(len(idx), CAMPAIGN_TYPES.index(camp.type))
        p_c, p_t = _probabilities(lam[idx], segment[idx], alive, ctype, ch, discount, rules["response"])
        out = _draw_outcomes(rng, p_c, p_t, treated, ch, discount, nu[idx], rules["response"],
                             rules["gamma_gamma"]["p"])
        zeros = np.zeros(len(idx), dtype=np.int64)
        parts.append(pa.table({
            "customer_id": cid.take(pa.array(idx)), "campaign_id": _labels([camp.campaign_id], zeros),
            "arm": _labels(["control"] + [a for a, _ in arms], np.where(treated, arm_k + 1, 0)),
            "group": _labels(GROUPS, np.where(treated, GROUPS.index("treatment"), GROUPS.index("control"))),
            "channel": _labels([camp.channel], zeros), "contact_date": _dates(np.full(len(idx), c_us)),
            "discount_pct": discount, **out,
        }))
    return pa.concat_tables(parts)


def _test_accounts(rules: dict[str, Any], rng: np.random.Generator, as_of_us: int,
                   order_offset: int) -> tuple[pa.Table, pa.Table]:
    """TEST0001...: internal test accounts with many tiny orders (0.01 or 1.00) in the last weeks, test@ e-mails."""
    an = rules["anomalies"]
    k, n = an["test_accounts"], an["test_orders"]
    ids = pa.array([f"TEST{i:04d}" for i in range(1, k + 1)])
    customers = pa.table({
        "customer_id": ids, "signup_date": _days(np.full(k, as_of_us // DAY_US - an["test_days"])),
        "acquisition_channel": pa.array(["organic"] * k), "acquisition_cost": np.zeros(k),
        "region": pa.array([list(rules["regions"])[0]] * k), "birth_year": np.full(k, 1970),
        "gender": pa.array(["X"] * k), **{f"consent_{c}": np.ones(k, bool) for c in CHANNELS},
        "email": pa.array(["test@example.com"] + [f"test+{i}@example.com" for i in range(2, k + 1)]),
        "phone": pa.array(["+44 7700 900000"] * k),
    })
    owner = np.repeat(np.arange(k), n)
    ts = as_of_us - np.sort(rng.integers(1, an["test_days"] * 86_400, k * n))[::-1] * 1_000_000
    tx = pa.table({
        "customer_id": ids.take(pa.array(owner)), "order_id": _ids("O", order_offset + 1 + np.arange(k * n), 9),
        "order_date": _dates(ts), "amount": np.where(rng.random(k * n) < 0.5, 0.01, 1.0),
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
    truth/customer_truth.parquet, truth/uplift_truth.csv. `rules` defaults to `rules/demo.yaml`. Every transaction
    ends with the as_of day; campaigns run in the year before it. Past contacts carry their outcomes (see
    `simulate_outcomes`); a campaign's discount_pct is its first arm's, the per-row discount is in contacts.
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
    n_bulk = max(an["bulk_min"], round(an["bulk_share"] * n_customers))
    n_returners = max(an["returner_min"], round(an["returner_share"] * n_customers))
    picked = g_rng.choice(n_customers, size=min(n_customers, n_bulk + n_returners), replace=False)
    bulk, returners = np.sort(picked[:n_bulk]), np.sort(picked[n_bulk:])
    writers: dict[str, pq.ParquetWriter | pa_csv.CSVWriter] = {}
    schemas: dict[str, pa.Schema] = {}
    n_orders = 0
    try:
        for k, start in enumerate(range(0, n_customers, CHUNK)):
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k + 1,)))
            ch = _chunk(start, min(CHUNK, n_customers - start), rng, rules, as_of_us, years, bulk, returners,
                        campaigns, n_orders)
            n_orders += ch.n_orders
            for name, table in (("transactions", ch.transactions), ("contacts", ch.contacts),
                                ("customer_truth", ch.truth), ("customers", ch.customers), ("loyalty", ch.loyalty)):
                if name not in writers:
                    schemas[name] = table.schema
                    writers[name] = (pa_csv.CSVWriter(paths[name], table.schema, write_options=CSV_OPTIONS)
                                     if paths[name].suffix == ".csv"
                                     else pq.ParquetWriter(paths[name], table.schema, **PARQUET_OPTIONS.get(name, {})))
                writers[name].write_table(table)
        test_customers, test_tx = _test_accounts(rules, g_rng, as_of_us, n_orders)
        writers["transactions"].write_table(test_tx.cast(schemas["transactions"]))
        writers["customers"].write_table(test_customers.cast(schemas["customers"]))
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
                      "test_accounts": test_customers["customer_id"].to_pylist()},
        "counting": {
            "frequency": "purchase orders minus one, at their exact timestamps (features btyd_basis='orders'); "
                         "several orders may fall on one day",
            "exclude": "returns (order_id starting with R) and the anomalies",
            "monetary": "gross order value = sum of the positive lines of one order_id",
            "orders": n_orders,
        },
    }
    paths["truth"].write_text(json.dumps(truth, indent=2, sort_keys=True), encoding="utf-8")
    return paths


def _uplift_truth(customer_truth: pd.DataFrame, response: dict[str, Any]) -> pd.DataFrame:
    """Long table segment x campaign type x channel x discount: the uplift of an alive customer (before clipping)
    and, over the segment's customers at as_of, mean p_control and mean uplift (dead customers, clipping included)."""
    seg = pd.Index(SEGMENTS).get_indexer(customer_truth["uplift_segment"].astype(object)).astype(np.int64)
    alive = customer_truth["alive_at_as_of"].to_numpy(bool)
    p_c = np.where(alive, -np.expm1(-customer_truth["lam"].to_numpy(float) * response["window_days"] / WEEK_DAYS), 0.0)
    n_seg = np.bincount(seg, minlength=len(SEGMENTS))
    mean_c = np.bincount(seg, weights=p_c, minlength=len(SEGMENTS)) / np.maximum(n_seg, 1)
    state = seg * 2 + alive  # the uplift depends on the customer only through segment and alive
    k = len(SEGMENTS) * 2
    rows = []
    for t, ctype in enumerate(CAMPAIGN_TYPES):
        for c, channel in enumerate(CHANNELS):
            for d in (0.0, 10.0, 20.0):
                u = _uplift(np.arange(k) // 2, np.arange(k) % 2 == 1, np.full(k, t), np.full(k, c), np.full(k, d),
                            response)
                gain = np.clip(p_c + u[state], 0.0, 1.0) - p_c
                mean_u = np.bincount(seg, weights=gain, minlength=len(SEGMENTS)) / np.maximum(n_seg, 1)
                for s, segment in enumerate(SEGMENTS):
                    rows.append({"segment": segment, "campaign_type": ctype, "channel": channel, "discount_pct": d,
                                 "uplift_if_alive": u[2 * s + 1], "n_customers": int(n_seg[s]),
                                 "mean_p_control": mean_c[s], "mean_uplift_at_as_of": mean_u[s]})
    return pd.DataFrame(rows)


def load_truth(out_dir: Path) -> DemoTruth:
    """The truth written by `generate` into out_dir/truth/ (out_dir or the truth folder itself may be given)."""
    folder = Path(out_dir) if (Path(out_dir) / "truth.json").is_file() else Path(out_dir) / "truth"
    files = [folder / "truth.json", folder / "customer_truth.parquet", folder / "uplift_truth.csv"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(f"demo truth: missing {', '.join(missing)}. Run cvm.demo.generate (cvm demo) into {out_dir}.")
    meta = json.loads(files[0].read_text(encoding="utf-8"))
    return DemoTruth(seed=meta["seed"], as_of=pd.Timestamp(meta["as_of"]), n_customers=meta["n_customers"],
                     bgnbd=meta["bgnbd"], gamma_gamma=meta["gamma_gamma"], segments=meta["segments"],
                     response=meta["response"], anomalies=meta["anomalies"],
                     customer_truth=pd.read_parquet(files[1]), uplift_truth=pd.read_csv(files[2]),
                     counting=meta["counting"])


def _alive_at(customer_truth: pd.DataFrame, at: pd.Series | pd.Timestamp, as_of: pd.Timestamp) -> np.ndarray:
    """Alive at `at` (acquired before and not yet dropped out); after as_of the state at as_of is used."""
    at = pd.Series(at, index=customer_truth.index) if isinstance(at, pd.Timestamp) else at
    first = customer_truth["first_purchase_date"].to_numpy("datetime64[us]")
    drop = customer_truth["dropout_date"].to_numpy("datetime64[us]")
    when = pd.to_datetime(at).to_numpy("datetime64[us]")
    before = (first < when) & (np.isnat(drop) | (drop > when))
    return np.where(when > as_of.to_datetime64(), customer_truth["alive_at_as_of"].to_numpy(bool), before)


def _codes(values: pd.Series, allowed: tuple[str, ...], table: str, column: str) -> np.ndarray:
    """Position of each value in `allowed` (values are looked up once per distinct value); InputError if outside."""
    distinct, uniques = pd.factorize(values)
    lookup = np.append(pd.Index(allowed).get_indexer(np.asarray(uniques, dtype=object)), -1)  # code -1: missing
    codes = lookup[distinct]
    if (codes < 0).any():
        bad = pd.Series(values)[codes < 0]
        raise InputError(f"{table}: column '{column}' has {len(bad):,} rows outside {', '.join(allowed)} "
                         f"(e.g. {bad.iloc[0]!r}); fix these values.")
    return codes.astype(np.int64)


def _code(value: str, allowed: tuple[str, ...], table: str, column: str, n: int) -> np.ndarray:
    """`_codes` of `value` repeated n times, without building the n values (but the same error when outside)."""
    if value in allowed:
        return np.full(n, allowed.index(value), dtype=np.int64)
    return _codes(pd.Series([value] * n), allowed, table, column)


def true_response(customer_truth: pd.DataFrame, campaign_type: str, channel: str, discount_pct: float | np.ndarray,
                  truth: DemoTruth, at: str | pd.Timestamp | None = None) -> pd.DataFrame:
    """True response to one offer: customer_id, uplift_segment, p_control, p_treated, uplift, expected_order_value.

    p_control / p_treated: probability of converting within the attribution window if not contacted / if contacted with
    this offer, for the customer's state at `at` (default: truth.as_of; exact for dates up to as_of).
    expected_order_value is the gross order value p/nu; a treated conversion pays it less discount_pct.
    """
    need = ["customer_id", "lam", "nu", "uplift_segment", "alive_at_as_of", "first_purchase_date", "dropout_date"]
    missing = [c for c in need if c not in customer_truth.columns]
    if missing:
        raise InputError(f"customer_truth lacks column(s) {', '.join(missing)}; pass truth.customer_truth or a "
                         f"row subset of it.")
    n = len(customer_truth)
    ctype = _code(campaign_type, CAMPAIGN_TYPES, "true_response", "campaign_type", n)
    ch = _code(channel, CHANNELS, "true_response", "channel", n)
    discount = np.broadcast_to(np.asarray(discount_pct, dtype=float), (n,))
    bad = (discount < 0) | (discount >= 100)
    if bad.any():
        raise InputError(f"true_response: discount_pct must be in [0, 100), got {int(bad.sum()):,} values outside; "
                         f"give percents, e.g. 10 for 10 %.")
    when = truth.as_of if at is None else pd.Timestamp(at)
    alive = _alive_at(customer_truth, when, truth.as_of)
    seg = _codes(customer_truth["uplift_segment"], SEGMENTS, "customer_truth", "uplift_segment")
    p_c, p_t = _probabilities(customer_truth["lam"].to_numpy(float), seg, alive, ctype, ch, discount, truth.response)
    return pd.DataFrame({"customer_id": customer_truth["customer_id"].array,
                         "uplift_segment": customer_truth["uplift_segment"].array, "p_control": p_c,
                         "p_treated": p_t, "uplift": p_t - p_c,
                         "expected_order_value": truth.gamma_gamma["p"] / customer_truth["nu"].to_numpy(float)})


def simulate_outcomes(contacts: pd.DataFrame, truth: DemoTruth, seed: int,
                      campaigns: pd.DataFrame | None = None) -> pd.DataFrame:
    """Contacts with delivered, opened, clicked, converted, revenue drawn from the truth (plus true_p_control and
    true_p_treated).

    contacts needs customer_id, campaign_id, group, channel, discount_pct and the campaign type: a `type` column, or
    else `campaigns` (campaign_id, type) to look it up. contact_date defaults to truth.as_of. Control rows convert at
    p_control and are not contacted; treated rows convert at p_treated and pay the order value less discount_pct.
    Outcomes are independent of transactions.parquet (campaign conversions are not written there).
    """
    frame = contacts.copy()
    if "type" not in frame.columns:
        if campaigns is None:
            raise InputError("contacts: no 'type' column and no campaigns frame; add the campaign type per row or pass "
                             "campaigns=(campaign_id, type).")
        types = campaigns.drop_duplicates("campaign_id").set_index("campaign_id")["type"]
        frame["type"] = frame["campaign_id"].map(types)
        unknown = frame["type"].isna()
        if unknown.any():
            raise InputError(f"contacts: {int(unknown.sum()):,} rows have a campaign_id not in campaigns (e.g. "
                             f"{frame.loc[unknown, 'campaign_id'].iloc[0]!r}); add those campaigns.")
    need = ["customer_id", "campaign_id", "group", "channel", "discount_pct"]
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise InputError(f"contacts: missing column(s) {', '.join(missing)}; {len(frame):,} rows given.")
    ct = truth.customer_truth
    pos = pd.Index(ct["customer_id"]).get_indexer(frame["customer_id"])
    if (pos < 0).any():
        raise InputError(f"contacts: {int((pos < 0).sum()):,} rows have a customer_id absent from the truth (e.g. "
                         f"{frame['customer_id'][pos < 0].iloc[0]!r}); contact only generated customers "
                         f"(test accounts have no truth).")
    rows = ct.iloc[pos].reset_index(drop=True)
    group = _codes(frame["group"], GROUPS, "contacts", "group")
    ctype = _codes(frame["type"], CAMPAIGN_TYPES, "contacts", "type")
    ch = _codes(frame["channel"], CHANNELS, "contacts", "channel")
    discount = frame["discount_pct"].fillna(0.0).to_numpy(float)
    when = pd.Series(pd.to_datetime(frame["contact_date"]).to_numpy() if "contact_date" in frame.columns
                     else np.full(len(frame), truth.as_of.to_datetime64()))
    alive = _alive_at(rows, when, truth.as_of)
    seg = _codes(rows["uplift_segment"], SEGMENTS, "customer_truth", "uplift_segment")
    p_c, p_t = _probabilities(rows["lam"].to_numpy(float), seg, alive, ctype, ch, discount, truth.response)
    treated = group == GROUPS.index("treatment")
    out = _draw_outcomes(np.random.default_rng(seed), p_c, p_t, treated, ch, discount, rows["nu"].to_numpy(float),
                         truth.response, truth.gamma_gamma["p"])
    for name, values in out.items():
        frame[name] = values
    frame["true_p_control"], frame["true_p_treated"] = p_c, p_t
    return frame
