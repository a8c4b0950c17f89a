"""The decode loop: transformers' greedy step, with finished rows leaving the batch.

``generate`` keeps every row of a batch running (fed padding) until the last one stops, so a
chunk whose rows answer in 10 tokens but whose slowest runs to the 32-token cap computes about
three times the tokens it keeps. This loop takes the same step as ``generate`` (the same model
inputs: the last token, the 2-D attention mask, positions counted over real tokens, the KV
cache; the same float32 copy of the last logits through the same processors, then argmax) and
drops a row from the batch (its cache entries, mask, positions, steering shift and sampling
uniforms) as soon as :class:`~.stopping.RowStop` ends it. A row's tokens therefore depend only
on its own prompt, shift and seed, as before; its logits may differ from a full batch's in the
last float bits (matmuls of another batch size), as they already did between chunkings.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor
from transformers import LogitsProcessorList

from steerexp.stages.generate.sampling import RowSampler
from steerexp.stages.generate.sharing import Sharing
from steerexp.stages.generate.stopping import RowStop


def decode(
    hf: Any,
    ids: Tensor,
    mask: Tensor,
    cache: Any,
    n: int,
    processors: LogitsProcessorList,
    stop: RowStop,
    on_rows: Callable[[Tensor], None],
    answer_logps: Callable[[Tensor], Tensor],
    n_answers: int,
    pad_id: int,
    share: Sharing | None = None,
) -> tuple[Tensor, Tensor]:
    """Up to ``n`` greedy steps (sampling, when asked, is a :class:`RowSampler` among
    ``processors``) from left-padded ``ids``/``mask`` and the KV ``cache`` of all but their last
    token (None: none). ``on_rows(keep)`` is called with the batch rows that stay whenever rows
    leave (to shrink per-row state such as steering shifts); ``answer_logps(last_logits)`` gives
    each step's ``[rows, n_answers]`` answer log-probs; ``share`` (used with a ``cache``) runs
    the unsteered blocks once per distinct history (:mod:`.sharing`). Returns ``[B, steps]``
    tokens (``pad_id`` after a row ended) and ``[B, steps, n_answers]`` log-probs, ``steps``
    being the steps run."""
    batch, width = ids.shape
    rows = torch.arange(batch)
    tokens = torch.full((batch, n), int(pad_id), dtype=torch.long)
    logps = torch.zeros(batch, n, n_answers)
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    seqs = ids
    steps = 0
    share = share if cache is not None and share is not None and share.fits(cache) else None
    with torch.no_grad(), share.active() if share else nullcontext():
        for step in range(n):
            past = 0 if cache is None else cache.get_seq_length()
            new = seqs.shape[1] - past
            if share:
                share.regroup(cache, seqs[:, -1])
            out = hf(
                input_ids=seqs[:, -new:],
                attention_mask=mask,
                position_ids=positions[:, -new:],
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            cache = out.cache
            last = out.logits[:, -1]
            logps[rows, step] = answer_logps(last)
            scores = processors(seqs, last.to(copy=True, dtype=torch.float32))
            nxt = scores.argmax(-1)
            tokens[rows, step] = nxt.cpu()
            seqs = torch.cat([seqs, nxt[:, None]], -1)
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], -1)
            positions = torch.cat([positions, positions[:, -1:] + 1], -1)
            steps = step + 1
            done = stop.update(seqs, rows)
            if bool(done.all()):
                break
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(1)
                on_device = keep.to(seqs.device)
                rows = rows[keep]
                seqs, mask, positions = seqs[on_device], mask[on_device], positions[on_device]
                if share:
                    share.select(cache, on_device)
                else:
                    cache.batch_select_indices(on_device)
                for p in processors:
                    if isinstance(p, RowSampler):
                        p.rows = rows
                on_rows(on_device)
    return tokens[:, :steps], logps[:, :steps]


def shrink(deltas: dict[str, Tensor]) -> Callable[[Tensor], None]:
    """``on_rows`` for :func:`decode` that keeps only the staying rows of each ``[B, 1, d]``
    steering shift, in place (the hooks read the dict at every forward)."""

    def keep_rows(keep: Tensor) -> None:
        for m in list(deltas):
            deltas[m] = deltas[m][keep.to(deltas[m].device)]

    return keep_rows
