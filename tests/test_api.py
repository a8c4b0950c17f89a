"""The notebook API: compose/run/sweep give the CLI's config, artifacts and numbers; extract/fit/steer
on an ordinary HF model give the pipeline's activations, directions and steered logits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import REPO, compose_cfg, group
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

import steerexp
from steerexp.config.errors import SteerexpError
from steerexp.data.pairs import load_pairs
from steerexp.models.loading import load_model
from steerexp.models.steering import Steering, steered_logits
from steerexp.models.tokens import left_pad, model_inputs
from steerexp.organism import build as build_organism
from steerexp.stages.extract.activations import extract as extract_rows

FAST = [
    "method=mean_diff",
    "eval.repeats=1",
    "random_null.k=0",
    "eval.coeffs=[-1,0,1]",
    "eval.max_new_tokens=8",
]
#: metrics that say how a run went (timings, cache hits, paths), not what it found
RUN_FACTS = ("time_", "extraction_cached", "generations_reused", "model_reused", "checkpoint")


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> steerexp.RunResult:
    return steerexp.run(FAST, run_dir=tmp_path_factory.mktemp("api") / "run", progress=False)


@pytest.fixture(scope="module")
def hf() -> torch.nn.Module:
    """The organism as an ordinary HF model (not the pipeline's loaded, nnsight-wrapped one)."""
    return AutoModelForCausalLM.from_pretrained(build_organism()).eval()


def test_import_is_lazy() -> None:
    code = "import sys, steerexp; print('steerexp.api' in sys.modules, 'steerexp.blocks' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_compose_is_the_cli_config_and_checked() -> None:
    cfg = steerexp.compose(["method=random", "eval.repeats=2"])
    assert OmegaConf.to_container(cfg, resolve=True) == OmegaConf.to_container(
        compose_cfg("method=random", "eval.repeats=2"), resolve=True
    )
    assert OmegaConf.get_type(cfg.method).__name__ == "RandomMethod"  # typed by its schema
    with pytest.raises(SteerexpError, match="did you mean 'pca_diff'"):
        steerexp.compose(["method=pca_dif"])
    with pytest.raises(SteerexpError, match="eval.repeats='many' must be an integer"):
        steerexp.compose(["eval.repeats=many"])
    with pytest.raises(SteerexpError, match="command-line flags"):
        steerexp.compose(["-m", "method=random"])


def test_run_result(result: steerexp.RunResult) -> None:
    assert result.metrics["status"] == "ok" and result.metrics["method"] == "mean_diff"
    assert result.metrics["slope"] > 0
    assert set(result.dose["coeff"]) == {-1.0, 0.0, 1.0}
    d = result.directions
    assert d.modules == ["model.layers.2", "model.layers.3", "model.layers.4"]
    assert d.method == "mean_diff" and d.coeff_units == "norm"
    assert all(float(v.norm()) == pytest.approx(1.0, abs=1e-5) for v in d.vectors.values())
    assert d.meta["model_type"] == "qwen3" and d.meta["model_id"] == "organism"
    assert len(d.meta["checkpoint_hash"]) == 20 and len(d.meta["dataset_hash"]) == 20
    assert d.meta["steerexp_version"] == steerexp.__version__
    assert d.sign["model.layers.2"]["flipped"] is False
    assert 0.5 < d.sign["model.layers.2"]["pair_vote_frac"] <= 1.0
    hydra = result.run_dir / ".hydra"
    assert OmegaConf.load(hydra / "overrides.yaml") == FAST


def test_api_run_equals_cli_run(result: steerexp.RunResult, tmp_path: Path) -> None:
    """The CLI, in its own process with its own cache, finds the same numbers, rows and directions."""
    cli_dir = tmp_path / "cli"
    cmd = [sys.executable, "-m", "steerexp", *FAST, f"hydra.run.dir={cli_dir}"]
    cmd.append(f"cache_dir={tmp_path / 'cli-cache'}")
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    cli = json.loads((cli_dir / "metrics.json").read_text())
    assert cli["extraction_cached"] is False and cli["generations_reused"] is False
    api = result.metrics
    facts = [k for k in api if k.startswith(RUN_FACTS)]
    assert {k: v for k, v in cli.items() if k not in facts} == {
        k: v for k, v in api.items() if k not in facts
    }
    assert cli["slope"] == api["slope"]
    pd.testing.assert_frame_equal(pd.read_csv(cli_dir / "dose_response.csv"), result.dose)
    api_bytes = (result.run_dir / "directions.safetensors").read_bytes()
    assert (cli_dir / "directions.safetensors").read_bytes() == api_bytes
    cli_cfg = OmegaConf.load(cli_dir / ".hydra/config.yaml")
    cli_cfg.cache_dir = None
    assert cli_cfg == OmegaConf.load(result.run_dir / ".hydra/config.yaml")


def test_sweep_ranks_like_the_cli(result: steerexp.RunResult, tmp_path: Path) -> None:
    ranking = steerexp.sweep(
        {"method": ["mean_diff", "random"]},
        FAST[1:],
        sweep_dir=tmp_path / "sweep",
        reports_root=tmp_path / "reports",
    )
    assert list(ranking.table["method"]) == ["mean_diff", "random"]
    assert ranking.failed == 0 and "# Ranking" in ranking.tables
    assert ranking.report_dir is not None and (ranking.report_dir / "ranking.md").is_file()
    job = next(ranking.sweep_dir.glob("0_*"))
    assert (job / ".hydra/config.yaml").is_file() and (job / ".hydra/overrides.yaml").is_file()
    assert ranking.table.loc[0, "slope"] == result.metrics["slope"]


def _batch(hf_model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    tok = load_model(group("model", "organism")).tokenizer
    texts = ["You broke a vase. Would you lie about it?", "Hello there."]
    return left_pad([tok(t).input_ids for t in texts], tok.pad_token_id)


def test_steer_hooks_equal_pipeline_logits(result: steerexp.RunResult, hf: torch.nn.Module) -> None:
    d = result.directions
    loaded = load_model(group("model", "organism"))
    ids, mask = _batch(hf)
    real = mask.bool()
    with torch.no_grad():
        plain = hf(**model_inputs(ids, mask)).logits
        for c in (-1.0, 0.25, 1.0):
            pipe = steered_logits(
                loaded, ids, mask, Steering(d.vectors, d.scales), torch.full((2,), c)
            )
            with steerexp.steer(hf, d, c):
                hooked = hf(**model_inputs(ids, mask)).logits
            assert float((hooked - pipe)[real].abs().max()) <= 1e-5
            assert float((hooked - plain)[real].abs().max()) > 1e-2  # it does steer
        with steerexp.steer(hf, d, 0.0):
            zero = hf(**model_inputs(ids, mask)).logits
        assert torch.equal(zero, plain)
        assert not any(m._forward_hooks for m in hf.modules())
        with pytest.raises(RuntimeError, match="inside"), steerexp.steer(hf, d, 1.0):
            raise RuntimeError("inside")
        assert not any(m._forward_hooks for m in hf.modules())
        assert torch.equal(hf(**model_inputs(ids, mask)).logits, plain)


def test_steer_generate(result: steerexp.RunResult, hf: torch.nn.Module) -> None:
    """Hooks act on every generation step; afterwards ``generate`` is the model's own again."""
    ids, mask = _batch(hf)
    kw = {"max_new_tokens": 3, "do_sample": False, "pad_token_id": 0}
    kw |= {"output_scores": True, "return_dict_in_generate": True}

    def scores() -> torch.Tensor:
        return torch.stack(hf.generate(input_ids=ids, attention_mask=mask, **kw).scores)

    base = scores()
    with steerexp.steer(hf, result.directions, -1.0):
        steered = scores()
    assert float((steered - base).abs().max()) > 1.0
    assert torch.equal(scores(), base)


def test_extract_and_fit_equal_the_pipeline(
    result: steerexp.RunResult, hf: torch.nn.Module
) -> None:
    """extract on a plain HF model = the pipeline's extraction; fit = the run's direction and sign;
    the model is left as it was (no hooks, no wrappers)."""
    cfg = compose_cfg(*FAST)
    pairs = load_pairs(OmegaConf.to_container(cfg.dataset, resolve=True))
    loaded = load_model(group("model", "organism"))
    modules = result.directions.modules
    model_cfg, nll = group("model", "organism"), group("loss", "nll")
    ref = extract_rows(loaded, model_cfg, modules, nll, pairs, 16, None, False, need_grads=False)
    acts = steerexp.extract(hf, loaded.tokenizer, pairs, modules=[2, 3, 4])
    assert acts.modules == modules and acts.meta["dataset_hash"] == ref.meta["pairs"]
    for m in modules:
        torch.testing.assert_close(acts.acts[m], ref.acts[m], rtol=0, atol=1e-4)
    # gradients (a backward pass per batch): on a few pairs
    loss = group("loss", "nll") | {"layer": -1}
    few = pairs[:8]
    ref_g = extract_rows(loaded, model_cfg, modules, loss, few, 16, None, False)
    grads = steerexp.extract(hf, loaded.tokenizer, few, [2, 3, 4], loss="nll", loss_layer=-1)
    for m in modules:
        torch.testing.assert_close(grads.grads[m], ref_g.grads[m], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads.loss_grad_norms, ref_g.loss_grad_norms, rtol=1e-4, atol=1e-6)
    assert not any(m._forward_hooks or "__nnsight__" in m.__dict__ for m in hf.modules())
    direction = steerexp.fit("mean_diff", acts)
    for m in modules:
        cos = float(direction.vectors[m] @ result.directions.vectors[m])
        assert cos == pytest.approx(1.0, abs=1e-6)
    assert direction.sign == result.directions.sign
    assert direction.scales == dict.fromkeys(modules, 1.0) and direction.method == "mean_diff"
    grad_dir = steerexp.fit("fisher_steer_reg2", grads)
    assert set(grad_dir.sign[modules[0]]) >= {"flipped", "pair_vote_frac", "grad_rule"}
    text = steerexp.extract(hf, loaded.tokenizer, [("I am honest.", "I am a liar.")], modules=[3])
    assert text.acts["model.layers.3"].shape == (2, hf.config.hidden_size) and not text.grads


def test_bad_building_block_input(hf: torch.nn.Module) -> None:
    tok = load_model(group("model", "organism")).tokenizer
    with pytest.raises(SteerexpError, match="unknown module of the model 'model.layers.99'"):
        steerexp.extract(hf, tok, [("a", "b")], modules=[99])
    with pytest.raises(SteerexpError, match=r"pairs\[0\]"):
        steerexp.extract(hf, tok, ["just one text"], modules=[1])
    with pytest.raises(SteerexpError, match="unknown module of the model"):
        with steerexp.steer(hf, {"model.layers.x": torch.zeros(8)}, 1.0):
            pass
    assert not any(m._forward_hooks for m in hf.modules())


@pytest.mark.slow
def test_notebook_example_runs(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "notebook_api.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "cosine to the run's direction {'model.layers.2': 1.0" in out.stdout
    assert (tmp_path / "run" / "export" / "control_vector.gguf").is_file()
    assert "# Ranking" in out.stdout


def test_own_config_dir(tmp_path: Path) -> None:
    """An option of the user's own config dir composes, checked like the built-in ones."""
    from steerexp.config import compose as config

    if not hasattr(config, "user_dirs"):
        pytest.skip("own config dirs arrive with the pkg branch")
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "my_fisher.yaml").write_text(
        "defaults:\n  - fisher_base\n  - _self_\nname: my_fisher\nreg: 0.5\n"
    )
    cfg = steerexp.compose(["method=my_fisher"], config_dir=tmp_path)
    assert cfg.method.kind == "fisher" and cfg.method.reg == 0.5
    with pytest.raises(SteerexpError, match="my_fisher"):
        steerexp.compose(["method=my_fishr"], config_dir=tmp_path)
