"""The per-run statistics beyond the OLS line, and the files the sweep reads them from.

- ``dose_means.csv``: per coefficient, the mean log-ratio with its scenario-clustered 95% CI;
- ``scenario_slopes.csv``: the run's OLS slope per scenario (``*``: all of them);
- ``refits.csv``: each bootstrap refit's slope and its cosine with the full-data direction;
- ``null_slopes.csv``: each null direction's slope per scenario (``*``: overall), so the sweep can
  reference differences between rows to differences between random directions.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from scipy import stats

from steerexp.store import artifacts


def interval(metrics: dict[str, Any], fit_sd: float | None = None) -> dict[str, float]:
    """``slope_lo``/``slope_hi``: the slope ± t(0.975, clustered df) x ``se_total`` with
    ``se_total = sqrt(slope_se² + fit_sd²)``: the scenario-clustered SE (which questions were
    asked, how they were sampled) and the spread of the slope over fits of the direction, added as
    independent variance components. ``fit_sd`` is the spread over bootstrap refits
    (``refit_slope_sd``, which pairs it was fit on) unless given: for a drawn direction
    (``random`` following the run's seed) it is the null's spread, since another seed draws
    another direction. The fit spread also holds some sampling noise already in the clustered SE,
    so the sum errs wide. Without either (``fit.bootstrap=0``) it is the clustered CI."""
    slope, se, df = (float(metrics.get(k, math.nan)) for k in ("slope", "slope_se", "slope_df"))
    sd = float(metrics.get("refit_slope_sd", math.nan) if fit_sd is None else fit_sd)
    total = math.sqrt(se**2 + (sd**2 if math.isfinite(sd) else 0.0))
    if not (math.isfinite(slope) and math.isfinite(total) and math.isfinite(df) and df > 0):
        return {"slope_lo": math.nan, "slope_hi": math.nan, "slope_se_total": math.nan}
    q = float(stats.t.ppf(0.975, df))
    return {"slope_lo": slope - q * total, "slope_hi": slope + q * total, "slope_se_total": total}


def write_frames(run_dir: Path, **frames: Any) -> None:
    """Each ``name=frame`` as ``run_dir/name.csv``."""
    for name, frame in frames.items():
        artifacts.write_frame(run_dir / f"{name}.csv", frame)
