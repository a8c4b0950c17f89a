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

import csv
import hashlib
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from steerexp.core.data import Pair, subsample
from steerexp.core.errors import SteerexpError, choice_error

FORMATS = ("csv", "hf", "json", "jsonl", "txt")
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".txt": "txt"}
_HF_FILES = {".parquet": "parquet", ".arrow": "arrow"}

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


@dataclass(frozen=True)
class Row:
    """One record of a file and where it is (``line 4`` / ``row 4``) for error messages."""

    index: int  # 0-based position among the file's records
    where: str
    data: Mapping[str, Any]


@dataclass(frozen=True)
class Table:
    """A loaded file: its rows and a label (the path) for error messages."""

    label: str
    rows: list[Row]


def _fail(table: Table | str, row: Row | None, message: str) -> SteerexpError:
    label = table.label if isinstance(table, Table) else table
    return SteerexpError(f"{label}{' ' + row.where if row else ''}: {message}")


def _format_of(path: Path, fmt: str, key: str) -> str:
    if fmt != "auto":
        if fmt not in FORMATS:
            raise choice_error(f"{key.rsplit('.', 1)[0]}.format", fmt, (*FORMATS, "auto"))
        return fmt
    if path.is_dir() or path.suffix in _HF_FILES:
        return "hf"
    if path.suffix in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[path.suffix]
    raise SteerexpError(
        f"{key}={str(path)!r}: unknown file format {path.suffix or '(no extension)'!r}; "
        f"valid: {', '.join(sorted(_SUFFIX_FORMATS) + sorted(_HF_FILES))} or a directory "
        f"(or set {key.rsplit('.', 1)[0]}.format to one of {', '.join(FORMATS)})"
    )


def _hf_records(path: str, split: str | None, key: str) -> list[dict[str, Any]]:
    """Records of an offline Hugging Face dataset: saved dir, local data files or HF cache."""
    try:
        import datasets
    except ImportError:
        raise SteerexpError(
            f"{key}={path!r} needs the Hugging Face `datasets` package (pip install datasets)"
        ) from None
    p = Path(path).expanduser()
    try:
        if p.is_dir() and any(
            (p / f).exists() for f in ("dataset_dict.json", "state.json", "dataset_info.json")
        ):
            ds = datasets.load_from_disk(str(p))
        elif p.is_file():
            ds = datasets.load_dataset(_HF_FILES.get(p.suffix, "json"), data_files=str(p))
        else:
            ds = datasets.load_dataset(str(path))
    except Exception as e:
        raise SteerexpError(
            f"{key}={path!r}: the datasets library could not load it offline "
            f"({type(e).__name__}: {e})"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if split is None and len(ds) == 1:
            split = next(iter(ds))
        if split not in ds:
            raise choice_error(f"split of {path!r} ({key.rsplit('.', 1)[0]}.split)", split, ds)
        ds = ds[split]
    return [dict(r) for r in ds]


def read_table(path: Any, fmt: str = "auto", split: str | None = None, key: str = "path") -> Table:
    """Every record of ``path`` as a dict; ``key`` (e.g. ``dataset.path``) names it in errors."""
    if path is None or not str(path).strip():
        raise SteerexpError(f"{key} is not set; pass {key}=<file>")
    p = Path(str(path)).expanduser()
    fmt = str(fmt or "auto")
    if not p.exists() and fmt != "hf":
        raise SteerexpError(f"{key}={str(path)!r}: no such file or directory")
    kind = _format_of(p, fmt, key)
    label = str(path)
    rows: list[Row] = []
    if kind == "hf":
        rows = [Row(i, f"row {i + 1}", r) for i, r in enumerate(_hf_records(str(path), split, key))]
    elif kind == "jsonl":
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(Row(len(rows), f"line {n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise SteerexpError(f"{label} line {n}: not valid JSON ({e.msg})") from None
    elif kind == "json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise SteerexpError(f"{label}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, list):
            raise SteerexpError(f"{label}: a JSON file must hold a list of objects (one per row)")
        rows = [Row(i, f"row {i + 1}", r) for i, r in enumerate(data)]
    elif kind == "csv":
        with p.open(newline="", encoding="utf-8") as f:
            rows = [Row(i, f"line {i + 2}", r) for i, r in enumerate(csv.DictReader(f))]
    else:
        lines = [
            (n, s.strip()) for n, s in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        ]
        rows = [
            Row(i, f"line {n}", {"suffix": s}) for i, (n, s) in enumerate(x for x in lines if x[1])
        ]
    table = Table(label, rows)
    for r in rows:
        if not isinstance(r.data, Mapping):
            raise _fail(
                table, r, f"expected an object with named fields, got {type(r.data).__name__}"
            )
    if not rows:
        raise SteerexpError(f"{label}: the file has no rows")
    return table


def file_hash(path: Any) -> str | None:
    """sha256 of a local file (``None`` for directories and hub names), recorded with splits."""
    p = Path(str(path)).expanduser()
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


def _shape(table: Table, shapes: Mapping[str, tuple[str, ...]], what: str) -> str:
    """The shape whose fields the first row has (all of them, else the most of them)."""
    first = table.rows[0]
    have = set(first.data)
    full = [name for name, fields in shapes.items() if set(fields) <= have]
    if full:
        return full[0]
    name = max(shapes, key=lambda s: len(set(shapes[s]) & have))
    missing = [f for f in shapes[name] if f not in have]
    valid = "; ".join("{" + ", ".join(f) + "}" for f in shapes.values())
    raise _fail(
        table,
        first,
        f"missing field {missing[0]!r}; rows of {what} have the fields of one of: {valid}",
    )


def _text(table: Table, row: Row, field: str, shape: Sequence[str]) -> str:
    """A required non-empty text field of a row."""
    if field not in row.data or row.data[field] is None:
        raise _fail(
            table, row, f"missing field {field!r} (rows of this file are {{{', '.join(shape)}}})"
        )
    value = row.data[field]
    if not isinstance(value, str | int | float) or not str(value).strip():
        raise _fail(table, row, f"field {field!r} must be non-empty text, got {value!r}")
    return str(value)


def _letter(table: Table, row: Row, field: str, value: Any) -> str:
    """``"(A)"`` / ``" (A)"`` -> ``"A"``."""
    letter = str(value).strip().strip("()").strip()
    if not letter or isinstance(value, list | dict):
        raise _fail(table, row, f"field {field!r} must be one answer such as '(A)', got {value!r}")
    return letter


def _caa_options(table: Table, row: Row) -> tuple[str, list[str]]:
    """(trait letter, sorted option letters) of a CAA row."""
    shape = PAIR_SHAPES["caa"]
    _text(table, row, shape[0], shape)
    trait = _letter(table, row, shape[1], _text(table, row, shape[1], shape))
    others = row.data.get(shape[2])
    if others is None:
        raise _fail(
            table, row, f"missing field {shape[2]!r} (rows of this file are {{{', '.join(shape)}}})"
        )
    others = others if isinstance(others, list) else [others]
    letters = [trait, *(_letter(table, row, shape[2], o) for o in others)]
    if len(set(letters)) != len(letters):
        raise _fail(
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
    suffixes = [_text(table, r, "suffix", ("suffix",)) for r in rows]
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
        question = _text(table, row, "question", fields)
        other = row.data[fields[2]]
        other = other[0] if isinstance(other, list) else other
        return Pair(question, question, str(row.data[fields[1]]).strip(), str(other).strip())
    if shape == "pairs":
        prompt = _text(table, row, "prompt", fields)
        return Pair(
            prompt,
            prompt,
            _text(table, row, "positive", fields),
            _text(table, row, "negative", fields),
        )
    return Pair(*(_text(table, row, f, fields) for f in fields))


def _alternating_pairs(table: Table, rows: list[Row]) -> list[Pair]:
    """Rows 1, 2 are (positive, negative), rows 3, 4 the next pair, ..."""
    fields = PAIR_SHAPES["alternating"]
    if len(rows) % 2:
        raise _fail(
            table,
            rows[-1],
            f"{len(rows)} rows of {{prompt, completion}}; rows alternate positive, negative, "
            "so their number must be even (this last row has no negative partner)",
        )
    return [
        Pair(
            _text(table, p, "prompt", fields),
            _text(table, n, "prompt", fields),
            _text(table, p, "completion", fields),
            _text(table, n, "completion", fields),
        )
        for p, n in zip(rows[0::2], rows[1::2], strict=True)
    ]


def file_pairs(cfg: Mapping[str, Any]) -> list[Pair]:
    """Contrast pairs from ``dataset.path`` (without its held-out rows, see ``holdout``)."""
    table = read_table(
        cfg.get("path"), str(cfg.get("format") or "auto"), cfg.get("split"), "dataset.path"
    )
    persona = cfg.get("template") is not None
    shape = "suffixes" if persona else _shape(table, PAIR_SHAPES, "dataset=file")
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
        raise _fail(
            table,
            row,
            f'field \'options\' must list two or more answers, e.g. ["A", "B"]; got {row.data.get("options")!r}',
        )
    options = [str(o).strip() for o in value]
    if len({o.lower() for o in options}) != len(options):
        raise _fail(table, row, f"field 'options' {options} repeats an answer")
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
    shape = _shape(table, QUESTION_SHAPES, "eval=file")
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
            qid = _text(table, r, "id", fields)
            _text(table, r, "question", fields)
            options = _options(table, r)
            trait = _text(table, r, "trait", fields).strip()
            if trait not in options:
                raise _fail(
                    table,
                    r,
                    f"field 'trait' is {trait!r}, which is not one of its options {options}",
                )
        if qid in first_seen:
            raise _fail(table, r, f"duplicate id {qid!r} (first at {first_seen[qid].where})")
        first_seen[qid] = r
        if answers is None:
            answers, answers_row = options, r
        elif sorted(options) != sorted(answers):
            raise _fail(
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
