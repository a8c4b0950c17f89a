"""Coherence cost of steering per coefficient (issue 15): does a direction steer, or just break the model?

Per coefficient of the run's grid:

- ``kl``: mean per-token KL(steered || unsteered) over the real tokens of held-out neutral prompts
  (``kl.prompts``, never the eval questions); one forward pass per coefficient, no generation;
- ``valid_frac``: share of the run's generations the judge could score;
- ``mean_len``: mean completion length in tokens.

Summaries: ``kl_at_max`` (the KL at the largest |c| of the grid, worse sign) and ``coherent_max``
(the largest |c| whose every sign keeps ``valid_frac >= 0.8`` and ``kl <= 1`` nat; NaN when not
even c = 0 does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch

from steerexp.core.models import LoadedModel
from steerexp.core.steering import Steering, steered_logits
from steerexp.core.tokens import left_pad

KL_MAX = 1.0
VALID_MIN = 0.8
COLUMNS = ["coeff", "kl", "valid_frac", "mean_len"]


def mean_token_kl(
    loaded: LoadedModel, prompts: Sequence[list[int]], steering: Steering, coeffs: Sequence[float]
) -> list[float]:
    """Mean over real tokens of KL(steered || unsteered) for each coefficient (exactly 0 at c = 0)."""
    ids, mask = left_pad(prompts, loaded.tokenizer.pad_token_id)
    real = mask.bool()
    lp_u = torch.log_softmax(steered_logits(loaded, ids, mask, None, None).float(), -1)
    out = []
    for c in coeffs:
        if c == 0:
            out.append(0.0)
            continue
        rows = torch.full((ids.shape[0],), float(c))
        lp_s = torch.log_softmax(steered_logits(loaded, ids, mask, steering, rows).float(), -1)
        kl = (lp_s.exp() * (lp_s - lp_u)).sum(-1)
        out.append(float(kl[real.to(kl.device)].mean().clamp_min(0.0)))
    return out


def cost_table(
    kl: Sequence[float], coeffs: Sequence[float], dose: pd.DataFrame, token_len: Sequence[int]
) -> pd.DataFrame:
    """:data:`COLUMNS` per coefficient from the KLs and the run's judged rows (``token_len`` = each
    row's completion length in tokens)."""
    rows = pd.DataFrame(
        {
            "coeff": dose["coeff"].astype(float),
            "valid": dose["valid"].astype(bool),
            "len": token_len,
        }
    )
    per = rows.groupby("coeff").agg(valid_frac=("valid", "mean"), mean_len=("len", "mean"))
    table = pd.DataFrame({"coeff": [float(c) for c in coeffs], "kl": [float(k) for k in kl]})
    return table.join(per, on="coeff")[COLUMNS]


def summary(
    table: pd.DataFrame, kl_max: float = KL_MAX, valid_min: float = VALID_MIN
) -> dict[str, float]:
    """``kl_at_max`` and ``coherent_max`` (see the module doc) from a :func:`cost_table`."""
    mag = table["coeff"].abs()
    ok = (table["valid_frac"] >= valid_min) & (table["kl"] <= kl_max)
    per_mag = ok.groupby(mag).all()
    coherent = per_mag[per_mag].index
    return {
        "kl_at_max": float(table.loc[mag == mag.max(), "kl"].max()) if len(table) else math.nan,
        "coherent_max": float(coherent.max()) if len(coherent) else math.nan,
    }


def completion_lengths(loaded: LoadedModel, completions: Sequence[str]) -> list[int]:
    """Length in tokens of each completion (empty or missing text counts 0)."""
    texts = ["" if not isinstance(t, str) else t for t in completions]
    return [len(ids) for ids in loaded.tokenizer(texts, add_special_tokens=False).input_ids]
