"""Stage 4: one batched, seeded generation over every (question x coefficient x repeat) row.

Each row carries its own coefficient, so a whole grid runs as a few ``generate`` calls
(chunked by ``eval.max_batch_size``) instead of one per coefficient. At every step the
model's raw logits give, per answer word, the log of the total probability of its variant
tokens; the judge reads them at the step that wrote the answer.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from steerexp.data import Question, question_messages
from steerexp.extract import left_pad
from steerexp.intervene import Steering, shifts, steer, steered_logits
from steerexp.judge import AnswerSpec, GenRow
from steerexp.models import LoadedModel


@dataclass(frozen=True)
class RowSpec:
    """One row of the generation grid."""

    question: Question
    coeff: float
    repeat: int


class _LastIds(StoppingCriteria):
    """Never stops; keeps the latest ``input_ids`` so the final sequences survive an early stop."""

    def __init__(self) -> None:
        self.ids: Tensor | None = None

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: Any) -> Tensor:
        self.ids = input_ids
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def answer_logps(logits: Tensor, spec: AnswerSpec) -> Tensor:
    """``[B, n_answers]``: log total probability of each answer's variant tokens."""
    x = logits.float()
    lse = x.logsumexp(-1)
    return torch.stack([x[:, ids].logsumexp(-1) - lse for ids in spec.variant_ids], -1).cpu()


def prompt_ids(loaded: LoadedModel, eval_cfg: Mapping[str, Any], q: Question) -> list[int]:
    """Chat-templated prompt with the generation prompt (thinking kwargs pass through)."""
    text = loaded.tokenizer.apply_chat_template(
        question_messages(eval_cfg, q),
        tokenize=False,
        add_generation_prompt=True,
        **loaded.chat_kwargs,
    )
    return loaded.tokenizer(text, add_special_tokens=False).input_ids


def grid(questions: Sequence[Question], coeffs: Sequence[float], repeats: int) -> list[RowSpec]:
    return [RowSpec(q, float(c), r) for q in questions for c in coeffs for r in range(int(repeats))]


def sampling_kwargs(eval_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The eval config is the whole sampling recipe: checkpoint defaults (top_k/top_p) are off."""
    kw: dict[str, Any] = {
        "max_new_tokens": int(eval_cfg["max_new_tokens"]),
        "do_sample": bool(eval_cfg.get("do_sample", True)),
    }
    if kw["do_sample"]:
        kw.update(
            temperature=float(eval_cfg.get("temperature", 1.0)),
            min_p=eval_cfg.get("min_p"),
            top_k=0,
            top_p=1.0,
        )
    if eval_cfg.get("repetition_penalty") is not None:
        kw["repetition_penalty"] = float(eval_cfg["repetition_penalty"])
    return kw


def _stop_ids(loaded: LoadedModel) -> set[int]:
    eos = loaded.hf.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    return eos_ids | {loaded.tokenizer.pad_token_id, loaded.tokenizer.eos_token_id} - {None}


def generate_chunk(
    loaded: LoadedModel,
    prompts: Sequence[list[int]],
    coeffs: Sequence[float],
    steering: Steering | None,
    spec: AnswerSpec,
    kwargs: Mapping[str, Any],
) -> list[tuple[list[int], Tensor]]:
    """Generate one batch with per-row coefficients; returns (completion ids, answer logps) per row."""
    ids, mask = left_pad(prompts, loaded.tokenizer.pad_token_id)
    ids, mask = ids.to(loaded.device), mask.to(loaded.device)
    c = torch.tensor(list(coeffs), dtype=torch.float32)
    deltas = shifts(steering, c, loaded.device) if steering is not None else {}
    last = _LastIds()
    steps: list[Tensor] = []
    n = int(kwargs["max_new_tokens"])
    with warnings.catch_warnings(), loaded.lm.generate(
        {"input_ids": ids, "attention_mask": mask},
        stopping_criteria=StoppingCriteriaList([last]),
        pad_token_id=loaded.tokenizer.pad_token_id,
        **kwargs,
    ) as tracer:
        # A chunk whose rows all stop early ends the bounded step loop before n steps; nnsight
        # warns about the unreached step, which is expected here (ids come from ``last``).
        warnings.filterwarnings("ignore", message=".*was never reached.*")
        for _ in tracer.iter[:n]:
            steer(loaded, deltas)
            steps.append(answer_logps(loaded.lm.lm_head.output[:, -1], spec))
    assert last.ids is not None
    new = last.ids[:, ids.shape[1] :].cpu()
    lps = torch.stack(steps, 1) if steps else torch.zeros(len(prompts), 0, len(spec.answers))
    stop = _stop_ids(loaded)
    out = []
    for i in range(len(prompts)):
        toks = new[i].tolist()
        cut = next((k for k, t in enumerate(toks) if t in stop), len(toks))
        out.append((toks[:cut], lps[i, :cut]))
    return out


def generate_rows(
    loaded: LoadedModel,
    eval_cfg: Mapping[str, Any],
    rows: Sequence[RowSpec],
    steering: Steering | None,
    spec: AnswerSpec,
    seed: int,
    progress: bool = True,
) -> list[GenRow]:
    """Every row through batched generation, chunked by ``eval.max_batch_size``; seeded."""
    prompts = {
        q.id: prompt_ids(loaded, eval_cfg, q)
        for q in {r.question.id: r.question for r in rows}.values()
    }
    kwargs = sampling_kwargs(eval_cfg)
    size = max(1, int(eval_cfg.get("max_batch_size", 32)))
    out: list[GenRow] = []
    chunks = range(0, len(rows), size)
    for k, start in enumerate(tqdm(chunks, desc="generate", disable=not progress, leave=False)):
        chunk = rows[start : start + size]
        torch.manual_seed(seed * 100_003 + k)
        results = generate_chunk(
            loaded,
            [prompts[r.question.id] for r in chunk],
            [r.coeff for r in chunk],
            steering,
            spec,
            kwargs,
        )
        for r, (toks, lps) in zip(chunk, results, strict=True):
            out.append(
                GenRow(
                    question_id=r.question.id,
                    coeff=r.coeff,
                    repeat=r.repeat,
                    trait_answer=r.question.trait_answer,
                    completion_ids=toks,
                    completion=loaded.tokenizer.decode(toks, skip_special_tokens=True),
                    answer_logps=lps,
                )
            )
    return out


def make_rescore(
    loaded: LoadedModel,
    eval_cfg: Mapping[str, Any],
    questions: Sequence[Question],
    steering: Steering | None,
    spec: AnswerSpec,
) -> Any:
    """``rescore(row, text)``: answer log-probs of the next token after prompt + completion + text,
    under the row's own steering coefficient (used by ``judge=forced``)."""
    by_id = {q.id: q for q in questions}

    def rescore(row: GenRow, text: str) -> Tensor:
        seq = prompt_ids(loaded, eval_cfg, by_id[row.question_id]) + list(row.completion_ids)
        seq += loaded.tokenizer(text, add_special_tokens=False).input_ids
        ids, mask = left_pad([seq], loaded.tokenizer.pad_token_id)
        logits = steered_logits(
            loaded, ids, mask, steering, torch.tensor([row.coeff]) if steering else None
        )
        return answer_logps(logits[:, -1], spec)[0]

    return rescore
