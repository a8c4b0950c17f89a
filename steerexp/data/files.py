"""Contrast pairs and eval questions from user files (``dataset=file|caa``, ``eval=file|caa``).

A file is JSONL, JSON (a list of objects), CSV, TXT (one suffix per line) or anything the
Hugging Face ``datasets`` library loads without a network (a ``save_to_disk`` directory,
local parquet/arrow files, a dataset already in the HF cache). Its rows take one of these
shapes, detected from the fields of the first row:

- pairs ``{prompt, positive, negative}``: one user prompt, two assistant openings;
- personas ``{positive_prompt, negative_prompt, completion}``: two user prompts, one opening;
- alternating ``{prompt, completion}``: consecutive rows are (positive, negative);
- suffixes ``{suffix}`` (or TXT lines) with ``dataset.template`` and its two personas;
- caa ``{question, answer_matching_behavior, answer_not_matching_behavior}``: the question
  with each answer as the opening (pairs), or asked with the letter judged (eval);
- questions ``{id, question, options, trait}`` (eval only).

Every problem is reported in one line naming the file, the row and the field, before any
model loads. A source (file and split) read by both the dataset and the eval (CAA style) is
split into disjoint, seeded parts: ``dataset.holdout`` of its rows (default 0.25 then, else 0)
are only asked, the rest only contrasted. Different splits of one Hugging Face ``DatasetDict``
are different sources. This module reads the pairs; :mod:`steerexp.data.questionfiles` reads
the questions.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from steerexp.config.compose import typed
from steerexp.config.errors import SteerexpError
from steerexp.data.records import Pair, Question, subsample
from steerexp.data.tables import (
    Row,
    Table,
    answer_letter,
    check_shown,
    detect_shape,
    normal_opening,
    read_table,
    row_error,
    text_field,
)

PAIR_SHAPES: dict[str, tuple[str, ...]] = {
    "pairs": ("prompt", "positive", "negative"),
    "personas": ("positive_prompt", "negative_prompt", "completion"),
    "caa": ("question", "answer_matching_behavior", "answer_not_matching_behavior"),
    "alternating": ("prompt", "completion"),
}
QUESTION_SHAPES: dict[str, tuple[str, ...]] = {
    "questions": ("id", "question", "options", "trait"),
    "caa": PAIR_SHAPES["caa"],
}


#: ``dataset.holdout`` when unset and the eval reads the dataset's own source (one-file mode).
DEFAULT_HOLDOUT = 0.25


def caa_options(table: Table, row: Row) -> tuple[str, list[str]]:
    """(trait letter, sorted option letters) of a CAA row, letters normalised
    (:func:`~steerexp.data.tables.normal_answer`) and checked against the options shown."""
    shape = PAIR_SHAPES["caa"]
    question = text_field(table, row, shape[0], shape)
    trait = answer_letter(table, row, shape[1], text_field(table, row, shape[1], shape))
    others = row.data.get(shape[2])
    if others is None:
        raise row_error(
            table, row, f"missing field {shape[2]!r} (rows of this file are {{{', '.join(shape)}}})"
        )
    others = others if isinstance(others, list) else [others]
    letters = [trait, *(answer_letter(table, row, shape[2], o) for o in others)]
    if len(set(letters)) != len(letters):
        raise row_error(
            table,
            row,
            f"answers {letters} repeat ({shape[1]} / {shape[2]}); the matching answer must "
            "differ from the others",
        )
    check_shown(table, row, question, letters, f"{shape[1]} / {shape[2]}")
    return trait, sorted(letters)


def same_source(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """True when two file configs read the same rows: the same path and the same split (the
    train and test splits of one Hugging Face ``DatasetDict`` are different sources)."""
    if a.get("path") is None or b.get("path") is None:
        return False
    pa, pb = (Path(str(x)).expanduser().resolve() for x in (a["path"], b["path"]))
    return pa == pb and a.get("split") == b.get("split")


def holdout_fraction(dataset_cfg: Mapping[str, Any], eval_cfg: Mapping[str, Any] | None) -> float:
    """``dataset.holdout`` as set; unset (null): :data:`DEFAULT_HOLDOUT` when the eval reads the
    dataset's own source from its file, else 0 (a separate eval file needs no held-out rows)."""
    value = dataset_cfg.get("holdout")
    if value is not None:
        return float(value)
    one_file = eval_cfg is not None and same_source(dataset_cfg, eval_cfg)
    return DEFAULT_HOLDOUT if one_file else 0.0


def with_holdout(
    dataset_cfg: Mapping[str, Any], eval_cfg: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The dataset config as a plain dict with ``holdout`` resolved (:func:`holdout_fraction`);
    the run's own config keeps what the user wrote, so its hash stays the same."""
    plain = (
        OmegaConf.to_container(dataset_cfg, resolve=True)
        if isinstance(dataset_cfg, DictConfig)
        else dict(dataset_cfg)
    )
    if isinstance(eval_cfg, DictConfig):
        eval_cfg = OmegaConf.to_container(eval_cfg, resolve=True)
    return {**plain, "holdout": holdout_fraction(plain, eval_cfg)}


def holdout_split(table: Table, cfg: Mapping[str, Any]) -> tuple[list[Row], list[Row]]:
    """(contrast rows, held-out eval rows): a seeded, disjoint split by ``holdout`` fraction."""
    cfg = typed("dataset", cfg)
    frac = float(cfg.holdout or 0.0)
    if not 0.0 <= frac < 1.0:
        raise SteerexpError(f"holdout={frac} must be a fraction in [0, 1)")
    rows = list(table.rows)
    if frac == 0.0:
        return rows, []
    order = list(range(len(rows)))
    random.Random(int(cfg.split_seed)).shuffle(order)
    n_eval = max(1, round(frac * len(rows)))
    if n_eval >= len(rows):
        raise SteerexpError(
            f"{table.label}: holdout={frac} of {len(rows)} rows leaves no rows for contrast pairs"
        )
    held = set(order[:n_eval])
    return [r for r in rows if r.index not in held], [r for r in rows if r.index in held]


def _persona_pairs(table: Table, rows: list[Row], cfg: Mapping[str, Any]) -> list[Pair]:
    """Persona template x suffixes, as ``dataset=honesty`` (word prefixes when ``truncate``)."""
    template = str(cfg["template"])
    pos, neg = str(cfg.positive or ""), str(cfg.negative or "")
    if "{persona}" not in template or not pos.strip() or not neg.strip():
        raise SteerexpError(
            f"dataset.template={template!r} needs a '{{persona}}' placeholder and non-empty "
            f"dataset.positive/negative personas (got {pos!r}, {neg!r})"
        )
    suffixes = [text_field(table, r, "suffix", ("suffix",)) for r in rows]
    if cfg["truncate"]:
        words = [s.split() for s in suffixes]
        suffixes = list(dict.fromkeys(" ".join(w[:k]) for w in words for k in range(1, len(w) + 1)))
    p_text, n_text = template.format(persona=pos), template.format(persona=neg)
    return [Pair(p_text, n_text, s) for s in suffixes]


def _row_pair(table: Table, shape: str, row: Row) -> Pair:
    """The pair of one row of a one-row-per-pair shape."""
    fields = PAIR_SHAPES[shape]
    if shape == "caa":
        caa_options(table, row)
        question = text_field(table, row, "question", fields)
        other = row.data[fields[2]]
        other = other[0] if isinstance(other, list) else other
        return Pair(
            question,
            question,
            normal_opening(row.data[fields[1]]),
            normal_opening(other),
            where=row.where,
        )
    if shape == "pairs":
        prompt = text_field(table, row, "prompt", fields)
        return Pair(
            prompt,
            prompt,
            text_field(table, row, "positive", fields),
            text_field(table, row, "negative", fields),
            where=row.where,
        )
    return Pair(*(text_field(table, row, f, fields) for f in fields), where=row.where)


def _alternating_pairs(table: Table, rows: list[Row]) -> list[Pair]:
    """Rows 1, 2 are (positive, negative), rows 3, 4 the next pair, ..."""
    fields = PAIR_SHAPES["alternating"]
    if len(rows) % 2:
        raise row_error(
            table,
            rows[-1],
            f"{len(rows)} rows of {{prompt, completion}}; rows alternate positive, negative, "
            "so their number must be even (this last row has no negative partner)",
        )
    return [
        Pair(
            text_field(table, p, "prompt", fields),
            text_field(table, n, "prompt", fields),
            text_field(table, p, "completion", fields),
            text_field(table, n, "completion", fields),
            where=f"{p.where} / {n.where}",
        )
        for p, n in zip(rows[0::2], rows[1::2], strict=True)
    ]


def file_pairs(cfg: Mapping[str, Any]) -> list[Pair]:
    """Contrast pairs from ``dataset.path`` (without its held-out rows, see ``holdout``)."""
    cfg = typed("dataset", cfg)
    table = read_table(cfg.path, str(cfg.format), cfg.split, "dataset.path")
    persona = cfg.template is not None
    shape = "suffixes" if persona else detect_shape(table, PAIR_SHAPES, "dataset=file")
    if float(cfg.holdout or 0.0) and shape != "caa":
        raise SteerexpError(
            f"dataset.holdout={cfg['holdout']} needs CAA rows (the shape an eval can also "
            f"read); {table.label} has {shape} rows: set dataset.holdout=0"
        )
    rows, _held = holdout_split(table, cfg)
    if persona:
        pairs = _persona_pairs(table, rows, cfg)
    elif shape == "alternating":
        pairs = _alternating_pairs(table, rows)
    else:
        pairs = [_row_pair(table, shape, r) for r in rows]
    pairs = subsample(pairs, cfg["max_pairs"])
    return pairs


def normal_text(text: str) -> str:
    """What two texts are compared as for leakage: Unicode NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", str(text)).casefold().split())


def check_leakage(
    pairs: Sequence[Pair], questions: Sequence[Question], dataset_key: str = "dataset"
) -> None:
    """Refuse eval questions whose text (normalised, :func:`normal_text`) is also a contrast
    pair's prompt: train/test leakage, whatever the files are called (a copy of the test file,
    or test rows pasted into the generate file)."""
    prompts: dict[str, str] = {}
    for i, p in enumerate(pairs):
        for text in (p.positive, p.negative):
            prompts.setdefault(normal_text(text), p.where or f"pair {i + 1}")
    hits = [
        (q.id, prompts[normal_text(q.text)]) for q in questions if normal_text(q.text) in prompts
    ]
    if not hits:
        return
    shown = ", ".join(f"{qid} = {where}" for qid, where in hits[:8])
    more = f" and {len(hits) - 8} more" if len(hits) > 8 else ""
    raise SteerexpError(
        f"train/test leakage: {len(hits)} of {len(questions)} eval questions are also contrast "
        f"pairs of {dataset_key} (eval question = pair row): {shown}{more}; remove them from the "
        "contrast rows or the eval rows (a file that repeats a question puts it on both sides of "
        "its holdout split)"
    )
