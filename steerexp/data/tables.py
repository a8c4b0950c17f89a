"""Reading a user file into rows (JSONL, JSON, CSV, TXT or an offline Hugging Face dataset).

Every row keeps where it came from (``line 4`` / ``row 4``), so a bad field is reported in one
line naming the file, the row and the field (:func:`row_error`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerexp.config.errors import SteerexpError, choice_error
from steerexp.config.registry import Registry

_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".txt": "txt"}


_HF_FILES = {".parquet": "parquet", ".arrow": "arrow"}


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


Reader = Callable[[Path, str, str | None, str], list[Row]]
#: File formats (``dataset.format``/``eval.format``): name -> reader of a file's rows, called as
#: ``reader(path, label, split, key)``; ``auto`` picks one by the file's suffix.
READERS: Registry[Reader] = Registry("file format")


def row_error(table: Table | str, row: Row | None, message: str) -> SteerexpError:
    label = table.label if isinstance(table, Table) else table
    return SteerexpError(f"{label}{' ' + row.where if row else ''}: {message}")


def _format_of(path: Path, fmt: str, key: str) -> str:
    if fmt != "auto":
        if fmt not in READERS:
            raise choice_error(f"{key.rsplit('.', 1)[0]}.format", fmt, (*READERS, "auto"))
        return fmt
    if path.is_dir() or path.suffix in _HF_FILES:
        return "hf"
    if path.suffix in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[path.suffix]
    raise SteerexpError(
        f"{key}={str(path)!r}: unknown file format {path.suffix or '(no extension)'!r}; "
        f"valid: {', '.join(sorted(_SUFFIX_FORMATS) + sorted(_HF_FILES))} or a directory "
        f"(or set {key.rsplit('.', 1)[0]}.format to one of {', '.join(READERS)})"
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
        if split is None:
            raise SteerexpError(
                f"{key}={path!r} is a DatasetDict with splits {', '.join(sorted(ds))}: pick one "
                f"with {key.rsplit('.', 1)[0]}.split=<name>"
            )
        if split not in ds:
            raise choice_error(f"split of {path!r} ({key.rsplit('.', 1)[0]}.split)", split, ds)
        ds = ds[split]
    return [dict(r) for r in ds]


@READERS.register("hf")
def _hf(p: Path, label: str, split: str | None, key: str) -> list[Row]:
    return [Row(i, f"row {i + 1}", r) for i, r in enumerate(_hf_records(label, split, key))]


def read_text(p: Path, label: str) -> str:
    """The file as UTF-8 text (a leading BOM dropped); any other encoding fails in one line
    naming the first bad byte and its line."""
    data = p.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise SteerexpError(
            f"{label} is not UTF-8 (byte 0x{data[e.start]:02x} at line {line}); re-save it as "
            "UTF-8 (e.g. iconv -f latin1 -t utf-8, or 'Save as ... UTF-8')"
        ) from None


@READERS.register("jsonl")
def _jsonl(p: Path, label: str, split: str | None, key: str) -> list[Row]:
    rows: list[Row] = []
    for n, line in enumerate(read_text(p, label).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(Row(len(rows), f"line {n}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise SteerexpError(f"{label} line {n}: not valid JSON ({e.msg})") from None
    return rows


@READERS.register("json")
def _json(p: Path, label: str, split: str | None, key: str) -> list[Row]:
    try:
        data = json.loads(read_text(p, label))
    except json.JSONDecodeError as e:
        raise SteerexpError(
            f"{label}: not valid JSON ({e.msg}: line {e.lineno} column {e.colno})"
        ) from None
    if not isinstance(data, list):
        raise SteerexpError(f"{label}: a JSON file must hold a list of objects (one per row)")
    return [Row(i, f"row {i + 1}", r) for i, r in enumerate(data)]


@READERS.register("csv")
def _csv(p: Path, label: str, split: str | None, key: str) -> list[Row]:
    """A header row, then one row per line; header names are stripped of spaces."""
    reader = csv.DictReader(io.StringIO(read_text(p, label), newline=""))
    if reader.fieldnames:
        reader.fieldnames = [str(f).strip() for f in reader.fieldnames]
    return [Row(i, f"line {i + 2}", r) for i, r in enumerate(reader)]


@READERS.register("txt")
def _txt(p: Path, label: str, split: str | None, key: str) -> list[Row]:
    """One suffix per non-empty line."""
    lines = [(n, s.strip()) for n, s in enumerate(read_text(p, label).splitlines(), 1)]
    return [Row(i, f"line {n}", {"suffix": s}) for i, (n, s) in enumerate(x for x in lines if x[1])]


#: The largest data file steerexp reads (a contrast-pair or question file is kilobytes).
MAX_FILE_BYTES = 256 << 20


def _check_regular_file(p: Path, key: str, path: str) -> None:
    """Only a regular file of at most :data:`MAX_FILE_BYTES` is read: a FIFO would block forever,
    ``/dev/zero`` would fill memory."""
    if not p.is_file():
        raise SteerexpError(
            f"{key}={path!r} is not a regular file (a directory, FIFO or device); give a data file"
        )
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise SteerexpError(
            f"{key}={path!r} is {size / 2**20:.0f} MiB; data files are read whole, up to "
            f"{MAX_FILE_BYTES >> 20} MiB: use a smaller file or a Hugging Face dataset dir"
        )


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
    if kind != "hf":
        _check_regular_file(p, key, str(path))
    rows = READERS.get(kind)(p, label, split, key)
    table = Table(label, rows)
    for r in rows:
        if not isinstance(r.data, Mapping):
            raise row_error(
                table, r, f"expected an object with named fields, got {type(r.data).__name__}"
            )
    if not rows:
        raise SteerexpError(f"{label}: the file has no rows")
    return table


def file_hash(path: Any) -> str | None:
    """sha256 of a local file, or of a directory's data files (a ``save_to_disk`` dir: its
    ``.arrow``/``.parquet`` files, names and bytes, in path order), recorded with splits so a
    split stays tied to content; ``None`` for a hub name."""
    p = Path(str(path)).expanduser()
    if p.is_file():
        return hashlib.sha256(p.read_bytes()).hexdigest()
    if not p.is_dir():
        return None
    digest = hashlib.sha256()
    for f in sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in _HF_FILES):
        digest.update(f.relative_to(p).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(f.read_bytes()).digest())
    return digest.hexdigest()


def detect_shape(table: Table, shapes: Mapping[str, tuple[str, ...]], what: str) -> str:
    """The shape whose fields the first row has (all of them, else the most of them)."""
    first = table.rows[0]
    have = set(first.data)
    full = [name for name, fields in shapes.items() if set(fields) <= have]
    if full:
        return full[0]
    name = max(shapes, key=lambda s: len(set(shapes[s]) & have))
    missing = [f for f in shapes[name] if f not in have]
    valid = "; ".join("{" + ", ".join(f) + "}" for f in shapes.values())
    raise row_error(
        table,
        first,
        f"missing field {missing[0]!r}; rows of {what} have the fields of one of: {valid}",
    )


def text_field(table: Table, row: Row, field: str, shape: Sequence[str]) -> str:
    """A required non-empty text field of a row."""
    if field not in row.data or row.data[field] is None:
        raise row_error(
            table, row, f"missing field {field!r} (rows of this file are {{{', '.join(shape)}}})"
        )
    value = row.data[field]
    if not isinstance(value, str | int | float) or not str(value).strip():
        raise row_error(table, row, f"field {field!r} must be non-empty text, got {value!r}")
    return str(value)


#: An answer that names an option letter: ``(A)``, ``a``, ``(b) Agree``, ``A. Yes``, ``B)``.
_LETTER = re.compile(r"^\(?\s*([A-Za-z])\s*(?:\)|\.|:|(?=\s)|$)")
#: Option markers shown in a question: ``(A)`` at the start of a line, else anywhere.
_SHOWN_LINE = re.compile(r"^[ \t]*\(([A-Za-z])\)", re.M)
_SHOWN_INLINE = re.compile(r"(?<!\w)\(([A-Za-z])\)(?=\s|$|[.,;:?!])")


def normal_answer(value: Any) -> str:
    """The one place answers are normalised: an option letter, in any case, with or without
    parentheses and trailing text (``(a) Agree``), is its upper-case letter ``A``; any other
    answer (``Yes``) is its stripped text. Empty text gives ``""``."""
    text = str(value).strip()
    m = _LETTER.match(text)
    return m.group(1).upper() if m else text.strip("()").strip()


def shown_options(question: str) -> list[str]:
    """The option letters a question shows as ``(A)`` markers (upper case, in order)."""
    found = _SHOWN_LINE.findall(question) or _SHOWN_INLINE.findall(question)
    return list(dict.fromkeys(f.upper() for f in found))


def check_shown(table: Table, row: Row, question: str, letters: Sequence[str], field: str) -> None:
    """The option letters the answers name must be the ones the question shows (when it shows
    any as ``(A)``): a ``(C)`` nobody answers, or an answer ``C`` not shown, is an error."""
    shown = shown_options(question)
    if not shown or not all(len(a) == 1 and a.isalpha() for a in letters):
        return
    if sorted(shown) != sorted(letters):
        raise row_error(
            table,
            row,
            f"the question shows options {', '.join(f'({s})' for s in shown)} but its answers "
            f"({field}) are {', '.join(sorted(letters))}; they must be exactly the options shown",
        )


def normal_opening(value: Any) -> str:
    """An answer used as an assistant opening: stripped, its option letter upper-cased
    (``(a) Agree`` -> ``(A) Agree``), the rest as written."""
    text = str(value).strip()
    m = _LETTER.match(text)
    return text[: m.start(1)] + m.group(1).upper() + text[m.end(1) :] if m else text


def answer_letter(table: Table, row: Row, field: str, value: Any) -> str:
    """A row's answer field as :func:`normal_answer` (``"(a) Agree"`` -> ``"A"``)."""
    letter = normal_answer(value) if not isinstance(value, list | dict) else ""
    if not letter:
        raise row_error(
            table, row, f"field {field!r} must be one answer such as '(A)', got {value!r}"
        )
    return letter
