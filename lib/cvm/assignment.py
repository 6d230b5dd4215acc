"""Optimal assignment of offers to customers: maximise expected incremental margin under contact constraints.

The input is a long frame of candidate contacts, one row per (customer, offer, channel, discount, contact date),
already filtered for eligibility and consent, with `value` (expected incremental margin) and `cost` (contact cost).
Each customer gets at most one row per contact date and at most `max_per_customer` rows in total; offers and channels
(per contact date) have capacities and the plan has a budget. Rows with value <= 0 are never chosen.

`solve_exact` solves the integer programme with HiGHS (small problems). `solve_scalable` relaxes the coupling
constraints (capacities, budget) with Lagrange multipliers, starts them from the exact LP duals on a random sample of
customers, refines them on all customers by projected subgradient steps, then lets every customer take his best row by
reduced value (a maximum per customer and date over flat rows: only rows that can be chosen are kept, no padding),
repairs infeasibility greedily and fills spare capacity greedily. The Lagrangian dual value at the multipliers is an
upper bound on the LP optimum, hence on the best plan.
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
from cvm.keys import key_positions, repeated_keys

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


@dataclass(frozen=True)
class Codes:
    """The candidate frame's customer, offer, channel and contact date as integer codes (order of first appearance,
    as pd.factorize gives them) with their distinct values. A solve builds them; another solve on the same candidate
    rows (other values or costs, e.g. the oracle's) can take them instead of factorizing 4 columns again."""

    customer: np.ndarray
    customers: pd.Index
    offer: np.ndarray
    offers: pd.Index
    channel: np.ndarray
    channels: pd.Index
    date: np.ndarray
    dates: pd.Index


def _codes(candidates: pd.DataFrame, customer_col: str, date_col: str) -> Codes:
    """`Codes` of a validated candidate frame (int32 codes: half the memory of pd.factorize's)."""
    parts = [pd.factorize(candidates[c]) for c in (customer_col, "offer_id", "channel", date_col)]
    (cust, customers), (offer, offers), (chan, chans), (date, dates) = ((c.astype(np.int32), u) for c, u in parts)
    return Codes(cust, pd.Index(customers), offer, pd.Index(offers), chan, pd.Index(chans), date, pd.Index(dates))


@dataclass
class Assignment:
    """A solved plan: the chosen candidate rows, objective, upper bound, relative gap and one row per coupling
    constraint (kind, capacity, used, dual = value of one more unit, binding); `codes` of the candidate rows."""

    plan: pd.DataFrame
    objective: float
    bound: float
    gap: float
    constraints: pd.DataFrame
    solver: str
    seconds: float
    codes: Codes | None = None

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
    """The rows that can be chosen (value > 0 and room for one contact), sorted by (customer, date, priority): flat
    arrays with the groups (one per customer and contact date) as consecutive runs. A choice is a flat row index."""

    rows: np.ndarray          # position of each row in the candidate frame
    value: np.ndarray
    cost: np.ndarray
    slot: np.ndarray          # index into slot_* arrays
    group: np.ndarray         # group of each row
    starts: np.ndarray        # first row of each group
    group_customer: np.ndarray
    customer_cap: np.ndarray  # per customer code
    dates: np.ndarray         # contact dates with candidates (any value) per customer code
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

    def rows_of(self, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat rows of the given groups in order, where each group's run starts among them, and the run of each."""
        sizes = np.diff(np.r_[self.starts, len(self.value)])[groups]
        runs = np.cumsum(sizes) - sizes
        run = np.repeat(np.arange(len(groups)), sizes)
        return np.repeat(self.starts[groups] - runs, sizes) + np.arange(len(run)), runs, run


def _group_argmax(x: np.ndarray, runs: np.ndarray, run: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximum of each run of x (runs start at `runs`, none empty; `run` numbers the run of each element) and the
    position of its first occurrence: the np.argmax of each row of a padded matrix, without the padding."""
    if not len(runs):
        return np.zeros(0), np.zeros(0, dtype=np.intp)
    best = np.maximum.reduceat(x, runs)
    hit = np.flatnonzero(x == best[run])
    hit_run = run[hit]
    return best, hit[np.r_[True, hit_run[1:] != hit_run[:-1]]]


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


def _customer_caps(constraints: Constraints, customers: pd.Index) -> np.ndarray:
    """Contact cap per customer code."""
    if not isinstance(constraints.max_per_customer, pd.Series):
        return np.full(len(customers), int(constraints.max_per_customer), dtype=np.int64)
    caps = constraints.max_per_customer
    ids = pd.Series(caps.index)   # not index.to_series(): pyarrow's attribute probes would hash the index
    if repeated_keys(ids):
        raise InputError("constraints.max_per_customer: repeated customer ids in the index; give one cap per "
                         "customer.")
    where = key_positions(pd.Series(customers), ids)
    caps_c = np.append(caps.to_numpy(dtype=float), np.nan)[where]   # absent (-1): the appended NaN
    missing = int(np.isnan(caps_c).sum())
    if missing:
        raise InputError(f"constraints.max_per_customer: {missing} candidate customers have no cap; "
                         "give every customer in the candidates a cap (0 to exclude).")
    return caps_c.astype(np.int64)


def _build(candidates: pd.DataFrame, constraints: Constraints, codes: Codes) -> _Problem:
    value_all = candidates["value"].to_numpy(dtype=float)
    cost_all = candidates["cost"].to_numpy(dtype=float)
    offer_codes, offers = codes.offer, codes.offers
    chan_codes, chans = codes.channel, codes.channels
    date_codes, dates = codes.date, codes.dates
    cust_codes, customers = codes.customer, codes.customers

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
    customer_cap = _customer_caps(constraints, customers)
    n_dates = max(len(dates), 1)
    gkey = cust_codes.astype(np.int64) * n_dates + date_codes
    seen = np.zeros(len(customers) * n_dates, bool)
    seen[gkey] = True
    per_customer = seen.reshape(len(customers), n_dates).sum(axis=1)

    # only rows that can be chosen: value > 0, room for one contact, customer cap > 0, cost within the budget
    cap_ext = np.append(capacity, np.inf)
    keep = (value_all > 0) & (cap_ext[r_offer] >= 1) & (cap_ext[r_chan] >= 1) & (customer_cap[cust_codes] > 0)
    if budget is not None:
        keep &= cost_all <= capacity[budget]
    rows = np.flatnonzero(keep)

    # groups = (customer, contact date); rows sorted by group, then priority (ties in value go to the first row)
    gkey = gkey[rows]
    if "priority" in candidates.columns or (len(gkey) > 1 and (gkey[1:] < gkey[:-1]).any()):
        prio = (candidates["priority"].to_numpy(dtype=float)[rows] if "priority" in candidates.columns
                else np.zeros(len(gkey)))
        order = np.lexsort((prio, gkey))
        rows, gkey = rows[order], gkey[order]
    new = np.r_[True, gkey[1:] != gkey[:-1]] if len(rows) else np.zeros(0, bool)
    starts = np.flatnonzero(new)

    slot_key = r_offer[rows] * (m + 1) + r_chan[rows]
    slot_vals = np.flatnonzero(np.bincount(slot_key, minlength=(m + 1) ** 2))
    slot_index = np.zeros((m + 1) ** 2, dtype=np.int32)
    slot_index[slot_vals] = np.arange(len(slot_vals), dtype=np.int32)
    group_customer = cust_codes[rows[starts]]
    return _Problem(rows=rows, value=value_all[rows], cost=cost_all[rows], slot=slot_index[slot_key],
                    group=(np.cumsum(new) - 1).astype(np.int32), starts=starts, group_customer=group_customer,
                    customer_cap=customer_cap, dates=per_customer, n_customers=len(customers),
                    slot_offer=slot_vals // (m + 1), slot_channel=slot_vals % (m + 1),
                    capacity=capacity, names=names, kinds=kinds, budget=budget,
                    limited=np.flatnonzero((per_customer > customer_cap)[group_customer]))


def _row_usage(p: _Problem, f: np.ndarray) -> np.ndarray:
    """Resource consumption (rows x m) of the given rows, as a sparse matrix."""
    s = p.slot[f]
    n = len(f)
    cols = [p.slot_offer[s], p.slot_channel[s]]
    data = [np.ones(n), np.ones(n)]
    if p.budget is not None:
        cols.append(np.full(n, p.budget))
        data.append(p.cost[f])
    ri = np.tile(np.arange(n), len(cols))
    ci, d = np.concatenate(cols), np.concatenate(data)
    ok = ci < p.m
    return sparse.csr_matrix((d[ok], (ri[ok], ci[ok])), shape=(n, p.m))


def _usage(p: _Problem, f: np.ndarray) -> np.ndarray:
    per_slot = np.bincount(p.slot[f], minlength=len(p.slot_offer)).astype(float)
    used = (np.bincount(p.slot_offer, weights=per_slot, minlength=p.m + 1)[: p.m]
            + np.bincount(p.slot_channel, weights=per_slot, minlength=p.m + 1)[: p.m])
    if p.budget is not None:
        used[p.budget] = p.cost[f].sum()
    return used


def _slot_penalty(p: _Problem, lam: np.ndarray) -> np.ndarray:
    lam_ext = np.append(lam, 0.0)
    return lam_ext[p.slot_offer] + lam_ext[p.slot_channel]


def _relaxed(p: _Problem, lam: np.ndarray) -> tuple[np.ndarray, float]:
    """Best choice of every customer at multipliers `lam`: (rows, Lagrangian dual value)."""
    red = p.value - _slot_penalty(p, lam)[p.slot]
    if p.budget is not None and lam[p.budget] > 0:
        red -= lam[p.budget] * p.cost
    best, at = _group_argmax(red, p.starts, p.group)
    take = _top_k(p, best)
    return at[take], float(best[take].sum() + lam @ p.capacity)


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


def _consumption(p: _Problem, f: np.ndarray, k: int) -> np.ndarray:
    """Units of resource `k` used by each of the given rows."""
    if k == p.budget:
        return p.cost[f]
    s = p.slot[f]
    return ((p.slot_offer[s] == k) | (p.slot_channel[s] == k)).astype(float)


def _running_count(keys: np.ndarray) -> np.ndarray:
    """For each position, how many positions up to and including it carry the same key."""
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    out = np.empty(len(keys), dtype=np.int64)
    out[order] = np.arange(1, len(keys) + 1) - np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    return out


def _repair(p: _Problem, f: np.ndarray) -> np.ndarray:
    """Drop chosen rows until every coupling constraint holds: least valuable first (value per cost for the budget)."""
    keep = np.ones(len(f), bool)
    val = p.value[f]
    used = _usage(p, f)
    order_k = [k for k in range(p.m) if k != p.budget] + ([p.budget] if p.budget is not None else [])
    for k in order_k:
        if used[k] <= p.capacity[k] + 1e-9:
            continue
        a = _consumption(p, f, k) * keep
        excess = a.sum() - p.capacity[k]
        if excess <= 1e-9:
            continue
        score = val / np.maximum(a, 1e-12) if k == p.budget else val
        idx = np.flatnonzero(a > 0)
        idx = idx[np.argsort(score[idx], kind="stable")]
        n_drop = int(np.searchsorted(np.cumsum(a[idx]), excess - 1e-9)) + 1
        keep[idx[:n_drop]] = False
    return f[keep]


def _fill(p: _Problem, f: np.ndarray, max_rounds: int = 50) -> np.ndarray:
    """Greedily add the most valuable rows that still fit, in vectorised rounds, until nothing more fits.

    In a round every open (customer, date) takes its best row among those whose resources have room; rows are accepted
    in order of value while the running use of each resource, counting all earlier rows of the round, fits.
    """
    taken = np.zeros(len(p.starts), bool)
    taken[p.group[f]] = True
    count = np.bincount(p.group_customer[p.group[f]], minlength=p.n_customers)
    several_dates = bool((p.dates > 1).any())
    fs = [f]
    remaining = p.capacity - _usage(p, f)
    pool = np.flatnonzero(~taken)
    for _ in range(max_rounds):
        open_g = pool[count[p.group_customer[pool]] < p.customer_cap[p.group_customer[pool]]]
        if not len(open_g):
            break
        rem_ext = np.append(remaining, np.inf)
        fits = (rem_ext[p.slot_offer] >= 1) & (rem_ext[p.slot_channel] >= 1)
        rows, runs, run = p.rows_of(open_g)
        v = np.where(fits[p.slot[rows]], p.value[rows], -np.inf)
        if p.budget is not None:
            v[p.cost[rows] > remaining[p.budget] + 1e-9] = -np.inf
        best, at = _group_argmax(v, runs, run)
        ok = best > 0
        cand_g, cand_f, best = open_g[ok], rows[at[ok]], best[ok]
        if not len(cand_g):
            break
        pool = cand_g   # room only shrinks: groups with nothing that fits now never get anything later
        order = np.argsort(-best, kind="stable")
        cand_g, cand_f = cand_g[order], cand_f[order]
        if several_dates:   # one new contact per customer per round, so customer caps hold
            _, first = np.unique(p.group_customer[cand_g], return_index=True)
            first.sort()
            cand_g, cand_f = cand_g[first], cand_f[first]
        s = p.slot[cand_f]
        ro, rc = p.slot_offer[s], p.slot_channel[s]
        accept = (rem_ext[ro] >= _running_count(ro)) & (rem_ext[rc] >= _running_count(rc))
        if p.budget is not None:
            accept &= np.cumsum(p.cost[cand_f]) <= remaining[p.budget] + 1e-9
        if not accept.any():
            break
        ag, af = cand_g[accept], cand_f[accept]
        taken[ag] = True
        pool = pool[~taken[pool]]
        np.add.at(count, p.group_customer[ag], 1)
        remaining = remaining - _usage(p, af)
        fs.append(af)
    return np.concatenate(fs)


def _primal(p: _Problem, f: np.ndarray) -> tuple[np.ndarray, float]:
    """A feasible plan from the relaxed choice: repair, then fill spare room."""
    f = _fill(p, _repair(p, f))
    return f, float(p.value[f].sum())


def _lp(p: _Problem, picked: np.ndarray, scale: float, integer: bool) -> tuple[np.ndarray, float, np.ndarray]:
    """LP (or MILP) over the rows of the `picked` customers (mask) with capacities times `scale`: (rows, objective,
    duals)."""
    rows, _, _ = p.rows_of(np.flatnonzero(picked[p.group_customer]))
    n = len(rows)
    if n == 0:
        return rows, 0.0, np.zeros(p.m)
    gidx = np.unique(p.group[rows], return_inverse=True)[1]
    blocks = [sparse.csr_matrix((np.ones(n), (gidx, np.arange(n))))]
    rhs = [np.ones(gidx.max() + 1)]
    cust = p.group_customer[p.group[rows]]
    if (np.where(picked, p.dates, 0) > p.customer_cap).any():
        cu, cidx = np.unique(cust, return_inverse=True)
        blocks.append(sparse.csr_matrix((np.ones(n), (cidx, np.arange(n)))))
        rhs.append(p.customer_cap[cu].astype(float))
    blocks.append(_row_usage(p, rows).T.tocsr())
    rhs.append(p.capacity * scale)
    a_ub = sparse.vstack(blocks).tocsr()
    b_ub = np.concatenate(rhs)
    c = -p.value[rows]
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
    return rows[x > 0.5], float(-res.fun), np.maximum(duals, 0.0)


def _problem(candidates: pd.DataFrame, constraints: Constraints, customer_col: str, date_col: str,
             codes: Codes | None) -> tuple[_Problem, Codes]:
    """The validated candidates' `_Problem`, with the given `codes` (checked to be as long) or fresh ones."""
    _validate(candidates, customer_col, date_col)
    if codes is None:
        codes = _codes(candidates, customer_col, date_col)
    elif len(codes.customer) != len(candidates):
        raise InputError(f"codes: {len(codes.customer)} rows for {len(candidates)} candidates; pass the codes of a "
                         "solve on the same candidate rows, or none.")
    return _build(candidates, constraints, codes), codes


def _result(p: _Problem, candidates: pd.DataFrame, f: np.ndarray, bound: float, lam: np.ndarray, solver: str,
            t0: float, codes: Codes) -> Assignment:
    plan = candidates.iloc[np.sort(p.rows[f])].reset_index(drop=True)
    objective = float(plan["value"].sum())
    used = _usage(p, f)
    step = np.ones(p.m)
    if p.budget is not None:
        step[p.budget] = max(float(p.cost.max(initial=0.0)), 1e-9)
    table = pd.DataFrame({"kind": p.kinds, "capacity": p.capacity, "used": used, "dual": lam,
                          "binding": p.capacity - used < step - 1e-9}, index=pd.Index(p.names, name="constraint"))
    gap = (bound - objective) / bound if bound > 0 else 0.0
    return Assignment(plan=plan, objective=objective, bound=float(bound), gap=float(max(gap, 0.0)),
                      constraints=table, solver=solver, seconds=time.perf_counter() - t0, codes=codes)


def solve_exact(candidates: pd.DataFrame, constraints: Constraints, customer_col: str = "customer_id",
                date_col: str = "contact_date", codes: Codes | None = None) -> Assignment:
    """Optimal plan by mixed-integer programming (HiGHS); bound and duals come from the LP relaxation.

    For small problems (up to some ten thousand candidate rows); use `solve_scalable` beyond. `codes`: those of an
    earlier solve on the same candidate rows (`Assignment.codes`), or None to factorize.
    """
    t0 = time.perf_counter()
    p, codes = _problem(candidates, constraints, customer_col, date_col, codes)
    everyone = np.ones(p.n_customers, bool)
    f, _, _ = _lp(p, everyone, 1.0, integer=True)
    _, bound, duals = _lp(p, everyone, 1.0, integer=False)
    return _result(p, candidates, f, bound, duals, "milp-highs", t0, codes)


def solve_scalable(candidates: pd.DataFrame, constraints: Constraints, customer_col: str = "customer_id",
                   date_col: str = "contact_date", sample_customers: int = 5_000, iterations: int = 40,
                   tol: float = 0.002, seed: int = 0, codes: Codes | None = None) -> Assignment:
    """Near-optimal plan for millions of customers by Lagrangian relaxation of the capacity and budget constraints.

    Multipliers start from the LP duals on `sample_customers` random customers (capacities scaled down, `seed`) and are
    refined on everyone by projected subgradient steps (Polyak step size) until the gap is below `tol` or after
    `iterations` steps. `bound` is the Lagrangian dual value: an upper bound on the LP, hence on any plan. `codes` as
    for `solve_exact`.
    """
    t0 = time.perf_counter()
    p, codes = _problem(candidates, constraints, customer_col, date_col, codes)
    if p.m == 0:
        f, bound = _relaxed(p, np.zeros(0))
        return _result(p, candidates, f, bound, np.zeros(0), "greedy", t0, codes)
    rng = np.random.default_rng(seed)
    if p.n_customers <= sample_customers:
        picked, scale = np.ones(p.n_customers, bool), 1.0
    else:
        picked = np.zeros(p.n_customers, bool)
        picked[rng.choice(p.n_customers, sample_customers, replace=False)] = True
        scale = sample_customers / p.n_customers
    _, _, lam = _lp(p, picked, scale, integer=False)
    f, bound = _relaxed(p, lam)
    lam0 = best_lam = lam
    relaxed_at_best = f
    best_f, best_val = _primal(p, f)
    value = bound
    norm = np.where(p.capacity > 0, p.capacity, 1.0)
    theta, stall = 1.0, 0
    for _ in range(iterations):
        if bound - best_val <= tol * bound:
            break
        grad = 1.0 - _usage(p, f) / norm   # derivative of the dual value wrt normalised multipliers
        if grad @ grad <= 1e-18:
            break
        lam = np.maximum(lam * norm - theta * (value - best_val) / (grad @ grad) * grad, 0.0) / norm
        f, value = _relaxed(p, lam)
        if value < bound - 1e-9:
            bound, best_lam, relaxed_at_best, stall = value, lam, f, 0
        else:
            stall += 1
            if stall >= 3:
                theta, stall = theta / 2, 0
    if best_lam is not lam0:
        cand_f, val = _primal(p, relaxed_at_best)
        if val > best_val:
            best_f, best_val = cand_f, val
    return _result(p, candidates, best_f, bound, best_lam, "lagrangian", t0, codes)
