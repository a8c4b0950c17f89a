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
from scipy import stats
from statsmodels.regression.linear_model import OLS
from statsmodels.tools.tools import add_constant

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


def _fmt_p(p: Any) -> str:
    """p-values keep two significant digits (two decimals would print 0.00)."""
    p = pd.to_numeric(p, errors="coerce")
    return "nan" if pd.isna(p) else f"{p:.2g}"


def journal_table(
    df: pd.DataFrame, label_col: str = "method", extra_cols: Sequence[str] = ()
) -> str:
    """Markdown table in the research journal's format, best ``signed_score`` first (NaN last).

    Columns: ``label_col``, the journal's metric columns (missing ones shown as nan), then,
    when present, the slope's 95% CI, ``vs_random``, ``p_random`` (Holm-adjusted when
    ``p_random_holm`` is there), ``null`` = ``ns`` for rows that do not beat the random null at
    0.05, ``shift`` (the fitted log-ratio change over the grid, to set beside prompting's), the
    coherence cost ``kl_at_max`` and ``coherent_max`` (``steerexp.coherence``) and ``dup_of``; then ``extra_cols`` (e.g. ``status``). Floats with two decimals.
    """
    signed = pd.to_numeric(df["signed_score"], errors="coerce") if "signed_score" in df else None
    order = (signed if signed is not None else pd.Series(math.nan, index=df.index)).sort_values(
        ascending=False, na_position="last", kind="stable"
    )
    df = df.loc[order.index]
    table = pd.DataFrame({label_col: df[label_col].astype(str) if label_col in df else ""})
    for col in JOURNAL_COLUMNS:
        table[col] = pd.to_numeric(df[col], errors="coerce") if col in df else math.nan
    lo, hi = (
        pd.to_numeric(df[c], errors="coerce") if c in df else None
        for c in ("slope_ci_low", "slope_ci_high")
    )
    if lo is not None and hi is not None and lo.notna().any():
        table["slope 95% CI"] = [f"[{a:.2f}, {b:.2f}]" for a, b in zip(lo, hi, strict=True)]
    if "p_random" in df and pd.to_numeric(df["p_random"], errors="coerce").notna().any():
        table["vs_random"] = pd.to_numeric(df.get("vs_random"), errors="coerce")
        table["p_random"] = [_fmt_p(p) for p in df["p_random"]]
        p_mark = df["p_random_holm"] if "p_random_holm" in df else df["p_random"]
        if "p_random_holm" in df:
            table["p_holm"] = [_fmt_p(p) for p in p_mark]
        table["null"] = [
            "" if p < 0.05 else "ns" for p in pd.to_numeric(p_mark, errors="coerce").fillna(1.0)
        ]
    if "fitted_shift" in df and pd.to_numeric(df["fitted_shift"], errors="coerce").notna().any():
        table["shift"] = pd.to_numeric(df["fitted_shift"], errors="coerce")
    for col in ("kl_at_max", "coherent_max"):
        if col in df and pd.to_numeric(df[col], errors="coerce").notna().any():
            table[col] = pd.to_numeric(df[col], errors="coerce")
    if "dup_of" in df and df["dup_of"].fillna("").astype(str).str.len().any():
        table["dup_of"] = df["dup_of"].fillna("").astype(str)
    for col in extra_cols:
        table[col] = df[col].astype(object).where(df[col].notna(), "") if col in df else ""
    return table.to_markdown(index=False, floatfmt=".2f")
