"""The journal table of runs (a run's printed row, a sweep's ``ranking.md``) and the ranking's sort key."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from steerexp.store import metrics
from steerexp.store.columns import JOURNAL_COLUMNS


def _fmt_p(p: Any) -> str:
    """p-values keep two significant digits (two decimals would print 0.00)."""
    p = pd.to_numeric(p, errors="coerce")
    return "nan" if pd.isna(p) else f"{p:.2g}"


def _num(df: pd.DataFrame, col: str) -> pd.Series:
    """Column ``col`` as numbers (all NaN when absent)."""
    if col not in df:
        return pd.Series(math.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[col], errors="coerce").astype(float)


def _present(df: pd.DataFrame, col: str) -> bool:
    return bool(_num(df, col).notna().any())


def sort_key(df: pd.DataFrame) -> str:
    """The ranking's sort key: ``budget_effect`` (the effect at a matched coherence budget) when any
    row has one, else ``signed_score``."""
    return "budget_effect" if _present(df, "budget_effect") else "signed_score"


def beyond_all(df: pd.DataFrame) -> pd.Series:
    """Rows whose |slope| is beyond every null direction's (``null_beyond_all``, else read off
    ``p_null`` = 1 / (K + 1), the smallest rank p K directions can give)."""
    flag = df["null_beyond_all"] if "null_beyond_all" in df else None
    k, p = _num(df, "null_k"), _num(df, "p_null")
    from_p = (p * (k + 1) <= 1 + 1e-9) & k.notna()
    if flag is None:
        return from_p
    given = flag.map(lambda v: v if isinstance(v, bool) else (None if pd.isna(v) else bool(v)))
    return given.where(given.notna(), from_p).astype(bool)


def p_null_text(df: pd.DataFrame) -> list[str]:
    """``p_null`` as shown: ``> all K`` beyond every null direction (never an extrapolated p)."""
    k, beyond = _num(df, "null_k"), beyond_all(df)
    return [
        f"> all {k_:.0f}" if b and pd.notna(k_) else _fmt_p(p)
        for p, k_, b in zip(_num(df, "p_null"), k, beyond, strict=True)
    ]


def _flag_text(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return ""
    return "yes" if bool(v) else "no"


def journal_table(
    df: pd.DataFrame, label_col: str = "method", extra_cols: Sequence[str] = ()
) -> str:
    """Markdown table in the research journal's format, best first by :func:`sort_key` (NaN last).

    Columns: ``label_col`` (headed ``method`` when it is ``label``), the journal's metric columns
    (missing ones shown as nan), then, when present: the slope's interval (``slope_lo``/``slope_hi``,
    else the run's ``slope_ci_low``/``slope_ci_high``), ``fit_cos``, ``p_null`` (``> all K`` beyond
    every null direction), ``p_null_adj`` (family-corrected), ``vs_random``, ``sep_next`` (this row
    separable from the next), ``lof_p``, ``budget_effect``, ``valid_lo``/``valid_hi`` (valid
    fraction at each end of the grid), ``n_seeds``, ``shift`` (fitted log-ratio change over the
    grid), ``kl_at_max``, ``coherent_max``, ``dup_of``; then ``extra_cols``. Floats, two decimals.
    """
    if not _present(df, "p_null") and _present(df, "p_random_rank"):
        df = df.assign(p_null=df["p_random_rank"])  # run dirs from before p_null: the same rank p
    key = _num(df, sort_key(df))
    tie = _num(df, "signed_score")
    order = pd.DataFrame({"k": -key, "t": -tie}).sort_values(
        ["k", "t"], na_position="last", kind="stable"
    )
    df = df.loc[order.index]
    head = "method" if label_col == "label" else label_col
    table = pd.DataFrame({head: df[label_col].astype(str) if label_col in df else ""})
    for col in JOURNAL_COLUMNS:
        table[col] = _num(df, col)
    lo_col, hi_col = (
        ("slope_lo", "slope_hi") if _present(df, "slope_lo") else ("slope_ci_low", "slope_ci_high")
    )
    if _present(df, lo_col) and _present(df, hi_col):
        table[metrics.shown("slope_lo")] = [
            f"[{a:.2f}, {b:.2f}]" for a, b in zip(_num(df, lo_col), _num(df, hi_col), strict=True)
        ]
    if _present(df, "fit_cos"):
        table["fit_cos"] = _num(df, "fit_cos")
    if _present(df, "p_null"):
        table["p_null"] = p_null_text(df)
    if _present(df, "p_null_adj"):
        table["p_null_adj"] = [_fmt_p(p) for p in df["p_null_adj"]]
    if _present(df, "vs_random"):
        table["vs_random"] = _num(df, "vs_random")
    if "sep_next" in df and df["sep_next"].notna().any():
        table["sep_next"] = [_flag_text(v) for v in df["sep_next"]]
    if _present(df, "lof_p"):
        table["lof_p"] = [_fmt_p(p) for p in df["lof_p"]]
    for col in ("budget_effect", "valid_frac_lo", "valid_frac_hi"):
        if _present(df, col):
            table[metrics.shown(col)] = _num(df, col)
    if (_num(df, "n_seeds") > 1).any():
        table["n_seeds"] = [f"{n:.0f}" if pd.notna(n) else "" for n in _num(df, "n_seeds")]
    if _present(df, "fitted_shift"):
        table[metrics.shown("fitted_shift")] = _num(df, "fitted_shift")
    for col in ("kl_at_max", "coherent_max"):
        if _present(df, col):
            table[col] = _num(df, col)
    if "dup_of" in df and df["dup_of"].fillna("").astype(str).str.len().any():
        table["dup_of"] = df["dup_of"].fillna("").astype(str)
    for col in extra_cols:
        table[col] = df[col].astype(object).where(df[col].notna(), "") if col in df else ""
    # p-values are preformatted text (two significant digits): keep tabulate from reading them
    # back as numbers and rounding them to 0.00
    texts = [i for i, c in enumerate(table.columns) if c in ("p_null", "p_null_adj", "lof_p")]
    return table.to_markdown(index=False, floatfmt=".2f", disable_numparse=texts or False)
