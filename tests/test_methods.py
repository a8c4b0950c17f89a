"""Direction methods: recovery, sign rule, exactness of the fast Fisher solve, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode

import steerexp
import steerexp.stages.fit.fisher as fisher_module
from steerexp.config.errors import SteerexpError
from steerexp.stages.fit.fisher import fisher_factor, solve_fisher
from steerexp.stages.fit.methods import (
    METHODS,
    fit_direction,
    fit_from_config,
    load_method_config,
    method_config,
    method_names,
)

METHOD_FILES = sorted((steerexp.CONF_DIR / "method").glob("*.yaml"))
REGS = [0.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5]


def planted(
    n_pairs: int = 48, d: int = 64, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs share a random base plus small noise; the positive adds ``scaleᵢ·u``.

    ``scaleᵢ ~ U(1, 6)`` varies so the pair differences have variance along ``u`` (pca_diff
    centres the differences, which removes a constant shift). Returns ``(acts, grads, u)``
    with interleaved rows; gradients are ``−u`` on positives plus noise, like a loss that
    falls along ``+u``.
    """
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=gen)
    u = u / u.norm()
    base = torch.randn(n_pairs, d, generator=gen) * 2.0
    scale = 1.0 + 5.0 * torch.rand(n_pairs, 1, generator=gen)
    pos = base + scale * u + 0.1 * torch.randn(n_pairs, d, generator=gen)
    neg = base + 0.1 * torch.randn(n_pairs, d, generator=gen)
    acts = torch.stack([pos, neg], dim=1).reshape(2 * n_pairs, d)
    grads = torch.randn(2 * n_pairs, d, generator=gen)
    grads[0::2] -= 2.0 * u
    return acts, grads, u


def loss_grad_norms(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) + 0.1


@pytest.mark.parametrize("name", ["mean_diff", "pca_diff", "pca_center"])
def test_planted_direction_recovered(name: str) -> None:
    acts, _, u = planted()
    v = fit_direction(name, acts)
    assert float(v @ u) >= 0.99


@pytest.mark.parametrize("path", METHOD_FILES, ids=lambda p: Path(p).stem)
def test_every_method_option(path: Path) -> None:
    acts, grads, _ = planted()
    lgn = loss_grad_norms(acts.shape[0])
    v = fit_direction(path.stem, acts, grads, lgn, seed=3)
    assert v.dtype == torch.float32 and v.shape == (acts.shape[1],)
    assert bool(torch.isfinite(v).all())
    assert abs(float(v.norm()) - 1.0) < 1e-5
    cfg = load_method_config(path.stem)
    fit = fit_from_config(cfg, acts, grads, lgn, seed=3)
    proj = (acts[0::2] - acts[1::2]) @ v
    if cfg["kind"] == "random":
        raw = torch.randn(
            acts.shape[1], generator=torch.Generator().manual_seed(3), dtype=torch.float64
        )
        assert torch.equal(v, (raw / raw.norm()).float()) and fit.info["flipped"] is False
    else:
        assert int((proj > 0).sum()) >= int((proj < 0).sum())
        assert fit.info["pair_vote_frac"] == pytest.approx(float((proj > 0).double().mean()))
    if cfg["kind"] in ("svd_steer", "fisher", "fisher_dual"):
        verdict = float(((grads[1::2] - grads[0::2]).double() @ v.double()).mean()) >= 0
        assert fit.info["grad_rule"] is verdict and fit.info["grad_rule_agrees"] is verdict
    again = fit_direction(path.stem, acts.clone(), grads.clone(), lgn.clone(), seed=3)
    assert torch.equal(v, again)


def test_method_options_and_the_registry_agree() -> None:
    """Every method option runs a registered kind, every registered kind has an option, and the
    journal experiment sweeps only real options (a renamed YAML or kind fails here)."""
    kinds = {load_method_config(name)["kind"] for name in method_names()}
    assert kinds == set(METHODS.names())
    journal = OmegaConf.load(steerexp.CONF_DIR / "experiment" / "journal.yaml")
    swept = str(journal.hydra.sweeper.params.method).split(",")
    assert set(swept) <= set(method_names()) and len(swept) == len(set(swept)) == 17


def test_pair_vote_orients_even_against_the_gradient_rule() -> None:
    """Gradients that fall along -u (a loss the trait raises): the pair vote still picks +u and the
    disagreement is recorded; flipping the activations flips every non-random method."""
    acts, grads, u = planted()
    grads = -grads
    lgn = loss_grad_norms(acts.shape[0])
    for name in ("svd_steer", "fisher_steer_reg2", "fisher_steer_cov_reg1"):
        fit = fit_from_config(load_method_config(name), acts, grads, lgn)
        assert float(fit.vector @ u) > 0.1, name
        assert fit.info["grad_rule_agrees"] is False and fit.info["pair_vote_frac"] > 0.9, name
    swapped = acts.reshape(-1, 2, acts.shape[1]).flip(1).reshape(acts.shape)
    for name in ("mean_diff", "pca_diff", "fisher_steer_reg2"):
        a = fit_direction(name, acts, grads, lgn)
        b = fit_direction(name, swapped, grads, lgn)
        assert torch.allclose(a, -b, atol=1e-6), name
    r = fit_direction("random", acts, seed=5)
    assert torch.equal(r, fit_direction("random", swapped, seed=5))


def test_random_is_seeded_and_low_precision_inputs_work() -> None:
    acts, grads, _ = planted()
    a, b = fit_direction("random", acts, seed=1), fit_direction("random", acts, seed=2)
    assert not torch.equal(a, b) and torch.equal(a, fit_direction("random", acts, seed=1))
    for dtype in (torch.float16, torch.bfloat16):
        v = fit_direction("fisher_steer_cov_reg2", acts.to(dtype), grads.to(dtype))
        assert v.dtype == torch.float32 and bool(torch.isfinite(v).all())


def test_config_override_is_used() -> None:
    acts, grads, _ = planted()
    cfg = method_config({**load_method_config("fisher_steer_cov_reg1"), "reg": 0.3})
    fit = fit_from_config(cfg, acts, grads)
    assert fit.info["reg_requested"] == 0.3 and fit.info["reg_used"] == 0.3
    assert fit.info["reg_fallback"] is False and fit.raw_norm > 0


def dense_reference(
    grads: torch.Tensor, fisher: str, reg: float, scale: str, lgn: torch.Tensor
) -> torch.Tensor:
    """The explicit d×d float64 system, solved densely (pinv for reg0)."""
    g = grads.double()
    n, d = g.shape
    if fisher == "emp":
        f = g.T @ g / n
    elif fisher == "cov":
        c = g - g.mean(0)
        f = c.T @ c / (n - 1)
    else:
        w = 1.0 / (lgn.double() + 1e-6)
        f = (g * w[:, None]).T @ g / n
    gbar = g.mean(0)
    if reg == 0:
        return torch.linalg.pinv(f, hermitian=True) @ gbar
    lam = reg * float(torch.trace(f)) / d if scale == "relative" else reg
    return torch.linalg.solve(f + lam * torch.eye(d, dtype=torch.float64), gbar)


@pytest.fixture(params=["kernel", "orthogonal"])
def route(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which route of :mod:`steerexp.stages.fit.fisher` must answer (n < d); the orthogonal one is forced
    by making the kernel route's error bound unattainable."""
    if request.param == "orthogonal":
        monkeypatch.setattr(fisher_module, "MAX_FORWARD_BOUND", -1.0)
    return str(request.param)


@pytest.mark.parametrize("shape", [(24, 64), (96, 32)], ids=["n<d", "n>d"])
@pytest.mark.parametrize("scale", ["relative", "absolute"])
@pytest.mark.parametrize("fisher", ["ief", "emp", "cov"])
def test_fast_solve_equals_dense(
    fisher: str, scale: str, shape: tuple[int, int], route: str
) -> None:
    gen = torch.Generator().manual_seed(7)
    n, d = shape
    grads = torch.randn(n, d, generator=gen) * (torch.rand(n, 1, generator=gen) + 0.2)
    grads += 0.5 * torch.randn(d, generator=gen)
    lgn = loss_grad_norms(n)
    for reg in REGS:
        sol = solve_fisher(grads, fisher, reg, scale, lgn)
        ref = dense_reference(grads, fisher, reg, scale, lgn)
        err = float((sol.vector - ref).norm() / ref.norm())
        assert err <= 1e-4, (reg, err)
        assert sol.info["reg_fallback"] is False
        assert sol.info["fisher_route"] == (route if n + 1 < d else "orthogonal")


class ShapeTracker(TorchDispatchMode):
    """Records the largest tensor any aten op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


@pytest.mark.parametrize(
    "name", ["fisher_steer_reg2", "fisher_steer_cov_reg0", "fisher_steer_dual"]
)
def test_fast_path_never_builds_d_by_d(name: str, route: str) -> None:
    gen = torch.Generator().manual_seed(0)
    n, d = 32, 2048
    grads = torch.randn(n, d, generator=gen)
    acts = torch.randn(n, d, generator=gen)
    lgn = loss_grad_norms(n)
    with ShapeTracker() as tracker:
        fit_direction(name, acts, grads, lgn)
    assert 0 < tracker.max_numel <= 4 * n * d < d * d


def test_singular_fallback_is_recorded() -> None:
    # Two rows of equal norm: the centred rows ±(g₁ − g₂)/2 are orthogonal to ḡ, so the
    # covariance pseudo-inverse solution is exactly zero and reg0 cannot be used.
    grads = torch.zeros(2, 8)
    grads[0, 0] = grads[1, 1] = 1.0
    sol = solve_fisher(grads, "cov", 0.0, "relative")
    assert sol.info["reg_fallback"] is True and sol.info["reg_used"] == 1e-8
    assert float(sol.vector.norm()) > 0 and bool(torch.isfinite(sol.vector).all())
    # An absolute λ that underflows 1/λ gives inf; the ladder takes over.
    grads = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    sol = solve_fisher(grads, "cov", 1e-320, "absolute")
    assert sol.info["reg_fallback"] is True and sol.info["reg_used"] > 1e-320
    assert bool(torch.isfinite(sol.vector).all())
    acts = torch.randn(4, 8)
    cfg = method_config({"kind": "fisher_dual", "fisher": "cov", "reg": 0.0, "combine": "pos"})
    grads4 = torch.zeros(4, 8)
    grads4[0, 0] = grads4[2, 1] = 1.0
    grads4[1::2] = torch.randn(2, 8)
    fit = fit_from_config(cfg, acts, grads4)
    assert fit.info["reg_fallback"] is True and fit.info["pos.reg_fallback"] is True


def _bad_inputs() -> list[tuple[str, dict[str, Any], str]]:
    acts, grads, _ = planted(n_pairs=4, d=8)
    nan = acts.clone()
    nan[3, 2] = float("nan")
    inf_g = grads.clone()
    inf_g[1, 0] = float("inf")
    same = torch.ones(8, 8)
    return [
        ("mean_diff", {"acts": acts[:7]}, "n=7"),
        ("mean_diff", {"acts": acts[:0]}, "n=0"),
        ("fisher_steer_reg2", {"acts": acts}, "grads=None"),
        ("svd_steer", {"acts": acts, "grads": grads[:, :5]}, "does not match"),
        ("pca_diff", {"acts": nan}, "row 3"),
        ("fisher_steer_cov_reg2", {"acts": acts, "grads": inf_g}, "grads has non-finite"),
        ("mean_diff", {"acts": same}, "zero"),
        ("fisher_steer_reg2", {"acts": acts, "grads": grads}, "loss_grad_norms"),
        (
            "fisher_steer_reg2",
            {"acts": acts, "grads": grads, "loss_grad_norms": torch.ones(3)},
            "n=8",
        ),
    ]


@pytest.mark.parametrize("name,kwargs,needle", _bad_inputs())
def test_bad_inputs_give_one_line_errors(name: str, kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(SteerexpError) as exc:
        fit_direction(name, **kwargs)
    msg = str(exc.value)
    assert "\n" not in msg and needle in msg


def test_bad_config_values_give_choices() -> None:
    acts, grads, _ = planted(n_pairs=4, d=8)
    with pytest.raises(SteerexpError, match="did you mean 'cov'"):
        method_config({"kind": "fisher", "fisher": "covv"})
    with pytest.raises(SteerexpError, match="did you mean 'diff'"):
        method_config({"kind": "fisher_dual", "combine": "dif"})
    with pytest.raises(SteerexpError, match="did you mean 'pca_diff'"):
        method_config({"kind": "pca_dif"})


def test_unknown_method_name_suggests() -> None:
    acts, _, _ = planted(n_pairs=4, d=8)
    with pytest.raises(SteerexpError) as exc:
        fit_direction("fisher_steer_cov_reg", acts)
    msg = str(exc.value)
    assert "\n" not in msg and "did you mean 'fisher_steer_cov_reg" in msg


def test_ief_weights_matter_and_uniform_norms_give_emp() -> None:
    """Uniform loss-gradient norms (at any scale, even 1e-11 as the old 1/N-scaled norms were)
    give exactly emp's direction; varied norms give a different one."""
    acts, grads, _ = planted()
    emp = fit_direction("fisher_steer_emp_reg2", acts, grads)
    for scale in (1e-11, 1.0, 1e4):
        uniform = torch.full((acts.shape[0],), scale)
        ief = fit_direction("fisher_steer_reg2", acts, grads, uniform)
        assert torch.allclose(ief, emp, atol=1e-6), scale
    varied = (
        torch.exp(torch.randn(acts.shape[0], generator=torch.Generator().manual_seed(4))) * 1e-10
    )
    ief = fit_direction("fisher_steer_reg2", acts, grads, varied)
    assert float(ief @ emp) < 0.99


def test_fisher_rows_match_definitions() -> None:
    g = torch.randn(10, 6, generator=torch.Generator().manual_seed(2))
    lgn = loss_grad_norms(10)
    w = 1.0 / (lgn.double() + 1e-6 * lgn.double().median())
    u = fisher_factor(g, "ief", lgn)[0]
    expect = (g.double() * w[:, None]).T @ g.double() / 10
    assert torch.allclose(u.T @ u, expect, rtol=1e-12, atol=1e-12)
