"""Shared fixtures. Tests never download: models are built locally (tiny random or the organism)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

# One cache for the whole test session (organism checkpoint, extractions), inside the checkout
# so CI builds the organism once per run. A caller's STEEREXP_CACHE wins.
os.environ.setdefault("STEEREXP_CACHE", str(REPO / ".cache" / "tests"))
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests skip cleanly on machines without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
