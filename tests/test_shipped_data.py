"""Fast checks of the hand-written data files: honesty suffixes and the dilemmas eval config."""

from __future__ import annotations

import re

import pytest
from helpers import REPO, compose_cfg
from omegaconf import OmegaConf

from steerexp.config.schema import EvalConfig

SUFFIXES = REPO / "steerexp" / "data" / "honesty_suffixes.txt"


@pytest.fixture(scope="module")
def suffix_lines() -> list[str]:
    return SUFFIXES.read_text(encoding="ascii").splitlines()


@pytest.fixture(scope="module")
def dilemmas():
    return compose_cfg("eval=dilemmas").eval


def test_suffixes_count_and_content(suffix_lines: list[str]) -> None:
    assert len(suffix_lines) >= 250
    for line in suffix_lines:
        assert line.strip(), "blank line in suffix file"
        assert line == line.strip(), f"stray whitespace: {line!r}"
        assert line.isascii() and line.isprintable(), f"non-ASCII/printable: {line!r}"
        assert 2 <= len(line.split()) <= 10, f"word count out of range: {line!r}"


def test_suffixes_unique(suffix_lines: list[str]) -> None:
    dupes = {s for s in suffix_lines if suffix_lines.count(s) > 1}
    assert not dupes, f"duplicate suffixes: {sorted(dupes)}"
    lowered = [s.lower() for s in suffix_lines]
    assert len(set(lowered)) == len(lowered), "case-insensitive duplicates"


def test_dilemmas_schema_matches_white_lie(dilemmas) -> None:
    """Both follow the eval schema and ask for the same answer format."""
    ref = compose_cfg("eval=white_lie").eval
    assert OmegaConf.get_type(dilemmas) is OmegaConf.get_type(ref) is EvalConfig
    fmt = ("answers", "answer_regex", "answer_prefix")
    assert [dilemmas[k] for k in fmt] == [ref[k] for k in fmt]
    assert dilemmas.name == "dilemmas"
    assert "{question}" in dilemmas.prompt_template
    for q in dilemmas.questions:
        assert set(q.keys()) == {"id", "text", "trait_answer"}


def test_dilemmas_questions(dilemmas) -> None:
    qs = dilemmas.questions
    assert len(qs) >= 30
    ids = [q.id for q in qs]
    assert len(set(ids)) == len(ids), "duplicate question ids"
    for q in qs:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", q.id), q.id
        assert q.text.strip().endswith("?"), q.id
        assert q.text.isascii(), q.id
        assert q.trait_answer in dilemmas.answers, q.id


def test_dilemmas_both_polarities(dilemmas) -> None:
    qs = dilemmas.questions
    for answer in dilemmas.answers:
        share = sum(q.trait_answer == answer for q in qs) / len(qs)
        assert share >= 0.3, f"honest={answer!r} only {share:.0%} of questions"


def test_dilemmas_regex_and_grid(dilemmas) -> None:
    rx = re.compile(dilemmas.answer_regex)
    assert rx.groups == 1
    for answer in dilemmas.answers:
        m = list(
            rx.finditer(f"blah {dilemmas.answer_prefix} No ... {dilemmas.answer_prefix} {answer}")
        )
        assert m and m[-1].group(1) == answer
    coeffs = list(dilemmas.coeffs)
    assert 0 in coeffs and coeffs == sorted(coeffs)
    assert dilemmas.repeats >= 1 and dilemmas.max_new_tokens > 0
