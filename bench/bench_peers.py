"""Benchmark: cvm's BG/NBD + Gamma-Gamma CLV and its RFM aggregation against the peer libraries (issue #6, "peers").

Usage (one command; `make bench-peers` creates .venv-peers from bench/peers-requirements.txt first):

    .venv/bin/python bench/bench_peers.py [--sizes 10000,100000,1000000] [--peers-python .venv-peers/bin/python]

For each size it simulates BTYD summaries once (`bench_clv.simulate`, seeded), writes them to
`output/bench_peers/summaries_<n>.parquet`, and times on exactly that file, each library in a fresh process of the
environment where it works:

* cvm (.venv): `fit_bgnbd` + `fit_gamma_gamma` + `customer_lifetime_value`;
* lifetimes 0.11.3 (.venv-peers): `BetaGeoFitter` + `GammaGammaFitter` + `GammaGammaFitter.customer_lifetime_value`;
* pymc-marketing (.venv-peers): `BetaGeoModel` + `GammaGammaModel` with `HalfFlat` priors on every parameter, fitted
  with `method="map"` (`pm.find_MAP` drops the log-Jacobian, so a flat-prior MAP is the maximum-likelihood estimate),
  + `GammaGammaModel.expected_customer_lifetime_value`.

Each library is called with its defaults (optimiser, tolerances, starting values), as a user would call it.
Each child process re-runs this file: `<python> bench/bench_peers.py --peer lifetimes --summaries F --result J`
(so this file imports neither cvm nor duckdb at module level).

CLV definition, identical for all three: 12 monthly steps, CLV = sum_m (E[Y(m)] - E[Y(m-1)]) x E[order value | x, zbar]
/ 1.1^(m/12), i.e. a 10 % annual discount rate (monthly rate 1.1^(1/12) - 1 for the peers, which take a monthly rate).
The summaries are in months of 365.25 / 12 days, the one unit where all three libraries agree on the length of a month
(lifetimes counts 4.345 weeks or 30 days per month, cvm and pymc-marketing 30.4375 days).

Agreement: "3 significant digits" is read as a relative difference <= 5e-4 (half a unit in the 3rd significant digit
for a leading digit of 1; rounding both numbers to 3 digits can still differ on a boundary, hence the relative form).
Where a parameter differs, the log-likelihood of each library's estimates (computed here, independently of cvm) says
which optimiser stopped closer to the maximum.

The RFM part times `cvm.features.customer_features` (DuckDB) against a plain pandas groupby that computes the same
recency, frequency, monetary and BTYD columns (`pandas_rfm`) on the same ~20 transactions per customer, and checks that
both give the same numbers. Results are merged into bench/peers_results.json (one entry per size).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DAYS_PER_MONTH = 365.25 / 12
HORIZON_MONTHS = 12
DISCOUNT_ANNUAL = 0.10
DISCOUNT_MONTHLY = (1 + DISCOUNT_ANNUAL) ** (1 / 12) - 1
REL_TOL = 5e-4
BGNBD_PARAMS = ("r", "alpha", "a", "b")
GG_PARAMS = ("p", "q", "gamma")
LIBRARIES = ("cvm", "lifetimes", "pymc-marketing")
STEPS = ("fit_bgnbd", "fit_gamma_gamma", "clv")
RFM_AS_OF = "2025-12-31"
RFM_COLUMNS = ("recency_days", "frequency", "monetary_total", "monetary_mean", "x", "t_x", "T", "mean_repeat_value")

Timed = tuple[Any, dict[str, float]]


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Timed:
    """Run fn; return its result and the wall and CPU seconds it took (CPU includes this process's threads)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, {"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu}


# ------------------------------------------------------------------------------------------- runners, one per library


def run_cvm(s: pd.DataFrame) -> dict[str, Any]:
    """cvm: ML fits (L-BFGS-B + Newton polish, identical rows collapsed) and discounted CLV."""
    def load() -> tuple[Any, Any]:
        import cvm
        from cvm import clv
        return cvm, clv

    (cvm, clv), imp = timed(load)
    x, t_x, T, z = (s[c].to_numpy() for c in ("frequency", "recency", "T", "monetary_value"))
    bg, t_bg = timed(clv.fit_bgnbd, x, t_x, T)
    gg, t_gg = timed(clv.fit_gamma_gamma, x, z)
    value, t_clv = timed(clv.customer_lifetime_value, bg, gg, x, t_x, T, z, HORIZON_MONTHS, DISCOUNT_ANNUAL,
                         time_unit="M")
    return {"version": getattr(cvm, "__version__", "editable"), "import": imp,
            "steps": {"fit_bgnbd": t_bg, "fit_gamma_gamma": t_gg, "clv": t_clv},
            "params": {**bg.params(), **gg.params()}, "clv": np.asarray(value, dtype=float)}


def run_lifetimes(s: pd.DataFrame) -> dict[str, Any]:
    """lifetimes 0.11.3 with its defaults (autograd gradients, scipy minimize, one row per customer)."""
    def load() -> Any:
        import lifetimes
        return lifetimes

    lifetimes, imp = timed(load)
    rep = s[s["frequency"] > 0]
    bg, t_bg = timed(lambda: lifetimes.BetaGeoFitter().fit(s["frequency"], s["recency"], s["T"]))
    gg, t_gg = timed(lambda: lifetimes.GammaGammaFitter().fit(rep["frequency"], rep["monetary_value"]))
    value, t_clv = timed(gg.customer_lifetime_value, bg, s["frequency"], s["recency"], s["T"], s["monetary_value"],
                         time=HORIZON_MONTHS, discount_rate=DISCOUNT_MONTHLY, freq="M")
    params = {k: float(bg.params_[k]) for k in BGNBD_PARAMS}
    params |= {"p": float(gg.params_["p"]), "q": float(gg.params_["q"]), "gamma": float(gg.params_["v"])}
    return {"version": lifetimes.__version__, "import": imp,
            "steps": {"fit_bgnbd": t_bg, "fit_gamma_gamma": t_gg, "clv": t_clv}, "params": params,
            "clv": np.asarray(value, dtype=float)}


def run_pymc_marketing(s: pd.DataFrame) -> dict[str, Any]:
    """pymc-marketing: HalfFlat priors on every parameter, `fit(method="map")` (find_MAP, L-BFGS-B by default)."""
    def load() -> tuple[Any, Any, Any]:
        import pymc_marketing
        from pymc_extras.prior import Prior
        from pymc_marketing.clv import BetaGeoModel, GammaGammaModel
        return pymc_marketing, Prior, (BetaGeoModel, GammaGammaModel)

    (pymc_marketing, Prior, (BetaGeoModel, GammaGammaModel)), imp = timed(load)
    data = s.rename_axis(None).assign(customer_id=np.arange(len(s)))
    rep = data[data["frequency"] > 0]

    def fit(model_cls: type, names: tuple[str, ...], frame: pd.DataFrame) -> Any:
        model = model_cls(model_config={name: Prior("HalfFlat") for name in names})
        model.fit(frame, method="map", progressbar=False)
        return model

    bg, t_bg = timed(fit, BetaGeoModel, BGNBD_PARAMS, data[["customer_id", "frequency", "recency", "T"]])
    gg, t_gg = timed(fit, GammaGammaModel, ("p", "q", "v"), rep[["customer_id", "frequency", "monetary_value"]])
    value, t_clv = timed(gg.expected_customer_lifetime_value, bg, data, future_t=HORIZON_MONTHS,
                         discount_rate=DISCOUNT_MONTHLY, time_unit="M")
    post_bg, post_gg = bg.fit_result, gg.fit_result
    params = {k: float(post_bg[k].values.ravel()[0]) for k in BGNBD_PARAMS}
    params |= {"p": float(post_gg["p"].values.ravel()[0]), "q": float(post_gg["q"].values.ravel()[0]),
               "gamma": float(post_gg["v"].values.ravel()[0])}
    return {"version": pymc_marketing.__version__, "import": imp,
            "steps": {"fit_bgnbd": t_bg, "fit_gamma_gamma": t_gg, "clv": t_clv}, "params": params,
            "clv": np.asarray(value, dtype=float).ravel()}


RUNNERS: dict[str, Callable[[pd.DataFrame], dict[str, Any]]] = {
    "cvm": run_cvm, "lifetimes": run_lifetimes, "pymc-marketing": run_pymc_marketing}


def peer_main(name: str, summaries: Path, result: Path, repeat: int) -> None:
    """Child process: run one library `repeat` times on the Parquet summaries, keep the fastest wall and CPU time of
    each step; write its JSON and its CLV vector (.npy)."""
    s = pd.read_parquet(summaries)
    out = RUNNERS[name](s)
    for _ in range(repeat - 1):
        again = RUNNERS[name](s)
        for step, sec in again["steps"].items():
            out["steps"][step] = {k: min(v, out["steps"][step][k]) for k, v in sec.items()}
    np.save(result.with_suffix(".npy"), out.pop("clv"))
    out["python"] = platform.python_version()
    out["numpy"], out["pandas"] = np.__version__, pd.__version__
    result.write_text(json.dumps(out, indent=1))


# ------------------------------------------------------------------------------------------- CLV benchmark (parent)


def summaries(n: int, seed: int) -> pd.DataFrame:
    """BTYD summaries of n simulated customers from bench_clv.simulate, converted from weeks to months; monetary_value
    is 0 for one-time buyers (the peers' convention; cvm ignores it there)."""
    from bench_clv import simulate

    d = simulate(n, seed)
    to_months = 7 / DAYS_PER_MONTH
    return pd.DataFrame({"frequency": d["x"], "recency": d["t_x"] * to_months, "T": d["T"] * to_months,
                         "monetary_value": np.nan_to_num(d["zbar"], nan=0.0)})


def bgnbd_log_likelihood(params: dict[str, float], x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> float:
    """Total BG/NBD log-likelihood (Fader, Hardie & Lee 2005, eq. 6), written here independently of cvm."""
    from scipy import special

    r, alpha, a, b = (params[k] for k in BGNBD_PARAMS)
    base = (special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha) + special.betaln(a, b + x)
            - special.betaln(a, b) - (r + x) * np.log(alpha + T))
    with np.errstate(divide="ignore"):
        odds = np.log(a) - np.log(np.where(x > 0, b + x - 1, 1.0)) + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
    return float(np.sum(base + np.where(x > 0, np.logaddexp(0.0, odds), 0.0)))


def gg_log_likelihood(params: dict[str, float], x: np.ndarray, z: np.ndarray) -> float:
    """Total Gamma-Gamma log-likelihood of the repeat buyers (Fader & Hardie note 025), independent of cvm."""
    from scipy import special

    p, q, g = (params[k] for k in GG_PARAMS)
    x, z = x[x > 0], z[x > 0]
    return float(np.sum(special.gammaln(p * x + q) - special.gammaln(p * x) - special.gammaln(q) + q * np.log(g)
                        + (p * x - 1) * np.log(z) + p * x * np.log(x) - (p * x + q) * np.log(g + x * z)))


def run_library(name: str, python: str, path: Path, timeout: float, repeat: int) -> dict[str, Any]:
    """Run one library in a child process on the summaries at `path`; its JSON plus CLV vector, or an error entry."""
    result = path.with_name(f"{path.stem}_{name}.json")
    log = result.with_suffix(".log")
    result.unlink(missing_ok=True)
    start = time.perf_counter()
    cmd = [python, str(Path(__file__).resolve()), "--peer", name, "--summaries", str(path), "--result", str(result),
           "--repeat", str(repeat)]
    try:
        with log.open("w") as fh:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    except FileNotFoundError:
        return {"error": f"{python} not found: create .venv-peers first (make bench-peers)"}
    if proc.returncode != 0 or not result.exists():
        tail = log.read_text().strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)} (full log: {log})"}
    out = json.loads(result.read_text())
    out["process_seconds"] = time.perf_counter() - start
    out["clv"] = np.load(result.with_suffix(".npy"))
    return out


def compare(runs: dict[str, dict[str, Any]], s: pd.DataFrame) -> dict[str, Any]:
    """Seconds, ratio to cvm, parameters with relative differences and flags, log-likelihoods, CLV agreement."""
    x, t_x, T, z = (s[c].to_numpy() for c in ("frequency", "recency", "T", "monetary_value"))
    ref = runs["cvm"]
    ref_total = sum(ref["steps"][k]["wall"] for k in STEPS)
    ref_cpu = sum(ref["steps"][k]["cpu"] for k in STEPS)
    out: dict[str, Any] = {"n_customers": len(s), "libraries": {}}
    for name, run in runs.items():
        if "error" in run:
            out["libraries"][name] = {"error": run["error"]}
            continue
        total = sum(run["steps"][k]["wall"] for k in STEPS)
        cpu = sum(run["steps"][k]["cpu"] for k in STEPS)
        rel = {k: abs(run["params"][k] - ref["params"][k]) / abs(ref["params"][k]) for k in run["params"]}
        clv_diff = np.abs(run["clv"] - ref["clv"])
        out["libraries"][name] = {
            "version": run["version"], "python": run["python"], "numpy": run["numpy"], "pandas": run["pandas"],
            "import_seconds": run["import"]["wall"], "process_seconds": run["process_seconds"],
            "seconds": {k: run["steps"][k]["wall"] for k in STEPS} | {"total": total},
            "cpu_seconds": {k: run["steps"][k]["cpu"] for k in STEPS} | {"total": cpu},
            "ratio_to_cvm": total / ref_total, "cpu_ratio_to_cvm": cpu / ref_cpu,
            "params": run["params"], "rel_diff": rel, "disagree": sorted(k for k, v in rel.items() if v > REL_TOL),
            "log_likelihood": {"bgnbd": bgnbd_log_likelihood(run["params"], x, t_x, T),
                               "gamma_gamma": gg_log_likelihood(run["params"], x, z)},
            "clv_total": float(run["clv"].sum()),
            "clv_total_rel_diff": float(abs(run["clv"].sum() - ref["clv"].sum()) / ref["clv"].sum()),
            "clv_max_abs_diff_over_mean": float(clv_diff.max() / ref["clv"].mean()),
        }
    return out


def print_clv_table(n: int, path: Path, res: dict[str, Any]) -> None:
    """Seconds per library and step, ratio to cvm, then every parameter side by side with its relative difference."""
    libs = res["libraries"]
    ok = [k for k in LIBRARIES if k in libs and "error" not in libs[k]]
    print(f"\n== CLV, {n:,} customers (summaries {path.relative_to(ROOT)}) ==")
    print("seconds of wall time per step (CPU seconds and their ratio too: steadier on a shared machine)")
    print(f"{'library':<16s}{'fit BG/NBD':>11s}{'fit GG':>9s}{'CLV':>9s}{'total s':>9s}{'x cvm':>8s}"
          f"{'CPU s':>9s}{'x cvm':>8s}{'import s':>10s}")
    for name in LIBRARIES:
        lib = libs.get(name, {"error": "not run"})
        if "error" in lib:
            print(f"{name:<16s}  {lib['error']}")
            continue
        sec = lib["seconds"]
        print(f"{name:<16s}{sec['fit_bgnbd']:11.2f}{sec['fit_gamma_gamma']:9.2f}{sec['clv']:9.2f}{sec['total']:9.2f}"
              f"{lib['ratio_to_cvm']:8.1f}{lib['cpu_seconds']['total']:9.2f}{lib['cpu_ratio_to_cvm']:8.1f}"
              f"{lib['import_seconds']:10.1f}")
    print(f"\n{'parameter':<14s}" + "".join(f"{k:>16s}{'rel.diff':>10s}" if k != "cvm" else f"{k:>16s}" for k in ok))
    for key in (*BGNBD_PARAMS, *GG_PARAMS):
        row = f"{key:<14s}"
        for name in ok:
            lib = libs[name]
            row += f"{lib['params'][key]:16.6g}"
            if name != "cvm":
                flag = " !" if lib["rel_diff"][key] > REL_TOL else "  "
                row += f"{lib['rel_diff'][key]:8.1e}{flag}"
        print(row)
    for model in ("bgnbd", "gamma_gamma"):
        row = f"{'LL ' + model:<14s}"
        for name in ok:
            ll = libs[name]["log_likelihood"][model]
            row += f"{ll:16.2f}" + ("" if name == "cvm" else f"{ll - libs['cvm']['log_likelihood'][model]:+10.3f}")
        print(row)
    row = f"{'CLV total':<14s}"
    for name in ok:
        lib = libs[name]
        row += f"{lib['clv_total']:16.6g}" + ("" if name == "cvm" else f"{lib['clv_total_rel_diff']:10.1e}")
    print(row)
    print(f"('!' = relative difference > {REL_TOL:g}, i.e. not the same to 3 significant digits; the rel.diff column "
          f"after LL is the peer's LL minus cvm's)")
    for name in ok:
        if name != "cvm" and libs[name]["disagree"]:
            print(f"  {name}: {', '.join(libs[name]['disagree'])} differ from cvm by more than {REL_TOL:g}")


def bench_clv(n: int, seed: int, workdir: Path, peers_python: str, libraries: list[str], timeout: float,
              repeat: int) -> dict[str, Any]:
    """Simulate once, write the Parquet summaries, run every library on them, compare and print."""
    s = summaries(n, seed)
    path = workdir / f"summaries_{n}.parquet"
    s.to_parquet(path, index=False)
    runs = {}
    for name in libraries:
        python = sys.executable if name == "cvm" else peers_python
        print(f"  running {name} on {n:,} customers ...", flush=True)
        runs[name] = run_library(name, python, path, timeout, repeat)
    if "error" in runs["cvm"]:
        raise SystemExit(f"cvm failed: {runs['cvm']['error']}")
    res = compare(runs, s)
    print_clv_table(n, path, res)
    return res


# ------------------------------------------------------------------------------------------- RFM benchmark


def rfm_transactions(n: int, seed: int) -> pd.DataFrame:
    """About 20 lines per customer over 2024-2025: 10 % of lines share an order with the line before, ~5 % are
    returns, ~1 % are zero-value; several orders can fall on one day. Integer ids keep pandas' memory small."""
    rng = np.random.default_rng(seed)
    counts = 1 + rng.poisson(19, n)
    customer = np.repeat(np.arange(n, dtype=np.int64), counts)
    m = len(customer)
    new_order = rng.random(m) >= 0.1
    new_order[np.r_[0, np.cumsum(counts)[:-1]]] = True
    order = np.cumsum(new_order) - 1
    day = rng.integers(0, 731, order[-1] + 1)[order]
    u = rng.random(m)
    amount = np.where(u < 0.05, -np.round(5 + 45 * rng.random(m), 2),
                      np.where(u < 0.06, 0.0, np.round(100 * rng.random(m), 2)))
    dates = np.datetime64("2024-01-01", "ns") + day.astype("timedelta64[D]")
    return pd.DataFrame({"customer_id": customer, "order_id": order, "order_date": dates, "amount": amount})


def pandas_rfm(tx: pd.DataFrame, as_of: str, time_unit_days: float = 7.0) -> pd.DataFrame:
    """Plain pandas groupby with the definitions of `cvm.features` (orders basis for frequency, purchase days for
    the BTYD summary); one row per customer_id with the RFM_COLUMNS, sorted by customer_id."""
    end = pd.Timestamp(as_of)
    lines = tx.loc[tx["order_date"].dt.normalize() <= end, ["customer_id", "order_id", "order_date", "amount"]]
    lines = lines.assign(day=lines["order_date"].dt.normalize(), buy=lines["amount"] >= 0)
    orders = lines.groupby(["customer_id", "order_id"], sort=False).agg(net=("amount", "sum"), buy=("buy", "max"))
    purchase_orders = orders[(orders["net"] >= 0) & orders["buy"]]
    n_orders = purchase_orders.groupby(level="customer_id").size()
    days = lines.groupby(["customer_id", "day"]).agg(net=("amount", "sum"), buy=("buy", "max")).reset_index()
    pdays = days[(days["net"] >= 0) & days["buy"]]
    per_day = pdays.groupby("customer_id").agg(n_days=("day", "size"), first=("day", "min"), last=("day", "max"),
                                               value=("net", "sum"), first_value=("net", "first"))
    out = lines.groupby("customer_id").agg(monetary_total=("amount", "sum"))
    out["n_orders"] = n_orders.reindex(out.index, fill_value=0)
    out = out.join(per_day)
    day = pd.Timedelta(days=1)
    x = out["n_days"] - 1
    return pd.DataFrame({
        "recency_days": (end - out["last"]) / day,
        "frequency": out["n_orders"].astype(float),
        "monetary_total": out["monetary_total"],
        "monetary_mean": (out["monetary_total"] / out["n_orders"]).where(out["n_orders"] > 0),
        "x": x.astype(float),
        "t_x": (out["last"] - out["first"]) / day / time_unit_days,
        "T": (end - out["first"]) / day / time_unit_days,
        "mean_repeat_value": ((out["value"] - out["first_value"]) / x).where(x > 0),
    }).sort_index().rename_axis("customer_id").reset_index()


def duckdb_transactions(tx: pd.DataFrame) -> Any:
    """A DuckDB connection holding `tx` as the native table `transactions`, as the pipeline's customer database does
    (the pandas side likewise starts from its frame in memory; loading is timed for neither)."""
    import duckdb

    con = duckdb.connect()
    con.register("tx_frame", tx)
    con.execute("CREATE TABLE transactions AS SELECT * FROM tx_frame")
    con.unregister("tx_frame")
    return con


def cvm_rfm(con: Any, as_of: str) -> pd.DataFrame:
    """cvm.features.customer_features on the `transactions` table of `con`, the RFM_COLUMNS only."""
    from cvm.features import customer_features

    f = customer_features(con, as_of, frequency_basis="orders", time_unit="W")
    return f[["customer_id", *RFM_COLUMNS]]


def rfm_differences(ours: pd.DataFrame, ref: pd.DataFrame) -> dict[str, float]:
    """Max absolute difference per column (inf where the customers or the missing values differ)."""
    if len(ours) != len(ref) or not np.array_equal(ours["customer_id"].to_numpy(), ref["customer_id"].to_numpy()):
        return {c: float("inf") for c in RFM_COLUMNS}
    out = {}
    for c in RFM_COLUMNS:
        a, b = ours[c].to_numpy(dtype=float), ref[c].to_numpy(dtype=float)
        same_nan = np.array_equal(np.isnan(a), np.isnan(b))
        out[c] = float(np.nanmax(np.abs(a - b), initial=0.0)) if same_nan else float("inf")
    return out


def bench_rfm(n: int, seed: int) -> dict[str, Any]:
    """Time cvm's DuckDB aggregation against the pandas groupby on the same transactions; check they agree."""
    tx = rfm_transactions(n, seed)
    con = duckdb_transactions(tx)
    ours, t_cvm = timed(cvm_rfm, con, RFM_AS_OF)
    con.close()
    ref, t_pd = timed(pandas_rfm, tx, RFM_AS_OF)
    diff = rfm_differences(ours, ref)
    agree = all(v <= 1e-9 * max(1.0, float(np.nanmax(np.abs(ref[c])))) for c, v in diff.items())
    print(f"\n== RFM aggregation, {n:,} customers, {len(tx):,} transaction lines ==")
    print(f"cvm customer_features (DuckDB) {t_cvm['wall']:8.2f} s wall {t_cvm['cpu']:8.2f} s CPU")
    print(f"pandas groupby                 {t_pd['wall']:8.2f} s wall {t_pd['cpu']:8.2f} s CPU"
          f"   ratio {t_pd['wall'] / t_cvm['wall']:.1f}x")
    print(f"same numbers: {'yes' if agree else 'NO'} (max abs diff per column: "
          + ", ".join(f"{k} {v:.1e}" for k, v in diff.items()) + ")")
    return {"n_customers": n, "n_lines": len(tx), "cvm_seconds": t_cvm, "pandas_seconds": t_pd,
            "ratio_pandas_to_cvm": t_pd["wall"] / t_cvm["wall"], "max_abs_diff": diff, "agree": agree}


# ------------------------------------------------------------------------------------------- entry point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated numbers of customers")
    parser.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    parser.add_argument("--libraries", default=",".join(LIBRARIES), help="subset of " + ",".join(LIBRARIES))
    parser.add_argument("--no-rfm", action="store_true", help="skip the RFM aggregation benchmark")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per library and size")
    parser.add_argument("--repeat", type=int, default=1, help="runs per library and size; the fastest is kept")
    parser.add_argument("--workdir", type=Path, default=ROOT / "output" / "bench_peers")
    parser.add_argument("--out", type=Path, default=HERE / "peers_results.json")
    parser.add_argument("--peer", choices=LIBRARIES, help=argparse.SUPPRESS)
    parser.add_argument("--summaries", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        peer_main(args.peer, args.summaries, args.result, args.repeat)
        return
    libraries = ["cvm", *[k for k in args.libraries.split(",") if k and k != "cvm"]]
    unknown = set(libraries) - set(LIBRARIES)
    if unknown:
        parser.error(f"unknown libraries {sorted(unknown)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results |= {"clv_definition": f"{HORIZON_MONTHS} monthly steps of 365.25/12 days, {DISCOUNT_ANNUAL:.0%} annual "
                                  f"discount (monthly {DISCOUNT_MONTHLY:.6f}), summaries in months",
                "rel_tol": REL_TOL, "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
                "measured_at": time.strftime("%Y-%m-%d %H:%M")}
    for n in (int(v) for v in args.sizes.split(",")):
        res = bench_clv(n, args.seed, args.workdir, args.peers_python, libraries, args.timeout, args.repeat)
        res["repeat"] = args.repeat
        results.setdefault("clv", {})[str(n)] = res
        if not args.no_rfm:
            results.setdefault("rfm", {})[str(n)] = bench_rfm(n, args.seed)
        args.out.write_text(json.dumps(results, indent=1))
    print(f"\nresults written to {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
