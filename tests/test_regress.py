"""Regress stage against an independent scipy computation, and the journal table format."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from steerexp.config.errors import SteerexpError
from steerexp.data.transforms import symlog
from steerexp.render.journal import journal_table
from steerexp.stages.regress.ols import regress

HEADER_COLS = ["slope", "r2", "valid_frac", "effect_size", "p_value", "score", "min", "max"]


def _synthetic(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 5-point grid with 4 repeats, a noisy linear response in symlog(c), 3 invalid rows."""
    rng = np.random.default_rng(seed)
    coeffs = np.repeat([-2.0, -0.5, 0.0, 0.5, 2.0], 4)
    y = 1.5 + 2.0 * symlog(coeffs) + rng.normal(0, 0.7, coeffs.size)
    valid = np.ones(coeffs.size, dtype=bool)
    valid[[1, 9, 17]] = False
    y[9] = np.nan  # an invalid row carries NaN, as the judge writes it
    return coeffs, y, valid


@pytest.mark.parametrize("x", ["symlog", "linear"])
def test_matches_scipy_linregress(x: str) -> None:
    coeffs, y, valid = _synthetic()
    out = regress(coeffs, y, valid, x=x)
    xv = (symlog(coeffs) if x == "symlog" else coeffs)[valid]
    yv = y[valid]
    ref = stats.linregress(xv, yv)
    n = int(valid.sum())
    half = stats.t.ppf(0.975, n - 2) * ref.stderr
    assert out["slope"] == pytest.approx(ref.slope, rel=1e-9)
    assert out["r2"] == pytest.approx(ref.rvalue**2, rel=1e-9)
    assert out["p_value"] == pytest.approx(ref.pvalue, rel=1e-6)
    assert out["slope_ci_low"] == pytest.approx(ref.slope - half, rel=1e-9)
    assert out["slope_ci_high"] == pytest.approx(ref.slope + half, rel=1e-9)
    assert out["spearman"] == pytest.approx(stats.spearmanr(xv, yv).statistic, rel=1e-9)
    vf = n / coeffs.size
    assert out["valid_frac"] == pytest.approx(vf) and out["n_valid"] == n
    assert out["n_rows"] == coeffs.size
    assert out["score"] == pytest.approx(abs(ref.slope) * ref.rvalue**2 * vf**2, rel=1e-9)
    assert out["signed_score"] == pytest.approx(ref.slope * ref.rvalue**2 * vf**2, rel=1e-9)
    assert out["min"] == yv.min() and out["max"] == yv.max()
    y0 = y[valid & (coeffs == 0)]
    assert out["effect_size"] == pytest.approx(abs(ref.slope) / np.std(y0, ddof=1), rel=1e-9)


def test_sign_and_symlog() -> None:
    coeffs, y, valid = _synthetic(1)
    up, down = regress(coeffs, y, valid), regress(coeffs, -y, valid)
    assert up["slope"] > 0 and down["slope"] == pytest.approx(-up["slope"])
    assert down["signed_score"] == pytest.approx(-up["signed_score"])
    assert down["score"] == pytest.approx(up["score"])
    assert symlog(np.array([-3.0, 0.0, 1.0])) == pytest.approx([-math.log(4), 0, math.log(2)])


def test_effect_size_needs_two_rows_at_zero() -> None:
    coeffs = [-1.0, 0.0, 0.0, 1.0, 2.0]
    y = [0.0, 1.0, 1.5, 2.0, 4.0]
    assert math.isnan(regress(coeffs, y, [1, 1, 0, 1, 1])["effect_size"])
    assert math.isnan(regress(coeffs, [0.0, 1.0, 1.0, 2.0, 4.0], [1] * 5)["effect_size"])
    out = regress(coeffs, y, [1] * 5, x="linear")
    assert out["effect_size"] == pytest.approx(abs(out["slope"]) / np.std([1.0, 1.5], ddof=1))


def test_too_few_valid_rows_is_nan_not_error() -> None:
    out = regress([-1.0, 0.0, 1.0, 2.0], [1.0, np.nan, 2.0, np.nan], [1, 0, 1, 0])
    for k in ["slope", "r2", "p_value", "score", "signed_score", "effect_size", "spearman"]:
        assert math.isnan(out[k]), k
    assert out["valid_frac"] == 0.5 and out["n_valid"] == 2 and out["n_rows"] == 4
    assert (out["min"], out["max"]) == (1.0, 2.0)
    none = regress([0.0, 1.0], [np.nan, np.nan], [False, False])
    assert none["valid_frac"] == 0.0 and math.isnan(none["min"]) and math.isnan(none["max"])
    same_x = regress([0.5, 0.5, 0.5], [1.0, 2.0, 3.0], [1, 1, 1])
    assert math.isnan(same_x["slope"]) and same_x["n_valid"] == 3


def test_perfect_and_flat_fits_are_quiet() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        perfect = regress([-1.0, 0.0, 1.0, 2.0], [-2.0, 1.0, 4.0, 7.0], [1] * 4, x="linear")
        flat = regress([-1.0, 0.0, 1.0], [2.0, 2.0, 2.0], [1] * 3)
    assert perfect["slope"] == pytest.approx(3.0) and perfect["r2"] == pytest.approx(1.0)
    assert perfect["p_value"] == 0.0
    assert perfect["slope_ci_low"] == pytest.approx(3.0) == perfect["slope_ci_high"]
    assert flat["slope"] == pytest.approx(0.0, abs=1e-12) and flat["score"] == 0.0


def test_bad_x_and_lengths() -> None:
    with pytest.raises(SteerexpError, match="'log'.*linear, symlog"):
        regress([0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [1, 1, 1], x="log")
    with pytest.raises(ValueError, match="lengths"):
        regress([0.0, 1.0], [0.0], [1, 1])


def test_journal_table_format() -> None:
    df = pd.DataFrame(
        [
            {
                "method": "pca_diff",
                "slope": 1.684,
                "r2": 0.2,
                "valid_frac": 1.0,
                "score": 0.34,
                "signed_score": 0.34,
            },
            {"method": "broken", "status": "failed"},
            {
                "method": "mean_diff",
                "slope": -13.536,
                "r2": 0.58,
                "valid_frac": 0.8,
                "score": 7.79,
                "signed_score": -7.79,
            },
        ]
    ).assign(effect_size=np.nan, p_value=0.141, min=-18.75, max=20.375)
    assert journal_table(df) == "\n".join(
        [
            "| method    |   slope |     r2 |   valid_frac |   effect_size |   p_value |   score |    min |   max |",
            "|:----------|--------:|-------:|-------------:|--------------:|----------:|--------:|-------:|------:|",
            "| pca_diff  |    1.68 |   0.20 |         1.00 |           nan |      0.14 |    0.34 | -18.75 | 20.38 |",
            "| mean_diff |  -13.54 |   0.58 |         0.80 |           nan |      0.14 |    7.79 | -18.75 | 20.38 |",
            "| broken    |  nan    | nan    |       nan    |           nan |      0.14 |  nan    | -18.75 | 20.38 |",
        ]
    )
    with_status = journal_table(df, extra_cols=["status"]).splitlines()
    assert [c.strip() for c in with_status[0].split("|")[1:-1]] == [
        "method",
        *HEADER_COLS,
        "status",
    ]
    assert [ln.split("|")[-2].strip() for ln in with_status[2:]] == ["", "", "failed"]


def test_journal_table_custom_label() -> None:
    df = pd.DataFrame(
        {"module": ["k_proj", "v_proj"], "score": [np.nan, 0.5], "signed_score": [np.nan, 0.5]}
    )
    lines = journal_table(df, label_col="module").splitlines()
    assert lines[0].split("|")[1].strip() == "module"
    assert "v_proj" in lines[2] and "k_proj" in lines[3]


def test_ci_is_clustered_cr2_and_anti_frac_counts_questions() -> None:
    """Four questions share x; three rise, one falls. With identical designs per cluster, CR2
    is CR0 x G/(G-1), i.e. statsmodels' CR1 variance x (N-K)/(N-1), and the Bell-McCaffrey df
    are exactly G - 1; p_value is the t(G-1) p of that SE (the CI's own covariance, not the
    plain OLS p). anti_frac is 1/4."""
    import statsmodels.api as sm

    rng = np.random.default_rng(0)
    c = np.tile(np.repeat([-1.0, -0.5, 0.0, 0.5, 1.0], 3), 4)
    q = np.repeat(["q0", "q1", "q2", "q3"], 15)
    slope_q = np.repeat([3.0, 2.0, 4.0, -1.0], 15)
    y = slope_q * symlog(c) + rng.normal(0, 0.3, len(c))
    out = regress(c, y, np.ones(len(c), bool), groups=q)
    fit = sm.OLS(y, sm.add_constant(symlog(c))).fit()
    robust = fit.get_robustcov_results(
        cov_type="cluster", groups=np.unique(q, return_inverse=True)[1]
    )
    n, k, g = len(c), 2, 4
    se = float(robust.bse[1]) * math.sqrt((n - k) / (n - 1))
    assert out["slope_se"] == pytest.approx(se, rel=1e-9)
    assert out["slope_df"] == pytest.approx(g - 1, rel=1e-9) and out["n_scenarios"] == g
    half = stats.t.ppf(0.975, g - 1) * se
    assert (out["slope_ci_low"], out["slope_ci_high"]) == pytest.approx(
        (fit.params[1] - half, fit.params[1] + half), rel=1e-9
    )
    assert out["p_value"] == pytest.approx(2 * stats.t.sf(abs(fit.params[1]) / se, g - 1), rel=1e-9)
    assert out["p_value"] > 100 * fit.pvalues[1]  # the iid p is far too small here
    plain = fit.conf_int()[1]
    assert out["slope_ci_high"] - out["slope_ci_low"] > plain[1] - plain[0]
    assert out["anti_frac"] == 0.25
    one = regress(c, y, np.ones(len(c), bool), groups=np.full(len(c), "q"))
    assert (one["slope_ci_low"], one["slope_ci_high"]) == pytest.approx(tuple(plain)) and one[
        "anti_frac"
    ] == 0.0
    assert one["p_value"] == pytest.approx(fit.pvalues[1])
    # Clusters (scenarios) apart from questions: anti_frac still counts questions.
    two = regress(c, y, np.ones(len(c), bool), groups=q, clusters=np.where(q < "q2", "a", "b"))
    assert two["n_scenarios"] == 2 and two["anti_frac"] == 0.25
    assert math.isnan(regress(c, y, np.ones(len(c), bool))["anti_frac"])


def test_cr2_matches_a_hand_computation_and_hc2() -> None:
    """Unbalanced clusters, two regressors: CR2 equals the textbook loop with sqrtm, its df the
    Imbens-Kolesar formula, and singleton clusters give statsmodels' HC2."""
    import statsmodels.api as sm
    from scipy.linalg import sqrtm

    from steerexp.stages.regress.cluster import cr2

    rng = np.random.default_rng(3)
    sizes = [2, 3, 5, 8, 4, 6]
    cl = np.repeat(np.arange(len(sizes)), sizes)
    x = np.column_stack([np.ones(len(cl)), rng.normal(size=len(cl)), rng.normal(size=len(cl))])
    y = x @ [1.0, 2.0, -1.0] + rng.normal(size=len(cl)) + rng.normal(size=len(sizes))[cl]
    fit = cr2(x, y, cl)
    bread = np.linalg.inv(x.T @ x)
    e = y - x @ bread @ x.T @ y
    m = np.eye(len(y)) - x @ bread @ x.T
    meat, cols = np.zeros((3, 3)), []
    for gi in range(len(sizes)):
        i = cl == gi
        a = np.linalg.inv(np.real(sqrtm(m[np.ix_(i, i)])))
        u = x[i].T @ a @ e[i]
        meat += np.outer(u, u)
        cols.append(m[:, i] @ a @ x[i] @ bread[:, 1])
    assert fit.cov == pytest.approx(bread @ meat @ bread, rel=1e-8)
    gg = np.column_stack(cols).T @ np.column_stack(cols)
    assert fit.df[1] == pytest.approx(np.trace(gg) ** 2 / np.sum(gg * gg), rel=1e-8)
    assert 1 < fit.df[1] < len(sizes) - 1
    hc2 = sm.OLS(y, x).fit(cov_type="HC2")
    single = cr2(x, y, np.arange(len(y)))
    assert single.cov == pytest.approx(np.asarray(hc2.cov_params()), rel=1e-8)
