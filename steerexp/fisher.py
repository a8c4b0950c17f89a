"""Fisher-preconditioned steering directions: ``x = (F + λI)⁻¹ ḡ`` solved without a d×d matrix.

Every Fisher variant is written as ``F = UᵀU`` with ``U ∈ ℝ^{n×d}`` a row-scaled copy of the
gradients ``G`` (rows ``gᵢ``), so ``tr(F) = ‖U‖²_F`` is cheap and the solve happens in the
n×n space (SPEC §4.3):

- ``ief``: ``F = (1/n) Σ wᵢ gᵢgᵢᵀ``, ``wᵢ = 1/(loss_grad_normsᵢ + 1e-6)`` → ``uᵢ = √(wᵢ/n) gᵢ``
- ``emp``: ``F = GᵀG/n`` → ``uᵢ = gᵢ/√n``
- ``cov``: ``F = (G − ḡ)ᵀ(G − ḡ)/(n − 1)`` → ``uᵢ = (gᵢ − ḡ)/√(n − 1)``

With the thin SVD ``U = Q diag(σ) Vᵀ`` (V: d×r, orthonormal columns) and ``sₖ = σₖ²``:

``(UᵀU + λI)⁻¹ ḡ = V diag(1/(s + λ)) Vᵀḡ + (ḡ − VVᵀḡ)/λ``   (λ > 0)

which is the Woodbury/kernel identity ``(ḡ − Uᵀ(UUᵀ + λI)⁻¹Uḡ)/λ`` rearranged so nothing
cancels for tiny λ: the range part never divides by λ, and the null-space part is an explicit
projection. λ = 0 is the minimum-norm solution ``F⁺ḡ = V diag(1/s) Vᵀḡ`` over singular values
above ``max(n, d)·eps·σ_max`` (numpy's rank rule). Everything runs in float64; the cost is
O(n²d) time and O(nd) memory, so it also serves n ≥ d (then V is d×d, which is fine).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from steerexp.errors import SteerexpError, choice_error

FISHERS = ("ief", "emp", "cov")
REG_SCALES = ("relative", "absolute")
#: iEF weight floor: ``wᵢ = 1/(loss_grad_normsᵢ + IEF_EPS)``.
IEF_EPS = 1e-6
#: Relative levels tried, in order, above a failed requested level (the stated fallback ladder).
FALLBACK_LEVELS = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
#: Largest normwise backward error ``‖(F+λI)x − ḡ‖ / (‖F+λI‖‖x‖ + ‖ḡ‖)`` accepted for λ > 0.
MAX_BACKWARD_ERROR = 1e-8
#: For λ = 0: smallest accepted ``‖F F⁺ḡ‖ / ‖ḡ‖`` (the part of ḡ in the range of F).
MIN_RANGE_FRACTION = 1e-8


@dataclass
class FisherSolution:
    """Unnormalised solution (float64, ``[d]``) and what was used to get it."""

    vector: Tensor
    info: dict[str, float | str | bool] = field(default_factory=dict)


def fisher_rows(
    grads: Tensor, fisher: str = "ief", loss_grad_norms: Tensor | None = None
) -> Tensor:
    """Float64 ``U`` with ``F = UᵀU`` for the named Fisher (see module docstring)."""
    if fisher not in FISHERS:
        raise choice_error("fisher", fisher, FISHERS)
    g = grads.to(torch.float64)
    n = g.shape[0]
    if fisher == "emp":
        return g / n**0.5
    if fisher == "cov":
        if n < 2:
            raise SteerexpError(f"the covariance Fisher needs at least 2 gradient rows, got n={n}")
        return (g - g.mean(dim=0)) / (n - 1) ** 0.5
    if loss_grad_norms is None:
        raise SteerexpError("the iEF Fisher needs loss_grad_norms (one per row), got None")
    w = 1.0 / (loss_grad_norms.to(torch.float64).reshape(-1) + IEF_EPS)
    if w.shape[0] != n:
        raise SteerexpError(
            f"loss_grad_norms has {w.shape[0]} entries, expected one per row (n={n})"
        )
    return g * (w / n).sqrt().unsqueeze(1)


def _spectrum(u: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues ``s = σ²`` (descending) and right singular vectors ``V`` (d×r) of U."""
    _, sigma, vh = torch.linalg.svd(u, full_matrices=False)
    return sigma.square(), vh.mT


def _solve(s: Tensor, v: Tensor, gbar: Tensor, lam: float, rcond: float) -> Tensor:
    """``(VsVᵀ + λI)⁻¹ḡ`` for λ > 0; the minimum-norm ``(VsVᵀ)⁺ḡ`` for λ = 0."""
    coef = v.mT @ gbar
    if lam > 0:
        null = gbar - v @ coef
        return v @ (coef / (s + lam)) + null / lam
    keep = s > (rcond**2) * (s[0] if s.numel() else 0.0)
    inv = torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))
    return v @ (coef * inv)


def _acceptable(u: Tensor, s: Tensor, gbar: Tensor, x: Tensor, lam: float) -> bool:
    """Finite and non-zero; for λ > 0 a backward-stable solve of ``(UᵀU + λI)x = ḡ``; for λ = 0
    ``‖Fx‖ = ‖P_range(F) ḡ‖`` must not be rounding noise (ḡ ⟂ range(F) makes ``F⁺ḡ`` meaningless)."""
    if not bool(torch.isfinite(x).all()) or float(x.norm()) == 0.0:
        return False
    fx = u.mT @ (u @ x)
    if lam == 0:
        return float(fx.norm()) > MIN_RANGE_FRACTION * float(gbar.norm())
    resid = fx + lam * x - gbar
    scale = (float(s[0]) if s.numel() else 0.0) + lam
    err = float(resid.norm()) / (scale * float(x.norm()) + float(gbar.norm()))
    return err <= MAX_BACKWARD_ERROR


def solve_fisher(
    grads: Tensor,
    fisher: str = "ief",
    reg: float = 1e-2,
    reg_scale: str = "relative",
    loss_grad_norms: Tensor | None = None,
) -> FisherSolution:
    """``(F + λI)⁻¹ ḡ`` with ``ḡ = mean(G)``; ``λ = reg·tr(F)/d`` (relative) or ``reg`` (absolute).

    If the requested level gives a non-finite, zero or unstable solution, the next level of
    :data:`FALLBACK_LEVELS` (relative, strictly larger than the requested one) is used and
    ``info["reg_fallback"]`` is set; ``reg_used`` is then the level in the requested scale.
    """
    if reg_scale not in REG_SCALES:
        raise choice_error("reg_scale", reg_scale, REG_SCALES)
    if not (reg >= 0 and reg < float("inf")):
        raise SteerexpError(f"reg must be a finite number >= 0, got {reg!r}")
    if grads.ndim != 2 or grads.shape[0] == 0:
        raise SteerexpError(
            f"gradients must be a non-empty [n, d] matrix, got shape {tuple(grads.shape)}"
        )
    n, d = grads.shape
    gbar = grads.to(torch.float64).mean(dim=0)
    if float(gbar.norm()) == 0.0:
        raise SteerexpError("mean gradient is exactly zero; the Fisher direction is undefined")
    u = fisher_rows(grads, fisher, loss_grad_norms)
    trace = float(u.square().sum())
    unit = trace / d if trace > 0 else 1.0
    to_lam = unit if reg_scale == "relative" else 1.0
    s, v = _spectrum(u)
    rcond = max(n, d) * torch.finfo(torch.float64).eps
    rank = int((s > (rcond**2) * s[0]).sum()) if s.numel() and float(s[0]) > 0 else 0

    lam = reg * to_lam
    levels = [lam] + [lvl * unit for lvl in FALLBACK_LEVELS if lvl * unit > lam]
    for i, lam_try in enumerate(levels):
        x = _solve(s, v, gbar, lam_try, rcond)
        if _acceptable(u, s, gbar, x, lam_try):
            info: dict[str, float | str | bool] = {
                "fisher": fisher,
                "reg_scale": reg_scale,
                "reg_requested": float(reg),
                "reg_used": lam_try / to_lam,
                "reg_eff": lam_try,
                "reg_fallback": i > 0,
                "fisher_trace": trace,
                "fisher_rank": float(rank),
            }
            return FisherSolution(x, info)
    raise SteerexpError(
        f"Fisher solve ({fisher}, reg={reg}, {reg_scale}) failed at every level up to "
        f"{FALLBACK_LEVELS[-1]} relative (tr(F)={trace:.3g}, rank {rank})"
    )
