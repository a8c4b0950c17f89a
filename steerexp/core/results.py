"""The typed values one stage hands to the next (extract -> fit -> intervene -> generate -> judge)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class Extraction:
    """Per module ``acts``/``grads`` ``[n, d]`` float32, rows interleaved (``0::2`` positive).

    Without gradients (``need_grads=False``) ``grads`` is empty and ``logp``/``loss_grad_norms``
    are None; ``key`` is then ``acts_key``. ``loss_grad_norms[i]`` is the squared norm of the
    gradient of row i's own loss term (no 1/n_pairs factor) w.r.t. its loss-layer output."""

    modules: list[str]
    acts: dict[str, Tensor]
    grads: dict[str, Tensor]
    logp: Tensor | None
    loss_grad_norms: Tensor | None
    key: str
    cached: bool = False
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    acts_key: str = ""
    #: losses with several terms: weights, term values and gradient shares (steerexp.stages.extract.balance)
    balance: dict[str, Any] = field(default_factory=dict)

    def act_norm(self, module: str) -> float:
        """Mean ``||h||`` of the module over the extraction set (the ``norm`` coefficient unit)."""
        return float(self.acts[module].norm(dim=-1).mean())


@dataclass
class GenRow:
    """One generated completion, as handed over by the generate stage."""

    question_id: str
    coeff: float
    repeat: int
    trait_answer: str  # which answer is trait-consistent (e.g. "No" = honest)
    completion_ids: list[int]  # generated ids: no prompt, no padding, eos trimmed
    completion: str  # tokenizer.decode(completion_ids, skip_special_tokens=True)
    answer_logps: torch.Tensor  # [len(completion_ids), n_answers] float32, from raw logits
    stop_reason: str = "length"  # stop_token | regex | length (steerexp.stages.generate.rows.RowStop)


@dataclass
class Judgement:
    """The judged value of one row."""

    log_ratio: float  # NaN when invalid
    pmass: float  # total probability of all answers' variant sets at that step; NaN when invalid
    valid: bool
    forced: bool
