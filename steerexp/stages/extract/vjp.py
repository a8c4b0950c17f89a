"""Forward-pass directions for ``vjp_steer`` (issue 15): the read-layer contrast pulled back to a module.

``u = mean(h⁺ − h⁻)`` is the contrast of the read layer's hidden state at the read token (read
layer: the loss layer by default). For each row, the vector-Jacobian product ``Jᵀu`` of the map
from the steered module's output to that hidden state is the module-output change that moves the
read layer most along ``u``; one backward pass of ``<u, h_read>`` per batch gives it for every
row and module at once, without any ``d × d`` matrix. ``tokens: all`` sums it over positions
(the gradient of a bias added at every position, which is what the intervention adds),
``tokens: last`` keeps the read token only. The rows are cached under their own key (never
mixed with the loss gradients); the method's direction is their mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

from steerexp.config.errors import SteerexpError
from steerexp.config.schema import LossConfig
from steerexp.data.records import Pair
from steerexp.models.loading import LoadedModel
from steerexp.models.tokens import (
    encode_many,
    first_output,
    last_token_index,
    left_pad,
    model_inputs,
)
from steerexp.stages.extract.activations import cache_payload, extract, loss_layer_path
from steerexp.store import cache

VJP_VERSION = 1
TOKENS = ("all", "last")


def pullback(
    outs: Mapping[str, Tensor], h_read: Tensor, u: Tensor, mask: Tensor, tokens: str
) -> dict[str, Tensor]:
    """Per row, ``∂<u, h_read[row]>/∂ outs[m][row]`` (``[B, T, d]`` module outputs in the graph of
    ``h_read [B, d]``), summed over real positions (``all``) or at the read token (``last``)."""
    if tokens not in TOKENS:
        raise SteerexpError(f"method.tokens={tokens!r}; valid: {', '.join(TOKENS)}")
    target = (h_read.float() * u.to(h_read.device, torch.float32)).sum()
    names = list(outs)
    grads = torch.autograd.grad(target, [outs[m] for m in names], allow_unused=True)
    rows = torch.arange(mask.shape[0], device=mask.device)
    last = last_token_index(mask)
    result = {}
    for m, g in zip(names, grads, strict=True):
        g = torch.zeros_like(outs[m]) if g is None else g.detach().float()
        result[m] = (g * mask[..., None]).sum(1) if tokens == "all" else g[rows, last]
    return result


def vjp_rows(
    loaded: LoadedModel,
    model_cfg: Mapping[str, Any],
    modules: list[str],
    pairs: Sequence[Pair],
    read_layer: int,
    tokens: str,
    batch_size: int = 16,
    cache_root: Path | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Per module the ``[n, d]`` rows ``Jᵢᵀu`` (interleaved pairs, as ``acts``) and metadata;
    cached under ``cache_root`` by their own key."""
    if tokens not in TOKENS:
        raise SteerexpError(f"method.tokens={tokens!r}; valid: {', '.join(TOKENS)}")
    read_path = loss_layer_path(loaded.n_layers, int(read_layer))
    batch_size = max(2, int(batch_size) - int(batch_size) % 2)
    payload = {
        k: v
        for k, v in cache_payload(loaded, model_cfg, modules, {}, pairs, batch_size).items()
        if k != "loss"
    }
    payload["vjp"] = {"version": VJP_VERSION, "read": read_path, "tokens": tokens}
    key = cache.hash_key(payload)
    meta = {"vjp_key": key, "vjp_read": read_path, "vjp_tokens": tokens}
    if cache_root is not None and (hit := cache.load(cache_root, key)) is not None:
        return {m: hit[f"vjp/{m}"] for m in modules}, {**meta, "vjp_cached": True}
    read = extract(
        loaded,
        model_cfg,
        [read_path],
        OmegaConf.structured(LossConfig(name="nll", layer=int(read_layer))),
        pairs,
        batch_size,
        cache_root,
        progress=False,
        need_grads=False,
    )
    h = read.acts[read_path].double()
    u = (h[0::2] - h[1::2]).mean(0)
    convs = [p.messages(pos) for p in pairs for pos in (True, False)]
    seqs = [ids for ids, _ in encode_many(loaded.tokenizer, convs, loaded.chat_kwargs)]
    parts: dict[str, list[Tensor]] = {m: [] for m in modules}
    for start in range(0, len(seqs), batch_size):
        ids, mask = (
            t.to(loaded.device)
            for t in left_pad(seqs[start : start + batch_size], loaded.tokenizer.pad_token_id)
        )
        paths = loaded.forward_order([*modules, read_path])
        saved: list[Any] = []
        with loaded.lm.trace(model_inputs(ids, mask)):
            for p in paths:
                saved.append(loaded.envoy(p).output.save())
        outs = {p: first_output(o) for p, o in zip(paths, saved, strict=True)}
        rows = torch.arange(ids.shape[0], device=ids.device)
        h_read = outs[read_path][rows, last_token_index(mask)]
        for m, g in pullback({m: outs[m] for m in modules}, h_read, u, mask, tokens).items():
            if not torch.isfinite(g).all():
                raise SteerexpError(
                    f"non-finite vjp rows at module {m!r} in batch {start // batch_size}"
                )
            parts[m].append(g.cpu())
    out = {m: torch.cat(parts[m]) for m in modules}
    if cache_root is not None:
        cache.save(cache_root, key, {f"vjp/{m}": v for m, v in out.items()}, payload)
    return out, {**meta, "vjp_cached": False, "vjp_u_norm": float(u.norm())}
