"""The rows of a sweep's tables: labels, seed pooling and the one multiple-comparison family.

- A table is one combination of the swept keys other than ``method``, ``method.*`` and ``seed``.
  Swept ``method.*`` keys label rows of one table (``random[seed=3]``).
- A swept ``seed`` is replication (issue 21, item 9): the rows that differ only in ``seed`` pool
  into one row (mean slope; se = sqrt(mean se² + variance between seeds), ``n_seeds``); the
  per-seed rows stay in ``ranking.csv`` with ``in_table`` false.
- ``p_null`` is corrected once over every table's rows (item 4): the family is every shown, scored
  row except the ``random`` controls, unless random rows are all there is.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from statsmodels.stats.multitest import multipletests

from steerexp.config.errors import SteerexpError, choice_error
from steerexp.config.schema import CORRECTIONS, RankingConfig

#: ``ranking.correction`` -> statsmodels' ``multipletests`` method.
#: The method whose rows are controls, not members of the family.
CONTROL = "random"
#: The normal quantile of a 95% interval (the pooled slope's interval).
Z95 = 1.959963984540054


def table_keys(keys: Sequence[str]) -> list[str]:
    """The swept keys that split tables (not ``method``, ``method.*``, ``seed``, ``ranking.*``)."""
    return [
        k for k in keys if k not in ("method", "seed") and not k.startswith(("method.", "ranking."))
    ]


def row_label(method: str, overrides: dict[str, str], keys: Sequence[str]) -> str:
    """``method`` plus the swept ``method.*`` values its job set: ``random[seed=3]``."""
    extra = [
        f"{k[len('method.') :]}={overrides[k]}"
        for k in keys
        if k.startswith("method.") and k in overrides
    ]
    return f"{method}[{','.join(extra)}]" if extra else method


def slope_se(df: pd.DataFrame) -> pd.Series:
    """Each row's slope standard error: ``slope_se``, else half its interval's width over 1.96."""
    se = pd.to_numeric(df.get("slope_se"), errors="coerce")
    if se is None:
        se = pd.Series(math.nan, index=df.index)
    for lo, hi in (("slope_lo", "slope_hi"), ("slope_ci_low", "slope_ci_high")):
        if lo in df and hi in df:
            width = pd.to_numeric(df[hi], errors="coerce") - pd.to_numeric(df[lo], errors="coerce")
            se = se.fillna(width / (2 * Z95))
    return se.astype(float)


def pooled_row(members: pd.DataFrame, null: np.ndarray | None) -> dict:
    """One row for the ok ``members`` (one per seed): numeric columns averaged, slope interval
    from the combined se, ``p_null`` recomputed from the null's overall slopes when given (else the
    largest member p: conservative), ``vs_random`` from the mean slope."""
    ok = members[members["status"] == "ok"]
    first = members.iloc[0]
    row: dict = {c: first[c] for c in members.columns}
    seeds = ",".join(str(s) for s in members["seed"])
    row.update(
        job=f"pooled({','.join(str(j).split('_', 1)[0] for j in members['job'])})",
        seed=pd.NA,
        pooled=True,
        in_table=True,
        n_seeds=len(ok),
        dup_of="",
        _index=int(members["_index"].min()),
        error=f"pooled over seed={seeds}",
    )
    if ok.empty:
        row.update(status="failed", error=f"no seed finished (seed={seeds})")
        return row
    row["status"] = "ok"
    for c in members.columns:
        if c.startswith("_") or c in ("job", "seed", "in_table", "pooled", "n_seeds"):
            continue
        num = pd.to_numeric(ok[c], errors="coerce")
        if num.notna().any() and ok[c].map(lambda v: not isinstance(v, str)).all():
            row[c] = float(num.mean())
        elif ok[c].nunique(dropna=False) > 1:
            row[c] = ""
    slopes = pd.to_numeric(ok["slope"], errors="coerce").to_numpy(dtype=float)
    se = slope_se(ok).to_numpy(dtype=float)
    between = float(np.var(slopes, ddof=1)) if len(slopes) > 1 else 0.0
    combined = math.sqrt(float(np.nanmean(se**2)) + between) if np.isfinite(se).any() else math.nan
    mean = float(np.mean(slopes))
    row.update(slope=mean, slope_se=combined, seed_slope_sd=math.sqrt(between))
    for lo, hi in (("slope_lo", "slope_hi"), ("slope_ci_low", "slope_ci_high")):
        row[lo], row[hi] = mean - Z95 * combined, mean + Z95 * combined
    med = pd.to_numeric(ok.get("null_abs_median"), errors="coerce")
    if med is not None and med.notna().any() and float(med.mean()) > 0:
        row["vs_random"] = abs(mean) / float(med.mean())
    p = pd.to_numeric(ok.get("p_null"), errors="coerce")
    if null is not None and len(null):
        row["p_null"] = (1 + int((np.abs(null) >= abs(mean)).sum())) / (len(null) + 1)
        row["null_k"] = len(null)
        row["null_beyond_all"] = bool((np.abs(null) < abs(mean)).all())
    elif p is not None and p.notna().any():
        row["p_null"] = float(p.max())
        row["null_beyond_all"] = False
    return row


def pool_seeds(
    df: pd.DataFrame, keys: Sequence[str], nulls: dict[str, np.ndarray | None]
) -> pd.DataFrame:
    """``df`` with, when ``seed`` is swept, one pooled row per table and label with more than one
    seed; the per-seed rows stay, with ``in_table`` false. ``nulls``: job -> the null's overall
    slopes (for the pooled ``p_null``)."""
    df = df.assign(pooled=False, in_table=True, n_seeds=1)
    if "seed" not in keys:
        return df
    pooled = []
    for _, members in df.groupby(["_group", "label"], sort=False):
        if len(members) < 2:
            continue
        ok_jobs = members.loc[members["status"] == "ok", "job"]
        null = next((nulls[j] for j in ok_jobs if nulls.get(j) is not None), None)
        pooled.append(pooled_row(members, null))
        df.loc[members.index, "in_table"] = False
    if not pooled:
        return df
    return pd.concat([df, pd.DataFrame(pooled)], ignore_index=True)


def correction_of(job_dirs: Sequence[Path], given: str | None) -> str:
    """``ranking.correction``: ``given``, else the jobs' recorded config (one value across the sweep),
    else the schema default; a clear error for an unknown or mixed value."""
    if given is None:
        seen = set()
        for job in job_dirs:
            try:
                cfg = yaml.safe_load((Path(job) / ".hydra" / "config.yaml").read_text()) or {}
            except (OSError, yaml.YAMLError):
                continue
            ranking = cfg.get("ranking") if isinstance(cfg, dict) else None
            if isinstance(ranking, dict) and ranking.get("correction"):
                seen.add(str(ranking["correction"]))
        if len(seen) > 1:
            raise SteerexpError(
                f"ranking.correction differs across the sweep's jobs ({', '.join(sorted(seen))}); "
                "it is one choice for the whole sweep"
            )
        given = seen.pop() if seen else RankingConfig.correction
    if given not in CORRECTIONS:
        raise choice_error("ranking.correction", given, list(CORRECTIONS))
    return given


def family(df: pd.DataFrame) -> pd.Series:
    """The rows of the one family: shown (``in_table``), ok, with a finite ``p_null``, not a
    ``random`` control -- unless every such row is random (then they are the family)."""
    scored = (
        df["in_table"].astype(bool)
        & (df["status"] == "ok")
        & pd.to_numeric(df["p_null"], errors="coerce").notna()
    )
    control = df["method"].astype(str) == CONTROL
    members = scored & ~control
    return members if members.any() else scored


def corrected(p: Sequence[float] | np.ndarray, method: str) -> np.ndarray:
    """statsmodels' ``multipletests`` adjusted p-values (``method`` in its names: ``holm``,
    ``fdr_bh``). Its Holm branch calls ``gc.collect()`` on every call, which walks the whole heap
    (about 1 s in a process holding torch and transformers, so a report paid seconds per table);
    the heap is frozen around the call, so that collection sees only the call's own objects."""
    gc.freeze()
    try:
        return multipletests(np.asarray(p, dtype=float), method=method)[1]
    finally:
        gc.unfreeze()


def reachable(df: pd.DataFrame, correction: str, level: float = 0.05) -> tuple[float, int] | None:
    """The smallest ``p_null_adj`` the family can reach at all (every member beyond all K null
    directions, ``p_null = 1/(K+1)``), and the smallest K whose floor is below ``level``; None
    without a family or a recorded K. A rank p cannot go below ``1/(K+1)``, so a large family
    over a small null can never be significant, however well its rows steer."""
    members = family(df)
    k = pd.to_numeric(df.loc[members, "null_k"], errors="coerce") if "null_k" in df else None
    if k is None or not k.notna().any():
        return None
    m = int(members.sum())

    def floor(k_: int) -> float:
        return float(corrected([1 / (k_ + 1)] * m, CORRECTIONS[correction]).min())

    # floor() falls as K grows: double, then bisect (statsmodels' Holm runs gc.collect() per call)
    k_min = int(k.min())
    at_min = floor(k_min)
    lo, hi = k_min - 1, k_min
    while floor(hi) >= level:
        lo, hi = hi, 2 * hi + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if floor(mid) >= level else (lo, mid)
    return at_min, hi


def adjust(df: pd.DataFrame, correction: str) -> pd.Series:
    """``p_null_adj``: ``p_null`` corrected over :func:`family` (NaN outside it)."""
    out = pd.Series(math.nan, index=df.index)
    members = family(df)
    if members.any():
        p = pd.to_numeric(df.loc[members, "p_null"], errors="coerce").to_numpy(dtype=float)
        out[members] = corrected(p, CORRECTIONS[correction])
    return out
