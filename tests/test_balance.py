"""Loss balance: per-term gradients sum to the loss's own, and beta: auto hits the target share."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import group, tiny

from steerexp.config.compose import typed
from steerexp.config.errors import SteerexpError
from steerexp.data.pairs import load_pairs
from steerexp.stages.extract.activations import extract

MODULES = ["model.layers.1", "model.layers.2.mlp"]


@pytest.fixture(scope="module")
def setup():
    return tiny(), group("model", "tiny_random"), load_pairs(group("dataset", "organism"))[:6]


def run(setup, root: Path, **loss):
    model, model_cfg, pairs = setup
    cfg = typed("loss", {**group("loss", "reprpo_margin"), "layer": -1, **loss})
    return extract(model, model_cfg, MODULES, cfg, pairs, 4, root, progress=False)


def test_beta_zero_is_hs_diff_and_terms_are_logged(setup, tmp_path: Path) -> None:
    model, model_cfg, pairs = setup
    zero = run(setup, tmp_path, beta=0.0)
    hs = extract(
        model,
        model_cfg,
        MODULES,
        {**group("loss", "hs_diff"), "layer": -1},
        pairs,
        4,
        None,
        progress=False,
    )
    for m in MODULES:
        assert torch.allclose(zero.grads[m], hs.grads[m], rtol=1e-5, atol=1e-6)
    assert torch.allclose(zero.loss_grad_norms, hs.loss_grad_norms, rtol=1e-4)
    assert zero.balance["loss_beta"] == 0.0 and zero.balance["grad_share_margin"] == 0.0
    assert zero.balance["loss_term_hs_diff"] < 0 and zero.balance["grad_share_hs_diff"] == 1.0
    meta = json.loads((tmp_path / zero.key / "key.json").read_text())
    assert meta["info"]["grad_share_hs_diff"] == 1.0


def test_auto_beta_hits_the_target_and_equals_that_fixed_beta(setup, tmp_path: Path) -> None:
    auto = run(setup, tmp_path, beta="auto", balance_target=0.3)
    b = auto.balance
    assert b["loss_balance_auto"] == "margin" and b["loss_beta"] > 0
    assert b["grad_share_margin"] == pytest.approx(0.3, abs=1e-6)
    assert b["grad_share_margin"] + b["grad_share_hs_diff"] == pytest.approx(1.0)
    assert all(0 < b[f"grad_share_margin@{m}"] < 1 for m in MODULES)
    fixed = run(setup, None, beta=b["loss_beta"], balance_target=0.3)
    for m in MODULES:
        assert torch.allclose(auto.grads[m], fixed.grads[m], rtol=1e-5, atol=1e-6)
    cached = run(setup, tmp_path, beta="auto", balance_target=0.3)
    assert cached.cached and cached.balance == b
    with pytest.raises(
        SteerexpError, match="loss.balance_target=1.5 must be strictly between 0 and 1"
    ):
        run(setup, None, beta="auto", balance_target=1.5)
