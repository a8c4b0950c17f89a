"""Winner's curse check (issue 21, item 8): re-run the top rows of a ranking and see if they hold.

The best rows of a table are the ones most likely to have been lucky. ``ranking.confirm: k`` re-runs
the top ``k`` shown rows of the sweep (in ranking order, ``random`` controls and pooled rows left
out) in-process with the job's own recorded config (``.hydra/config.yaml``), a fresh seed and a
seeded half of the eval's scenarios, into ``<sweep>/confirm/<job>/``. A row replicates when the
re-run's slope has the same sign and lies inside the original row's interval (``slope_lo`` /
``slope_hi``, else its 95% CI). The original run saw every scenario, so this is a replication
under new sampling and a different question mix, not a held-out test of a selection made on the
other half. ``confirm/confirm.csv`` records it; ``ranking.md`` shows it under "Confirmation".
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from steerexp.data.questionfiles import resolve_eval
from steerexp.sweep.rows import CONTROL

log = logging.getLogger(__name__)

#: Added to a job's seed for its confirmation run (sampling and the scenario half).
SEED_OFFSET = 1_000_003
CONFIRM_DIR = "confirm"
CONFIRM_COLUMNS = [
    "job",
    "label",
    "slope",
    "slope_lo",
    "slope_hi",
    "confirm_seed",
    "confirm_scenarios",
    "confirm_slope",
    "replicates",
    "confirm_error",
]


def candidates(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """The top ``k`` shown, ok, single-run rows of ``df`` (already in ranking order), no controls."""
    pick = (
        df["in_table"].astype(bool)
        & ~df["pooled"].astype(bool)
        & (df["status"] == "ok")
        & (df["method"].astype(str) != CONTROL)
    )
    return df[pick].head(int(k))


def half_of_scenarios(questions: list, seed: int) -> list:
    """A seeded half (rounded up) of the questions' scenarios (``scenario``, else the id)."""
    scen = [str(q.get("scenario", q.get("id"))) for q in questions]
    names = sorted(set(scen))
    rng = np.random.default_rng(seed)
    keep = set(rng.permutation(names)[: math.ceil(len(names) / 2)].tolist())
    return [q for q, s in zip(questions, scen, strict=True) if s in keep]


def _interval(row: pd.Series) -> tuple[float, float]:
    for lo, hi in (("slope_lo", "slope_hi"), ("slope_ci_low", "slope_ci_high")):
        a, b = (pd.to_numeric(row.get(c), errors="coerce") for c in (lo, hi))
        if pd.notna(a) and pd.notna(b):
            return float(a), float(b)
    return math.nan, math.nan


def confirm_row(sweep_dir: Path, row: pd.Series) -> dict:
    """Re-run one row (see the module docstring); never raises: a failure is recorded."""
    # Imported here: the one upward import of the sweep side (pyproject's import contracts list it).
    from steerexp.pipeline.experiment import run

    lo, hi = _interval(row)
    out = {
        "job": row["job"],
        "label": row["label"],
        "slope": row["slope"],
        "slope_lo": lo,
        "slope_hi": hi,
    }
    try:
        saved = OmegaConf.load(Path(sweep_dir) / str(row["job"]) / ".hydra" / "config.yaml")
        # resolved, so a group node read on its own (typed per stage) needs no parent
        cfg = OmegaConf.create(OmegaConf.to_container(saved, resolve=True))
        seed = int(cfg.seed) + SEED_OFFSET
        spec = resolve_eval(cfg)
        half = half_of_scenarios(spec.questions, seed)
        cfg = OmegaConf.merge(cfg, {"seed": seed, "eval": {**spec.filled(), "questions": half}})
        metrics = run(cfg, Path(sweep_dir) / CONFIRM_DIR / str(row["job"]), progress=False)
        slope = float(metrics["slope"])
        same_sign = math.copysign(1.0, slope) == math.copysign(1.0, float(row["slope"]))
        out.update(
            confirm_seed=seed,
            confirm_scenarios=len({str(q.get("scenario", q.get("id"))) for q in half}),
            confirm_slope=slope,
            # None: not judged (no slope, or the original row has no interval)
            replicates=bool(same_sign and lo <= slope <= hi)
            if all(map(math.isfinite, (slope, lo, hi)))
            else None,
            confirm_error="",
        )
    except Exception as e:  # noqa: BLE001 -- one failed confirmation must not lose the others
        out.update(replicates=None, confirm_error=f"{type(e).__name__}: {' '.join(str(e).split())}")
        log.error("confirmation of %s failed: %s", row["job"], out["confirm_error"])
    return out


def confirm(sweep_dir: Path, df: pd.DataFrame, k: int) -> pd.DataFrame:
    """Re-run the top ``k`` rows; writes and returns ``confirm/confirm.csv``."""
    table = pd.DataFrame(
        [confirm_row(sweep_dir, r) for _, r in candidates(df, k).iterrows()],
        columns=CONFIRM_COLUMNS,
    )
    (Path(sweep_dir) / CONFIRM_DIR).mkdir(parents=True, exist_ok=True)
    table.to_csv(Path(sweep_dir) / CONFIRM_DIR / "confirm.csv", index=False)
    return table


def section(sweep_dir: Path) -> list[str]:
    """``ranking.md``'s "Confirmation" section from ``confirm/confirm.csv`` (empty without one)."""
    try:
        table = pd.read_csv(Path(sweep_dir) / CONFIRM_DIR / "confirm.csv")
    except (OSError, ValueError):
        return []
    lines = [
        "",
        "## Confirmation",
        "",
        f"ranking.confirm: the top {len(table)} rows re-run with a fresh seed (+{SEED_OFFSET}) on "
        "a seeded half of the scenarios; replicates = same sign and inside the row's interval",
        "",
    ]
    for _, r in table.iterrows():
        if isinstance(r["confirm_error"], str) and r["confirm_error"]:
            lines.append(f"- {r['label']}: not confirmed, the re-run failed: {r['confirm_error']}")
            continue
        if pd.isna(r["replicates"]):
            verdict = "not judged (no slope or no interval)"
        else:
            verdict = "replicates" if bool(r["replicates"]) else "does NOT replicate"
        lines.append(
            f"- {r['label']}: {verdict}: slope {r['confirm_slope']:.2f} on "
            f"{int(r['confirm_scenarios'])} scenarios (seed {int(r['confirm_seed'])}) against "
            f"{r['slope']:.2f} [{r['slope_lo']:.2f}, {r['slope_hi']:.2f}]"
        )
    return lines
