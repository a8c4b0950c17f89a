"""Torch intra-op threads sized to the cores this process really has, and to the model's width.

torch starts with one intra-op thread per core of the *machine*. On a shared machine (a CI
runner, a login node, two SLURM array tasks on one node) those threads spin-wait at OpenMP
barriers on cores other processes hold: measured, a default organism run took 171 s with
torch's default threads and 55 s on one thread, the same numbers digit for digit. The rule
(:func:`sized_threads`):

- the CPUs this process may use: the smallest of its affinity mask, ``SLURM_CPUS_PER_TASK``
  and the cgroup CPU quota (``cpu.max``, or v1's ``cpu.cfs_quota_us``), rounded up;
- shared among the worker processes running at once (never more threads than cores);
- one thread for a model narrower than :data:`SMALL_WIDTH`, whose matmuls are too small to
  gain from splitting (a small model's CPU generation went from 62 s to 6 s on one thread);
- an explicit choice wins: ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` in the environment, or a
  ``torch.set_num_threads`` call made after steerexp was imported.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

#: Below this hidden width a CPU forward's matmuls are too small to split across threads.
SMALL_WIDTH = 1024
#: Environment variables through which a user fixes the thread count themselves.
USER_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
CGROUP_ROOT = Path("/sys/fs/cgroup")

# The count torch has unless someone other than steerexp changed it since import.
_EXPECTED = torch.get_num_threads()


def cgroup_cpus(root: Path) -> float | None:
    """CPUs the cgroup quota grants (v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``), None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (all of the machine's where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def usable_cpus(env: Mapping[str, str] | None = None, cgroup_root: Path | None = None) -> int:
    """CPUs this process may use: affinity mask, ``SLURM_CPUS_PER_TASK`` and cgroup quota, the least."""
    env = os.environ if env is None else env
    n = affinity_cpus()
    slurm = env.get("SLURM_CPUS_PER_TASK", "")
    if slurm.strip().isdigit() and int(slurm) > 0:
        n = min(n, int(slurm))
    quota = cgroup_cpus(CGROUP_ROOT if cgroup_root is None else cgroup_root)
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def user_threads(env: Mapping[str, str] | None = None) -> int | None:
    """The thread count the user chose (environment, or ``torch.set_num_threads`` since import)."""
    env = os.environ if env is None else env
    for var in USER_VARS:
        value = env.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    now = torch.get_num_threads()
    return now if now != _EXPECTED else None


def sized_threads(
    width: int,
    workers: int = 1,
    cpus: int | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Intra-op threads for one of ``workers`` processes running a model of hidden ``width``."""
    chosen = user_threads(env)
    if chosen is not None:
        return chosen
    if width < SMALL_WIDTH:
        return 1
    cpus = usable_cpus(env) if cpus is None else cpus
    return max(1, cpus // max(1, workers))


def config_width(config: object) -> int:
    """A model config's hidden width (a multimodal config's text part; unknown = wide)."""
    text = getattr(config, "text_config", None) or config
    return int(getattr(text, "hidden_size", 0) or getattr(config, "hidden_size", 0) or SMALL_WIDTH)


def set_threads(n: int) -> None:
    """Set torch's intra-op threads as steerexp's own choice (not mistaken for the user's later)."""
    global _EXPECTED
    torch.set_num_threads(n)
    _EXPECTED = n


@contextmanager
def restored() -> Iterator[None]:
    """Put the thread count back as it was before the block, whatever the block set."""
    global _EXPECTED
    before, expected = torch.get_num_threads(), _EXPECTED
    try:
        yield
    finally:
        torch.set_num_threads(before)
        _EXPECTED = expected


@contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the block on ``n`` torch intra-op threads, restoring the count after."""
    with restored():
        set_threads(n)
        yield


@contextmanager
def fitted(width: int, workers: int = 1) -> Iterator[None]:
    """Run the block on :func:`sized_threads` threads (every stage of a run sits in one of these)."""
    with threads(sized_threads(width, workers)):
        yield


@contextmanager
def one_thread(enabled: bool = True) -> Iterator[None]:
    """Run the block on one torch intra-op thread (unchanged when not ``enabled``): small LAPACK
    calls and tiny decodes gain nothing from more."""
    if not enabled:
        yield
        return
    with threads(1):
        yield
