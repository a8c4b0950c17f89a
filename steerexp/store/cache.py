"""Content-addressed on-disk cache of extractions: safetensors only, written atomically.

An entry is a directory ``<root>/<key>/`` with ``activations.safetensors`` and ``key.json``
(what was hashed, plus the tensor file's sha256). An entry whose file is missing,
unreadable, or whose digest does not match is treated as absent and rebuilt. Entries get the
permissions the umask allows (a group-shared cache stays shared); a cache that cannot be
written (read-only, full) only costs the reuse: the run goes on uncached, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from steerexp.store.atomic import atomic_dir

TENSORS = "activations.safetensors"
META = "key.json"


def hash_key(payload: Any) -> str:
    """Stable short hash of a JSON-able payload."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (hex), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(root: Path, key: str) -> dict[str, torch.Tensor] | None:
    """The cached tensors, or None when absent or corrupt (a corrupt entry is removed)."""
    entry = root / key
    if not entry.exists():
        return None
    try:
        meta = json.loads((entry / META).read_text())
        if meta.get("sha256") != file_digest(entry / TENSORS):
            raise ValueError("digest mismatch")
        return load_file(str(entry / TENSORS))
    except Exception:
        shutil.rmtree(entry, ignore_errors=True)
        return None


def save(
    root: Path, key: str, tensors: dict[str, torch.Tensor], payload: Any, info: Any = None
) -> Path | None:
    """Write an entry into a temp dir and rename it into place (never half-written); ``info``
    (what was measured, not hashed, e.g. the loss balance) goes into its JSON beside ``hashed``.

    Returns the entry, or None (with a warning) when the cache cannot be written.
    """
    started = False
    try:
        with atomic_dir(root / key) as tmp:
            started = True
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / TENSORS))
            meta = {"key": key, "sha256": file_digest(tmp / TENSORS), "hashed": payload}
            if info:
                meta["info"] = info
            (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    except (OSError, SafetensorError) as e:
        where = (
            f"could not write extraction cache entry {key} in {str(root)!r}"
            if started
            else f"extraction cache {str(root)!r} is not writable"
        )
        why = getattr(e, "strerror", None) or " ".join(str(e).split())
        warnings.warn(f"{where} ({why}); running uncached", stacklevel=2)
        return None
    return root / key
