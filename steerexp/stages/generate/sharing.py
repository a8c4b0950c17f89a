"""Decode steps that run the unsteered blocks once per distinct history, not once per row.

The decoder blocks before the first steered module (:func:`.prefill.shared_blocks`) see no
steering, so two rows with the same prompt and the same tokens so far compute the same keys,
values and output there. A grid of coefficients (or a null's directions under common random
numbers) often writes the same tokens for many steps: e.g. 112 rows of 16 prompts x 7
coefficients held 16-17 distinct histories over 48 greedy steps of the peers bench. Each
step, :class:`Sharing` groups the rows by history, runs those blocks on one row per group
(their cache layers hold one entry per group), and hands every row its group's output; the
steered blocks run on every row as before. A group splits when its rows write different
tokens. Matmul rows do not depend on the other rows from 4 rows up (below that a kernel may
sum in another order), so at least 4 rows (or all, if fewer) are computed: samples are
bit-identical to running every row.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from steerexp.stages.generate.prefill import MIN_ROWS, replaced


class Sharing:
    """The first ``k`` of ``blocks``, run per distinct history during a decode loop.

    ``slot[i]`` is the entry of the shared cache layers that holds row ``i``'s history
    (excluding the token it feeds next); it starts as the first row with the same prompt."""

    def __init__(self, blocks: Any, k: int, ids: Tensor, mask: Tensor) -> None:
        self.blocks, self.k = blocks, k
        _, prompt = torch.unique(torch.cat([ids, mask], 1), dim=0, return_inverse=True)
        self.slot = _firsts(prompt)[prompt]
        self.reps = self.inv = torch.arange(len(ids), device=ids.device)
        self.entries = len(ids)  # entries in the shared cache layers

    def fits(self, cache: Any) -> bool:
        """Whether the shared blocks' cache layers are plain key/value layers, whose batch rows
        can be selected (not e.g. a linear-attention state)."""
        layers = getattr(cache, "layers", [])
        return len(layers) >= self.k and all(
            type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers[: self.k]
        )

    def regroup(self, cache: Any, feed: Tensor) -> None:
        """Before a step that feeds ``feed`` (``[B]`` tokens): one group per distinct (slot,
        token), each computed at its first row; the shared cache layers take their groups'
        entries (a split group's new entries copy its old one)."""
        batch = len(feed)
        key = self.slot * (int(feed.max()) + 1) + feed
        inv = torch.unique(key, return_inverse=True)[1]
        reps = _firsts(inv)
        extra = min(MIN_ROWS, batch) - len(reps)
        if extra > 0:
            order = torch.arange(batch, device=feed.device)
            reps = torch.cat([reps, order[~torch.isin(order, reps)][:extra]])
        src = self.slot[reps]
        if len(src) != self.entries or not torch.equal(src, torch.arange(len(src)).to(src)):
            for j in range(self.k):
                cache.layers[j].batch_select_indices(src)
        self.entries = len(src)
        self.reps, self.inv = reps, inv
        self.slot = inv

    def select(self, cache: Any, keep: Tensor) -> None:
        """Rows ``keep`` stay: the steered cache layers keep theirs, the shared ones all groups
        (a group whose rows all left is dropped at the next :meth:`regroup`)."""
        for layer in cache.layers[self.k :]:
            layer.batch_select_indices(keep)
        self.slot = self.slot[keep]

    def _take(self, x: Any, batch: int) -> Any:
        """``x`` (a tensor, or a tuple/list of them) at the group rows, where it has one per row."""
        if isinstance(x, Tensor):
            return x[self.reps] if x.dim() and x.shape[0] == batch else x
        if isinstance(x, tuple | list):
            return type(x)(self._take(v, batch) for v in x)
        return x

    @contextmanager
    def active(self) -> Iterator[None]:
        """Inside the block, the shared blocks run on the group rows (the first takes them from
        the batch, the last spreads its output back over every row)."""
        own = [partial(type(b).forward, b) for b in self.blocks[: self.k]]

        def run(j: int) -> Any:
            def forward(*args: Any, **kwargs: Any) -> Any:
                batch = len(self.inv)
                hidden, *rest = args or [kwargs.pop("hidden_states")]
                if j == 0:
                    hidden = hidden[self.reps]
                rest = self._take(rest, batch)
                kwargs = {n: v if n == "cache" else self._take(v, batch) for n, v in kwargs.items()}
                out = own[j](hidden, *rest, **kwargs)
                if j < self.k - 1:
                    return out
                return (out[0][self.inv], *out[1:]) if isinstance(out, tuple) else out[self.inv]

            return forward

        with replaced(self.blocks[: self.k], [run(j) for j in range(self.k)]):
            yield


def _firsts(group: Tensor) -> Tensor:
    """For group ids ``0..G-1`` per row, the first row of each group."""
    order = torch.arange(len(group), device=group.device)
    start = torch.full((int(group.max()) + 1,), len(group), device=group.device)
    return start.scatter_reduce(0, group, order, "amin")
