"""Real-model paths without downloads: every hub model config, quantization and half precision.

Each hub config (``steerexp/conf/model/*.yaml`` with a ``path``) is loaded through ``load_model`` with
its own fields, but ``path`` pointed at a tiny random model of the same transformers
architecture class, saved with ``save_pretrained`` -- the same code path as the hub.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open

from steerexp import CONF_DIR
from steerexp.config.errors import SteerexpError
from steerexp.data.records import Question
from steerexp.models import loading as models_mod
from steerexp.models import modules as modules_mod
from steerexp.models.loading import LoadedModel, load_model, validate_model_cfg
from steerexp.models.modules import resolve_modules
from steerexp.models.tokens import encode
from steerexp.stages.generate.rows import prompt_ids
from tests.helpers import compose_cfg, group

HUB_MODELS = ("qwen3_4b_instruct", "qwen3_4b_thinking", "glm4_9b", "qwen3_8b", "qwen3_14b_bnb4")
MODULES = sorted(p.stem for p in (CONF_DIR / "module").glob("*.yaml"))
#: Module templates each architecture lacks, with the fused module the error must name.
FUSED = {"GlmForCausalLM": {"gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}}
NO_THINK = "<think>\n\n</think>\n\n"

#: ChatML that, with ``enable_thinking=false``, opens every assistant turn with an empty think
#: block (the generation prompt and a continued assistant message alike), so the kwarg's
#: pass-through shows in both extraction and generation prompts.
THINK_TEMPLATE = (
    "{%- set no_think = enable_thinking is defined and enable_thinking is false -%}"
    "{%- for m in messages -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' -}}"
    "{%- if m['role'] == 'assistant' and no_think -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{{- m['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if no_think -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)
PIPE = (
    "model=tiny_random",
    "dataset=honesty",
    "dataset.max_pairs=8",
    "eval=white_lie",
    "eval.max_new_tokens=8",
    "eval.repeats=2",
    # the random model rarely answers in 8 tokens: the forced judge keeps its fit defined (a run
    # with no valid row is `degenerate`, not `ok`)
    "judge=forced",
)


def _plain(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]


def _save_tiny(arch: str, out: Path) -> Path:
    """A 4-layer random model of class ``arch`` plus a fast tokenizer with ``THINK_TEMPLATE``."""
    import transformers

    from steerexp.organism.tokenizer import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = THINK_TEMPLATE
    config_cls = {
        "Qwen3ForCausalLM": transformers.Qwen3Config,
        "GlmForCausalLM": transformers.GlmConfig,
    }[arch]
    config = config_cls(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    getattr(transformers, arch)(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved tiny checkpoint per architecture class a hub config names."""
    archs = {group("model", m)["architecture"] for m in HUB_MODELS}
    assert archs <= {"Qwen3ForCausalLM", "GlmForCausalLM"}, archs
    root = tmp_path_factory.mktemp("tiny_hub")
    return {a: _save_tiny(a, root / a) for a in sorted(archs)}


def _hub_cfg(option: str, tiny_dirs: dict[str, Path], **over: Any) -> dict[str, Any]:
    """The shipped config ``option`` with ``path`` at the tiny checkpoint, on CPU, unquantized."""
    cfg = group("model", option)
    cfg.update(
        path=str(tiny_dirs[cfg["architecture"]]), device="cpu", dtype="float32", quantization=None
    )
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def hub_models(tiny_dirs: dict[str, Path]) -> dict[str, LoadedModel]:
    return {m: load_model(_hub_cfg(m, tiny_dirs)) for m in HUB_MODELS}


# --- every hub config resolves ---------------------------------------------------------------


@pytest.mark.parametrize("name", HUB_MODELS)
def test_hub_config_is_sane(name: str) -> None:
    cfg = group("model", name)
    assert cfg["path"] and cfg["builder"] is None
    assert cfg["trust_remote_code"] is False
    assert cfg["dtype"] == "auto"  # bfloat16 on a GPU, float32 on CPU
    validate_model_cfg(cfg)
    composed = compose_cfg(f"model={name}", "dataset=honesty", "eval=white_lie")
    assert composed.model.name == name


def test_hub_ids_and_quantization() -> None:
    paths = {m: group("model", m)["path"] for m in HUB_MODELS}
    assert paths["qwen3_4b_instruct"] == "Qwen/Qwen3-4B-Instruct-2507"
    assert paths["qwen3_4b_thinking"] == "Qwen/Qwen3-4B-Thinking-2507"
    assert paths["qwen3_8b"] == "Qwen/Qwen3-8B"
    assert paths["qwen3_14b_bnb4"] == "Qwen/Qwen3-14B"
    assert paths["glm4_9b"].endswith("glm-4-9b-chat-hf")
    assert group("model", "qwen3_14b_bnb4")["quantization"] == "4bit"
    assert group("model", "qwen3_8b")["chat_template_kwargs"] == {"enable_thinking": False}


@pytest.mark.parametrize("name", HUB_MODELS)
def test_hub_architecture_matches_transformers(
    name: str, tiny_dirs: dict[str, Path], hub_models: dict[str, LoadedModel]
) -> None:
    import json

    arch = group("model", name)["architecture"]
    saved = json.loads((tiny_dirs[arch] / "config.json").read_text())["architectures"]
    assert saved == [arch]
    loaded = hub_models[name]
    assert type(loaded.hf).__name__ == arch
    assert loaded.path == str(tiny_dirs[arch])


@pytest.mark.parametrize("name", HUB_MODELS)
def test_every_module_template_resolves_or_names_fused(
    name: str, hub_models: dict[str, LoadedModel]
) -> None:
    loaded = hub_models[name]
    fused = FUSED.get(type(loaded.hf).__name__, {})
    for option in MODULES:
        mcfg = group("module", option)
        if option in fused:
            with pytest.raises(SteerexpError) as err:
                resolve_modules(loaded, mcfg)
            msg = str(err.value)
            assert "\n" not in msg and repr(mcfg["template"]) in msg
            assert f"fuses it into 'model.layers.{{N}}.mlp.{fused[option]}'" in msg
        else:
            paths = resolve_modules(loaded, mcfg)
            assert paths == [mcfg["template"].replace("{N}", str(i)) for i in (2, 3)]


def test_fused_hint_only_for_fused_modules(hub_models: dict[str, LoadedModel]) -> None:
    with pytest.raises(SteerexpError) as err:
        resolve_modules(
            hub_models["qwen3_8b"], {"template": "model.layers.{N}.mlp.gate_up_proj", "layers": [1]}
        )
    assert "fuses" not in str(err.value) and "gate_proj" in str(err.value)
    with pytest.raises(SteerexpError) as err:
        resolve_modules(
            hub_models["glm4_9b"],
            {"template": "model.layers.{N}.self_attn.qkv_proj", "layers": [1]},
        )
    assert "fuses" not in str(err.value)


def test_architecture_mismatch_is_clear(tiny_dirs: dict[str, Path]) -> None:
    cfg = _hub_cfg("glm4_9b", tiny_dirs, architecture="Glm4ForCausalLM", name="glm_wrong")
    with pytest.raises(
        SteerexpError, match=r"is a GlmForCausalLM checkpoint.*architecture='Glm4ForCausalLM'"
    ):
        load_model(cfg)
    cfg = _hub_cfg("qwen3_8b", tiny_dirs, path=str(tiny_dirs["GlmForCausalLM"]), name="qwen_at_glm")
    with pytest.raises(SteerexpError, match=r"GlmForCausalLM checkpoint.*Qwen3ForCausalLM"):
        load_model(cfg)


@pytest.mark.parametrize("value", ["false", "true", None, 0, 1])
def test_trust_remote_code_must_be_bool(value: Any) -> None:
    cfg = {**group("model", "qwen3_8b"), "trust_remote_code": value}
    with pytest.raises(SteerexpError, match="trust_remote_code"):
        validate_model_cfg(cfg)


def test_trust_remote_code_never_implicit(
    tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []
    for cls in (models_mod.AutoConfig, models_mod.AutoTokenizer, models_mod.AutoModelForCausalLM):
        orig = cls.from_pretrained

        def spy(*args: Any, _orig: Any = orig, **kwargs: Any) -> Any:
            seen.append(kwargs.get("trust_remote_code", "absent"))
            return _orig(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    load_model(_hub_cfg("glm4_9b", tiny_dirs, name="glm_spy"))
    assert len(seen) >= 3 and all(v is False for v in seen), seen


def test_chat_template_kwargs_pass_through(hub_models: dict[str, LoadedModel]) -> None:
    thinking_off, plain = hub_models["qwen3_8b"], hub_models["qwen3_4b_instruct"]
    assert thinking_off.chat_kwargs == {"enable_thinking": False}
    assert plain.chat_kwargs == {}
    msgs = [
        {"role": "user", "content": "Pretend to be an honest person."},
        {"role": "assistant", "content": "The truth"},
    ]
    q = Question(id="q", text="Is it fine to lie? Answer Yes or No.", trait_answer="No")
    ev = group("eval", "white_lie")
    texts = {}
    for name, loaded in (("off", thinking_off), ("plain", plain)):
        ids, n_suffix = encode(loaded.tokenizer, msgs, loaded.chat_kwargs)
        decoded = loaded.tokenizer.decode(ids)
        assert loaded.tokenizer.decode(ids[-n_suffix:]).strip() == "The truth"
        texts[name] = (decoded, loaded.tokenizer.decode(prompt_ids(loaded, ev, q)))
    assert NO_THINK in texts["off"][0] and NO_THINK not in texts["plain"][0]
    assert texts["off"][1].endswith(NO_THINK) and NO_THINK not in texts["plain"][1]


# --- quantization ------------------------------------------------------------------------------


def _directions(run_dir: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(run_dir / "directions.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _check_run(metrics: dict[str, Any], run_dir: Path) -> None:
    assert metrics["status"] == "ok"
    dirs = _directions(run_dir)
    assert dirs
    for v in dirs.values():
        assert v.dtype == torch.float32 and torch.isfinite(v).all()
        assert abs(float(v.norm()) - 1.0) < 1e-5


@pytest.fixture
def fresh_extractions(tmp_path: Path) -> Iterator[str]:
    """A private extraction cache so every pipeline run really extracts."""
    from steerexp.store import context

    with context.fresh():
        yield f"cache_dir={tmp_path / 'extractions'}"


def test_4bit_pipeline_end_to_end(tmp_path: Path, fresh_extractions: str) -> None:
    from steerexp.pipeline import run

    cfg = compose_cfg(
        *PIPE,
        "model.quantization=4bit",
        "model.device=cpu",
        "method=fisher_steer_reg2",
        fresh_extractions,
    )
    metrics = run(cfg, tmp_path / "run", progress=False)
    _check_run(metrics, tmp_path / "run")
    loaded = load_model(
        dict(compose_cfg(*PIPE, "model.quantization=4bit", "model.device=cpu").model)
    )
    assert type(loaded.hf.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"


def test_4bit_extraction_gradients_flow(fresh_extractions: str) -> None:
    from steerexp.data.pairs import load_pairs
    from steerexp.stages.extract.activations import extract

    cfg = compose_cfg(*PIPE, "model.quantization=4bit", "model.device=cpu", "module=up_proj")
    loaded = load_model(_plain(cfg.model))
    assert not any(p.requires_grad for p in loaded.hf.parameters())
    modules = resolve_modules(loaded, cfg.module)
    pairs = load_pairs(_plain(cfg.dataset))[:4]
    with torch.no_grad():
        loaded.hf(torch.tensor([[5, 6, 7]]))
    for tokens in ("suffix", "all"):
        lcfg = {**group("loss", "nll"), "tokens": tokens}
        ex = extract(loaded, _plain(cfg.model), modules, lcfg, pairs, batch_size=8, progress=False)
        for m in modules:
            assert torch.isfinite(ex.grads[m]).all() and (ex.grads[m].abs().sum(-1) > 0).all(), m
        assert (ex.loss_grad_norms > 0).all()
    assert not any(p.grad is not None for p in loaded.hf.parameters())


def test_4bit_gradient_matches_dequantized(tiny_dirs: dict[str, Path]) -> None:
    """Input gradients through a 4-bit layer equal those through its dequantized weight."""
    import bitsandbytes.functional as bnbf

    cfg = _hub_cfg("qwen3_14b_bnb4", tiny_dirs, quantization="4bit", name="q4_grad")
    loaded = load_model(cfg)
    layer = loaded.hf.model.layers[1].mlp.up_proj
    assert type(layer).__name__ == "Linear4bit"
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        layer(x)
    xg = x.clone().requires_grad_(True)
    (gq,) = torch.autograd.grad(layer(xg).float().pow(2).sum(), xg)
    w = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    xd = x.clone().requires_grad_(True)
    (gd,) = torch.autograd.grad((xd @ w.T).pow(2).sum(), xd)
    torch.testing.assert_close(gq.float(), gd, rtol=2e-2, atol=2e-2)


@pytest.mark.slow
def test_8bit_pipeline_end_to_end(tmp_path: Path, fresh_extractions: str) -> None:
    from steerexp.pipeline import run

    cfg = compose_cfg(
        *PIPE,
        "model.quantization=8bit",
        "model.device=cpu",
        "method=fisher_steer_reg2",
        fresh_extractions,
    )
    _check_run(run(cfg, tmp_path / "run", progress=False), tmp_path / "run")


def test_quantization_needs_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "accelerate" else real(n, *a)
    )
    cfg = {**group("model", "qwen3_14b_bnb4")}
    with pytest.raises(
        SteerexpError, match=r"model.quantization=4bit needs the package\(s\) accelerate"
    ):
        validate_model_cfg(cfg)
    validate_model_cfg({**cfg, "quantization": None})


# --- numerics (5a) -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["pca_diff", "fisher_steer_cov_reg2"])
def test_bf16_pipeline_gives_finite_unit_directions(
    method: str, tmp_path: Path, fresh_extractions: str
) -> None:
    from steerexp.pipeline import run

    cfg = compose_cfg(
        *PIPE, "model.dtype=bfloat16", "model.device=cpu", f"method={method}", fresh_extractions
    )
    _check_run(run(cfg, tmp_path / "run", progress=False), tmp_path / "run")
    loaded = load_model(_plain(cfg.model))
    assert loaded.hf.dtype == torch.bfloat16


# --- GPU ---------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize(
    "setting", [("model.dtype=bfloat16",), ("model.dtype=bfloat16", "model.quantization=4bit")]
)
def test_cuda_pipeline(setting: tuple[str, ...], tmp_path: Path, fresh_extractions: str) -> None:
    from steerexp.pipeline import run

    cfg = compose_cfg(
        *PIPE, "model.device=cuda", "method=fisher_steer_reg2", *setting, fresh_extractions
    )
    _check_run(run(cfg, tmp_path / "run", progress=False), tmp_path / "run")
    loaded = load_model(_plain(cfg.model))
    assert loaded.device.type == "cuda"


def test_fused_hint_covers_qkv() -> None:
    pool = [
        "model.layers.{N}.self_attn.qkv_proj",
        "model.layers.{N}.self_attn.o_proj",
        "model.layers.{N}.mlp.gate_up_proj",
    ]
    assert modules_mod._fused_siblings("model.layers.{N}.self_attn.k_proj", pool) == [
        "model.layers.{N}.self_attn.qkv_proj"
    ]
    assert modules_mod._fused_siblings("model.layers.{N}.mlp.up_proj", pool) == [
        "model.layers.{N}.mlp.gate_up_proj"
    ]
    assert modules_mod._fused_siblings("model.layers.{N}.mlp.down_proj", pool) == []
    assert modules_mod._fused_siblings("model.layers.{N}", pool) == []
