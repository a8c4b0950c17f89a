"""Intervention and generation: c = 0 is exact, nothing stays attached, batching changes nothing."""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys
import warnings

import pytest
import torch
from helpers import REPO, group, tiny

from steerexp.config.errors import SteerexpError
from steerexp.data.answers import make_answer_spec
from steerexp.data.records import Question
from steerexp.models.steering import Steering, steered_logits
from steerexp.models.tokens import left_pad, model_inputs
from steerexp.stages.generate.rows import RowSpec, generate_rows, prompt_ids
from steerexp.stages.intervene.scales import base_scales

MODULES = ["model.layers.1", "model.layers.2.self_attn.o_proj"]


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def steering(model) -> Steering:
    g = torch.Generator().manual_seed(3)
    vecs = {m: torch.nn.functional.normalize(torch.randn(64, generator=g), dim=0) for m in MODULES}
    return Steering(vecs, {m: 3.0 for m in MODULES})


@pytest.fixture(scope="module")
def batch(model):
    texts = ["Is honesty good?", "Would you lie to a friend about a gift?", "Yes or no?"]
    seqs = [model.tokenizer(t).input_ids for t in texts]
    return left_pad(seqs, model.tokenizer.pad_token_id)


def test_coefficient_zero_is_bit_identical(model, steering, batch) -> None:
    ids, mask = batch
    plain = model.hf(**model_inputs(ids, mask)).logits
    zero = steered_logits(model, ids, mask, steering, torch.zeros(ids.shape[0]))
    assert torch.equal(plain, zero)
    moved = steered_logits(model, ids, mask, steering, torch.tensor([0.0, 1.0, -1.0]))
    assert torch.equal(moved[0], plain[0]) and not torch.equal(moved[1], plain[1])


def test_no_hook_outlives_a_steered_run(model, steering, batch) -> None:
    ids, mask = batch
    hooks = [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.hf.modules()]
    before = model.hf(input_ids=ids, attention_mask=mask).logits
    steered_logits(model, ids, mask, steering, torch.ones(ids.shape[0]))
    after = model.hf(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(before, after)
    assert hooks == [
        (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.hf.modules()
    ]


def test_batched_per_row_coefficients_equal_one_call_per_coefficient(model, steering) -> None:
    ev = {
        **group("eval", "white_lie"),
        "do_sample": False,
        "max_new_tokens": 12,
        "repetition_penalty": None,
    }
    spec = make_answer_spec(model.tokenizer, ev["answer_regex"], ev["answers"], ev["answer_prefix"])
    qs = [
        Question("a", "Would you tell the truth?", "Yes"),
        Question("b", "Would you hide the mistake?", "No"),
    ]
    coeffs = [-1.0, 0.0, 0.5, 2.0]
    rows = [RowSpec(q, c, 0) for q in qs for c in coeffs]
    together = generate_rows(model, ev, rows, steering, spec, seed=0, progress=False)
    alone = []
    for c in coeffs:
        alone += generate_rows(
            model, ev, [r for r in rows if r.coeff == c], steering, spec, seed=0, progress=False
        )
    key = {(r.question_id, r.coeff): r for r in alone}
    for r in together:
        other = key[(r.question_id, r.coeff)]
        assert r.completion_ids == other.completion_ids
        torch.testing.assert_close(r.answer_logps, other.answer_logps, rtol=1e-4, atol=1e-4)
    assert len({tuple(r.completion_ids) for r in together}) > 2, (
        "steering should change some completions"
    )
    unsteered = generate_rows(
        model, ev, [r for r in rows if r.coeff == 0.0], None, spec, seed=0, progress=False
    )
    assert [r.completion_ids for r in unsteered] == [key[(q.id, 0.0)].completion_ids for q in qs]


def test_answer_logps_track_each_generated_step(model, steering) -> None:
    ev = {**group("eval", "white_lie"), "do_sample": False, "max_new_tokens": 6}
    spec = make_answer_spec(model.tokenizer, ev["answer_regex"], ev["answers"], ev["answer_prefix"])
    q = Question("a", "Would you tell the truth?", "Yes")
    (row,) = generate_rows(model, ev, [RowSpec(q, 0.0, 0)], steering, spec, seed=0, progress=False)
    assert row.answer_logps.shape == (len(row.completion_ids), 2)
    seq = prompt_ids(model, ev, q) + row.completion_ids[:2]
    logits = model.hf(input_ids=torch.tensor([seq])).logits[0, -1]
    lsm = torch.log_softmax(logits, -1)
    expected = torch.stack([lsm[ids].logsumexp(-1) for ids in spec.variant_ids])
    torch.testing.assert_close(row.answer_logps[2], expected, rtol=1e-4, atol=1e-4)


def test_coeff_units_choices() -> None:
    with pytest.raises(SteerexpError, match=r"unknown coeff_units 'nrm'; did you mean 'norm'"):
        base_scales("nrm", None, [])  # type: ignore[arg-type]


# --- module order and the KL scale ------------------------------------------------------------


def test_forward_order_is_execution_order() -> None:
    model = tiny()
    paths = [
        "model.layers.1.mlp",
        "model.layers.1",
        "model.layers.1.self_attn.o_proj",
        "model.norm",
    ]
    want = ["model.layers.1.self_attn.o_proj", "model.layers.1.mlp", "model.layers.1", "model.norm"]
    assert model.forward_order(paths) == want
    assert model.forward_order(list(reversed(paths))) == want


ORDER_SCRIPT = """
import torch
from omegaconf import OmegaConf
from helpers import tiny
from steerexp.models.tokens import left_pad
from steerexp.models.steering import Steering, steered_logits
m = tiny()
mods = ["model.layers.1.mlp", "model.layers.1.self_attn.o_proj"]
g = torch.Generator().manual_seed(0)
s = Steering({k: torch.randn(64, generator=g) for k in mods}, {k: 1.0 for k in mods})
ids, mask = left_pad([m.tokenizer("Is honesty good?").input_ids], m.tokenizer.pad_token_id)
print(float(steered_logits(m, ids, mask, s, torch.ones(1)).double().sum()))
"""


def test_two_targets_in_one_layer_work_under_any_hash_seed() -> None:
    sums = []
    for seed in ("0", "1"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
        out = subprocess.run(
            [sys.executable, "-c", ORDER_SCRIPT],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-1500:]
        sums.append(float(out.stdout.strip().splitlines()[-1]))
    assert sums[0] == sums[1]


def test_kl_calibrates_on_neutral_prompts_at_both_signs() -> None:
    from nnsight.modeling.transformers import TransformersModel

    from steerexp.data.pairs import load_neutral_prompts
    from steerexp.models.steering import Steering
    from steerexp.stages.intervene.scales import calibrate_kl, neutral_prompt_ids

    texts = load_neutral_prompts("neutral_prompts.txt")
    assert len(texts) >= 20 and not any("lie" in t.lower().split() for t in texts)
    # The random tiny model's logits are near zero, so no steering moves it 1 nat: sharpen a copy.
    base = tiny()
    hf = copy.deepcopy(base.hf)
    hf.lm_head.weight.mul_(200.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = TransformersModel(hf, tokenizer=base.tokenizer, task="text-generation")
    model = dataclasses.replace(base, hf=hf, lm=lm, _exec_rank=None, fingerprint=None)
    g = torch.Generator().manual_seed(1)
    mods = ["model.layers.1", "model.layers.2"]
    steering = Steering(
        {m: torch.nn.functional.normalize(torch.randn(64, generator=g), dim=0) for m in mods},
        {m: 1.0 for m in mods},
    )
    texts = texts[:8]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kl = calibrate_kl(model, neutral_prompt_ids(model, texts), steering)
    assert kl["kl_n_prompts"] == len(texts)
    assert kl["kl_p95_at_c_star"] == max(kl["kl_p95_plus"], kl["kl_p95_minus"])
    assert abs(kl["kl_p95_at_c_star"] - 1.0) <= 0.05
    assert min(kl["kl_p95_plus"], kl["kl_p95_minus"]) <= 1.0 + 1e-9
