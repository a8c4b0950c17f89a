"""Judge stage: turn each generated answer into a log-probability ratio.

A judgement reads the model's own answer distribution at the step that produced the
answer token, so it is continuous (unlike a yes/no count) and comparable across rows.
A positive ``log_ratio`` always means "more trait-consistent" (e.g. more honest).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch

from steerexp.config.errors import SteerexpError
from steerexp.config.registry import Registry
from steerexp.data.answers import AnswerSpec
from steerexp.store.columns import DOSE_COLUMNS
from steerexp.store.results import GenRow, Judgement

Rescore = Callable[[GenRow, str], torch.Tensor]
Judge = Callable[[GenRow, AnswerSpec, Rescore], Judgement]
JUDGES: Registry[Judge] = Registry("judge")


def _invalid() -> Judgement:
    """A fresh invalid (unjudgeable) judgement."""
    return Judgement(log_ratio=math.nan, pmass=math.nan, valid=False, forced=False)


def _trait_index(row: GenRow, spec: AnswerSpec) -> int:
    """Index of the row's trait-consistent answer in ``spec.answers`` (case-insensitive)."""
    lowered = [a.lower() for a in spec.answers]
    try:
        return lowered.index(str(row.trait_answer).lower())
    except ValueError:
        raise SteerexpError(
            f"trait_answer {row.trait_answer!r} of question {row.question_id!r} is not one of "
            f"the answers {spec.answers!r}"
        ) from None


def score_logps(lp: torch.Tensor, trait: int) -> tuple[float, float]:
    """``(log p[trait] − logsumexp(log p[others]), Σ p)`` from one step's answer log-probs."""
    lp = lp.detach().to(torch.float64).reshape(-1)
    others = torch.cat([lp[:trait], lp[trait + 1 :]])
    log_ratio = float(lp[trait] - torch.logsumexp(others, dim=0))
    pmass = float(lp.exp().sum())
    return log_ratio, pmass


def _judgement(lp: torch.Tensor, trait: int, forced: bool) -> Judgement:
    """A valid judgement when the ratio is finite, else an invalid one."""
    log_ratio, pmass = score_logps(lp, trait)
    if not (math.isfinite(log_ratio) and math.isfinite(pmass)):
        return Judgement(math.nan, math.nan, False, forced)
    return Judgement(log_ratio, pmass, True, forced)


def token_at_char(tokenizer: Any, ids: Sequence[int], text: str, pos: int) -> int | None:
    """Index of the token whose decoding first produces character ``text[pos]``.

    Binary search for the shortest id prefix whose decode agrees with ``text`` on
    ``text[:pos + 1]``; a token like " Yes" therefore maps to the "Y", and a character split
    over several byte tokens maps to the token that completes it. ``None`` if no prefix does.
    """
    want = text[: pos + 1]

    def covers(t: int) -> bool:
        return tokenizer.decode(list(ids[: t + 1]), skip_special_tokens=True).startswith(want)

    lo, hi = 0, len(ids) - 1
    if hi < 0 or not covers(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if covers(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _check_row(row: GenRow, spec: AnswerSpec) -> None:
    """Shape contract between the generate stage and the judge."""
    shape = tuple(row.answer_logps.shape)
    if shape != (len(row.completion_ids), len(spec.answers)):
        raise ValueError(
            f"row {row.question_id!r} coeff {row.coeff}: answer_logps has shape {shape}, expected "
            f"({len(row.completion_ids)}, {len(spec.answers)})"
        )


def _matched(row: GenRow, spec: AnswerSpec) -> re.Match[str] | None:
    """The last regex match in the completion, or None."""
    matches = list(spec.regex.finditer(row.completion))
    return matches[-1] if matches else None


@JUDGES.register("logratio")
def judge_logratio(row: GenRow, spec: AnswerSpec, rescore: Rescore | None = None) -> Judgement:
    """Log ratio at the step that generated the last regex match's answer; no match → invalid.

    The step is the token that first produces the capture group's first character (for
    " Yes" that is the " Yes" token). A match whose group is not one of the answers
    (possible with a permissive regex) is invalid.
    """
    _check_row(row, spec)
    trait = _trait_index(row, spec)
    match = _matched(row, spec)
    if match is None or match.group(1) is None:
        return _invalid()
    if match.group(1).strip().lower() not in [a.lower() for a in spec.answers]:
        return _invalid()
    if spec.tokenizer is None:
        raise SteerexpError(
            "the logratio judge needs AnswerSpec.tokenizer; build it with make_answer_spec"
        )
    step = token_at_char(spec.tokenizer, row.completion_ids, row.completion, match.start(1))
    if step is None:
        return _invalid()
    return _judgement(row.answer_logps[step], trait, forced=False)


def forced_suffix(completion: str, prefix: str) -> str:
    """Text appended by judge=forced: the prefix on a new line, as the prompt asks the model
    to end with it; no extra newline when the completion already ends with whitespace."""
    if not completion or completion[-1].isspace():
        return prefix
    return "\n" + prefix


@JUDGES.register("forced")
def judge_forced(row: GenRow, spec: AnswerSpec, rescore: Rescore) -> Judgement:
    """As logratio; with no match, append the answer prefix and score the next token (forced).

    A match whose group is not an answer stays invalid: the model did answer, just not
    with a scoreable word, so forcing would overwrite its answer.
    """
    _check_row(row, spec)
    trait = _trait_index(row, spec)
    if _matched(row, spec) is not None:
        return judge_logratio(row, spec, rescore)
    lp = rescore(row, forced_suffix(row.completion, spec.prefix))
    return _judgement(torch.as_tensor(lp), trait, forced=True)


def judge_rows(
    name: str, rows: Sequence[GenRow], spec: AnswerSpec, rescore: Rescore
) -> list[Judgement]:
    """Judge every row with the registered judge ``name``."""
    judge = JUDGES.get(name)
    return [judge(row, spec, rescore) for row in rows]


def dose_frame(rows: Sequence[Any], judgements: Sequence[Any]) -> pd.DataFrame:
    """One row per generation (``GenRow`` + its ``Judgement``), in ``DOSE_COLUMNS`` order."""
    return pd.DataFrame(
        [
            {
                "question_id": r.question_id,
                "coeff": r.coeff,
                "repeat": r.repeat,
                "log_ratio": j.log_ratio,
                "pmass": j.pmass,
                "valid": bool(j.valid),
                "forced": bool(j.forced),
                "completion": r.completion,
                "stop_reason": r.stop_reason,
                "n_tokens": len(r.completion_ids),
            }
            for r, j in zip(rows, judgements, strict=True)
        ],
        columns=DOSE_COLUMNS,
    )
