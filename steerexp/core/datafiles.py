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
model loads. A file read by both the dataset and the eval (CAA style) is split into disjoint,
seeded parts: ``dataset.holdout`` of its rows are only asked, the rest only contrasted.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from steerexp.core.data import Pair, subsample
from steerexp.core.errors import SteerexpError
from steerexp.core.tables import (
    Row,
    Table,
    answer_letter,
    detect_shape,
    file_hash,
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


def _caa_options(table: Table, row: Row) -> tuple[str, list[str]]:
    """(trait letter, sorted option letters) of a CAA row."""
    shape = PAIR_SHAPES["caa"]
    text_field(table, row, shape[0], shape)
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
            table, row, f"answers {letters} repeat; the matching answer must differ from the others"
        )
    return trait, sorted(letters)


def _split(table: Table, cfg: Mapping[str, Any]) -> tuple[list[Row], list[Row]]:
    """(contrast rows, held-out eval rows): a seeded, disjoint split by ``holdout`` fraction."""
    frac = float(cfg.get("holdout") or 0.0)
    if not 0.0 <= frac < 1.0:
        raise SteerexpError(f"holdout={frac} must be a fraction in [0, 1)")
    rows = list(table.rows)
    if frac == 0.0:
        return rows, []
    order = list(range(len(rows)))
    random.Random(int(cfg.get("split_seed") or 0)).shuffle(order)
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
    pos, neg = str(cfg.get("positive") or ""), str(cfg.get("negative") or "")
    if "{persona}" not in template or not pos.strip() or not neg.strip():
        raise SteerexpError(
            f"dataset.template={template!r} needs a '{{persona}}' placeholder and non-empty "
            f"dataset.positive/negative personas (got {pos!r}, {neg!r})"
        )
    suffixes = [text_field(table, r, "suffix", ("suffix",)) for r in rows]
    if cfg.get("truncate"):
        words = [s.split() for s in suffixes]
        suffixes = list(dict.fromkeys(" ".join(w[:k]) for w in words for k in range(1, len(w) + 1)))
    p_text, n_text = template.format(persona=pos), template.format(persona=neg)
    return [Pair(p_text, n_text, s) for s in suffixes]


def _row_pair(table: Table, shape: str, row: Row) -> Pair:
    """The pair of one row of a one-row-per-pair shape."""
    fields = PAIR_SHAPES[shape]
    if shape == "caa":
        _caa_options(table, row)
        question = text_field(table, row, "question", fields)
        other = row.data[fields[2]]
        other = other[0] if isinstance(other, list) else other
        return Pair(question, question, str(row.data[fields[1]]).strip(), str(other).strip())
    if shape == "pairs":
        prompt = text_field(table, row, "prompt", fields)
        return Pair(
            prompt,
            prompt,
            text_field(table, row, "positive", fields),
            text_field(table, row, "negative", fields),
        )
    return Pair(*(text_field(table, row, f, fields) for f in fields))


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
        )
        for p, n in zip(rows[0::2], rows[1::2], strict=True)
    ]


def file_pairs(cfg: Mapping[str, Any]) -> list[Pair]:
    """Contrast pairs from ``dataset.path`` (without its held-out rows, see ``holdout``)."""
    table = read_table(
        cfg.get("path"), str(cfg.get("format") or "auto"), cfg.get("split"), "dataset.path"
    )
    persona = cfg.get("template") is not None
    shape = "suffixes" if persona else detect_shape(table, PAIR_SHAPES, "dataset=file")
    if float(cfg.get("holdout") or 0.0) and shape != "caa":
        raise SteerexpError(
            f"dataset.holdout={cfg.get('holdout')} needs CAA rows (the shape an eval can also "
            f"read); {table.label} has {shape} rows: set dataset.holdout=0"
        )
    rows, _held = _split(table, cfg)
    if persona:
        pairs = _persona_pairs(table, rows, cfg)
    elif shape == "alternating":
        pairs = _alternating_pairs(table, rows)
    else:
        pairs = [_row_pair(table, shape, r) for r in rows]
    pairs = subsample(pairs, cfg.get("max_pairs"))
    return pairs


def _options(table: Table, row: Row) -> list[str]:
    """A question row's ``options``: a list, a JSON list string or ``A|B`` (CSV)."""
    value = row.data.get("options")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("[") else text.split("|")
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, list) or len(value) < 2 or not all(str(o).strip() for o in value):
        raise row_error(
            table,
            row,
            f'field \'options\' must list two or more answers, e.g. ["A", "B"]; got {row.data.get("options")!r}',
        )
    options = [str(o).strip() for o in value]
    if len({o.lower() for o in options}) != len(options):
        raise row_error(table, row, f"field 'options' {options} repeats an answer")
    return options


def choices_text(prefix: str, answers: Sequence[str]) -> str:
    """``'Answer: A' or 'Answer: B'`` -- what ``{choices}`` in ``eval.prompt_template`` becomes."""
    quoted = [f"'{prefix} {a}'" for a in answers]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def default_regex(prefix: str, answers: Sequence[str]) -> str:
    r"""The last ``<prefix> <answer>`` in the completion, e.g. ``Answer:\s*\(?(A|B)(?!\w)``.

    An optional ``(`` before the answer is allowed ("Answer: (A)"); the answer must end
    there, so "Answer: Absolutely" is no "A".
    """
    alternatives = "|".join(re.escape(a) for a in answers)
    return rf"{re.escape(prefix)}\s*\(?({alternatives})(?!\w)"


def _same_file(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return False
    return Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()


def file_questions(
    eval_cfg: Mapping[str, Any], dataset_cfg: Mapping[str, Any]
) -> tuple[list[dict[str, str]], list[str]]:
    """``(questions as {id, text, trait_answer}, answers)`` from ``eval.path``.

    When the eval reads the dataset's own file, only the dataset's held-out rows are asked.
    """
    path = eval_cfg.get("path")
    table = read_table(
        path, str(eval_cfg.get("format") or "auto"), eval_cfg.get("split"), "eval.path"
    )
    rows = table.rows
    if "path" in dataset_cfg and _same_file(path, dataset_cfg.get("path")):
        _train, rows = _split(table, dataset_cfg)
        if not rows:
            raise SteerexpError(
                f"eval.path={str(path)!r} is the dataset's own file but dataset.holdout=0 holds no "
                "rows out: set dataset.holdout (e.g. 0.25) or give the eval its own file"
            )
    shape = detect_shape(table, QUESTION_SHAPES, "eval=file")
    fields = QUESTION_SHAPES[shape]
    questions: list[dict[str, str]] = []
    first_seen: dict[str, Row] = {}
    answers: list[str] | None = None
    answers_row: Row | None = None
    for r in rows:
        if shape == "caa":
            trait, options = _caa_options(table, r)
            qid = str(r.data.get("id") or f"row{r.index + 1}")
        else:
            qid = text_field(table, r, "id", fields)
            text_field(table, r, "question", fields)
            options = _options(table, r)
            trait = text_field(table, r, "trait", fields).strip()
            if trait not in options:
                raise row_error(
                    table,
                    r,
                    f"field 'trait' is {trait!r}, which is not one of its options {options}",
                )
        if qid in first_seen:
            raise row_error(table, r, f"duplicate id {qid!r} (first at {first_seen[qid].where})")
        first_seen[qid] = r
        if answers is None:
            answers, answers_row = options, r
        elif sorted(options) != sorted(answers):
            raise row_error(
                table,
                r,
                f"field 'options' {options} differs from {answers} ({answers_row.where if answers_row else ''}); "
                "every question of one eval offers the same answers",
            )
        questions.append({"id": qid, "text": str(r.data["question"]), "trait_answer": trait})
    assert answers is not None
    return questions, answers


def prepare_eval(cfg: DictConfig) -> None:
    """Fill a file eval's config from its file: questions, answers, default regex, prompt.

    Runs before any model loads; afterwards ``cfg.eval`` looks like a built-in eval, so every
    stage reads it as before. Configs without ``eval.path`` are left alone.
    """
    if "path" not in cfg.eval:
        return
    questions, answers = file_questions(cfg.eval, cfg.dataset)
    prefix = str(cfg.eval.get("answer_prefix") or "Answer:")
    choices = choices_text(prefix, answers).replace("{", "{{").replace("}", "}}")
    with open_dict(cfg):
        cfg.eval.questions = questions
        cfg.eval.answers = answers
        if cfg.eval.get("answer_regex") is None:
            cfg.eval.answer_regex = default_regex(prefix, answers)
        cfg.eval.prompt_template = str(cfg.eval.prompt_template).replace("{choices}", choices)


def record_split(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """Write ``split.json`` (which rows were contrasted, which asked) when one file serves both."""
    ds, ev = cfg.dataset, cfg.eval
    if "path" not in ds or not float(ds.get("holdout") or 0.0):
        return None
    table = read_table(ds.path, str(ds.get("format") or "auto"), ds.get("split"), "dataset.path")
    train, held = _split(table, ds)
    info = {
        "path": str(ds.path),
        "sha256": file_hash(ds.path),
        "holdout": float(ds.holdout),
        "split_seed": int(ds.get("split_seed") or 0),
        "eval_reads_it": "path" in ev and _same_file(ev.get("path"), ds.path),
        "contrast_rows": [r.index + 1 for r in train],
        "eval_rows": [r.index + 1 for r in held],
    }
    (run_dir / "split.json").write_text(json.dumps(info, indent=1))
    return info
