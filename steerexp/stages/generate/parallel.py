"""Chunk-parallel generation on CPU: forked worker processes sharing the usable cores.

A small model's decode step is a few hundred tiny matmuls: more intra-op threads only add
OpenMP barriers (on oversubscribed cores they made generation ~10x slower), so one process
uses one core. Independent chunks (the rows of a grid, the K directions of a random null) can
still use every core: each chunk runs in a process forked from the one that loaded the model,
which shares its weights copy-on-write. A chunk's rows do not depend on which process ran it
(rows are sampled from their own seeds), so the output is identical to a serial run.
"""

from __future__ import annotations

import multiprocessing as mp
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from steerexp.models.threads import SMALL_WIDTH, usable_cpus

__all__ = ["SMALL_WIDTH", "map_ordered", "usable_cpus", "worker_count"]

_JOB: dict[str, Any] = {}


def worker_count(setting: int | str, n_jobs: int, small_cpu_model: bool) -> int:
    """Processes for ``n_jobs`` chunks: ``auto`` = every usable CPU for a small model on CPU,
    else 1; an int is taken as is. Never more than the chunks, nor where fork is unavailable."""
    if setting == "auto":
        n = usable_cpus() if small_cpu_model else 1
    else:
        n = int(setting)
    if "fork" not in mp.get_all_start_methods():
        n = 1
    return max(1, min(n, n_jobs))


def _init(n_threads: int) -> None:
    torch.set_num_threads(n_threads)


def _call(i: int) -> Any:
    return _JOB["fn"](_JOB["items"][i])


def map_ordered(fn: Callable[[Any], Any], items: Sequence[Any], workers: int) -> Iterator[Any]:
    """``fn`` over ``items`` in order: serially for one worker, else in forked processes
    (``fn`` and ``items`` are inherited by the fork, only results are pickled back), each
    worker on its share of this process's threads (never more threads than cores in all).

    A worker that dies (killed, e.g. by a scheduler's memory limit) breaks the pool instead of
    leaving its chunk waiting forever; the chunks not yet returned then run in this process."""
    if workers <= 1:
        yield from (fn(x) for x in items)
        return
    _JOB.update(fn=fn, items=items)
    done = 0
    share = max(1, torch.get_num_threads() // workers)
    pool = ProcessPoolExecutor(
        workers, mp_context=mp.get_context("fork"), initializer=_init, initargs=(share,)
    )
    try:
        try:
            for out in pool.map(_call, range(len(items))):
                done += 1
                yield out
        except BrokenProcessPool:
            warnings.warn(
                f"steerexp: a generation worker process died; generating the remaining "
                f"{len(items) - done} of {len(items)} chunks in this process",
                stacklevel=2,
            )
            yield from (fn(x) for x in items[done:])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _JOB.clear()
