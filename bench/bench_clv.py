"""Benchmark: BG/NBD + Gamma-Gamma fit and scoring at 1,000,000 simulated customers (prints seconds per step).

Usage: .venv/bin/python bench/bench_clv.py [n_customers] [--features]
`--features` also times cvm.features.customer_features on ~20 transactions per customer generated inside DuckDB.
Times are at day resolution (t_x and T are whole days / 7), as from real transaction data.
"""
from __future__ import annotations

import sys
import time

import duckdb
import numpy as np

from cvm import clv
from cvm.features import customer_features


def simulate(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """BG/NBD population (r=0.25, alpha=4, a=0.8, b=2.5) with first purchases spread over a year before a 52-week
    calibration end, plus Gamma-Gamma spend (p=6, q=4, gamma=15)."""
    rng = np.random.default_rng(seed)
    T = 52 + rng.integers(0, 365, n) / 7  # 52..104 weeks, whole days
    lam = rng.gamma(0.25, 1 / 4.0, n)
    j = rng.geometric(rng.beta(0.8, 2.5, n))
    k = rng.poisson(lam * T)
    x = np.minimum(k, j).astype(float)
    t_x = np.where(x > 0, np.floor(T * 7 * rng.beta(np.maximum(x, 1), k - x + 1)) / 7, 0.0)
    nu = rng.gamma(4.0, 1 / 15.0, n)
    zbar = np.where(x > 0, rng.gamma(6.0 * np.maximum(x, 1), 1 / nu) / np.maximum(x, 1), np.nan)
    return {"x": x, "t_x": t_x, "T": T, "zbar": zbar}


def timed(label: str, fn, *args, **kwargs):
    """Run fn and print wall and CPU seconds (the CPU figure is steadier on a shared machine)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    print(f"{label:<45s} {time.perf_counter() - start:7.2f} s wall {time.process_time() - cpu:7.2f} s CPU")
    return out


def bench_features(n: int) -> None:
    con = duckdb.connect()
    con.execute(f"""
        CREATE TABLE transactions AS
        SELECT 'C' || CAST(i % {n} AS VARCHAR) AS customer_id, 'O' || CAST(i AS VARCHAR) AS order_id,
               DATE '2024-01-01' + CAST(floor(random() * 730) AS INTEGER) AS order_date,
               CASE WHEN random() < 0.05 THEN -20.0 ELSE round(random() * 100, 2) END AS amount,
               CASE WHEN random() < 0.5 THEN 'music' ELSE 'books' END AS category,
               CASE WHEN random() < 0.7 THEN 'web' ELSE 'store' END AS channel,
               0.0 AS discount
        FROM range({20 * n}) t(i)""")
    f = timed(f"customer_features ({20 * n:,} rows)", customer_features, con, "2025-12-31", frequency_basis="days")
    print(f"  -> {len(f):,} customers, {f.memory_usage(deep=True).sum() / 1e6:.0f} MB")


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 1_000_000
    data = timed(f"simulate {n:,} customers", simulate, n)
    total, cpu = time.perf_counter(), time.process_time()
    fit = timed("fit_bgnbd", clv.fit_bgnbd, data["x"], data["t_x"], data["T"])
    print(f"  -> r={fit.r:.3f} alpha={fit.alpha:.3f} a={fit.a:.3f} b={fit.b:.3f} unique rows {fit.n_unique:,} "
          f"iterations {fit.iterations}")
    rep = data["x"] > 0
    gg = timed("fit_gamma_gamma", clv.fit_gamma_gamma, data["x"][rep], data["zbar"][rep])
    print(f"  -> p={gg.p:.2f} q={gg.q:.2f} gamma={gg.gamma:.2f}")
    timed("bgnbd_p_alive", clv.bgnbd_p_alive, fit, data["x"], data["t_x"], data["T"])
    timed("bgnbd_expected_purchases (26 weeks)", clv.bgnbd_expected_purchases, fit, 26.0, data["x"], data["t_x"],
          data["T"])
    timed("customer_lifetime_value (12 monthly steps)", clv.customer_lifetime_value, fit, gg, data["x"],
          data["t_x"], data["T"], data["zbar"], 12, 0.1)
    print(f"{'total fit + scoring':<45s} {time.perf_counter() - total:7.2f} s wall "
          f"{time.process_time() - cpu:7.2f} s CPU")
    if "--features" in sys.argv:
        bench_features(n)


if __name__ == "__main__":
    main()
