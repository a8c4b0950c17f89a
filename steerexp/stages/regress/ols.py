"""Regress stage: dose-response statistics of log_ratio on the steering coefficient.

One OLS fit per run turns a noisy dose-response curve into a slope with an uncertainty,
and the journal's ranking score; ``steerexp.render.journal.journal_table`` renders runs as the journal's tables.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats
from statsmodels.regression.linear_model import OLS
from statsmodels.tools.tools import add_constant

from steerexp.data.transforms import transform_x
from steerexp.stages.regress.cluster import cr2
from steerexp.store.columns import STAT_KEYS


def _effect_size(slope: float, y0: np.ndarray) -> float:
    """``|slope| / sd(y at c = 0)`` (ddof=1); NaN with fewer than 2 rows at 0 or zero spread."""
    if len(y0) < 2 or not math.isfinite(slope):
        return math.nan
    sd = float(np.std(y0, ddof=1))
    return abs(slope) / sd if sd > 0 else math.nan


def _ols(xv: np.ndarray, yv: np.ndarray, clusters: np.ndarray | None = None) -> dict[str, float]:
    """OLS of y on [1, x]; perfect or flat fits give finite/NaN values, never warnings.

    With at least 2 clusters (scenarios: the unit of replication, not generations), ``p_value``
    and the 95% CI both come from the CR2 covariance with Bell-McCaffrey df
    (:mod:`.cluster`); else both are plain OLS. ``slope_se``/``slope_df`` are that SE and df."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        design = add_constant(xv, has_constant="add")
        res = OLS(yv, design).fit()
        slope = float(res.params[1])
        r2 = float(res.rsquared)
        se, df = float(res.bse[1]), float(res.df_resid)
        n_clusters = len(np.unique(clusters)) if clusters is not None else 0
        if n_clusters >= 2:
            fit = cr2(design, yv, clusters)
            se, df = fit.se(1), float(fit.df[1])
        p_value, ci_low, ci_high = _t_test(slope, se, df)
        rho = float(stats.spearmanr(xv, yv).statistic)
    if float(np.ptp(yv)) == 0.0:
        # Flat response: the line explains nothing (R² would be 0/0); matches scipy.linregress.
        r2 = 0.0
    elif float(res.ssr) <= 1e-24 * max(float(res.centered_tss), 1e-300):
        # Perfect fit: zero residual variance, so the slope is exact.
        r2, p_value, ci_low, ci_high, se = 1.0, 0.0, slope, slope, 0.0
    return {
        "slope": slope,
        "r2": r2,
        "p_value": p_value,
        "slope_ci_low": ci_low,
        "slope_ci_high": ci_high,
        "slope_se": se,
        "slope_df": df,
        "spearman": rho,
    }


def _t_test(est: float, se: float, df: float) -> tuple[float, float, float]:
    """Two-sided p of ``est / se`` against t(df) and the matching 95% interval (NaN when the
    SE or df is not usable)."""
    if not (math.isfinite(se) and se > 0 and math.isfinite(df) and df > 0):
        return math.nan, math.nan, math.nan
    q = float(stats.t.ppf(0.975, df))
    return float(2 * stats.t.sf(abs(est / se), df)), est - q * se, est + q * se


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
    clusters: Sequence[str] | np.ndarray | None = None,
) -> dict[str, float | int]:
    """Dose-response statistics over one run's rows (one entry per generated row).

    Rows count as valid when flagged valid and their log_ratio is finite. With fewer than
    3 valid rows, or all valid x identical, the statistics are NaN; the counts, valid_frac
    and (if any row is valid) min/max are still reported. ``groups`` (question ids) give
    ``anti_frac``; ``clusters`` (scenarios; default ``groups``) cluster the slope's SE, CI and p.
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
    cl = groups if clusters is None else clusters
    cv = None if cl is None else np.asarray(cl, dtype=str).reshape(-1)[ok]
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
        n_scenarios=0 if cv is None else len(np.unique(cv)),
    )
    if n_valid < 3 or float(np.ptp(xv)) == 0.0:
        return out
    fit = _ols(xv, yv, cv)
    out.update(fit)
    if gv is not None:
        out["anti_frac"] = anti_fraction(xv, yv, gv, fit["slope"])
    weight = fit["r2"] * valid_frac**2
    out["score"] = abs(fit["slope"]) * weight
    out["signed_score"] = fit["slope"] * weight
    out["effect_size"] = _effect_size(fit["slope"], yv[c[ok] == 0])
    return out
