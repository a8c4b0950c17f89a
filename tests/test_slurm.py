"""A sweep submitted to a real SLURM cluster ranks exactly like the same sweep on the basic launcher.

Needs a running cluster: ``make test-slurm`` starts a single-node one with
``scripts/slurm-cluster.sh start`` (or start it yourself, then ``pytest -m slurm``). Clients find it
through ``SLURM_CONF``, else the script's ``<repo>/.slurm/slurm.conf``; without a reachable idle or
busy node the tests skip with the reason. Only the preset check runs in the default suite.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from helpers import REPO, sweep_cmd
from hydra import compose, initialize_config_dir

from steerexp import CONF_DIR, organism
from steerexp.store.columns import TIME_COLUMNS as TIME_COLS

LOCAL_CONF = REPO / ".slurm" / "slurm.conf"
# A small random null (4 directions) keeps the null's columns in the parity check at little cost.
SWEEP = [
    "method=pca_diff,random",
    "module=hs,o_proj",
    "eval.repeats=1",
    "dataset.max_pairs=48",
    "random_null.k=4",
]
# Columns that describe how or where a job ran, not what it found. Each run has its own
# STEEREXP_CACHE linking to one organism checkpoint, so the checkpoint path differs; whether a
# cache entry (extraction, generations, null) was built or reused depends on job timing.
RUN_COLS = [
    *TIME_COLS,
    "model_reused",
    "extraction_cached",
    "generations_reused",
    "null_cached",
    "null_build_s",
    "checkpoint",
]


def cluster_env() -> tuple[dict[str, str] | None, str]:
    """The environment that reaches the cluster (``SLURM_CONF`` set), or None and why not."""
    env = dict(os.environ)
    if "SLURM_CONF" not in env and LOCAL_CONF.is_file():
        env["SLURM_CONF"] = str(LOCAL_CONF)
    if shutil.which("sinfo") is None:
        return (
            None,
            "no SLURM client (sinfo) on PATH; `make test-slurm` installs and starts a cluster",
        )
    out = subprocess.run(
        ["sinfo", "-h", "-N", "-t", "idle,mixed,allocated", "-o", "%N"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if out.returncode != 0 or not out.stdout.strip():
        why = " ".join((out.stderr or "no idle, mixed or allocated node").split())
        return None, f"no SLURM cluster reachable ({why}); `make test-slurm` starts one"
    return env, ""


def fresh_cache(root: Path) -> Path:
    """An empty STEEREXP_CACHE that sees the session's organism checkpoint (built once, linked)."""
    checkpoint = organism.build(progress=False)
    root.mkdir(parents=True)
    (root / "organism").mkdir()
    (root / "organism" / checkpoint.name).symlink_to(checkpoint, target_is_directory=True)
    return root


def extractions(cache: Path) -> dict[str, str]:
    """Cache key -> sha256 of the tensors, for every complete extraction entry under ``cache``."""
    return {
        p.parent.name: json.loads(p.read_text())["sha256"]
        for p in (cache / "extractions").glob("*/key.json")
    }


def test_slurm_cpu_preset_composes() -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm_cpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.cpus_per_task, launcher.gpus_per_node, launcher.array_parallelism) == (
        1,
        None,
        2,
    )


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same sweep on the basic launcher and on SLURM, each with its own empty extraction cache.

    The cache reaches the jobs only through the submitting environment's ``STEEREXP_CACHE``;
    both runs use one thread per process so their arithmetic is the same.
    """
    env, why = cluster_env()
    if env is None:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("slurm")
    runs = {}
    for name, launcher in (("basic", []), ("slurm", ["hydra/launcher=slurm_cpu"])):
        run_env = {**env, "STEEREXP_CACHE": str(fresh_cache(tmp / name / "cache"))}
        run_env["OMP_NUM_THREADS"] = "1"
        # a process of its own, as a cluster user starts it (its thread count from run_env)
        out = subprocess.run(
            sweep_cmd(tmp / name, *SWEEP, *launcher),
            cwd=REPO,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert out.returncode == 0, f"{name} sweep failed:\n{out.stderr[-3000:]}"
        runs[name] = tmp / name
    return runs["basic"], runs["slurm"]


@pytest.mark.slurm
def test_slurm_sweep_ranks_like_the_basic_launcher(sweeps: tuple[Path, Path]) -> None:
    basic, slurm = sweeps
    a = pd.read_csv(basic / "sweep" / "ranking.csv")
    b = pd.read_csv(slurm / "sweep" / "ranking.csv")
    assert sorted(zip(a["method"], a["module"], strict=True)) == [
        ("pca_diff", "hs"),
        ("pca_diff", "o_proj"),
        ("random", "hs"),
        ("random", "o_proj"),
    ]
    assert (a["status"] == "ok").all() and a["slope"].notna().all()
    same = [c for c in a.columns if c not in RUN_COLS]
    assert list(b.columns) == list(a.columns)
    pd.testing.assert_frame_equal(b[same], a[same], check_exact=False, rtol=0, atol=1e-9)


@pytest.mark.slurm
def test_jobs_ran_as_slurm_array_tasks(sweeps: tuple[Path, Path]) -> None:
    _, slurm = sweeps
    tasks = sorted((slurm / "sweep" / ".submitit").glob("[0-9]*_[0-9]*"))
    assert len(tasks) == 4, tasks
    assert len({t.name.split("_")[0] for t in tasks}) == 1, "one job array"
    for task in tasks:
        log = (task / f"{task.name}_0_log.out").read_text()
        assert f"JobEnvironment(job_id={task.name}," in log, "submitit saw the SLURM job id"


@pytest.mark.slurm
def test_slurm_jobs_share_the_submitters_extraction_cache(sweeps: tuple[Path, Path]) -> None:
    basic, slurm = sweeps
    jobs = pd.read_csv(slurm / "sweep" / "ranking.csv")
    made = extractions(slurm / "cache")
    assert len(made) == 2, "one extraction per module under the submitter's STEEREXP_CACHE"
    assert sorted(made) == sorted(set(jobs["cache_key"])), "the jobs' own keys"
    assert sorted(made.values()) == sorted(extractions(basic / "cache").values()), "bit-identical"
    assert jobs["extraction_cached"].sum() >= 1, "a later job reused an earlier job's extraction"
