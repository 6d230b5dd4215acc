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

from collections.abc import Callable
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
Terms = Callable[..., tuple[float, np.ndarray]]

#: Above this many distinct rows the fit starts from a fit on a sample of WARM_SAMPLE customers.
WARM_START_ROWS = 50_000
WARM_SAMPLE = 20_000


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


def _minimise(neg_ll: Callable[[np.ndarray], tuple[float, np.ndarray]], x0: np.ndarray, scale: float
              ) -> optimize.OptimizeResult:
    """Minimise the mean negative LL over log-parameters with L-BFGS-B."""
    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = neg_ll(theta)
        if not np.isfinite(value):
            return 1e300, np.zeros_like(theta)
        return value / scale, grad / scale

    bounds = [(-15.0, 15.0)] * len(x0)
    return optimize.minimize(f, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                             options={"maxiter": 1000, "ftol": 1e-13, "gtol": 1e-9})


def _objective(terms: Terms, cols: list[np.ndarray], w: np.ndarray
               ) -> tuple[Callable[[np.ndarray], tuple[float, np.ndarray]], Callable[[np.ndarray], np.ndarray]]:
    """Negative LL and gradient over log-parameters, and the gradient over natural parameters, for a terms function
    whose first data column is the frequency x (rows are sorted by x here)."""
    order = np.argsort(cols[0], kind="stable")
    cols, w = [c[order] for c in cols], w[order]
    ux, ix = np.unique(cols[0], return_inverse=True)

    def neg_ll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        params = np.exp(theta)
        ll, grad = terms(params, *cols, w, ux, ix)
        return -ll, -grad * params

    return neg_ll, lambda params: -terms(params, *cols, w, ux, ix)[1]


def _hessian(grad_natural: Callable[[np.ndarray], np.ndarray], theta: np.ndarray) -> np.ndarray:
    """Hessian of the negative LL in natural parameters by central differences of the analytic gradient."""
    k = len(theta)
    hess = np.empty((k, k))
    for i in range(k):
        h = 1e-5 * theta[i]
        up, down = theta.copy(), theta.copy()
        up[i] += h
        down[i] -= h
        hess[:, i] = (grad_natural(up) - grad_natural(down)) / (2 * h)
    return (hess + hess.T) / 2


def _fit_ml(terms: Terms, cols: list[np.ndarray], w: np.ndarray, x0: np.ndarray, names: list[str]
            ) -> tuple[np.ndarray, float, dict[str, float], bool, int, str]:
    """Maximum likelihood: L-BFGS-B on log-parameters, then one Newton polish step with the Hessian that also gives
    the standard errors. Above WARM_START_ROWS distinct rows it starts from the fit on a seeded weighted sample of
    WARM_SAMPLE customers (fewer passes over the full data; the optimum is the full-data MLE either way).
    Returns estimates, LL, SEs, converged, iterations, message."""
    if len(w) > WARM_START_ROWS:
        pick = np.random.default_rng(0).choice(len(w), WARM_SAMPLE, p=w / w.sum())
        sample_ll, _ = _objective(terms, [c[pick] for c in cols], np.ones(WARM_SAMPLE))
        x0 = _minimise(sample_ll, x0, WARM_SAMPLE).x
    neg_ll, grad_natural = _objective(terms, cols, w)
    res = _minimise(neg_ll, x0, float(w.sum()))
    est = np.exp(res.x)
    ll = -neg_ll(res.x)[0]
    try:
        cov = np.linalg.inv(_hessian(grad_natural, est))
    except np.linalg.LinAlgError:
        cov = np.full((len(est), len(est)), np.nan)
    step = cov @ grad_natural(est)
    if np.isfinite(step).all() and np.all(step < est):
        polished_ll = -neg_ll(np.log(est - step))[0]
        if polished_ll >= ll:
            est, ll = est - step, polished_ll
    variances = np.diag(cov)
    se = np.sqrt(np.where(variances > 0, variances, np.nan))
    gradient = grad_natural(est) * est / w.sum()
    converged = bool(np.max(np.abs(gradient)) < 1e-5 and np.isfinite(se).all())
    return est, float(ll), dict(zip(names, se.tolist())), converged, int(res.nit), str(res.message)


# ---------------------------------------------------------------------------------------------------- BG/NBD


def _factorize_rows(*cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact identical-row grouping: (index of one row per group, group of every row). Each column is factorised with
    a 1-D sort and the codes combined into one int64 key, which is much faster than np.unique(axis=0)."""
    key = np.zeros(len(cols[0]), dtype=np.int64)
    size = 1
    for col in cols:
        uniq, code = np.unique(col, return_inverse=True)
        if size * len(uniq) >= 2**62:  # cannot happen below ~2 billion rows per column; fall back to the slow path
            _, first, inverse = np.unique(np.column_stack(cols), axis=0, return_index=True, return_inverse=True)
            return first, inverse.ravel()
        key = key * len(uniq) + code.ravel()
        size *= len(uniq)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return first, inverse.ravel()


def _collapse(*cols: np.ndarray, weights: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Exact collapse of identical rows into weights."""
    first, inverse = _factorize_rows(*cols)
    w = np.bincount(inverse, weights=weights, minlength=len(first))
    keep = w > 0
    return [col[first][keep] for col in cols], w[keep]


def _bgnbd_terms(params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, w: np.ndarray,
                 ux: np.ndarray, ix: np.ndarray) -> tuple[float, np.ndarray]:
    """Log-likelihood and gradient in natural parameters. Functions of x alone are computed once per distinct x and
    their weighted sums taken with per-x totals (bincount), so the per-row work is a few logs and exps."""
    r, alpha, a, b = params
    rux = r + ux
    pos = ux > 0
    bx1 = np.where(pos, b + ux - 1, 1.0)
    lg = special.gammaln(rux) - special.gammaln(r) + r * np.log(alpha)
    beta0 = special.betaln(a, b)
    b2 = special.betaln(a, b + ux) - beta0
    b3 = np.where(pos, special.betaln(a + 1, bx1) - beta0, -np.inf)
    dig_abx = special.digamma(a + b + ux)
    dig_ab, dig_a, dig_b = special.digamma(a + b), special.digamma(a), special.digamma(b)
    d_lg_r = special.digamma(rux) - special.digamma(r) + np.log(alpha)
    d_b2_a = dig_ab - dig_abx
    d_b2_b = special.digamma(b + ux) - dig_abx - dig_b + dig_ab
    d_b3_a = special.digamma(a + 1) - dig_abx - dig_a + dig_ab
    d_b3_b = np.where(pos, special.digamma(bx1) - dig_abx - dig_b + dig_ab, 0.0)
    # rows are sorted by x (see _objective): the x = 0 rows come first and have no A3 term
    n0 = int(np.searchsorted(x, 0.0, side="right"))
    rx = r + x
    inv_aT = 1 / (alpha + T)
    log_aT = np.log(alpha + T)
    xp, log_at = ix[n0:], np.log(alpha + t_x[n0:])
    a2 = b2[xp] - rx[n0:] * log_aT[n0:]
    a3 = b3[xp] - rx[n0:] * log_at
    m = np.logaddexp(a2, a3)
    ww3 = w[n0:] * np.exp(a3 - m)
    ww2 = w.copy()
    ww2[n0:] -= ww3
    sw = np.bincount(ix, weights=w, minlength=len(ux))
    s2 = np.bincount(ix, weights=ww2, minlength=len(ux))
    s3 = np.bincount(xp, weights=ww3, minlength=len(ux))
    ll = float(lg @ sw + b2[0] * w[:n0].sum() - (w[:n0] * r) @ log_aT[:n0] + w[n0:] @ m)
    grad = np.array([
        d_lg_r @ sw - ww2 @ log_aT - ww3 @ log_at,
        r / alpha * sw.sum() - (ww2 * rx) @ inv_aT - (ww3 * rx[n0:]) @ (1 / (alpha + t_x[n0:])),
        d_b2_a @ s2 + d_b3_a @ s3,
        d_b2_b @ s2 + d_b3_b @ s3,
    ])
    return ll, grad


def fit_bgnbd(x: ArrayLike, t_x: ArrayLike, T: ArrayLike, weights: ArrayLike | None = None) -> BGNBDFit:
    """Maximum-likelihood BG/NBD fit (FHL 2005 eq. 6, log-sum-exp form, analytic gradient, identical rows collapsed)."""
    x, t_x, T = _arrays("fit_bgnbd", x=x, t_x=t_x, T=T)
    _check_btyd(x, t_x, T, "fit_bgnbd")
    if len(x) < 10 or (x > 0).sum() == 0:
        raise InputError(f"fit_bgnbd: {len(x)} customers, {int((x > 0).sum())} with repeat purchases; the model "
                         f"needs at least 10 customers and some repeat buyers.")
    w = _weights(weights, len(x), "fit_bgnbd")
    cols, w = _collapse(x, t_x, T, weights=w)
    x0 = np.log([1.0, max(float(np.average(cols[2], weights=w)) / 8, 1e-3), 1.0, 1.0])
    est, ll, se, converged, nit, message = _fit_ml(_bgnbd_terms, cols, w, x0, ["r", "alpha", "a", "b"])
    return BGNBDFit(*map(float, est), log_likelihood=ll, se=se, converged=converged,
                    n_customers=int(round(w.sum())), iterations=nit, n_unique=len(w), message=message)


def bgnbd_p_alive(fit: BGNBDFit, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> np.ndarray:
    """P(alive | x, t_x, T) (FHL 2005 eq. 11 of the technical note); 1 for customers with no repeat purchase."""
    x, t_x, T = _arrays("bgnbd_p_alive", x=x, t_x=t_x, T=T)
    pos = x > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = (np.log(fit.a) - np.log(np.where(pos, fit.b + x - 1, 1.0))
                     + (fit.r + x) * (np.log(fit.alpha + T) - np.log(fit.alpha + t_x)))
    return np.where(pos, special.expit(-log_ratio), 1.0)


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


def _alive_expectation_unique(fit: BGNBDFit, t: np.ndarray, x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Expected purchases in (T, T+t] for a customer alive at T, via hyp2f1 (FHL 2005 eq. 10 without the P(alive)
    factor), with a quadrature fallback where hyp2f1 fails or a is near 1."""
    r, alpha, a, b = fit.r, fit.alpha, fit.a, fit.b
    if abs(a - 1) < 1e-3:
        return _alive_expectation_quadrature(fit, t, x, T)
    with np.errstate(all="ignore"):
        h = special.hyp2f1(r + x, b + x, a + b + x - 1, t / (alpha + T + t))
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


def _gg_terms(params: np.ndarray, x: np.ndarray, z: np.ndarray, log_z: np.ndarray, w: np.ndarray, ux: np.ndarray,
              ix: np.ndarray) -> tuple[float, np.ndarray]:
    """Gamma-Gamma log-likelihood and gradient in natural parameters; terms of x alone computed once per distinct x."""
    p, q, g = params
    pux = p * ux
    dig = special.digamma(pux + q)
    lg = special.gammaln(pux + q) - special.gammaln(pux) - special.gammaln(q) + q * np.log(g) + pux * np.log(ux)
    d_p = ux * (dig - special.digamma(pux) + np.log(ux))
    d_q = dig - special.digamma(q) + np.log(g)
    sw = np.bincount(ix, weights=w, minlength=len(ux))
    px = p * x
    gxz = g + x * z
    log_gxz = np.log(gxz)
    ll = lg @ sw + w @ ((px - 1) * log_z - (px + q) * log_gxz)
    grad = np.array([d_p @ sw + (w * x) @ (log_z - log_gxz), d_q @ sw - w @ log_gxz,
                     q / g * sw.sum() - w @ ((px + q) / gxz)])
    return float(ll), grad


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
    cols, w = _collapse(x, z, weights=w)
    x0 = np.log([1.0, 1.0, float(np.average(cols[1], weights=w))])
    est, ll, se, converged, nit, message = _fit_ml(_gg_terms, [*cols, np.log(cols[1])], w, x0, ["p", "q", "gamma"])
    return GammaGammaFit(*map(float, est), log_likelihood=ll, se=se, converged=converged,
                         n_customers=int(round(w.sum())), iterations=nit, message=message)


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
