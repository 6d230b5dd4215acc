"""Benchmark: solve_scalable on 1,000,000 customers x 10 offers (one contact date), capacities and budget binding.

Run: .venv/bin/python bench/bench_assignment.py [n_customers] [n_offers]
Prints the solve time (candidate frame to finished plan), objective, Lagrangian bound and relative gap.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd

from cvm.assignment import Constraints, solve_scalable

COST = {"email": 0.02, "sms": 0.08, "post": 0.90}


def candidates(n: int, k: int, seed: int = 1) -> tuple[pd.DataFrame, Constraints]:
    """Seeded synthetic candidates: skewed customer value x offer affinity, about a quarter with negative uplift."""
    rng = np.random.default_rng(seed)
    offers = pd.Categorical.from_codes(np.tile(np.arange(k), n), [f"O{i}" for i in range(k)])
    channel = pd.Categorical.from_codes(np.tile(np.arange(k) % 3, n), list(COST))
    value = (rng.lognormal(0, 1, n)[:, None] * rng.uniform(0.2, 1.5, k)[None, :]
             * rng.uniform(-0.3, 1.0, (n, k))).ravel()
    frame = pd.DataFrame({"customer_id": np.repeat(np.arange(n), k), "offer_id": offers, "channel": channel,
                          "discount_pct": 10.0, "contact_date": pd.Timestamp("2026-07-06"), "value": value,
                          "cost": np.tile(np.array(list(COST.values()))[np.arange(k) % 3], n)})
    cons = Constraints(max_per_customer=1, offer_capacity={f"O{i}": int(n * 0.05) for i in range(k)},
                       channel_capacity={"email": int(n * 0.3), "sms": int(n * 0.08), "post": int(n * 0.03)},
                       budget=n * 0.04)
    return frame, cons


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    frame, cons = candidates(n, k)
    t0 = time.perf_counter()
    res = solve_scalable(frame, cons)
    seconds = time.perf_counter() - t0
    print(f"customers={n:,} offers={k} rows={len(frame):,}")
    print(f"seconds={seconds:.1f} value={res.objective:,.1f} bound={res.bound:,.1f} gap={res.gap:.4%} "
          f"contacts={len(res.plan):,}")
    print(res.constraints[res.constraints["binding"]].to_string())


if __name__ == "__main__":
    main()
