"""The typed values one stage hands to the next.

extract -> :class:`Extraction` -> fit -> :class:`Directions` -> intervene -> :class:`Intervention`
-> generate and judge (one cached unit) -> :class:`Judged` -> regress -> :class:`Regression`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import Tensor

if TYPE_CHECKING:
    # Only a type here: the stages that build an Intervention import models, the store does not.
    from steerexp.models.steering import Steering


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
    stop_reason: str = (
        "length"  # stop_token | regex | length (steerexp.stages.generate.stopping.RowStop)
    )


@dataclass
class Judgement:
    """The judged value of one row."""

    log_ratio: float  # NaN when invalid
    pmass: float  # total probability of all answers' variant sets at that step; NaN when invalid
    valid: bool
    forced: bool


Info = dict[str, float | str | bool]


@dataclass
class DirectionFit:
    """A fitted direction: unit float32 ``vector [d]``, its pre-normalisation norm, and metadata."""

    vector: Tensor
    raw_norm: float
    info: Info = field(default_factory=dict)


@dataclass
class Directions:
    """Stage 2 -> 3: per module the fitted direction, and what fitting recorded (e.g. vjp keys);
    ``rows``: the gradient rows the method was fit on (bootstrap refits resample them)."""

    fits: dict[str, DirectionFit]
    meta: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, Tensor] = field(default_factory=dict)

    @property
    def vectors(self) -> dict[str, Tensor]:
        return {m: f.vector for m, f in self.fits.items()}


@dataclass
class Intervention:
    """Stage 3 -> 4: the steering (unit directions and the size of one coefficient unit) and, for
    ``coeff_units=kl``, the calibration that set that size."""

    steering: Steering
    calibration: dict[str, float] = field(default_factory=dict)


@dataclass
class Judged:
    """Stages 4-5 -> 6: the judged rows (:data:`~steerexp.store.columns.DOSE_COLUMNS`)."""

    dose: pd.DataFrame
    key: str
    reused: bool


@dataclass
class Regression:
    """Stage 6: dose-response statistics and the coherence cost per coefficient."""

    stats: dict[str, Any]
    cost: pd.DataFrame
