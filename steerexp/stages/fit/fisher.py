"""Fisher-preconditioned steering directions: ``x = (F + λI)⁻¹ ḡ`` solved without a d×d matrix.

Every Fisher variant is written as ``F = UᵀU`` with ``U ∈ ℝ^{n×d}`` a row-scaled copy of the
gradients ``G`` (rows ``gᵢ``), so ``tr(F) = ‖U‖²_F`` is cheap and the solve happens in the
n×n space:

- ``ief``: ``F = (1/n) Σ wᵢ gᵢgᵢᵀ``, ``wᵢ = 1/(loss_grad_normsᵢ + ε)``, ``ε = 1e-6·median`` →
  ``uᵢ = √(wᵢ/n) gᵢ`` (uniform norms: the same direction as ``emp``)
- ``emp``: ``F = GᵀG/n`` → ``uᵢ = gᵢ/√n``
- ``cov``: ``F = (G − ḡ)ᵀ(G − ḡ)/(n − 1)`` → ``uᵢ = (gᵢ − ḡ)/√(n − 1)``

Write ``ḡ = mean(G)``, ``K = UUᵀ = Q diag(s) Qᵀ`` (n×n, eigendecomposition). Two exact routes:

1. **Kernel route** (fast: one n×n Gram, O(n²d)). For ``emp``/``ief``, ``ḡ = Uᵀc`` exactly
   (``cᵢ = 1/√(n·wᵢ)``, ``w ≡ 1`` for emp), so by the push-through identity
   ``x = Uᵀ(K + λI)⁻¹c`` and ``F⁺ḡ = UᵀK⁺c``: nothing cancels for tiny λ. For ``cov`` (ḡ is
   not in the row space) it is Woodbury, ``x = (ḡ − Uᵀ(K + λI)⁻¹Uḡ)/λ``, and
   ``F⁺ḡ = UᵀK⁺²Uḡ``. The result is accepted only if the a-posteriori forward-error bound
   ``cond(F + λI) × normwise backward error`` is at most :data:`MAX_FORWARD_BOUND`, with the
   residual ``(UᵀU + λI)x − ḡ`` computed in O(nd).
2. **Orthogonal route** (backward stable, about 3× slower): Householder QR of ``[U; ḡᵀ]ᵀ = QR``
   puts U and ḡ into an (n+1)-dimensional orthonormal basis (ḡ lies in it, so nothing outside
   it matters). With the full SVD of the small factor, ``F_c = W diag(s) Wᵀ`` (zeros included,
   W square), ``x = Q W diag(1/(s + λ)) Wᵀḡ_c``: no subtraction, and rounding amplified by 1/λ
   stays in null directions of F. Used when route 1's bound fails, and directly (without the
   QR) when n + 1 ≥ d.

λ = 0 is the minimum-norm solution ``F⁺ḡ``, dropping eigenvalues of F at or below
``max(n, d)·eps·s_max`` (the default cut-off of ``torch.linalg.pinv``). Everything runs in
float64 with O(nd) memory; no d×d matrix is formed when n + 1 < d.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from steerexp.config.errors import SteerexpError, choice_error
from steerexp.models.threads import one_thread

FISHERS = ("ief", "emp", "cov")
REG_SCALES = ("relative", "absolute")
#: iEF weight floor, relative: ``wᵢ = 1/(loss_grad_normsᵢ + IEF_EPS · median(loss_grad_norms))``.
IEF_EPS = 1e-6
#: Relative levels tried, in order, above a failed requested level (the stated fallback ladder).
FALLBACK_LEVELS = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
#: Route 1 is accepted when ``cond × backward error`` (a first-order bound on its relative error)
#: is at most this; otherwise route 2 runs.
MAX_FORWARD_BOUND = 1e-6
#: Route 2 (backward stable) is accepted when its normwise backward error
#: ``‖(F+λI)x − ḡ‖ / (‖F+λI‖‖x‖ + ‖ḡ‖)`` is at most this (a breakdown detector).
MAX_BACKWARD_ERROR = 1e-10
#: For λ = 0: smallest accepted ``‖F F⁺ḡ‖ / ‖ḡ‖`` (the part of ḡ in the range of F).
MIN_RANGE_FRACTION = 1e-8


@dataclass
class FisherSolution:
    """Unnormalised solution (float64, ``[d]``) and what was used to get it."""

    vector: Tensor
    info: dict[str, float | str | bool] = field(default_factory=dict)


def fisher_factor(
    grads: Tensor, fisher: str = "ief", loss_grad_norms: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """Float64 ``U`` with ``F = UᵀU``, and ``c`` with ``ḡ = Uᵀc`` (None for cov, where none exists)."""
    if fisher not in FISHERS:
        raise choice_error("fisher", fisher, FISHERS)
    g = grads.to(torch.float64)
    n = g.shape[0]
    if fisher == "emp":
        return g / n**0.5, torch.full((n,), n**-0.5, dtype=torch.float64)
    if fisher == "cov":
        if n < 2:
            raise SteerexpError(f"the covariance Fisher needs at least 2 gradient rows, got n={n}")
        return (g - g.mean(dim=0)).div_((n - 1) ** 0.5), None
    if loss_grad_norms is None:
        raise SteerexpError("the iEF Fisher needs loss_grad_norms (one per row), got None")
    w = ief_weights(loss_grad_norms)
    if w.shape[0] != n:
        raise SteerexpError(
            f"loss_grad_norms has {w.shape[0]} entries, expected one per row (n={n})"
        )
    return g * (w / n).sqrt().unsqueeze(1), (n * w).rsqrt()


def ief_weights(loss_grad_norms: Tensor) -> Tensor:
    """``wᵢ = 1/(normᵢ + ε)`` with the floor ``ε = IEF_EPS · median(norms)`` relative to the norms'
    own scale (falls back to their max, then to 1, when the median is 0)."""
    norms = loss_grad_norms.to(torch.float64).reshape(-1)
    ref = float(norms.median()) if norms.numel() else 1.0
    if ref <= 0:
        ref = float(norms.max()) or 1.0
    return 1.0 / (norms + IEF_EPS * ref)


@dataclass
class _Kernel:
    """Route 1 state: ``U``, ``c`` (or None), ``ḡ``, ``Uḡ`` and ``K = Q diag(s) Qᵀ``."""

    u: Tensor
    c: Tensor | None
    gbar: Tensor
    ug: Tensor
    s: Tensor
    q: Tensor

    @classmethod
    def build(cls, u: Tensor, c: Tensor | None, gbar: Tensor) -> _Kernel:
        gram = u @ u.mT
        with one_thread():
            s, q = torch.linalg.eigh(gram)
        return cls(u, c, gbar, u @ gbar, s.clamp_min(0.0), q)

    def solve(self, lam: float, keep: Tensor) -> Tensor:
        """``(UᵀU + λI)⁻¹ḡ`` (λ > 0) or ``F⁺ḡ`` (λ = 0) by the kernel formulas."""
        ones = torch.ones_like(self.s)
        if self.c is not None:
            weight = (
                1.0 / (self.s + lam)
                if lam > 0
                else torch.where(keep, 1.0 / torch.where(keep, self.s, ones), 0.0)
            )
            return self.u.mT @ (self.q @ (weight * (self.q.mT @ self.c)))
        coef = self.q.mT @ self.ug
        if lam > 0:
            return (self.gbar - self.u.mT @ (self.q @ (coef / (self.s + lam)))) / lam
        weight = torch.where(keep, 1.0 / torch.where(keep, self.s, ones).square(), 0.0)
        return self.u.mT @ (self.q @ (weight * coef))


@dataclass
class _Orthogonal:
    """Route 2 state: basis ``Q`` (d×m, or None for the identity), the eigenvalues ``s`` (zeros
    included) and orthonormal eigenvectors ``W`` (m×m) of the small ``F_c``, and ``ḡ_c``."""

    q: Tensor | None
    s: Tensor
    w: Tensor
    g: Tensor

    @classmethod
    def build(cls, u: Tensor, gbar: Tensor) -> _Orthogonal:
        n, d = u.shape
        q: Tensor | None = None
        small, g = u, gbar
        if n + 1 < d:
            q, r = torch.linalg.qr(torch.cat([u, gbar.unsqueeze(0)]).mT)
            small, g = r[:, :n].mT, r[:, n]
        with one_thread():
            _, sigma, vh = torch.linalg.svd(small, full_matrices=small.shape[0] < small.shape[1])
        s = torch.zeros(vh.shape[0], dtype=torch.float64)
        s[: sigma.numel()] = sigma.square()
        return cls(q, s, vh.mT, g)

    def solve(self, lam: float, cutoff: float) -> Tensor:
        """``Σₖ wₖ (wₖᵀḡ_c)/(sₖ + λ)`` over all m eigenvectors: the null-space part is explicit
        eigenvectors too, so nothing is subtracted and rounding divided by λ stays in null(F)."""
        coef = self.w.mT @ self.g
        if lam > 0:
            x = self.w @ (coef / (self.s + lam))
        else:
            keep = self.s > cutoff
            x = self.w @ torch.where(keep, coef / torch.where(keep, self.s, 1.0), 0.0)
        return x if self.q is None else self.q @ x


def _forward_bound(
    u: Tensor, gbar: Tensor, x: Tensor, lam: float, s_max: float, s_min: float
) -> float:
    """``cond × backward error`` of x (inf if x is non-finite or zero); for λ = 0 the normal
    equations ``F(Fx − ḡ) = 0`` with ``cond = (s_max/s_min)²``, or inf when ḡ ⟂ range(F)."""
    xn = float(x.norm())
    if not bool(torch.isfinite(x).all()) or xn == 0.0:
        return float("inf")
    gn = float(gbar.norm())
    fx = u.mT @ (u @ x)
    if lam > 0:
        back = float((fx + lam * x - gbar).norm()) / ((s_max + lam) * xn + gn)
        return back * (s_max + lam) / lam
    if float(fx.norm()) <= MIN_RANGE_FRACTION * gn:
        return float("inf")
    normal = u.mT @ (u @ (fx - gbar))
    back = float(normal.norm()) / (s_max**2 * xn + s_max * gn)
    return back * (s_max / s_min) ** 2


def solve_fisher(
    grads: Tensor,
    fisher: str = "ief",
    reg: float = 1e-2,
    reg_scale: str = "relative",
    loss_grad_norms: Tensor | None = None,
) -> FisherSolution:
    """``(F + λI)⁻¹ ḡ`` with ``ḡ = mean(G)``; ``λ = reg·tr(F)/d`` (relative) or ``reg`` (absolute).

    If the requested level gives a non-finite, zero or unstable solution on both routes, the
    next level of :data:`FALLBACK_LEVELS` (relative, strictly larger than the requested one) is
    used and ``info["reg_fallback"]`` is set; ``reg_used`` is the level in the requested scale.
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
    grads = grads.to(torch.float64)
    gbar = grads.mean(dim=0)
    if float(gbar.norm()) == 0.0:
        raise SteerexpError("mean gradient is exactly zero; the Fisher direction is undefined")
    u, c = fisher_factor(grads, fisher, loss_grad_norms)
    trace = float(torch.linalg.vector_norm(u)) ** 2
    unit = trace / d if trace > 0 else 1.0
    to_lam = unit if reg_scale == "relative" else 1.0
    kernel = _Kernel.build(u, c, gbar) if n + 1 < d else None
    ortho = _Orthogonal.build(u, gbar) if kernel is None else None
    spectrum = kernel.s if kernel is not None else ortho.s[: min(n, d)]  # type: ignore[union-attr]
    s_max = float(spectrum.max())
    cutoff = max(n, d) * torch.finfo(torch.float64).eps * s_max
    keep = spectrum > cutoff
    rank = int(keep.sum())
    s_min = float(spectrum[keep].min()) if rank else 0.0

    lam = reg * to_lam
    levels = [lam] + [lvl * unit for lvl in FALLBACK_LEVELS if lvl * unit > lam]
    for i, lam_try in enumerate(levels):
        route = "kernel"
        x = kernel.solve(lam_try, kernel.s > cutoff) if kernel is not None else None
        ok = (
            x is not None and _forward_bound(u, gbar, x, lam_try, s_max, s_min) <= MAX_FORWARD_BOUND
        )
        if not ok:
            route = "orthogonal"
            ortho = ortho or _Orthogonal.build(u, gbar)
            x = ortho.solve(lam_try, cutoff)
            bound = _forward_bound(u, gbar, x, lam_try, s_max, s_min)
            ok = bound < float("inf") and (
                lam_try == 0 or bound * lam_try / (s_max + lam_try) <= MAX_BACKWARD_ERROR
            )
        if ok and x is not None:
            info: dict[str, float | str | bool] = {
                "fisher": fisher,
                "reg_scale": reg_scale,
                "reg_requested": float(reg),
                "reg_used": lam_try / to_lam,
                "reg_eff": lam_try,
                "reg_fallback": i > 0,
                "fisher_trace": trace,
                "fisher_rank": float(rank),
                "fisher_route": route,
            }
            return FisherSolution(x, info)
    raise SteerexpError(
        f"Fisher solve ({fisher}, reg={reg}, {reg_scale}) failed at every level up to "
        f"{FALLBACK_LEVELS[-1]} relative (tr(F)={trace:.3g}, rank {rank})"
    )
