"""What a direction method gets for one module: validated float64 activations and gradients."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from steerexp.config.errors import SteerexpError


@dataclass(frozen=True)
class MethodInputs:
    """Validated inputs of one module: ``acts``, ``grads`` ``[n, d]``, ``loss_grad_norms [n]``.

    ``acts`` (every method's sign needs the pair vote) and, for gradient methods, ``grads`` are
    float64 on the CPU (n×d is small; float64 matters more than a GPU here); unused ``grads``
    pass through unconverted (only their shape matters).
    """

    acts: Tensor
    grads: Tensor | None
    loss_grad_norms: Tensor | None
    seed: int


def check_matrix(what: str, t: Tensor) -> None:
    """A 2-D tensor of finite values. One float64 sum (inf/NaN propagate) screens cheaply; only a
    non-finite sum (which could also be a float64 overflow) triggers the element-wise check."""
    if not isinstance(t, Tensor) or t.ndim != 2:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise SteerexpError(f"{what} must be an [n, d] tensor, got {shape}")
    if (
        t.numel()
        and not bool(t.sum(dtype=torch.float64).isfinite())
        and not bool(torch.isfinite(t).all())
    ):
        bad = int((~torch.isfinite(t)).any(dim=1).nonzero()[0])
        raise SteerexpError(f"{what} has non-finite values (first in row {bad})")


def method_inputs(
    name: str, acts: Tensor, grads: Tensor | None, lgn: Tensor | None, seed: int, uses_grads: bool
) -> MethodInputs:
    """Validate and convert to float64; errors are one line and name the bad value."""
    check_matrix("acts", acts)
    n, d = acts.shape
    if n == 0 or n % 2:
        raise SteerexpError(
            f"acts needs an even, non-zero number of rows (interleaved pos/neg pairs), got n={n}"
        )
    if d == 0:
        raise SteerexpError("acts has d=0 columns")
    if uses_grads and grads is None:
        raise SteerexpError(f"method {name!r} needs gradients, got grads=None")
    if grads is not None:
        check_matrix("grads", grads)
        if tuple(grads.shape) != (n, d):
            raise SteerexpError(
                f"grads shape {tuple(grads.shape)} does not match acts shape {(n, d)}"
            )
    if lgn is not None:
        if not isinstance(lgn, Tensor) or lgn.numel() != n:
            got = lgn.numel() if isinstance(lgn, Tensor) else type(lgn).__name__
            raise SteerexpError(f"loss_grad_norms needs one value per row (n={n}), got {got}")
        if not bool(torch.isfinite(lgn).all()) or bool((lgn < 0).any()):
            raise SteerexpError("loss_grad_norms must be finite and >= 0")
        lgn = lgn.reshape(-1)
    f64 = {"device": "cpu", "dtype": torch.float64}
    lgn = None if lgn is None else lgn.to(**f64)
    g64 = None if grads is None or not uses_grads else grads.to(**f64)
    return MethodInputs(acts.to(**f64), g64 if uses_grads else grads, lgn, int(seed))
