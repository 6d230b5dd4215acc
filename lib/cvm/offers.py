"""The offer catalogue as data: load and validate it, test eligibility, and expand the candidate contacts.

A catalogue is a YAML file with a top-level `offers:` list. Eligibility is a small dict language over customer columns,
all conditions must hold:

    eligibility:
      rfm_segment: [At Risk, Can't Lose Them]     # a list: the value must be one of these
      lifecycle_stage: {not_in: [new]}             # operators: in, not_in, ">=", ">", "<=", "<", "==", "!="
      clv: {">=": 50}                              # several operators on one column are combined with AND

A customer with a missing value in a tested column is not eligible.
"""
from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cvm.config import read_yaml
from cvm.contract import CAMPAIGN_TYPES, CHANNELS
from cvm.errors import InputError

_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq,
            "!=": operator.ne}
_SETS = ("in", "not_in")
_REQUIRED = ("offer_id", "name", "campaign_type", "channels", "margin_pct", "cost_per_contact")


@dataclass(frozen=True)
class Offer:
    """One modular offer package: who may get it, on which channels, at which discounts, at what cost."""

    offer_id: str
    name: str
    campaign_type: str
    channels: tuple[str, ...]
    discount_levels: tuple[float, ...]
    margin_pct: float
    cost_per_contact: dict[str, float]
    eligibility: dict[str, dict[str, object]] = field(default_factory=dict)
    capacity: int | None = None
    valid_from: pd.Timestamp | None = None
    valid_to: pd.Timestamp | None = None
    description: str = ""

    def valid_on(self, day: pd.Timestamp) -> bool:
        """True when the offer may be sent on `day`."""
        return ((self.valid_from is None or day >= self.valid_from)
                and (self.valid_to is None or day <= self.valid_to))


def _normalise_rule(where: str, column: str, rule: object) -> dict[str, object]:
    if isinstance(rule, list):
        return {"in": list(rule)}
    if not isinstance(rule, dict) or not rule:
        raise InputError(f"{where}: eligibility rule for '{column}' must be a list of allowed values or a dict of "
                         f"operators ({', '.join((*_SETS, *_COMPARE))}); got {rule!r}.")
    out: dict[str, object] = {}
    for op, arg in rule.items():
        if op in _SETS:
            if not isinstance(arg, list):
                raise InputError(f"{where}: eligibility '{column}: {op}' needs a list of values; got {arg!r}.")
        elif op in _COMPARE:
            if op not in ("==", "!=") and (isinstance(arg, bool) or not isinstance(arg, (int, float))):
                raise InputError(f"{where}: eligibility '{column}: {op}' needs a number; got {arg!r}.")
        else:
            raise InputError(f"{where}: unknown eligibility operator '{op}' for '{column}'; use one of "
                             f"{', '.join((*_SETS, *_COMPARE))}.")
        out[str(op)] = arg
    return out


def _date(where: str, key: str, value: object) -> pd.Timestamp | None:
    if value is None:
        return None
    try:
        return pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{where}: field '{key}' is not a date: {value!r} (use YYYY-MM-DD).") from exc


def _parse(raw: object, where: str) -> Offer:
    if not isinstance(raw, dict):
        raise InputError(f"{where}: each offer must be a mapping of fields; got {raw!r}.")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise InputError(f"{where}: missing field(s) {missing}.")
    where = f"{where} (offer_id {raw['offer_id']})"
    ctype = raw["campaign_type"]
    if ctype not in CAMPAIGN_TYPES:
        raise InputError(f"{where}: field 'campaign_type' is {ctype!r}; use one of {list(CAMPAIGN_TYPES)}.")
    channels = raw["channels"]
    if not isinstance(channels, list) or not channels or any(c not in CHANNELS for c in channels):
        raise InputError(f"{where}: field 'channels' must be a non-empty list from {list(CHANNELS)}; got {channels!r}.")
    costs = raw["cost_per_contact"]
    if not isinstance(costs, dict) or any(c not in costs for c in channels):
        raise InputError(f"{where}: field 'cost_per_contact' must give a cost for every channel {channels}; "
                         f"got {costs!r}.")
    if any(not isinstance(costs[c], (int, float)) or costs[c] < 0 for c in channels):
        raise InputError(f"{where}: field 'cost_per_contact' must hold numbers >= 0; got {costs!r}.")
    discounts = raw.get("discount_levels", [0])
    if (not isinstance(discounts, list) or not discounts
            or any(not isinstance(d, (int, float)) or not 0 <= d < 100 for d in discounts)):
        raise InputError(f"{where}: field 'discount_levels' must be a non-empty list of percents in [0, 100); "
                         f"got {discounts!r}.")
    margin = raw["margin_pct"]
    if not isinstance(margin, (int, float)) or not 0 < margin <= 100:
        raise InputError(f"{where}: field 'margin_pct' must be a percent in (0, 100]; got {margin!r}.")
    if max(discounts) >= margin:
        raise InputError(f"{where}: the largest discount {max(discounts)}% is not below the margin {margin}%: "
                         "every sale would lose money; lower 'discount_levels'.")
    capacity = raw.get("capacity")
    if capacity is not None and (not isinstance(capacity, int) or capacity < 0):
        raise InputError(f"{where}: field 'capacity' must be a whole number >= 0 or absent; got {capacity!r}.")
    elig = raw.get("eligibility") or {}
    if not isinstance(elig, dict):
        raise InputError(f"{where}: field 'eligibility' must map column names to rules; got {elig!r}.")
    valid_from, valid_to = _date(where, "valid_from", raw.get("valid_from")), _date(where, "valid_to",
                                                                                     raw.get("valid_to"))
    if valid_from is not None and valid_to is not None and valid_to < valid_from:
        raise InputError(f"{where}: 'valid_to' {valid_to.date()} is before 'valid_from' {valid_from.date()}.")
    return Offer(offer_id=str(raw["offer_id"]), name=str(raw["name"]), campaign_type=ctype,
                 channels=tuple(channels), discount_levels=tuple(float(d) for d in discounts),
                 margin_pct=float(margin), cost_per_contact={c: float(costs[c]) for c in channels},
                 eligibility={str(k): _normalise_rule(where, str(k), v) for k, v in elig.items()},
                 capacity=capacity, valid_from=valid_from, valid_to=valid_to,
                 description=str(raw.get("description", "")))


def load_offers(path: str | Path) -> list[Offer]:
    """Read and validate an offer catalogue (YAML with a top-level `offers:` list)."""
    path = Path(path)
    doc = read_yaml(path, "offer catalogue")
    if not isinstance(doc, dict) or not isinstance(doc.get("offers"), list) or not doc["offers"]:
        raise InputError(f"{path}: expected a top-level 'offers:' list with at least one offer.")
    offers = [_parse(raw, f"{path}: offer #{i + 1}") for i, raw in enumerate(doc["offers"])]
    ids = pd.Series([o.offer_id for o in offers])
    if ids.duplicated().any():
        raise InputError(f"{path}: duplicate offer_id {sorted(set(ids[ids.duplicated()]))}; ids must be unique.")
    return offers


def offers_table(offers: Sequence[Offer]) -> pd.DataFrame:
    """The catalogue as a readable table, one row per offer."""
    return pd.DataFrame([{
        "offer_id": o.offer_id, "name": o.name, "campaign_type": o.campaign_type, "channels": ", ".join(o.channels),
        "discount_levels": ", ".join(f"{d:g}%" for d in o.discount_levels), "margin_pct": o.margin_pct,
        "capacity": o.capacity, "valid_from": o.valid_from, "valid_to": o.valid_to,
        "eligibility": "; ".join(f"{k} {v}" for k, v in o.eligibility.items()),
    } for o in offers]).astype({"capacity": "Int64"})


def eligibility_mask(customers: pd.DataFrame, offer: Offer) -> np.ndarray:
    """Boolean array: which customers satisfy every eligibility rule of the offer (missing values fail)."""
    mask = np.ones(len(customers), dtype=bool)
    for column, rule in offer.eligibility.items():
        if column not in customers.columns:
            raise InputError(f"customers: column '{column}' is needed by the eligibility of offer {offer.offer_id} "
                             "but is missing; compute it first (e.g. segments) or remove the rule.")
        col = customers[column]
        present = col.notna().to_numpy()
        for op, arg in rule.items():
            if op in _SETS:
                hit = col.isin(arg).to_numpy()
                mask &= present & (hit if op == "in" else ~hit)
            else:
                values = col.to_numpy() if op in ("==", "!=") else pd.to_numeric(col, errors="coerce").to_numpy()
                with np.errstate(invalid="ignore"):
                    mask &= present & np.asarray(_COMPARE[op](values, arg), dtype=bool)
    return mask


def build_candidates(customers: pd.DataFrame, offers: Sequence[Offer], contact_dates: Sequence[object],
                     customer_col: str = "customer_id") -> pd.DataFrame:
    """All eligible (customer, offer, channel, discount, contact date) rows with the contact cost and offer fields.

    Offers are used only on dates inside their validity. Consent and the contact policy are applied afterwards by
    `cvm.policy.apply_policy`; the expected incremental margin (`value`) comes from the uplift model.
    """
    if customer_col not in customers.columns:
        raise InputError(f"customers: column '{customer_col}' is missing; it identifies the customer.")
    dates = [pd.Timestamp(d) for d in contact_dates]
    ids = customers[customer_col].array
    parts = []
    for offer in offers:
        eligible = np.flatnonzero(eligibility_mask(customers, offer))
        # one row per eligible customer x channel x discount level (customers outermost, discounts innermost)
        channels = np.repeat(np.array(offer.channels, dtype=object), len(offer.discount_levels))
        arm = np.tile(np.arange(len(channels)), len(eligible))
        columns = {customer_col: ids.take(np.repeat(eligible, len(channels))),
                   "channel": pd.array(channels, dtype="str").take(arm),
                   "discount_pct": np.tile(np.array(offer.discount_levels, dtype=float), len(offer.channels))[arm],
                   "cost": np.array([offer.cost_per_contact[c] for c in channels], dtype=float)[arm]}
        for day in dates:
            if not offer.valid_on(day) or not len(eligible):
                continue
            grid = pd.DataFrame(columns)
            grid["offer_id"] = offer.offer_id
            grid["campaign_type"] = offer.campaign_type
            grid["contact_date"] = day
            grid["margin_pct"] = offer.margin_pct
            parts.append(grid)
    columns = [customer_col, "offer_id", "campaign_type", "channel", "discount_pct", "contact_date", "cost",
               "margin_pct"]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]
