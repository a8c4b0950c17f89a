"""``model.random_init=true``: hub architectures from shipped config.json files, random weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from steerexp import CONF_DIR
from steerexp.config.errors import SteerexpError
from steerexp.models import hub_init
from steerexp.models.loading import LoadedModel, load_model
from steerexp.models.modules import resolve_modules
from tests.helpers import compose_cfg, group

HUB_MODELS = sorted(
    p.stem for p in (CONF_DIR / "model").glob("*.yaml") if group("model", p.stem)["path"]
)
MODULES = sorted(p.stem for p in (CONF_DIR / "module").glob("*.yaml"))
#: (total, non-embedding) parameters in billions as each model card states them (GLM-4's card
#: gives only the total); the shipped configs must reproduce them.
CARD_B = {
    "Qwen/Qwen3-0.6B": (0.6, 0.44),
    "Qwen/Qwen3-4B-Instruct-2507": (4.0, 3.6),
    "Qwen/Qwen3-4B-Thinking-2507": (4.0, 3.6),
    "Qwen/Qwen3-8B": (8.2, 6.95),
    "Qwen/Qwen3-14B": (14.8, 13.2),
    "THUDM/glm-4-9b-chat-hf": (9.4, None),
}
#: A shrunken width for fast tests (depth comes from model.num_layers).
SMALL = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 2048,
}
FUSED_GLM = {"gate_proj", "up_proj"}


def small_cfg(name: str, **over: Any) -> dict[str, Any]:
    cfg = group("model", name)
    cfg.update(
        random_init=True,
        num_layers=2,
        config_overrides=dict(SMALL),
        dtype="float32",
        device="cpu",
        quantization=None,
    )
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def shaped() -> dict[str, LoadedModel]:
    return {name: load_model(small_cfg(name)) for name in ("qwen3_4b_instruct", "glm4_9b")}


def test_every_hub_config_ships_its_config_json() -> None:
    shipped = set(hub_init.shipped())
    for name in HUB_MODELS:
        assert group("model", name)["path"] in shipped, name
    assert "Qwen/Qwen3-0.6B" in shipped


@pytest.mark.parametrize("hub_id", sorted(CARD_B))
def test_shipped_config_matches_model_card_size(hub_id: str) -> None:
    config = AutoConfig.from_pretrained(str(hub_init.hub_config_path(hub_id).parent))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert type(model).__name__ == config.architectures[0]
    total, non_embed = CARD_B[hub_id]
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) / 1e9 == pytest.approx(total, rel=0.02)
    if non_embed is not None:
        body = sum(
            p.numel() for n, p in params.items() if "embed_tokens" not in n and "lm_head" not in n
        )
        assert body / 1e9 == pytest.approx(non_embed, rel=0.02)
    assert config.head_dim == 128
    assert config.num_attention_heads * config.head_dim >= config.hidden_size


@pytest.mark.parametrize("name", ["qwen3_4b_instruct", "glm4_9b"])
def test_random_init_keeps_architecture_and_overrides(
    name: str, shaped: dict[str, LoadedModel]
) -> None:
    loaded = shaped[name]
    real = json.loads(hub_init.hub_config_path(group("model", name)["path"]).read_text())
    assert (
        type(loaded.hf).__name__ == real["architectures"][0] == group("model", name)["architecture"]
    )
    assert loaded.n_layers == 2 and loaded.hf.config.hidden_size == 64
    assert loaded.hf.config.eos_token_id == loaded.tokenizer.eos_token_id
    assert loaded.hf.config.rms_norm_eps == real["rms_norm_eps"]
    assert loaded.hf.config.tie_word_embeddings == real["tie_word_embeddings"]
    assert Path(loaded.path).parent.name == "random_init"


@pytest.mark.parametrize("name", ["qwen3_4b_instruct", "glm4_9b"])
def test_module_templates_resolve_on_hub_shapes(name: str, shaped: dict[str, LoadedModel]) -> None:
    loaded = shaped[name]
    for option in MODULES:
        mcfg = {**group("module", option), "layers": [0, 1]}
        if name == "glm4_9b" and option in FUSED_GLM:
            with pytest.raises(SteerexpError, match="gate_up_proj"):
                resolve_modules(loaded, mcfg)
            continue
        paths = resolve_modules(loaded, mcfg)
        assert paths == [mcfg["template"].replace("{N}", str(i)) for i in (0, 1)]


def test_weights_are_seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    cfg = small_cfg("qwen3_8b")
    dirs = []
    for sub in ("a", "b"):
        monkeypatch.setenv("STEEREXP_CACHE", str(tmp_path / sub))
        dirs.append(hub_init.build(cfg))
    a, b = (load_file(str(d / "model.safetensors")) for d in dirs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert float(a["model.layers.1.mlp.up_proj.weight"].std()) == pytest.approx(0.02, rel=0.05)
    monkeypatch.setenv("STEEREXP_CACHE", str(tmp_path / "c"))
    other = hub_init.build({**cfg, "num_layers": 1})
    assert other.name != dirs[0].name


def test_bad_random_init_settings_are_clear() -> None:
    with pytest.raises(SteerexpError, match=r"model.num_layers=99 must be an integer in 1..36"):
        hub_init.build(small_cfg("qwen3_8b", num_layers=99))
    with pytest.raises(SteerexpError, match=r"does not ship; shipped: .*Qwen/Qwen3-8B"):
        hub_init.build(small_cfg("qwen3_8b", path="Qwen/Qwen9-1B"))
    with pytest.raises(SteerexpError, match=r"vocab_size=10 is smaller than the tokenizer"):
        hub_init.build(small_cfg("qwen3_8b", config_overrides={**SMALL, "vocab_size": 10}))
    with pytest.raises(
        SteerexpError, match=r"model.num_layers=2 only applies with model.random_init=true"
    ):
        load_model({**group("model", "qwen3_8b"), "num_layers": 2})
    with pytest.raises(SteerexpError, match=r"model.random_init='yes' must be true or false"):
        load_model({**group("model", "qwen3_8b"), "random_init": "yes"})


def test_pipeline_runs_on_a_hub_shaped_model(tmp_path: Path) -> None:
    from steerexp.pipeline import run

    cfg = compose_cfg(
        "model=qwen3_4b_instruct",
        "model.random_init=true",
        "model.num_layers=4",
        *(f"+model.config_overrides.{k}={v}" for k, v in SMALL.items()),
        "model.dtype=float32",
        "model.device=cpu",
        "dataset=honesty",
        "dataset.max_pairs=8",
        "eval=white_lie",
        "eval.max_new_tokens=8",
        "eval.repeats=2",
        "judge=forced",
        "random_null.k=0",
        f"cache_dir={tmp_path / 'extractions'}",
    )
    metrics = run(cfg, tmp_path / "run", progress=False)
    assert metrics["status"] == "ok" and metrics["n_pairs"] == 8
    assert Path(metrics["checkpoint"]).parent.name == "random_init"
    dose = pd.read_csv(tmp_path / "run" / "dose_response.csv")
    assert len(dose) == len(cfg.eval.coeffs) * 2 * dose["question_id"].nunique()
    assert metrics["kl_at_max"] > 0


# --- GPU: the README's Qwen3-4B plan, checked on a full-depth random-weight model ----------------


@pytest.mark.gpu
@pytest.mark.parametrize(("quant", "max_gib"), [(None, 8.2), ("4bit", 3.6)])
def test_cuda_qwen3_4b_shape(quant: str | None, max_gib: float) -> None:
    """Full-depth Qwen3-4B shape in bf16 (or NF4) on CUDA: weight memory as planned, coefficient-0
    rows identical to unsteered ones, steered and unsteered generation within 15% of HF's
    ``generate`` (greedy, eos off, 64 rows x 32 tokens)."""
    import time

    from bench.generate import random_steering
    from steerexp.data.answers import make_answer_spec
    from steerexp.data.pairs import load_questions
    from steerexp.models.tokens import left_pad
    from steerexp.stages.generate.rows import generate_rows, grid, prompt_ids

    base = torch.cuda.memory_allocated()
    loaded = load_model(
        {
            **group("model", "qwen3_4b_instruct"),
            "random_init": True,
            "device": "cuda",
            "quantization": quant,
        }
    )
    weights_gib = (torch.cuda.memory_allocated() - base) / 2**30
    assert weights_gib < max_gib, weights_gib
    n_new = 32
    ev = {
        **group("eval", "organism"),
        "max_new_tokens": n_new,
        "do_sample": False,
        "repetition_penalty": None,
        "max_batch_size": 64,
    }
    spec = make_answer_spec(
        loaded.tokenizer, ev["answer_regex"], ev["answers"], ev["answer_prefix"]
    )
    rows = grid(load_questions(ev)[:16], [0.0, 0.5], 2)
    steering = random_steering(loaded)
    ids, mask = left_pad(
        [prompt_ids(loaded, ev, r.question) for r in rows], loaded.tokenizer.pad_token_id
    )
    loaded.hf.generation_config.eos_token_id = None

    def hf() -> None:
        with torch.no_grad():
            loaded.hf.generate(
                input_ids=ids.cuda(),
                attention_mask=mask.cuda(),
                max_new_tokens=n_new,
                do_sample=False,
                pad_token_id=loaded.tokenizer.pad_token_id,
            )

    runs = {
        "steered": lambda: generate_rows(loaded, ev, rows, steering, spec, seed=0, progress=False),
        "unsteered": lambda: generate_rows(loaded, ev, rows, None, spec, seed=0, progress=False),
        "hf": hf,
    }
    out, seconds = {}, {}
    for label, fn in [
        *runs.items(),
        *runs.items(),
    ]:  # the first round warms up; the second is timed
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out[label] = fn()
        torch.cuda.synchronize()
        seconds[label] = time.perf_counter() - t0
    pairs = list(zip(out["steered"], out["unsteered"], strict=True))
    assert all(s.completion_ids == u.completion_ids for s, u in pairs if s.coeff == 0.0)
    assert any(s.completion_ids != u.completion_ids for s, u in pairs if s.coeff != 0.0)
    ratios = {k: seconds["hf"] / seconds[k] for k in ("steered", "unsteered")}
    print(
        f"qwen3_4b shape {quant or 'bf16'}: weights {weights_gib:.2f} GiB, peak "
        f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, HF {len(rows) * n_new / seconds['hf']:.0f} tok/s, "
        f"steered/HF {ratios['steered']:.2f}, unsteered/HF {ratios['unsteered']:.2f}"
    )
    assert min(ratios.values()) >= 0.85, ratios
