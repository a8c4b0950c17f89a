"""The steering value and how it is applied: ``h <- h + c * s * v`` on every target module (SPEC 4.4).

The edit is written inside an nnsight trace or generation loop, so nothing is attached to
the model outside it: no hook outlives a run. A coefficient of exactly 0 adds exact zeros,
so those rows are bit-identical to the unsteered model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from steerexp.core.models import LoadedModel
from steerexp.core.tokens import model_inputs


@dataclass
class Steering:
    """Unit directions and their per-module scale ``s`` (one coefficient unit, in activation space)."""

    vectors: dict[str, Tensor]
    scales: dict[str, float]

    def scaled(self, factor: float) -> Steering:
        return Steering(self.vectors, {m: s * factor for m, s in self.scales.items()})


def shifts(steering: Steering, coeffs: Tensor, device: torch.device) -> dict[str, Tensor]:
    """Per module, the ``[B, 1, d]`` float32 shift ``coeffs[row] * s * v`` (exact zeros at c = 0)."""
    c = coeffs.to(device, torch.float32)[:, None, None]
    return {
        m: c * (steering.scales[m] * steering.vectors[m].to(device, torch.float32))
        for m in steering.vectors
    }


def steer(loaded: LoadedModel, deltas: dict[str, Tensor]) -> None:
    """Inside a trace or generation step: add each module's shift to its output, in the order the
    model runs them (:meth:`LoadedModel.forward_order`), whatever order ``deltas`` has."""
    for m in loaded.forward_order(list(deltas)):
        delta = deltas[m]
        envoy = loaded.envoy(m)
        out = envoy.output
        h = out[0] if isinstance(out, tuple) else out
        new = h + delta.to(h.dtype)
        envoy.output = (new, *out[1:]) if isinstance(out, tuple) else new


def steered_logits(
    loaded: LoadedModel, ids: Tensor, mask: Tensor, steering: Steering | None, coeffs: Tensor | None
) -> Tensor:
    """Logits of one forward pass, steered per row (or not at all)."""
    ids, mask = ids.to(loaded.device), mask.to(loaded.device)
    deltas = (
        shifts(steering, coeffs, loaded.device)
        if steering is not None and coeffs is not None
        else {}
    )
    with torch.no_grad(), loaded.lm.trace(model_inputs(ids, mask)):
        steer(loaded, deltas)
        logits = loaded.lm.output.logits.save()
    return logits


def steered_prefix_cache(
    loaded: LoadedModel, ids: Tensor, mask: Tensor, deltas: dict[str, Tensor], rows: Tensor
) -> Any:
    """The KV cache of every prompt token but the last, for ``B`` rows of which only the
    distinct ones are computed: ``ids``/``mask``/``deltas`` hold the distinct rows, ``rows[i]``
    names the distinct row that row ``i`` repeats (e.g. the repeats of one question at one
    coefficient share their steered prompt). ``generate`` then runs from the last token."""
    # ``logits_to_keep`` as an empty position list: the pass only fills the cache, and skips the
    # vocab projection (a whole decode step's worth of lm_head at a 152k vocab).
    none = torch.empty(0, dtype=torch.long, device=ids.device)
    with (
        torch.no_grad(),
        loaded.lm.trace(model_inputs(ids[:, :-1], mask[:, :-1]), logits_to_keep=none),
    ):
        steer(loaded, deltas)
        cache = loaded.lm.output.cache.save()
    cache.reorder_cache(rows.to(loaded.device))
    return cache
