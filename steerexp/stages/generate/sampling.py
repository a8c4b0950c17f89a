"""Per-row seeded sampling: a row's tokens depend on its own seed only, never on its batch.

Sampling is seeded per row from ``(seed, question, repeat, coefficient)`` (:func:`row_seed`):
HF's processors (repetition penalty) run, then :class:`RowSampler` applies temperature and
min-p and draws each row's token from that row's own uniforms, so chunking never changes a
sample and different directions share common random numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import LogitsProcessor, MinPLogitsWarper, TemperatureLogitsWarper


def row_seed(seed: int, question_id: str, repeat: int, coeff: float) -> int:
    """The sampling seed of one row: the same for every method, direction and chunking."""
    blob = f"{int(seed)}|{question_id}|{int(repeat)}|{float(coeff)!r}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & (2**63 - 1)


class RowSampler(LogitsProcessor):
    """Temperature, min-p, then one draw per row from that row's own pre-drawn uniforms.

    Returns logits that are 0 at the drawn token and -inf elsewhere, so greedy decoding
    (``do_sample=False``) keeps the draw. Inverse-CDF sampling on per-row uniforms makes a
    row's tokens independent of the other rows of its batch.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        n_steps: int,
        prompt_width: int,
        temperature: float,
        min_p: float | None,
    ) -> None:
        self.u = torch.stack(
            [
                torch.rand(n_steps, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
                for s in seeds
            ]
        )
        self.width = prompt_width
        #: the original row of each batch row (rows leave the batch as they stop)
        self.rows = torch.arange(len(seeds))
        self.warpers = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
        if min_p:
            self.warpers.append(MinPLogitsWarper(min_p=float(min_p)))

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        for w in self.warpers:
            scores = w(input_ids, scores)
        cdf = torch.softmax(scores.double(), -1).cumsum(-1)
        u = self.u[self.rows, input_ids.shape[1] - self.width].to(cdf.device)
        tok = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp_max(
            scores.shape[-1] - 1
        )
        out = torch.full_like(scores, -torch.inf)
        return out.scatter_(-1, tok, 0.0)


def sampling_kwargs(eval_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The eval config is the whole sampling recipe: checkpoint defaults (top_k/top_p) are off.

    HF decodes greedily; with ``do_sample`` the draw happens in :class:`RowSampler`
    (``temperature``/``min_p`` are read from here by :func:`generate_chunk`). ``eval_cfg``: the
    run's typed eval section (complete)."""
    kw: dict[str, Any] = {
        "max_new_tokens": int(eval_cfg["max_new_tokens"]),
        "do_sample": False,
        "top_k": None,
        "top_p": None,
        "temperature": None,
    }
    if eval_cfg["do_sample"]:
        kw["sample"] = (float(eval_cfg["temperature"]), eval_cfg["min_p"])
    if eval_cfg["repetition_penalty"] is not None:
        kw["repetition_penalty"] = float(eval_cfg["repetition_penalty"])
    return kw
