"""Cache of judged rows (a run's generations, a group's random null): ``dose.csv`` + ``meta.json``.

An entry is a directory written whole (temp dir, then rename). ``meta.json`` records the sha256
of ``dose.csv`` (as the extraction cache records its tensors'): an entry that is unreadable, or
whose rows were edited or truncated, counts as absent and is removed and rebuilt. A cache that
cannot be written (read-only, full) only costs the reuse: one warning, the run goes on.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from steerexp.store import artifacts
from steerexp.store.atomic import atomic_dir
from steerexp.store.cache import file_digest

ROWS = "dose.csv"
META = "meta.json"


def store_rows(entry: Path, dose: pd.DataFrame, meta: Mapping[str, Any]) -> None:
    """Write ``dose.csv`` and ``meta.json`` into a temp dir and rename it into place."""
    with atomic_dir(entry) as tmp:
        artifacts.write_frame(tmp / ROWS, dose, float_format="%.17g")
        artifacts.write_json(tmp / META, {**meta, "sha256": file_digest(tmp / ROWS)})


def load_rows(entry: Path) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """A stored entry, or None when absent, unreadable or not what was written (its rows'
    sha256 differs from the one recorded): then it is removed and rebuilt."""
    if not entry.exists():
        return None
    try:
        meta = json.loads((entry / META).read_text())
        if not isinstance(meta, dict) or meta.pop("sha256", None) != file_digest(entry / ROWS):
            raise ValueError("digest mismatch")
        dose = pd.read_csv(
            entry / ROWS,
            keep_default_na=False,
            na_values=[""],
            dtype={"question_id": str, "completion": str, "persona": str, "stop_reason": str},
        )
    except (OSError, ValueError):
        shutil.rmtree(entry, ignore_errors=True)
        return None
    for col in ("completion", "persona"):
        if col in dose:
            dose[col] = dose[col].fillna("")
    return dose, meta


def save_rows(entry: Path, dose: pd.DataFrame, meta: Mapping[str, Any]) -> None:
    """:func:`store_rows`, or a warning when the cache cannot be written (the run goes on)."""
    try:
        store_rows(entry, dose, meta)
    except OSError as e:
        warnings.warn(f"steerexp: could not cache {entry} ({e}); continuing uncached", stacklevel=2)


def cached_rows(
    entry: Path, build: Callable[[], tuple[pd.DataFrame, dict[str, Any]]]
) -> tuple[pd.DataFrame, dict[str, Any], bool, float]:
    """Rows of a cache entry, or ``build()`` them and store them; also whether cached and seconds."""
    t0 = time.perf_counter()
    hit = load_rows(entry)
    if hit is not None:
        return hit[0], hit[1], True, time.perf_counter() - t0
    dose, meta = build()
    meta = {**meta, "build_s": time.perf_counter() - t0}
    save_rows(entry, dose, meta)
    return dose, meta, False, time.perf_counter() - t0
