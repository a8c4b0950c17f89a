"""The audit's bad and edge inputs (issue 12): each fails in one line naming the value, or keeps its data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import cli_exit, compose_cfg, group, one_line, steerexp_in_process, tiny

from steerexp.cli import check_args
from steerexp.config.errors import SteerexpError
from steerexp.models.loading import load_model
from steerexp.pipeline import check_config
from steerexp.sweep import report

# --- command line (steerexp.cli.check_args): before anything composes -------------------------


#: (argument, message): each fails in check_args, and on the command line exits 2.
COMMAND_LINE_CASES = [
    ("eval.coeffs=[0,", r"cannot parse override 'eval.coeffs=\[0,'.*closing '\]'"),
    (
        "eval.answer_regex=(Yes",
        r"cannot parse override 'eval.answer_regex=\(Yes'.*quote .*'eval.answer_regex=\"\(Yes\"'",
    ),
    (
        "module.template=model.layers.{N}.mlp",
        r"'\{N\}' must be quoted for Hydra: 'module.template=\"model.layers.\{N\}.mlp\"'",
    ),
    ("+eval.n_questions=0", r"unknown key of eval .*'n_questions'.* valid: .*repeats"),
    ("+extract.bs=2", r"unknown key of extract .*'bs'; valid: batch_size, grad_tokens"),
    ("+nonsense=1", r"unknown key of the config .*'nonsense'"),
    ("+eval.system=x", r"\+eval.system: eval.system is already a key .* \(eval.system=...\)"),
    ("method.rg=1", r"unknown key of method .*'rg'; did you mean 'reg'"),
    ("model.trust_remote_code=maybe", r"model.trust_remote_code='maybe' must be true or false"),
    ("model.random_init=yes", r"model.random_init='yes' must be true or false"),
    ("seed=abc", r"^seed='abc' must be an integer$"),
    ("eval.repeats=abc", r"^eval.repeats='abc' must be an integer$"),
    ("eval.max_new_tokens=1.5", r"^eval.max_new_tokens=1.5 must be an integer$"),
    ("report_name=../../x", r"report_name='../../x' must be a plain name"),
    ("report_name=a,..", r"report_name='..' must be a plain name"),
    ("hydra.job.name=../../x", r"hydra.job.name='../../x' must be a plain name"),
    ("hydra.sweep.subdir=../x", r"hydra.sweep.subdir='../x' must stay inside its parent dir"),
    ("hydra.output_subdir=/tmp/x", r"hydra.output_subdir='/tmp/x' must stay inside"),
    ("hydra.run.dir=/proc/x/y", r"hydra.run.dir='/proc/x/y': cannot create or write"),
    ("method=pca_dif", r"unknown method option 'pca_dif'; did you mean 'pca_diff'"),
]


@pytest.mark.parametrize(("arg", "message"), COMMAND_LINE_CASES)
def test_bad_command_line_one_line_error(arg: str, message: str) -> None:
    with pytest.raises(SteerexpError, match=message) as info:
        check_args([arg])
    one_line(info)


def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "steerexp", "module.template=model.layers.{N}.mlp"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "steerexp: error: cannot parse override 'module.template=model.layers.{N}.mlp' "
        "(mismatched input '{' expecting <EOF>); '{N}' must be quoted for Hydra: "
        "'module.template=\"model.layers.{N}.mlp\"'"
    ]
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.json"))


# --- model-free config checks (pipeline.check_config) ---------------------------------------------


#: (override, message): each fails in check_config (None: passes), and in a run exits 2.
CONFIG_CASES = [
    ("eval.repeats=0", r"^eval.repeats=0 must be >= 1$"),
    ("extract.batch_size=0", r"^extract.batch_size=0 must be >= 1$"),
    ("extract.batch_size=-4", r"^extract.batch_size=-4 must be >= 1$"),
    ("eval.max_batch_size=0", r"^eval.max_batch_size=0 must be >= 1$"),
    ("eval.workers=0", r"^eval.workers=0 must be 'auto' or an integer >= 1$"),
    ("eval.workers=many", r"^eval.workers='many' must be 'auto' or an integer >= 1$"),
    ("eval.coeffs=[0]", r"eval.coeffs=\[0.0\] has fewer than two distinct coefficients"),
    ("eval.coeffs=[0,0.0]", r"has fewer than two distinct coefficients"),
    ("coeff_units=kl", None),
    ("fit.bootstrap=1", r"^fit.bootstrap=1 must be 0 \(no refits\) or >= 2 bootstrap refits$"),
    ("fit.bootstrap=-3", r"^fit.bootstrap=-3 must be 0"),
    ("fit.bootstrap=0", None),
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
    ("method=random dataset.max_pairs=1", None),  # random needs no pairs
]


@pytest.mark.parametrize(("override", "message"), CONFIG_CASES)
def test_bad_values_name_their_key(override: str, message: str | None) -> None:
    cfg = compose_cfg("model=tiny_random", *override.split())
    if message is None:
        check_config(cfg)
        return
    with pytest.raises(SteerexpError, match=message) as info:
        check_config(cfg)
    one_line(info)


@pytest.mark.parametrize(
    "args",
    [arg for arg, _ in COMMAND_LINE_CASES] + [o for o, message in CONFIG_CASES if message],
)
def test_every_bad_input_exits_2(args: str, tmp_path: Path) -> None:
    """The exit-code rule (issue 24): bad input exits 2, on the command line or in a run."""
    code, line = cli_exit(tmp_path, args)
    assert code == 2 and line.startswith("steerexp: error: "), line


def test_kl_prompts_file_must_exist() -> None:
    with pytest.raises(
        SteerexpError, match=r"unknown kl.prompts file .*'nope.txt'.*neutral_prompts.txt"
    ):
        check_config(compose_cfg("coeff_units=kl", "kl.prompts=nope.txt"))


@pytest.mark.parametrize("path", ["/no/such/checkpoint", "./missing_dir", "a/b/c"])
def test_missing_local_model_path_is_named(path: str) -> None:
    cfg = compose_cfg("model=tiny_random", "model.builder=null", f"model.path={path}")
    with pytest.raises(
        SteerexpError, match=rf"model.path='{path}' does not exist; give an existing"
    ):
        check_config(cfg)


def test_truncated_safetensors_names_the_file(tmp_path: Path) -> None:
    src = Path(tiny().path)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(src, ckpt)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    cfg = {**group("model", "tiny_random"), "builder": None, "path": str(ckpt)}
    with pytest.raises(
        SteerexpError, match=rf"checkpoint file '{weights}' is truncated or corrupt"
    ):
        load_model(cfg)


# --- files and models that cannot be read -----------------------------------------------------


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


def test_data_path_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    """A FIFO used to hang forever and /dev/zero to end in a bare MemoryError."""

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


# --- a value only a late stage used to check --------------------------------------------------


def test_bad_value_caught_late_before_now_exits_2_before_the_model_loads(tmp_path: Path) -> None:
    """``loss.beta=abc`` used to fail after the reprpo extraction, with exit 1; its schema rule
    now refuses it on the command line, before Hydra composes (no run dir is made)."""
    cache = tmp_path / "cache"
    out = steerexp_in_process(
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
