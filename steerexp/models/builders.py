"""Models built locally rather than downloaded: the registry of builders (``model.builder``), the
base checkpoint of a config, building once into the cache, and the dtypes a checkpoint is saved in.

A package that makes a model registers its builder here (``@BUILDERS.register("organism")`` in
:mod:`steerexp.organism`); this package imports none of them.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from steerexp.config.compose import typed
from steerexp.config.registry import Registry
from steerexp.store.atomic import atomic_dir

#: ``model.builder`` name -> a function that makes (or reuses) the checkpoint and returns its dir.
BUILDERS: Registry[Callable[[], Path]] = Registry("model.builder")

#: ``model.dtype`` name -> the torch dtype a model is loaded or built in.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def base_path(cfg: Mapping[str, Any]) -> str:
    """The directory or hub id of ``cfg``'s weights before any ``random_init``: a registered
    builder's output, else ``model.path``."""
    cfg = typed("model", cfg)
    builder = cfg["builder"]
    if builder is not None:
        return str(BUILDERS.get(builder)())
    return str(cfg["path"])


def atomic_build(target: Path, make: Any) -> Path:
    """Build into a temp dir beside ``target`` and rename it into place (safe if interrupted);
    an existing build (its ``config.json`` is written last) is kept. A cache that cannot be
    written (read-only, full) only costs the reuse: one warning, and the build goes to a temp
    dir removed when the process ends."""
    if (target / "config.json").exists():
        return target
    try:
        with atomic_dir(target, replace=False) as tmp:
            make(tmp)
        return target
    except (OSError, SafetensorError) as e:
        why = getattr(e, "strerror", None) or " ".join(str(e).split())
        warnings.warn(
            f"steerexp: could not write {str(target)!r} to the cache ({why}); "
            "building it in a temporary dir for this process only",
            stacklevel=2,
        )
    scratch = Path(tempfile.mkdtemp(prefix="steerexp-uncached-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    make(scratch)
    return scratch
