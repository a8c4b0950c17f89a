"""Hub-shaped models without downloads: a ``conf/model`` architecture with seeded random weights.

``model.random_init=true`` turns any model config into a locally built checkpoint of the same
architecture: the real ``config.json`` of a hub model ships in ``steerexp/hub_configs/<org>--<name>/``
(a local or built model uses its own), ``model.num_layers`` keeps only the first N blocks (CPU
runs), ``model.config_overrides`` sets any other config field (tests shrink the width with it),
and the weights are drawn by transformers' own initialiser under ``torch.manual_seed(SEED)``.
The result is saved unquantized in ``model.dtype`` with ``save_pretrained`` (a 4-bit/8-bit config
quantizes it while loading, as it would hub weights) under ``<cache>/random_init/`` and then loads through
the same ``from_pretrained`` path as every model (the hook is :func:`steerexp.models.checkpoints.checkpoint_path`).

Tokenizer: a hub model's own tokenizer cannot be downloaded, so hub-shaped models get the
organism's byte-level BPE tokenizer (1026 ids, Qwen-style ChatML template; shipped with the
package). Its ids lie far below every hub vocab (151552-151936 rows are kept, so the embedding and
``lm_head`` have their real cost); ids it does not know decode to nothing. Token ids in the
config (eos, pad, bos) are set to the tokenizer's. A local or built model keeps its own tokenizer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from steerexp import cache_dir
from steerexp.config.errors import SteerexpError
from steerexp.models.builders import DTYPES, atomic_build, base_path

HUB_CONFIGS = Path(__file__).resolve().parents[1] / "hub_configs"
ORGANISM_TOKENIZER = Path(__file__).resolve().parents[1] / "organism" / "checkpoint"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
#: Weights are drawn under this seed (and the build's cache key records it).
SEED = 0
VERSION = "v1"


def shipped() -> list[str]:
    """Hub ids whose ``config.json`` ships with steerexp."""
    return sorted(
        p.name.replace("--", "/", 1) for p in HUB_CONFIGS.iterdir() if (p / "config.json").exists()
    )


def hub_config_path(hub_id: str) -> Path:
    """The shipped ``config.json`` of ``hub_id`` (clear error naming the shipped ones if absent)."""
    path = HUB_CONFIGS / hub_id.replace("/", "--", 1) / "config.json"
    if not path.exists():
        raise SteerexpError(
            f"model.random_init=true needs the config.json of {hub_id!r}, which steerexp does not ship; "
            f"shipped: {', '.join(shipped())} (or point model.path at a local checkpoint dir)"
        )
    return path


def validate(cfg: Mapping[str, Any]) -> None:
    """``num_layers``/``config_overrides`` only mean something with ``random_init``."""
    flag = cfg["random_init"]
    extra = [k for k in ("num_layers", "config_overrides") if cfg[k]]
    if extra and not flag:
        raise SteerexpError(
            f"model.{extra[0]}={cfg[extra[0]]!r} only applies with model.random_init=true; "
            "set it, or drop the override"
        )


def source(cfg: Mapping[str, Any]) -> tuple[dict[str, Any], Path]:
    """The architecture's config dict and the directory its tokenizer comes from."""
    if cfg["builder"] is not None or Path(str(cfg["path"])).expanduser().is_dir():
        local = Path(base_path(cfg)).expanduser()
        return json.loads((local / "config.json").read_text()), local
    return json.loads(hub_config_path(str(cfg["path"])).read_text()), ORGANISM_TOKENIZER


def shaped_config(
    cfg: Mapping[str, Any], base: Mapping[str, Any], tokenizer: Any
) -> dict[str, Any]:
    """``base`` with ``num_layers``, ``config_overrides`` and the tokenizer's special ids applied."""
    out = dict(base)
    n = cfg["num_layers"]
    if n is not None:
        if (
            not isinstance(n, int)
            or isinstance(n, bool)
            or not 1 <= n <= int(base["num_hidden_layers"])
        ):
            raise SteerexpError(
                f"model.num_layers={n!r} must be an integer in 1..{base['num_hidden_layers']} "
                "(the architecture's depth) or null"
            )
        out["num_hidden_layers"] = n
        out.pop("layer_types", None)
    out.update(dict(cfg["config_overrides"]))
    if int(out["vocab_size"]) < len(tokenizer):
        raise SteerexpError(
            f"vocab_size={out['vocab_size']} is smaller than the tokenizer's {len(tokenizer)} ids; "
            "raise model.config_overrides.vocab_size"
        )
    out.update(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    return out


def build(cfg: Mapping[str, Any]) -> Path:
    """Build (or reuse) the random-weight checkpoint of the typed model config ``cfg``; returns
    its directory."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    base, tok_dir = source(cfg)
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    config = shaped_config(cfg, base, tokenizer)
    tok_blob = b"".join(
        (tok_dir / f).read_bytes() for f in TOKENIZER_FILES if (tok_dir / f).exists()
    )
    key = json.dumps(
        {
            "config": config,
            "dtype": cfg["dtype"],
            "seed": SEED,
            "version": VERSION,
            "tokenizer": hashlib.sha256(tok_blob).hexdigest(),
        },
        sort_keys=True,
    )
    name = f"{cfg['name']}-L{config['num_hidden_layers']}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"

    def make(out: Path) -> None:
        (out / "config.json").write_text(json.dumps(config, indent=2))
        hf_config = AutoConfig.from_pretrained(str(out))
        torch.manual_seed(SEED)
        model = AutoModelForCausalLM.from_config(hf_config, dtype=DTYPES[cfg["dtype"]])
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "random_init.json").write_text(key)

    return atomic_build(cache_dir() / "random_init" / name, make)
