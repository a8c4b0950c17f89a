"""Shared fixtures. Tests never download: models are built locally (tiny random or the organism)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# A fresh, empty cache for each test session (tiny_random checkpoint, extractions; the organism
# ships with the package), so no test silently reuses what an earlier run or ~/.cache left.
# An explicit STEEREXP_CACHE wins (e.g. to keep a rebuilt organism between slow runs).
if not os.environ.get("STEEREXP_CACHE"):
    _fresh = tempfile.mkdtemp(prefix="steerexp-tests-")
    atexit.register(shutil.rmtree, _fresh, ignore_errors=True)
    os.environ["STEEREXP_CACHE"] = _fresh
# `make test` runs files on pytest-xdist workers (`-n`): each worker gets its own cache under the
# session's (a test that asserts a first extraction must not find another file's), and one torch
# thread, inherited by the runs it starts, so two workers never spin-wait on each other's cores.
if _worker := os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["STEEREXP_CACHE"] = str(Path(os.environ["STEEREXP_CACHE"]) / f"xdist-{_worker}")
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402  (after the thread variables above)

torch.set_num_threads(1 if _worker else max(1, min(2, os.cpu_count() or 1)))

# Registers the organism and tiny_random model builders (steerexp.models.builders.BUILDERS);
# after the thread count above, which steerexp.models.threads takes as torch's own at import.
from helpers import group, tiny  # noqa: E402

import steerexp.organism  # noqa: E402, F401
from steerexp.data.answers import AnswerSpec, make_answer_spec  # noqa: E402
from steerexp.models.loading import LoadedModel  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model() -> LoadedModel:
    """The tiny random model (built once per session, loaded once per module)."""
    return tiny()


@pytest.fixture(scope="module")
def row_ev() -> dict:
    """The white-lie eval, sampled (temperature 1.3, min_p 0.05), 6 new tokens."""
    return {**group("eval", "white_lie"), "max_new_tokens": 6, "temperature": 1.3, "min_p": 0.05}


@pytest.fixture(scope="module")
def row_spec(tiny_model: LoadedModel, row_ev: dict) -> AnswerSpec:
    """:data:`row_ev`'s answers on the tiny model's tokenizer."""
    return make_answer_spec(
        tiny_model.tokenizer, row_ev["answer_regex"], row_ev["answers"], row_ev["answer_prefix"]
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests skip cleanly on machines without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
