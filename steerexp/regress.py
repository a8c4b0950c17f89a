"""Regress stage: dose-response statistics of log_ratio on the steering coefficient (SPEC 4.7).

One OLS fit per run turns a noisy dose-response curve into a slope with an uncertainty,
and the journal's ranking score; ``journal_table`` renders runs as the journal's tables.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats

from steerexp.errors import choice_error

X_TRANSFORMS = ("linear", "symlog")
JOURNAL_COLUMNS = ["slope", "r2", "valid_frac", "effect_size", "p_value", "score", "min", "max"]
STAT_KEYS = [
    "slope",
    "r2",
    "p_value",
    "slope_ci_low",
    "slope_ci_high",
    "score",
    "signed_score",
    "spearman",
]


def symlog(c: np.ndarray) -> np.ndarray:
    """``sign(c)·log(1+|c|)``: linear near 0, logarithmic for large |c|, odd-symmetric."""
    c = np.asarray(c, dtype=np.float64)
    return np.sign(c) * np.log1p(np.abs(c))


def transform_x(coeffs: Any, x: str = "symlog") -> np.ndarray:
    """The regressor for coefficients ``coeffs`` under transform ``x`` (symlog or linear)."""
    if x == "symlog":
        return symlog(coeffs)
    if x == "linear":
        return np.asarray(coeffs, dtype=np.float64)
    raise choice_error("regression x", x, X_TRANSFORMS)


def _effect_size(slope: float, y0: np.ndarray) -> float:
    """``|slope| / sd(y at c = 0)`` (ddof=1); NaN with fewer than 2 rows at 0 or zero spread."""
    if len(y0) < 2 or not math.isfinite(slope):
        return math.nan
    sd = float(np.std(y0, ddof=1))
    return abs(slope) / sd if sd > 0 else math.nan


def _ols(xv: np.ndarray, yv: np.ndarray) -> dict[str, float]:
    """OLS of y on [1, x]; perfect or flat fits give finite/NaN values, never warnings."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        res = sm.OLS(yv, sm.add_constant(xv, has_constant="add")).fit()
        slope = float(res.params[1])
        r2 = float(res.rsquared)
        p_value = float(res.pvalues[1])
        ci_low, ci_high = (float(v) for v in res.conf_int(alpha=0.05)[1])
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


def regress(
    coeffs: Sequence[float] | np.ndarray,
    log_ratios: Sequence[float] | np.ndarray,
    valid: Sequence[bool] | np.ndarray,
    x: str = "symlog",
) -> dict[str, float | int]:
    """Dose-response statistics over one run's rows (one entry per generated row).

    Rows count as valid when flagged valid and their log_ratio is finite. With fewer than
    3 valid rows, or all valid x identical, the statistics are NaN; the counts, valid_frac
    and (if any row is valid) min/max are still reported.
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
    valid_frac = n_valid / n_rows if n_rows else math.nan
    out: dict[str, float | int] = {k: math.nan for k in STAT_KEYS}
    out.update(
        valid_frac=valid_frac,
        effect_size=math.nan,
        min=float(yv.min()) if n_valid else math.nan,
        max=float(yv.max()) if n_valid else math.nan,
        n_valid=n_valid,
        n_rows=n_rows,
    )
    if n_valid < 3 or float(np.ptp(xv)) == 0.0:
        return out
    fit = _ols(xv, yv)
    out.update(fit)
    weight = fit["r2"] * valid_frac**2
    out["score"] = abs(fit["slope"]) * weight
    out["signed_score"] = fit["slope"] * weight
    out["effect_size"] = _effect_size(fit["slope"], yv[c[ok] == 0])
    return out


def journal_table(
    df: pd.DataFrame, label_col: str = "method", extra_cols: Sequence[str] = ()
) -> str:
    """Markdown table in the research journal's format, best score first (NaN scores last).

    Columns: ``label_col``, the journal's metric columns (missing ones shown as nan),
    then ``extra_cols`` (e.g. ``status`` for failed runs); floats with two decimals.
    """
    table = pd.DataFrame({label_col: df[label_col].astype(str) if label_col in df else ""})
    for col in JOURNAL_COLUMNS:
        table[col] = pd.to_numeric(df[col], errors="coerce") if col in df else math.nan
    for col in extra_cols:
        table[col] = df[col].astype(object).where(df[col].notna(), "") if col in df else ""
    table = table.sort_values("score", ascending=False, na_position="last", kind="stable")
    return table.to_markdown(index=False, floatfmt=".2f")
