"""How stable is a ranking's order? Split-half Spearman and a bootstrap over questions (issue 15).

Questions, not generations, are the unit of replication: the journal saw one method jump from
first to last between near-identical one-question runs. For one table (rows = jobs) this re-scores
every row on resampled question sets, using only each job's ``dose_response.csv``:

- split-half: the questions are shuffled with a fixed seed and cut in two halves; every row is
  scored on each half and the Spearman correlation of the two score vectors says whether the
  order replicates (near 1: yes; near 0: the order is noise);
- bootstrap: questions are resampled with replacement; each row's rank (1 = best
  ``signed_score``) over the resamples gives a median and a 90% interval.

Scores are the ranking's own ``signed_score = slope · r2 · valid_frac²`` of an OLS of the
log-ratio on the (symlog) coefficient, computed from per-question sufficient statistics, so a
resample is a matrix product rather than a refit.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from steerexp.core.columns import RELIABILITY_COLUMNS
from steerexp.core.schema import Config
from steerexp.core.transforms import transform_x

#: Fewer questions than this and the order's stability cannot be judged (columns are NaN).
MIN_QUESTIONS = 4
N_BOOT = 200
SEED = 0


def _regress_x(job_dir: Path) -> str:
    """The job's ``regress_x`` (from ``.hydra/config.yaml``); the schema's default when it cannot
    be read."""
    try:
        saved = yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        saved = {}
    value = saved["regress_x"] if isinstance(saved, dict) and "regress_x" in saved else None
    return str(value or Config.regress_x)


def question_stats(job_dir: Path) -> pd.DataFrame | None:
    """Per question: row count and, over valid rows, ``n, Σx, Σy, Σxx, Σxy, Σyy`` (None without data)."""
    try:
        dose = pd.read_csv(job_dir / "dose_response.csv")
        x = transform_x(
            pd.to_numeric(dose["coeff"], errors="coerce").to_numpy(), _regress_x(job_dir)
        )
    except (OSError, ValueError, KeyError):
        return None
    y = pd.to_numeric(dose.get("log_ratio"), errors="coerce").to_numpy(dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if "valid" in dose:
        ok &= dose["valid"].astype(str).str.lower().isin(["true", "1", "1.0"]).to_numpy()
    xv, yv = np.where(ok, x, 0.0), np.where(ok, y, 0.0)
    parts = pd.DataFrame(
        {
            "q": dose["question_id"].astype(str),
            "rows": 1.0,
            "n": ok * 1.0,
            "sx": xv,
            "sy": yv,
            "sxx": xv * xv,
            "sxy": xv * yv,
            "syy": yv * yv,
        }
    )
    return parts.groupby("q").sum() if len(parts) else None


def signed_scores(sums: np.ndarray) -> np.ndarray:
    """``signed_score`` from summed statistics ``[..., 7]`` (rows, n, Σx, Σy, Σxx, Σxy, Σyy);
    NaN with fewer than 3 valid rows or no spread in x."""
    rows, n, sx, sy, sxx, sxy, syy = np.moveaxis(sums, -1, 0)
    with np.errstate(all="ignore"):
        vx, vy, cxy = sxx - sx * sx / n, syy - sy * sy / n, sxy - sx * sy / n
        slope = cxy / vx
        r2 = np.where(vy > 1e-12 * np.maximum(syy, 1e-300), cxy * cxy / (vx * vy), 0.0)
        out = slope * r2 * (n / rows) ** 2
    return np.where((n >= 3) & (vx > 1e-12 * np.maximum(sxx, 1e-300)), out, np.nan)


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Rank of each column per row of ``scores`` (1 = highest; NaN scores rank last, ties averaged)."""
    filled = np.where(np.isfinite(scores), scores, -np.inf)
    return stats.rankdata(-filled, axis=-1, method="average")


def reliability(
    job_dirs: list[Path | None], n_boot: int = N_BOOT, seed: int = SEED
) -> pd.DataFrame:
    """:data:`~steerexp.core.columns.RELIABILITY_COLUMNS` for each job of one table (``None`` = a job without results: NaN row).

    ``split_half_spearman`` is the same for every row of the table; NaN with fewer than
    :data:`MIN_QUESTIONS` questions or fewer than 3 scored rows.
    """
    per_job = [question_stats(d) if d is not None else None for d in job_dirs]
    out = pd.DataFrame(np.nan, index=range(len(job_dirs)), columns=RELIABILITY_COLUMNS)
    have = [i for i, s in enumerate(per_job) if s is not None]
    if not have:
        return out
    questions = sorted(set().union(*(per_job[i].index for i in have)))
    cube = np.stack(
        [per_job[i].reindex(questions, fill_value=0.0).to_numpy() for i in have]
    )  # [rows, Q, 7]
    out.loc[have, "reliability_questions"] = len(questions)
    if len(questions) < MIN_QUESTIONS:
        return out
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(questions))
    halves = [perm[: len(perm) // 2], perm[len(perm) // 2 :]]
    a, b = (signed_scores(cube[:, h].sum(axis=1)) for h in halves)
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() >= 3:
        rho = float(stats.spearmanr(a[both], b[both]).statistic)
        out.loc[have, "split_half_spearman"] = rho if math.isfinite(rho) else np.nan
    counts = rng.multinomial(
        len(questions), np.full(len(questions), 1 / len(questions)), size=n_boot
    )
    boot = signed_scores(np.einsum("bq,rqk->brk", counts.astype(np.float64), cube))  # [B, rows]
    ranks = _ranks(boot)
    scored = np.isfinite(signed_scores(cube.sum(axis=1)))
    for col, q in (("rank_median", 50), ("rank_low", 5), ("rank_high", 95)):
        vals = np.percentile(ranks, q, axis=0)
        out.loc[have, col] = np.where(scored, vals, np.nan)
    return out


def footer_line(part: pd.DataFrame) -> str:
    """The line printed under a table: split-half Spearman and each row's bootstrap rank interval."""
    n_q = pd.to_numeric(part.get("reliability_questions"), errors="coerce").max()
    rho = pd.to_numeric(part.get("split_half_spearman"), errors="coerce").max()
    if not np.isfinite(n_q) or n_q < MIN_QUESTIONS:
        shown = 0 if not np.isfinite(n_q) else int(n_q)
        return (
            f"reliability: not judged ({shown} questions; needs >= {MIN_QUESTIONS}): "
            "this order may not replicate"
        )
    ranked = part.dropna(subset=["rank_median"])
    ranks = "; ".join(
        f"{m} {r.rank_median:.1f} [{r.rank_low:.1f}, {r.rank_high:.1f}]"
        for m, r in zip(ranked["method"].astype(str), ranked.itertuples(), strict=True)
    )
    rho_txt = f"{rho:.2f}" if np.isfinite(rho) else "nan (fewer than 3 rows scored on both halves)"
    return (
        f"reliability over {int(n_q)} questions: split-half Spearman of the two halves' orders {rho_txt} "
        f"(seeded halves; near 1 = the order replicates, near 0 = noise); bootstrap rank over "
        f"{N_BOOT} resamples of questions, median [90% interval]: {ranks}"
    )
