"""Where a model's weights come from and what identifies them: local dirs, hub ids, built models.

A built model (the organism, the tiny random test model) is made on first use into the cache;
the fingerprint hashes a checkpoint's files so cache keys follow its content, not its path.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from steerexp.config.compose import typed
from steerexp.config.errors import SteerexpError
from steerexp.models import hub_init
from steerexp.models.builders import base_path

#: A hub id is ``name`` or ``org/name`` (letters, digits, ``-_.``); anything else is a local path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def check_local_path(path: str) -> None:
    """A ``model.path`` that is not a hub id must be an existing checkpoint directory."""
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise SteerexpError(
                f"model.path={path!r} is a file; give the checkpoint directory (with config.json)"
            )
        return
    if path.startswith(("/", ".", "~")) or not _HUB_ID.fullmatch(path):
        raise SteerexpError(
            f"model.path={path!r} does not exist; give an existing local checkpoint directory "
            "or a hub id such as 'Qwen/Qwen3-4B-Instruct-2507'"
        )


#: Weight files that are Python pickles (loading one can run code).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_no_pickle(path: str, allow_pickle: bool) -> None:
    """A local checkpoint must hold safetensors weights: pickle weights alone are refused (unless
    ``model.allow_pickle=true``), with the one-off conversion command in the message."""
    local = Path(path).expanduser()
    if allow_pickle or not local.is_dir() or any(local.glob("*.safetensors")):
        return
    pickles = sorted(
        f.name for f in local.iterdir() if f.suffix in PICKLE_SUFFIXES and "model" in f.name
    )
    if pickles:
        out = f"{str(local).rstrip('/')}-safetensors"
        raise SteerexpError(
            f"model.path={path!r} has only pickle weights ({', '.join(pickles)}), which can run "
            'code when loaded; convert them once where you trust the file: python -c "from '
            "transformers import AutoModelForCausalLM as M, AutoTokenizer as T; "
            f"M.from_pretrained('{local}', use_safetensors=False).save_pretrained('{out}'); "
            f"T.from_pretrained('{local}').save_pretrained('{out}')\" and set model.path={out} "
            "(or set model.allow_pickle=true)"
        )


def check_safetensors(path: str) -> None:
    """Every ``*.safetensors`` file of a local checkpoint opens (catches truncated or corrupt files,
    naming the file, before ``from_pretrained`` fails with an anonymous header error)."""
    from safetensors import safe_open

    local = Path(path)
    if not local.is_dir():
        return
    for f in sorted(local.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as handle:
                keys = list(handle.keys())
                if keys:
                    handle.get_slice(keys[-1])
        except Exception as e:  # noqa: BLE001 -- safetensors raises its own error types
            raise SteerexpError(
                f"checkpoint file {str(f)!r} is truncated or corrupt ({type(e).__name__}: {e}); "
                "delete it (a built model such as the organism is then rebuilt) or restore it"
            ) from None


def checkpoint_path(cfg: Mapping[str, Any]) -> str:
    """The directory or hub id ``from_pretrained`` reads, building local models when missing."""
    cfg = typed("model", cfg)
    if cfg["random_init"]:
        return str(hub_init.build(cfg))
    return base_path(cfg)


#: Files of a local checkpoint dir that ``from_pretrained`` may read (what the fingerprint hashes).
CHECKPOINT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".json",
    ".model",
    ".jinja",
    ".txt",
    ".py",
    ".tiktoken",
)


#: Files above this size are fingerprinted by their size and 64 spread 1 MiB samples, not in full.
FULL_HASH_LIMIT = 1 << 30


def file_digest(path: Path) -> str:
    """sha256 of a file (sampled above :data:`FULL_HASH_LIMIT`), memoised by path, size and mtime."""
    st = path.stat()
    return _digest(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_LIMIT:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(f"sampled:{size}".encode())
            for i in range(64):
                f.seek(i * (size - (1 << 20)) // 63)
                h.update(f.read(1 << 20))
    return h.hexdigest()
