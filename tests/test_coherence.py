"""Coherence cost: KL on neutral prompts grows with the direction's norm; the summary columns."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from helpers import group

from steerexp.data.pairs import load_neutral_prompts
from steerexp.models.loading import load_model
from steerexp.models.steering import Steering
from steerexp.stages.intervene.scales import neutral_prompt_ids
from steerexp.stages.regress import coherence

MODULES = ["model.layers.2"]
COEFFS = [-1.0, -0.5, -0.1, 0.0, 0.1, 0.5, 1.0]


def all_valid(coeffs: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"coeff": coeffs * 2, "valid": True, "completion": "x"})


@pytest.fixture(scope="module")
def model():
    """The organism (shipped, no training): a random model's near-uniform outputs hardly move.
    Its residual stream is large (mean norm ~9000 at block 2), so scales are relative to it."""
    return load_model(group("model", "organism"))


def test_huge_direction_costs_more_than_a_tiny_one(model) -> None:
    prompts = neutral_prompt_ids(model, load_neutral_prompts("neutral_prompts.txt")[:6])
    v = torch.nn.functional.normalize(
        torch.randn(model.hf.config.hidden_size, generator=torch.Generator().manual_seed(0)), dim=0
    )
    with torch.no_grad():
        hidden = model.hf(torch.tensor([prompts[0]]), output_hidden_states=True).hidden_states
    norm = float(hidden[3].norm(dim=-1).mean())
    out = {}
    for name, scale in (("tiny", 1e-4 * norm), ("huge", 10.0 * norm)):
        kl = coherence.mean_token_kl(
            model, prompts, Steering({m: v for m in MODULES}, {m: scale for m in MODULES}), COEFFS
        )
        assert kl[COEFFS.index(0.0)] == 0.0
        out[name] = coherence.summary(coherence.cost_table(kl, COEFFS, all_valid(COEFFS), [3] * 14))
    assert out["tiny"]["kl_at_max"] < 1e-3 < 1.0 < out["huge"]["kl_at_max"]
    assert out["tiny"]["coherent_max"] == 1.0
    assert out["huge"]["coherent_max"] < 1.0


def test_summary_needs_both_signs_valid_and_low_kl() -> None:
    coeffs = [-1.0, -0.5, 0.0, 0.5, 1.0]
    dose = pd.DataFrame(
        {
            "coeff": coeffs * 5,
            "valid": [True] * 20 + [True, True, True, False, True],
            "completion": "ab",
        }
    )
    # valid fraction at +0.5 is 4/5 = 0.8 (kept); KL at -1 is above 1 nat, so |c| = 1 fails.
    table = coherence.cost_table([1.5, 0.3, 0.0, 0.2, 0.4], coeffs, dose, [2, 4, 6, 8, 10] * 5)
    assert table["valid_frac"].tolist() == [1.0, 1.0, 1.0, 0.8, 1.0]
    assert table["mean_len"].tolist() == [2.0, 4.0, 6.0, 8.0, 10.0]
    assert coherence.summary(table) == {"kl_at_max": 1.5, "coherent_max": 0.5}
    broken = table.assign(valid_frac=0.5)
    assert math.isnan(coherence.summary(broken)["coherent_max"])
