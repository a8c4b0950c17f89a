"""Stage 3: scaled intervention ``h <- h + c * s * v`` on every target module.

The edit is written inside an nnsight trace or generation loop, so nothing is attached to
the model outside it: no hook outlives a run. A coefficient of exactly 0 adds exact zeros,
so those rows are bit-identical to the unsteered model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.optimize import brentq
from torch import Tensor

from steerexp.config.registry import Registry
from steerexp.models.loading import LoadedModel
from steerexp.models.steering import Steering, steered_logits
from steerexp.models.tokens import left_pad
from steerexp.store.results import Extraction

#: ``coeff_units`` options: name -> the size of one coefficient unit at a module, before any
#: calibration (``kl`` starts from ``norm`` and is then rescaled to the target KL).
COEFF_UNITS: Registry[Callable[[Extraction, str], float]] = Registry("coeff_units")
COEFF_UNITS.register("norm")(lambda ex, m: ex.act_norm(m))
COEFF_UNITS.register("raw")(lambda ex, m: 1.0)
COEFF_UNITS.register("kl")(lambda ex, m: ex.act_norm(m))
KL_TARGET = 1.0
KL_QUANTILE = 0.95


def base_scales(units: str, extraction: Extraction, modules: Sequence[str]) -> dict[str, float]:
    """``norm``/``kl``: mean activation norm of each module; ``raw``: 1."""
    unit = COEFF_UNITS.get(units)
    return {m: unit(extraction, m) for m in modules}


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
    and ``-c*``, on ``prompts`` (held-out neutral prompts, never the eval questions).

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
