"""Coherence cost of steering per coefficient (issue 15): does a direction steer, or just break the model?

Per coefficient of the run's grid:

- ``kl``: mean per-token KL(steered || unsteered) over the real tokens of held-out neutral prompts
  (``kl.prompts``, never the eval questions); one forward pass per coefficient, no generation;
- ``valid_frac``: share of the run's generations the judge could score;
- ``mean_len``: mean completion length in generated tokens (counted at generation, never
  re-tokenised text: ids that decode to nothing still count);
- ``pmass_median`` / ``low_pmass_frac``: median probability mass on the answer options over the
  valid rows, and the share of valid rows below :data:`PMASS_MIN` -- a forced judge's
  ``valid_frac`` is 1 even when the model puts almost no mass on any option.

Summaries: ``kl_at_max`` (the KL at the largest |c| of the grid, worse sign) and ``coherent_max``
(the largest |c| whose every sign keeps ``valid_frac >= 0.8`` and ``kl <= 1`` nat; NaN when not
even c = 0 does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch

from steerexp.models.loading import LoadedModel
from steerexp.models.steering import Steering, steered_logits
from steerexp.models.tokens import left_pad

KL_MAX = 1.0
VALID_MIN = 0.8
#: a valid row whose answer options hold less probability than this is flagged (``low_pmass``)
PMASS_MIN = 0.1
COLUMNS = ["coeff", "kl", "valid_frac", "mean_len", "pmass_median", "low_pmass_frac"]


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
            "len": list(token_len),
        }
    )
    pmass = pd.to_numeric(dose["pmass"], errors="coerce") if "pmass" in dose else math.nan
    rows["pmass"] = pd.Series(pmass, index=rows.index).where(rows["valid"])
    rows["low"] = (rows["pmass"] < PMASS_MIN).where(rows["valid"]).astype(float)
    per = rows.groupby("coeff").agg(
        valid_frac=("valid", "mean"),
        mean_len=("len", "mean"),
        pmass_median=("pmass", "median"),
        low_pmass_frac=("low", "mean"),
    )
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


def pmass_summary(dose: pd.DataFrame, pmass_min: float = PMASS_MIN) -> dict[str, float]:
    """``pmass_median`` and ``low_pmass_frac`` over the run's valid rows (NaN without any)."""
    valid = dose["valid"].astype(bool)
    p = pd.to_numeric(dose.loc[valid, "pmass"], errors="coerce").dropna()
    if not len(p):
        return {"pmass_median": math.nan, "low_pmass_frac": math.nan}
    return {"pmass_median": float(p.median()), "low_pmass_frac": float((p < pmass_min).mean())}
