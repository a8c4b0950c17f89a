"""Regress stage: dose-response statistics of log_ratio on the steering coefficient (SPEC 4.7).

One OLS fit per run turns a noisy dose-response curve into a slope with an uncertainty,
and the journal's ranking score; ``journal_table`` renders runs as the journal's tables.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats
from statsmodels.regression.linear_model import OLS
from statsmodels.tools.tools import add_constant

from steerexp.core.columns import STAT_KEYS
from steerexp.core.transforms import transform_x


def _effect_size(slope: float, y0: np.ndarray) -> float:
    """``|slope| / sd(y at c = 0)`` (ddof=1); NaN with fewer than 2 rows at 0 or zero spread."""
    if len(y0) < 2 or not math.isfinite(slope):
        return math.nan
    sd = float(np.std(y0, ddof=1))
    return abs(slope) / sd if sd > 0 else math.nan


def _ols(xv: np.ndarray, yv: np.ndarray, groups: np.ndarray | None = None) -> dict[str, float]:
    """OLS of y on [1, x]; perfect or flat fits give finite/NaN values, never warnings.

    ``p_value`` is the plain OLS one; the 95% CI is clustered by ``groups`` (questions are the
    unit of replication, not generations) when there are at least 2 groups, else plain."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        res = OLS(yv, add_constant(xv, has_constant="add")).fit()
        slope = float(res.params[1])
        r2 = float(res.rsquared)
        p_value = float(res.pvalues[1])
        ci = res
        if groups is not None and len(np.unique(groups)) >= 2:
            codes = np.unique(groups, return_inverse=True)[1]
            ci = res.get_robustcov_results(cov_type="cluster", groups=codes)
        ci_low, ci_high = (float(v) for v in ci.conf_int(alpha=0.05)[1])
        rho = float(stats.spearmanr(xv, yv).statistic)
    if float(np.ptp(yv)) == 0.0:
        # Flat response: the line explains nothing (R² would be 0/0); matches scipy.linregress.
        r2 = 0.0
    elif float(res.ssr) <= 1e-24 * max(float(res.centered_tss), 1e-300):
        # Perfect fit: zero residual variance, so the slope is exact.
        r2, p_value, ci_low, ci_high = 1.0, 0.0, slope, slope
    return {
        "slope": slope,
        "r2": r2,
        "p_value": p_value,
        "slope_ci_low": ci_low,
        "slope_ci_high": ci_high,
        "spearman": rho,
    }


def anti_fraction(xv: np.ndarray, yv: np.ndarray, groups: np.ndarray, slope: float) -> float:
    """Share of groups (questions) whose own OLS slope has the sign opposite to ``slope``;
    groups with fewer than two distinct x are left out (NaN when none is left)."""
    signs = []
    for g in np.unique(groups):
        xg, yg = xv[groups == g], yv[groups == g]
        if len(np.unique(xg)) >= 2:
            signs.append(np.sign(np.polyfit(xg, yg, 1)[0]))
    if not signs or not math.isfinite(slope):
        return math.nan
    return float(np.mean(np.array(signs) * np.sign(slope) < 0))


def regress(
    coeffs: Sequence[float] | np.ndarray,
    log_ratios: Sequence[float] | np.ndarray,
    valid: Sequence[bool] | np.ndarray,
    x: str = "symlog",
    groups: Sequence[str] | np.ndarray | None = None,
) -> dict[str, float | int]:
    """Dose-response statistics over one run's rows (one entry per generated row).

    Rows count as valid when flagged valid and their log_ratio is finite. With fewer than
    3 valid rows, or all valid x identical, the statistics are NaN; the counts, valid_frac
    and (if any row is valid) min/max are still reported. ``groups`` (question ids) cluster
    the slope's CI and give ``anti_frac``.
    """
    c = np.asarray(coeffs, dtype=np.float64).reshape(-1)
    y = np.asarray(log_ratios, dtype=np.float64).reshape(-1)
    ok = np.asarray(valid, dtype=bool).reshape(-1)
    if not (len(c) == len(y) == len(ok)):
        raise ValueError(
            f"regress: lengths differ (coeffs {len(c)}, log_ratios {len(y)}, valid {len(ok)})"
        )
    xt = transform_x(c, x)
    ok = ok & np.isfinite(y) & np.isfinite(xt)
    n_rows, n_valid = len(y), int(ok.sum())
    xv, yv = xt[ok], y[ok]
    gv = None if groups is None else np.asarray(groups, dtype=str).reshape(-1)[ok]
    valid_frac = n_valid / n_rows if n_rows else math.nan
    out: dict[str, float | int] = {k: math.nan for k in STAT_KEYS}
    out.update(
        valid_frac=valid_frac,
        effect_size=math.nan,
        min=float(yv.min()) if n_valid else math.nan,
        max=float(yv.max()) if n_valid else math.nan,
        n_valid=n_valid,
        n_rows=n_rows,
        anti_frac=math.nan,
    )
    if n_valid < 3 or float(np.ptp(xv)) == 0.0:
        return out
    fit = _ols(xv, yv, gv)
    out.update(fit)
    if gv is not None:
        out["anti_frac"] = anti_fraction(xv, yv, gv, fit["slope"])
    weight = fit["r2"] * valid_frac**2
    out["score"] = abs(fit["slope"]) * weight
    out["signed_score"] = fit["slope"] * weight
    out["effect_size"] = _effect_size(fit["slope"], yv[c[ok] == 0])
    return out
