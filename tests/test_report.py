"""Ranking report, Hydra callback, launcher presets and W&B offline logger on fabricated sweep dirs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import JOURNAL_HEADER, REPO
from omegaconf import OmegaConf
from statsmodels.stats.multitest import multipletests
from wandb_offline import read_offline_run

from steerexp import CONF_DIR
from steerexp.config.errors import SteerexpError
from steerexp.render.plots import dose_curve
from steerexp.store import context
from steerexp.store.columns import EXTRA_STAT_COLUMNS, JOURNAL_COLUMNS, TIME_COLUMNS
from steerexp.sweep import callbacks, report

COEFFS = [-1.0, -0.5, 0.0, 0.5, 1.0]

# (method, module, slope, r2, status); score = |slope| * r2 * valid_frac^2 with valid_frac = 1.
JOBS = [
    ("pca_diff", "k_proj", 2.0, 0.5, "ok"),
    ("random", "k_proj", 0.1, 0.1, "ok"),
    ("pca_diff", "v_proj", -1.0, 0.2, "ok"),
    ("random", "v_proj", 3.0, 0.9, "ok"),
    ("mean_diff", "v_proj", None, None, "failed"),
]


def write_job(
    sweep: Path,
    num: int,
    method: str,
    module: str,
    slope: float | None,
    r2: float | None,
    status: str,
) -> Path:
    """One job dir as the pipeline writes it (metrics.json, status.json, dose_response.csv, .hydra/)."""
    job = sweep / f"{num}_method={method},module={module}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- method={method}\n- module={module}\n")
    error = (
        None if status == "ok" else "SteerexpError: non-finite gradients in module k_proj batch 0"
    )
    metrics = {k: None for k in JOURNAL_COLUMNS + EXTRA_STAT_COLUMNS + TIME_COLUMNS}
    metrics.update(
        model="organism",
        module=module,
        method=method,
        loss="nll",
        dataset="organism",
        eval="organism",
        judge="logratio",
        coeff_units="norm",
        seed=0,
        status=status,
        error=error,
        model_reused=False,
        extraction_cached=num > 0,
        cache_key="abc123",
    )
    if status == "ok":
        metrics.update(
            slope=slope,
            r2=r2,
            valid_frac=1.0,
            effect_size=None,
            p_value=0.05,
            score=abs(slope) * r2,
            signed_score=slope * r2,
            min=-3.0,
            max=4.0,
            n_valid=10,
            n_rows=10,
            time_total_s=1.5,
        )
        rows = [
            {
                "question_id": "q0",
                "coeff": c,
                "repeat": r,
                "log_ratio": slope * c + 0.1 * r,
                "pmass": 0.9,
                "valid": True,
                "forced": False,
                "completion": f"Final choice: {'Yes' if c > 0 else 'No'}",
            }
            for c in COEFFS
            for r in range(2)
        ]
        pd.DataFrame(rows).to_csv(job / "dose_response.csv", index=False)
    (job / "metrics.json").write_text(json.dumps(metrics))
    (job / "status.json").write_text(json.dumps({"status": status, "error": error}))
    return job


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """multirun/<date>/<time> with 2 methods x 2 modules, one failed job and one job still missing."""
    sweep = tmp_path / "multirun" / "2026-11-24" / "10-31-02"
    sweep.mkdir(parents=True)
    for num, job in enumerate(JOBS):
        write_job(sweep, num, *job)
    missing = sweep / "5_method=mean_diff,module=k_proj" / ".hydra"
    missing.mkdir(parents=True)
    (missing / "overrides.yaml").write_text("- method=mean_diff\n- module=k_proj\n")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


def tables(md: str) -> dict[str, list[list[str]]]:
    """``## heading -> table rows`` (cells stripped; header first, separator dropped)."""
    out: dict[str, list[list[str]]] = {}
    heading = ""
    for line in md.splitlines():
        if line.startswith("## "):
            heading = line[3:]
        elif line.startswith("|") and not line.startswith("|:") and not line.startswith("|-"):
            out.setdefault(heading, []).append([c.strip() for c in line.strip("|").split("|")])
    return out


def test_ranking_md_tables(sweep: Path, tmp_path: Path) -> None:
    df = report.build_report(sweep, reports_root=tmp_path / "reports")
    md = (sweep / "ranking.md").read_text()
    t = tables(md)
    assert list(t) == ["module=k_proj", "module=v_proj"]
    assert t["module=v_proj"][0] == [*JOURNAL_HEADER, "status"]
    assert [r[0] for r in t["module=v_proj"][1:]] == ["random", "pca_diff", "mean_diff"]
    assert t["module=v_proj"][1][1:3] == ["3.00", "0.90"] and t["module=v_proj"][1][6] == "2.70"
    assert t["module=v_proj"][3][-1] == "failed" and t["module=v_proj"][3][6] == "nan"
    assert [r[0] for r in t["module=k_proj"][1:]] == ["pca_diff", "random", "mean_diff"]
    assert t["module=k_proj"][3][-1] == "missing"
    assert "ok 4, failed 1, missing 1" in md and "non-finite gradients" in md
    assert df["status"].tolist().count("ok") == 4 and df.attrs["swept_keys"] == ["method", "module"]


def test_ranking_plain_journal_header_and_single_table(tmp_path: Path) -> None:
    sweep = tmp_path / "multirun" / "d" / "t"
    sweep.mkdir(parents=True)
    for num, (m, s, r2) in enumerate(
        [("pca_diff", 1.0, 0.5), ("random", 0.2, 0.1), ("svd_steer", 4.0, 0.5)]
    ):
        write_job(sweep, num, m, "k_proj", s, r2, "ok")
    report.build_report(sweep, reports_root=None)
    md = (sweep / "ranking.md").read_text()
    t = tables(md)
    assert list(t) == [""] and t[""][0] == JOURNAL_HEADER
    assert [r[0] for r in t[""][1:]] == ["svd_steer", "pca_diff", "random"]
    assert "| method" in md and "## " not in md


def test_ranking_csv_png_and_copy(sweep: Path, tmp_path: Path) -> None:
    report.build_report(sweep, reports_root=tmp_path / "reports")
    csv = pd.read_csv(sweep / "ranking.csv")
    for col in [
        "job",
        "status",
        "error",
        *JOURNAL_HEADER,
        "module",
        "signed_score",
        "time_total_s",
        "cache_key",
        "extraction_cached",
        "seed",
    ]:
        assert col in csv.columns, col
    assert len(csv) == 6 and csv["score"].iloc[0] == pytest.approx(2.7)
    assert math.isnan(csv.loc[csv["status"] == "failed", "score"].iloc[0])
    png = sweep / "dose_response.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    dest = tmp_path / "reports" / "2026-11-24_10-31-02"
    for name in report.OUTPUTS:
        assert (dest / name).read_bytes() == (sweep / name).read_bytes()


def test_dose_curve_means_sems_and_counts_of_valid_finite_rows(tmp_path: Path) -> None:
    """The one curve both figures draw (a run's and the sweep's), from a frame or its CSV."""
    dose = pd.DataFrame(
        {
            "coeff": [-1.0, -1.0, 0.0, 0.0, 0.0, 1.0],
            "log_ratio": [1.0, 3.0, 2.0, math.inf, 5.0, -4.0],
            "valid": [True, True, True, True, False, True],
        }
    )
    want = pd.DataFrame(
        {"c": [-1.0, 0.0, 1.0], "mean": [2.0, 2.0, -4.0], "sem": [1.0, 0.0, 0.0], "n": [2, 1, 1]}
    )
    pd.testing.assert_frame_equal(dose_curve(dose), want)
    dose.to_csv(tmp_path / "dose.csv", index=False)
    text = pd.read_csv(tmp_path / "dose.csv", dtype={"valid": str})
    pd.testing.assert_frame_equal(dose_curve(text), want)


def test_cli_reproduces_byte_for_byte(sweep: Path, tmp_path: Path) -> None:
    report.build_report(sweep, reports_root=tmp_path / "reports")
    first = (sweep / "ranking.md").read_bytes()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "steerexp.report",
            str(sweep),
            "--reports-root",
            str(tmp_path / "r2"),
            "--name",
            "mine",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (sweep / "ranking.md").read_bytes() == first
    assert (tmp_path / "r2" / "mine" / "ranking.md").read_bytes() == first
    assert "## module=k_proj" in proc.stdout


def test_cli_bad_dir_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "steerexp.report", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a sweep dir" in lines[0] and str(tmp_path) in lines[0]
    with pytest.raises(SteerexpError, match="not a sweep dir"):
        report.build_report(tmp_path / "nope", reports_root=None)


def test_odd_job_dirs_do_not_break(tmp_path: Path) -> None:
    sweep = tmp_path / "s" / "t"
    write_job(sweep, 0, "pca_diff", "hs", 1.0, 1.0, "ok")
    bad = sweep / "1_method=random,module=hs"
    (bad / ".hydra").mkdir(parents=True)
    (bad / ".hydra" / "overrides.yaml").write_text("- method=random\n- +module=hs\n")
    (bad / "metrics.json").write_text("{not json")
    (bad / "dose_response.csv").write_text("garbage\n")
    df = report.build_report(sweep, reports_root=None)
    assert df.set_index("job").loc[bad.name, "status"] == "failed"
    assert "unreadable metrics.json" in (sweep / "ranking.md").read_text()


def test_callback_writes_report_and_counts_failures(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cb = callbacks.RankingCallback(reports_root=str(tmp_path / "cb_reports"))
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    outer = context.current()
    before = (outer.sweep_failed, outer.sweep_error)
    with context.fresh() as ctx:
        cb.on_multirun_start(cfg)
        assert ctx.sweep == (cfg, cb)
        cb.on_multirun_end(cfg)
        assert ctx.sweep_failed == 2 and ctx.sweep_error is None and ctx.sweep is None
        assert (tmp_path / "cb_reports" / "2026-11-24_10-31-02" / "ranking.md").is_file()
        assert "## module=v_proj" in capsys.readouterr().out
        empty = {"hydra": {"sweep": {"dir": str(tmp_path / "empty")}}}
        cb.on_multirun_end(OmegaConf.create(empty))
        assert ctx.sweep_error and "not a sweep dir" in ctx.sweep_error
        assert ctx.sweep_failed == 0
    # the tally lived in the block's context only
    assert context.current() is outer and (outer.sweep_failed, outer.sweep_error) == before


def test_callback_never_raises(tmp_path: Path) -> None:
    cb = callbacks.RankingCallback()
    with context.fresh() as ctx:
        cb.on_multirun_end(OmegaConf.create({"nothing": 1}))
    assert ctx.sweep_error


@pytest.mark.parametrize(
    "launcher", ["local_parallel", "local_gpu", "slurm_gpu", "joblib", "submitit_slurm"]
)
def test_launcher_presets_compose(launcher: str) -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(None, overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    assert target.startswith("hydra_plugins.hydra_")
    if launcher == "slurm_gpu":
        assert target.endswith("SlurmLauncher") and cfg.hydra.launcher.gpus_per_node == 1
    if launcher == "local_parallel":
        assert target.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs >= 1


def test_wandb_offline_logger_summary(
    sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from steerexp.pipeline import tracking

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = sweep / "0_method=pca_diff,module=k_proj"
    cfg = OmegaConf.create(
        {
            "model": {"name": "organism", "path": "x"},
            "module": {"name": "k_proj", "template": "m.{N}.k"},
            "method": {"name": "pca_diff", "kind": "pca"},
            "loss": {"name": "nll"},
            "seed": 0,
            "coeff_units": "norm",
            "logger": {
                "name": "wandb",
                "project": "steerexp-test",
                "entity": None,
                "mode": "offline",
            },
        }
    )
    logger = tracking.make_logger(cfg.logger)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    dose = pd.read_csv(run_dir / "dose_response.csv")
    report.build_report(sweep, reports_root=None)
    logger.start(cfg, run_dir)
    logger.log(metrics, dose, sweep / "dose_response.png")
    logger.finish("ok")
    run = read_offline_run(run_dir)
    summary, config = run["summary"], run["config"]
    assert run["finished"]
    assert summary["score"] == pytest.approx(1.0) and summary["slope"] == pytest.approx(2.0)
    assert (
        summary["status"] == "ok"
        and summary["effect_size"] is None
        and summary["method"] == "pca_diff"
    )
    assert (
        config["method"] == "pca_diff"
        and config["module"] == "k_proj"
        and config["model"] == "organism"
    )
    assert "curve/coeff" not in summary and "dose_response.nrows" in summary
    assert config["seed"] == 0 and config["cfg"]["module"]["template"] == "m.{N}.k"
    assert run["group"] == "2026-11-24_10-31-02" and run["name"] == "pca_diff|k_proj|nll|organism"
    info = json.loads((run_dir / "wandb_run.json").read_text())
    assert info["id"] == run["id"] and info["mode"] == "offline"


def test_none_logger_and_unknown_logger() -> None:
    from steerexp.pipeline import tracking

    logger = tracking.make_logger(OmegaConf.create({"name": "none"}))
    logger.start(OmegaConf.create({}), Path("."))
    logger.log({}, pd.DataFrame(), None)
    logger.finish("ok")
    with pytest.raises(SteerexpError, match="unknown logger 'wandbb'.*did you mean 'wandb'"):
        tracking.make_logger(OmegaConf.create({"name": "wandbb"}))


def test_null_columns_family_duplicates_and_footer(tmp_path: Path) -> None:
    """p_null is corrected over the family (the random control outside it), a row whose
    directions equal a better-ranked row's is dup_of it, and the footer gives K, the null median
    vs_random divides by, and prompting's shift."""
    from safetensors.torch import save_file

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    u = torch.nn.functional.normalize(torch.arange(1.0, 5.0), dim=0)
    rows = [
        ("pca_diff", 5.0, 1e-4, u),
        ("fisher_steer_emp_reg2", 3.0, 0.02, -u),
        ("random", 0.5, 0.6, torch.eye(4)[0]),
    ]
    for num, (method, slope, p, vec) in enumerate(rows):
        job = write_job(sweep, num, method, "hs", slope, 0.5, "ok")
        metrics = json.loads((job / "metrics.json").read_text())
        metrics.update(
            p_null=p,
            p_random=p / 2,
            vs_random=slope / 0.8,
            null_key="n1",
            null_k=16,
            null_abs_median=0.8,
            null_abs_p95=2.5,
            prompt_shift=3.9,
            fitted_shift=slope * 1.4,
            slope_ci_low=slope - 1,
            slope_ci_high=slope + 1,
        )
        (job / "metrics.json").write_text(json.dumps(metrics))
        save_file({"model.layers.2": vec.contiguous()}, str(job / "directions.safetensors"))
    df = report.build_report(sweep, reports_root=None)
    assert list(df["method"]) == ["pca_diff", "fisher_steer_emp_reg2", "random"]
    assert df["p_null_adj"].tolist()[:2] == pytest.approx([2e-4, 0.02])
    assert math.isnan(df["p_null_adj"].iloc[2])
    # SPEC 4.8's within-table Holm of the t-based p_random (random rows included) stays in the CSV
    want = multipletests((df["p_null"] / 2).to_numpy(), method="holm")[1]
    assert df["p_random_holm"].tolist() == pytest.approx(list(want))
    assert df["dup_of"].tolist() == ["", "pca_diff", ""]
    md = (sweep / "ranking.md").read_text()
    table = tables(md)[""]
    header = table[0]
    assert header[: len(JOURNAL_HEADER)] == JOURNAL_HEADER
    for col in ("slope 95% CI", "p_null", "p_null_adj", "vs_random", "shift", "dup_of"):
        assert col in header, col
    assert "p_random" not in header and "null" not in header
    assert [r[header.index("p_null_adj")] for r in table[1:]] == ["0.0002", "0.02", "nan"]
    assert "K = 16 random directions; vs_random = |slope| / 0.80" in md
    assert "95th percentile |slope| 2.50" in md and "log-ratio shift 3.90" in md


# --- reports: names, copies, discovery --------------------------------------------------------


def fake_job(sweep: Path, rel: str, method: str, status: str = "ok", score: float = 1.0) -> Path:
    job = sweep / rel
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- method={method}\n")
    metrics = {"method": method, "status": status, "score": score, "slope": score, "r2": 1.0}
    (job / "metrics.json").write_text(json.dumps(metrics))
    (job / "status.json").write_text(json.dumps({"status": status, "error": None}))
    return job


def test_report_never_overwrites_another_sweeps_copy(tmp_path: Path) -> None:
    roots = tmp_path / "reports"
    a, b = tmp_path / "x" / "day" / "t1", tmp_path / "y" / "day" / "t1"
    fake_job(a, "0_method=pca_diff", "pca_diff")
    fake_job(b, "0_method=random", "random")
    assert report.build_report(a, roots, name="same").attrs["report_dir"] == roots / "same"
    assert report.build_report(b, roots, name="same").attrs["report_dir"] == roots / "same-2"
    assert "pca_diff" in (roots / "same" / "ranking.md").read_text()
    assert "random" in (roots / "same-2" / "ranking.md").read_text()
    # a rebuild of the same sweep updates its own copy; the default names differ by sweep dir
    assert report.build_report(b, roots, name="same").attrs["report_dir"] == roots / "same-2"
    assert report.build_report(b, roots, name="same", overwrite=True).attrs["report_dir"] == (
        roots / "same"
    )
    assert "random" in (roots / "same" / "ranking.md").read_text()
    assert report.build_report(a, roots).attrs["report_dir"] == roots / "day_t1"
    assert report.build_report(b, roots).attrs["report_dir"] == roots / "day_t1-2"
    with pytest.raises(SteerexpError, match=r"report_name='../x' must be a plain name"):
        report.build_report(a, roots, name="../x")


def test_report_finds_nested_job_dirs(tmp_path: Path) -> None:
    """Sweeps whose override values nested job dirs (older steerexp) are still ranked whole."""
    sweep = tmp_path / "sweep"
    fake_job(sweep, "0_cache_dir=/abs/c,method=pca_diff", "pca_diff", score=2.0)
    fake_job(sweep, "1_cache_dir=/abs/c,method=random", "random", score=0.5)
    df = report.build_report(sweep, None)
    assert sorted(df["job"]) == [
        "0_cache_dir=/abs/c,method=pca_diff",
        "1_cache_dir=/abs/c,method=random",
    ]
    assert list(df["method"]) == ["pca_diff", "random"]


MULTIRUN_YAML = """
hydra:
  sweeper:
    _target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper
  overrides:
    task:
    - method=pca_diff,mean_diff,random
    - eval.repeats=1
"""


def test_planned_jobs_that_never_ran_are_rows(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    fake_job(sweep, "0_eval.repeats=1,method=pca_diff", "pca_diff")
    (sweep / "multirun.yaml").write_text(MULTIRUN_YAML)
    df = report.build_report(sweep, None, interrupted=True)
    assert len(df) == 3
    assert dict(zip(df["method"], df["status"], strict=True)) == {
        "pca_diff": "ok",
        "mean_diff": "interrupted",
        "random": "interrupted",
    }
    assert "interrupted 2" in (sweep / "ranking.md").read_text()
    later = report.build_report(sweep, None)
    assert sorted(later["status"]) == ["missing", "missing", "ok"]
