"""vjp_steer: the pulled-back contrast equals Jᵀu in closed form on a linear toy; rows are cached."""

from __future__ import annotations

import pytest
import torch
from helpers import group, tiny

from steerexp.config.errors import SteerexpError
from steerexp.data.pairs import load_pairs
from steerexp.stages.extract.vjp import pullback, vjp_rows
from steerexp.stages.fit.methods import fit_direction


def test_linear_toy_closed_form() -> None:
    """read[b, t] = W · Σ_{s ≤ t} x[b, s] (a causal linear map): the read token's Jacobian w.r.t.
    x[b, s] is W for every s ≤ last, so ``all`` gives (real positions) · Wᵀu and ``last`` Wᵀu."""
    g = torch.Generator().manual_seed(0)
    d, k, width = 6, 4, 5
    w = torch.randn(k, d, generator=g, dtype=torch.float64)
    u = torch.randn(k, generator=g, dtype=torch.float64)
    x = torch.randn(3, width, d, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]])
    read = (x * mask[..., None]).cumsum(1) @ w.T
    h_read = read[:, -1]
    want = (w.T @ u).float()
    got = pullback({"m": x}, h_read, u, mask, "all")["m"]
    for b, n_real in enumerate((5, 3, 1)):
        assert torch.allclose(got[b], n_real * want, rtol=1e-5)
    read = (x * mask[..., None]).cumsum(1) @ w.T
    last = pullback({"m": x}, read[:, -1], u, mask, "last")["m"]
    assert torch.allclose(last, want.expand(3, d), rtol=1e-5)
    # two identical pairs (a method needs at least two): the mean pulled-back row is still Wᵀu
    v = fit_direction("vjp_steer", torch.stack([want, 0 * want] * 2), torch.cat([got[:2]] * 2))
    assert torch.allclose(v, want / want.norm(), atol=1e-6)
    with pytest.raises(SteerexpError, match="method.tokens='first'; valid: all, last"):
        pullback({"m": x}, h_read, u, mask, "first")


def test_rows_on_a_model_are_cached_under_their_own_key(tmp_path) -> None:
    model = tiny()
    pairs = load_pairs(group("dataset", "organism"))[:4]
    modules = ["model.layers.1", "model.layers.2.mlp"]
    rows, meta = vjp_rows(
        model, group("model", "tiny_random"), modules, pairs, -1, "all", 4, tmp_path
    )
    assert meta["vjp_cached"] is False and meta["vjp_read"] == "model.norm"
    assert all(r.shape == (8, 64) and bool(r.abs().sum() > 0) for r in rows.values())
    again, meta2 = vjp_rows(
        model, group("model", "tiny_random"), modules, pairs, -1, "all", 4, tmp_path
    )
    assert meta2["vjp_cached"] is True and meta2["vjp_key"] == meta["vjp_key"]
    assert all(torch.equal(rows[m], again[m]) for m in modules)
    last, meta3 = vjp_rows(
        model, group("model", "tiny_random"), modules, pairs, -1, "last", 4, tmp_path
    )
    assert meta3["vjp_key"] != meta["vjp_key"] and not torch.allclose(
        last[modules[0]], rows[modules[0]]
    )
