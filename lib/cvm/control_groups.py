"""Randomised control groups: how many, who (stratified, reproducible by seed), and whether the groups are balanced.

Control customers stay in the plan with group = 'control': they are written to the contacts table like everyone else
but are not contacted, so that the campaign's incremental effect can be measured against them.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize

from cvm.errors import InputError
from cvm.keys import TEXT, first_per_key, per_distinct, text_at
from cvm.policy import ContactPolicy, ControlRule


def control_size(p_control: float | None = None, mde_abs: float | None = None, alpha: float = 0.05,
                 power: float = 0.8, ratio: float = 1.0, share: float | None = None,
                 n_total: int | None = None) -> int:
    """Customers needed in the control group.

    With `share` and `n_total`: round(share x n_total). Otherwise a two-sided power calculation for a difference in
    conversion rates (statsmodels NormalIndPower on Cohen's h from proportion_effectsize): the control size that detects
    an absolute lift `mde_abs` over the control rate `p_control`, with `ratio` = treatment size / control size.
    """
    if share is not None:
        if n_total is None or not 0 <= share < 1:
            raise InputError(f"control_size: a share needs n_total and 0 <= share < 1; got share={share}, "
                             f"n_total={n_total}.")
        return int(math.floor(share * n_total + 0.5))
    if p_control is None or mde_abs is None or not 0 < p_control < 1 or not 0 < p_control + mde_abs < 1 \
            or mde_abs == 0:
        raise InputError(f"control_size: need 0 < p_control < 1, mde_abs != 0 and 0 < p_control + mde_abs < 1; "
                         f"got p_control={p_control}, mde_abs={mde_abs}.")
    h = abs(proportion_effectsize(p_control + mde_abs, p_control))
    n = NormalIndPower().solve_power(effect_size=h, alpha=alpha, power=power, ratio=ratio, alternative="two-sided")
    return int(math.ceil(n))


def control_share_needed(n_total: int, p_control: float, mde_abs: float, alpha: float = 0.05,
                         power: float = 0.8) -> float:
    """Smallest control share of `n_total` customers that detects `mde_abs` (same normal approximation on Cohen's h
    as `control_size`). NaN when even a 50/50 split is not enough: raise the MDE or pool campaigns."""
    h = abs(proportion_effectsize(p_control + mde_abs, p_control))
    c = (h / (norm.ppf(1 - alpha / 2) + norm.ppf(power))) ** 2     # need 1/n_c + 1/n_t <= c
    disc = n_total ** 2 - 4 * n_total / c
    if n_total <= 0 or disc < 0:
        return math.nan
    return float(math.ceil((n_total - math.sqrt(disc)) / 2) / n_total)


def control_shares(plan: pd.DataFrame, policy: ContactPolicy, by: str = "offer_id",
                   type_col: str = "campaign_type", customer_col: str = "customer_id") -> pd.DataFrame:
    """Control share per campaign (value of `by`) from the policy: fixed share or power calculation on its size.

    Columns: n_customers, rule ('share' or 'power'), share, powered (False when the campaign is too small to detect the
    lift even at 50/50; its share is then 0.5).
    """
    rows = []
    for key, part in plan.groupby(by, sort=True):
        ctype = str(part[type_col].iloc[0]) if type_col in part.columns else None
        rule: ControlRule = policy.control_rule(str(key), ctype)
        n = int(part[customer_col].nunique())
        if rule.share is not None:
            rows.append({by: key, "n_customers": n, "rule": "share", "share": rule.share, "powered": True})
            continue
        share = control_share_needed(n, rule.baseline_rate, rule.mde_abs, rule.alpha, rule.power)
        rows.append({by: key, "n_customers": n, "rule": "power", "share": 0.5 if math.isnan(share) else share,
                     "powered": not math.isnan(share)})
    return pd.DataFrame(rows, columns=[by, "n_customers", "rule", "share", "powered"])


def _quotas(cell_by: np.ndarray, cell_n: np.ndarray, by_values: Sequence[object],
            control_share: float | Mapping[object, float] | None,
            n_control: Mapping[object, int] | None) -> np.ndarray:
    """Control count per cell: round(share x n), or n_control of the arm split over its cells by largest remainder."""
    if n_control is None:
        share = np.array([control_share.get(b, np.nan) if isinstance(control_share, Mapping) else control_share
                          for b in by_values], dtype=float)[cell_by]
        bad = np.isnan(share) | (share < 0) | (share >= 1)
        if bad.any():
            raise InputError("assign_control: every arm needs a control share in [0, 1); missing or invalid for "
                             f"{sorted({str(by_values[b]) for b in cell_by[bad]})}.")
        return np.floor(share * cell_n + 0.5).astype(np.int64)
    total = np.array([n_control.get(b, -1) for b in by_values], dtype=np.int64)
    arm_n = np.bincount(cell_by, weights=cell_n, minlength=len(by_values))
    if (total < 0).any() or (total > arm_n).any():
        raise InputError("assign_control: n_control must give 0 <= n <= customers of the arm for every arm; check "
                         f"{[str(b) for b, t, a in zip(by_values, total, arm_n, strict=True) if t < 0 or t > a]}.")
    exact = total[cell_by] * cell_n / arm_n[cell_by]
    quota = np.floor(exact).astype(np.int64)
    short = total - np.bincount(cell_by, weights=quota, minlength=len(by_values)).astype(np.int64)
    order = np.lexsort((-(exact - quota), cell_by))
    first = np.searchsorted(cell_by[order], np.arange(len(by_values)))
    rank = np.arange(len(order)) - first[cell_by[order]]
    quota[order] += (rank < short[cell_by[order]]).astype(np.int64)
    return quota


def assign_control(plan: pd.DataFrame, strata: Sequence[str], control_share: float | Mapping[object, float] | None
                   = None, n_control: Mapping[object, int] | None = None, by: str = "offer_id", seed: int = 0,
                   customer_col: str = "customer_id", group_col: str = "group") -> pd.DataFrame:
    """The plan with a `group` column (treatment | control), randomised per customer within each arm (`by`) and
    stratum (`strata` columns, missing values form their own stratum), reproducible by `seed`.

    Give `control_share` (one share or one per arm) or `n_control` per arm. Each stratum gets round(share x size)
    controls (within +-0.5 customer); with n_control, the arm total is exact and each stratum within +-1 of its share.
    A customer with several rows in one arm is in the same group on all of them.
    """
    if (control_share is None) == (n_control is None):
        raise InputError("assign_control: give exactly one of control_share or n_control.")
    missing = [c for c in (customer_col, by, *strata) if c not in plan.columns]
    if missing:
        raise InputError(f"plan: column(s) {missing} missing; they are needed to stratify the control group.")
    unit_of_row = plan.groupby([by, customer_col], sort=False, dropna=False).ngroup().to_numpy()
    units = plan.iloc[np.unique(unit_of_row, return_index=True)[1]]   # first row of each unit, in plan order
    by_codes, by_values = pd.factorize(units[by], use_na_sentinel=False)
    cell_cols = [by_codes] + [pd.factorize(units[s].astype("string"), use_na_sentinel=False)[0] for s in strata]
    cell = np.zeros(len(units), dtype=np.int64)     # one code per (arm, stratum levels), in order of appearance
    for codes in cell_cols:
        cell = pd.factorize(cell * (int(codes.max(initial=0)) + 1) + codes)[0]
    cell_n = np.bincount(cell)
    cell_by = np.zeros(len(cell_n), dtype=np.int64)
    cell_by[cell] = by_codes
    quota = _quotas(cell_by, cell_n, list(by_values), control_share, n_control)
    u = np.random.default_rng(seed).random(len(units))
    order = np.lexsort((u, cell))
    first = np.searchsorted(cell[order], np.arange(len(cell_n)))
    rank = np.empty(len(units), dtype=np.int64)
    rank[order] = np.arange(len(units)) - first[cell[order]]
    out = plan.copy()
    out[group_col] = text_at(["treatment", "control"], (rank < quota[cell]).astype(np.int8)[unit_of_row]).array
    return out


def global_holdout(customers: pd.DataFrame, share: float, strata: Sequence[str], seed: int,
                   customer_col: str = "customer_id", group_col: str = "group") -> pd.DataFrame:
    """A stratified random share of all customers never contacted by any campaign (group = 'control')."""
    frame = first_per_key(customers, customer_col).assign(_all="all")
    out = assign_control(frame, strata, control_share=share, by="_all", seed=seed, customer_col=customer_col,
                         group_col=group_col)
    return out.drop(columns="_all")


def balance_table(plan: pd.DataFrame, covariates: Sequence[str], group_col: str = "group",
                  threshold: float = 0.1) -> pd.DataFrame:
    """Treatment vs control mean of each covariate (share of each level for categories), the standardised mean
    difference (difference / sqrt of the mean of the two variances) and `imbalanced` where |SMD| > threshold."""
    if group_col not in plan.columns:
        raise InputError(f"plan: column '{group_col}' missing; run assign_control first.")
    treat = (plan[group_col] == "treatment").to_numpy()
    ctrl = (plan[group_col] == "control").to_numpy()
    if not treat.any() or not ctrl.any():
        raise InputError(f"plan: balance needs both groups; found {int(treat.sum())} treatment and "
                         f"{int(ctrl.sum())} control rows.")
    rows = []
    for col in covariates:
        if col not in plan.columns:
            raise InputError(f"plan: covariate '{col}' missing.")
        s = plan[col]
        if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            parts = {col: s.astype(float)}
        else:
            parts = {f"{col}={lvl}": (s.astype("string") == lvl).astype(float)
                     for lvl in s.astype("string").dropna().unique()}
        for name, x in parts.items():
            xt, xc = x[treat].dropna(), x[ctrl].dropna()
            mt, mc = xt.mean(), xc.mean()
            sd = math.sqrt((xt.var(ddof=1) + xc.var(ddof=1)) / 2) if len(xt) > 1 and len(xc) > 1 else math.nan
            smd = (mt - mc) / sd if sd > 0 else (0.0 if mt == mc else math.inf)
            rows.append({"covariate": name, "mean_treatment": mt, "mean_control": mc, "smd": smd,
                         "imbalanced": bool(abs(smd) > threshold)})
    return pd.DataFrame(rows).set_index("covariate")


def campaign_ids(plan: pd.DataFrame, date_col: str = "contact_date") -> pd.Series:
    """A plan's campaign ids: offer_id-YYYYMMDD of the contact date (each distinct date formatted once)."""
    days = per_distinct(pd.to_datetime(plan[date_col]), lambda d: d.dt.strftime("%Y%m%d"))
    return plan["offer_id"].astype(str) + "-" + days


def arm_labels(plan: pd.DataFrame) -> pd.Series:
    """A plan's arms: '<discount>pct_<channel>' (each distinct discount formatted once)."""
    return (plan["discount_pct"].map({d: f"{d:g}pct" for d in plan["discount_pct"].unique()}) + "_"
            + plan["channel"].astype(str))


def to_contacts(plan: pd.DataFrame, customer_col: str = "customer_id", date_col: str = "contact_date",
                group_col: str = "group") -> pd.DataFrame:
    """Contacts-table rows (see cvm.contract.CONTACTS) for the plan, control rows included (`campaign_ids`,
    `arm_labels`)."""
    dates = pd.to_datetime(plan[date_col])
    return pd.DataFrame({
        "customer_id": _values(plan[customer_col]),
        "campaign_id": _values(campaign_ids(plan, date_col)),
        "arm": _values(arm_labels(plan)),
        "group": _values(plan[group_col]),
        "channel": _values(plan["channel"]),
        "contact_date": dates.to_numpy(),
        "discount_pct": plan["discount_pct"].to_numpy(dtype=float),
    })


def _values(column: pd.Series) -> np.ndarray | pd.api.extensions.ExtensionArray:
    """The column's values for a new frame: Arrow text stays Arrow text (to_numpy would make a Python string per row,
    which the frame turns back into Arrow text); anything else as a NumPy array."""
    return column.array if column.dtype == TEXT else column.to_numpy()
