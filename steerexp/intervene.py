"""Stage 3: scaled intervention ``h <- h + c * s * v`` on every target module (SPEC 4.4).

The edit is written inside an nnsight trace or generation loop, so nothing is attached to
the model outside it: no hook outlives a run. A coefficient of exactly 0 adds exact zeros,
so those rows are bit-identical to the unsteered model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import brentq
from torch import Tensor

from steerexp.errors import choice_error
from steerexp.extract import Extraction, left_pad, model_inputs
from steerexp.models import LoadedModel

COEFF_UNITS = ("norm", "raw", "kl")
KL_TARGET = 1.0
KL_QUANTILE = 0.95


@dataclass
class Steering:
    """Unit directions and their per-module scale ``s`` (one coefficient unit, in activation space)."""

    vectors: dict[str, Tensor]
    scales: dict[str, float]

    def scaled(self, factor: float) -> Steering:
        return Steering(self.vectors, {m: s * factor for m, s in self.scales.items()})


def base_scales(units: str, extraction: Extraction, modules: Sequence[str]) -> dict[str, float]:
    """``norm``/``kl``: mean activation norm of each module; ``raw``: 1."""
    if units not in COEFF_UNITS:
        raise choice_error("coeff_units", units, COEFF_UNITS)
    if units == "raw":
        return {m: 1.0 for m in modules}
    return {m: extraction.act_norm(m) for m in modules}


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


def kl_quantile(
    loaded: LoadedModel, ids: Tensor, mask: Tensor, base: Tensor, steering: Steering, c: float
) -> float:
    """95th percentile over real tokens of KL(steered || unsteered) at coefficient ``c``."""
    coeffs = torch.full((ids.shape[0],), float(c))
    logits = steered_logits(loaded, ids, mask, steering, coeffs)
    lp_s = torch.log_softmax(logits.float(), -1)
    lp_u = torch.log_softmax(base.float(), -1)
    kl = (lp_s.exp() * (lp_s - lp_u)).sum(-1)
    return float(torch.quantile(kl[mask.to(kl.device).bool()], KL_QUANTILE))


def neutral_prompt_ids(loaded: LoadedModel, texts: Sequence[str]) -> list[list[int]]:
    """Each neutral prompt as a chat-templated user turn with the generation prompt."""
    out = []
    for text in texts:
        rendered = loaded.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}],
            tokenize=False,
            add_generation_prompt=True,
            **loaded.chat_kwargs,
        )
        out.append(loaded.tokenizer(rendered, add_special_tokens=False).input_ids)
    return out


def calibrate_kl(
    loaded: LoadedModel, prompts: Sequence[list[int]], steering: Steering, rtol: float = 0.02
) -> dict[str, float]:
    """Find ``c*`` whose p95 per-token KL(steered || unsteered) is 1 nat at the worse of ``+c*``
    and ``-c*`` (SPEC 4.4), on ``prompts`` (held-out neutral prompts, never the eval questions).

    Brackets by doubling/halving from ``c = 0.1`` (in the steering's units), then solves
    ``log max(p95(+c), p95(-c)) = 0`` in ``log c`` with Brent's method. The grid is then read in
    multiples of ``c*`` (the scales returned by ``Steering.scaled(c*)``).
    """
    ids, mask = left_pad(prompts, loaded.tokenizer.pad_token_id)
    base = steered_logits(loaded, ids, mask, None, None)

    def worse(c: float) -> tuple[float, float]:
        return (
            kl_quantile(loaded, ids, mask, base, steering, c),
            kl_quantile(loaded, ids, mask, base, steering, -c),
        )

    def f(log_c: float) -> float:
        return math.log(max(*worse(math.exp(log_c)), 1e-12)) - math.log(KL_TARGET)

    lo = hi = math.log(0.1)
    f_lo = f_hi = f(lo)
    for _ in range(40):
        if f_lo <= 0 <= f_hi:
            break
        if f_hi < 0:
            lo, f_lo, hi = hi, f_hi, hi + math.log(2)
            f_hi = f(hi)
        else:
            hi, f_hi, lo = lo, f_lo, lo - math.log(2)
            f_lo = f(lo)
    else:
        raise RuntimeError("could not bracket the iso-KL coefficient (KL never reached 1 nat)")
    log_c = lo if f_lo == 0 else brentq(f, lo, hi, rtol=rtol, xtol=1e-4)
    c_star = float(np.exp(log_c))
    plus, minus = worse(c_star)
    return {
        "c_star": c_star,
        "kl_p95_at_c_star": max(plus, minus),
        "kl_p95_plus": plus,
        "kl_p95_minus": minus,
        "kl_n_prompts": len(prompts),
    }
