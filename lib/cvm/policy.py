"""The contact policy as data: consents, contact caps, cool-downs, quiet days, capacities, budget, control groups.

Windows are rolling and counted in days: a customer has at most `max_per_week` contacts in any `week_days` consecutive
days and at most `max_per_month` in any `month_days`, counting the contact history (control rows of the history were not
contacted and do not count). Channel capacities apply per planning week: days as_of+1 .. as_of+7 are week 0, and so on.

`apply_policy` removes the candidate contacts the policy forbids and gives each customer the number of contacts he may
still receive; `constraints_for` turns the rest of the policy into solver constraints; `check_plan` independently lists
every violation of a finished plan (the notebook reports its count, which must be 0).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cvm.assignment import Constraints
from cvm.config import read_yaml
from cvm.contract import CAMPAIGN_TYPES, CHANNELS
from cvm.errors import InputError
from cvm.keys import first_per_key, key_positions
from cvm.offers import Offer

_TRUE = {"true", "t", "yes", "y", "1", "1.0"}
_OFFSET = 1_000_000     # days added before packing (customer, day) into one int64 key
_SPAN = 10_000_000


@dataclass(frozen=True)
class ControlRule:
    """Control group size of a campaign: a fixed `share`, or a power calculation from the baseline conversion rate,
    the minimum detectable absolute lift, alpha and power."""

    share: float | None = None
    baseline_rate: float | None = None
    mde_abs: float | None = None
    alpha: float = 0.05
    power: float = 0.8


@dataclass(frozen=True)
class ContactPolicy:
    """Contact rules of one client (see the module docstring for how windows are counted)."""

    consent: dict[str, str]
    max_per_week: int
    max_per_month: int
    min_days_between: int
    quiet_days_after_purchase: int
    campaign_priority: tuple[str, ...]
    channel_capacity_per_week: dict[str, int]
    budget: float | None
    global_holdout_share: float = 0.0
    control_default: ControlRule = field(default_factory=lambda: ControlRule(share=0.1))
    control_per_campaign: dict[str, ControlRule] = field(default_factory=dict)
    week_days: int = 7
    month_days: int = 30

    def control_rule(self, offer_id: str, campaign_type: str | None = None) -> ControlRule:
        """The control rule of an offer: by offer_id, else by campaign type, else the default."""
        return self.control_per_campaign.get(offer_id) or self.control_per_campaign.get(campaign_type or "") \
            or self.control_default


def _int(where: str, raw: dict, key: str, default: int | None = None, minimum: int = 0) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{where}: field '{key}' must be a whole number >= {minimum}; got {value!r}.")
    return value


def _share(where: str, value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise InputError(f"{where}: '{key}' must be a share in [0, 1); got {value!r}.")
    return float(value)


def _control_rule(where: str, raw: object) -> ControlRule:
    if not isinstance(raw, dict):
        raise InputError(f"{where}: a control rule is a mapping with 'share' or 'baseline_rate' + 'mde_abs'; "
                         f"got {raw!r}.")
    unknown = set(raw) - {"share", "baseline_rate", "mde_abs", "alpha", "power"}
    if unknown:
        raise InputError(f"{where}: unknown control field(s) {sorted(unknown)}.")
    if "share" in raw:
        return ControlRule(share=_share(where, raw["share"], "share"))
    if "baseline_rate" not in raw or "mde_abs" not in raw:
        raise InputError(f"{where}: give either 'share' or both 'baseline_rate' and 'mde_abs'.")
    rule = ControlRule(baseline_rate=float(raw["baseline_rate"]), mde_abs=float(raw["mde_abs"]),
                       alpha=float(raw.get("alpha", 0.05)), power=float(raw.get("power", 0.8)))
    if not 0 < rule.baseline_rate < 1 or not 0 < rule.baseline_rate + rule.mde_abs < 1 or rule.mde_abs == 0:
        raise InputError(f"{where}: baseline_rate and baseline_rate + mde_abs must lie in (0, 1), mde_abs != 0.")
    if not 0 < rule.alpha < 1 or not 0 < rule.power < 1:
        raise InputError(f"{where}: alpha and power must lie in (0, 1).")
    return rule


def load_policy(path: str | Path) -> ContactPolicy:
    """Read and validate a contact policy (YAML with a top-level `contact_policy:` mapping)."""
    path = Path(path)
    doc = read_yaml(path, "contact policy")
    if not isinstance(doc, dict) or not isinstance(doc.get("contact_policy"), dict):
        raise InputError(f"{path}: expected a top-level 'contact_policy:' mapping.")
    raw, where = doc["contact_policy"], f"{path}: contact_policy"
    consent = raw.get("consent")
    if not isinstance(consent, dict) or not consent or any(c not in CHANNELS for c in consent):
        raise InputError(f"{where}: 'consent' must map channels {list(CHANNELS)} to consent columns; got {consent!r}.")
    priority = raw.get("campaign_priority", list(CAMPAIGN_TYPES))
    if not isinstance(priority, list) or any(p not in CAMPAIGN_TYPES for p in priority):
        raise InputError(f"{where}: 'campaign_priority' must list campaign types from {list(CAMPAIGN_TYPES)}.")
    capacity = raw.get("channel_capacity_per_week") or {}
    if not isinstance(capacity, dict) or any(c not in CHANNELS or not isinstance(v, int) or v < 0
                                             for c, v in capacity.items()):
        raise InputError(f"{where}: 'channel_capacity_per_week' must map channels to whole numbers >= 0.")
    budget = raw.get("budget")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget < 0):
        raise InputError(f"{where}: 'budget' must be a number >= 0 or absent; got {budget!r}.")
    control = raw.get("control") or {}
    policy = ContactPolicy(
        consent={str(k): str(v) for k, v in consent.items()},
        max_per_week=_int(where, raw, "max_per_week", minimum=1),
        max_per_month=_int(where, raw, "max_per_month", minimum=1),
        min_days_between=_int(where, raw, "min_days_between", 0),
        quiet_days_after_purchase=_int(where, raw, "quiet_days_after_purchase", 0),
        campaign_priority=tuple(priority),
        channel_capacity_per_week={str(k): int(v) for k, v in capacity.items()},
        budget=None if budget is None else float(budget),
        global_holdout_share=_share(where, control.get("global_holdout_share", 0.0), "global_holdout_share"),
        control_default=_control_rule(f"{where}: control.default", control.get("default", {"share": 0.1})),
        control_per_campaign={str(k): _control_rule(f"{where}: control.per_campaign.{k}", v)
                              for k, v in (control.get("per_campaign") or {}).items()},
        week_days=_int(where, raw, "week_days", 7, minimum=1),
        month_days=_int(where, raw, "month_days", 30, minimum=1),
    )
    if policy.max_per_month < policy.max_per_week:
        raise InputError(f"{where}: max_per_month ({policy.max_per_month}) is below max_per_week "
                         f"({policy.max_per_week}).")
    return policy


def _as_bool(values: pd.Series) -> np.ndarray:
    """Consent flags: True, 1, 'yes', 'true', 'y' are consent; anything else, missing included, is not."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        return values.fillna(0).astype(float).to_numpy() == 1
    return values.astype("string").str.strip().str.lower().isin(_TRUE).fillna(False).to_numpy(dtype=bool)


def _days(dates: pd.Series | pd.Index, as_of: pd.Timestamp, table: str, column: str) -> np.ndarray:
    """Days from as_of to each date (time of day dropped), worked out once per distinct value (contacts and
    candidates repeat a few dates over millions of rows)."""
    codes, distinct = pd.factorize(pd.Series(dates))
    d = pd.to_datetime(pd.Series(distinct), errors="coerce")
    unreadable = pd.isna(d).to_numpy()
    bad = int((codes < 0).sum()) + int(unreadable[codes[codes >= 0]].sum())
    if bad:
        raise InputError(f"{table}: column '{column}' has {bad} missing or unreadable dates; fix or drop those rows.")
    return np.asarray((pd.DatetimeIndex(d).normalize() - as_of.normalize()).days, dtype=np.int64)[codes]


def _history_keys(history: pd.DataFrame, customers: pd.Index, as_of: pd.Timestamp, customer_col: str,
                  date_col: str, group_col: str) -> np.ndarray:
    """Sorted (customer code, day) keys of the contacts actually made (control rows dropped)."""
    for col in (customer_col, date_col):
        if col not in history.columns:
            raise InputError(f"history (contacts): column '{col}' is missing; the caps need who was contacted when.")
    made = np.ones(len(history), dtype=bool)
    if group_col in history.columns:
        made = (history[group_col].astype("string").fillna("treatment") != "control").to_numpy(dtype=bool)
    # only the two columns read are filtered (a contact history has millions of rows and a dozen columns)
    code = key_positions(history[customer_col][made], customers)
    day = _days(history[date_col][made], as_of, "history (contacts)", date_col)
    keep = code >= 0
    return np.sort(code[keep] * _SPAN + day[keep] + _OFFSET)


def _count(keys: np.ndarray, code: np.ndarray, lo: np.ndarray | int, hi: np.ndarray | int) -> np.ndarray:
    """Number of keys of customer `code` with day in [lo, hi]."""
    base = code.astype(np.int64) * _SPAN + _OFFSET
    return np.searchsorted(keys, base + hi, side="right") - np.searchsorted(keys, base + lo, side="left")


def _count_per_launch(keys: np.ndarray, codes: np.ndarray, launches: np.ndarray, width: int) -> np.ndarray:
    """Keys of each customer in `codes` with day within `width` - 1 days of each launch day, as a (launch, customer
    code) table (zero for the other codes): `_count` once per customer and launch instead of once per candidate row
    (a customer has about ten candidate rows per launch: offers x channels x discounts)."""
    out = np.zeros((len(launches), int(codes.max(initial=-1)) + 1), dtype=np.int64)
    for i, day in enumerate(launches):
        out[i, codes] = _count(keys, codes, int(day) - width + 1, int(day) + width - 1)
    return out


def apply_policy(candidates: pd.DataFrame, customers: pd.DataFrame, history: pd.DataFrame, policy: ContactPolicy,
                 as_of: str | pd.Timestamp, customer_col: str = "customer_id", date_col: str = "contact_date",
                 last_purchase_col: str = "last_purchase", group_col: str = "group") -> tuple[pd.DataFrame, pd.Series]:
    """Drop candidate contacts the policy forbids; return (allowed candidates, contacts each customer may still get).
    `apply_policy_rows` without the customer rows."""
    allowed, cap, _ = apply_policy_rows(candidates, customers, history, policy, as_of, customer_col, date_col,
                                        last_purchase_col, group_col)
    return allowed, cap


def apply_policy_rows(candidates: pd.DataFrame, customers: pd.DataFrame, history: pd.DataFrame,
                      policy: ContactPolicy, as_of: str | pd.Timestamp, customer_col: str = "customer_id",
                      date_col: str = "contact_date", last_purchase_col: str = "last_purchase",
                      group_col: str = "group") -> tuple[pd.DataFrame, pd.Series, np.ndarray]:
    """Drop candidate contacts the policy forbids; return (allowed candidates, contacts each customer may still get,
    each allowed candidate's row in `customers`: the first where an id repeats, as `key_positions` finds it).

    Removed: channels without consent, dates within the quiet days after the last purchase, dates closer than
    `min_days_between` to a past contact, dates whose week already holds `max_per_week` past contacts. The cap per
    customer is `max_per_month` minus his past contacts in the month windows that touch the plan. Contact dates must lie
    after `as_of` and be at least max(week_days, min_days_between) apart, so that a plan with one contact per customer
    per date cannot break the weekly cap or the cool-down by itself. Adds `priority` (0 = first in campaign_priority).
    """
    as_of = pd.Timestamp(as_of)
    for col in (customer_col, "channel", date_col):
        if col not in candidates.columns:
            raise InputError(f"candidates: column '{col}' is missing; build them with cvm.offers.build_candidates.")
    if customer_col not in customers.columns:
        raise InputError(f"customers: column '{customer_col}' is missing.")
    first = first_per_key(customers, customer_col)
    cust = first.set_index(customer_col)
    cand_day = _days(candidates[date_col], as_of, "candidates", date_col)
    if (cand_day <= 0).any():
        raise InputError(f"candidates: {int((cand_day <= 0).sum())} rows have {date_col} on or before as_of "
                         f"{as_of.date()}; plan contacts after as_of.")
    launches = np.unique(cand_day)
    spacing = max(policy.week_days, policy.min_days_between)
    if len(launches) > 1 and np.diff(launches).min() < spacing:
        raise InputError(f"candidates: contact dates must be at least {spacing} days apart (week_days / "
                         "min_days_between of the policy); merge close launches into one date.")
    code = key_positions(candidates[customer_col], cust.index)
    unknown = int((code < 0).sum())
    if unknown:
        raise InputError(f"candidates: {unknown} rows have a {customer_col} that is not in customers; "
                         "build candidates from the same customers table.")

    ok = np.zeros(len(candidates), dtype=bool)
    chan, channels = pd.factorize(candidates["channel"])
    for channel, column in policy.consent.items():
        if column not in cust.columns:
            raise InputError(f"customers: consent column '{column}' (channel {channel}) is missing; every contact "
                             "needs consent, add the column (True/False per customer).")
        rows = np.isin(chan, np.flatnonzero(channels.astype("string") == channel))
        ok[rows] = _as_bool(cust[column])[code[rows]]

    if policy.quiet_days_after_purchase > 0:
        if last_purchase_col not in cust.columns:
            raise InputError(f"customers: column '{last_purchase_col}' (last purchase date) is missing; it is needed "
                             "for the quiet days after a purchase.")
        last = pd.to_datetime(cust[last_purchase_col], errors="coerce")
        since = (pd.DatetimeIndex(last).normalize() - as_of.normalize()).days.to_numpy(dtype=float)[code]
        ok &= ~(cand_day - since < policy.quiet_days_after_purchase)   # NaN (never bought) compares False

    keys = _history_keys(history, cust.index, as_of, customer_col, date_col, group_col)
    w, m = policy.week_days, policy.month_days
    cand_codes = np.flatnonzero(np.bincount(code, minlength=len(cust.index)))     # the customers, sorted
    launch = np.searchsorted(launches, cand_day)
    ok &= _count_per_launch(keys, cand_codes, launches, w)[launch, code] < policy.max_per_week
    if policy.min_days_between > 0:
        ok &= _count_per_launch(keys, cand_codes, launches, policy.min_days_between)[launch, code] == 0

    month_hist = _count(keys, cand_codes, int(launches.min()) - m + 1, int(launches.max()) + m - 1)
    cap = pd.Series(np.clip(policy.max_per_month - month_hist, 0, None), index=cust.index[cand_codes],
                    name="max_contacts")
    cap_by_code = np.zeros(len(cust.index), dtype=np.int64)
    cap_by_code[cand_codes] = cap.to_numpy()
    ok &= cap_by_code[code] > 0
    out = candidates[ok]
    if "campaign_type" in out.columns:
        rank = {t: i for i, t in enumerate(policy.campaign_priority)}
        types, names = pd.factorize(out["campaign_type"])   # code -1 (missing type) takes the last, lowest rank
        out["priority"] = np.array([rank.get(t, len(rank)) for t in names] + [len(rank)], dtype=int)[types]
    rows = code[ok]   # positions among the first rows of each id; those rows' positions in customers
    if first is not customers:
        rows = np.flatnonzero(~customers[customer_col].duplicated().to_numpy())[rows]
    return out.reset_index(drop=True), cap, rows


def constraints_for(policy: ContactPolicy, offers: Sequence[Offer], customer_cap: pd.Series | int) -> Constraints:
    """Solver constraints from the policy (channel capacity per week, budget) and the catalogue (offer capacity)."""
    return Constraints(max_per_customer=customer_cap,
                       offer_capacity={o.offer_id: o.capacity for o in offers if o.capacity is not None},
                       channel_capacity=dict(policy.channel_capacity_per_week), budget=policy.budget)


def _violations(kind: str, frame: pd.DataFrame, detail: pd.Series | str) -> pd.DataFrame:
    out = frame.copy()
    out.insert(0, "kind", kind)
    out["detail"] = detail
    return out


def check_plan(plan: pd.DataFrame, customers: pd.DataFrame, history: pd.DataFrame, policy: ContactPolicy,
               as_of: str | pd.Timestamp, offers: Sequence[Offer] | None = None, customer_col: str = "customer_id",
               date_col: str = "contact_date", last_purchase_col: str = "last_purchase",
               group_col: str = "group") -> pd.DataFrame:
    """Every policy violation of a plan, one row each: kind (consent, weekly cap, monthly cap, cool-down, quiet days,
    capacity, budget, offer validity), customer / channel / offer / date where relevant, and a detail.

    Control rows of the plan (group == 'control') are not contacted and are not checked. With `offers`, offer capacity
    and validity dates are checked too. An empty frame means the plan respects the policy.
    """
    as_of = pd.Timestamp(as_of)
    columns = ["kind", customer_col, "offer_id", "channel", date_col, "detail"]
    need = [customer_col, "channel", date_col] + (["offer_id"] if offers is not None else []) \
        + (["cost"] if policy.budget is not None else [])
    missing = [c for c in need if c not in plan.columns]
    if missing:
        raise InputError(f"plan: column(s) {missing} missing; the plan is the solver's chosen candidate rows.")
    p = plan if group_col not in plan.columns else plan[plan[group_col].astype("string") != "control"]
    p = p.reset_index(drop=True)
    ids = [c for c in (customer_col, "offer_id", "channel", date_col) if c in p.columns]
    cust = first_per_key(customers, customer_col).set_index(customer_col)
    code = key_positions(p[customer_col], cust.index)
    found = []
    if (code < 0).any():
        found.append(_violations("unknown customer", p.loc[code < 0, ids], "customer not in the customers table"))
    known = code >= 0
    day = _days(p[date_col], as_of, "plan", date_col)
    # channel codes in name order (as value_counts groups names), -1 where missing: no text compared per row
    chan, channels = pd.factorize(p["channel"], sort=True)
    names = channels.astype("string").to_numpy()

    consented = np.zeros(len(p), dtype=bool)
    for channel, column in policy.consent.items():
        rows = np.isin(chan, np.flatnonzero(names == channel)) & known
        if column in cust.columns:
            consented[rows] = _as_bool(cust[column])[code[rows]]
    found.append(_violations("consent", p.loc[~consented & known, ids], "no consent for this channel"))

    if policy.quiet_days_after_purchase > 0 and last_purchase_col in cust.columns:
        last = pd.to_datetime(cust[last_purchase_col], errors="coerce")
        since = (pd.DatetimeIndex(last).normalize() - as_of.normalize()).days.to_numpy(dtype=float)
        gap = day - np.where(known, since[np.maximum(code, 0)], np.nan)
        bad = gap < policy.quiet_days_after_purchase
        found.append(_violations("quiet days", p.loc[bad, ids], [f"{g:.0f} days after a purchase" for g in gap[bad]]))

    # all contacts actually made or planned, per customer and day, for the rolling windows and the cool-down
    hist_keys = _history_keys(history, cust.index, as_of, customer_col, date_col, group_col)
    plan_keys = code[known] * _SPAN + day[known] + _OFFSET
    keys = np.r_[hist_keys, plan_keys]
    is_plan = np.r_[np.zeros(len(hist_keys), np.int64), np.ones(len(plan_keys), np.int64)]
    order = np.argsort(keys, kind="stable")
    keys, is_plan = keys[order], is_plan[order]
    cum_plan = np.r_[0, np.cumsum(is_plan)]
    cust_of = keys // _SPAN
    for kind, width, cap in (("weekly cap", policy.week_days, policy.max_per_week),
                             ("monthly cap", policy.month_days, policy.max_per_month)):
        lo = np.searchsorted(keys, keys - width + 1, side="left")
        hi = np.searchsorted(keys, keys, side="right")
        bad = ((hi - lo) > cap) & (cum_plan[hi] - cum_plan[lo] > 0)
        bad &= np.r_[True, keys[1:] != keys[:-1]]          # one row per (customer, window end day)
        found.append(pd.DataFrame({"kind": kind, customer_col: cust.index[cust_of[bad]],
                                   date_col: as_of.normalize() + pd.to_timedelta(keys[bad] % _SPAN - _OFFSET, "D"),
                                   "detail": [f"{n} contacts in {width} days (max {cap})" for n in (hi - lo)[bad]]}))
    if policy.min_days_between > 0:
        close = (cust_of[1:] == cust_of[:-1]) & (keys[1:] - keys[:-1] < policy.min_days_between) \
            & ((is_plan[1:] + is_plan[:-1]) > 0)
        idx = np.flatnonzero(close) + 1
        found.append(pd.DataFrame({"kind": "cool-down", customer_col: cust.index[cust_of[idx]],
                                   date_col: as_of.normalize() + pd.to_timedelta(keys[idx] % _SPAN - _OFFSET, "D"),
                                   "detail": [f"{g} days after the previous contact (min {policy.min_days_between})"
                                              for g in keys[idx] - keys[idx - 1]]}))

    week = (day - 1) // 7
    counts = pd.DataFrame({"channel": chan, "week": week})[chan >= 0].value_counts().rename("n").reset_index()
    load = pd.DataFrame({"channel": names[counts["channel"].to_numpy()], "week": counts["week"], "n": counts["n"]})
    cap = load["channel"].map(policy.channel_capacity_per_week)
    over = load[cap.notna() & (load["n"] > cap)]
    found.append(pd.DataFrame({"kind": "capacity", "channel": over["channel"],
                               date_col: as_of.normalize() + pd.to_timedelta(over["week"] * 7 + 1, "D"),
                               "detail": [f"{n} contacts in planning week {w} (capacity {c:g})"
                                          for n, w, c in zip(over["n"], over["week"], cap[over.index], strict=True)]}))
    if offers is not None:
        by_id = {o.offer_id: o for o in offers}
        counts = p["offer_id"].value_counts()
        for offer_id, n in counts.items():
            offer = by_id.get(offer_id)
            if offer is None:
                found.append(pd.DataFrame({"kind": ["unknown offer"], "offer_id": [offer_id],
                                           "detail": [f"{n} contacts for an offer not in the catalogue"]}))
            elif offer.capacity is not None and n > offer.capacity:
                found.append(pd.DataFrame({"kind": ["capacity"], "offer_id": [offer_id],
                                           "detail": [f"{n} contacts (offer capacity {offer.capacity})"]}))
        dates = pd.to_datetime(p[date_col])
        start = p["offer_id"].map({k: o.valid_from for k, o in by_id.items()})
        end = p["offer_id"].map({k: o.valid_to for k, o in by_id.items()})
        bad = ((start.notna() & (dates < start)) | (end.notna() & (dates > end))).to_numpy()
        found.append(_violations("offer validity", p.loc[bad, ids], "contact date outside the offer's validity"))
    if policy.budget is not None:
        spent = float(p["cost"].sum())
        if spent > policy.budget + 1e-6:
            found.append(pd.DataFrame({"kind": ["budget"], "detail": [f"cost {spent:,.2f} > budget "
                                                                      f"{policy.budget:,.2f}"]}))
    found = [f for f in found if len(f)]
    if not found:
        return pd.DataFrame(columns=columns)
    return pd.concat(found, ignore_index=True).reindex(columns=columns)
