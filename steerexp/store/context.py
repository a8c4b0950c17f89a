"""What one process keeps between the runs it makes, in one object instead of module globals: the
loaded models, the in-memory extraction cache, the per-tokenizer memos (held weakly: dropped with
their tokenizer) and the tally of its jobs and of the sweep it ranked.

:func:`current` is the context in use; :func:`fresh` puts an empty one in place for a block (a
test, or a caller that wants one sweep's tally alone) and restores the previous one after it.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class RunContext:
    """The state runs of one process share."""

    #: Model config key -> the loaded model (a ``models.loading.LoadedModel``; not named here, as
    #: store/ sits below models/): a sweep's jobs in one process load each model once.
    models: dict[str, Any] = field(default_factory=dict)
    #: Per tokenizer, the chat-rendered ids of each conversation (``models.tokens.encode_many``):
    #: a sweep's runs, and an activation then gradient extraction, render each pair once.
    encoded: weakref.WeakKeyDictionary[Any, dict[str, tuple[list[int], int]]] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    #: Per tokenizer, its decoded vocabulary and the answer word -> ids found in it
    #: (``data.answers``).
    vocab: weakref.WeakKeyDictionary[Any, tuple[list[str], dict[str, list[int]]]] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    #: Extraction cache key -> its tensors: the in-process layer over the on-disk cache.
    extractions: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    #: Every job this process ran (their dirs).
    jobs: list[str] = field(default_factory=list)
    #: ``"<job dir>: <error>"`` for each job that failed.
    failed: list[str] = field(default_factory=list)
    #: Of the failed, the ones that failed on bad input (a ``SteerexpError``): exit 2, not 1.
    bad_input: list[str] = field(default_factory=list)
    #: Jobs of the last ranked sweep whose status is not ok (failed or missing).
    sweep_failed: int = 0
    #: Why the last sweep's report could not be built (one line), or None when it was written.
    sweep_error: str | None = None
    #: The running sweep's config and ranking callback (set at multirun start), for a ranking
    #: after Ctrl-C.
    sweep: tuple[Any, Any] | None = None


_current = RunContext()


def current() -> RunContext:
    """The context runs of this process use now."""
    return _current


@contextmanager
def fresh() -> Iterator[RunContext]:
    """An empty context for the block, the previous one back afterwards."""
    global _current
    previous, _current = _current, RunContext()
    try:
        yield _current
    finally:
        _current = previous
