"""Bootstrap refits of the direction, and the matched-KL budget coefficient."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import group
from omegaconf import OmegaConf

from steerexp.data.pairs import load_neutral_prompts
from steerexp.models.loading import load_model
from steerexp.models.modules import resolve_modules
from steerexp.models.steering import Steering
from steerexp.models.tokens import left_pad
from steerexp.pipeline import steps
from steerexp.pipeline.refits import mean_cos, refit_directions, resample_rows
from steerexp.stages.fit.methods import fit_from_config
from steerexp.stages.intervene.scales import calibrate_kl, kl_quantile, steered_logits
from steerexp.store.results import Extraction

MODULES = ["model.layers.1", "model.layers.2"]


def _extraction(n_pairs: int, d: int = 16, seed: int = 0) -> Extraction:
    g = torch.Generator().manual_seed(seed)
    trait = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    acts = {}
    for m in MODULES:
        # the trait's strength varies by pair, so pca_diff (centred differences) sees it too
        base = torch.randn(n_pairs, d, generator=g)
        amp = 3 * torch.rand(n_pairs, 1, generator=g)
        pos = base + amp * trait + 0.5 * torch.randn(n_pairs, d, generator=g)
        neg = base - amp * trait + 0.5 * torch.randn(n_pairs, d, generator=g)
        acts[m] = torch.stack([pos, neg], 1).reshape(2 * n_pairs, d)
    return Extraction(MODULES, acts, {}, None, None, "k")


def test_resample_keeps_pairs_interleaved_and_is_nested() -> None:
    r = resample_rows(10, 3, seed=0)
    assert len(r) == 20 and (r[0::2] % 2 == 0).all() and (r[1::2] == r[0::2] + 1).all()
    assert torch.equal(r, resample_rows(10, 3, seed=0))
    assert not torch.equal(r, resample_rows(10, 4, seed=0))


@pytest.mark.parametrize("method", ["mean_diff", "pca_diff"])
def test_refits_move_the_direction_on_few_pairs(method: str) -> None:
    """On 6 noisy pairs each refit differs from the full-data fit (cos < 1) but points the same
    way (the pair vote orients it); with 400 pairs the refits are nearly the full fit."""
    cfg = OmegaConf.create({"seed": 0, "method": {"name": method, "kind": method}})
    few = _extraction(6)
    full = {m: fit_from_config(cfg.method, few.acts[m]).vector for m in MODULES}
    refits = refit_directions(cfg, MODULES, few, {}, 8)
    cos = [mean_cos(r, full) for r in refits]
    assert all(c < 0.9999 for c in cos) and np.mean(cos) < 0.99 and min(cos) > 0
    assert len({tuple(r[MODULES[0]].tolist()) for r in refits}) == 8
    many = _extraction(400)
    full_many = {m: fit_from_config(cfg.method, many.acts[m]).vector for m in MODULES}
    cos_many = [mean_cos(r, full_many) for r in refit_directions(cfg, MODULES, many, {}, 4)]
    assert np.mean(cos_many) > np.mean(cos) and min(cos_many) > 0.95


def test_budget_coeff_is_the_kl_calibration(monkeypatch, tmp_path) -> None:
    """In norm units the budget is calibrate_kl's c* on the neutral prompts (p95 token KL = 1
    nat at the worse sign); in kl units it is 1 by construction; never reached: inf (the
    effect is then read at the grid's edge)."""
    model = load_model(group("model", "organism"))
    modules = resolve_modules(model, group("module", "hs"))
    d = int(model.hf.config.hidden_size)
    g = torch.Generator().manual_seed(0)
    st = Steering(
        {m: torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0) for m in modules},
        {m: 4000.0 for m in modules},  # about the organism's activation norm: c* near 1
    )
    few = tmp_path / "prompts.txt"  # 4 of the neutral prompts keep the test fast
    few.write_text("\n".join(load_neutral_prompts("neutral_prompts.txt")[:4]))
    cfg = OmegaConf.create({"coeff_units": "norm", "kl": {"prompts": str(few)}})
    m = steps.Model(model, modules, None)
    seen: list[dict] = []

    def spy(*a: object) -> dict:
        seen.append(calibrate_kl(*a))
        return seen[-1]

    monkeypatch.setattr(steps, "calibrate_kl", spy)
    c = steps.budget_coeff(cfg, m, st)
    prompts = steps.kl_prompts(cfg, m)
    assert len(seen) == 1 and c == seen[0]["c_star"] and 0.05 < c < 20
    ids, mask = left_pad(prompts, model.tokenizer.pad_token_id)
    base = steered_logits(model, ids, mask, None, None)
    worst = max(kl_quantile(model, ids, mask, base, st, s * c) for s in (1, -1))
    assert math.log(worst) == pytest.approx(0.0, abs=0.05)
    assert steps.budget_coeff(OmegaConf.merge(cfg, {"coeff_units": "kl"}), m, st) == 1.0

    def never(*_a: object) -> None:
        raise RuntimeError("could not bracket")

    monkeypatch.setattr(steps, "calibrate_kl", never)
    assert steps.budget_coeff(cfg, m, st) == math.inf
