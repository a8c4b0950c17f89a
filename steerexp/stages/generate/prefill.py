"""The prompt prefill of a generation chunk: the KV cache of every prompt token but the last.

Rows repeat each other's prompt work in two ways. The repeats of one (prompt, coefficient,
direction) share their whole steered prompt, so it is computed once per distinct row. And the
decoder blocks that run before the first steered module see no steering at all, so every
coefficient and direction of one prompt shares them: a grid of 7 coefficients, or a random
null of K directions, runs those blocks once per distinct prompt and replays their output and
KV cache for each of its rows, then runs the steered blocks on every row. A row's numbers are
the ones a single pass over all rows computes (a row of a matmul, a norm or an attention head
does not depend on the other rows of the batch), so samples are bit-identical.
``generate`` then runs from the last prompt token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

from steerexp.models.loading import LoadedModel
from steerexp.models.steering import added, hooked, untraced
from steerexp.models.tokens import model_inputs

#: the fewest rows a shared block is run on: a matmul row does not depend on the other rows
#: from 4 rows up, while below that a kernel may sum in another order
MIN_ROWS = 4


@cache
def _batch_invariant(width: int, dtype: torch.dtype, device: str, threads: int) -> bool:
    """Whether a row of a ``[rows, width] @ [width, width]`` matmul has the same bits at every
    batch size from :data:`MIN_ROWS` up, on this device, dtype and thread count: what sharing
    needs to leave samples bit-identical. Measured once per process (a BLAS may pick another
    kernel, summing in another order, by the number of rows: then sharing stays off)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, width, generator=g).to(device, dtype)
    w = torch.randn(width, width, generator=g).to(device, dtype)
    with torch.no_grad():
        full = torch.nn.functional.linear(x, w)
        return all(
            torch.equal(torch.nn.functional.linear(x[:n], w), full[:n])
            for n in (MIN_ROWS, MIN_ROWS + 1, 16, 57)
        )


class _Stop(Exception):
    """Raised by a hook to end a forward after the last block it needs."""


def shared_blocks(loaded: LoadedModel, modules: Sequence[str]) -> tuple[Any, int]:
    """The model's decoder blocks (the ``ModuleList`` of ``n_layers`` blocks holding every steered
    module) and how many leading blocks no steered module changes: a block whose own output is
    steered counts, as the shift is added after it. ``(None, 0)`` when there is no such list or
    a block would need more than its ``forward`` replaced (an accelerate hook), or where this
    device's matmuls are not batch-invariant (:func:`_batch_invariant`)."""
    if not modules:
        return None, 0
    for name, blocks in loaded.hf.named_modules():
        if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) != loaded.n_layers:
            continue
        counts = []
        for m in modules:
            index, _, inner = m.removeprefix(f"{name}.").partition(".")
            if not m.startswith(f"{name}.") or not index.isdigit():
                break
            counts.append(int(index) + (0 if inner else 1))
        else:
            k = min(counts)
            if any("_hf_hook" in b.__dict__ for b in blocks[:k]):
                return None, 0
            p = next(blocks.parameters(), None)
            width = getattr(loaded.hf.config, "hidden_size", None)
            if p is None or not width:
                return None, 0
            if not _batch_invariant(int(width), p.dtype, str(p.device), torch.get_num_threads()):
                return None, 0
            return blocks, k
    return None, 0


@contextmanager
def replaced(modules: Sequence[torch.nn.Module], forwards: Sequence[Any]) -> Iterator[None]:
    """Each module runs the matching function instead of its ``forward`` inside the block (its
    hooks still run); whatever ``forward`` its instance held before is put back on exit."""
    saved = [m.__dict__.get("forward") for m in modules]
    for m, fn in zip(modules, forwards, strict=True):
        m.__dict__["forward"] = fn
    try:
        yield
    finally:
        for m, fwd in zip(modules, saved, strict=True):
            if fwd is None:
                m.__dict__.pop("forward", None)
            else:
                m.__dict__["forward"] = fwd


def _rows(out: Any, index: Tensor) -> Any:
    """A block output (a tensor, or a tuple led by one) with its batch rows taken at ``index``."""
    return (out[0][index], *out[1:]) if isinstance(out, tuple) else out[index]


def _lower(
    loaded: LoadedModel, blocks: Any, k: int, ids: Tensor, mask: Tensor
) -> tuple[Any, Any] | None:
    """The first ``k`` blocks, unsteered, over the prompt tokens but the last: the ``k``-th block's
    output and the cache (its first ``k`` layers filled). None where the cache's layers are not
    the blocks' own (then the caller runs one whole pass)."""
    captured: list[Any] = []

    def stop(out: Any) -> None:
        captured.append(out)
        raise _Stop

    cache = DynamicCache(config=loaded.hf.config)
    none = torch.empty(0, dtype=torch.long, device=ids.device)
    with untraced(loaded.hf), hooked(blocks[k - 1], stop):
        try:
            loaded.hf(**model_inputs(ids, mask), cache=cache, use_cache=True, logits_to_keep=none)
        except _Stop:
            pass
    layers = getattr(cache, "layers", [])
    filled = [j for j, layer in enumerate(layers) if layer.get_seq_length() > 0]
    return (captured[0], cache) if captured and filled == list(range(k)) else None


def prefix_cache(
    loaded: LoadedModel,
    ids: Tensor,
    mask: Tensor,
    deltas: dict[str, Tensor],
    rows: Tensor,
    shared: tuple[Any, int],
) -> Any:
    """The KV cache of every prompt token but the last, for ``B`` rows of which only the
    distinct ones are computed: ``ids``/``mask``/``deltas`` hold the distinct rows, ``rows[i]``
    names the distinct row that row ``i`` repeats (e.g. the repeats of one question at one
    coefficient share their steered prompt). ``shared`` is :func:`shared_blocks` of the
    steered modules."""
    ids, mask = ids[:, :-1], mask[:, :-1]
    # ``logits_to_keep`` as an empty position list: the pass only fills the cache, and skips the
    # vocab projection (a whole decode step's worth of lm_head at a 152k vocab).
    none = torch.empty(0, dtype=torch.long, device=ids.device)
    prompts, which = torch.unique(torch.cat([ids, mask], 1), dim=0, return_inverse=True)
    blocks, k = shared
    with torch.no_grad():
        lower = None
        if k and len(prompts) < len(ids) and len(prompts) * ids.shape[1] >= MIN_ROWS:
            width = ids.shape[1]
            lower = _lower(loaded, blocks, k, prompts[:, :width], prompts[:, width:])
        if lower is None:
            with added(loaded, deltas):
                cache = loaded.hf(
                    **model_inputs(ids, mask), logits_to_keep=none, use_cache=True
                ).cache
        else:
            cache = _upper(loaded, blocks, k, ids, mask, deltas, which, *lower)
    if not torch.equal(rows, torch.arange(len(rows))):  # no row repeats another: keep as is
        cache.reorder_cache(rows.to(loaded.device))
    return cache


def _upper(
    loaded: LoadedModel,
    blocks: Any,
    k: int,
    ids: Tensor,
    mask: Tensor,
    deltas: dict[str, Tensor],
    which: Tensor,
    out: Any,
    lower: Any,
) -> Any:
    """The pass over every row with the first ``k`` blocks replayed from ``lower`` (row ``i`` is
    prompt ``which[i]``): each fills its cache layer with its prompts' keys and values, the
    ``k``-th hands on its output; the steered blocks run as usual."""
    which = which.to(ids.device)
    cache = DynamicCache(config=loaded.hf.config)
    for j in range(k):
        lower.layers[j].reorder_cache(which)
    top = _rows(out, which)

    def replay(j: int) -> Any:
        def forward(*args: Any, **kwargs: Any) -> Any:
            cache.layers[j] = lower.layers[j]
            return top if j == k - 1 else (args[0] if args else kwargs["hidden_states"])

        return forward

    none = torch.empty(0, dtype=torch.long, device=ids.device)
    with added(loaded, deltas), replaced(blocks[:k], [replay(j) for j in range(k)]):
        loaded.hf(**model_inputs(ids, mask), cache=cache, use_cache=True, logits_to_keep=none)
    return cache
