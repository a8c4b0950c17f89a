"""Intervention and generation: c = 0 is exact, nothing stays attached, batching changes nothing."""

from __future__ import annotations

import pytest
import torch
from helpers import group, tiny

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
