"""Stage 1: activations and loss gradients of the target modules on contrast pairs.

Pairs are rendered with the chat template (persona as the user turn, the suffix as the
open start of the assistant turn), padded on the left and read at the last non-padding
token. One nnsight trace per batch records every target module's output, the loss-layer
output and the logits; the loss and its gradients with respect to those outputs are then
taken with ``torch.autograd`` on the recorded graph (parameters stay frozen).

Activations are cached under a loss-free key (``acts_key``), gradients, ``logp`` and
``loss_grad_norms`` under a key that adds the loss: a loss sweep reuses one activation
extraction, and activation methods never run the backward pass.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from steerexp.config.errors import SteerexpError
from steerexp.data.records import Pair
from steerexp.models.loading import LoadedModel, model_fingerprint
from steerexp.models.tokens import (
    encode_many,
    first_output,
    last_token_index,
    left_pad,
    model_inputs,
)
from steerexp.stages.extract.balance import combine, has_terms
from steerexp.stages.extract.gradients import loss_gradients
from steerexp.stages.extract.losses import LOSSES
from steerexp.store import cache, context
from steerexp.store.results import Extraction

EXTRACT_VERSION = 2


def loss_layer_path(n_layers: int, layer: int) -> str:
    """The module whose output is HF's ``output_hidden_states[layer]``: 0 = the embedding output,
    ``k`` = the output of block ``k - 1``, ``n_layers`` (= -1) = the final norm's output
    (negative ``layer`` counts from the end, as in Python)."""
    k = int(layer)
    if not -(n_layers + 1) <= k <= n_layers:
        raise SteerexpError(
            f"loss.layer={layer} is not a hidden_states index of a {n_layers}-layer model; "
            f"valid: 0..{n_layers} or -{n_layers + 1}..-1 (0 = embeddings, -1 = final norm output)"
        )
    k %= n_layers + 1
    if k == 0:
        return "model.embed_tokens"
    return "model.norm" if k == n_layers else f"model.layers.{k - 1}"


def cache_payload(
    loaded: LoadedModel,
    model_cfg: Mapping[str, Any],
    modules: list[str],
    loss_cfg: Mapping[str, Any],
    pairs: Sequence[Pair],
    batch_size: int,
) -> dict[str, Any]:
    """Everything an extraction depends on; its hash is the cache key. ``model_cfg`` and
    ``loss_cfg`` are typed sections (the run's, or typed by the public call that took a dict)."""
    return {
        "version": EXTRACT_VERSION,
        "model": {k: model_cfg[k] for k in ("dtype", "quantization")},
        "checkpoint": model_fingerprint(model_cfg, loaded),
        "chat_kwargs": loaded.chat_kwargs,
        "modules": modules,
        "loss": dict(loss_cfg),
        "pairs": cache.hash_key([p.key() for p in pairs]),
        "n_pairs": len(pairs),
        "batch_size": batch_size,
    }


def _run_batch(
    loaded: LoadedModel,
    modules: list[str],
    loss_path: str,
    loss_cfg: Mapping[str, Any],
    seqs: list[tuple[list[int], int]],
    n_pairs_total: int,
    batch_no: int,
    grad_tokens: str,
    need_grads: bool = True,
) -> dict[str, Tensor]:
    tok = loaded.tokenizer
    ids, mask = left_pad([s for s, _ in seqs], tok.pad_token_id)
    width = ids.shape[1]
    tmask = torch.zeros_like(mask)
    for i, (s, n_suffix) in enumerate(seqs):
        if loss_cfg["tokens"] == "suffix":
            tmask[i, width - n_suffix :] = 1
        else:
            tmask[i, width - len(s) + 1 :] = 1
    ids, mask, tmask = (t.to(loaded.device) for t in (ids, mask, tmask))
    # Without gradients only the target modules' outputs are read: no autograd graph, and the
    # forward stops after the last of them (the later blocks and the LM head never run).
    paths = loaded.forward_order([*modules, loss_path] if need_grads else list(modules))
    saved: list[Any] = []
    logits = None
    with (
        torch.set_grad_enabled(need_grads),
        loaded.lm.trace(model_inputs(ids, mask)) as tracer,
    ):
        for p in paths:
            saved.append(loaded.envoy(p).output.save())
        if need_grads:
            logits = loaded.lm.output.logits.save()
        else:
            tracer.stop()
    outs = {p: first_output(o) for p, o in zip(paths, saved, strict=True)}
    rows = torch.arange(ids.shape[0], device=ids.device)
    last = last_token_index(mask)
    result = {f"acts/{m}": outs[m][rows, last].detach().float().cpu() for m in modules}
    if need_grads:
        assert logits is not None
        result.update(
            loss_gradients(
                outs,
                logits,
                ids,
                mask,
                tmask,
                rows,
                last,
                modules,
                loss_path,
                loss_cfg,
                n_pairs_total,
                grad_tokens,
            )
        )
    for key, value in result.items():
        if key.startswith("acts/") or "grads/" in key:
            if not torch.isfinite(value).all():
                name = "activations" if key.startswith("acts/") else "gradients"
                m = key.split("/", 1)[1] if key.startswith("acts/") else key.split("grads/", 1)[1]
                raise SteerexpError(
                    f"non-finite {name} at module {m!r} in extraction batch {batch_no}"
                )
    return result


def _lookup(root: Path | None, key: str) -> tuple[dict[str, Tensor] | None, bool]:
    """Tensors of a cache entry from memory, else disk; and whether they came from disk."""
    memo = context.current().extractions
    if key in memo:
        return memo[key], False
    if root is not None and (tensors := cache.load(root, key)) is not None:
        memo[key] = tensors
        return tensors, True
    return None, False


def extract(
    loaded: LoadedModel,
    model_cfg: Mapping[str, Any],
    modules: list[str],
    loss_cfg: Mapping[str, Any],
    pairs: Sequence[Pair],
    batch_size: int = 16,
    cache_root: Path | None = None,
    progress: bool = True,
    grad_tokens: str = "all",
    need_grads: bool = True,
) -> Extraction:
    """Extract (or reuse) activations and, with ``need_grads``, gradients; batches hold whole pairs.
    ``model_cfg`` and ``loss_cfg``: typed sections (:func:`steerexp.config.compose.typed`)."""
    if not pairs:
        raise SteerexpError("the contrast set is empty: no pairs to extract")
    LOSSES.get(str(loss_cfg["name"]))
    loss_path = loss_layer_path(loaded.n_layers, int(loss_cfg["layer"]))
    batch_size = max(2, int(batch_size) - int(batch_size) % 2)
    payload = cache_payload(loaded, model_cfg, modules, loss_cfg, pairs, batch_size)
    acts_payload = {k: v for k, v in payload.items() if k != "loss"}
    payload["grad_tokens"] = grad_tokens
    acts_key, grads_key = cache.hash_key(acts_payload), cache.hash_key(payload)
    t0 = time.perf_counter()
    acts, acts_disk = _lookup(cache_root, acts_key)
    grads, grads_disk = _lookup(cache_root, grads_key) if need_grads else ({}, False)
    if need_grads and grads is not None and has_terms(loss_cfg) and "logp" in grads:
        if not any(k.startswith("term/") for k in grads):
            grads = None  # an entry from before per-term gradients were kept
    cached = acts is not None and grads is not None
    if not cached:
        acts, grads = _compute(
            loaded,
            modules,
            loss_path,
            loss_cfg,
            pairs,
            batch_size,
            grad_tokens,
            need_grads,
            progress,
        )
    assert acts is not None and grads is not None
    balance: dict[str, Any] = {}
    if need_grads and has_terms(loss_cfg):
        combined, balance = combine(grads, loss_cfg, modules)
        grads = {**grads, **combined}
    if not cached:
        memo = context.current().extractions
        for key, tensors, meta in ((acts_key, acts, acts_payload), (grads_key, grads, payload)):
            if tensors and key not in memo:
                memo[key] = tensors
                if cache_root is not None:
                    info = balance if key == grads_key else None
                    cache.save(cache_root, key, tensors, meta, info=info)
    return Extraction(
        modules=list(modules),
        acts={m: acts[f"acts/{m}"] for m in modules},
        grads={m: grads[f"grads/{m}"] for m in modules} if need_grads else {},
        logp=grads.get("logp"),
        loss_grad_norms=grads.get("loss_grad_norms"),
        key=grads_key if need_grads else acts_key,
        cached=cached,
        seconds=time.perf_counter() - t0,
        meta={**payload, "disk_hit": acts_disk or grads_disk},
        acts_key=acts_key,
        balance=balance,
    )


def _compute(
    loaded: LoadedModel,
    modules: list[str],
    loss_path: str,
    loss_cfg: Mapping[str, Any],
    pairs: Sequence[Pair],
    batch_size: int,
    grad_tokens: str,
    need_grads: bool,
    progress: bool,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Run every batch; returns the activation tensors and the gradient-side tensors."""
    convs = [p.messages(positive) for p in pairs for positive in (True, False)]
    seqs = encode_many(loaded.tokenizer, convs, loaded.chat_kwargs)
    parts: list[dict[str, Tensor]] = []
    bar = tqdm(
        range(0, len(seqs), batch_size),
        desc=f"extract {loss_cfg['name'] if need_grads else 'activations'}",
        disable=not progress,
        leave=False,
    )
    for b, start in enumerate(bar):
        parts.append(
            _run_batch(
                loaded,
                modules,
                loss_path,
                loss_cfg,
                seqs[start : start + batch_size],
                len(pairs),
                b,
                grad_tokens,
                need_grads,
            )
        )
    tensors = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    acts = {k: v for k, v in tensors.items() if k.startswith("acts/")}
    return acts, {k: v for k, v in tensors.items() if not k.startswith("acts/")}
