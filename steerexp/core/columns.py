"""The column lists of the run artifacts and the journal's tables, and the journal table itself."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

#: The judged rows of a run, one per generation (``dose_response.csv``).
DOSE_COLUMNS = [
    "question_id",
    "coeff",
    "repeat",
    "log_ratio",
    "pmass",
    "valid",
    "forced",
    "completion",
    "stop_reason",
]


#: The journal's metric columns, in its tables' order.
JOURNAL_COLUMNS = ["slope", "r2", "valid_frac", "effect_size", "p_value", "score", "min", "max"]
#: The other statistics a run's metrics.json holds (the ranking CSV keeps them all).
EXTRA_STAT_COLUMNS = [
    "signed_score",
    "slope_ci_low",
    "slope_ci_high",
    "vs_random",
    "p_random",
    "p_random_holm",
    "p_random_rank",
    "anti_frac",
    "fitted_shift",
    "prompt_shift",
    "prompt_y_positive",
    "prompt_y_negative",
    "spearman",
    "n_valid",
    "n_rows",
    "pair_vote_frac",
    "null_k",
    "null_slope_mean",
    "null_slope_sd",
    "null_abs_median",
    "null_abs_p95",
    "null_build_s",
    "kl_at_max",
    "coherent_max",
    "slope_lo",
    "slope_hi",
    "slope_se",
    "slope_df",
    "slope_se_total",
    "refit_slope_sd",
    "fit_cos",
    "n_refits",
    "n_scenarios",
    "p_null",
    "null_beyond_all",
    "lof_p",
    "tanh_slope0",
    "tanh_plateau",
    "tanh_intercept",
    "aic_line",
    "aic_tanh",
    "valid_frac_lo",
    "valid_frac_hi",
    "steer_score",
    "budget_coeff",
    "budget_effect",
]
#: Split-half and bootstrap rank reliability of a ranking (``steerexp.sweep.reliability``).
RELIABILITY_COLUMNS = [
    "split_half_spearman",
    "rank_median",
    "rank_low",
    "rank_high",
    "reliability_questions",
]
#: The config groups whose option names label a run: its identity in rankings and trackers.
IDENTITY_GROUPS = ("model", "module", "method", "loss", "dataset", "eval", "judge")
IDENTITY_COLUMNS = [*IDENTITY_GROUPS, "coeff_units", "seed"]
#: The timed stages of a run; each writes ``time_<stage>_s`` (plus ``time_total_s``).
TIMED_STAGES = ("load", "extract", "fit", "generate", "judge", "regress", "null", "refits")
TIME_COLUMNS = [f"time_{s}_s" for s in (*TIMED_STAGES, "total")]
#: How a run was produced (reuse, cache keys) rather than what it measured.
RUN_COLUMNS = [
    "dup_of",
    "sign_flipped",
    "grad_rule_agrees",
    "model_reused",
    "extraction_cached",
    "generations_reused",
    "null_cached",
    "cache_key",
    "acts_key",
    "generation_key",
    "null_key",
]
METRIC_COLUMNS = [
    *JOURNAL_COLUMNS,
    *EXTRA_STAT_COLUMNS,
    *RELIABILITY_COLUMNS,
    *IDENTITY_COLUMNS,
    *TIME_COLUMNS,
    *RUN_COLUMNS,
]


#: The statistics :func:`steerexp.stages.regress.regress` reports (NaN when it cannot fit).
STAT_KEYS = [
    "slope",
    "r2",
    "p_value",
    "slope_ci_low",
    "slope_ci_high",
    "score",
    "signed_score",
    "spearman",
    "slope_se",
    "slope_df",
]


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
    coherence cost ``kl_at_max`` and ``coherent_max`` (``steerexp.stages.regress.coherence``) and ``dup_of``; then ``extra_cols`` (e.g. ``status``). Floats with two decimals.
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
