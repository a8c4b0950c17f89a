"""Nothing silently wrong (issue 24): every bad input exits 2 before a model loads, undefined
fits say so, caches are checked, output dirs never clobber the package or mix commands."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import REPO, cli_exit, compose_cfg

from steerexp.config.errors import SteerexpError
from steerexp.pipeline import check_config, experiment
from steerexp.stages.fit.methods import fit_direction
from steerexp.sweep import report


def steerexp_cli(
    *args: str, cwd: Path = REPO, env: dict | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "steerexp", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# --- 16: one exit-code rule ------------------------------------------------------------------------


def test_bad_value_caught_late_before_now_exits_2_before_the_model_loads(tmp_path: Path) -> None:
    """``loss.beta=abc`` used to fail after the reprpo extraction, with exit 1; its schema rule
    now refuses it on the command line, before Hydra composes (no run dir is made)."""
    cache = tmp_path / "cache"
    out = steerexp_cli(
        "model=tiny_random",
        "loss=reprpo_margin",
        "method=fisher_steer_reg2",
        "loss.beta=abc",
        f"cache_dir={cache}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == (
        "steerexp: error: loss.beta='abc' must be a finite number or 'auto'"
    )
    assert not cache.exists()  # nothing was extracted
    assert not (tmp_path / "run").exists()


#: (override, message): caught by check_config, before any model loads.
BAD_VALUES = [
    ("eval.temperature=0", r"^eval.temperature=0.0 must be > 0$"),
    ("eval.temperature=-1", r"^eval.temperature=-1.0 must be > 0$"),
    ("eval.min_p=1.5", r"^eval.min_p=1.5 must be between 0 and 1 \(or null: off\)$"),
    ("eval.repetition_penalty=0", r"^eval.repetition_penalty=0.0 must be > 0"),
    (
        "loss=reprpo_margin loss.beta=abc",
        r"^loss.beta='abc' must be a finite number or 'auto'$",
    ),
    ("loss=reprpo_margin loss.beta=nan", r"^loss.beta=.*nan.* must be a finite number"),
    (
        "loss=reprpo_margin loss.balance_target=1",
        r"balance_target=1.0 must be strictly between",
    ),
    # 14: a seed out of range is named as such, not "must be an integer"
    (
        "seed=99999999999999999999",
        r"^seed=99999999999999999999 is out of range: seeds run from 0 to 9223372036854775807",
    ),
    ("seed=-1", r"^seed=-1 is out of range"),
    (
        "random_null.seed=9223372036854775807",
        r"random_null.seed=9223372036854775807 is out of range.* for the 64 seeds from it",
    ),
    # 1: a method's minimum input
    ("dataset.max_pairs=1", r"method 'pca_diff' needs at least 2 contrast pairs, got 1"),
    ("method=mean_diff dataset.max_pairs=1", r"'mean_diff' needs at least 2 contrast pairs"),
    # 2: duplicate coefficients would weigh double in the fit
    ("eval.coeffs=[-0.5,0,0,0.5]", r"eval.coeffs=\[-0.5, 0.0, 0.0, 0.5\] repeats 0.0; each"),
    ("eval.coeffs=[-0.5,0,0.5,0.5]", r"repeats 0.5"),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES)
def test_bad_values_fail_before_any_model_loads(override: str, message: str) -> None:
    with pytest.raises(SteerexpError, match=message) as info:
        check_config(compose_cfg("model=tiny_random", *override.split()))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("override", [o for o, _ in BAD_VALUES])
def test_bad_values_exit_2(override: str, tmp_path: Path, monkeypatch, capsys) -> None:
    code, line = cli_exit(monkeypatch, capsys, tmp_path, override)
    assert code == 2 and line.startswith("steerexp: error: "), line


def test_random_method_needs_no_pairs_minimum() -> None:
    check_config(compose_cfg("model=tiny_random", "method=random", "dataset.max_pairs=1"))


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


# --- 6: every judged-rows cache file is checksummed -------------------------------------------------


def _rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "question_id": ["q1", "q1", "q2", "q2"],
            "coeff": [-0.5, 0.5, -0.5, 0.5],
            "log_ratio": [-1.25, 2.5, -0.75, 3.0],
            "valid": [True, True, True, True],
            "completion": ["a", "b", "c", "d"],
        }
    )


@pytest.mark.parametrize("damage", ["edit", "truncate", "no_digest"])
def test_damaged_row_cache_entry_is_rebuilt(tmp_path: Path, damage: str) -> None:
    """An edited log-ratio used to change the slope, a truncated file to drop rows (status ok)."""
    from steerexp.store import rowcache

    entry = tmp_path / "generations" / "key"
    rowcache.store_rows(entry, _rows(), {"n": 4})
    dose, meta = rowcache.load_rows(entry)
    pd.testing.assert_frame_equal(dose, _rows())
    assert meta == {"n": 4}
    rows = entry / "dose.csv"
    text = rows.read_text()
    if damage == "edit":
        rows.write_text(text.replace("2.5", "9.5"))
    elif damage == "truncate":
        rows.write_text("".join(text.splitlines(keepends=True)[:3]))
    else:
        (entry / "meta.json").write_text(json.dumps({"n": 4}))
    assert rowcache.load_rows(entry) is None
    assert not entry.exists()
    built = []

    def build() -> tuple[pd.DataFrame, dict]:
        built.append(True)
        return _rows(), {"n": 4}

    dose, _, cached, _ = rowcache.cached_rows(entry, build)
    assert built == [True] and not cached and len(dose) == 4
    dose, _, cached, _ = rowcache.cached_rows(entry, build)
    assert built == [True] and cached and dose["log_ratio"].tolist() == [-1.25, 2.5, -0.75, 3.0]


# --- 11: a full or unwritable cache only costs the reuse -------------------------------------------


def test_extraction_cache_disk_full_warns_once_and_goes_on(tmp_path: Path, monkeypatch) -> None:
    """safetensors reports a full disk as SafetensorError, not OSError: it used to end the run."""
    from safetensors import SafetensorError

    from steerexp.store import cache

    def full(*args, **kwargs) -> None:
        raise SafetensorError("Error while serializing: No space left on device (os error 28)")

    monkeypatch.setattr(cache, "save_file", full)
    with pytest.warns(
        UserWarning, match=r"could not write extraction cache entry k .*No space left"
    ):
        assert cache.save(tmp_path, "k", {"x": torch.ones(2)}, {"p": 1}) is None
    assert not (tmp_path / "k").exists()


def test_row_cache_disk_full_warns_and_goes_on(tmp_path: Path, monkeypatch) -> None:
    import errno
    import os

    from steerexp.store import rowcache

    def full(*args, **kwargs) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rowcache.artifacts, "write_frame", full)
    with pytest.warns(UserWarning, match=r"could not cache .*No space left on device"):
        dose, _, cached, _ = rowcache.cached_rows(tmp_path / "e", lambda: (_rows(), {}))
    assert len(dose) == 4 and not cached and not (tmp_path / "e").exists()


def test_model_build_into_a_full_cache_goes_to_a_temp_dir(tmp_path: Path, monkeypatch) -> None:
    import errno

    from steerexp.models import builders

    def full(target: Path, replace: bool = True):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(builders, "atomic_dir", full)
    with pytest.warns(UserWarning, match=r"could not write .*No space left on device.*temporary"):
        built = builders.atomic_build(
            tmp_path / "m", lambda out: (out / "config.json").write_text("{}")
        )
    assert built != tmp_path / "m" and (built / "config.json").read_text() == "{}"


# --- 7: pickle weights are refused unless allowed ---------------------------------------------------


def test_pickle_only_checkpoint_is_refused_with_the_conversion_command(tmp_path: Path) -> None:
    from helpers import group, tiny

    from steerexp.models.loading import load_model

    ckpt = tmp_path / "ckpt"
    src = tiny()
    src.hf.save_pretrained(ckpt)
    src.tokenizer.save_pretrained(ckpt)
    (ckpt / "model.safetensors").unlink()
    torch.save(src.hf.state_dict(), ckpt / "pytorch_model.bin")
    assert (ckpt / "pytorch_model.bin").is_file() and not list(ckpt.glob("*.safetensors"))
    cfg = {**group("model", "tiny_random"), "builder": None, "path": str(ckpt)}
    with pytest.raises(
        SteerexpError, match=r"has only pickle weights \(pytorch_model.bin\)"
    ) as info:
        check_config(compose_cfg("model=tiny_random", "model.builder=null", f"model.path={ckpt}"))
    text = str(info.value)
    assert "\n" not in text and f"save_pretrained('{ckpt}-safetensors')" in text
    assert "model.allow_pickle=true" in text
    loaded = load_model({**cfg, "allow_pickle": True})
    assert loaded.n_layers == src.n_layers


# --- 13: a hub model that cannot be fetched ---------------------------------------------------------


def test_offline_hub_model_names_the_id_and_the_ways_out(monkeypatch) -> None:
    from helpers import group

    from steerexp.models.loading import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = {**group("model", "qwen3_0_6b"), "path": "steerexp-tests/no-such-model", "device": "cpu"}
    with pytest.raises(SteerexpError) as info:
        load_model(cfg)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(
        "model 'qwen3_0_6b': cannot load 'steerexp-tests/no-such-model' from the Hugging Face hub"
    )
    assert "model.random_init=true" in text and "model.path" in text


# --- 9, 10: run and sweep dirs are checked before Hydra writes anything -----------------------------


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")
    }


def test_run_dir_inside_the_package_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """``hydra.run.dir=steerexp/organism/checkpoint`` used to overwrite the shipped config.json."""
    from steerexp.organism import SHIPPED

    before = _tree(SHIPPED)
    out = steerexp_cli(f"hydra.run.dir={SHIPPED}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith(f"steerexp: error: hydra.run.dir='{SHIPPED}' is inside the steerexp package")
    )
    assert _tree(SHIPPED) == before


def test_sweep_dir_inside_the_cache_is_refused(tmp_path: Path) -> None:
    import os

    cache = tmp_path / "cache"
    env = {**os.environ, "STEEREXP_CACHE": str(cache)}
    out = steerexp_cli("-m", "method=random", f"hydra.sweep.dir={cache / 'sweeps' / 'a'}", env=env)
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
    out = steerexp_cli("model=tiny_random", "method=random", f"hydra.run.dir={run_dir}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "already holds a finished run of a different config" in out.stderr
    assert _tree(run_dir) == before


# --- 4, 5: a sweep dir records its command; job names carry only result-changing overrides ---------


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
    out = steerexp_cli("-m", "method=random", f"hydra.sweep.dir={sweep}")
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


# --- 12: data paths are regular files, read up to a cap, named in errors ----------------------------


def test_data_path_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    """A FIFO used to hang forever and /dev/zero to end in a bare MemoryError."""
    import os

    from steerexp.data.tables import read_table

    fifo = tmp_path / "pairs.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(SteerexpError, match=r"dataset.path='.*pairs.jsonl' is not a regular file"):
        read_table(fifo, key="dataset.path")
    with pytest.raises(SteerexpError, match=r"^eval.path='/dev/zero' is not a regular file"):
        read_table("/dev/zero", "jsonl", key="eval.path")


def test_data_file_too_big_or_not_text_names_the_file(tmp_path: Path, monkeypatch) -> None:
    from steerexp.data import tables

    noise = tmp_path / "pairs.jsonl"
    noise.write_bytes(bytes(range(128, 256)) * 8)
    with pytest.raises(SteerexpError, match=rf"^{noise} is not UTF-8 \(byte 0x80 at line 1\)"):
        tables.read_table(noise, key="dataset.path")
    big = tmp_path / "big.jsonl"
    big.write_text('{"a": 1}\n' * 1000)
    monkeypatch.setattr(tables, "MAX_FILE_BYTES", 4096)
    with pytest.raises(
        SteerexpError, match=r"big.jsonl' is 0 MiB; data files are read whole, up to 0"
    ):
        tables.read_table(big, key="dataset.path")


# --- 15: an unwritable --reports-root ---------------------------------------------------------------


def test_report_into_an_unwritable_root_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    """It used to end in a FileNotFoundError traceback."""
    sweep = tmp_path / "sweep"
    job = sweep / "0_method=pca_diff"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- method=pca_diff\n")
    (job / "metrics.json").write_text(
        json.dumps({"method": "pca_diff", "status": "ok", "score": 1.0})
    )
    assert report.main([str(sweep), "--reports-root", "/proc/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "steerexp.report: error: --reports-root='/proc/x': cannot create or write '/proc/x' "
        "(No such file or directory); choose a writable directory"
    ]
    assert not (sweep / "ranking.md").exists()


# --- 8: third-party caches go under STEEREXP_CACHE ---------------------------------------------------


def test_matplotlib_and_wandb_caches_live_under_steerexp_cache(tmp_path: Path) -> None:
    import os

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MPLCONFIGDIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")
    }
    env.update(STEEREXP_CACHE=str(tmp_path / "cache"), HOME=str(tmp_path / "home"))
    code = (
        "import steerexp, matplotlib.font_manager, wandb.env as e; "
        "print(matplotlib.get_cachedir()); print(e.get_cache_dir()); print(e.get_data_dir())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    cache = tmp_path / "cache"
    assert out.stdout.split() == [
        str(cache / "matplotlib"),
        str(cache / "wandb/cache"),
        str(cache / "wandb/data"),
    ]
    assert list((cache / "matplotlib").glob("fontlist*.json"))
    assert not (tmp_path / "home").exists()


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
