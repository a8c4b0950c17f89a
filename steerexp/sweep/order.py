"""Order tests: is a row of a ranking table separable from the next one (issue 21, item 5)?

The rows of a table share their questions and, within a seed, the sampling's random numbers, so
two rows are compared scenario by scenario: ``D = mean_s (slope_a,s - slope_b,s)`` over the
scenarios both have (a scenario is the unit of replication; ``question_id`` when the eval names
none). ``D`` is referred to the same statistic between every pair of the run's random null
directions (``null_slopes.csv``, per direction and scenario): ``sep_p = (1 + #{|D_ij| >= |D|}) /
(M + 1)`` over the ``M = K (K - 1) / 2`` null pairs. Two random directions differ for real (each
has its own small effect), so a test against the rows' own scenario spread calls their gaps real;
this reference does not, by construction: a gap is separable only when it is larger than the gaps
random directions show between each other. That makes it conservative for two strong methods
(their gap must beat the null's spread).

Run dirs from before ``null_slopes.csv`` take the null directions' per-scenario slopes from the
null's cached rows when the cache is still there. Without either, the fallback is a paired t-test of the ``D`` over
scenarios against the rows' own scenario spread (``sep_ref = row_spread``), printed as such under the
table: it can call a gap between two random directions real.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from steerexp import cache_dir
from steerexp.config.schema import Config
from steerexp.data.transforms import transform_x

#: The declared level of ``sep_next``.
ALPHA = 0.05
#: Fewer shared scenarios than this and no order test is made (``sep_p`` NaN).
MIN_SCENARIOS = 3
#: ``scenario`` of a null direction's overall slope in ``null_slopes.csv``.
OVERALL = "*"


def _regress_x(job_dir: Path) -> str:
    """The job's ``regress_x`` (``.hydra/config.yaml``); the schema default when unreadable."""
    try:
        saved = yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        saved = {}
    value = saved.get("regress_x") if isinstance(saved, dict) else None
    return str(value or Config.regress_x)


def _ols_slope(x: np.ndarray, y: np.ndarray) -> float:
    """OLS slope of ``y`` on ``x`` (NaN with fewer than 2 distinct x)."""
    if len(x) < 2 or np.ptp(x) == 0:
        return math.nan
    xc = x - x.mean()
    return float(xc @ (y - y.mean()) / (xc @ xc))


def _scenario_col(dose: pd.DataFrame) -> str | None:
    """The column naming each row's scenario: ``scenario`` when every row has one, else
    ``question_id`` (None when neither is there)."""
    if "scenario" in dose and dose["scenario"].notna().all():
        return "scenario"
    return "question_id" if "question_id" in dose else None


def _slopes(dose: pd.DataFrame, regress_x: str) -> pd.Series:
    """Per scenario, the OLS slope of the valid, finite log-ratios on the transformed coefficient."""
    col = _scenario_col(dose)
    x = transform_x(pd.to_numeric(dose["coeff"], errors="coerce").to_numpy(), regress_x)
    y = pd.to_numeric(dose["log_ratio"], errors="coerce").to_numpy(dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if "valid" in dose:
        ok &= dose["valid"].astype(str).str.lower().isin(["true", "1", "1.0"]).to_numpy()
    if col is None:
        return pd.Series(dtype=float)
    keys = dose[col].astype(str).to_numpy()
    out = {s: _ols_slope(x[ok & (keys == s)], y[ok & (keys == s)]) for s in sorted(set(keys[ok]))}
    return pd.Series(out, dtype=float).dropna()


def scenario_slopes(job_dir: Path) -> pd.Series | None:
    """Per scenario, the run's slope: ``scenario_slopes.csv`` when the run wrote it, else an OLS per
    scenario of ``dose_response.csv`` (:func:`_slopes`); None without data."""
    path = Path(job_dir)
    try:
        table = pd.read_csv(path / "scenario_slopes.csv", dtype={"scenario": str})
        out = pd.to_numeric(table["slope"], errors="coerce")
        return pd.Series(out.to_numpy(), index=table["scenario"].astype(str)).dropna()
    except (OSError, ValueError, KeyError):
        pass
    try:
        dose = pd.read_csv(path / "dose_response.csv", dtype={"question_id": str, "scenario": str})
        series = _slopes(dose, _regress_x(path))
    except (OSError, ValueError, KeyError):
        return None
    return series if len(series) else None


def _cached_null(job_dir: Path) -> pd.DataFrame | None:
    """Older run dirs (no ``null_slopes.csv``): the null directions' per-scenario slopes from the
    null's cached rows (``<cache>/nulls/<null_key>/dose.csv``, where the run cached them), or None."""
    import json

    try:
        key = json.loads((job_dir / "metrics.json").read_text())["null_key"]
        saved = yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text()) or {}
        root = Path(saved["cache_dir"]) if saved.get("cache_dir") else cache_dir() / "extractions"
        dose = pd.read_csv(root / "nulls" / str(key) / "dose.csv", dtype={"question_id": str})
        dose = dose[pd.to_numeric(dose["direction"], errors="coerce") >= 0]
        regress_x = _regress_x(job_dir)
        wide = pd.DataFrame(
            {d: _slopes(part, regress_x) for d, part in dose.groupby("direction", sort=True)}
        ).T
    except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        return None
    return wide if len(wide) >= 2 and wide.shape[1] else None


def null_scenario_slopes(job_dir: Path) -> pd.DataFrame | None:
    """The null directions' per-scenario slopes (directions x scenarios) from ``null_slopes.csv``,
    else from the null's cached rows; None when neither gives at least 2 directions."""
    try:
        table = pd.read_csv(Path(job_dir) / "null_slopes.csv", dtype={"scenario": str})
        table = table[table["scenario"].astype(str) != OVERALL]
        wide = table.pivot_table(index="direction", columns="scenario", values="slope")
    except (OSError, ValueError, KeyError):
        return _cached_null(Path(job_dir))
    return wide if len(wide) >= 2 and wide.shape[1] else None


def null_overall_slopes(job_dir: Path) -> np.ndarray | None:
    """Each null direction's overall slope (``scenario == "*"`` rows of ``null_slopes.csv``)."""
    try:
        table = pd.read_csv(Path(job_dir) / "null_slopes.csv", dtype={"scenario": str})
        s = pd.to_numeric(table.loc[table["scenario"] == OVERALL, "slope"], errors="coerce")
    except (OSError, ValueError, KeyError):
        return None
    s = s.dropna().to_numpy()
    return s if len(s) else None


def null_pair_gaps(null: pd.DataFrame, scenarios: list[str]) -> np.ndarray:
    """|mean over ``scenarios`` of (slope_i - slope_j)| for every pair i < j of null directions
    (directions missing one of the scenarios are left out)."""
    means = null.reindex(columns=scenarios).dropna().mean(axis=1).to_numpy()
    i, j = np.triu_indices(len(means), k=1)
    return np.abs(means[i] - means[j])


def pair_test(a: pd.Series, b: pd.Series, null: pd.DataFrame | None) -> tuple[float, str | None]:
    """``(sep_p, reference)`` of rows ``a`` then ``b`` (per-scenario slopes); reference ``null_pairs``
    (gaps between null directions, when the null has at least :data:`MIN_SCENARIOS` of the rows'
    shared scenarios) or ``row_spread`` (paired t on the rows' own spread); NaN and None with
    fewer shared scenarios than that."""
    shared = sorted(set(a.index) & set(b.index))
    in_null = [s for s in shared if null is not None and s in null.columns]
    if null is not None and len(in_null) >= MIN_SCENARIOS:
        gaps = null_pair_gaps(null, in_null)
        d = a[in_null].to_numpy() - b[in_null].to_numpy()
        if len(gaps):
            return float(
                (1 + (gaps >= abs(d.mean()) - 1e-12).sum()) / (len(gaps) + 1)
            ), "null_pairs"
    if len(shared) < MIN_SCENARIOS:
        return math.nan, None
    d = a[shared].to_numpy() - b[shared].to_numpy()
    if np.allclose(d, d[0]):
        return (0.0 if d[0] != 0 else 1.0), "row_spread"
    return float(stats.ttest_1samp(d, 0.0).pvalue), "row_spread"


def order_tests(
    scen: list[pd.Series | None], null: pd.DataFrame | None
) -> tuple[list[float], list[str | None]]:
    """``sep_p`` and reference of each row against the next row that has scenario slopes (rows in
    ranking order; the last row, and rows without slopes, get NaN)."""
    p: list[float] = [math.nan] * len(scen)
    ref: list[str | None] = [None] * len(scen)
    have = [i for i, s in enumerate(scen) if s is not None and len(s)]
    for i, j in zip(have, have[1:], strict=False):
        p[i], ref[i] = pair_test(scen[i], scen[j], null)  # type: ignore[arg-type]
    return p, ref


def footer_line(part: pd.DataFrame, n_null: int | None) -> str | None:
    """The order test's line under a table (None when no pair was tested)."""
    refs = set(part.get("sep_ref", pd.Series(dtype=object)).dropna())
    if not refs:
        return None
    if refs == {"null_pairs"}:
        pairs = f"{n_null * (n_null - 1) // 2} pairs of {n_null}" if n_null else "the pairs of"
        return (
            f"sep_next: this row's per-scenario slopes minus the next row's, mean gap against the "
            f"same gap between {pairs} random null directions; yes = p < {ALPHA} (a gap between "
            "two random directions is not called real)"
        )
    return (
        f"sep_next: paired t-test of this row's per-scenario slopes minus the next row's, against "
        f"the rows' own scenario spread; yes = p < {ALPHA}. The runs wrote no null_slopes.csv, so "
        "this reference can call a gap between two random directions real"
    )
