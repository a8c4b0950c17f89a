"""Load a model (hub id, local path, or a locally built one) and resolve module templates.

Every model, the organism included, goes through the same ``from_pretrained`` path; only
where the checkpoint directory comes from differs (``builder``). Loaded models are kept per
config for the life of the process, so a sweep in one process loads each model once.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from steerexp import cache_dir, hub_init
from steerexp.cache import apply_umask
from steerexp.errors import SteerexpError, choice_error

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
QUANTIZATIONS = (None, "4bit", "8bit")
#: Packages transformers needs to load a bitsandbytes-quantized checkpoint (CPU included).
QUANT_PACKAGES = ("bitsandbytes", "accelerate")
TINY_RANDOM_VERSION = "v1"


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


_LOADED: dict[str, LoadedModel] = {}


def _model_key(cfg: Mapping[str, Any]) -> str:
    return json.dumps({k: cfg.get(k) for k in sorted(cfg)}, sort_keys=True, default=str)


def validate_model_cfg(cfg: Mapping[str, Any]) -> None:
    """Checks that need no model: dtype, quantization, and that remote code is never implicit."""
    if cfg.get("dtype") not in DTYPES:
        raise choice_error("model.dtype", cfg.get("dtype"), DTYPES)
    if cfg.get("quantization") not in QUANTIZATIONS:
        raise choice_error("model.quantization", cfg.get("quantization"), ["null", "4bit", "8bit"])
    if cfg.get("quantization"):
        missing = [m for m in QUANT_PACKAGES if importlib.util.find_spec(m) is None]
        if missing:
            raise SteerexpError(
                f"model.quantization={cfg['quantization']} needs the package(s) {', '.join(missing)}; "
                f"install them (pip install {' '.join(missing)}) or set model.quantization=null"
            )
    if not isinstance(cfg.get("trust_remote_code"), bool):
        raise SteerexpError(
            f"model.trust_remote_code={cfg.get('trust_remote_code')!r} must be true or false; "
            "steerexp never enables remote code implicitly (only an explicit true does)"
        )
    hub_init.validate(cfg)
    builder = cfg.get("builder")
    if builder not in (None, *BUILDERS):
        raise choice_error("model.builder", builder, ["null", *BUILDERS])
    if builder is None and not cfg.get("path"):
        raise SteerexpError(f"model {cfg.get('name')!r} has neither a path nor a builder")
    if builder is None:
        check_local_path(str(cfg["path"]))


#: A hub id is ``name`` or ``org/name`` (letters, digits, ``-_.``); anything else is a local path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def check_local_path(path: str) -> None:
    """A ``model.path`` that is not a hub id must be an existing checkpoint directory."""
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise SteerexpError(
                f"model.path={path!r} is a file; give the checkpoint directory (with config.json)"
            )
        return
    if path.startswith(("/", ".", "~")) or not _HUB_ID.fullmatch(path):
        raise SteerexpError(
            f"model.path={path!r} does not exist; give an existing local checkpoint directory "
            "or a hub id such as 'Qwen/Qwen3-4B-Instruct-2507'"
        )


def check_safetensors(path: str) -> None:
    """Every ``*.safetensors`` file of a local checkpoint opens (catches truncated or corrupt files,
    naming the file, before ``from_pretrained`` fails with an anonymous header error)."""
    from safetensors import safe_open

    local = Path(path)
    if not local.is_dir():
        return
    for f in sorted(local.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as handle:
                keys = list(handle.keys())
                if keys:
                    handle.get_slice(keys[-1])
        except Exception as e:  # noqa: BLE001 -- safetensors raises its own error types
            raise SteerexpError(
                f"checkpoint file {str(f)!r} is truncated or corrupt ({type(e).__name__}: {e}); "
                "delete it (a built model such as the organism is then rebuilt) or restore it"
            ) from None


def checkpoint_path(cfg: Mapping[str, Any]) -> str:
    """The directory or hub id ``from_pretrained`` reads, building local models when missing."""
    if cfg.get("random_init"):
        return str(hub_init.build(cfg))
    builder = cfg.get("builder")
    if builder is not None:
        return str(BUILDERS[builder]())
    return str(cfg["path"])


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(cfg: Mapping[str, Any]) -> LoadedModel:
    """Load (or reuse) the model of a ``conf/model`` config, frozen, in eval mode."""
    from nnsight.modeling.transformers import TransformersModel

    validate_model_cfg(cfg)
    key = _model_key(cfg)
    if key in _LOADED:
        cached = _LOADED[key]
        cached.reused = True
        return cached
    t0 = time.perf_counter()
    path = checkpoint_path(cfg)
    device = resolve_device(str(cfg.get("device", "auto")))
    dtype = DTYPES[cfg["dtype"]]
    kwargs: dict[str, Any] = {
        "revision": cfg.get("revision"),
        "dtype": dtype,
        "trust_remote_code": bool(cfg.get("trust_remote_code")),
    }
    if cfg.get("quantization"):
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
    tokenizer = AutoTokenizer.from_pretrained(
        path, revision=cfg.get("revision"), trust_remote_code=kwargs["trust_remote_code"]
    )
    config = AutoConfig.from_pretrained(
        path, revision=cfg.get("revision"), trust_remote_code=kwargs["trust_remote_code"]
    )
    _check_architecture(cfg, path, list(config.architectures or []))
    hf = AutoModelForCausalLM.from_pretrained(path, config=config, **kwargs)
    if not cfg.get("quantization"):
        hf = hf.to(device)
    if not config.architectures:
        _check_architecture(cfg, path, [type(hf).__name__])
    hf.eval()
    for p in hf.parameters():
        p.requires_grad_(False)
    if cfg.get("quantization") == "4bit":
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
        name=str(cfg.get("name")),
        hf=hf,
        tokenizer=tokenizer,
        lm=lm,
        path=path,
        chat_kwargs=dict(cfg.get("chat_template_kwargs") or {}),
        load_s=time.perf_counter() - t0,
    )
    _LOADED[key] = loaded
    return loaded


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
    expected = cfg.get("architecture")
    if expected and got and expected not in got:
        raise SteerexpError(
            f"model {cfg.get('name')!r} at {path!r} is a {', '.join(got)} checkpoint, but its config says "
            f"architecture={expected!r}; fix model.architecture or model.path"
        )


def select_layers(n_layers: int, layers: Any, layer_frac: Any) -> list[int]:
    """Explicit ``layers`` win; else every i with ``lo <= i / n_layers <= hi``."""
    if layers is not None:
        chosen = [int(i) for i in layers]
        bad = [i for i in chosen if not -n_layers <= i < n_layers]
        if bad or not chosen:
            raise SteerexpError(
                f"module.layers={list(layers)} is outside the model's {n_layers} layers "
                f"(valid: 0..{n_layers - 1}, or negative from the end)"
            )
        return sorted({i % n_layers for i in chosen})
    lo, hi = (float(x) for x in layer_frac)
    if not 0.0 <= lo <= hi <= 1.0:
        raise SteerexpError(f"module.layer_frac={[lo, hi]} must satisfy 0 <= lo <= hi <= 1")
    chosen = [i for i in range(n_layers) if lo <= i / n_layers <= hi]
    if not chosen:
        raise SteerexpError(
            f"module.layer_frac={[lo, hi]} selects no layer of a {n_layers}-layer model; widen it"
        )
    return chosen


def resolve_modules(loaded: LoadedModel, module_cfg: Mapping[str, Any]) -> list[str]:
    """Fill ``{N}`` in the template for the selected layers; every name must exist."""
    template = str(module_cfg["template"])
    if "{N}" not in template:
        raise SteerexpError(f"module.template={template!r} has no '{{N}}' layer placeholder")
    layers = select_layers(loaded.n_layers, module_cfg.get("layers"), module_cfg.get("layer_frac"))
    names = set(loaded.module_names())
    paths = [template.replace("{N}", str(i)) for i in layers]
    missing = [p for p in paths if p not in names]
    if missing:
        layer0 = template.replace("{N}", str(layers[0]))
        pool = sorted(n for n in names if re.fullmatch(r"model\.layers\.\d+(\..+)?", n))
        pool0 = [n.replace(f".{layers[0]}.", ".{N}.", 1) for n in pool if n.startswith(f"model.layers.{layers[0]}.")]
        close = difflib.get_close_matches(template, pool0, n=4, cutoff=0.3)
        hint = ", ".join(close) if close else ", ".join(pool0[:8])
        fused = _fused_siblings(template, pool0)
        note = f"this model fuses it into {', '.join(map(repr, fused))} (steer that module instead); " if fused else ""
        raise SteerexpError(
            f"module.template={template!r} matches no module of {loaded.name} ({layer0!r} missing); "
            f"{note}closest: {hint}"
        )
    return paths


def _fused_siblings(template: str, pool: list[str]) -> list[str]:
    """Modules beside a missing ``x_proj`` that fuse it with others (``gate_up_proj``, ``qkv_proj``)."""
    parent, _, leaf = template.rpartition(".")
    stem, sep, suffix = leaf.rpartition("_")
    if not sep or not stem:
        return []
    found = []
    for name in pool:
        head, _, other = name.rpartition(".")
        o_stem, o_sep, o_suffix = other.rpartition("_")
        if head != parent or other == leaf or not o_sep or o_suffix != suffix:
            continue
        parts = o_stem.split("_")
        if (stem in parts and len(parts) > 1) or (len(stem) == 1 and o_stem.isalpha() and stem in o_stem and len(o_stem) > 1):
            found.append(name)
    return found


#: Files of a local checkpoint dir that ``from_pretrained`` may read (what the fingerprint hashes).
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".jinja", ".txt", ".py", ".tiktoken")
#: Files above this size are fingerprinted by their size and 64 spread 1 MiB samples, not in full.
FULL_HASH_LIMIT = 1 << 30
_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    """sha256 of a file (sampled above :data:`FULL_HASH_LIMIT`), memoised by path, size and mtime."""
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        h = hashlib.sha256()
        with path.open("rb") as f:
            if st.st_size <= FULL_HASH_LIMIT:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            else:
                h.update(f"sampled:{st.st_size}".encode())
                for i in range(64):
                    f.seek(i * (st.st_size - (1 << 20)) // 63)
                    h.update(f.read(1 << 20))
        _DIGESTS[memo] = h.hexdigest()
    return _DIGESTS[memo]


def model_fingerprint(model_cfg: Mapping[str, Any], loaded: LoadedModel) -> dict[str, Any]:
    """What identifies the loaded checkpoint's content, independent of where it lives, so a copied
    or shared cache still hits: a local dir -> the sha256 of each file ``from_pretrained`` reads;
    a hub id -> the id, the requested revision and the commit it resolved to. Cache keys (e.g. the
    extraction key) use this instead of the checkpoint path."""
    if loaded.fingerprint is None:
        local = Path(loaded.path)
        if local.is_dir():
            files = sorted(
                f for f in local.iterdir()
                if f.is_file() and not f.name.startswith(".") and f.suffix in CHECKPOINT_SUFFIXES
            )
            loaded.fingerprint = {"files": {f.name: _file_digest(f) for f in files}}
        else:
            loaded.fingerprint = {
                "hub_id": loaded.path,
                "revision": model_cfg.get("revision"),
                "commit": getattr(loaded.hf.config, "_commit_hash", None),
            }
    return loaded.fingerprint


def _atomic_build(target: Path, make: Any) -> Path:
    """Build into a temp dir beside ``target`` and rename it into place (safe if interrupted)."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        make(tmp)
        apply_umask(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_tiny_random() -> Path:
    """A 4-layer random-weight Qwen3 with the organism's tokenizer: the fast test fixture."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from steerexp.organism import RECIPE_VERSION
    from steerexp.organism.tokenizer import build_tokenizer

    def make(out: Path) -> None:
        tok = build_tokenizer()
        torch.manual_seed(0)
        config = Qwen3Config(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=512,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
            tie_word_embeddings=False,
        )
        Qwen3ForCausalLM(config).save_pretrained(out)
        tok.save_pretrained(out)

    # The tokenizer comes from the organism's corpus, so its recipe version is part of the name.
    name = f"tiny_random-{TINY_RANDOM_VERSION}-tok{RECIPE_VERSION}"
    return _atomic_build(cache_dir() / "tiny_random" / name, make)


def build_organism() -> Path:
    from steerexp.organism import build

    return build()


BUILDERS = {"organism": build_organism, "tiny_random": build_tiny_random}
