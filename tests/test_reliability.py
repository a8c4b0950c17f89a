"""Ranking reliability (split-half Spearman, bootstrap rank) on synthetic sweeps whose answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from steerexp.core.columns import RELIABILITY_COLUMNS
from steerexp.core.transforms import symlog
from steerexp.stages.regress import ols as regress
from steerexp.sweep import reliability, report

COEFFS = [-4.0, -1.0, 0.0, 1.0, 4.0]


def make_sweep(
    root: Path,
    slopes: list[float],
    n_questions: int,
    noise: float,
    seed: int = 0,
    q_spread: float = 0.0,
) -> Path:
    """One job per slope; each question adds its own slope offset (``q_spread``) and row noise."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for num, slope in enumerate(slopes):
        job = root / f"{num}_method=m{num}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- method=m{num}\n")
        rows = []
        for q in range(n_questions):
            q_slope = slope + q_spread * rng.standard_normal()
            for c in COEFFS:
                for rep in range(2):
                    y = q_slope * symlog(c) + noise * rng.standard_normal()
                    rows.append(
                        {
                            "question_id": f"q{q}",
                            "coeff": c,
                            "repeat": rep,
                            "log_ratio": y,
                            "valid": bool(rng.random() > 0.05),
                            "completion": "",
                        }
                    )
        dose = pd.DataFrame(rows)
        dose.to_csv(job / "dose_response.csv", index=False)
        stats = regress.regress(
            dose["coeff"], dose["log_ratio"], dose["valid"], groups=dose["question_id"]
        )
        (job / "metrics.json").write_text(
            json.dumps({**stats, "method": f"m{num}", "status": "ok"})
        )
    return root


def test_scores_match_the_regression(tmp_path: Path) -> None:
    """The sufficient-statistics score equals regress()'s signed_score on the whole job."""
    sweep = make_sweep(tmp_path / "s", [2.0, -1.0], n_questions=5, noise=0.7)
    for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
        got = reliability.signed_scores(reliability.question_stats(job).to_numpy().sum(axis=0))
        want = json.loads((job / "metrics.json").read_text())["signed_score"]
        assert got == pytest.approx(want, rel=1e-9)


def test_clear_order_is_reliable(tmp_path: Path) -> None:
    sweep = make_sweep(
        tmp_path / "s", [5.0, 4.0, 3.0, 2.0, 1.0, 0.0], n_questions=12, noise=0.5, q_spread=0.3
    )
    df = report.build_report(sweep, reports_root=None)
    assert list(df["method"]) == ["m0", "m1", "m2", "m3", "m4", "m5"]
    assert df["split_half_spearman"].iloc[0] > 0.9
    assert df["rank_median"].tolist() == pytest.approx([1, 2, 3, 4, 5, 6])
    assert (df["rank_high"] - df["rank_low"]).max() <= 1.0
    assert df["reliability_questions"].eq(12).all()
    md = (sweep / "ranking.md").read_text()
    rho = df["split_half_spearman"].iloc[0]
    assert (
        f"reliability over 12 questions: split-half Spearman of the two halves' orders {rho:.2f}"
        in md
    )
    assert "m0 1.0 [1.0, 1.0]" in md
    csv = pd.read_csv(sweep / "ranking.csv")
    assert set(RELIABILITY_COLUMNS) <= set(csv.columns)


def test_noise_order_is_not_reliable(tmp_path: Path) -> None:
    """Equal true slopes with question-level scatter: the order is noise, so the halves disagree and
    rank intervals are wide."""
    rhos = []
    for seed in range(3):
        sweep = make_sweep(
            tmp_path / f"s{seed}", [1.0] * 8, n_questions=12, noise=0.5, seed=seed, q_spread=1.0
        )
        df = report.build_report(sweep, reports_root=None)
        rhos.append(df["split_half_spearman"].iloc[0])
        assert (df["rank_high"] - df["rank_low"]).median() >= 3
    assert abs(np.mean(rhos)) < 0.4


def test_too_few_questions_is_not_judged(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path / "s", [3.0, 1.0, 0.0], n_questions=1, noise=0.1)
    df = report.build_report(sweep, reports_root=None)
    assert df["split_half_spearman"].isna().all() and df["rank_median"].isna().all()
    assert df["reliability_questions"].eq(1).all()
    assert "reliability: not judged (1 questions; needs >= 4)" in (sweep / "ranking.md").read_text()
