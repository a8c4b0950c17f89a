"""Cache of judged rows (a run's generations, a group's random null): ``dose.csv`` + ``meta.json``.

An entry is a directory written whole (temp dir, then rename); an unreadable entry counts as
absent and is rebuilt, and a cache that cannot be written only costs the reuse (a warning).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from steerexp.core import artifacts
from steerexp.core.atomic import atomic_dir


def store_rows(entry: Path, dose: pd.DataFrame, meta: Mapping[str, Any]) -> None:
    """Write ``dose.csv`` and ``meta.json`` into a temp dir and rename it into place."""
    with atomic_dir(entry) as tmp:
        artifacts.write_frame(tmp / "dose.csv", dose, float_format="%.17g")
        artifacts.write_json(tmp / "meta.json", meta)


def load_rows(entry: Path) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """A stored entry, or None when absent or unreadable (then it is rebuilt)."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        dose = pd.read_csv(
            entry / "dose.csv",
            keep_default_na=False,
            na_values=[""],
            dtype={"question_id": str, "completion": str, "persona": str, "stop_reason": str},
        )
    except (OSError, ValueError):
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
