"""Losses whose gradients the gradient-based direction methods use.

Each loss is a sum of per-pair terms divided by the number of pairs in the whole contrast
set, so a row's gradient is the same whichever batch it lands in (the gradient of the
dataset-mean loss, exactly).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from steerexp.config.registry import Registry


@dataclass
class LossInputs:
    """One batch of pairs. ``h_*``: loss-layer hidden state at the last token ``[P, d]``;
    ``logp_*``: mean token log-probability of each sequence ``[P]`` (with grad)."""

    h_pos: Tensor
    h_neg: Tensor
    logp_pos: Tensor
    logp_neg: Tensor
    n_pairs_total: int


LossFn = Callable[[LossInputs, Mapping[str, Any]], Tensor]
LOSSES: Registry[LossFn] = Registry("loss")


@LOSSES.register("nll")
def nll(x: LossInputs, cfg: Mapping[str, Any]) -> Tensor:
    """``mean(l-) - mean(l+)``: lower when positives are likelier and negatives less likely."""
    return (x.logp_neg - x.logp_pos).sum() / x.n_pairs_total


def _hs_term(x: LossInputs) -> Tensor:
    return -(x.h_pos.float() - x.h_neg.float()).norm(dim=-1).sum() / x.n_pairs_total


@LOSSES.register("hs_diff")
def hs_diff(x: LossInputs, cfg: Mapping[str, Any]) -> Tensor:
    """``-mean ||h+ - h-||``: push the pair's internal states apart."""
    return _hs_term(x)


def _margin_term(x: LossInputs, cfg: Mapping[str, Any]) -> Tensor:
    margin = float(cfg["margin"])
    lp = x.logp_pos.float()
    return torch.relu(margin * lp.detach() - lp).pow(2).sum() / x.n_pairs_total


@LOSSES.register("reprpo_margin")
def reprpo_margin(x: LossInputs, cfg: Mapping[str, Any]) -> Tensor:
    """``hs_diff + beta * mean(relu(margin * sg(l+) - l+)^2)``: the margin keeps the positive
    sequences likely while the states separate."""
    return _hs_term(x) + float(cfg["beta"]) * _margin_term(x, cfg)


#: Losses with more than one term: the unweighted terms and the config key weighting each
#: (None = weight 1). The loss is ``Σ weight · term``; extraction logs each term's value and
#: share of the gradient norm, and ``<key>: auto`` solves for the weight (``steerexp.stages.extract.balance``).
LOSS_TERMS: dict[
    str, dict[str, tuple[Callable[[LossInputs, Mapping[str, Any]], Tensor], str | None]]
] = {
    "reprpo_margin": {
        "hs_diff": (lambda x, cfg: _hs_term(x), None),
        "margin": (_margin_term, "beta"),
    },
}
