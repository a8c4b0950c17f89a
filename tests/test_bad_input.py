"""The audit's bad and edge inputs (issue 12): each fails in one line naming the value, or keeps its data."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import REPO, cli_exit, compose_cfg, group, tiny
from omegaconf import OmegaConf

from steerexp import CONF_DIR
from steerexp.cli import RUN_ID, check_args, job_dir_name
from steerexp.config.errors import SteerexpError
from steerexp.models.loading import load_model, model_fingerprint
from steerexp.pipeline import check_config
from steerexp.stages.extract.activations import loss_layer_path
from steerexp.store import cache
from steerexp.store.artifacts import write_json
from steerexp.sweep import report

# A fast tiny-model experiment: few pairs, one repeat, short completions.
TINY_RUN = (
    "model=tiny_random",
    "dataset.max_pairs=4",
    "eval.repeats=1",
    "eval.max_new_tokens=4",
    "eval.coeffs=[-0.5,0,0.5]",
    # the random model never answers in 4 tokens: the forced judge keeps its fit defined
    "judge=forced",
    "random_null.k=0",
)


def one_line(info: pytest.ExceptionInfo) -> str:
    text = str(info.value)
    assert "\n" not in text
    return text


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


def test_output_dir_under_a_file_fails_before_hydra(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(
        SteerexpError, match=r"hydra.sweep.dir=.*cannot create or write .*Not a directory"
    ):
        check_args(["-m", f"hydra.sweep.dir={blocker}/sweep"])
    check_args(["-m", f"hydra.sweep.dir={tmp_path}/ok", "eval.system=x", "model.path=Org/Name"])
    check_args(["-m", f"hydra.sweep.dir={tmp_path}/ok", "hydra/launcher=joblib", "seed=0,1"])


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
]


@pytest.mark.parametrize(("override", "message"), CONFIG_CASES)
def test_bad_values_name_their_key(override: str, message: str | None) -> None:
    cfg = compose_cfg("model=tiny_random", override)
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
def test_every_bad_input_exits_2(args: str, tmp_path: Path, monkeypatch, capsys) -> None:
    """The exit-code rule (issue 24): bad input exits 2, on the command line or in a run."""
    code, line = cli_exit(monkeypatch, capsys, tmp_path, args)
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


# --- reports: names, copies, discovery ------------------------------------------------------------


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


# --- run dirs ---------------------------------------------------------------------------------


def test_finished_run_dir_is_reused_only_for_the_same_config(tmp_path: Path, capsys) -> None:
    from steerexp.pipeline import run

    first = run(compose_cfg(*TINY_RUN, "method=pca_diff"), tmp_path, progress=False)
    assert first["status"] == "ok"
    kept = (tmp_path / "metrics.json").read_text()
    again = run(
        compose_cfg(*TINY_RUN, "method=pca_diff", "report_name=other"), tmp_path, progress=False
    )
    assert "already finished (status ok, same config); skipping" in capsys.readouterr().out
    assert again["cache_key"] == first["cache_key"] and again["method"] == "pca_diff"
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


# --- caching and permissions --------------------------------------------------------------------


def test_files_and_cache_entries_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        entry = cache.save(tmp_path / "cache", "k", {"t": torch.zeros(2)}, {"p": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o664
    assert entry is not None and entry.stat().st_mode & 0o777 == 0o775
    assert (entry / cache.TENSORS).stat().st_mode & 0o777 == 0o664


def test_unwritable_cache_runs_uncached_with_a_warning(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.warns(UserWarning, match=r"extraction cache .* is not writable .*running uncached"):
        assert cache.save(blocker / "cache", "k", {"t": torch.zeros(2)}, {}) is None


def test_fingerprint_is_by_content_not_path(tmp_path: Path) -> None:
    src = Path(tiny().path)
    copy = tmp_path / "elsewhere"
    shutil.copytree(src, copy)
    fp = [
        model_fingerprint({}, SimpleNamespace(path=str(p), fingerprint=None)) for p in (src, copy)
    ]
    assert fp[0] == fp[1] and "model.safetensors" in fp[0]["files"]
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    changed = model_fingerprint({}, SimpleNamespace(path=str(copy), fingerprint=None))
    assert changed["files"]["config.json"] != fp[0]["files"]["config.json"]
    hub = model_fingerprint(
        {"revision": "main"},
        SimpleNamespace(path="Org/Name", fingerprint=None, hf=SimpleNamespace(config=object())),
    )
    assert hub == {"hub_id": "Org/Name", "revision": "main", "commit": None}


# --- model internals ----------------------------------------------------------------------------


def test_loss_layer_indexes_like_output_hidden_states() -> None:
    model = tiny()
    ids = model.tokenizer("Would you lie to a friend?", return_tensors="pt").input_ids
    mods = dict(model.hf.named_modules())
    got: dict[str, torch.Tensor] = {}
    for k in range(-model.n_layers - 1, model.n_layers + 1):
        path = loss_layer_path(model.n_layers, k)
        hook = mods[path].register_forward_hook(
            lambda _m, _a, o: got.__setitem__("h", o[0] if isinstance(o, tuple) else o)
        )
        try:
            hs = model.hf(ids, output_hidden_states=True).hidden_states
        finally:
            hook.remove()
        assert torch.equal(got["h"], hs[k]), (k, path)


def test_forward_order_is_execution_order() -> None:
    model = tiny()
    paths = [
        "model.layers.1.mlp",
        "model.layers.1",
        "model.layers.1.self_attn.o_proj",
        "model.norm",
    ]
    want = ["model.layers.1.self_attn.o_proj", "model.layers.1.mlp", "model.layers.1", "model.norm"]
    assert model.forward_order(paths) == want
    assert model.forward_order(list(reversed(paths))) == want


ORDER_SCRIPT = """
import torch
from omegaconf import OmegaConf
from helpers import tiny
from steerexp.models.tokens import left_pad
from steerexp.models.steering import Steering, steered_logits
m = tiny()
mods = ["model.layers.1.mlp", "model.layers.1.self_attn.o_proj"]
g = torch.Generator().manual_seed(0)
s = Steering({k: torch.randn(64, generator=g) for k in mods}, {k: 1.0 for k in mods})
ids, mask = left_pad([m.tokenizer("Is honesty good?").input_ids], m.tokenizer.pad_token_id)
print(float(steered_logits(m, ids, mask, s, torch.ones(1)).double().sum()))
"""


def test_two_targets_in_one_layer_work_under_any_hash_seed() -> None:
    sums = []
    for seed in ("0", "1"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
        out = subprocess.run(
            [sys.executable, "-c", ORDER_SCRIPT],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-1500:]
        sums.append(float(out.stdout.strip().splitlines()[-1]))
    assert sums[0] == sums[1]


def test_kl_calibrates_on_neutral_prompts_at_both_signs() -> None:
    from nnsight.modeling.transformers import TransformersModel

    from steerexp.data.pairs import load_neutral_prompts
    from steerexp.models.steering import Steering
    from steerexp.stages.intervene.scales import calibrate_kl, neutral_prompt_ids

    texts = load_neutral_prompts("neutral_prompts.txt")
    assert len(texts) >= 20 and not any("lie" in t.lower().split() for t in texts)
    # The random tiny model's logits are near zero, so no steering moves it 1 nat: sharpen a copy.
    base = tiny()
    hf = copy.deepcopy(base.hf)
    hf.lm_head.weight.mul_(200.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = TransformersModel(hf, tokenizer=base.tokenizer, task="text-generation")
    model = dataclasses.replace(base, hf=hf, lm=lm, _exec_rank=None, fingerprint=None)
    g = torch.Generator().manual_seed(1)
    mods = ["model.layers.1", "model.layers.2"]
    steering = Steering(
        {m: torch.nn.functional.normalize(torch.randn(64, generator=g), dim=0) for m in mods},
        {m: 1.0 for m in mods},
    )
    texts = texts[:8]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kl = calibrate_kl(model, neutral_prompt_ids(model, texts), steering)
    assert kl["kl_n_prompts"] == len(texts)
    assert kl["kl_p95_at_c_star"] == max(kl["kl_p95_plus"], kl["kl_p95_minus"])
    assert abs(kl["kl_p95_at_c_star"] - 1.0) <= 0.05
    assert min(kl["kl_p95_plus"], kl["kl_p95_minus"]) <= 1.0 + 1e-9
