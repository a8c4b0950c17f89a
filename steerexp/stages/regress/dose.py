"""The dose-response curve beside the OLS line: per-coefficient means, a saturating tanh fit, the
line's lack of fit, and the effect at a matched coherence budget.

The OLS slope on symlog(c) averages over a curve that saturates (the organism's log-ratio has
plateaus near +/-10), so it depends on how wide the grid is. ``y = a + p tanh(s x / p)`` (x the
run's regressor, symlog(c) by default) has slope ``s`` at 0 and plateaus ``a +/- p``; it is
monotone by construction. Invalid answers are not dropped silently: at each coefficient an invalid
answer counts as a failure of the direction there, i.e. as the unsteered mean ``f(0) = a``, so
the effect at ``c`` is ``(v(c) (f(c) - a) - v(-c) (f(-c) - a)) / 2`` with ``v`` the valid fraction
(linear between grid coefficients). A direction that only "steers" by breaking the answer format
scores near 0.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import optimize, stats

from steerexp.data.transforms import transform_x
from steerexp.stages.regress.cluster import cr2

MEANS_COLUMNS = ["coeff", "mean", "ci_low", "ci_high", "n_valid", "n_rows", "valid_frac"]


def _valid(dose: pd.DataFrame) -> np.ndarray:
    y = pd.to_numeric(dose["log_ratio"], errors="coerce").to_numpy(dtype=np.float64)
    return dose["valid"].astype(bool).to_numpy() & np.isfinite(y)


def dose_means(dose: pd.DataFrame, clusters: str = "scenario") -> pd.DataFrame:
    """Per coefficient: mean valid log-ratio with a 95% CI clustered by ``clusters`` (CR2, BM df;
    plain t with one cluster), valid and total rows and the valid fraction."""
    ok = _valid(dose)
    out = []
    for c, part in dose.groupby("coeff", sort=True):
        m = ok[dose.index.get_indexer(part.index)]
        y = pd.to_numeric(part["log_ratio"], errors="coerce").to_numpy(dtype=np.float64)[m]
        g = part[clusters].astype(str).to_numpy()[m] if clusters in part else np.zeros(len(y))
        mean, lo, hi = (float(y.mean()), math.nan, math.nan) if len(y) else (math.nan,) * 3
        if len(y) >= 2:
            if len(np.unique(g)) >= 2:
                fit = cr2(np.ones((len(y), 1)), y, g)
                se, df = fit.se(0), float(fit.df[0])
            else:
                se, df = float(y.std(ddof=1) / math.sqrt(len(y))), len(y) - 1.0
            if se > 0 and df > 0:
                q = float(stats.t.ppf(0.975, df))
                lo, hi = mean - q * se, mean + q * se
            elif se == 0:
                lo = hi = mean
        out.append((float(c), mean, lo, hi, int(m.sum()), len(part), float(m.mean())))
    return pd.DataFrame(out, columns=MEANS_COLUMNS)


def tanh_curve(x: np.ndarray, a: float, s: float, p: float) -> np.ndarray:
    """``a + p tanh(s x / p)``: slope ``s`` at 0, plateaus ``a +/- p`` (``p > 0``)."""
    return a + p * np.tanh(s * np.asarray(x, dtype=np.float64) / p)


def fit_tanh(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """Least-squares ``(a, s, p, rss)`` of :func:`tanh_curve`, started from the OLS line and the
    data's range; NaN when fewer than 4 points or no spread in x."""
    if len(x) < 4 or float(np.ptp(x)) == 0.0:
        return (math.nan,) * 4
    slope, icpt = np.polyfit(x, y, 1)
    span = max(float(np.ptp(y)), 1e-6)
    p0 = max(float(np.max(np.abs(y - icpt))), 1e-3)

    def resid(theta: np.ndarray) -> np.ndarray:
        return tanh_curve(x, theta[0], theta[1], theta[2]) - y

    best = None
    for s0 in (slope, 2 * slope):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            res = optimize.least_squares(
                resid,
                [icpt, s0, p0],
                bounds=([-np.inf, -np.inf, 1e-6 * span], [np.inf, np.inf, 1e3 * span]),
            )
        rss = float(np.sum(res.fun**2))
        if best is None or rss < best[3]:
            best = (float(res.x[0]), float(res.x[1]), float(res.x[2]), rss)
    assert best is not None
    return best


def _aic(rss: float, n: int, k: int) -> float:
    """Gaussian AIC ``-2 llf + 2k`` as statsmodels writes it (k mean parameters)."""
    if n < 1 or not math.isfinite(rss):
        return math.nan
    rss = max(rss, 1e-300)
    return n * (math.log(2 * math.pi * rss / n) + 1) + 2 * k


def lack_of_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The line's lack-of-fit F test against per-x means: ``(F, p)``; NaN without replicates or
    with fewer than 3 distinct x."""
    levels, inv = np.unique(x, return_inverse=True)
    n, m = len(x), len(levels)
    if m < 3 or n - m < 1:
        return math.nan, math.nan
    means = np.bincount(inv, weights=y) / np.bincount(inv)
    ss_pe = float(np.sum((y - means[inv]) ** 2))
    slope, icpt = np.polyfit(x, y, 1)
    ss_line = float(np.sum((y - (icpt + slope * x)) ** 2))
    ss_lof = max(ss_line - ss_pe, 0.0)
    if ss_pe <= 0:
        return (math.inf, 0.0) if ss_lof > 0 else (math.nan, math.nan)
    f = (ss_lof / (m - 2)) / (ss_pe / (n - m))
    return float(f), float(stats.f.sf(f, m - 2, n - m))


def valid_at(means: pd.DataFrame, c: float) -> float:
    """The valid fraction at coefficient ``c``, linear between grid coefficients (flat beyond)."""
    return float(np.interp(c, means["coeff"], means["valid_frac"]))


def effect(theta: tuple[float, float, float], means: pd.DataFrame, c: float, x: str) -> float:
    """Half the difference of the tanh curve at ``+c`` and ``-c``, an invalid answer counted as
    the unsteered mean (module docstring)."""
    a, s, p = theta
    if not all(math.isfinite(v) for v in (a, s, p, c)):
        return math.nan
    xs = transform_x(np.array([c, -c]), x)
    fp, fm = tanh_curve(xs, a, s, p) - a
    return float((valid_at(means, c) * fp - valid_at(means, -c) * fm) / 2)


def curve_stats(
    dose: pd.DataFrame, x: str, budget_coeff: float
) -> tuple[dict[str, float], pd.DataFrame, tuple[float, float, float]]:
    """The run's dose-response model: (metrics, per-coefficient means, tanh parameters a, s, p).

    ``steer_score`` is the failure-counted effect at the grid's symmetric edge
    ``min(max c, -min c)``; ``budget_effect`` the same at ``budget_coeff`` capped at that edge."""
    means = dose_means(dose)
    ok = _valid(dose)
    xv = transform_x(dose["coeff"].to_numpy(dtype=np.float64), x)[ok]
    yv = pd.to_numeric(dose["log_ratio"], errors="coerce").to_numpy(dtype=np.float64)[ok]
    a, s, p, rss_tanh = fit_tanh(xv, yv)
    n = len(yv)
    if n >= 3 and float(np.ptp(xv)) > 0:
        slope, icpt = np.polyfit(xv, yv, 1)
        rss_line = float(np.sum((yv - (icpt + slope * xv)) ** 2))
    else:
        rss_line = math.nan
    _, lof_p = lack_of_fit(xv, yv)
    grid = means["coeff"].to_numpy()
    edge = float(min(grid.max(), -grid.min())) if len(grid) else math.nan
    budget = min(budget_coeff, edge) if math.isfinite(budget_coeff) else edge
    theta = (a, s, p)
    out = {
        "tanh_slope0": s,
        "tanh_plateau": p,
        "tanh_intercept": a,
        "lof_p": lof_p,
        "aic_line": _aic(rss_line, n, 2),
        "aic_tanh": _aic(rss_tanh, n, 3),
        "valid_frac_lo": float(means["valid_frac"].iloc[0]) if len(means) else math.nan,
        "valid_frac_hi": float(means["valid_frac"].iloc[-1]) if len(means) else math.nan,
        "steer_score": effect(theta, means, edge, x) if edge > 0 else math.nan,
        "budget_coeff": budget_coeff,
        "budget_effect": effect(theta, means, budget, x) if budget > 0 else math.nan,
    }
    return out, means, theta
