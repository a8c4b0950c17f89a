"""Load a model (hub id, local path, or a locally built one) and resolve module templates.

Every model, the organism included, goes through the same ``from_pretrained`` path; only
where the checkpoint directory comes from differs (``builder``). Loaded models are kept per
config for the life of the process, so a sweep in one process loads each model once.
"""

from __future__ import annotations

import importlib.util
import json
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from steerexp.config.compose import typed
from steerexp.config.errors import SteerexpError, choice_error
from steerexp.models import hub_init
from steerexp.models.builders import BUILDERS, DTYPES
from steerexp.models.checkpoints import (
    CHECKPOINT_SUFFIXES,
    check_local_path,
    check_no_pickle,
    check_safetensors,
    checkpoint_path,
    file_digest,
)
from steerexp.store import context

#: ``model.dtype=auto``: bfloat16 on a GPU, float32 on CPU (where bfloat16 matmuls are several
#: times slower, e.g. ~7x extracting a random-weight 0.6B shape)
AUTO_DTYPE = {"cuda": "bfloat16", "cpu": "float32"}
#: Packages transformers needs to load a bitsandbytes-quantized checkpoint (CPU included).
QUANT_PACKAGES = ("bitsandbytes", "accelerate")


@dataclass
class LoadedModel:
    """A frozen HF causal LM, its tokenizer and the nnsight wrapper used to trace it."""

    name: str
    hf: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    lm: Any
    path: str
    chat_kwargs: dict[str, Any] = field(default_factory=dict)
    load_s: float = 0.0
    reused: bool = False
    fingerprint: dict[str, Any] | None = None
    _exec_rank: dict[str, int] | None = field(default=None, repr=False)

    @property
    def n_layers(self) -> int:
        return int(self.hf.config.num_hidden_layers)

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    def module_names(self) -> list[str]:
        return [n for n, _ in self.hf.named_modules() if n]

    def forward_order(self, paths: list[str]) -> list[str]:
        """``paths`` (deduplicated) in the order the model produces their outputs: nnsight must be
        asked for module outputs in that order (else ``OutOfOrderError``), and a name order or a
        set order (which depends on ``PYTHONHASHSEED``) can differ from it, e.g. two modules of one
        block. Measured once per model with forward hooks on a two-token input."""
        if self._exec_rank is None:
            rank: dict[str, int] = {}

            def record(name: str) -> Any:
                def hook(*_: Any) -> None:
                    rank.setdefault(name, len(rank))

                return hook

            hooks = [
                module.register_forward_hook(record(name))
                for name, module in self.hf.named_modules()
                if name
            ]
            token = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id or 0
            try:
                with torch.no_grad():
                    self.hf(input_ids=torch.full((1, 2), int(token), device=self.device))
            finally:
                for h in hooks:
                    h.remove()
            self._exec_rank = rank
        rank = self._exec_rank
        return sorted(set(paths), key=lambda p: (rank.get(p, len(rank)), p))

    def envoy(self, path: str) -> Any:
        """The nnsight envoy at a dotted module path (``model.layers.3.mlp``)."""
        node = self.lm
        for part in path.split("."):
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        return node


def _model_key(cfg: DictConfig) -> str:
    return json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True, default=str)


def validate_model_cfg(cfg: Mapping[str, Any]) -> None:
    """Checks that need no model: the schema's types, dtype, quantization, builder or path."""
    cfg = typed("model", cfg)
    if cfg["quantization"]:
        missing = [m for m in QUANT_PACKAGES if importlib.util.find_spec(m) is None]
        if missing:
            raise SteerexpError(
                f"model.quantization={cfg['quantization']} needs the package(s) {', '.join(missing)}; "
                f"install them (pip install {' '.join(missing)}) or set model.quantization=null"
            )
    hub_init.validate(cfg)
    builder = cfg["builder"]
    if builder not in (None, *BUILDERS):
        raise choice_error("model.builder", builder, ["null", *BUILDERS])
    if builder is None and not cfg["path"]:
        raise SteerexpError(f"model {cfg['name']!r} has neither a path nor a builder")
    if builder is None:
        check_local_path(str(cfg["path"]))
        check_no_pickle(str(cfg["path"]), bool(cfg["allow_pickle"]))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: str) -> str:
    """``model.dtype`` as loaded: ``auto`` is :data:`AUTO_DTYPE` of the device; a set dtype is
    kept (bfloat16 on CPU included, as the user asked)."""
    if dtype != "auto":
        return dtype
    return AUTO_DTYPE.get(resolve_device(device).type, "float32")


def with_dtype(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A plain model config with ``dtype`` resolved (:func:`resolve_dtype`)."""
    out = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    out["dtype"] = resolve_dtype(str(out.get("dtype", "auto")), str(out.get("device", "auto")))
    return out


def load_model(cfg: Mapping[str, Any]) -> LoadedModel:
    """Load (or reuse) the model of a ``conf/model`` config, frozen, in eval mode; loaded models
    are kept in the run context (:attr:`~steerexp.store.context.RunContext.models`), so the
    jobs of a sweep in one process load each model once."""
    from nnsight.modeling.transformers import TransformersModel

    cfg = typed("model", with_dtype(cfg))
    validate_model_cfg(cfg)
    key = _model_key(cfg)
    models = context.current().models
    if key in models:
        cached = models[key]
        cached.reused = True
        return cached
    t0 = time.perf_counter()
    path = checkpoint_path(cfg)
    device = resolve_device(str(cfg["device"]))
    dtype = DTYPES[cfg["dtype"]]
    kwargs: dict[str, Any] = {
        "revision": cfg["revision"],
        "dtype": dtype,
        "trust_remote_code": cfg["trust_remote_code"],
    }
    if cfg["quantization"]:
        from transformers import BitsAndBytesConfig

        four = cfg["quantization"] == "4bit"
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=four,
            load_in_8bit=not four,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_type="nf4",
        )
        kwargs["device_map"] = {"": str(device)}
    check_safetensors(path)
    check_no_pickle(path, bool(cfg["allow_pickle"]))
    if not cfg["allow_pickle"]:
        kwargs["use_safetensors"] = True
    with _hub_errors(cfg, path):
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=cfg["revision"], trust_remote_code=kwargs["trust_remote_code"]
        )
        config = AutoConfig.from_pretrained(
            path, revision=cfg["revision"], trust_remote_code=kwargs["trust_remote_code"]
        )
        _check_architecture(cfg, path, list(config.architectures or []))
        hf = AutoModelForCausalLM.from_pretrained(path, config=config, **kwargs)
    if not cfg["quantization"]:
        hf = hf.to(device)
    if not config.architectures:
        _check_architecture(cfg, path, [type(hf).__name__])
    hf.eval()
    for p in hf.parameters():
        p.requires_grad_(False)
    if cfg["quantization"] == "4bit":
        _keep_4bit_differentiable(hf)
    # Frozen weights: activations only get gradients if the embeddings' output requires grad.
    hf.enable_input_require_grads()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = TransformersModel(hf, tokenizer=tokenizer, task="text-generation")
    loaded = LoadedModel(
        name=str(cfg["name"]),
        hf=hf,
        tokenizer=tokenizer,
        lm=lm,
        path=path,
        chat_kwargs=dict(cfg["chat_template_kwargs"]),
        load_s=time.perf_counter() - t0,
    )
    models[key] = loaded
    return loaded


@contextmanager
def _hub_errors(cfg: Mapping[str, Any], path: str) -> Iterator[None]:
    """A hub model that cannot be fetched (offline, unknown id, no safetensors) fails in one
    line naming the model id, with the ways to run without the hub."""
    try:
        yield
    except OSError as e:
        if Path(path).expanduser().is_dir():
            raise
        first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise SteerexpError(
            f"model {cfg['name']!r}: cannot load {path!r} from the Hugging Face hub, and it is not "
            f"in the local hub cache ({first.strip()[:200]}); run once online to cache it, or use "
            "model.random_init=true (its architecture with random weights), or set model.path to "
            "a local checkpoint dir"
        ) from None


def _keep_4bit_differentiable(hf: PreTrainedModel) -> None:
    """Stop bitsandbytes repacking 4-bit CPU weights on a no-grad forward (e.g. ``generate``).

    The packed CPU kernel has no autograd, so every later extraction would silently get zero
    gradients through the quantized layers of a model reused across runs.
    """
    for module in hf.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _check_architecture(cfg: Mapping[str, Any], path: str, got: list[str]) -> None:
    """``model.architecture`` must name the checkpoint's class (checked before weights load)."""
    expected = cfg["architecture"]
    if expected and got and expected not in got:
        raise SteerexpError(
            f"model {cfg['name']!r} at {path!r} is a {', '.join(got)} checkpoint, but its config says "
            f"architecture={expected!r}; fix model.architecture or model.path"
        )


def model_fingerprint(model_cfg: Mapping[str, Any], loaded: LoadedModel) -> dict[str, Any]:
    """What identifies the loaded checkpoint's content, independent of where it lives, so a copied
    or shared cache still hits: a local dir -> the sha256 of each file ``from_pretrained`` reads;
    a hub id -> the id, the requested revision and the commit it resolved to. Cache keys (e.g. the
    extraction key) use this instead of the checkpoint path."""
    if loaded.fingerprint is None:
        local = Path(loaded.path)
        if local.is_dir():
            files = sorted(
                f
                for f in local.iterdir()
                if f.is_file() and not f.name.startswith(".") and f.suffix in CHECKPOINT_SUFFIXES
            )
            loaded.fingerprint = {"files": {f.name: file_digest(f) for f in files}}
        else:
            loaded.fingerprint = {
                "hub_id": loaded.path,
                "revision": typed("model", model_cfg)["revision"],
                "commit": getattr(loaded.hf.config, "_commit_hash", None),
            }
    return loaded.fingerprint
