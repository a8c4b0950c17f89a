"""Eval questions from user files (``eval=file|caa``): the question shapes of
:mod:`steerexp.core.datafiles`, the answer choices and regex derived from their options, and the
record of a CAA file's held-out split (``split.json``)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from steerexp.core.config import typed
from steerexp.core.datafiles import QUESTION_SHAPES, caa_options, holdout_split
from steerexp.core.errors import SteerexpError
from steerexp.core.tables import (
    Row,
    Table,
    detect_shape,
    file_hash,
    read_table,
    row_error,
    text_field,
)


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
    """``(questions as {id, text, trait_answer[, scenario]}, answers)`` from ``eval.path``; an
    optional ``scenario`` field groups paraphrases into one cluster.

    When the eval reads the dataset's own file, only the dataset's held-out rows are asked.
    """
    eval_cfg, dataset_cfg = typed("eval", eval_cfg), typed("dataset", dataset_cfg)
    path = eval_cfg.path
    table = read_table(path, str(eval_cfg.format), eval_cfg.split, "eval.path")
    rows = table.rows
    if _same_file(path, dataset_cfg.path):
        _train, rows = holdout_split(table, dataset_cfg)
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
            trait, options = caa_options(table, r)
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
        question = {"id": qid, "text": str(r.data["question"]), "trait_answer": trait}
        if r.data.get("scenario") not in (None, ""):
            question["scenario"] = str(r.data["scenario"])
        questions.append(question)
    assert answers is not None
    return questions, answers


def prepare_eval(cfg: DictConfig) -> None:
    """Fill a file eval's config from its file: questions, answers, default regex, prompt.

    Runs before any model loads; afterwards ``cfg.eval`` looks like a built-in eval, so every
    stage reads it as before. Evals that list their ``questions`` are left alone.
    """
    if cfg.eval.questions is not None:
        return
    questions, answers = file_questions(cfg.eval, cfg.dataset)
    prefix = str(cfg.eval.answer_prefix)
    choices = choices_text(prefix, answers).replace("{", "{{").replace("}", "}}")
    with open_dict(cfg):
        cfg.eval.questions = questions
        cfg.eval.answers = answers
        if cfg.eval.answer_regex is None:
            cfg.eval.answer_regex = default_regex(prefix, answers)
        cfg.eval.prompt_template = str(cfg.eval.prompt_template).replace("{choices}", choices)


def record_split(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """Write ``split.json`` (which rows were contrasted, which asked) when one file serves both."""
    ds, ev = cfg.dataset, cfg.eval
    if ds.path is None or not float(ds.holdout):
        return None
    table = read_table(ds.path, str(ds.format), ds.split, "dataset.path")
    train, held = holdout_split(table, ds)
    info = {
        "path": str(ds.path),
        "sha256": file_hash(ds.path),
        "holdout": float(ds.holdout),
        "split_seed": int(ds.split_seed),
        "eval_reads_it": _same_file(ev.path, ds.path),
        "contrast_rows": [r.index + 1 for r in train],
        "eval_rows": [r.index + 1 for r in held],
    }
    (run_dir / "split.json").write_text(json.dumps(info, indent=1))
    return info
