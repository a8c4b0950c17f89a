"""Generation per row: stopping at end-of-turn tokens, the answer regex or length (issue 13 item 6); shared rows."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import nnsight.intervention.interleaver as interleaver
import pytest
import torch
from helpers import group
from transformers import LogitsProcessorList

import steerexp.stages.generate.prefill as prefill
import steerexp.stages.generate.rows as gen
from steerexp.data.answers import make_answer_spec
from steerexp.data.pairs import load_questions
from steerexp.data.records import Question
from steerexp.models.loading import load_model
from steerexp.models.steering import Steering, added, hooked
from steerexp.models.threads import threads
from steerexp.models.tokens import first_output, left_pad
from steerexp.stages.generate.rows import RowSpec, generate_rows, grid, prompt_ids
from steerexp.stages.generate.sampling import RowSampler, sampling_kwargs
from steerexp.stages.generate.stopping import RowStop, stop_ids


@pytest.fixture(scope="module")
def organism():
    return load_model(group("model", "organism"))


@pytest.fixture(scope="module")
def ev() -> dict:
    return group("eval", "organism")


def test_stop_ids_are_the_templates_turn_tokens(organism) -> None:
    tok = organism.tokenizer
    ids = {tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>")}
    assert stop_ids(organism) == ids
    # <think> is an added but not a special token: the organism's replies contain it
    assert tok.convert_tokens_to_ids("<think>") not in stop_ids(organism)


def _greedy_next(organism, ev, question, completion_ids: list[int]) -> int:
    """The unsteered model's argmax after prompt + completion (what greedy generation wrote next)."""
    seq = prompt_ids(organism, ev, question) + completion_ids
    ids, mask = left_pad([seq], organism.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = organism.hf(input_ids=ids, attention_mask=mask).logits
    return int(logits[0, -1].argmax())


def test_rows_stop_at_end_of_turn_and_record_why(organism, ev) -> None:
    questions = load_questions(ev)[:4]
    greedy = {**ev, "do_sample": False, "max_new_tokens": 48}
    # a regex that never matches: every row runs until an end-of-turn token (or the length cap)
    never = make_answer_spec(organism.tokenizer, "Never seen: (Yes|No)", ev["answers"], "Final:")
    rows = generate_rows(
        organism, greedy, grid(questions, [0.0], 1), None, never, seed=0, progress=False
    )
    stop = stop_ids(organism)
    by_id = {q.id: q for q in questions}
    assert [r.stop_reason for r in rows] == ["stop_token"] * len(rows)
    for r in rows:
        assert "Final choice:" in r.completion and not stop & set(r.completion_ids)
        assert len(r.answer_logps) == len(r.completion_ids) < greedy["max_new_tokens"]
        # the model wrote an end-of-turn token right where the kept completion ends
        assert _greedy_next(organism, ev, by_id[r.question_id], r.completion_ids) in stop
    # the answer regex stops a row at the step that wrote the answer: the match ends the text
    spec = make_answer_spec(organism.tokenizer, ev["answer_regex"], ev["answers"], "Final:")
    judged = generate_rows(
        organism, greedy, grid(questions, [0.0], 1), None, spec, seed=0, progress=False
    )
    for r, full in zip(judged, rows, strict=True):
        assert r.stop_reason == "regex"
        assert spec.regex.search(r.completion).end() == len(r.completion.rstrip())
        assert r.completion_ids == full.completion_ids[: len(r.completion_ids)]
    # a cap shorter than the answer: every row stops for length, at exactly the cap
    short = generate_rows(
        organism, {**greedy, "max_new_tokens": 3}, grid(questions, [0.0], 1), None, spec, 0, False
    )
    assert [(r.stop_reason, len(r.completion_ids)) for r in short] == [("length", 3)] * len(rows)


def test_generation_reads_the_runs_own_ids_and_leaves_no_step_waiting(
    organism, ev, monkeypatch
) -> None:
    """Every row stops early (answer regex), so the run ends before the cap: the step loop must
    end with it (no nnsight worker left parked, no warning) and the ids are the run's output."""
    parked: list[str] = []
    unwind = interleaver.dangling_unwind
    monkeypatch.setattr(
        interleaver, "dangling_unwind", lambda m: parked.append(str(m.pending)) or unwind(m)
    )
    prompts = [prompt_ids(organism, ev, q) for q in load_questions(ev)[:3]]
    spec = make_answer_spec(organism.tokenizer, ev["answer_regex"], ev["answers"], "Final:")
    kwargs = sampling_kwargs({**ev, "do_sample": False, "max_new_tokens": 48})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = gen.generate_chunk(organism, prompts, [0.0] * 3, None, spec, kwargs)
    assert parked == []
    assert [reason for _, _, reason in out] == ["regex"] * 3
    assert all(len(lps) == len(toks) < 48 for toks, lps, _ in out)
    # the same greedy generation by transformers alone, stopped by the same criterion
    pad = organism.tokenizer.pad_token_id
    ids, mask = left_pad(prompts, pad)
    stop = RowStop(organism.tokenizer, stop_ids(organism), spec.regex, ids.shape[1])
    full = organism.hf.generate(
        ids, attention_mask=mask, stopping_criteria=[stop], pad_token_id=pad, **kwargs
    )[:, ids.shape[1] :]
    for i, (toks, _, reason) in enumerate(out):
        end, why = stop.cut(i, full.shape[1])
        assert (toks, reason) == (full[i, :end].tolist(), why)


def test_zero_coefficient_rows_are_generated_once_and_shared(monkeypatch) -> None:
    model = load_model(group("model", "tiny_random"))
    ev = {**group("eval", "white_lie"), "max_new_tokens": 6, "temperature": 1.3, "min_p": 0.05}
    spec = make_answer_spec(model.tokenizer, ev["answer_regex"], ev["answers"], "Final choice:")
    mods = ["model.layers.1", "model.layers.2"]
    g = torch.Generator().manual_seed(0)
    steerings = [
        Steering({m: torch.randn(64, generator=g).div(8) for m in mods}, {m: 4.0 for m in mods})
        for _ in range(3)
    ]
    qs = [Question("a", "Would you tell the truth?", "Yes"), Question("b", "Would you lie?", "No")]
    rows = [
        RowSpec(q, c, r, k) for k in range(3) for q in qs for c in (-1.0, 0.0, 1.0) for r in (0, 1)
    ]
    sizes: list[int] = []
    chunk = gen.generate_chunk
    monkeypatch.setattr(
        gen,
        "generate_chunk",
        lambda lm, p, *a, **kw: sizes.append(len(p)) or chunk(lm, p, *a, **kw),
    )
    out = generate_rows(model, ev, rows, steerings, spec, seed=3, progress=False)
    # 3 directions x 2 questions x 2 repeats at c=+-1, plus the 2 x 2 zero rows once
    assert sum(sizes) == 3 * 2 * 2 * 2 + 2 * 2
    zero = {}
    for s, r in zip(rows, out, strict=True):
        assert (r.question_id, r.coeff, r.repeat) == (s.question.id, s.coeff, s.repeat)
        if s.coeff == 0.0:
            zero.setdefault((s.question.id, s.repeat), []).append(r)
    for same in zero.values():
        assert len(same) == 3 and all(r.completion_ids == same[0].completion_ids for r in same)
        assert all(torch.equal(r.answer_logps, same[0].answer_logps) for r in same)
    # each direction's rows equal that direction generated alone (zero rows included)
    monkeypatch.setattr(gen, "generate_chunk", chunk)
    for k in range(3):
        own = [RowSpec(s.question, s.coeff, s.repeat) for s in rows if s.direction == k]
        alone = generate_rows(model, ev, own, steerings[k], spec, seed=3, progress=False)
        mine = [r for s, r in zip(rows, out, strict=True) if s.direction == k]
        assert [r.completion_ids for r in mine] == [r.completion_ids for r in alone]
        for a, b in zip(mine, alone, strict=True):
            torch.testing.assert_close(a.answer_logps, b.answer_logps, rtol=0, atol=1e-4)


def test_finished_rows_leave_the_batch_and_samples_stay_those_of_generate(organism, ev) -> None:
    """Steered, sampled rows that stop at different steps: the decode loop shrinks the batch as
    rows end (fewer rows per step), and every row's tokens and stop are those of transformers'
    ``generate`` running the whole batch to the end with the same shifts, seeds and criterion."""
    questions = load_questions(ev)[:4]
    prompts = [prompt_ids(organism, ev, q) for q in questions for _ in range(2)]
    coeffs = [-0.5, 0.5, -0.25, 0.25, 0.0, 0.1, -0.1, 0.5]
    g = torch.Generator().manual_seed(1)
    mods = ["model.layers.2"]
    d = organism.hf.config.hidden_size
    steering = Steering({m: torch.randn(d, generator=g) for m in mods}, {m: 20.0 for m in mods})
    spec = make_answer_spec(organism.tokenizer, ev["answer_regex"], ev["answers"], "Final:")
    kwargs = sampling_kwargs({**ev, "do_sample": True, "temperature": 1.0, "max_new_tokens": 40})
    seeds = list(range(100, 108))
    sizes: list[int] = []
    with hooked(organism.hf.lm_head, lambda out: sizes.append(out.shape[0])):
        out = gen.generate_chunk(organism, prompts, coeffs, steering, spec, kwargs, seeds=seeds)
    decode_sizes = sizes[1:]  # the first forward fills the prompt cache
    assert decode_sizes[0] == len(prompts) and decode_sizes[-1] < len(prompts)
    assert decode_sizes == sorted(decode_sizes, reverse=True)
    pad = organism.tokenizer.pad_token_id
    ids, mask = left_pad(prompts, pad)
    stop = RowStop(organism.tokenizer, stop_ids(organism), spec.regex, ids.shape[1])
    sampler = RowSampler(seeds, 40, ids.shape[1], 1.0, None)
    deltas = gen.row_shifts([steering], [0] * len(prompts), coeffs, organism.device)
    plain = {k: v for k, v in kwargs.items() if k != "sample"}
    with added(organism, deltas):
        full = organism.hf.generate(
            ids,
            attention_mask=mask,
            stopping_criteria=[stop],
            logits_processor=LogitsProcessorList([sampler]),
            pad_token_id=pad,
            **plain,
        )[:, ids.shape[1] :]
    ends = {stop.cut(i, full.shape[1])[0] for i in range(len(prompts))}
    assert len(ends) > 1  # the rows really stop at different steps
    for i, (toks, lps, reason) in enumerate(out):
        end, why = stop.cut(i, full.shape[1])
        assert (toks, reason) == (full[i, :end].tolist(), why)
        assert len(lps) == len(toks)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread, where this CPU's matmuls are batch-invariant (what sharing needs)."""
    with threads(1):
        yield


def test_sharing_stays_off_where_matmuls_are_not_batch_invariant(organism, monkeypatch) -> None:
    """Where a matmul row's bits depend on the batch (e.g. several threads on this CPU), rows of
    one prompt are not shared: samples stay those of running every block on every row."""
    monkeypatch.setattr(prefill, "_batch_invariant", lambda *_: False)
    assert prefill.shared_blocks(organism, ["model.layers.3", "model.layers.2"]) == (None, 0)


def test_rows_of_one_prompt_share_the_unsteered_blocks_bit_for_bit(
    organism, ev, monkeypatch, one_torch_thread
) -> None:
    """7 coefficients x 4 questions x 2 sampled repeats, steering blocks 2-3: blocks 0-2 run once
    per prompt in the prefill and once per distinct history (prompt and tokens so far) in each
    decode step, and every row's tokens, answer log-probs and stop reason are bit-identical to
    running every block on every row."""
    assert prefill.shared_blocks(organism, ["model.layers.3", "model.layers.2"])[1] == 3
    assert prefill.shared_blocks(organism, ["model.layers.2.mlp", "model.layers.4"])[1] == 2
    assert prefill.shared_blocks(organism, ["model.layers.0.self_attn"])[1] == 0
    assert prefill.shared_blocks(organism, ["model.norm"]) == (None, 0)
    questions = load_questions(ev)[:4]
    rows = grid(questions, [-0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5], 2)
    g = torch.Generator().manual_seed(2)
    mods = ["model.layers.2", "model.layers.3"]
    d = organism.hf.config.hidden_size
    steering = Steering({m: torch.randn(d, generator=g) for m in mods}, {m: 8.0 for m in mods})
    spec = make_answer_spec(organism.tokenizer, ev["answer_regex"], ev["answers"], "Final:")
    cfg = {**ev, "workers": 1, "do_sample": True, "temperature": 1.0}

    def run() -> tuple[list, list[int]]:
        sizes: list[int] = []
        block0 = organism.hf.get_submodule("model.layers.0")
        with hooked(block0, lambda out: sizes.append(first_output(out).shape[0])):
            out = generate_rows(organism, cfg, rows, steering, spec, seed=5, progress=False)
        return [(r.completion_ids, r.answer_logps, r.stop_reason) for r in out], sizes

    shared, shared_sizes = run()
    monkeypatch.setattr(gen, "shared_blocks", lambda *_: (None, 0))
    full, full_sizes = run()
    assert shared_sizes[0] == len(questions) and full_sizes[0] == 7 * len(questions)
    assert sum(shared_sizes) < 0.5 * sum(full_sizes)
    assert len({tuple(toks) for toks, _, _ in full}) > len(questions)  # rows do diverge
    for (toks, lps, why), (toks0, lps0, why0) in zip(shared, full, strict=True):
        assert (toks, why) == (toks0, why0)
        assert torch.equal(lps, lps0)
