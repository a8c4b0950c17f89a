"""The built-in model organism (docs/organism.md): a small Qwen3 trained by steerexp itself.

Importing this package registers two ``model.builder``s (:data:`steerexp.models.builders.BUILDERS`):
``organism`` (:func:`build`) and ``tiny_random`` (:func:`build_tiny_random`, a random 4-layer
Qwen3 with the organism's tokenizer, the fast test model).

The trained checkpoint ships inside the package (``checkpoint/``, with a manifest holding the
recipe and a sha256 of every file), so every machine runs the same weights: ``build()``
verifies and returns it without training. ``build(force=True)`` (or ``python -m
steerexp.organism --rebuild``) retrains from the recipe into the cache; ``make organism``
refreshes the shipped copy. Either way it is a ``save_pretrained`` dir that loads with
``AutoModelForCausalLM`` / ``AutoTokenizer`` like any hub model.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

import steerexp
from steerexp.config.errors import SteerexpError
from steerexp.models.builders import BUILDERS, atomic_build
from steerexp.models.threads import one_thread
from steerexp.store.atomic import atomic_dir

#: Bump whenever the corpus, tokenizer or training recipe changes (and run `make organism`).
RECIPE_VERSION = "v4"
#: Bump when the tiny random test model (:func:`build_tiny_random`) changes.
TINY_RANDOM_VERSION = "v1"
#: The shipped checkpoint (package data) and its manifest.
SHIPPED = Path(__file__).resolve().parent / "checkpoint"
MANIFEST = "manifest.json"


def checkpoint_dir(cache_dir: Path | None = None, seed: int = 0) -> Path:
    """Where a rebuild goes: ``<cache_dir>/organism/organism-<RECIPE_VERSION>-seed<seed>``.

    ``cache_dir`` is a cache root; None means ``steerexp.cache_dir()`` (env ``STEEREXP_CACHE``).
    """
    root = Path(cache_dir) if cache_dir is not None else steerexp.cache_dir()
    return root / "organism" / f"organism-{RECIPE_VERSION}-seed{seed}"


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(path: Path, seed: int) -> dict[str, Any]:
    """Record the recipe version, recipe fields and every file's sha256 in ``path/manifest.json``."""
    # train and tokenizer load transformers and tokenizers: imported where used, so importing
    # this package (the builders' registration, verify) stays cheap.
    from steerexp.organism.train import Recipe

    files = sorted(p.name for p in path.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {
        "recipe_version": RECIPE_VERSION,
        "recipe": dataclasses.asdict(Recipe(seed=seed)),
        "seed": seed,
        "sha256": {f: sha256(path / f) for f in files},
    }
    (path / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def verify(path: Path = SHIPPED) -> dict[str, Any]:
    """Check a checkpoint dir against its manifest; a one-line SteerexpError names what is wrong."""
    if not (path / MANIFEST).is_file():
        raise SteerexpError(f"organism checkpoint {path} has no {MANIFEST}; run `make organism`")
    manifest = json.loads((path / MANIFEST).read_text())
    if manifest["recipe_version"] != RECIPE_VERSION:
        raise SteerexpError(
            f"organism checkpoint {path} is recipe {manifest['recipe_version']!r} but the code is "
            f"{RECIPE_VERSION!r}; run `make organism`"
        )
    for name, want in manifest["sha256"].items():
        if not (path / name).is_file():
            raise SteerexpError(f"organism checkpoint file {path / name} is missing")
        got = sha256(path / name)
        if got != want:
            raise SteerexpError(
                f"organism checkpoint file {path / name} has sha256 {got[:12]}..., manifest says "
                f"{want[:12]}...; reinstall steerexp or run `make organism`"
            )
    return manifest


@BUILDERS.register("organism")
def build(
    cache_dir: Path | None = None, progress: bool = True, force: bool = False, seed: int = 0
) -> Path:
    """The organism checkpoint dir: the shipped one (verified, no training), or a fresh rebuild.

    ``force=True`` trains the recipe with ``seed`` into :func:`checkpoint_dir` (replacing any
    earlier one): into a temporary sibling dir renamed into place only when complete, under a
    file lock, so an interrupted build never looks finished.
    """
    if not force:
        if seed != 0:
            raise SteerexpError(f"organism seed {seed} is not shipped; use build(force=True)")
        verify(SHIPPED)
        return SHIPPED
    path = checkpoint_dir(cache_dir, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        from steerexp.organism.tokenizer import build_tokenizer
        from steerexp.organism.train import Recipe, save, train

        # One thread: tiny matmuls gain little from two, a shared CPU makes two crawl, and
        # the weights must not depend on the caller's thread count.
        with one_thread(), atomic_dir(path) as tmp:
            tok = build_tokenizer()
            save(train(tok, Recipe(seed=seed), progress=progress), tok, tmp)
            write_manifest(tmp, seed)
    return path


def ship(path: Path) -> Path:
    """Copy a verified rebuild over the shipped checkpoint (what `make organism` does)."""
    verify(path)
    if SHIPPED.exists():
        shutil.rmtree(SHIPPED)
    shutil.copytree(path, SHIPPED)
    SHIPPED.chmod(0o755)
    for f in SHIPPED.iterdir():
        f.chmod(0o644)
    return SHIPPED


@BUILDERS.register("tiny_random")
def build_tiny_random() -> Path:
    """A 4-layer random-weight Qwen3 with the organism's tokenizer: the fast test fixture."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from steerexp.organism.tokenizer import build_tokenizer

    def make(out: Path) -> None:
        tok = build_tokenizer()
        torch.manual_seed(0)
        config = Qwen3Config(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=512,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
            tie_word_embeddings=False,
        )
        Qwen3ForCausalLM(config).save_pretrained(out)
        tok.save_pretrained(out)

    # The tokenizer comes from the organism's corpus, so its recipe version is part of the name.
    name = f"tiny_random-{TINY_RANDOM_VERSION}-tok{RECIPE_VERSION}"
    return atomic_build(steerexp.cache_dir() / "tiny_random" / name, make)
