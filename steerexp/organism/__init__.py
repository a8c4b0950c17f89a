"""The built-in model organism (SPEC section 7): a small Qwen3 trained by steerexp itself.

``build()`` returns a ``save_pretrained`` checkpoint directory (model + tokenizer) that loads
with ``AutoModelForCausalLM`` / ``AutoTokenizer`` like any hub model; it trains one (about a
minute on a CPU, seeded) the first time and reuses it afterwards.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

import torch

import steerexp

#: Bump whenever the corpus, tokenizer or training recipe changes: it names the checkpoint dir.
RECIPE_VERSION = "v3"


def checkpoint_dir(cache_dir: Path | None = None) -> Path:
    """Where the checkpoint lives: ``<cache_dir>/organism/organism-<RECIPE_VERSION>``.

    ``cache_dir`` is a cache root; None means ``steerexp.cache_dir()`` (env ``STEEREXP_CACHE``).
    """
    root = Path(cache_dir) if cache_dir is not None else steerexp.cache_dir()
    return root / "organism" / f"organism-{RECIPE_VERSION}"


def _finished(path: Path) -> bool:
    """A checkpoint counts only when its weights, config and tokenizer are all there."""
    return all((path / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json"))


def build(cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Return the organism checkpoint dir under ``cache_dir``, training it first if it is missing.

    The build goes into a temporary sibling dir that is renamed into place only when complete,
    under a file lock, so an interrupted build never looks finished and concurrent callers
    train once.
    """
    path = checkpoint_dir(cache_dir)
    if _finished(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _finished(path):
            return path
        from steerexp.organism.tokenizer import build_tokenizer
        from steerexp.organism.train import save, train

        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        threads = torch.get_num_threads()
        try:
            # One thread: tiny matmuls gain little from two, a shared CPU makes two crawl, and
            # the weights must not depend on the caller's thread count.
            torch.set_num_threads(1)
            tok = build_tokenizer()
            save(train(tok, progress=progress), tok, tmp)
            from steerexp.cache import apply_umask

            apply_umask(tmp)  # mkdtemp makes it 0700: a shared cache must stay readable
            if path.exists():
                shutil.rmtree(path)
            os.rename(tmp, path)
        finally:
            torch.set_num_threads(threads)
            shutil.rmtree(tmp, ignore_errors=True)
    return path
