"""Run-directory artifacts, each written to a temp name and renamed into place.

A job killed mid-write leaves at worst a stray ``.tmp`` file, never a half-written
artifact; ``status.json`` is written last, so ``ok`` there means every artifact is whole.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import save

from steerexp.config.compose import result_neutral
from steerexp.store.atomic import atomic_write
from steerexp.store.columns import DOSE_COLUMNS

PACKAGES = (
    "steerexp",
    "torch",
    "transformers",
    "nnsight",
    "hydra-core",
    "omegaconf",
    "statsmodels",
    "pandas",
    "bitsandbytes",
    "wandb",
    "safetensors",
)


def jsonable(value: Any) -> Any:
    """NaN/inf -> null, numpy/torch scalars -> Python, containers recursively."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, obj: Any) -> Path:
    return atomic_write(
        path, lambda p: p.write_text(json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")
    )


def write_status(
    run_dir: Path, status: str, error: str | None = None, config_hash: str | None = None
) -> Path:
    return write_json(
        run_dir / "status.json", {"status": status, "error": error, "config_hash": config_hash}
    )


def read_status_file(run_dir: Path) -> dict[str, Any]:
    """A run dir's status.json as a dict (empty when absent or unreadable)."""
    try:
        data = json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_status(run_dir: Path) -> str | None:
    """``ok``/``failed``/``interrupted`` from a run dir's status.json, or None when absent or unreadable."""
    status = read_status_file(run_dir).get("status")
    return None if status is None else str(status)


def run_config(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved task config that identifies a run's results (neutral keys dropped,
    :data:`steerexp.config.compose.RESULT_NEUTRAL_KEYS`)."""
    out: dict[str, Any] = {}
    for k, v in resolved.items():
        if k == "hydra" or result_neutral(k):
            continue
        if isinstance(v, Mapping):
            v = {name: x for name, x in v.items() if not result_neutral(f"{k}.{name}")}
        out[k] = v
    return out


def config_hash(resolved: Mapping[str, Any]) -> str:
    """sha256 (first 16 hex) of :func:`run_config`: stored in status.json, compared on reuse."""
    blob = json.dumps(jsonable(run_config(resolved)), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 3) -> str:
    """``method.name: 'pca_diff' -> 'random'``-style summary of where two configs differ."""

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, Mapping):
            return {prefix: d}
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out if out else {prefix: d}

    a, b = flat(run_config(old)), flat(run_config(new))
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]
    parts = [
        f"{k.rstrip('.')}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
        for k in keys[:limit]
    ]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(parts) + more


def sorted_header(blob: bytes) -> bytes:
    """A safetensors file with its JSON header's keys sorted: safetensors writes metadata from a
    hash map, whose order changes from process to process; data stays 8-byte aligned."""
    n = int.from_bytes(blob[:8], "little")
    text = json.dumps(json.loads(blob[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + n :]


def write_directions(
    path: Path, vectors: Mapping[str, torch.Tensor], metadata_: Mapping[str, Any]
) -> Path:
    """``directions.safetensors``: key = module name, value = unit direction; string metadata
    (JSON with sorted keys), written byte-identically for identical content."""
    meta = {
        k: v if isinstance(v, str) else json.dumps(jsonable(v), sort_keys=True)
        for k, v in metadata_.items()
    }
    tensors = {m: v.detach().float().contiguous().cpu() for m, v in vectors.items()}
    blob = sorted_header(save(tensors, metadata=meta))
    return atomic_write(path, lambda p: p.write_bytes(blob))


def write_frame(path: Path, df: pd.DataFrame, **kwargs: Any) -> Path:
    """A table as CSV with every text field quoted: completions may hold a bare ``\r``, which
    pandas' minimal quoting leaves alone and its reader then takes for a line break."""
    return atomic_write(
        path, lambda p: df.to_csv(p, index=False, quoting=csv.QUOTE_NONNUMERIC, **kwargs)
    )


def write_dose_response(path: Path, df: pd.DataFrame) -> Path:
    """``dose_response.csv``: the judged rows, with each question's ``scenario`` when known."""
    cols = [*DOSE_COLUMNS[:1], "scenario", *DOSE_COLUMNS[1:]] if "scenario" in df else DOSE_COLUMNS
    return write_frame(path, df[cols])


def write_coherence(path: Path, table: pd.DataFrame) -> Path:
    """``coherence.csv``: per coefficient, KL on neutral prompts, valid fraction, completion length."""
    return write_frame(path, table)


def environment() -> dict[str, Any]:
    """Package versions, Python, platform, CUDA and the git commit (when run from a checkout)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(__file__).parent,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "packages": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "git_commit": commit,
    }
