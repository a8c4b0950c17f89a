"""Answer words: the regex that finds an answer in a completion and the vocabulary ids spelling each.

Generation reads each answer's probability at every step and the judge maps a regex match back
to its step, so both stages share this spec (built once per run by :func:`make_answer_spec`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from steerexp.config.errors import SteerexpError
from steerexp.data.pairs import answer_regex
from steerexp.store import context


@dataclass
class AnswerSpec:
    """How answers are found in a completion and which vocabulary ids spell each answer.

    ``tokenizer`` (set by :func:`make_answer_spec`) is needed to map the regex match's
    character position back to the generation step that produced it.
    """

    regex: re.Pattern[str]  # exactly one capture group
    answers: list[str]  # e.g. ["Yes", "No"]
    variant_ids: list[list[int]]  # per answer: vocabulary ids of its variants
    prefix: str  # e.g. "Final choice:" (appended by judge=forced)
    tokenizer: Any = field(default=None, repr=False, compare=False)


def _squash(text: str) -> str:
    """Lowercase with all whitespace removed (the prefilter's normal form)."""
    return "".join(text.split()).lower()


def _vocab_cache(tokenizer: Any) -> tuple[list[str], dict[str, list[int]]]:
    """Whitespace-free lowercased text of every id, decoded in one batched backend call.

    Used only as a superset prefilter: ``tokenizer.decode`` differs from the backend decode
    at most by removed spaces (tokenization clean-up), so a token whose full decode equals a
    word always contains it here. Each candidate is then confirmed with ``tokenizer.decode``.
    """
    memo = context.current().vocab
    try:
        hit = memo.get(tokenizer)
    except TypeError:  # a tokenizer that cannot be held weakly is decoded every time
        hit = None
    if hit is not None:
        return hit
    n = len(tokenizer)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        texts = backend.decode_batch([[i] for i in range(n)], skip_special_tokens=False)
    else:
        texts = [tokenizer.decode([i]) for i in range(n)]
    squashed = [_squash(t) for t in texts]
    words: dict[str, list[int]] = {}
    try:
        memo[tokenizer] = (squashed, words)
    except TypeError:
        pass
    return squashed, words


def answer_variants(tokenizer: Any, word: str) -> list[int]:
    """Vocabulary ids whose individually decoded text, stripped and lowercased, is ``word.lower()``.

    ``Yes``, `` yes``, ``YES`` count for "Yes"; ``Yesterday`` or ``not`` never do. A one-letter
    option (``A``) is matched in its own case only, as the answer regex reads it: `` a`` is
    mostly the article, not option A.
    """
    exact = len(word.strip()) == 1 and word.strip().isalpha()
    target = word.strip() if exact else word.strip().lower()
    if not target:
        raise SteerexpError(f"answer word {word!r} is empty")
    squashed, cache = _vocab_cache(tokenizer)
    key = f"={target}" if exact else target
    if key in cache:
        return list(cache[key])
    needle = _squash(target)

    def same(text: str) -> bool:
        return text.strip() == target if exact else text.strip().lower() == target

    ids = [
        i
        for i, text in enumerate(squashed)
        if needle.lower() in text and same(tokenizer.decode([i]))
    ]
    if not ids:
        raise SteerexpError(
            f"answer {word!r} has no single-token variant in the tokenizer's vocabulary; "
            "choose answers that are one token (e.g. Yes/No)"
        )
    cache[key] = ids
    return list(ids)


def make_answer_spec(tokenizer: Any, regex: str, answers: Sequence[str], prefix: str) -> AnswerSpec:
    """Validate the answer regex and answers, and collect each answer's variant ids."""
    pattern = answer_regex(regex)
    answers = [str(a) for a in answers]
    if len(answers) < 2:
        raise SteerexpError(f"answers {answers!r}: need at least two distinct answers")
    lowered = [a.strip().lower() for a in answers]
    if len(set(lowered)) != len(lowered) or not all(lowered):
        raise SteerexpError(
            f"answers {answers!r} must be non-empty and distinct (case-insensitive)"
        )
    variant_ids = [answer_variants(tokenizer, a) for a in answers]
    return AnswerSpec(pattern, answers, variant_ids, str(prefix), tokenizer)
