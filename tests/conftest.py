"""Shared fixtures. Tests never download: models are built locally (tiny random or the organism)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

# A fresh, empty cache for each test session (tiny_random checkpoint, extractions; the organism
# ships with the package), so no test silently reuses what an earlier run or ~/.cache left.
# An explicit STEEREXP_CACHE wins (e.g. to keep a rebuilt organism between slow runs).
if not os.environ.get("STEEREXP_CACHE"):
    _fresh = tempfile.mkdtemp(prefix="steerexp-tests-")
    atexit.register(shutil.rmtree, _fresh, ignore_errors=True)
    os.environ["STEEREXP_CACHE"] = _fresh
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Registers the organism and tiny_random model builders (steerexp.models.builders.BUILDERS);
# after the thread count above, which steerexp.models.threads takes as torch's own at import.
import steerexp.organism  # noqa: E402, F401


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests skip cleanly on machines without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
