"""Customer lifetime value: BG/NBD (Fader, Hardie & Lee 2005) and Gamma-Gamma (Fader & Hardie note 025) by maximum
likelihood, vectorised for millions of customers.

Inputs are the BTYD summary of `cvm.features.customer_features`: x (repeat purchase days), t_x (last - first purchase),
T (end of calibration - first purchase), in one time unit (weeks by default), and mean_repeat_value for Gamma-Gamma.

Expected next purchase: for a customer who is still alive, BG/NBD dropout can only happen right after a purchase, so the
wait to the next purchase is exponential with the posterior rate lambda ~ Gamma(r + x, alpha + T); the waiting time then
has a Lomax law and its median is (alpha + T)(2^(1/(r+x)) - 1). `bgnbd_next_purchase` returns that median (in time
units) and the date as_of + median; read it together with P(alive).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import optimize, special

from cvm.errors import InputError
from cvm.features import TIME_UNIT_DAYS

ArrayLike = np.ndarray | pd.Series | list[float]
Evaluate = Callable[[np.ndarray, bool], tuple[float, np.ndarray, np.ndarray | None]]

#: Above this many distinct rows the fit starts from a fit on a sample of WARM_SAMPLE customers.
WARM_START_ROWS = 50_000
WARM_SAMPLE = 20_000
#: hyp2f1 on more values than this is computed in parallel chunks.
PARALLEL_ABOVE = 100_000
#: Bounds of the log-parameters for L-BFGS-B.
BOUND = (-15.0, 15.0)
#: Newton steps stop, and their result is kept, when the gradient of the mean LL over log-parameters is this small
#: (a last Newton step then takes it to rounding level).
NEWTON_GTOL = 1e-7


@dataclass(frozen=True)
class BGNBDFit:
    """Fitted BG/NBD: purchase rate lambda ~ Gamma(r, alpha), dropout p ~ Beta(a, b); SEs from the inverse Hessian."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float
    se: dict[str, float]
    converged: bool
    n_customers: int
    iterations: int
    n_unique: int = 0
    message: str = ""

    def params(self) -> dict[str, float]:
        """The four parameters as a dict."""
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}


@dataclass(frozen=True)
class GammaGammaFit:
    """Fitted Gamma-Gamma spend model: transaction values ~ Gamma(p, nu), nu ~ Gamma(q, gamma)."""

    p: float
    q: float
    gamma: float
    log_likelihood: float
    se: dict[str, float]
    converged: bool
    n_customers: int
    iterations: int
    message: str = ""

    def params(self) -> dict[str, float]:
        """The three parameters as a dict."""
        return {"p": self.p, "q": self.q, "gamma": self.gamma}


@dataclass(frozen=True)
class HoldoutResult:
    """Predicted vs actual holdout purchases by calibration frequency, with error figures."""

    table: pd.DataFrame
    mae: float
    total_actual: float
    total_predicted: float
    total_pct_error: float
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------- input checks


def _arrays(what: str, **cols: ArrayLike) -> list[np.ndarray]:
    arrays = [np.asarray(v, dtype=float) for v in cols.values()]
    n = {a.shape for a in arrays}
    if len(n) != 1 or arrays[0].ndim != 1:
        raise InputError(f"{what}: {', '.join(cols)} must be 1-D and of equal length, got shapes {sorted(n)}.")
    for name, arr in zip(cols, arrays):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise InputError(f"{what}: column '{name}' has {int(bad.sum())} missing or infinite value(s); drop those "
                             f"customers first (customers with no purchase in the window have NaN BTYD fields).")
    return arrays


def _check_btyd(x: np.ndarray, t_x: np.ndarray, T: np.ndarray, what: str) -> None:
    checks = {
        "x < 0 or not a whole number": (x < 0) | (x != np.round(x)),
        "t_x < 0": t_x < 0,
        "t_x > T": t_x > T + 1e-9,
        "x = 0 but t_x > 0": (x == 0) & (t_x > 0),
    }
    for label, mask in checks.items():
        if mask.any():
            raise InputError(f"{what}: {int(mask.sum())} customer(s) with {label}; x, t_x, T must come from "
                             f"cvm.features.customer_features with the same calibration end.")


def _weights(weights: ArrayLike | None, n: int, what: str) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=float)
    if w.shape != (n,) or (~np.isfinite(w)).any() or (w < 0).any():
        raise InputError(f"{what}: weights must be {n} finite non-negative numbers.")
    return w


# ---------------------------------------------------------------------------------------------------- optimiser


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Sum of a * b without BLAS (threaded BLAS dot products stall on busy machines; einsum stays in one thread)."""
    return float(np.einsum("i,i->", a, b))


class _Objective:
    """Mean negative log-likelihood over log-parameters theta with its gradient and Hessian, from an evaluator of
    (LL, gradient, Hessian) in natural parameters. The last evaluations are cached: scipy asks for the value, the
    gradient and the Hessian at the same point in separate calls."""

    def __init__(self, evaluate: Evaluate, n: float) -> None:
        self.evaluate, self.n = evaluate, n
        self.cache: dict[tuple[bytes, bool], tuple] = {}

    def natural(self, theta: np.ndarray, hessian: bool = True) -> tuple[float, np.ndarray, np.ndarray | None]:
        """LL, gradient and Hessian (None unless asked for) in natural parameters at exp(theta)."""
        key = (theta.tobytes(), hessian)
        if not hessian and (theta.tobytes(), True) in self.cache:
            return self.cache[theta.tobytes(), True]
        if key not in self.cache:
            if len(self.cache) > 4:
                self.cache.clear()
            with np.errstate(all="ignore"):
                self.cache[key] = self.evaluate(np.exp(theta), hessian)
        return self.cache[key]

    def __call__(self, theta: np.ndarray, hessian: bool = True) -> tuple[float, np.ndarray, np.ndarray | None]:
        """Value, gradient and Hessian (None unless asked for) of the mean negative LL over theta."""
        ll, grad, hess = self.natural(theta, hessian)
        params = np.exp(theta)
        value = -ll / self.n
        if not np.isfinite(value):
            return np.inf, np.zeros_like(theta), None if hess is None else np.eye(len(theta))
        grad_theta = -grad * params / self.n
        hess_theta = None if hess is None else -(hess * np.outer(params, params) + np.diag(grad * params)) / self.n
        return value, grad_theta, hess_theta

    def value_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """Value and gradient for L-BFGS-B (a huge finite value where the LL is not finite)."""
        value, grad, _ = self(theta, hessian=False)
        return (1e300, grad) if not np.isfinite(value) else (value, grad)


def _lbfgs(objective: _Objective, x0: np.ndarray) -> optimize.OptimizeResult:
    """L-BFGS-B on log-parameters within BOUND: the fallback when Newton steps fail."""
    return optimize.minimize(objective.value_grad, x0, jac=True, method="L-BFGS-B", bounds=[BOUND] * len(x0),
                             options={"maxiter": 1000, "ftol": 1e-13, "gtol": 1e-9})


def _newton(objective: _Objective, x0: np.ndarray) -> optimize.OptimizeResult | None:
    """Newton steps with the analytic Hessian in a trust region (trust-exact) on log-parameters; the result when they
    reach a gradient below NEWTON_GTOL within BOUND, else None."""
    res = optimize.minimize(lambda t: objective(t)[0], x0, method="trust-exact", jac=lambda t: objective(t)[1],
                            hess=lambda t: objective(t)[2], options={"gtol": NEWTON_GTOL, "maxiter": 100})
    value, grad, _ = objective(res.x, hessian=False)
    return res if np.isfinite(value) and np.abs(res.x).max() <= BOUND[1] and np.abs(grad).max() <= NEWTON_GTOL \
        else None


def _polish(objective: _Objective, theta: np.ndarray) -> np.ndarray:
    """One plain Newton step from theta (the trust region stops where the value no longer resolves the last step):
    the new point when its gradient is smaller."""
    _, grad, hess = objective(theta)
    try:
        new = theta - np.linalg.solve(hess, grad)
    except np.linalg.LinAlgError:
        return theta
    if not np.all(np.isfinite(new)) or np.abs(new).max() > BOUND[1]:
        return theta
    value, new_grad, _ = objective(new)
    return new if np.isfinite(value) and np.abs(new_grad).max() < np.abs(grad).max() else theta


def _fit_ml(evaluate: Evaluate, sample: Evaluate | None, n: float, n_sample: float, x0: np.ndarray,
            names: list[str]) -> tuple[np.ndarray, float, dict[str, float], bool, int, str]:
    """Maximum likelihood by Newton steps with the analytic Hessian in a trust region on log-parameters, first on
    `sample` (a seeded sample standing in for large data) when given, then on all the data, which takes a few passes
    from there, and a last plain Newton step; bounded L-BFGS-B is the fallback should the Newton steps fail. SEs from
    the inverse of the analytic Hessian. Returns estimates, LL, SEs, converged, iterations, message."""
    objective = _Objective(evaluate, n)
    start = x0
    if sample is not None:
        warm = _Objective(sample, n_sample)
        start = (_newton(warm, x0) or _lbfgs(warm, x0)).x
    res = _newton(objective, start)
    message = f"Newton steps converged (gradient below {NEWTON_GTOL:g})"
    if res is None:
        res = _lbfgs(objective, start)
        message = str(res.message)
    theta = _polish(objective, res.x)
    est = np.exp(theta)
    ll, grad, hess = objective.natural(theta)
    try:
        cov = np.linalg.inv(-hess)
    except np.linalg.LinAlgError:
        cov = np.full((len(est), len(est)), np.nan)
    variances = np.diag(cov)
    se = np.sqrt(np.where(variances > 0, variances, np.nan))
    converged = bool(np.max(np.abs(grad * est / n)) < 1e-5 and np.isfinite(se).all())
    return est, float(ll), dict(zip(names, se.tolist())), converged, int(res.nit), message


def _sample_rows(w: np.ndarray) -> np.ndarray | None:
    """Rows of a seeded weighted sample of WARM_SAMPLE customers when there are more than WARM_START_ROWS distinct
    rows, else None."""
    if len(w) <= WARM_START_ROWS:
        return None
    return np.random.default_rng(0).choice(len(w), WARM_SAMPLE, p=w / w.sum())


# ---------------------------------------------------------------------------------------------------- BG/NBD


def _factorize_rows(*cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact identical-row grouping: (index of one row per group, group of every row), by hashing (pandas.factorize,
    linear time) each column and then the combined integer codes."""
    key = np.zeros(len(cols[0]), dtype=np.int64)
    for col in cols:
        code, uniq = pd.factorize(col)
        if (int(key.max(initial=0)) + 1) * len(uniq) >= 2**62:  # cannot happen below ~2 billion rows; refactorize
            key = pd.factorize(key)[0].astype(np.int64)
        key = key * len(uniq) + code
    inverse, uniq = pd.factorize(key)
    first = np.empty(len(uniq), dtype=np.intp)
    first[inverse] = np.arange(len(inverse))  # any row of a group will do: its rows are identical
    return first, inverse


def _collapse(*cols: np.ndarray, weights: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Exact collapse of identical rows into weights."""
    first, inverse = _factorize_rows(*cols)
    w = np.bincount(inverse, weights=weights, minlength=len(first))
    keep = w > 0
    return [col[first][keep] for col in cols], w[keep]


@dataclass(frozen=True)
class _BGNBDData:
    """BG/NBD data arranged for fast likelihood passes: total weight per distinct x; weight and weighted x per
    distinct T; and the repeat rows (x > 0), sorted by x, as indices into their distinct x, T and t_x values (logs are
    taken once per distinct value), with the start of each x in the sorted rows and work buffers for the passes
    (reused: allocating fresh arrays on every pass costs more than the arithmetic)."""

    ux: np.ndarray
    w_x: np.ndarray
    u_T: np.ndarray
    w_T: np.ndarray
    xw_T: np.ndarray
    x: np.ndarray
    w: np.ndarray
    i_x: np.ndarray
    i_T: np.ndarray
    u_t: np.ndarray
    i_t: np.ndarray
    rx_start: np.ndarray
    rx: np.ndarray
    work: np.ndarray

    @classmethod
    def build(cls, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, w: np.ndarray) -> _BGNBDData:
        x_code, ux = pd.factorize(x, sort=True)
        w_x = np.bincount(x_code, weights=w, minlength=len(ux))
        T_code, u_T = pd.factorize(T)
        w_T = np.bincount(T_code, weights=w, minlength=len(u_T))
        xw_T = np.bincount(T_code, weights=w * x, minlength=len(u_T))
        rep = np.flatnonzero(x > 0)
        rep = rep[np.argsort(x_code[rep].astype(np.int16 if len(ux) < 2**15 else np.int64), kind="stable")]
        t_code, u_t = pd.factorize(t_x[rep])
        xr = x[rep]
        rx_start = np.flatnonzero(np.r_[True, xr[1:] != xr[:-1]]) if len(xr) else np.zeros(0, dtype=np.intp)
        i_x = np.repeat(np.arange(len(rx_start), dtype=np.int32), np.diff(np.r_[rx_start, len(xr)]))
        return cls(ux, w_x, u_T, w_T, xw_T, xr, w[rep], i_x, T_code[rep].astype(np.int32), u_t,
                   t_code.astype(np.int32), rx_start, xr[rx_start], np.empty((8, len(xr))))

    def evaluate(self, params: np.ndarray, hessian: bool = True) -> tuple[float, np.ndarray, np.ndarray | None]:
        """Log-likelihood (FHL 2005 eq. 6), gradient and Hessian in natural parameters (r, alpha, a, b). Per customer
        LL = f(x) - (r + x) log(alpha + T) + [x > 0] softplus(d), with f(x) = log G(r+x) - log G(r) + r log alpha +
        log B(a, b+x) - log B(a, b) and d = log a - log(b + x - 1) + (r + x)(log(alpha + T) - log(alpha + t_x)),
        the log-odds of the 'dropped out right after the last purchase' branch (its sigmoid s is that branch's
        posterior weight). Derivatives of d: D = log(alpha+T) - log(alpha+t_x) for r, (r+x) E with
        E = 1/(alpha+T) - 1/(alpha+t_x) for alpha, 1/a and -1/(b+x-1) for a and b."""
        r, alpha, a, b = params
        ux, w_x, w_T, rw_T = self.ux, self.w_x, self.w_T, r * self.w_T + self.xw_T
        w_tot = w_x.sum()
        f = (special.gammaln(r + ux) - special.gammaln(r) + r * np.log(alpha) + special.betaln(a, b + ux)
             - special.betaln(a, b))
        log_T, inv_T = np.log(alpha + self.u_T), 1 / (alpha + self.u_T)
        log_t, inv_t = np.log(alpha + self.u_t), 1 / (alpha + self.u_t)
        dig_abx, dig_ab = special.digamma(a + b + ux), special.digamma(a + b)
        v = 1 / (b + self.rx - 1)
        # per repeat row, in the work buffers (names say what each holds at that point)
        D, rx, d, e, s, ws, E, G = self.work
        np.take(log_T, self.i_T, out=D, mode="clip")
        D -= np.take(log_t, self.i_t, out=E, mode="clip")
        np.add(self.x, r, out=rx)
        np.multiply(rx, D, out=d)
        d += np.take(np.log(a) - np.log(b + self.rx - 1), self.i_x, out=E, mode="clip")
        np.abs(d, out=e)
        np.negative(e, out=e)
        np.exp(e, out=e)
        np.log1p(e, out=s)
        ll_softplus = _dot(self.w, s) + _dot(self.w, np.maximum(d, 0, out=ws))
        np.add(e, 1, out=ws)
        np.divide(1.0, ws, out=s)
        np.multiply(s, e, out=s, where=d < 0)
        np.multiply(self.w, s, out=ws)
        np.take(inv_T, self.i_T, out=E, mode="clip")
        np.take(inv_t, self.i_t, out=e, mode="clip")
        np.subtract(E, e, out=G)
        e += E  # 1/(alpha+T) + 1/(alpha+t_x)
        np.copyto(E, G)  # 1/(alpha+T) - 1/(alpha+t_x)
        G *= rx
        ll = _dot(w_x, f) - _dot(log_T, rw_T) + ll_softplus
        S = np.add.reduceat(ws, self.rx_start)
        sum_ws = ws.sum()
        grad = np.array([
            _dot(w_x, special.digamma(r + ux) - special.digamma(r) + np.log(alpha)) - _dot(log_T, w_T) + _dot(ws, D),
            r / alpha * w_tot - _dot(inv_T, rw_T) + _dot(ws, G),
            _dot(w_x, dig_ab - dig_abx) + sum_ws / a,
            _dot(w_x, special.digamma(b + ux) - dig_abx - special.digamma(b) + dig_ab) - _dot(v, S),
        ])
        if not hessian:
            return ll, grad, None
        h = np.empty((4, 4))
        h[1, 1] = -_dot(np.multiply(np.multiply(ws, rx, out=rx), E, out=rx), e)  # sum w s (r+x) d2d/dalpha2
        h[0, 1] = _dot(ws, E)
        u = np.multiply(ws, np.subtract(1.0, s, out=s), out=s)
        uD, uG = np.multiply(u, D, out=d), np.multiply(u, G, out=e)
        U, UD, UG = (np.add.reduceat(q, self.rx_start) for q in (u, uD, uG))
        tri_abx, tri_ab = special.polygamma(1, a + b + ux), special.polygamma(1, a + b)
        h_ab = _dot(w_x, tri_ab - tri_abx)
        h[0, 0] = _dot(w_x, special.polygamma(1, r + ux) - special.polygamma(1, r)) + _dot(uD, D)
        h[0, 1] += w_tot / alpha - _dot(inv_T, w_T) + _dot(uD, G)
        h[0, 2] = uD.sum() / a
        h[0, 3] = -_dot(v, UD)
        h[1, 1] += -r * w_tot / alpha**2 + _dot(inv_T**2, rw_T) + _dot(uG, G)
        h[1, 2] = uG.sum() / a
        h[1, 3] = -_dot(v, UG)
        h[2, 2] = h_ab + (u.sum() - sum_ws) / a**2
        h[2, 3] = h_ab - _dot(v, U) / a
        h[3, 3] = (_dot(w_x, special.polygamma(1, b + ux) - tri_abx - special.polygamma(1, b) + tri_ab)
                   + _dot(v**2, U + S))
        return ll, grad, np.triu(h) + np.triu(h, 1).T


def fit_bgnbd(x: ArrayLike, t_x: ArrayLike, T: ArrayLike, weights: ArrayLike | None = None) -> BGNBDFit:
    """Maximum-likelihood BG/NBD fit (FHL 2005 eq. 6; analytic gradient and Hessian, identical rows collapsed)."""
    x, t_x, T = _arrays("fit_bgnbd", x=x, t_x=t_x, T=T)
    _check_btyd(x, t_x, T, "fit_bgnbd")
    if len(x) < 10 or (x > 0).sum() == 0:
        raise InputError(f"fit_bgnbd: {len(x)} customers, {int((x > 0).sum())} with repeat purchases; the model "
                         f"needs at least 10 customers and some repeat buyers.")
    w = _weights(weights, len(x), "fit_bgnbd")
    (x, t_x, T), w = _collapse(x, t_x, T, weights=w)
    pick = _sample_rows(w)
    sample = None if pick is None else _BGNBDData.build(x[pick], t_x[pick], T[pick], np.ones(len(pick))).evaluate
    x0 = np.log([1.0, max(float(np.average(T, weights=w)) / 8, 1e-3), 1.0, 1.0])
    est, ll, se, converged, nit, message = _fit_ml(_BGNBDData.build(x, t_x, T, w).evaluate, sample, float(w.sum()),
                                                   WARM_SAMPLE, x0, ["r", "alpha", "a", "b"])
    return BGNBDFit(*map(float, est), log_likelihood=ll, se=se, converged=converged,
                    n_customers=round(w.sum()), iterations=nit, n_unique=len(w), message=message)


def bgnbd_p_alive(fit: BGNBDFit, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> np.ndarray:
    """P(alive | x, t_x, T) (FHL 2005 eq. 11 of the technical note); 1 for customers with no repeat purchase."""
    x, t_x, T = _arrays("bgnbd_p_alive", x=x, t_x=t_x, T=T)
    pos = x > 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_ratio = (np.log(fit.a) - np.log(np.where(pos, fit.b + x - 1, 1.0))
                     + (fit.r + x) * (np.log(fit.alpha + T) - np.log(fit.alpha + t_x)))
        return np.where(pos, 1 / (1 + np.exp(log_ratio)), 1.0)


def _beta_nodes(a: float, b: float, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes and normalised weights for p ~ Beta(a, b): Gauss-Jacobi while scipy's recursion is stable,
    else the trapezoid rule in s = log p (smooth, fast-decaying integrand; (1 - p)^(b-1) makes p -> 1 negligible)."""
    if b <= 150:
        p, w = special.roots_sh_jacobi(nodes, a + b - 1, a)
        return p, w / w.sum()
    s = np.linspace(-60.0 / min(a, 1.0), np.log1p(-1e-12), 1601)
    log_w = a * s + (b - 1) * np.log1p(-np.exp(s))
    w = np.exp(log_w - log_w.max())
    return np.exp(s), w / w.sum()


def _alive_expectation_quadrature(fit: BGNBDFit, t: np.ndarray, x: np.ndarray, T: np.ndarray,
                                  nodes: int = 40) -> np.ndarray:
    """E[purchases in (T, T+t] | alive, x, T] = E_p[(1 - (1 + p t/(alpha+T))^-(r+x)) / p], p ~ Beta(a, b+x), by
    quadrature: the fallback where hyp2f1 fails (and valid for a = 1)."""
    out = np.empty_like(t)
    for ux in np.unique(x):
        sel = x == ux
        p_nodes, wts = _beta_nodes(fit.a, fit.b + ux, nodes)
        c = t[sel, None] / (fit.alpha + T[sel, None])
        vals = -np.expm1(-(fit.r + ux) * np.log1p(p_nodes[None, :] * c)) / p_nodes[None, :]
        out[sel] = vals @ wts
    return out


def _hyp2f1(a: np.ndarray, b: np.ndarray, c: np.ndarray, z: np.ndarray) -> np.ndarray:
    """scipy.special.hyp2f1 on equal-length arrays, in one chunk per core above PARALLEL_ABOVE values (the ufunc
    releases the GIL, and it is most of the cost of scoring CLV)."""
    workers = min(os.cpu_count() or 1, 4)
    if len(z) < PARALLEL_ABOVE or workers < 2:
        return special.hyp2f1(a, b, c, z)
    out = np.empty(len(z))
    bounds = np.linspace(0, len(z), workers + 1).astype(int)

    def chunk(lo: int, hi: int) -> None:
        out[lo:hi] = special.hyp2f1(a[lo:hi], b[lo:hi], c[lo:hi], z[lo:hi])

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(chunk, bounds[:-1], bounds[1:]))
    return out


def _alive_expectation_unique(fit: BGNBDFit, t: np.ndarray, x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Expected purchases in (T, T+t] for a customer alive at T, via hyp2f1 (FHL 2005 eq. 10 without the P(alive)
    factor), with a quadrature fallback where hyp2f1 fails or a is near 1."""
    r, alpha, a, b = fit.r, fit.alpha, fit.a, fit.b
    if abs(a - 1) < 1e-3:
        return _alive_expectation_quadrature(fit, t, x, T)
    with np.errstate(all="ignore"):
        h = _hyp2f1(r + x, b + x, a + b + x - 1, t / (alpha + T + t))
        log_pow = (r + x) * (np.log(alpha + T) - np.log(alpha + T + t))
        val = (a + b + x - 1) / (a - 1) * (1 - np.exp(log_pow) * h)
    # sanity bounds: 0 <= E <= E[Poisson count with posterior-mean rate] (an upper bound: dropout only lowers it)
    upper = (r + x) / (alpha + T) * t
    bad = ~np.isfinite(val) | (val < -1e-9) | (val > upper * (1 + 1e-6) + 1e-9)
    if bad.any():
        val[bad] = _alive_expectation_quadrature(fit, t[bad], x[bad], T[bad])
    return np.clip(val, 0.0, None)


def _alive_expectation(fit: BGNBDFit, t: np.ndarray, x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """`_alive_expectation_unique` computed once per distinct (t, x, T)."""
    first, inverse = _factorize_rows(t, x, T)
    return _alive_expectation_unique(fit, t[first], x[first], T[first])[inverse]


def bgnbd_expected_purchases(fit: BGNBDFit, t: float | ArrayLike, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
                             ) -> np.ndarray:
    """E[Y(t) | x, t_x, T]: expected purchases in the next t time units (FHL 2005 eq. 10; hyp2f1 with a guarded
    quadrature fallback)."""
    x, t_x, T = _arrays("bgnbd_expected_purchases", x=x, t_x=t_x, T=T)
    t_arr = np.broadcast_to(np.asarray(t, dtype=float), x.shape).astype(float)
    if (t_arr < 0).any():
        raise InputError("bgnbd_expected_purchases: horizon t must be >= 0.")
    return bgnbd_p_alive(fit, x, t_x, T) * _alive_expectation(fit, t_arr, x, T)


def bgnbd_expected_population(fit: BGNBDFit, t: float | ArrayLike) -> np.ndarray:
    """Unconditional E[X(t)] for a customer whose clock starts at the first purchase (FHL 2005 eq. 9)."""
    t_arr = np.atleast_1d(np.asarray(t, dtype=float))
    if (t_arr < 0).any():
        raise InputError("bgnbd_expected_population: t must be >= 0.")
    zeros = np.zeros_like(t_arr)
    return _alive_expectation(fit, t_arr, zeros, zeros)


def bgnbd_next_purchase(fit: BGNBDFit, x: ArrayLike, T: ArrayLike, as_of: str | date, time_unit: str = "W"
                        ) -> pd.DataFrame:
    """Median wait to the next purchase if alive, (alpha+T)(2^(1/(r+x)) - 1) time units, and as_of + that wait."""
    x, T = _arrays("bgnbd_next_purchase", x=x, T=T)
    if time_unit not in TIME_UNIT_DAYS:
        raise InputError(f"time_unit must be one of {list(TIME_UNIT_DAYS)}, got '{time_unit}'.")
    wait = (fit.alpha + T) * np.expm1(np.log(2.0) / (fit.r + x))
    days = np.minimum(wait * TIME_UNIT_DAYS[time_unit], 365.25 * 200)
    dates = pd.Timestamp(as_of) + pd.to_timedelta(np.round(days), unit="D")
    return pd.DataFrame({"median_wait": wait, "next_purchase_date": dates})


# ---------------------------------------------------------------------------------------------------- Gamma-Gamma


@dataclass(frozen=True)
class _GGData:
    """Gamma-Gamma data arranged for fast likelihood passes: total weight per distinct x, the sums of w x log z and
    w log z (constant in the parameters), and per row the weights w, w x and x z."""

    ux: np.ndarray
    w_x: np.ndarray
    wx_log_z: float
    w_log_z: float
    w: np.ndarray
    wx: np.ndarray
    xz: np.ndarray

    @classmethod
    def build(cls, x: np.ndarray, z: np.ndarray, w: np.ndarray) -> _GGData:
        x_code, ux = pd.factorize(x)
        log_z, wx = np.log(z), w * x
        return cls(ux, np.bincount(x_code, weights=w, minlength=len(ux)), _dot(wx, log_z), _dot(w, log_z), w, wx,
                   x * z)

    def evaluate(self, params: np.ndarray, hessian: bool = True) -> tuple[float, np.ndarray, np.ndarray | None]:
        """Log-likelihood (Fader & Hardie note 025), gradient and Hessian in natural parameters (p, q, gamma): per
        customer log G(px+q) - log G(px) - log G(q) + q log gamma + px log x + (px-1) log z - (px+q) log(gamma + xz)."""
        p, q, g = params
        ux, w_x = self.ux, self.w_x
        pux = p * ux
        log_gxz = np.log(g + self.xz)
        inv = 1 / (g + self.xz)
        sum_wx_log, sum_w_log = _dot(self.wx, log_gxz), _dot(self.w, log_gxz)
        sum_wx_inv, sum_w_inv = _dot(self.wx, inv), _dot(self.w, inv)
        w_tot = w_x.sum()
        dig = special.digamma(pux + q)
        ll = (_dot(w_x, special.gammaln(pux + q) - special.gammaln(pux) - special.gammaln(q) + q * np.log(g)
                   + pux * np.log(ux)) + p * self.wx_log_z - self.w_log_z - p * sum_wx_log - q * sum_w_log)
        grad = np.array([_dot(w_x, ux * (dig - special.digamma(pux) + np.log(ux))) + self.wx_log_z - sum_wx_log,
                         _dot(w_x, dig - special.digamma(q) + np.log(g)) - sum_w_log,
                         q / g * w_tot - p * sum_wx_inv - q * sum_w_inv])
        if not hessian:
            return float(ll), grad, None
        tri = special.polygamma(1, pux + q)
        inv2 = inv * inv
        h_pq = _dot(w_x, ux * tri)
        h_pg = -sum_wx_inv
        h_qg = w_tot / g - sum_w_inv
        hess = np.array([
            [_dot(w_x, ux**2 * (tri - special.polygamma(1, pux))), h_pq, h_pg],
            [h_pq, _dot(w_x, tri - special.polygamma(1, q)), h_qg],
            [h_pg, h_qg, -q * w_tot / g**2 + p * _dot(self.wx, inv2) + q * _dot(self.w, inv2)]])
        return float(ll), grad, hess


def _gg_inputs(frequency: ArrayLike, mean_value: ArrayLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(frequency, dtype=float)
    z = np.asarray(mean_value, dtype=float)
    if x.shape != z.shape or x.ndim != 1:
        raise InputError(f"{what}: frequency and mean_value must be 1-D and of equal length.")
    return x, z


def fit_gamma_gamma(frequency: ArrayLike, mean_value: ArrayLike, weights: ArrayLike | None = None) -> GammaGammaFit:
    """Maximum-likelihood Gamma-Gamma fit on the customers with frequency > 0 (others are ignored); mean_value must be
    > 0 for them (drop customers whose repeat purchases net to zero or less)."""
    x, z = _gg_inputs(frequency, mean_value, "fit_gamma_gamma")
    w = _weights(weights, len(x), "fit_gamma_gamma")
    use = np.isfinite(x) & (x > 0)
    bad = use & ~(np.isfinite(z) & (z > 0))
    if bad.any():
        raise InputError(f"fit_gamma_gamma: {int(bad.sum())} repeat customer(s) with mean_value <= 0 or missing; "
                         f"drop them (e.g. repeat purchases fully returned) before fitting.")
    x, z, w = x[use], z[use], w[use]
    if len(x) < 10:
        raise InputError(f"fit_gamma_gamma: only {len(x)} customers with repeat purchases; need at least 10.")
    pick = _sample_rows(w)
    sample = None if pick is None else _GGData.build(x[pick], z[pick], np.ones(len(pick))).evaluate
    x0 = np.log([1.0, 1.0, float(np.average(z, weights=w))])
    est, ll, se, converged, nit, message = _fit_ml(_GGData.build(x, z, w).evaluate, sample, float(w.sum()),
                                                   WARM_SAMPLE, x0, ["p", "q", "gamma"])
    return GammaGammaFit(*map(float, est), log_likelihood=ll, se=se, converged=converged,
                         n_customers=round(w.sum()), iterations=nit, message=message)


def gg_expected_order_value(fit: GammaGammaFit, frequency: ArrayLike, mean_value: ArrayLike) -> np.ndarray:
    """E[M | x, zbar] = p(gamma + x zbar) / (p x + q - 1); customers with x = 0 get the population mean
    p gamma / (q - 1) (requires q > 1)."""
    x, z = _gg_inputs(frequency, mean_value, "gg_expected_order_value")
    if fit.q <= 1:
        raise InputError(f"gg_expected_order_value: fitted q = {fit.q:.3f} <= 1, the mean spend is infinite; "
                         f"check for extreme order values before fitting.")
    x = np.where(np.isfinite(x) & (x > 0), x, 0.0)
    z = np.where(np.isfinite(z), z, 0.0)
    return fit.p * (fit.gamma + x * z) / (fit.p * x + fit.q - 1)


def spend_frequency_correlation(frequency: ArrayLike, mean_value: ArrayLike) -> float:
    """Pearson correlation of frequency and mean repeat value over repeat customers: the Gamma-Gamma independence
    assumption (near 0 is fine; |r| above ~0.3 means the spend model is biased)."""
    x, z = _gg_inputs(frequency, mean_value, "spend_frequency_correlation")
    use = np.isfinite(x) & (x > 0) & np.isfinite(z)
    if use.sum() < 3:
        raise InputError("spend_frequency_correlation: fewer than 3 repeat customers.")
    return float(np.corrcoef(x[use], z[use])[0, 1])


# ---------------------------------------------------------------------------------------------------- CLV


def customer_lifetime_value(bgnbd: BGNBDFit, gg: GammaGammaFit, x: ArrayLike, t_x: ArrayLike, T: ArrayLike,
                            mean_value: ArrayLike, horizon_months: int, discount_rate_annual: float,
                            time_unit: str = "W", margin: float = 1.0) -> pd.Series:
    """Discounted CLV: sum over months m = 1..H of (E[Y(m)] - E[Y(m-1)]) x E[order value] x margin / (1+d)^(m/12),
    with months of 365.25/12 days converted to `time_unit` and d the annual discount rate."""
    if horizon_months < 1:
        raise InputError(f"horizon_months must be >= 1, got {horizon_months}.")
    if not 0 <= discount_rate_annual < 1:
        raise InputError(f"discount_rate_annual must be in [0, 1), e.g. 0.1 for 10 %, got {discount_rate_annual}.")
    if time_unit not in TIME_UNIT_DAYS:
        raise InputError(f"time_unit must be one of {list(TIME_UNIT_DAYS)}, got '{time_unit}'.")
    x, t_x, T = _arrays("customer_lifetime_value", x=x, t_x=t_x, T=T)
    _check_btyd(x, t_x, T, "customer_lifetime_value")
    value = gg_expected_order_value(gg, x, mean_value) * margin
    p_alive = bgnbd_p_alive(bgnbd, x, t_x, T)
    month = TIME_UNIT_DAYS["M"] / TIME_UNIT_DAYS[time_unit]
    first, inverse = _factorize_rows(x, T)
    ux, uT = x[first], T[first]
    discounted = np.zeros_like(ux)
    previous = np.zeros_like(ux)
    for m in range(1, horizon_months + 1):
        current = _alive_expectation_unique(bgnbd, np.full_like(ux, m * month), ux, uT)
        discounted += (current - previous) / (1 + discount_rate_annual) ** (m / 12)
        previous = current
    return pd.Series(discounted[inverse] * p_alive * value, name="clv")


# ---------------------------------------------------------------------------------------------------- holdout checks


def holdout_comparison(fit: BGNBDFit, cal: pd.DataFrame, holdout: pd.DataFrame, holdout_length: float,
                       max_frequency: int = 7, id_col: str = "customer_id") -> HoldoutResult:
    """Mean predicted vs actual holdout purchases per calibration frequency 0..max_frequency+ (FHL 2005 fig. 3).

    `cal` has id_col, x, t_x, T at the calibration end; `holdout` has id_col, holdout_purchases (customers absent
    from it made none); holdout_length is in the time unit of t_x and T. MAE is over customers.
    """
    for name, frame, cols in (("cal", cal, [id_col, "x", "t_x", "T"]), ("holdout", holdout,
                                                                        [id_col, "holdout_purchases"])):
        missing = [c for c in cols if c not in frame]
        if missing:
            raise InputError(f"holdout_comparison: '{name}' lacks column(s) {missing}.")
    df = cal[[id_col, "x", "t_x", "T"]].dropna()
    notes = []
    if len(df) < len(cal):
        notes.append(f"{len(cal) - len(df)} calibration customers without a purchase left out.")
    df = df.merge(holdout[[id_col, "holdout_purchases"]], on=id_col, how="left")
    df["actual"] = df["holdout_purchases"].fillna(0).astype(float)
    df["predicted"] = bgnbd_expected_purchases(fit, holdout_length, df["x"], df["t_x"], df["T"])
    label = [str(i) for i in range(max_frequency)] + [f"{max_frequency}+"]
    df["frequency_bucket"] = pd.Categorical.from_codes(np.minimum(df["x"].astype(int), max_frequency), label)
    table = (df.groupby("frequency_bucket", observed=False)
               .agg(customers=("actual", "size"), actual=("actual", "mean"), predicted=("predicted", "mean"))
               .reset_index())
    total_actual, total_predicted = float(df["actual"].sum()), float(df["predicted"].sum())
    pct = (total_predicted - total_actual) / total_actual * 100 if total_actual else float("nan")
    return HoldoutResult(table, float(np.mean(np.abs(df["predicted"] - df["actual"]))), total_actual,
                         total_predicted, float(pct), notes)


def cumulative_tracking(fit: BGNBDFit, daily_counts: pd.DataFrame, calibration_end: str | date,
                        end: str | date, time_unit: str = "W") -> pd.DataFrame:
    """Cumulative actual vs predicted repeat purchases per time unit (FHL 2005 fig. 2): predicted = sum over first-
    purchase days d of n_first(d) x E[X(tau - d)]. `daily_counts` is `cvm.features.daily_purchase_counts`."""
    missing = [c for c in ("day", "n_first", "n_repeat") if c not in daily_counts]
    if missing:
        raise InputError(f"cumulative_tracking: daily_counts lacks {missing}; use cvm.features.daily_purchase_counts.")
    if time_unit not in TIME_UNIT_DAYS:
        raise InputError(f"time_unit must be one of {list(TIME_UNIT_DAYS)}, got '{time_unit}'.")
    unit = TIME_UNIT_DAYS[time_unit]
    days = pd.to_datetime(daily_counts["day"])
    start = days.min()
    cohorts = daily_counts.loc[daily_counts["n_first"] > 0]
    cohort_day = pd.to_datetime(cohorts["day"])
    n_periods = int(np.ceil(((pd.Timestamp(end) - start).days + 1) / unit))
    # period k covers the days [start + (k-1) unit, start + k unit - 1], the last one cut at `end`
    offsets = np.floor(np.arange(1, n_periods + 1) * unit) - 1
    period_end = pd.DatetimeIndex(start + pd.to_timedelta(offsets, unit="D"))
    period_end = period_end.where(period_end <= pd.Timestamp(end), pd.Timestamp(end))
    age = ((period_end.to_numpy()[:, None] - cohort_day.to_numpy()[None, :]) / np.timedelta64(1, "D")) / unit
    expected = bgnbd_expected_population(fit, np.clip(age, 0, None).ravel()).reshape(age.shape)
    predicted = expected @ cohorts["n_first"].to_numpy(dtype=float)
    period = np.searchsorted(period_end.to_numpy(), days.to_numpy(), side="left")
    keep = period < n_periods
    actual = np.bincount(period[keep], weights=daily_counts["n_repeat"].to_numpy(dtype=float)[keep],
                         minlength=n_periods)
    return pd.DataFrame({"period": np.arange(1, n_periods + 1), "period_end": period_end,
                         "actual_cum": np.cumsum(actual), "predicted_cum": predicted,
                         "calibration": period_end <= pd.Timestamp(calibration_end)})


def plot_holdout_by_frequency(result: HoldoutResult) -> Figure:
    """Grouped bars of mean actual vs predicted holdout purchases by calibration frequency (FHL 2005 fig. 3)."""
    t = result.table
    fig, ax = plt.subplots(figsize=(8, 4.5))
    pos = np.arange(len(t))
    ax.bar(pos - 0.2, t["actual"], width=0.4, label="Actual", color="#4c72b0")
    ax.bar(pos + 0.2, t["predicted"], width=0.4, label="BG/NBD predicted", color="#dd8452")
    ax.set_xticks(pos, t["frequency_bucket"].astype(str))
    ax.set_xlabel("Repeat purchases in the calibration period")
    ax.set_ylabel("Mean purchases per customer in the holdout")
    ax.set_title(f"Holdout: model predicts {result.total_predicted:,.0f} purchases vs {result.total_actual:,.0f} "
                 f"actual ({result.total_pct_error:+.1f} %)")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_cumulative_tracking(tracking: pd.DataFrame, unit_label: str = "weeks") -> Figure:
    """Cumulative actual vs predicted repeat purchases per period with the calibration end marked (FHL 2005 fig. 2);
    `tracking` is the output of `cumulative_tracking` and unit_label names its time unit."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(tracking["period"], tracking["actual_cum"], label="Actual", color="#4c72b0")
    ax.plot(tracking["period"], tracking["predicted_cum"], "--", label="BG/NBD predicted", color="#dd8452")
    cal = tracking.loc[tracking["calibration"], "period"]
    if len(cal):
        ax.axvline(cal.max(), color="grey", lw=1)
        ax.annotate("end of calibration", (cal.max(), 0), xytext=(4, 4), textcoords="offset points", color="grey")
    last = tracking.iloc[-1]
    gap = (last["predicted_cum"] - last["actual_cum"]) / last["actual_cum"] * 100 if last["actual_cum"] else 0.0
    ax.set_title(f"Cumulative repeat purchases: the model is {gap:+.1f} % off the actual at the end")
    ax.set_xlabel(f"Time since first cohort purchase ({unit_label})")
    ax.set_ylabel("Cumulative repeat purchases")
    ax.legend()
    fig.tight_layout()
    return fig
