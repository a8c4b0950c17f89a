"""Stage 4: one batched, seeded generation over every (question x coefficient x repeat) row.

Each row carries its own coefficient and direction (an index into a list of steerings), so a
whole grid, or the K directions of a random null, runs as a few ``generate`` calls (chunked by
``eval.max_batch_size``) instead of one per coefficient or direction. At every step the
model's raw logits give, per answer word, the log of the total probability of its variant
tokens; the judge reads them at the step that wrote the answer.

Each row is sampled from its own seed (:mod:`.sampling`) and stops on its own (:mod:`.stopping`),
so chunking never changes a sample and different directions share common random numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

from steerexp.data.answers import AnswerSpec
from steerexp.data.prompts import prompt_text
from steerexp.data.records import Question
from steerexp.models.loading import LoadedModel
from steerexp.models.steering import (
    Steering,
    added,
    shifts,
    steered_logits,
)
from steerexp.models.threads import config_width, one_thread
from steerexp.models.tokens import left_pad
from steerexp.stages.generate.decode import decode, shrink
from steerexp.stages.generate.parallel import SMALL_WIDTH, map_ordered, worker_count
from steerexp.stages.generate.prefill import prefix_cache, shared_blocks
from steerexp.stages.generate.sampling import RowSampler, row_seed, sampling_kwargs
from steerexp.stages.generate.sharing import Sharing
from steerexp.stages.generate.stopping import RowStop, stop_ids
from steerexp.store.results import GenRow


@dataclass(frozen=True)
class RowSpec:
    """One row of the generation grid: ``direction`` indexes the steerings passed to
    :func:`generate_rows`; ``system`` (e.g. a persona) replaces the eval's system turn."""

    question: Question
    coeff: float
    repeat: int
    direction: int = 0
    system: str | None = None


def answer_logps(logits: Tensor, spec: AnswerSpec, index: Sequence[Tensor] | None = None) -> Tensor:
    """``[B, n_answers]``: log total probability of each answer's variant tokens (``index``: the
    variant ids as tensors on the logits' device, made once for a loop that calls this a lot)."""
    x = logits.float()
    lse = x.logsumexp(-1)
    ids = spec.variant_ids if index is None else index
    return torch.stack([x[:, i].logsumexp(-1) - lse for i in ids], -1).cpu()


def prompt_ids(loaded: LoadedModel, eval_cfg: Mapping[str, Any], q: Question) -> list[int]:
    """Chat-templated prompt with the generation prompt, as written to ``prompts.jsonl``."""
    text = prompt_text(loaded, eval_cfg, q)
    return loaded.tokenizer(text, add_special_tokens=False).input_ids


def grid(
    questions: Sequence[Question], coeffs: Sequence[float], repeats: int, direction: int = 0
) -> list[RowSpec]:
    return [
        RowSpec(q, float(c), r, direction)
        for q in questions
        for c in coeffs
        for r in range(int(repeats))
    ]


def row_shifts(
    steerings: Sequence[Steering],
    directions: Sequence[int],
    coeffs: Sequence[float],
    device: torch.device,
) -> dict[str, Tensor]:
    """Per module ``[B, 1, d]`` shifts, row ``i`` steered by ``steerings[directions[i]]`` at ``coeffs[i]``.

    Each direction's shift is computed with the other rows' coefficients set to 0 (exact zeros),
    and the parts are summed, so a row's shift is bit-identical to steering it alone."""
    dirs = torch.tensor(list(directions))
    c = torch.tensor(list(coeffs), dtype=torch.float32)
    total: dict[str, Tensor] = {}
    for k in sorted(set(directions)):
        for m, delta in shifts(steerings[k], torch.where(dirs == k, c, 0.0), device).items():
            total[m] = delta if m not in total else total[m] + delta
    return total


def generate_chunk(
    loaded: LoadedModel,
    prompts: Sequence[list[int]],
    coeffs: Sequence[float],
    steering: Steering | Sequence[Steering] | None,
    spec: AnswerSpec,
    kwargs: Mapping[str, Any],
    seeds: Sequence[int] | None = None,
    directions: Sequence[int] | None = None,
) -> list[tuple[list[int], Tensor, str]]:
    """Generate one batch with per-row coefficients, directions and sampling seeds; returns
    (completion ids, answer logps, stop reason) per row, the ids read from the run's own output
    and cut where :class:`RowStop` stopped the row."""
    ids, mask = left_pad(prompts, loaded.tokenizer.pad_token_id)
    ids, mask = ids.to(loaded.device), mask.to(loaded.device)
    steerings = [steering] if isinstance(steering, Steering) else list(steering or [])
    dirs = list(directions) if directions is not None else [0] * len(prompts)
    deltas = row_shifts(steerings, dirs, coeffs, loaded.device) if steerings else {}
    # The blocks below the first steered module: shared by the rows of one prompt (prefill and
    # decode steps).
    blocks, k = shared_blocks(loaded, list(deltas))
    cache = None
    if min(map(len, prompts)) >= 2:
        # Every prompt is prefilled once per distinct (prompt, coefficient, direction): the
        # repeats of a row share it. Every row takes this path, whatever its chunk holds.
        keys = [(tuple(p), float(c), d) for p, c, d in zip(prompts, coeffs, dirs, strict=True)]
        first = {k: j for j, k in reversed(list(enumerate(keys)))}
        own = sorted(set(first.values()))
        where = {j: u for u, j in enumerate(own)}
        rows = torch.tensor([where[first[k]] for k in keys])
        sub = (
            row_shifts(steerings, [dirs[j] for j in own], [coeffs[j] for j in own], loaded.device)
            if steerings
            else {}
        )
        cache = prefix_cache(loaded, ids[own], mask[own], sub, rows, (blocks, k))
    last = RowStop(loaded.tokenizer, stop_ids(loaded), spec.regex, ids.shape[1])
    processors = LogitsProcessorList()
    if kwargs.get("repetition_penalty") is not None:
        processors.append(RepetitionPenaltyLogitsProcessor(float(kwargs["repetition_penalty"])))
    n = int(kwargs["max_new_tokens"])
    if "sample" in kwargs:
        row_seeds = list(seeds) if seeds is not None else list(range(len(prompts)))
        processors.append(RowSampler(row_seeds, n, ids.shape[1], *kwargs["sample"]))
    index = [torch.tensor(v, dtype=torch.long, device=loaded.device) for v in spec.variant_ids]
    # Rows of one prompt (other coefficients or directions) share the unsteered blocks.
    share = (
        Sharing(blocks, k, ids, mask)
        if k and len(set(map(tuple, prompts))) < len(prompts)
        else None
    )
    live = dict(deltas)
    # The decode loop needs no tracing: the shifts are plain forward hooks, and each step's
    # answer log-probs are read off the last logits as they are produced.
    with added(loaded, live):
        new, lps = decode(
            loaded.hf,
            ids,
            mask,
            cache,
            n,
            processors,
            last,
            shrink(live),
            lambda logits: answer_logps(logits, spec, index),
            len(spec.answers),
            loaded.tokenizer.pad_token_id,
            share,
        )
    out = []
    for i in range(len(prompts)):
        end, reason = last.cut(i, new.shape[1])
        out.append((new[i, :end].tolist(), lps[i, :end], reason))
    return out


def with_system(eval_cfg: Mapping[str, Any], system: str | None) -> Mapping[str, Any]:
    """The eval config with ``system`` put before its own system text (None: unchanged)."""
    if system is None:
        return eval_cfg
    own = eval_cfg["system"]
    return {**dict(eval_cfg), "system": f"{system}\n\n{own}" if own else system}


def shared_key(r: RowSpec, seed: int) -> tuple[Any, ...]:
    """Rows with equal keys generate the same sample: same prompt and sampling seed, and the
    same direction unless the coefficient is 0 (an exact zero shift, whatever the direction)."""
    return (
        r.question.id,
        r.system,
        row_seed(seed, r.question.id, r.repeat, r.coeff),
        r.direction if r.coeff != 0.0 else None,
    )


def generate_rows(
    loaded: LoadedModel,
    eval_cfg: Mapping[str, Any],
    rows: Sequence[RowSpec],
    steering: Steering | Sequence[Steering] | None,
    spec: AnswerSpec,
    seed: int,
    progress: bool = True,
) -> list[GenRow]:
    """Every row through batched generation, chunked by ``eval.max_batch_size``.

    ``steering`` is one steering or a list indexed by ``RowSpec.direction``. Each row is
    sampled from :func:`row_seed`, so neither chunking nor order changes a sample; rows with the
    same :func:`shared_key` (e.g. the coefficient-0 rows of every null direction) are generated
    once, and rows are batched by |coefficient| so chunks stop early together."""
    # Each distinct prompt rendered once, all tokenised in one batched call (the same ids).
    asked = {(r.question.id, r.system): r for r in rows}
    texts = [
        prompt_text(loaded, with_system(eval_cfg, r.system), r.question) for r in asked.values()
    ]
    encoded = loaded.tokenizer(texts, add_special_tokens=False).input_ids if texts else []
    prompts = dict(zip(asked, encoded, strict=True))
    first: dict[tuple[Any, ...], int] = {}
    for i, r in enumerate(rows):
        first.setdefault(shared_key(r, seed), i)
    # Small coefficients first: rows of similar |c| tend to stop at similar steps, and a chunk
    # runs until its last row stops, so mixing |c| would keep whole chunks going to the cap.
    unique = sorted(
        (rows[i] for i in first.values()),
        key=lambda r: (abs(r.coeff), len(prompts[r.question.id, r.system])),
    )
    kwargs = sampling_kwargs(eval_cfg)
    size = max(1, int(eval_cfg["max_batch_size"]))
    chunks = [unique[start : start + size] for start in range(0, len(unique), size)]

    def run(chunk: list[RowSpec]) -> list[tuple[list[int], Tensor, str]]:
        return generate_chunk(
            loaded,
            [prompts[r.question.id, r.system] for r in chunk],
            [r.coeff for r in chunk],
            steering,
            spec,
            kwargs,
            seeds=[row_seed(seed, r.question.id, r.repeat, r.coeff) for r in chunk],
            directions=[r.direction for r in chunk],
        )

    small = loaded.device.type == "cpu" and config_width(loaded.hf.config) < SMALL_WIDTH
    workers = worker_count(eval_cfg["workers"], len(chunks), small)
    done: list[tuple[list[int], Tensor, str]] = []
    with one_thread(small):
        parts = map_ordered(run, chunks, workers)
        for part in tqdm(
            parts, total=len(chunks), desc="generate", disable=not progress, leave=False
        ):
            done += part
    slot = {shared_key(r, seed): j for j, r in enumerate(unique)}
    out: list[GenRow] = []
    for r in rows:
        toks, lps, reason = done[slot[shared_key(r, seed)]]
        out.append(
            GenRow(
                question_id=r.question.id,
                coeff=r.coeff,
                repeat=r.repeat,
                trait_answer=r.question.trait_answer,
                completion_ids=list(toks),
                completion=loaded.tokenizer.decode(toks, skip_special_tokens=True),
                answer_logps=lps.clone(),
                stop_reason=reason,
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
