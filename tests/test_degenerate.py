"""Fits that cannot be made say so (issue 24): too few pairs or no variance is refused before a
fit, an undefined slope is status ``degenerate`` with its reason, and the ranking marks the row."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import compose_cfg

from steerexp.config.errors import SteerexpError
from steerexp.pipeline import experiment
from steerexp.stages.fit.methods import fit_direction
from steerexp.sweep import report

# --- 1: minimum inputs per method ------------------------------------------------------------------


def test_one_pair_is_refused_instead_of_a_basis_vector() -> None:
    """pca_diff of one pair has nothing to fit; the SVD used to return e1 (status ok)."""
    acts = torch.randn(2, 8)
    with pytest.raises(SteerexpError, match=r"'pca_diff' needs at least 2 contrast pairs, got 1"):
        fit_direction("pca_diff", acts)


@pytest.mark.parametrize("name", ["pca_diff", "pca_center"])
def test_no_variance_is_refused(name: str) -> None:
    """Pairs whose differences (pca_diff) or rows (pca_center) do not vary have no axis."""
    base = torch.randn(1, 8).repeat(4, 1)
    acts = base.clone()
    if name == "pca_diff":
        acts[0::2] += torch.tensor([1.0] + [0.0] * 7)  # every pair differs by the same vector
        match = r"centred pair differences are all zero \(no variance\)"
    else:
        match = r"pair-centred activations are all zero \(no variance\)"
    with pytest.raises(SteerexpError, match=match):
        fit_direction(name, acts)


# --- 3: degenerate fits -----------------------------------------------------------------------------


def test_degenerate_reason_names_the_valid_rows() -> None:
    from steerexp.pipeline.checks import degenerate_reason

    ok = {"slope": 1.0, "r2": 0.5, "p_value": 0.01}
    assert degenerate_reason(ok) is None
    why = degenerate_reason(
        {"slope": math.nan, "r2": math.nan, "p_value": math.nan, "n_valid": 12, "n_rows": 36}
    )
    assert why is not None and why.startswith("degenerate fit: 12 of 36 rows valid")


def test_undefined_fit_is_status_degenerate_with_a_line(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    def fake_execute(cfg, run_dir, metrics, progress=True) -> pd.DataFrame:
        metrics.update(slope=math.nan, r2=math.nan, p_value=math.nan, n_valid=12, n_rows=36)
        return pd.DataFrame()

    monkeypatch.setattr(experiment, "execute", fake_execute)
    cfg = compose_cfg("model=tiny_random", "eval.coeffs=[-1e6,0,1e6]")
    metrics = experiment.run(cfg, tmp_path / "run", progress=False)
    assert metrics["status"] == "degenerate"
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "degenerate" and "12 of 36 rows valid" in status["error"]
    err = capsys.readouterr().err
    assert f"steerexp: warning: {tmp_path / 'run'}: degenerate fit: 12 of 36 rows valid" in err
    # a rerun of the same config counts it as finished
    again = experiment.run(cfg, tmp_path / "run", progress=False)
    assert again["status"] == "degenerate"
    assert "already finished" in capsys.readouterr().out


def test_degenerate_row_is_marked_in_the_ranking(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for num, (method, status, slope) in enumerate(
        [("pca_diff", "ok", 2.0), ("mean_diff", "degenerate", math.nan)]
    ):
        job = sweep / f"{num}_method={method}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- method={method}\n")
        err = None if status == "ok" else "degenerate fit: 0 of 36 rows valid"
        metrics = {"method": method, "status": status, "error": err, "slope": slope, "score": slope}
        (job / "metrics.json").write_text(json.dumps(metrics))
    df = report.build_report(sweep, None)
    assert dict(zip(df["method"], df["status"], strict=True)) == {
        "pca_diff": "ok",
        "mean_diff": "degenerate",
    }
    md = (sweep / "ranking.md").read_text()
    assert "`1_method=mean_diff`: degenerate: degenerate fit: 0 of 36 rows valid" in md


@pytest.mark.slow
def test_huge_coefficients_give_a_degenerate_run(tmp_path: Path) -> None:
    """The issue's case: no steered row valid at c = +-1e6 used to be status ok with NaN stats."""
    cfg = compose_cfg(
        "model=tiny_random",
        "dataset.max_pairs=4",
        "eval.repeats=1",
        "eval.max_new_tokens=4",
        "eval.coeffs=[-1e6,0,1e6]",
        "random_null.k=0",
        f"cache_dir={tmp_path / 'cache'}",
    )
    metrics = experiment.run(cfg, tmp_path / "run", progress=False)
    assert metrics["status"] == "degenerate" and math.isnan(metrics["slope"])
