"""Extraction throughput and cache hits on the tiny random model (``model=tiny_random``, ``module=hs``).

Measured per loss (``nll``, ``hs_diff``, ``reprpo_margin``), all within this run, median of
repeats, the losses interleaved (order rotated) in each repeat, one torch thread (see
``bench.generate.single_thread``):

- fresh extraction (empty temp ``cache_root``, in-process memo ``steerexp.store.context.current().extractions`` cleared):
  pairs/second, as a ratio to ``nll`` (every loss is one forward + one backward per batch;
  target >= 0.5x of ``nll``);
- disk hit (the same call again after clearing the memo: safetensors read + digest check) vs
  fresh: target >= 10x faster;
- memo hit (the same call once more, memo kept) vs fresh: target >= 100x faster.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.generate import group, single_thread
from steerexp.data.pairs import load_pairs
from steerexp.data.records import Pair
from steerexp.models.loading import LoadedModel, load_model
from steerexp.models.modules import resolve_modules
from steerexp.stages.extract.activations import extract
from steerexp.store import context
from steerexp.store.results import Extraction

LOSSES = ["nll", "hs_diff", "reprpo_margin"]
REPEATS = 5
BATCH_SIZE = 16
TARGET_VS_NLL = 0.5
TARGET_DISK = 10.0
TARGET_MEMO = 100.0


def line(label: str, a: str, b: str, ratio: float, target: str, ok: bool) -> None:
    """One measurement: both numbers, their ratio, the target and PASS/FAIL."""
    print(
        f"{label:<34} {a:>16} {b:>16} {ratio:>9.2f}x   target {target:<9} {'PASS' if ok else 'FAIL'}",
        flush=True,
    )


def timed(fn: Callable[[], Extraction]) -> tuple[float, Extraction]:
    """Wall time of one call and its result."""
    t0 = time.perf_counter()
    ex = fn()
    return time.perf_counter() - t0, ex


def one_round(
    loaded: LoadedModel, modules: list[str], loss: str, pairs: list[Pair], root: Path
) -> dict[str, float]:
    """Fresh, disk-hit and memo-hit times of one loss into an empty ``root``."""
    model_cfg, loss_cfg = group("model", "tiny_random"), group("loss", loss)

    def call() -> Extraction:
        return extract(
            loaded, model_cfg, modules, loss_cfg, pairs, BATCH_SIZE, cache_root=root, progress=False
        )

    context.current().extractions.clear()
    fresh, ex = timed(call)
    assert not ex.cached, "fresh extraction came from a cache"
    context.current().extractions.clear()
    disk, ex = timed(call)
    assert ex.cached and ex.meta["disk_hit"], "second call was not a disk hit"
    memo, ex = timed(call)
    assert ex.cached and not ex.meta["disk_hit"], "third call was not a memo hit"
    return {"fresh": fresh, "disk": disk, "memo": memo}


def main() -> None:
    """Pairs/second per loss and cache-hit speed-ups, printed as ratios within this run (one torch thread)."""
    with single_thread():
        measure()


def measure() -> None:
    """The measurements of :func:`main`."""
    loaded = load_model(group("model", "tiny_random"))
    modules = resolve_modules(loaded, group("module", "hs"))
    pairs = load_pairs(group("dataset", "honesty"))
    print(
        f"tiny_random ({loaded.n_layers} layers, d={loaded.hf.config.hidden_size}), module hs = {len(modules)} modules, "
        f"{len(pairs)} pairs, batch {BATCH_SIZE}, torch threads={torch.get_num_threads()}; median of {REPEATS}",
        flush=True,
    )
    times: dict[str, dict[str, list[float]]] = {
        loss: {"fresh": [], "disk": [], "memo": []} for loss in LOSSES
    }
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        one_round(loaded, modules, LOSSES[0], pairs[: BATCH_SIZE // 2], Path(tmp) / "warmup")
        for r in range(REPEATS):
            for loss in LOSSES[r % len(LOSSES) :] + LOSSES[: r % len(LOSSES)]:
                for k, v in one_round(
                    loaded, modules, loss, pairs, Path(tmp) / f"{loss}-{r}"
                ).items():
                    times[loss][k].append(v)
    context.current().extractions.clear()
    med = {loss: {k: statistics.median(v) for k, v in d.items()} for loss, d in times.items()}
    nll_rate = len(pairs) / med["nll"]["fresh"]
    for loss in LOSSES:
        m = med[loss]
        rate = len(pairs) / m["fresh"]
        ratio = rate / nll_rate
        line(
            f"{loss}: fresh pairs/s vs nll",
            f"{rate:.0f} pairs/s",
            f"{nll_rate:.0f} pairs/s",
            ratio,
            f">= {TARGET_VS_NLL}x",
            ratio >= TARGET_VS_NLL,
        )
        disk = m["fresh"] / m["disk"]
        line(
            f"{loss}: disk hit vs fresh",
            f"{m['disk'] * 1e3:.1f} ms",
            f"{m['fresh'] * 1e3:.0f} ms",
            disk,
            f">= {TARGET_DISK:.0f}x",
            disk >= TARGET_DISK,
        )
        memo = m["fresh"] / m["memo"]
        line(
            f"{loss}: memo hit vs fresh",
            f"{m['memo'] * 1e3:.2f} ms",
            f"{m['fresh'] * 1e3:.0f} ms",
            memo,
            f">= {TARGET_MEMO:.0f}x",
            memo >= TARGET_MEMO,
        )


if __name__ == "__main__":
    main()
