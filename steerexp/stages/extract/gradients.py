"""The loss of one traced batch and its gradients with respect to the recorded module outputs.

A loss with several terms (``LOSS_TERMS``) gets one backward pass per term, so the terms can be
weighted afterwards (``steerexp.stages.extract.balance``) without tracing again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from steerexp.stages.extract.losses import LOSS_TERMS, LOSSES, LossInputs


def loss_gradients(
    outs: dict[str, Tensor],
    logits: Tensor,
    ids: Tensor,
    mask: Tensor,
    tmask: Tensor,
    rows: Tensor,
    last: Tensor,
    modules: list[str],
    loss_path: str,
    loss_cfg: Mapping[str, Any],
    n_pairs_total: int,
    grad_tokens: str,
) -> dict[str, Tensor]:
    """The loss of one batch and its gradients: ``grads/<m>``, ``logp``, ``loss_grad_norms``."""
    paths = list(outs)
    logp_tok = (
        torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    )
    tm = tmask[:, 1:].float()
    ell = (logp_tok * tm).sum(1) / tm.sum(1).clamp_min(1.0)
    h = outs[loss_path][rows, last]
    x = LossInputs(h[0::2], h[1::2], ell[0::2], ell[1::2], n_pairs_total)
    name = str(loss_cfg["name"])
    terms = (
        {t: fn(x, loss_cfg) for t, (fn, _) in LOSS_TERMS[name].items()}
        if name in LOSS_TERMS
        else {"": LOSSES.get(name)(x, loss_cfg)}
    )
    result = {"logp": ell.detach().float().cpu()}
    own: dict[str, Tensor] = {}
    for i, (t, value) in enumerate(terms.items()):
        grads = torch.autograd.grad(
            value, [outs[p] for p in paths], allow_unused=True, retain_graph=i < len(terms) - 1
        )
        gmap = {
            p: (g if g is not None else torch.zeros_like(outs[p]))
            for p, g in zip(paths, grads, strict=True)
        }
        # Every loss is a sum of per-pair terms over n_pairs_total, and a row's hidden states only
        # enter its own pair's term, so n_pairs_total x its gradient is that of its own term.
        own[t] = gmap[loss_path].detach().double() * n_pairs_total
        prefix = f"term/{t}/" if t else ""
        if t:
            result[f"{prefix}value"] = value.detach().float().reshape(1).cpu()
        for m in modules:
            gm = gmap[m].detach().float()
            result[f"{prefix}grads/{m}"] = (
                (gm * mask[..., None]).sum(1) if grad_tokens == "all" else gm[rows, last]
            ).cpu()
    if "" in own:
        result["loss_grad_norms"] = own[""].pow(2).sum(dim=(1, 2)).float().cpu()
    else:
        for a in own:
            for b in own:
                result[f"term/{a}/dot/{b}"] = (own[a] * own[b]).sum(dim=(1, 2)).float().cpu()
    return result
