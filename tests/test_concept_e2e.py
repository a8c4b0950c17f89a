"""A concept given only as files steers the organism end to end, through the CLI (issue 13).

The files (``examples/organism_personas.jsonl``, ``examples/organism_questions.jsonl``) restate
honesty as two-persona rows -- an honest vs an untruthful persona prompt, one statement opening
as the assistant's continuation -- and the organism's held-out dilemmas as an eval file with
options Yes/No.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from helpers import REPO, steerexp_in_process

CONCEPT = [
    "random_null.k=8",
    "fit.bootstrap=0",
    "dataset=file",
    "dataset.path=examples/organism_personas.jsonl",
    "eval=file",
    "eval.path=examples/organism_questions.jsonl",
    'eval.prompt_template="{question}"',
    'eval.answer_prefix="Final choice:"',
    "eval.max_new_tokens=32",
]


steerexp = steerexp_in_process


def test_single_run_gives_the_usual_run_dir_and_row(tmp_path: Path) -> None:
    out = steerexp(
        *CONCEPT, "eval.coeffs=[-0.1,0,0.1]", "eval.repeats=1", f"hydra.run.dir={tmp_path}"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"^\| pca_diff +\| +-?\d+\.\d\d \|", out.stdout, re.M), out.stdout[-1500:]
    for name in (
        "metrics.json",
        "dose_response.csv",
        "directions.safetensors",
        "dose_response.png",
    ):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["dataset"] == "file" and metrics["eval"] == "file"
    assert metrics["n_pairs"] == 128
    dose = pd.read_csv(tmp_path / "dose_response.csv")
    assert len(dose) == 12 * 3 and dose["valid"].mean() >= 0.9
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["holdout"] == 0.0 and split["eval_rows"] == list(range(1, 13))
    assert len(split["contrast_rows"]) == 128 and (tmp_path / "prompts.jsonl").is_file()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("concept_sweep")
    out = steerexp(
        "-m",
        "method=mean_diff,pca_diff",
        *CONCEPT,
        "eval.coeffs=[-0.25,-0.1,-0.05,0,0.05,0.1,0.25]",
        f"hydra.sweep.dir={tmp / 'sweep'}",
        f"hydra.callbacks.ranking.reports_root={tmp / 'reports'}",
        "report_name=concept",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return tmp


def test_file_concept_steers_the_organism(sweep: Path) -> None:
    jobs = {
        m["method"]: m
        for m in (json.loads(p.read_text()) for p in (sweep / "sweep").glob("*/metrics.json"))
    }
    assert set(jobs) == {"mean_diff", "pca_diff"}
    for m in jobs.values():
        assert m["status"] == "ok"
        assert m["slope"] > 10 and m["slope_ci_low"] > 5 and m["r2"] > 0.8, m
        assert m["p_value"] < 1e-6 and m["valid_frac"] >= 0.7, m
    assert jobs["mean_diff"]["cache_key"] == jobs["pca_diff"]["cache_key"]
    assert jobs["pca_diff"]["extraction_cached"]


def test_file_concept_sweep_is_ranked(sweep: Path) -> None:
    md = (sweep / "sweep" / "ranking.md").read_text()
    rows = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["mean_diff", "pca_diff"], md  # header, then sorted by score
    assert (sweep / "reports" / "concept" / "ranking.csv").is_file()
    assert len(list((sweep / "sweep").glob("*/dose_response.csv"))) == 2


def test_caa_run_asks_only_the_recorded_held_out_rows(tmp_path: Path) -> None:
    """dataset=caa eval=caa on one file, through the whole pipeline (tiny model, forced judge)."""
    from helpers import compose_cfg

    from steerexp.pipeline import run

    cfg = compose_cfg(
        "model=tiny_random",
        "judge=forced",
        "dataset=caa",
        "eval=caa",
        f"dataset.path={REPO / 'examples' / 'sycophancy.jsonl'}",
        "eval.coeffs=[-1,0,1]",
        "eval.repeats=1",
        "eval.max_new_tokens=4",
        "random_null.k=0",
    )
    metrics = run(cfg, tmp_path, progress=False)
    assert metrics["status"] == "ok" and metrics["n_pairs"] == 24
    split = json.loads((tmp_path / "split.json").read_text())
    assert len(split["eval_rows"]) == 8 and not set(split["eval_rows"]) & set(
        split["contrast_rows"]
    )
    dose = pd.read_csv(tmp_path / "dose_response.csv")
    assert sorted(set(dose["question_id"])) == sorted(f"row{i}" for i in split["eval_rows"])
    assert len(dose) == 8 * 3 and dose["valid"].all()
