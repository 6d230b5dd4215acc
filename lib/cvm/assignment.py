"""Optimal assignment of offers to customers: maximise expected incremental margin under contact constraints.

The input is a long frame of candidate contacts, one row per (customer, offer, channel, discount, contact date),
already filtered for eligibility and consent, with `value` (expected incremental margin) and `cost` (contact cost).
Each customer gets at most one row per contact date and at most `max_per_customer` rows in total; offers and channels
(per contact date) have capacities and the plan has a budget. Rows with value <= 0 are never chosen.

`solve_exact` solves the integer programme with HiGHS (small problems). `solve_scalable` relaxes the coupling
constraints (capacities, budget) with Lagrange multipliers, starts them from the exact LP duals on a random sample of
customers, refines them on all customers by projected subgradient steps, then lets every customer take his best row by
reduced value (numpy argmax over a customers x options matrix), repairs infeasibility greedily and fills spare capacity
greedily. The Lagrangian dual value at the multipliers is an upper bound on the LP optimum, hence on the best plan.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from cvm.errors import InputError

#: Columns a candidate frame must have.
CANDIDATE_COLUMNS = ("customer_id", "offer_id", "channel", "discount_pct", "contact_date", "value", "cost")


@dataclass(frozen=True)
class Constraints:
    """Limits of a plan. Offer capacity is over the whole plan; channel capacity applies to each contact date.

    `max_per_customer` is one number for everyone or a Series of caps indexed by customer id (e.g. what the contact
    policy leaves after counting the history). Offers and channels missing from the mappings are unconstrained.
    """

    max_per_customer: int | pd.Series = 1
    offer_capacity: Mapping[str, float] = field(default_factory=dict)
    channel_capacity: Mapping[str, float] = field(default_factory=dict)
    budget: float | None = None


@dataclass
class Assignment:
    """A solved plan: the chosen candidate rows, objective, upper bound, relative gap and one row per coupling
    constraint (kind, capacity, used, dual = value of one more unit, binding)."""

    plan: pd.DataFrame
    objective: float
    bound: float
    gap: float
    constraints: pd.DataFrame
    solver: str
    seconds: float

    @property
    def duals(self) -> pd.Series:
        """Shadow price per constraint: extra objective from one more unit of capacity (currency for the budget)."""
        return self.constraints["dual"]

    @property
    def binding(self) -> pd.Series:
        """True where the constraint has no room for one more contact."""
        return self.constraints["binding"]


@dataclass
class _Problem:
    """Candidates with value > 0 sorted by (customer, date, priority), laid out as a padded groups x width matrix."""

    rows: np.ndarray          # position of each kept row in the candidate frame
    value: np.ndarray         # padded (groups, width), -inf in padding
    cost: np.ndarray          # padded, 0 in padding
    slot: np.ndarray          # padded, index into slot_* arrays
    starts: np.ndarray        # first flat row of each group
    group_customer: np.ndarray
    customer_cap: np.ndarray  # per customer code
    n_customers: int
    slot_offer: np.ndarray    # resource index of the slot's offer, or m (no resource)
    slot_channel: np.ndarray
    capacity: np.ndarray      # per coupling resource
    names: list[str]
    kinds: list[str]
    budget: int | None        # index of the budget resource
    limited: np.ndarray       # groups of customers with more contact dates than their cap

    @property
    def m(self) -> int:
        return len(self.capacity)

    def flat(self, g: np.ndarray, j: np.ndarray) -> np.ndarray:
        return self.starts[g] + j


def _validate(candidates: pd.DataFrame, customer_col: str, date_col: str) -> None:
    need = [customer_col if c == "customer_id" else date_col if c == "contact_date" else c for c in CANDIDATE_COLUMNS]
    missing = [c for c in need if c not in candidates.columns]
    if missing:
        raise InputError(f"candidates: missing column(s) {missing}; build them with cvm.offers.build_candidates "
                         "and add 'value' (expected incremental margin) and 'cost' (contact cost).")
    for col in ("value", "cost"):
        x = pd.to_numeric(candidates[col], errors="coerce").to_numpy(dtype=float)
        bad = int((~np.isfinite(x)).sum())
        if bad:
            raise InputError(f"candidates: column '{col}' has {bad} missing or non-numeric rows; fill them "
                             "(e.g. value 0 for customers without an uplift score).")
    for col in need[:4]:
        bad = int(candidates[col].isna().sum())
        if bad:
            raise InputError(f"candidates: column '{col}' has {bad} missing rows; every candidate needs it.")
    neg = int((candidates["cost"].to_numpy(dtype=float) < 0).sum())
    if neg:
        raise InputError(f"candidates: column 'cost' has {neg} negative rows; contact costs must be >= 0.")


def _build(candidates: pd.DataFrame, constraints: Constraints, customer_col: str, date_col: str) -> _Problem:
    _validate(candidates, customer_col, date_col)
    value_all = candidates["value"].to_numpy(dtype=float)
    cost_all = candidates["cost"].to_numpy(dtype=float)
    offer_codes, offers = pd.factorize(candidates["offer_id"])
    chan_codes, chans = pd.factorize(candidates["channel"])
    date_codes, dates = pd.factorize(candidates[date_col])
    cust_codes, customers = pd.factorize(candidates[customer_col])

    # coupling resources: offers with a capacity, channels with a capacity (one per contact date), the budget
    names, kinds, caps = [], [], []
    offer_res = np.full(len(offers) + 1, -1)
    for i, o in enumerate(offers):
        if o in constraints.offer_capacity:
            offer_res[i] = len(names)
            names.append(f"offer:{o}"), kinds.append("offer"), caps.append(float(constraints.offer_capacity[o]))
    chan_date_res = np.full((len(chans), len(dates)), -1)
    for i, c in enumerate(chans):
        if c in constraints.channel_capacity:
            for d_i, d in enumerate(dates):
                chan_date_res[i, d_i] = len(names)
                label = d.date() if isinstance(d, pd.Timestamp) else d
                names.append(f"channel:{c}@{label}"), kinds.append("channel")
                caps.append(float(constraints.channel_capacity[c]))
    budget = None
    if constraints.budget is not None:
        budget = len(names)
        names.append("budget"), kinds.append("budget"), caps.append(float(constraints.budget))
    capacity = np.asarray(caps, dtype=float)
    if (capacity < 0).any():
        negative = [n for n, c in zip(names, caps, strict=True) if c < 0]
        raise InputError(f"constraints: negative capacity for {negative}; capacities and budget must be >= 0.")
    m = len(names)
    r_offer = offer_res[offer_codes]
    r_chan = chan_date_res.ravel()[chan_codes.astype(np.int64) * len(dates) + date_codes]
    r_offer[r_offer < 0] = m
    r_chan[r_chan < 0] = m

    if isinstance(constraints.max_per_customer, pd.Series):
        caps_c = constraints.max_per_customer.reindex(customers)
        missing = int(caps_c.isna().sum())
        if missing:
            raise InputError(f"constraints.max_per_customer: {missing} candidate customers have no cap; "
                             "give every customer in the candidates a cap (0 to exclude).")
        customer_cap = caps_c.to_numpy(dtype=float).astype(np.int64)
    else:
        customer_cap = np.full(len(customers), int(constraints.max_per_customer), dtype=np.int64)

    # rows that can never be chosen get value -inf: value <= 0, no room for one contact, customer cap 0
    cap_ext = np.append(capacity, np.inf)
    keep = (value_all > 0) & (cap_ext[r_offer] >= 1) & (cap_ext[r_chan] >= 1) & (customer_cap[cust_codes] > 0)
    if budget is not None:
        keep &= cost_all <= capacity[budget]
    value_all = np.where(keep, value_all, -np.inf)

    # groups = (customer, contact date); rows sorted by group, then priority (ties in value go to the first row)
    gkey = cust_codes.astype(np.int64) * max(len(dates), 1) + date_codes
    if "priority" in candidates.columns or (len(gkey) > 1 and (gkey[1:] < gkey[:-1]).any()):
        prio = (candidates["priority"].to_numpy(dtype=float) if "priority" in candidates.columns
                else np.zeros(len(gkey)))
        rows = np.lexsort((prio, gkey))
        gkey = gkey[rows]
    else:
        rows = np.arange(len(gkey))
    new = np.r_[True, gkey[1:] != gkey[:-1]] if len(rows) else np.zeros(0, bool)
    starts = np.flatnonzero(new)
    sizes = np.diff(np.r_[starts, len(rows)])
    width = int(sizes.max()) if len(sizes) else 1

    slot_key = r_offer[rows] * (m + 1) + r_chan[rows]
    slot_vals = np.flatnonzero(np.bincount(slot_key, minlength=(m + 1) ** 2))
    slot_index = np.zeros((m + 1) ** 2, dtype=np.int32)
    slot_index[slot_vals] = np.arange(len(slot_vals), dtype=np.int32)
    shape = (len(starts), width)
    if len(rows) == shape[0] * width:   # every group has the same number of rows: a plain reshape
        value = value_all[rows].reshape(shape)
        cost = cost_all[rows].reshape(shape)
        slot = slot_index[slot_key].reshape(shape)
    else:
        group = np.repeat(np.arange(len(starts)), sizes)
        pos = np.arange(len(rows)) - starts[group]
        value = np.full(shape, -np.inf)
        cost = np.zeros(shape)
        slot = np.zeros(shape, dtype=np.int32)
        value[group, pos] = value_all[rows]
        cost[group, pos] = cost_all[rows]
        slot[group, pos] = slot_index[slot_key]
    cust = cust_codes[rows]
    group_customer = cust[starts]
    over = np.bincount(group_customer, minlength=len(customers)) > customer_cap
    return _Problem(rows=rows, value=value, cost=cost, slot=slot, starts=starts, group_customer=group_customer,
                    customer_cap=customer_cap, n_customers=len(customers),
                    slot_offer=slot_vals // (m + 1), slot_channel=slot_vals % (m + 1),
                    capacity=capacity, names=names, kinds=kinds, budget=budget,
                    limited=np.flatnonzero(over[group_customer]))


def _row_usage(p: _Problem, g: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Resource consumption (rows x m) of the given padded cells, as a sparse matrix."""
    s = p.slot[g, j]
    n = len(g)
    cols = [p.slot_offer[s], p.slot_channel[s]]
    data = [np.ones(n), np.ones(n)]
    if p.budget is not None:
        cols.append(np.full(n, p.budget))
        data.append(p.cost[g, j])
    ri = np.tile(np.arange(n), len(cols))
    ci, d = np.concatenate(cols), np.concatenate(data)
    ok = ci < p.m
    return sparse.csr_matrix((d[ok], (ri[ok], ci[ok])), shape=(n, p.m))


def _usage(p: _Problem, g: np.ndarray, j: np.ndarray) -> np.ndarray:
    s = p.slot[g, j]
    used = (np.bincount(p.slot_offer[s], minlength=p.m + 1)[: p.m]
            + np.bincount(p.slot_channel[s], minlength=p.m + 1)[: p.m]).astype(float)
    if p.budget is not None:
        used[p.budget] = p.cost[g, j].sum()
    return used


def _slot_penalty(p: _Problem, lam: np.ndarray) -> np.ndarray:
    lam_ext = np.append(lam, 0.0)
    return lam_ext[p.slot_offer] + lam_ext[p.slot_channel]


def _relaxed(p: _Problem, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Best choice of every customer at multipliers `lam`: (groups, columns, Lagrangian dual value)."""
    red = p.value - _slot_penalty(p, lam)[p.slot]
    if p.budget is not None and lam[p.budget] > 0:
        red -= lam[p.budget] * p.cost
    j = np.argmax(red, axis=1)
    best = red[np.arange(len(j)), j]
    take = _top_k(p, best)
    return np.flatnonzero(take), j[take], float(best[take].sum() + lam @ p.capacity)


def _top_k(p: _Problem, best: np.ndarray) -> np.ndarray:
    """Groups taken: positive best value, and at most `customer_cap` groups (dates) per customer, best first."""
    take = best > 0
    sel = p.limited
    if not len(sel):
        return take
    order = sel[np.lexsort((-best[sel], p.group_customer[sel]))]
    gc = p.group_customer[order]
    first = np.r_[0, np.flatnonzero(gc[1:] != gc[:-1]) + 1]
    rank = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
    take[order] &= rank < p.customer_cap[gc]
    return take


def _consumption(p: _Problem, g: np.ndarray, j: np.ndarray, k: int) -> np.ndarray:
    """Units of resource `k` used by each of the given cells."""
    if k == p.budget:
        return p.cost[g, j]
    s = p.slot[g, j]
    return ((p.slot_offer[s] == k) | (p.slot_channel[s] == k)).astype(float)


def _running_count(keys: np.ndarray) -> np.ndarray:
    """For each position, how many positions up to and including it carry the same key."""
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    out = np.empty(len(keys), dtype=np.int64)
    out[order] = np.arange(1, len(keys) + 1) - np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    return out


def _repair(p: _Problem, g: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop chosen rows until every coupling constraint holds: least valuable first (value per cost for the budget)."""
    keep = np.ones(len(g), bool)
    val = p.value[g, j]
    used = _usage(p, g, j)
    order_k = [k for k in range(p.m) if k != p.budget] + ([p.budget] if p.budget is not None else [])
    for k in order_k:
        if used[k] <= p.capacity[k] + 1e-9:
            continue
        a = _consumption(p, g, j, k) * keep
        excess = a.sum() - p.capacity[k]
        if excess <= 1e-9:
            continue
        score = val / np.maximum(a, 1e-12) if k == p.budget else val
        idx = np.flatnonzero(a > 0)
        idx = idx[np.argsort(score[idx], kind="stable")]
        n_drop = int(np.searchsorted(np.cumsum(a[idx]), excess - 1e-9)) + 1
        keep[idx[:n_drop]] = False
    return g[keep], j[keep]


def _fill(p: _Problem, g: np.ndarray, j: np.ndarray, max_rounds: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Greedily add the most valuable rows that still fit, in vectorised rounds, until nothing more fits.

    In a round every open (customer, date) takes its best row among those whose resources have room; rows are accepted
    in order of value while the running use of each resource, counting all earlier rows of the round, fits.
    """
    taken = np.zeros(len(p.starts), bool)
    taken[g] = True
    count = np.bincount(p.group_customer[g], minlength=p.n_customers)
    several_dates = bool((np.bincount(p.group_customer, minlength=p.n_customers) > 1).any())
    gs, js = [g], [j]
    remaining = p.capacity - _usage(p, g, j)
    pool = np.flatnonzero(~taken)
    for _ in range(max_rounds):
        open_g = pool[count[p.group_customer[pool]] < p.customer_cap[p.group_customer[pool]]]
        if not len(open_g):
            break
        rem_ext = np.append(remaining, np.inf)
        fits = (rem_ext[p.slot_offer] >= 1) & (rem_ext[p.slot_channel] >= 1)
        v = np.where(fits[p.slot[open_g]], p.value[open_g], -np.inf)
        if p.budget is not None:
            v[p.cost[open_g] > remaining[p.budget] + 1e-9] = -np.inf
        jj = np.argmax(v, axis=1)
        best = v[np.arange(len(jj)), jj]
        ok = best > 0
        cand_g, cand_j, best = open_g[ok], jj[ok], best[ok]
        if not len(cand_g):
            break
        pool = cand_g   # room only shrinks: groups with nothing that fits now never get anything later
        order = np.argsort(-best, kind="stable")
        cand_g, cand_j = cand_g[order], cand_j[order]
        if several_dates:   # one new contact per customer per round, so customer caps hold
            _, first = np.unique(p.group_customer[cand_g], return_index=True)
            first.sort()
            cand_g, cand_j = cand_g[first], cand_j[first]
        s = p.slot[cand_g, cand_j]
        ro, rc = p.slot_offer[s], p.slot_channel[s]
        accept = (rem_ext[ro] >= _running_count(ro)) & (rem_ext[rc] >= _running_count(rc))
        if p.budget is not None:
            accept &= np.cumsum(p.cost[cand_g, cand_j]) <= remaining[p.budget] + 1e-9
        if not accept.any():
            break
        ag, aj = cand_g[accept], cand_j[accept]
        taken[ag] = True
        pool = pool[~taken[pool]]
        np.add.at(count, p.group_customer[ag], 1)
        remaining = remaining - _usage(p, ag, aj)
        gs.append(ag), js.append(aj)
    return np.concatenate(gs), np.concatenate(js)


def _primal(p: _Problem, g: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """A feasible plan from the relaxed choice: repair, then fill spare room."""
    g, j = _fill(p, *_repair(p, g, j))
    return g, j, float(p.value[g, j].sum())


def _lp(p: _Problem, groups: np.ndarray, scale: float,
        integer: bool) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """LP (or MILP) over the rows of `groups` with capacities times `scale`: (groups, columns, objective, duals)."""
    width = p.value.shape[1]
    gg = np.repeat(groups, width)
    jj = np.tile(np.arange(width), len(groups))
    real = np.isfinite(p.value[gg, jj])
    gg, jj = gg[real], jj[real]
    n = len(gg)
    if n == 0:
        return gg, jj, 0.0, np.zeros(p.m)
    gidx = np.unique(gg, return_inverse=True)[1]
    blocks = [sparse.csr_matrix((np.ones(n), (gidx, np.arange(n))))]
    rhs = [np.ones(gidx.max() + 1)]
    cust = p.group_customer[gg]
    n_dates = np.bincount(p.group_customer[groups], minlength=p.n_customers)
    if (n_dates > p.customer_cap).any():
        cu, cidx = np.unique(cust, return_inverse=True)
        blocks.append(sparse.csr_matrix((np.ones(n), (cidx, np.arange(n)))))
        rhs.append(p.customer_cap[cu].astype(float))
    blocks.append(_row_usage(p, gg, jj).T.tocsr())
    rhs.append(p.capacity * scale)
    a_ub = sparse.vstack(blocks).tocsr()
    b_ub = np.concatenate(rhs)
    c = -p.value[gg, jj]
    if integer:
        res = milp(c, constraints=LinearConstraint(a_ub, -np.inf, b_ub), integrality=np.ones(n),
                   bounds=Bounds(0, 1))
        if res.x is None:
            raise RuntimeError(f"MILP solver failed: {res.message}")
        x, duals = res.x, np.zeros(p.m)
    else:
        res = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=(0, 1), method="highs")
        if res.status != 0:
            raise RuntimeError(f"LP solver failed: {res.message}")
        x, duals = res.x, -res.ineqlin.marginals[-p.m:] if p.m else np.zeros(0)
    chosen = x > 0.5
    return gg[chosen], jj[chosen], float(-res.fun), np.maximum(duals, 0.0)


def _result(p: _Problem, candidates: pd.DataFrame, g: np.ndarray, j: np.ndarray, bound: float,
            lam: np.ndarray, solver: str, t0: float) -> Assignment:
    rows = p.rows[p.flat(g, j)]
    plan = candidates.iloc[np.sort(rows)].reset_index(drop=True)
    objective = float(plan["value"].sum())
    used = _usage(p, g, j)
    step = np.ones(p.m)
    if p.budget is not None:
        step[p.budget] = max(float(p.cost[np.isfinite(p.value)].max(initial=0.0)), 1e-9)
    table = pd.DataFrame({"kind": p.kinds, "capacity": p.capacity, "used": used, "dual": lam,
                          "binding": p.capacity - used < step - 1e-9}, index=pd.Index(p.names, name="constraint"))
    gap = (bound - objective) / bound if bound > 0 else 0.0
    return Assignment(plan=plan, objective=objective, bound=float(bound), gap=float(max(gap, 0.0)),
                      constraints=table, solver=solver, seconds=time.perf_counter() - t0)


def solve_exact(candidates: pd.DataFrame, constraints: Constraints, customer_col: str = "customer_id",
                date_col: str = "contact_date") -> Assignment:
    """Optimal plan by mixed-integer programming (HiGHS); bound and duals come from the LP relaxation.

    For small problems (up to some ten thousand candidate rows); use `solve_scalable` beyond.
    """
    t0 = time.perf_counter()
    p = _build(candidates, constraints, customer_col, date_col)
    groups = np.arange(len(p.starts))
    g, j, _, _ = _lp(p, groups, 1.0, integer=True)
    _, _, bound, duals = _lp(p, groups, 1.0, integer=False)
    return _result(p, candidates, g, j, bound, duals, "milp-highs", t0)


def solve_scalable(candidates: pd.DataFrame, constraints: Constraints, customer_col: str = "customer_id",
                   date_col: str = "contact_date", sample_customers: int = 5_000, iterations: int = 40,
                   tol: float = 0.002, seed: int = 0) -> Assignment:
    """Near-optimal plan for millions of customers by Lagrangian relaxation of the capacity and budget constraints.

    Multipliers start from the LP duals on `sample_customers` random customers (capacities scaled down, `seed`) and are
    refined on everyone by projected subgradient steps (Polyak step size) until the gap is below `tol` or after
    `iterations` steps. `bound` is the Lagrangian dual value: an upper bound on the LP, hence on any plan.
    """
    t0 = time.perf_counter()
    p = _build(candidates, constraints, customer_col, date_col)
    if p.m == 0:
        g, j, bound = _relaxed(p, np.zeros(0))
        return _result(p, candidates, g, j, bound, np.zeros(0), "greedy", t0)
    rng = np.random.default_rng(seed)
    if p.n_customers <= sample_customers:
        picked, scale = np.ones(p.n_customers, bool), 1.0
    else:
        picked = np.zeros(p.n_customers, bool)
        picked[rng.choice(p.n_customers, sample_customers, replace=False)] = True
        scale = sample_customers / p.n_customers
    _, _, _, lam = _lp(p, np.flatnonzero(picked[p.group_customer]), scale, integer=False)
    g, j, bound = _relaxed(p, lam)
    lam0 = best_lam = lam
    relaxed_at_best = (g, j)
    best_g, best_j, best_val = _primal(p, g, j)
    value = bound
    norm = np.where(p.capacity > 0, p.capacity, 1.0)
    theta, stall = 1.0, 0
    for _ in range(iterations):
        if bound - best_val <= tol * bound:
            break
        grad = 1.0 - _usage(p, g, j) / norm   # derivative of the dual value wrt normalised multipliers
        if grad @ grad <= 1e-18:
            break
        lam = np.maximum(lam * norm - theta * (value - best_val) / (grad @ grad) * grad, 0.0) / norm
        g, j, value = _relaxed(p, lam)
        if value < bound - 1e-9:
            bound, best_lam, relaxed_at_best, stall = value, lam, (g, j), 0
        else:
            stall += 1
            if stall >= 3:
                theta, stall = theta / 2, 0
    if best_lam is not lam0:
        cand_g, cand_j, val = _primal(p, *relaxed_at_best)
        if val > best_val:
            best_g, best_j, best_val = cand_g, cand_j, val
    return _result(p, candidates, best_g, best_j, bound, best_lam, "lagrangian", t0)
