"""The per-run dose-response model: clustered means, the tanh fit, the line's lack of fit, the
failure-counted effect, the rank p against the null and the combined slope interval."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from steerexp.data.transforms import symlog
from steerexp.pipeline import reference as null
from steerexp.pipeline.summary import interval
from steerexp.stages.regress.dose import (
    curve_stats,
    dose_means,
    effect,
    fit_tanh,
    lack_of_fit,
    tanh_curve,
)

GRID = [-0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5]


def _dose(f, seed: int = 0, noise: float = 0.5, reps: int = 8) -> pd.DataFrame:
    """6 scenarios x 2 questions x grid x reps rows of ``y = f(symlog(c)) + noise``."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(6):
        for q in range(2):
            for c in GRID:
                for r in range(reps):
                    y = f(symlog(np.array([c]))[0]) + rng.normal(0, noise)
                    rows.append((f"s{s}_q{q}", f"s{s}", c, r, y, True))
    return pd.DataFrame(
        rows, columns=["question_id", "scenario", "coeff", "repeat", "log_ratio", "valid"]
    )


def test_lack_of_fit_flags_a_saturating_curve_not_a_line() -> None:
    curved = _dose(lambda x: tanh_curve(x, 0.5, 40.0, 10.0))
    line = _dose(lambda x: 0.5 + 20.0 * x)
    xs = symlog(curved["coeff"].to_numpy())
    _, p_curved = lack_of_fit(xs, curved["log_ratio"].to_numpy())
    _, p_line = lack_of_fit(xs, line["log_ratio"].to_numpy())
    assert p_curved < 1e-10 and p_line > 0.01
    out, _, theta = curve_stats(curved, "symlog", math.inf)
    assert theta == pytest.approx((0.5, 40.0, 10.0), rel=0.05, abs=0.1)
    assert out["tanh_slope0"] == theta[1] and out["tanh_plateau"] == theta[2]
    assert out["aic_tanh"] < out["aic_line"] - 100
    lin, _, _ = curve_stats(line, "symlog", math.inf)
    assert lin["aic_tanh"] > lin["aic_line"] - 10  # no real gain on a straight line


def test_fit_tanh_recovers_a_negative_slope() -> None:
    x = np.linspace(-0.4, 0.4, 41)
    a, s, p, rss = fit_tanh(x, tanh_curve(x, -1.0, -30.0, 6.0))
    assert (a, s, p) == pytest.approx((-1.0, -30.0, 6.0), rel=1e-4) and rss < 1e-8


def test_dose_means_ci_is_clustered_by_scenario() -> None:
    """Scenario offsets shared by both questions of a scenario: the clustered CI is the t(5)
    interval of the 6 scenario means (balanced CR2 on an intercept), wider than the iid one."""
    rng = np.random.default_rng(1)
    dose = _dose(lambda x: 3.0 * x, noise=0.1)
    offset = dict(zip([f"s{i}" for i in range(6)], rng.normal(0, 2.0, 6), strict=True))
    dose["log_ratio"] += dose["scenario"].map(offset)
    dose.loc[(dose["coeff"] == 0.5) & (dose["repeat"] < 4), "valid"] = False
    means = dose_means(dose)
    row = means[means["coeff"] == 0.0].iloc[0]
    part = dose[dose["coeff"] == 0.0]
    per = part.groupby("scenario")["log_ratio"].mean()
    half = stats.t.ppf(0.975, 5) * per.std(ddof=1) / math.sqrt(6)
    assert row["mean"] == pytest.approx(per.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((per.mean() - half, per.mean() + half))
    iid = stats.t.ppf(0.975, len(part) - 1) * part["log_ratio"].std(ddof=1) / math.sqrt(len(part))
    assert half > 2 * iid
    top = means[means["coeff"] == 0.5].iloc[0]
    assert (top["n_valid"], top["n_rows"], top["valid_frac"]) == (48, 96, 0.5)


def test_invalid_answers_count_as_failures() -> None:
    """A curve that is invalid half the time at +0.5 loses half its upward effect there; a
    direction with no valid answer at the edges has no effect at them."""
    dose = _dose(lambda x: tanh_curve(x, 0.0, 40.0, 10.0), noise=0.05)
    out, means, theta = curve_stats(dose, "symlog", math.inf)
    full = effect(theta, means, 0.5, "symlog")
    assert out["steer_score"] == pytest.approx(full)
    assert full == pytest.approx(tanh_curve(symlog(np.array([0.5])), 0, 40, 10)[0], rel=0.01)
    half_bad = dose.copy()
    half_bad.loc[(half_bad["coeff"] == 0.5) & (half_bad["repeat"] % 2 == 0), "valid"] = False
    out2, _, _ = curve_stats(half_bad, "symlog", math.inf)
    assert out2["valid_frac_hi"] == 0.5 and out2["valid_frac_lo"] == 1.0
    assert out2["steer_score"] == pytest.approx(0.75 * full, rel=0.02)
    broken = dose.copy()
    broken.loc[broken["coeff"].abs() == 0.5, "valid"] = False
    assert curve_stats(broken, "symlog", math.inf)[0]["steer_score"] == pytest.approx(0.0)
    # the budget effect is the same quantity at the budget coefficient, capped at the edge
    at = curve_stats(dose, "symlog", 0.1)[0]
    assert at["budget_effect"] == pytest.approx(effect(theta, means, 0.1, "symlog"), rel=0.01)
    assert at["budget_effect"] < full
    assert curve_stats(dose, "symlog", 7.0)[0]["budget_effect"] == pytest.approx(full)


def test_p_null_is_the_rank_p_on_absolute_slopes() -> None:
    slopes = np.array([-5.0, 1.0, 2.0, -3.0, 0.5, 4.0, -1.5, 2.5])
    k = len(slopes)
    out = null.compare(-3.0, slopes)
    # |null| >= 3: -5, -3, 4 -> 3
    assert out["p_null"] == pytest.approx((1 + 3) / (k + 1)) and not out["null_beyond_all"]
    top = null.compare(5.5, slopes)
    assert top["p_null"] == pytest.approx(1 / (k + 1)) and top["null_beyond_all"]
    tie = null.compare(5.0, slopes)
    assert tie["p_null"] == pytest.approx(2 / (k + 1)) and not tie["null_beyond_all"]
    assert out["vs_random"] == pytest.approx(3.0 / np.median(np.abs(slopes)))


def test_interval_adds_the_refit_spread_to_the_clustered_se() -> None:
    m = {"slope": 10.0, "slope_se": 0.3, "slope_df": 5.0, "refit_slope_sd": 0.4}
    out = interval(m)
    q = stats.t.ppf(0.975, 5.0)
    assert out["slope_se_total"] == pytest.approx(0.5)
    assert (out["slope_lo"], out["slope_hi"]) == pytest.approx((10 - 0.5 * q, 10 + 0.5 * q))
    bare = interval({**m, "refit_slope_sd": math.nan})
    assert bare["slope_hi"] - bare["slope_lo"] == pytest.approx(2 * 0.3 * q)


def test_scenario_slopes_have_the_overall_row() -> None:
    dose = _dose(lambda x: 2.0 * x, noise=0.01)
    table = null.scenario_slopes(
        dose, dict(zip(dose["question_id"], dose["scenario"], strict=True)), "symlog"
    )
    assert list(table["scenario"]) == ["*", *[f"s{i}" for i in range(6)]]
    assert table["slope"].to_numpy() == pytest.approx(2.0, rel=0.01)
    assert table["n"].iloc[0] == len(dose)
