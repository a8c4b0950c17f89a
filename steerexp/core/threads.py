"""One intra-op thread for work that gains nothing from more (small LAPACK calls, tiny decodes).

With oversubscribed cores, OpenMP barriers of small multi-threaded ops can cost seconds:
measured, a small model's CPU generation went from 62 s to 6 s on one thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_thread(enabled: bool = True) -> Iterator[None]:
    """Run the block on one torch intra-op thread (unchanged when not ``enabled``)."""
    if not enabled:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
