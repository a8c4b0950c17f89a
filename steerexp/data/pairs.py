"""Contrast pairs and eval questions, read from ``conf/dataset`` and ``conf/eval`` configs."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from steerexp import DATA_DIR
from steerexp.config.compose import typed
from steerexp.config.errors import SteerexpError, choice_error
from steerexp.data.files import file_pairs
from steerexp.data.records import Message, Pair, Question, subsample


def _suffix_lines(name: str) -> list[str]:
    path = DATA_DIR / name
    if not path.is_file():
        raise choice_error(
            "dataset.suffixes file", name, sorted(p.name for p in DATA_DIR.glob("*.txt"))
        )
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_pairs(cfg: Mapping[str, Any]) -> list[Pair]:
    """Persona pairs for every suffix (and its word-prefixes when ``truncate``), fixed subsample.

    A config with a ``path``, or without suffixes (``dataset=file|caa``), reads its pairs from
    that file instead.
    """
    cfg = typed("dataset", cfg)
    if cfg.path is not None or cfg.suffixes is None:
        return file_pairs(cfg)
    template = str(cfg["template"])
    pos_word, neg_word = str(cfg.positive or ""), str(cfg.negative or "")
    if not pos_word.strip() or not neg_word.strip():
        raise SteerexpError(
            f"dataset {cfg['name']!r} has an empty side: positive={pos_word!r} negative={neg_word!r}"
        )
    if "{persona}" not in template:
        raise SteerexpError(f"dataset.template={template!r} has no '{{persona}}' placeholder")
    suffixes = _suffix_lines(str(cfg["suffixes"]))
    if cfg["truncate"]:
        expanded: list[str] = []
        for s in suffixes:
            words = s.split()
            expanded.extend(" ".join(words[:k]) for k in range(1, len(words) + 1))
        suffixes = list(dict.fromkeys(expanded))
    pos, neg = template.format(persona=pos_word), template.format(persona=neg_word)
    pairs = [Pair(pos, neg, s) for s in suffixes]
    pairs = subsample(pairs, cfg["max_pairs"])
    if not pairs:
        raise SteerexpError(
            f"dataset {cfg['name']!r} yields no contrast pairs (empty suffix file?)"
        )
    return pairs


def answer_regex(pattern: str) -> re.Pattern[str]:
    """Compile the answer regex; it must have exactly one capture group."""
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise SteerexpError(f"eval.answer_regex={pattern!r} does not compile: {e}") from None
    if rx.groups != 1:
        raise SteerexpError(
            f"eval.answer_regex={pattern!r} has {rx.groups} capture groups; it needs exactly one, "
            "e.g. 'Final choice: (Yes|No)'"
        )
    return rx


def check_coeffs(coeffs: Sequence[Any]) -> list[float]:
    """The grid must be finite numbers, each once, and contain 0 (the unsteered reference)."""
    try:
        grid = [float(c) for c in coeffs]
    except (TypeError, ValueError):
        raise SteerexpError(f"eval.coeffs={list(coeffs)} must be numbers") from None
    if not grid or not all(math.isfinite(c) for c in grid):
        raise SteerexpError(f"eval.coeffs={grid} must be a non-empty list of finite numbers")
    if 0.0 not in grid:
        raise SteerexpError(f"eval.coeffs={grid} has no 0; the unsteered reference is required")
    repeated = sorted({c for c in grid if grid.count(c) > 1})
    if repeated and len(set(grid)) >= 2:
        raise SteerexpError(
            f"eval.coeffs={grid} repeats {', '.join(map(str, repeated))}; each coefficient once "
            "(repeated rows would weigh double in the fit; use eval.repeats for more samples)"
        )
    if len(set(grid)) < 2:
        raise SteerexpError(
            f"eval.coeffs={grid} has fewer than two distinct coefficients; a dose-response slope "
            "needs 0 and at least one other value, e.g. [-0.25, 0, 0.25]"
        )
    return grid


def load_neutral_prompts(name: str) -> list[str]:
    """Held-out neutral prompts, one per line: a file in ``steerexp/data/`` or a path. Used for
    ``coeff_units=kl`` calibration (never the eval questions) and coherence costs."""
    path = DATA_DIR / name if (DATA_DIR / name).is_file() else Path(name).expanduser()
    if not path.is_file():
        raise choice_error(
            "kl.prompts file (a path or one of steerexp/data/)",
            name,
            sorted(p.name for p in DATA_DIR.glob("*.txt")),
        )
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise SteerexpError(f"kl.prompts={name!r} has no prompts (one per line)")
    return lines


def load_questions(cfg: Mapping[str, Any]) -> list[Question]:
    """Eval questions; each names its trait-consistent answer, one of ``eval.answers``."""
    cfg = typed("eval", cfg)
    answers = [str(a) for a in cfg.answers or []]
    questions = []
    for q in cfg.questions or []:
        qid = str(q.get("id"))
        trait = q.get("trait_answer")
        if trait is None or str(trait) not in answers:
            raise SteerexpError(
                f"eval question {qid!r} has trait_answer={trait!r}; it must be one of {answers}"
            )
        scenario = q.get("scenario")
        questions.append(
            Question(qid, str(q["text"]), str(trait), "" if scenario is None else str(scenario))
        )
    if not questions:
        raise SteerexpError(f"eval {cfg['name']!r} has no questions")
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        raise SteerexpError(f"eval {cfg['name']!r} has duplicate question ids")
    return questions


def question_messages(cfg: Mapping[str, Any], q: Question) -> list[Message]:
    """Chat messages for one eval question (optional system turn, then the user prompt)."""
    cfg = typed("eval", cfg)
    msgs: list[Message] = []
    if cfg.system:
        msgs.append({"role": "system", "content": str(cfg["system"])})
    msgs.append({"role": "user", "content": str(cfg["prompt_template"]).format(question=q.text)})
    return msgs
