"""End to end on the organism: an honesty direction steers, a random one does not (docs/organism.md)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import compose_cfg
from safetensors import safe_open
from safetensors.torch import load_file

from steerexp.pipeline import run
from steerexp.store import context
from steerexp.store import metrics as run_metrics


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """pca_diff on hs and five random baselines (one shared extraction and one shared null of
    8 directions), and pca_diff again under another loss (reuses the generations)."""
    root = tmp_path_factory.mktemp("e2e")
    k = ("random_null.k=8", "fit.bootstrap=2")
    # a cache and a run context of their own: what they reuse (model, extraction, generations)
    # is their own work, whatever ran before them in this test process (the documented commands
    # run the same default config)
    with pytest.MonkeyPatch.context() as env, context.fresh():
        env.setenv("STEEREXP_CACHE", str(root / "cache"))
        return _runs(root, k)


def _runs(root: Path, k: tuple[str, ...]) -> dict[str, dict]:
    out = {
        "pca_diff": run(
            compose_cfg("method=pca_diff", "module=hs", *k), root / "pca", progress=False
        )
    }
    for seed in range(5):
        out[f"random{seed}"] = run(
            compose_cfg("method=random", "module=hs", f"method.seed={seed}", *k),
            root / f"random{seed}",
            progress=False,
        )
    out["pca_hs_diff"] = run(
        compose_cfg("method=pca_diff", "module=hs", "loss=hs_diff", *k),
        root / "pca_hs",
        progress=False,
    )
    out["_root"] = {"path": str(root)}
    return out


def test_honesty_direction_steers_the_organism(runs) -> None:
    m = runs["pca_diff"]
    assert m["status"] == "ok"
    assert m["slope"] > 0 and m["p_value"] < 1e-3 and m["r2"] >= 0.5, m
    dose = pd.read_csv(Path(runs["_root"]["path"]) / "pca" / "dose_response.csv")
    assert dose.loc[dose.coeff == 0, "valid"].mean() >= 0.95


def test_random_directions_do_not(runs) -> None:
    slopes = [abs(runs[f"random{s}"]["slope"]) for s in range(5)]
    assert np.mean(slopes) <= runs["pca_diff"]["slope"] / 5, (slopes, runs["pca_diff"]["slope"])


def test_null_and_prompting_reference(runs) -> None:
    """One null per group, built once and shared by every direction of the same sampling seed
    (random directions of other method.seed); pca_diff beats it, prompting the honest
    persona is more honest than prompting the untruthful one."""
    pca = runs["pca_diff"]
    assert pca["null_k"] == 8 and not pca["null_cached"] and pca["null_build_s"] > 0
    assert all(runs[f"random{s}"]["null_cached"] for s in range(5))
    assert len({runs[k]["null_key"] for k in runs if k != "_root"}) == 1
    assert pca["vs_random"] > 2 and pca["p_random"] < 0.05, pca
    assert pca["prompt_shift"] > 0 and pca["fitted_shift"] > 0
    assert pca["slope_ci_low"] < pca["slope"] < pca["slope_ci_high"] and 0 <= pca["anti_frac"] <= 1
    assert all(0 <= runs[f"random{s}"]["p_random"] <= 1 for s in range(5))


def test_per_run_statistics_and_files(runs) -> None:
    """Issue 21's per-run columns: 6 scenario clusters, 2 refits whose spread widens the clustered
    interval, pca_diff beyond all 8 null directions, a saturating curve, and the run-dir files."""
    pca, rnd = runs["pca_diff"], runs["random0"]
    assert pca["n_scenarios"] == 6 and pca["n_refits"] == 2 and 0.9 < pca["fit_cos"] < 1
    assert pca["slope_lo"] <= pca["slope_ci_low"] < pca["slope_ci_high"] <= pca["slope_hi"]
    assert pca["null_beyond_all"] and pca["p_null"] == pytest.approx(1 / 9)
    assert pca["lof_p"] < 1e-3 and pca["aic_tanh"] < pca["aic_line"]
    assert pca["tanh_slope0"] > pca["slope"] > 0 and pca["budget_effect"] > 0
    assert 0 < pca["valid_frac_lo"] <= 1 and 0 < pca["valid_frac_hi"] <= 1
    assert rnd["n_refits"] == 0 and math.isnan(rnd["fit_cos"])
    root = Path(runs["_root"]["path"]) / "pca"
    assert len(pd.read_csv(root / "refits.csv")) == 2
    null = pd.read_csv(root / "null_slopes.csv", keep_default_na=False)
    assert len(null) == 8 * 7 and set(null["scenario"]) == {
        "*",
        *pd.read_csv(root / "dose_response.csv")["scenario"],
    }
    assert len(pd.read_csv(root / "dose_means.csv")) == 7
    assert pd.read_csv(root / "scenario_slopes.csv")["scenario"].iloc[0] == "*"


def test_loss_sweep_reuses_activations_and_generations(runs) -> None:
    a, b = runs["pca_diff"], runs["pca_hs_diff"]
    assert b["extraction_cached"] and b["acts_key"] == a["acts_key"]
    assert (
        b["generations_reused"]
        and not a["generations_reused"]
        and b["generation_key"] == a["generation_key"]
    )
    root = Path(runs["_root"]["path"])
    assert (root / "pca" / "dose_response.csv").read_text() == (
        root / "pca_hs" / "dose_response.csv"
    ).read_text()
    assert b["slope"] == a["slope"]


def test_seeds_share_one_extraction_and_one_model_load(runs) -> None:
    assert all(runs[f"random{s}"]["extraction_cached"] for s in range(5))
    assert all(runs[f"random{s}"]["model_reused"] for s in range(5))
    assert len({runs[k]["acts_key"] for k in runs if k != "_root"}) == 1


def test_artifacts_follow_the_spec(runs) -> None:
    d = Path(runs["_root"]["path"]) / "pca"
    metrics = json.loads((d / "metrics.json").read_text())
    for key in (
        "slope",
        "r2",
        "valid_frac",
        "effect_size",
        "p_value",
        "score",
        "min",
        "max",
        "slope_ci_low",
        "slope_ci_high",
        "signed_score",
        "spearman",
        "n_valid",
        "model",
        "module",
        "method",
        "loss",
        "status",
        "time_extract_s",
        "time_fit_s",
        "time_intervene_s",
        "time_generate_s",
        "time_judge_s",
        "cache_key",
    ):
        assert key in metrics, key
    # one definition of every metric: each key is a RunMetrics field (loss_* are per loss term)
    known = set(run_metrics.names(*run_metrics.GROUPS, run_metrics.INFO))
    assert [k for k in metrics if k not in known and not k.startswith("loss_")] == []
    assert [k for k in run_metrics.names("journal", "identity", "time") if k not in metrics] == []
    status = json.loads((d / "status.json").read_text())
    assert {k: status[k] for k in ("status", "error")} == {"status": "ok", "error": None}
    assert re.fullmatch(r"[0-9a-f]{16}", status["config_hash"]), status
    dose = pd.read_csv(d / "dose_response.csv")
    assert list(dose.columns) == [
        "question_id",
        "scenario",
        "coeff",
        "repeat",
        "log_ratio",
        "pmass",
        "valid",
        "forced",
        "completion",
        "stop_reason",
        "n_tokens",
    ]
    assert set(dose["stop_reason"]) <= {"stop_token", "regex", "length"}
    dirs = load_file(str(d / "directions.safetensors"))
    assert all(k.startswith("model.layers.") for k in dirs)
    for v in dirs.values():
        assert v.dtype == torch.float32 and abs(float(v.norm()) - 1) < 1e-5
    with safe_open(str(d / "directions.safetensors"), "pt") as f:
        meta = f.metadata()
    assert (
        meta["method"] == "pca_diff"
        and meta["loss"] == "nll"
        and meta["cache_key"] == metrics["cache_key"]
    )
    assert set(json.loads(meta["raw_norms"])) == set(dirs) and set(
        json.loads(meta["scales"])
    ) == set(dirs)
    assert (d / "dose_response.png").stat().st_size > 1000
    cost = pd.read_csv(d / "coherence.csv")
    assert list(cost.columns) == [
        "coeff",
        "kl",
        "valid_frac",
        "mean_len",
        "pmass_median",
        "low_pmass_frac",
    ]
    assert cost.loc[cost.coeff == 0, "kl"].item() == 0.0 and (cost["kl"] >= 0).all()
    assert metrics["kl_at_max"] == cost["kl"].iloc[[0, -1]].max() and metrics["coherent_max"] > 0
    env = json.loads((d / "environment.json").read_text())
    assert env["packages"]["torch"] and "git_commit" in env


def test_same_config_and_seed_reproduce(tmp_path: Path) -> None:
    """A fresh extraction (new cache dir, cleared memo) gives identical directions and numbers."""

    cfg = compose_cfg(
        "method=fisher_steer_cov_reg1",
        "module=o_proj",
        f"cache_dir={tmp_path / 'c1'}",
        "eval.repeats=1",
        "eval.coeffs=[-1,0,1]",
        "random_null.k=0",
    )
    a = run(cfg, tmp_path / "a", progress=False)
    context.current().extractions.clear()
    cfg2 = compose_cfg(
        "method=fisher_steer_cov_reg1",
        "module=o_proj",
        f"cache_dir={tmp_path / 'c2'}",
        "eval.repeats=1",
        "eval.coeffs=[-1,0,1]",
        "random_null.k=0",
    )
    b = run(cfg2, tmp_path / "b", progress=False)
    assert not b["extraction_cached"]
    for k in ("slope", "r2", "valid_frac", "p_value", "score", "min", "max"):
        assert a[k] == b[k] or (np.isnan(a[k]) and np.isnan(b[k])), k
    da, db = (
        load_file(str(tmp_path / "a" / "directions.safetensors")),
        load_file(str(tmp_path / "b" / "directions.safetensors")),
    )
    assert all(torch.equal(da[k], db[k]) for k in da)
    assert (tmp_path / "a" / "dose_response.csv").read_text() == (
        tmp_path / "b" / "dose_response.csv"
    ).read_text()


def test_iso_kl_units_hit_one_nat(tmp_path: Path) -> None:
    m = run(
        compose_cfg(
            "coeff_units=kl",
            "method=mean_diff",
            "eval.repeats=1",
            "eval.coeffs=[-1,0,1]",
            "random_null.k=0",
        ),
        tmp_path,
        progress=False,
    )
    assert m["status"] == "ok" and m["c_star"] > 0
    assert abs(m["kl_p95_at_c_star"] - 1.0) <= 0.1
    # calibrated on the neutral prompts at both signs: the worse sign is the one at 1 nat
    assert m["kl_n_prompts"] == 24
    assert m["kl_p95_at_c_star"] == max(m["kl_p95_plus"], m["kl_p95_minus"])
