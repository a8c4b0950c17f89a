"""Bootstrap refits of a run's direction: how much the slope moves when the direction is fit from
another sample of contrast pairs (``fit.bootstrap`` = B refits).

Refit ``b`` fits the run's method on the pairs drawn with replacement by
``numpy.random.default_rng([seed, b])`` (pair indices, so each pair's positive and negative rows
stay interleaved; the extraction is shared, so a refit is only a fit), oriented by the same
pair-vote rule on its own resample. All B refits' rows are one batched generation with per-row
directions, sampled with the run's own seed: a refit's coefficient-0 rows are the run's own
(the unsteered model, bit-identical), so only nonzero coefficients are generated. They are cached
like the null (``<cache>/refits/<key>/``, nested: refit ``b`` does not depend on B, so a larger B
extends a smaller one). A method whose registry entry is not ``refittable`` (``random``: its
direction does not use the pairs) has nothing to refit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from steerexp.models.steering import Steering
from steerexp.pipeline import steps
from steerexp.pipeline.checks import plain
from steerexp.pipeline.reference import nested_rows, reference_rows, slope_table
from steerexp.pipeline.state import RunState, need
from steerexp.stages.fit.methods import METHODS, fit_from_config
from steerexp.stages.intervene.scales import base_scales
from steerexp.store import cache
from steerexp.store.columns import DOSE_COLUMNS
from steerexp.store.results import Extraction


@dataclass
class Refits:
    """``stats``: ``n_refits``, ``refit_slope_sd``, ``fit_cos``; ``table``: ``refit, slope, cos``."""

    stats: dict[str, Any]
    table: pd.DataFrame


def resample_rows(n_pairs: int, b: int, seed: int) -> torch.Tensor:
    """Row indices of bootstrap resample ``b``: ``n_pairs`` pairs drawn with replacement, each as
    its (positive, negative) rows."""
    idx = np.random.default_rng([int(seed), int(b)]).integers(0, n_pairs, n_pairs)
    return torch.from_numpy(np.stack([2 * idx, 2 * idx + 1], axis=1).reshape(-1))


def refit_directions(
    cfg: DictConfig, modules: list[str], ex: Extraction, rows: dict[str, torch.Tensor], n: int
) -> list[dict[str, torch.Tensor]]:
    """The unit directions of refits ``0 .. n - 1`` (``rows``: the method's gradient rows)."""
    n_pairs = next(iter(ex.acts.values())).shape[0] // 2
    out = []
    for b in range(n):
        r = resample_rows(n_pairs, b, int(cfg.seed))
        lgn = None if ex.loss_grad_norms is None else ex.loss_grad_norms[r]
        out.append(
            {
                m: fit_from_config(
                    cfg.method,
                    ex.acts[m][r],
                    rows[m][r] if m in rows else None,
                    lgn,
                    seed=int(cfg.seed),
                ).vector
                for m in modules
            }
        )
    return out


def mean_cos(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Cosine of two direction sets, averaged over modules."""
    return float(
        np.mean(
            [
                float(torch.nn.functional.cosine_similarity(a[m].double(), b[m].double(), 0))
                for m in a
            ]
        )
    )


def bootstrap_refits(state: RunState) -> Refits:
    """Fit, generate and judge the run's B refits (cached) and summarise their slopes."""
    cfg, model, ex = state.cfg, need(state, "model"), need(state, "extraction")
    steering = need(state, "intervention").steering
    n = int(cfg.fit.bootstrap)
    if n == 0 or not METHODS.get(str(cfg.method.kind)).refittable:
        return Refits(
            {"n_refits": 0, "refit_slope_sd": math.nan, "fit_cos": math.nan},
            pd.DataFrame(columns=["refit", "slope", "cos"]),
        )
    directions = refit_directions(cfg, model.modules, ex, need(state, "directions").rows, n)
    base = base_scales(str(cfg.coeff_units), ex, model.modules)
    coeffs = state.inputs.coeffs
    payload = {
        "run": steps.group_payload(cfg, state.inputs, ex.acts_key),
        **steps.steering_id(steering),
        "refits": {"method": plain(cfg.method), "key": ex.key, "nested": True},
    }

    def build(start: int, cs: Any, _personas: bool) -> pd.DataFrame:
        steerings = [
            steps.scale(cfg, model, Steering(v, base)).steering for v in directions[start:n]
        ]
        rows = reference_rows(state, cs, steerings, {})
        return rows.assign(direction=rows["direction"] + start)

    dose = need(state, "judged").dose
    zero = dose.loc[dose["coeff"] == 0.0, DOSE_COLUMNS]
    entry = steps.cache_root(cfg) / "refits" / cache.hash_key(payload)
    refit_dose, _, _ = nested_rows(entry, n, coeffs, build, zero=zero)
    slopes = slope_table(refit_dose, ["direction"], str(cfg.regress_x))
    table = pd.DataFrame(
        {
            "refit": np.arange(n),
            "slope": slopes.set_index("direction")["slope"].reindex(range(n)).to_numpy(),
            "cos": [mean_cos(d, steering.vectors) for d in directions],
        }
    )
    s = table["slope"].to_numpy(dtype=np.float64)
    s = s[np.isfinite(s)]
    return Refits(
        {
            "n_refits": n,
            "refit_slope_sd": float(s.std(ddof=1)) if len(s) > 1 else math.nan,
            "fit_cos": float(table["cos"].mean()),
        },
        table,
    )
