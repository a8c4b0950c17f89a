"""Loss balance for losses with several terms (issue 15): each term's value and share of the gradient.

The journal asked whether reprpo_margin's NLL margin is "balanced right". Extraction takes the
gradient of every term separately (``term/<t>/grads/<module>`` rows, ``term/<t>/value``, and the
per-row dot products of the terms' loss-layer gradients, ``term/<t>/dot/<t2>``); this module
weights and sums them into the loss gradients the methods use. A term's share at a module is
``‖w_t G_t‖ / Σ_t' ‖w_t' G_t'‖`` (Frobenius norms of the ``[n, d]`` gradient rows); the overall
share uses the norms over all steered modules together. ``<weight key>: auto`` (``beta: auto``)
solves that overall share to equal ``balance_target`` (default 0.5) in closed form, since a
term's gradient is linear in its weight.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from steerexp.config.errors import SteerexpError
from steerexp.stages.extract.losses import LOSS_TERMS


def has_terms(loss_cfg: Mapping[str, Any]) -> bool:
    return str(loss_cfg["name"]) in LOSS_TERMS


def _weights(
    loss_cfg: Mapping[str, Any], norms: Mapping[str, float]
) -> tuple[dict[str, float], str | None]:
    """Each term's weight; solves the one ``auto`` weight (if any) for the target share
    (``loss_cfg`` typed: its schema has checked the weights and the target)."""
    terms = LOSS_TERMS[str(loss_cfg["name"])]
    weights: dict[str, float] = {}
    auto = [t for t, (_, key) in terms.items() if key is not None and loss_cfg[key] == "auto"]
    for t, (_, key) in terms.items():
        if key is None or t in auto:
            weights[t] = 1.0
        else:
            weights[t] = float(loss_cfg[key])
    if not auto:
        return weights, None
    (t_auto,) = auto
    target = float(loss_cfg["balance_target"])
    rest = sum(weights[t] * norms[t] for t in terms if t != t_auto)
    if not norms[t_auto] > 0:
        raise SteerexpError(
            f"loss.{terms[t_auto][1]}=auto: the {t_auto!r} term has zero gradient at the steered "
            "modules, so no weight gives it a share; set a number"
        )
    weights[t_auto] = target * rest / ((1 - target) * norms[t_auto])
    return weights, t_auto


def combine(
    tensors: Mapping[str, Tensor], loss_cfg: Mapping[str, Any], modules: Sequence[str]
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``grads/<m>`` and ``loss_grad_norms`` of the weighted loss, and the balance record
    (flat, for ``metrics.json``): weights, weighted term values, overall and per-module shares."""
    names = list(LOSS_TERMS[str(loss_cfg["name"])])
    g = {t: {m: tensors[f"term/{t}/grads/{m}"].double() for m in modules} for t in names}
    norms = {t: math.sqrt(sum(float(g[t][m].pow(2).sum()) for m in modules)) for t in names}
    weights, auto = _weights(loss_cfg, norms)
    out = {f"grads/{m}": sum(weights[t] * g[t][m] for t in names).float() for m in modules}
    out["loss_grad_norms"] = sum(
        weights[a] * weights[b] * tensors[f"term/{a}/dot/{b}"].double()
        for a in names
        for b in names
    ).float()
    total = sum(weights[t] * norms[t] for t in names)
    info: dict[str, Any] = {"loss_balance_auto": auto or ""}
    for t in names:
        key = LOSS_TERMS[str(loss_cfg["name"])][t][1]
        if key is not None:
            info[f"loss_{key}"] = weights[t]
        info[f"loss_term_{t}"] = weights[t] * float(tensors[f"term/{t}/value"].double().sum())
        info[f"grad_share_{t}"] = weights[t] * norms[t] / total if total > 0 else math.nan
        for m in modules:
            per = {u: weights[u] * float(g[u][m].norm()) for u in names}
            denom = sum(per.values())
            info[f"grad_share_{t}@{m}"] = per[t] / denom if denom > 0 else math.nan
    return out, info
