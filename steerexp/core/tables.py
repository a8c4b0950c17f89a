"""Reading a user file into rows (JSONL, JSON, CSV, TXT or an offline Hugging Face dataset).

Every row keeps where it came from (``line 4`` / ``row 4``), so a bad field is reported in one
line naming the file, the row and the field (:func:`row_error`).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerexp.core.errors import SteerexpError, choice_error
from steerexp.core.registry import Registry

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
        if split not in ds:
            raise choice_error(f"split of {path!r} ({key.rsplit('.', 1)[0]}.split)", split, ds)
        ds = ds[split]
    return [dict(r) for r in ds]


@READERS.register("hf")
def _hf(p: Path, label: str, split: str | None, key: str) -> list[Row]:
    return [Row(i, f"row {i + 1}", r) for i, r in enumerate(_hf_records(label, split, key))]


@READERS.register("jsonl")
def _jsonl(p: Path, label: str, split: str | None, key: str) -> list[Row]:
    rows: list[Row] = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
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
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SteerexpError(f"{label}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, list):
        raise SteerexpError(f"{label}: a JSON file must hold a list of objects (one per row)")
    return [Row(i, f"row {i + 1}", r) for i, r in enumerate(data)]


@READERS.register("csv")
def _csv(p: Path, label: str, split: str | None, key: str) -> list[Row]:
    with p.open(newline="", encoding="utf-8") as f:
        return [Row(i, f"line {i + 2}", r) for i, r in enumerate(csv.DictReader(f))]


@READERS.register("txt")
def _txt(p: Path, label: str, split: str | None, key: str) -> list[Row]:
    """One suffix per non-empty line."""
    lines = [(n, s.strip()) for n, s in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)]
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
    try:
        rows = READERS.get(kind)(p, label, split, key)
    except UnicodeDecodeError as e:
        raise SteerexpError(
            f"{key}={label!r}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8"
        ) from None
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
    """sha256 of a local file (``None`` for directories and hub names), recorded with splits."""
    p = Path(str(path)).expanduser()
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


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


def answer_letter(table: Table, row: Row, field: str, value: Any) -> str:
    """``"(A)"`` / ``" (A)"`` -> ``"A"``."""
    letter = str(value).strip().strip("()").strip()
    if not letter or isinstance(value, list | dict):
        raise row_error(
            table, row, f"field {field!r} must be one answer such as '(A)', got {value!r}"
        )
    return letter
