"""Run and sweep dirs: where runs write and what is refused, reuse of finished runs, the sweep
command record and job dir names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY_RUN, compose_cfg, one_line, steerexp_in_process
from omegaconf import OmegaConf

from steerexp import CONF_DIR
from steerexp.cli import RUN_ID, check_args, job_dir_name
from steerexp.config.errors import SteerexpError
from steerexp.pipeline import experiment
from steerexp.sweep import report


def test_output_dir_under_a_file_fails_before_hydra(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(
        SteerexpError, match=r"hydra.sweep.dir=.*cannot create or write .*Not a directory"
    ):
        check_args(["-m", f"hydra.sweep.dir={blocker}/sweep"])
    check_args(["-m", f"hydra.sweep.dir={tmp_path}/ok", "eval.system=x", "model.path=Org/Name"])
    check_args(["-m", f"hydra.sweep.dir={tmp_path}/ok", "hydra/launcher=joblib", "seed=0,1"])


def test_job_dir_names_never_nest_or_collide() -> None:
    name = job_dir_name("cache_dir=/abs/cache,model.path=Org/Name")
    assert name == "cache_dir=_abs_cache,model.path=Org_Name"
    assert "/" not in job_dir_name("report_name=../../x")
    long_a, long_b = job_dir_name("x=" + "a" * 300), job_dir_name("x=" + "a" * 299 + "b")
    assert len(long_a) == 160 and long_a != long_b


def test_default_dirs_carry_a_per_process_id() -> None:
    import yaml

    hydra_cfg = yaml.safe_load((CONF_DIR / "config.yaml").read_text())["hydra"]
    assert hydra_cfg["run"]["dir"].endswith("-${steerexp.run_id:}")
    assert hydra_cfg["sweep"]["dir"].endswith("-${steerexp.run_id:}")
    other = subprocess.run(
        [sys.executable, "-c", "from steerexp.cli import RUN_ID; print(RUN_ID)"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.strip()
    assert len(RUN_ID) == len(other) == 6 and other != RUN_ID


def test_finished_run_dir_is_reused_only_for_the_same_config(tmp_path: Path, capsys) -> None:
    from steerexp.pipeline import run

    first = run(compose_cfg(*TINY_RUN, "method=pca_diff"), tmp_path, progress=False)
    assert first["status"] == "ok"
    kept = (tmp_path / "metrics.json").read_text()
    stamp = (tmp_path / "metrics.json").stat().st_mtime_ns
    again = run(
        compose_cfg(*TINY_RUN, "method=pca_diff", "report_name=other"), tmp_path, progress=False
    )
    assert "already finished (status ok, same config); skipping" in capsys.readouterr().out
    assert again["cache_key"] == first["cache_key"] and again["slope"] == first["slope"]
    assert (tmp_path / "metrics.json").stat().st_mtime_ns == stamp, "skipped, not rewritten"
    with pytest.raises(
        SteerexpError, match=r"different config \(method.kind: 'pca_diff' -> 'random'"
    ) as info:
        run(compose_cfg(*TINY_RUN, "method=random"), tmp_path, progress=False)
    one_line(info)
    assert (tmp_path / "metrics.json").read_text() == kept
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "ok"
    # In a sweep, Hydra has already rewritten .hydra/ for the refused config: the ranking says so.
    sweep = tmp_path.parent / f"{tmp_path.name}_sweep"
    job = sweep / "0_method=random"
    shutil.copytree(tmp_path, job)
    (job / ".hydra").mkdir()
    (job / ".hydra" / "overrides.yaml").write_text("- method=random\n")
    OmegaConf.save(compose_cfg(*TINY_RUN, "method=random"), job / ".hydra" / "config.yaml")
    row = report.build_report(sweep, None).iloc[0]
    assert row["status"] == "stale" and "another config" in row["error"]
    OmegaConf.save(compose_cfg(*TINY_RUN, "method=pca_diff"), job / ".hydra" / "config.yaml")
    assert report.build_report(sweep, None).iloc[0]["status"] == "ok"


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")
    }


def test_run_dir_inside_the_package_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """``hydra.run.dir=steerexp/organism/checkpoint`` used to overwrite the shipped config.json."""
    from steerexp.organism import SHIPPED

    before = _tree(SHIPPED)
    out = steerexp_in_process(f"hydra.run.dir={SHIPPED}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith(f"steerexp: error: hydra.run.dir='{SHIPPED}' is inside the steerexp package")
    )
    assert _tree(SHIPPED) == before


def test_sweep_dir_inside_the_cache_is_refused(tmp_path: Path) -> None:

    cache = tmp_path / "cache"
    env = {**os.environ, "STEEREXP_CACHE": str(cache)}
    out = steerexp_in_process(
        "-m", "method=random", f"hydra.sweep.dir={cache / 'sweeps' / 'a'}", env=env
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "is inside the cache" in out.stderr.strip().splitlines()[-1]
    assert not (cache / "sweeps" / "a" / "multirun.yaml").exists()


def test_api_run_into_the_package_is_refused(tmp_path: Path) -> None:
    from steerexp.store.guard import PACKAGE_DIR

    with pytest.raises(SteerexpError, match=r"run dir=.* is inside the steerexp package"):
        experiment.run(compose_cfg("model=tiny_random"), PACKAGE_DIR / "runs" / "x", progress=False)
    assert not (PACKAGE_DIR / "runs").exists()


def test_refused_run_leaves_the_finished_dirs_record_alone(tmp_path: Path) -> None:
    """A different config into a finished run dir used to rewrite its .hydra/*.yaml first."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "status.json").write_text(
        json.dumps({"status": "ok", "error": None, "config_hash": "0123456789abcdef"})
    )
    (run_dir / "config.json").write_text(json.dumps({"method": {"name": "pca_diff"}}))
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (run_dir / ".hydra" / name).write_text(f"# the finished run's {name}\n")
    before = _tree(run_dir)
    out = steerexp_in_process("model=tiny_random", "method=random", f"hydra.run.dir={run_dir}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "already holds a finished run of a different config" in out.stderr
    assert _tree(run_dir) == before


def _sweep_cfg(*task: str, extend: bool = False, params: dict | None = None):
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {
            "hydra": {"overrides": {"task": list(task)}, "sweeper": {"params": params}},
            "sweep_extend": extend,
        }
    )


def test_sweep_command_record_refuses_another_command(tmp_path: Path) -> None:
    from steerexp.store.guard import RECORD, check_sweep_command, sweep_command

    sweep = tmp_path / "sweep"
    first = _sweep_cfg("method=pca_diff,mean_diff", "eval.repeats=1", "hydra.sweep.dir=x")
    check_sweep_command(sweep, first)
    assert json.loads((sweep / RECORD).read_text())["commands"] == [
        {"swept": {"method": ["mean_diff", "pca_diff"]}, "fixed": {"eval.repeats": "1"}}
    ]
    # the same command (axis order, neutral keys and hydra.* aside) resumes
    same = _sweep_cfg(
        "method=mean_diff,pca_diff", "eval.repeats=1", "report_name=other", "eval.workers=2"
    )
    check_sweep_command(sweep, same)
    assert sweep_command(same) == sweep_command(first)
    other = _sweep_cfg("method=random", "eval.repeats=1")
    with pytest.raises(
        SteerexpError,
        match=r"holds the jobs of another sweep command \(swept method: .*sweep_extend=true",
    ):
        check_sweep_command(sweep, other)
    assert len(json.loads((sweep / RECORD).read_text())["commands"]) == 1
    check_sweep_command(sweep, _sweep_cfg("method=random", "eval.repeats=1", extend=True))
    assert len(json.loads((sweep / RECORD).read_text())["commands"]) == 2
    check_sweep_command(sweep, other)  # now recorded: resumes


def test_cli_refuses_a_different_sweep_into_a_recorded_dir(tmp_path: Path) -> None:
    from steerexp.store.guard import check_sweep_command

    sweep = tmp_path / "sweep"
    check_sweep_command(sweep, _sweep_cfg("method=pca_diff,mean_diff"))
    out = steerexp_in_process("-m", "method=random", f"hydra.sweep.dir={sweep}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "holds the jobs of another sweep command" in out.stderr.strip().splitlines()[-1]
    assert not (sweep / "multirun.yaml").exists()


def test_job_dir_names_and_run_identity_ignore_result_neutral_overrides() -> None:
    """Rerunning a sweep with only report_name changed used to rerun (and double-rank) every job."""
    from hydra import compose, initialize_config_dir

    from steerexp import CONF_DIR
    from steerexp.pipeline.checks import plain
    from steerexp.store import artifacts

    neutral = [
        "report_name=x",
        "report_overwrite=true",
        "logger=wandb",
        "logger.mode=disabled",
        "eval.workers=2",
        "eval.max_batch_size=4",
        "sweep_extend=true",
        "ranking.correction=bh",
        "cache_dir=/tmp/elsewhere",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["method=random", "eval.repeats=1", *neutral],
            return_hydra_config=True,
        )
    assert cfg.hydra.job.override_dirname == "eval.repeats=1,method=random"
    base = plain(compose_cfg("method=random", "eval.repeats=1"))
    task = plain(compose_cfg("method=random", "eval.repeats=1", *neutral))
    assert artifacts.config_hash(task) == artifacts.config_hash(base)
    assert artifacts.config_hash(plain(compose_cfg("method=random", "eval.repeats=2"))) != (
        artifacts.config_hash(base)
    )


def test_finished_run_hashed_with_a_now_neutral_key_is_still_reused(tmp_path: Path, capsys) -> None:
    """Runs finished before eval.workers/max_batch_size became result-neutral are not refused."""
    from steerexp.pipeline.checks import plain
    from steerexp.store import artifacts

    cfg = compose_cfg("model=tiny_random", "eval.workers=2")
    resolved = plain(cfg)
    old_hash = "f" * 16  # what the older hash (eval.workers included) would be: anything else
    (tmp_path / "config.json").write_text(json.dumps(resolved))
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "ok", "slope": 1.0}))
    artifacts.write_status(tmp_path, "ok", None, old_hash)
    assert experiment.run(cfg, tmp_path, progress=False) == {"status": "ok", "slope": 1.0}
    assert "already finished" in capsys.readouterr().out
