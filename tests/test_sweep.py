"""Real ``python -m steerexp -m ...`` sweeps on the organism: ranking, sharing, failures, resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import (
    JOURNAL_HEADER,
    REPO,
    TINY_RUN,
    run_sweep,
    steerexp_in_process,
    sweep_args,
    sweep_cmd,
)
from wandb_offline import read_offline_run

from steerexp.sweep import report

STATS = ["slope", "r2", "valid_frac", "p_value", "score", "min", "max"]
SMALL = ["eval.repeats=1", "dataset.max_pairs=48", "random_null.k=8", "fit.bootstrap=0"]


def small_cmd(tmp: Path, *args: str) -> list[str]:
    return sweep_cmd(tmp, *args, *SMALL)


def run_small(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_sweep(tmp, *args, *SMALL)


def job_metrics(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))]


def table_rows(md: str) -> list[str]:
    return [
        line
        for line in md.splitlines()
        if line.startswith("| ") and not line.startswith("| method")
    ]


@pytest.fixture(scope="module")
def main_sweep(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    tmp = tmp_path_factory.mktemp("sweep")
    # a cache of its own: the test counts the extractions and loads the sweep makes itself
    out = run_sweep(
        tmp,
        "method=fisher_steer_cov_reg1,pca_diff",
        "module=k_proj,v_proj",
        "logger=wandb",
        *SMALL,
        env={**os.environ, "STEEREXP_CACHE": str(tmp / "cache")},
    )
    return tmp, out


def test_sweep_writes_ranking_with_shared_work(main_sweep) -> None:
    tmp, out = main_sweep
    assert out.returncode == 0, out.stderr[-2000:]
    md = (tmp / "sweep" / "ranking.md").read_text()
    assert md.count("## module=") == 2
    assert len(table_rows(md)) == 4
    for line in md.splitlines():
        if line.startswith("| method"):
            cols = [c.strip() for c in line.strip("|").split("|")]
            # the journal's columns first, then the random null's (docs/statistics.md)
            assert cols[:9] == JOURNAL_HEADER
            assert {"slope 95% CI", "vs_random", "p_null", "p_null_adj"} <= set(cols[9:]), cols
    metrics = job_metrics(tmp / "sweep")
    assert len(metrics) == 4 and all(m["status"] == "ok" for m in metrics)
    assert sum(not m["extraction_cached"] for m in metrics) == 2, "one extraction per module"
    assert sum(not m["model_reused"] for m in metrics) == 1, "one model load"
    assert (tmp / "reports" / "test" / "ranking.md").read_text() == md
    assert "| fisher_steer_cov_reg1" in out.stdout, "the ranking is printed at the end"


def test_wandb_offline_runs_hold_the_metrics(main_sweep) -> None:
    tmp, _ = main_sweep
    job = sorted((tmp / "sweep").glob("0_*"))[0]
    metrics = json.loads((job / "metrics.json").read_text())
    run = read_offline_run(job)
    assert run["summary"]["slope"] == pytest.approx(metrics["slope"])
    assert run["config"]["method"] == metrics["method"]


def test_report_cli_reproduces_byte_for_byte(main_sweep, capsys: pytest.CaptureFixture) -> None:
    tmp, _ = main_sweep
    md = tmp / "sweep" / "ranking.md"
    before = md.read_bytes()
    md.unlink()
    assert report.main([str(tmp / "sweep"), "--no-copy"]) == 0, capsys.readouterr().err
    assert md.read_bytes() == before


def test_failed_job_is_a_row_and_the_exit_status_says_so(tmp_path: Path) -> None:
    out = run_small(
        tmp_path,
        "method=mean_diff",
        "module.template='model.layers.{N}.mlp','model.layers.{N}.mlp.gate_up_proj'",
    )
    assert out.returncode == 1
    assert "1 job(s) of the sweep failed" in out.stderr
    ranking = pd.read_csv(tmp_path / "sweep" / "ranking.csv")
    assert sorted(ranking["status"]) == ["failed", "ok"]
    failed = ranking[ranking["status"] == "failed"].iloc[0]
    assert "gate_up_proj" in failed["error"] and "matches no module" in failed["error"]
    assert "failed" in (tmp_path / "sweep" / "ranking.md").read_text()


@pytest.mark.slow
def test_submitit_local_gives_the_same_ranking(main_sweep, tmp_path: Path) -> None:
    tmp, _ = main_sweep
    out = run_small(
        tmp_path,
        "method=fisher_steer_cov_reg1,pca_diff",
        "module=k_proj,v_proj",
        "hydra/launcher=submitit_local",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    key = ["method", "module"]
    a = pd.read_csv(tmp / "sweep" / "ranking.csv").sort_values(key).reset_index(drop=True)
    b = pd.read_csv(tmp_path / "sweep" / "ranking.csv").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[key + STATS], b[key + STATS])


@pytest.mark.slow
def test_interrupted_sweep_resumes_to_the_same_ranking(main_sweep, tmp_path: Path) -> None:
    tmp, _ = main_sweep
    args = ("method=fisher_steer_cov_reg1,pca_diff", "module=k_proj,v_proj")
    proc = subprocess.Popen(
        small_cmd(tmp_path, *args),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 600
    while time.time() < deadline and not any((tmp_path / "sweep").glob("*/status.json")):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = [json.loads(p.read_text())["status"] for p in (tmp_path / "sweep").glob("*/status.json")]
    assert 1 <= len(done) < 4
    out = run_small(tmp_path, *args)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "already finished" in out.stdout
    key = ["method", "module"]
    a = pd.read_csv(tmp / "sweep" / "ranking.csv").sort_values(key).reset_index(drop=True)
    b = pd.read_csv(tmp_path / "sweep" / "ranking.csv").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[key + STATS], b[key + STATS])


@pytest.mark.slow
def test_random_directions_as_rows_are_not_separable_and_mean_diff_is(tmp_path: Path) -> None:
    """Issue 21: ``method=random method.seed=0..7`` is one table of 8 random directions; at most
    one adjacent pair is separable (referenced to the null directions' pair gaps), and after the
    family correction (random is the family when it is all that was swept) none beats the null.
    mean_diff is separable from random. (Organism, ~4 min on 2 loaded cores.)"""
    out = run_sweep(
        tmp_path / "r", "method=random", "method.seed=range(0,8)", *SMALL, "random_null.k=16"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    df = pd.read_csv(tmp_path / "r" / "sweep" / "ranking.csv")
    assert sorted(df["label"]) == [f"random[seed={k}]" for k in range(8)]
    assert df["slope"].nunique() == 8, "eight different directions"
    assert (df["sep_ref"] == "null_pairs").sum() == 7 and df["sep_p"].notna().sum() == 7
    assert int(df["sep_next"].fillna(False).astype(bool).sum()) <= 1
    assert (df["p_null_adj"] >= 0.05).all()
    md = (tmp_path / "r" / "sweep" / "ranking.md").read_text()
    assert md.count("| random[seed=") == 8 and "the random rows are the family" in md
    out = run_sweep(tmp_path / "m", "method=mean_diff,random", *SMALL, "random_null.k=16")
    assert out.returncode == 0, out.stderr[-2000:]
    df = pd.read_csv(tmp_path / "m" / "sweep" / "ranking.csv")
    assert df["label"].tolist() == ["mean_diff", "random"]
    assert bool(df["sep_next"].iloc[0]) and df["sep_ref"].iloc[0] == "null_pairs"
    assert df["p_null_adj"].notna().tolist() == [True, False], "random is a control"


TINY_SWEEP = [*TINY_RUN, "fit.bootstrap=0"]


def tiny_sweep_args(tmp: Path, *args: str) -> list[str]:
    return sweep_args(tmp, *TINY_SWEEP, *args, reports=False)


def run_tiny(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return steerexp_in_process(*tiny_sweep_args(tmp, *args))


def test_slash_and_absolute_override_values_keep_every_job(tmp_path: Path) -> None:
    """`model.path=Org/Name` and an absolute `cache_dir=` used to nest job dirs and lose the ranking."""
    out = run_tiny(
        tmp_path,
        "method=pca_diff,mean_diff",
        "model.path=Org/Name",
        f"cache_dir={tmp_path / 'abs' / 'cache'}",
        f"hydra.callbacks.ranking.reports_root={tmp_path / 'reports'}",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert [j[:2] for j in jobs] == ["0_", "1_"]
    assert all((tmp_path / "sweep" / j / ".hydra" / "overrides.yaml").is_file() for j in jobs)
    ranking = pd.read_csv(tmp_path / "sweep" / "ranking.csv")
    assert sorted(ranking["method"]) == ["mean_diff", "pca_diff"]
    assert list(ranking["status"]) == ["ok", "ok"]
    copies = list((tmp_path / "reports").iterdir())
    assert len(copies) == 1 and (copies[0] / "ranking.md").is_file()


@pytest.mark.slow
def test_confirm_reruns_the_top_row_on_a_fresh_seed_and_half_the_scenarios(
    tmp_path: Path,
) -> None:
    """``ranking.confirm=1``: the best non-random row is re-run in-process into confirm/<job>/ with
    seed + 1000003 on half the questions, and ranking.md says whether it replicated."""
    out = run_tiny(
        tmp_path,
        "method=pca_diff,random",
        "ranking.confirm=1",
        f"hydra.callbacks.ranking.reports_root={tmp_path / 'reports'}",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    table = pd.read_csv(tmp_path / "sweep" / "confirm" / "confirm.csv")
    assert table["label"].tolist() == ["pca_diff"] and table["confirm_seed"].tolist() == [1000003]
    job = tmp_path / "sweep" / "confirm" / table["job"].iloc[0]
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["seed"] == 1000003 and metrics["status"] == "ok"
    slope = math.nan if metrics["slope"] is None else metrics["slope"]
    assert table["confirm_slope"].iloc[0] == pytest.approx(slope, nan_ok=True)
    asked = pd.read_csv(job / "dose_response.csv")["question_id"].nunique()
    full = pd.read_csv(tmp_path / "sweep" / table["job"].iloc[0] / "dose_response.csv")
    assert asked == -(-full["question_id"].nunique() // 2)
    md = (tmp_path / "sweep" / "ranking.md").read_text()
    assert "## Confirmation" in md and "- pca_diff: " in md
    # the forced judge gives the tiny model a slope, so the row gets a verdict, and it is the
    # confirmation run's own slope against the row's interval
    verdict = "replicates" if table["replicates"].iloc[0] else "does NOT replicate"
    assert f"- pca_diff: {verdict}: slope {table['confirm_slope'].iloc[0]:.2f}" in md
    assert (
        pd.read_csv(tmp_path / "sweep" / "ranking.csv")["job"].str.startswith("confirm").sum() == 0
    )


def test_sweep_whose_ranking_cannot_be_written_exits_nonzero(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    out = run_tiny(tmp_path, "method=pca_diff", f"hydra.callbacks.ranking.reports_root={blocker}")
    assert out.returncode == 1
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith("steerexp: error: the sweep's ranking could not be written:")
    )


def test_ctrl_c_writes_the_partial_ranking_and_exits_130(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        # a process of its own: the test sends it SIGINT
        sweep_cmd(
            tmp_path,
            *TINY_SWEEP,
            "method=pca_diff,mean_diff,random,svd_steer",
            "eval.max_new_tokens=32",
            "eval.repeats=2",
            f"hydra.callbacks.ranking.reports_root={tmp_path / 'reports'}",
            reports=False,
        ),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 400
    while time.time() < deadline and not any((tmp_path / "sweep").glob("0_*/status.json")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("steerexp: interrupted; partial ranking written to"), last
    assert "Traceback" not in err
    ranking = pd.read_csv(tmp_path / "sweep" / "ranking.csv")
    assert len(ranking) == 4
    assert (ranking["status"] == "ok").sum() >= 1
    assert set(ranking["status"]) <= {"ok", "interrupted"} and "interrupted" in set(
        ranking["status"]
    )


def test_ctrl_c_inside_hydras_own_code_prints_no_traceback(monkeypatch, capsys) -> None:
    """Ctrl-C that lands in Hydra's code (composing the next job) comes back as an error Hydra
    prints with a traceback and exits 1: steerexp still exits 130 with its one line only."""
    from steerexp import cli

    def hydra_like_main() -> None:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt as e:
            try:
                raise RuntimeError("composition interrupted") from e
            except RuntimeError:
                import traceback

                traceback.print_exc()
                sys.exit(1)

    monkeypatch.setattr(cli, "main", hydra_like_main)
    monkeypatch.setattr(sys, "argv", ["steerexp", "model=tiny_random"])
    with pytest.raises(SystemExit) as info:
        cli.cli()
    err = capsys.readouterr().err
    assert info.value.code == 130
    assert "Traceback" not in err, err
    assert err.strip().splitlines() == [
        "steerexp: interrupted (the run dir records status 'interrupted')"
    ]
