"""Eval questions from user files (``eval=file|caa``): the question shapes of
:mod:`steerexp.data.files`, the answer choices and regex derived from their options (an
:class:`EvalSpec`), and the record of a CAA file's held-out split (``split.json``)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from steerexp.config.compose import typed
from steerexp.config.errors import SteerexpError
from steerexp.data.files import (
    QUESTION_SHAPES,
    caa_options,
    holdout_fraction,
    holdout_split,
    same_source,
    with_holdout,
)
from steerexp.data.tables import (
    Row,
    Table,
    check_shown,
    detect_shape,
    file_hash,
    normal_answer,
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
    options = [normal_answer(o) for o in value]
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


def file_questions(
    eval_cfg: Mapping[str, Any], dataset_cfg: Mapping[str, Any]
) -> tuple[list[dict[str, str]], list[str]]:
    """``(questions as {id, text, trait_answer[, scenario]}, answers)`` from ``eval.path``; an
    optional ``scenario`` field groups paraphrases into one cluster.

    When the eval reads the dataset's own source (same file and split), only the dataset's
    held-out rows are asked; a missing file is then named as ``dataset.path``.
    """
    table, rows = eval_rows(eval_cfg, dataset_cfg)
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
            trait = normal_answer(text_field(table, r, "trait", fields))
            check_shown(table, r, text_field(table, r, "question", fields), options, "options")
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
            named = "the answers" if shape == "caa" else "field 'options'"
            verb = "differ" if shape == "caa" else "differs"
            raise row_error(
                table,
                r,
                f"{named} {options} {verb} from {answers} ({answers_row.where if answers_row else ''}); "
                "every question of one eval offers the same answers",
            )
        question = {"id": qid, "text": str(r.data["question"]), "trait_answer": trait}
        if r.data.get("scenario") not in (None, ""):
            question["scenario"] = str(r.data["scenario"])
        questions.append(question)
    assert answers is not None
    return questions, answers


def eval_rows(
    eval_cfg: Mapping[str, Any], dataset_cfg: Mapping[str, Any]
) -> tuple[Table, list[Row]]:
    """The eval file's table and the rows it asks: all of them, or the dataset's held-out rows
    when it reads the dataset's own source."""
    dataset_cfg = typed("dataset", with_holdout(dataset_cfg, eval_cfg))
    eval_cfg = typed("eval", eval_cfg)
    shared = same_source(eval_cfg, dataset_cfg)
    key = "dataset.path" if shared else "eval.path"
    table = read_table(eval_cfg.path, str(eval_cfg.format), eval_cfg.split, key)
    if not shared:
        return table, list(table.rows)
    _train, rows = holdout_split(table, dataset_cfg)
    if not rows:
        raise SteerexpError(
            f"eval.path={str(eval_cfg.path)!r} is the dataset's own file but dataset.holdout=0 "
            "holds no rows out: set dataset.holdout (e.g. 0.25) or give the eval its own file"
        )
    return table, rows


def note_holdout(cfg: DictConfig) -> None:
    """Say when a set ``dataset.holdout`` keeps rows out of the pairs that no eval asks."""
    frac = holdout_fraction(cfg.dataset, cfg.eval)
    if frac and cfg.dataset.path is not None and not same_source(cfg.dataset, cfg.eval):
        print(
            f"[steerexp] dataset.holdout={frac} keeps that share of {cfg.dataset.path} out of the "
            "contrast pairs although the eval reads other questions; set dataset.holdout=0 to "
            "use every row",
            flush=True,
        )


@dataclass(frozen=True)
class EvalSpec:
    """An eval as the stages read it, resolved once before any model loads: its questions, answer
    options, answer regex and prompt template, from the config or (``eval=file|caa``) its file.

    ``section`` is the eval config with these in place -- the config's own node when the eval
    lists its questions, else a new read-only one -- so the stages and the generation cache key
    read exactly what a built-in eval of the same questions would give; the config is never
    changed."""

    questions: list[dict[str, Any]]
    answers: list[str]
    answer_regex: str
    prompt_template: str
    answer_prefix: str
    section: DictConfig

    def filled(self) -> dict[str, Any]:
        """The keys resolving filled in (for a config that must carry them, e.g. a confirmation)."""
        return {
            "questions": self.questions,
            "answers": self.answers,
            "answer_regex": self.answer_regex,
            "prompt_template": self.prompt_template,
        }


def resolve_eval(cfg: DictConfig) -> EvalSpec:
    """The run's :class:`EvalSpec`: a listed eval as it is; a file eval's questions, answers,
    default regex (when ``answer_regex`` is null) and prompt (``{choices}`` spelled out) from its
    file."""
    note_holdout(cfg)
    ev = cfg.eval
    prefix = str(ev.answer_prefix)
    if ev.questions is not None:
        listed = OmegaConf.to_container(ev.questions, resolve=True)
        answers = [str(a) for a in ev.answers or []]
        return EvalSpec(
            listed,
            answers,
            str(ev.answer_regex),
            str(ev.prompt_template),
            prefix,
            ev,  # type: ignore[arg-type]
        )
    questions, answers = file_questions(ev, cfg.dataset)
    choices = choices_text(prefix, answers).replace("{", "{{").replace("}", "}}")
    regex = default_regex(prefix, answers) if ev.answer_regex is None else str(ev.answer_regex)
    prompt = str(ev.prompt_template).replace("{choices}", choices)
    section = typed(
        "eval",
        {
            **OmegaConf.to_container(ev, resolve=True, enum_to_str=True),  # type: ignore[dict-item]
            "questions": questions,
            "answers": answers,
            "answer_regex": regex,
            "prompt_template": prompt,
        },
    )
    return EvalSpec(questions, answers, regex, prompt, prefix, section)


def _source(cfg: Mapping[str, Any], rows: list[Row]) -> dict[str, Any]:
    return {
        "path": str(cfg["path"]),
        "split": cfg["split"],
        "sha256": file_hash(cfg["path"]),
        "rows": [r.index + 1 for r in rows],
    }


def record_split(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """Write ``split.json`` when the dataset comes from a file: which rows of which source
    (path, split, content sha256) were contrasted and which were asked.

    ``contrast_rows`` / ``eval_rows`` are 1-based row numbers, each in its own source (the same
    one when ``eval_reads_it``); the eval's rows are recorded only when it reads a file."""
    ev = cfg.eval
    if cfg.dataset.path is None:
        return None
    ds = typed("dataset", with_holdout(cfg.dataset, ev))
    table = read_table(ds.path, str(ds.format), ds.split, "dataset.path")
    train, held = holdout_split(table, ds)
    shared = same_source(ds, ev)
    info: dict[str, Any] = {
        **{k: v for k, v in _source(ds, train).items() if k != "rows"},
        "holdout": float(ds.holdout),
        "split_seed": int(ds.split_seed),
        "eval_reads_it": shared,
        "contrast_rows": [r.index + 1 for r in train],
        "eval_rows": [r.index + 1 for r in held],
        "eval": None,
    }
    if not shared and ev.path is not None:
        _table, asked = eval_rows(ev, ds)
        info["eval"] = _source(ev, asked)
        info["eval_rows"] = info["eval"]["rows"]
    elif shared:
        info["eval"] = _source(ev, held)
    (run_dir / "split.json").write_text(json.dumps(info, indent=1))
    return info
