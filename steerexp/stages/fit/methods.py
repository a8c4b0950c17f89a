"""Direction methods: fit one unit steering vector per module from A and G.

Inputs are interleaved pairs: ``acts[0::2]`` positive, ``acts[1::2]`` negative (same for
``grads``). Every method returns a raw direction; :func:`fit_from_config` normalises it and
fixes its sign by one rule, so ``+v`` means "more like the positive persona":

- pair vote (a method's ``orient="pair_vote"``, the default): keep ``v`` if ``(a⁺ − a⁻)·v > 0``
  in the majority of pairs (ties: by the mean projection), else ``−v``;
- gradient methods (``svd_steer``, ``fisher``, ``fisher_dual``) also record the first-order
  verdict ``mean((g⁻ − g⁺)·v) ≥ 0`` on the final ``v`` (``grad_rule``) and whether the unflipped
  raw direction's verdict agreed with the vote (``grad_rule_agrees``): under ``nll`` on the
  organism they disagree, a finding, not a reason to point a row away from the trait;
- ``orient="none"`` (``random``, the null) is never flipped.

Methods are registered by ``kind`` with what they need and how they are treated (the pipeline
reads these properties and never a method's name); a ``conf/method/<name>.yaml`` file picks the
kind and its parameters, so names are never parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from steerexp.config.compose import group_config, options, typed
from steerexp.config.errors import SteerexpError, choice_error
from steerexp.config.registry import Registry
from steerexp.stages.fit.fisher import solve_fisher
from steerexp.stages.fit.inputs import MethodInputs, method_inputs
from steerexp.store.results import DirectionFit, Info

#: How a fitted direction is signed: by the pair vote, or not at all (a null direction).
ORIENTS = ("pair_vote", "none")


@dataclass(frozen=True)
class Method:
    """A registered method: ``fit(cfg, inputs) -> (raw float64 direction, info)`` and what the
    pipeline needs to know about it (read from here, never from the method's name):

    - ``uses_grads``: extraction computes the loss gradients, passed as ``grads``;
    - ``pulls_back_rows``: ``grads`` are instead the read-layer contrast pulled back to each
      module (:func:`steerexp.stages.extract.vjp.vjp_rows`, at ``method.read_layer``);
    - ``orient``: one of :data:`ORIENTS`;
    - ``refittable``: the direction depends on the pairs, so bootstrap refits mean something;
    - ``min_pairs``: contrast pairs it needs (a difference needs two to mean anything, a
      principal axis of centred rows rank + 1 = 2);
    - ``seed_key``: for a drawn method (a seeded random draw, not a fit) the key of its config
      that fixes the draw; null there, the run's seed draws it (:meth:`redrawn`).
    """

    fit: Callable[[Mapping[str, Any], MethodInputs], tuple[Tensor, Info]]
    uses_grads: bool
    min_pairs: int = 2
    pulls_back_rows: bool = False
    orient: str = "pair_vote"
    refittable: bool = True
    seed_key: str | None = None

    def redrawn(self, cfg: Mapping[str, Any]) -> bool:
        """Whether a run of the typed method config ``cfg`` draws its direction afresh from the run
        seed (a drawn method whose config fixes no seed): its uncertainty is then the spread over
        draws, the random null's."""
        return self.seed_key is not None and cfg[self.seed_key] is None

    def pullback(self, cfg: Mapping[str, Any], loss_layer: int) -> tuple[int, str]:
        """For a method that pulls back rows: the read layer (the typed config's ``read_layer``,
        null: ``loss_layer``) and the tokens the rows are taken at (its ``tokens``)."""
        read = cfg["read_layer"]
        return int(loss_layer if read is None else read), str(cfg["tokens"])


METHODS: Registry[Method] = Registry("method kind")


def register(
    kind: str,
    uses_grads: bool,
    min_pairs: int = 2,
    *,
    pulls_back_rows: bool = False,
    orient: str = "pair_vote",
    refittable: bool = True,
    seed_key: str | None = None,
) -> Callable[[Callable[..., tuple[Tensor, Info]]], Method]:
    """Decorator: ``@register("my_method", uses_grads=False)`` makes ``kind: my_method`` a method
    (``fn(cfg, inputs) -> (raw direction, info)``) with the properties of :class:`Method`; see
    README "Add a method"."""
    if orient not in ORIENTS:
        raise choice_error("orient", orient, ORIENTS)

    def deco(fn: Callable[[Mapping[str, Any], MethodInputs], tuple[Tensor, Info]]) -> Method:
        method = Method(fn, uses_grads, min_pairs, pulls_back_rows, orient, refittable, seed_key)
        return METHODS.register(kind)(method)

    return deco


def _top_right_singular(x: Tensor, what: str) -> Tensor:
    """First right singular vector of ``x`` (the top principal axis of its rows, uncentred); an
    all-zero ``x`` has none (the SVD would return a basis vector), so it is refused, naming
    ``what`` it holds."""
    if not float(x.abs().max()) > 0:
        raise SteerexpError(
            f"{what} are all zero (no variance), so there is no principal axis to fit; "
            "use more (or more varied) contrast pairs"
        )
    return torch.linalg.svd(x, full_matrices=False)[2][0]


@register("mean_diff", uses_grads=False)
def _mean_diff(cfg: Mapping[str, Any], x: MethodInputs) -> tuple[Tensor, Info]:
    """``mean(a⁺ − a⁻)`` over pairs."""
    return (x.acts[0::2] - x.acts[1::2]).mean(dim=0), {}


@register("pca_diff", uses_grads=False)
def _pca_diff(cfg: Mapping[str, Any], x: MethodInputs) -> tuple[Tensor, Info]:
    """Top right singular vector of ``D − mean(D)``, ``D = A⁺ − A⁻`` (needs variance along the trait)."""
    diff = x.acts[0::2] - x.acts[1::2]
    return _top_right_singular(diff - diff.mean(dim=0), "the centred pair differences"), {}


@register("pca_center", uses_grads=False)
def _pca_center(cfg: Mapping[str, Any], x: MethodInputs) -> tuple[Tensor, Info]:
    """Top right singular vector of the activations minus each pair's own mean (rows ``±D/2``)."""
    pair_mean = (x.acts[0::2] + x.acts[1::2]) / 2
    centred = x.acts - pair_mean.repeat_interleave(2, dim=0)
    return _top_right_singular(centred, "the pair-centred activations"), {}


#: The method whose seeded directions make the random null (docs/statistics.md).
NULL_KIND = "random"


@register(
    NULL_KIND, uses_grads=False, min_pairs=0, orient="none", refittable=False, seed_key="seed"
)
def _random(cfg: Mapping[str, Any], x: MethodInputs) -> tuple[Tensor, Info]:
    """A Gaussian vector from ``torch.Generator().manual_seed(seed)``, ``seed`` = ``method.seed``
    when set, else the run's; uses the data only for d."""
    seed = int(x.seed if cfg["seed"] is None else cfg["seed"])
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(x.acts.shape[1], generator=gen, dtype=torch.float64), {"seed": float(seed)}


@register("svd_steer", uses_grads=True)
def _svd_steer(cfg: Mapping[str, Any], x: MethodInputs) -> tuple[Tensor, Info]:
    """Top right singular vector of the centred gradients ``G − mean(G)``."""
    assert x.grads is not None
    return _top_right_singular(x.grads - x.grads.mean(dim=0), "the centred gradients"), {}


@register("vjp_steer", uses_grads=False, pulls_back_rows=True)
def _vjp_steer(cfg: Mapping[str, Any], x: MethodInputs) -> tuple[Tensor, Info]:
    """Mean of the pulled-back rows ``Jᵢᵀu`` (passed as ``grads``; :func:`steerexp.stages.extract.vjp.vjp_rows`)."""
    if x.grads is None:
        raise SteerexpError(
            "method vjp_steer needs the read-layer contrast pulled back to the module "
            "(steerexp.stages.extract.vjp.vjp_rows), passed as grads"
        )
    return x.grads.double().mean(dim=0), {}


def _fisher_args(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The Fisher parameters of a method config (schema: ``steerexp.config.schema.FisherMethod``)."""
    return {
        "fisher": str(cfg["fisher"]),
        "reg": float(cfg["reg"]),
        "reg_scale": str(cfg["reg_scale"]),
    }


@register("fisher", uses_grads=True)
def _fisher(cfg: Mapping[str, Any], x: MethodInputs) -> tuple[Tensor, Info]:
    """``(F + λI)⁻¹ ḡ`` over all rows (see :mod:`steerexp.stages.fit.fisher`)."""
    assert x.grads is not None
    sol = solve_fisher(x.grads, loss_grad_norms=x.loss_grad_norms, **_fisher_args(cfg))
    return sol.vector, sol.info


@register("fisher_dual", uses_grads=True)
def _fisher_dual(cfg: Mapping[str, Any], x: MethodInputs) -> tuple[Tensor, Info]:
    """``v± = (F± + λI)⁻¹ ḡ±`` per side; ``combine``: pos → v⁺, neg → v⁻, diff → v⁺ − v⁻, mean → (v⁺ + v⁻)/2."""
    assert x.grads is not None
    combine = str(cfg["combine"])
    args = _fisher_args(cfg)
    info: Info = {"combine": combine}
    side: dict[str, Tensor] = {}
    for name, rows in (("pos", slice(0, None, 2)), ("neg", slice(1, None, 2))):
        if combine in (name, "mean", "diff"):
            lgn = None if x.loss_grad_norms is None else x.loss_grad_norms[rows]
            sol = solve_fisher(x.grads[rows], loss_grad_norms=lgn, **args)
            side[name] = sol.vector
            info.update({f"{name}.{k}": val for k, val in sol.info.items()})
    info.update(
        {"fisher": args["fisher"], "reg_scale": args["reg_scale"], "reg_requested": args["reg"]}
    )
    info["reg_used"] = max(float(info[f"{s}.reg_used"]) for s in side)
    info["reg_fallback"] = any(bool(info[f"{s}.reg_fallback"]) for s in side)
    if combine == "pos":
        return side["pos"], info
    if combine == "neg":
        return side["neg"], info
    if combine == "diff":
        return side["pos"] - side["neg"], info
    return (side["pos"] + side["neg"]) / 2, info


def pair_vote(v: Tensor, acts: Tensor) -> tuple[bool, float]:
    """Whether ``+v`` wins the pair vote (ties: by the mean projection), and its share of pairs."""
    p = acts.to(v.dtype) @ v
    proj = p[0::2] - p[1::2]
    votes = int(torch.sign(proj).sum())
    keep = votes > 0 or (votes == 0 and float(proj.mean()) >= 0)
    return keep, float((proj > 0).double().mean())


def _fix_sign(v: Tensor, x: MethodInputs, method: Method) -> tuple[Tensor, Info]:
    """Apply the sign rule of the module docstring; returns the oriented ``v`` and what was decided."""
    if method.orient == "none":
        return v, {"flipped": False}
    keep, share = pair_vote(v, x.acts)
    out = v if keep else -v
    info: Info = {"flipped": not keep, "pair_vote_frac": share if keep else 1.0 - share}
    if method.uses_grads:
        assert x.grads is not None
        p = x.grads @ out
        verdict = float((p[1::2] - p[0::2]).mean()) >= 0
        info.update(grad_rule=verdict, grad_rule_agrees=verdict)
    return out, info


def check_pairs(name: str, kind: str, n_pairs: int) -> None:
    """Method ``name`` (of ``kind``) needs at least its ``min_pairs`` contrast pairs."""
    need = METHODS.get(kind).min_pairs
    if n_pairs < need:
        raise SteerexpError(
            f"method {name!r} needs at least {need} contrast pairs, got {n_pairs}; "
            "raise dataset.max_pairs (or add rows to the dataset)"
        )


def method_config(method_cfg: Mapping[str, Any]) -> DictConfig:
    """A method config given as a plain dict (a public call's, a test's), typed once by its
    kind's schema: defaults filled in, an unknown key or a wrong value a one-line error."""
    if "kind" not in method_cfg:
        raise SteerexpError(
            f"method config {dict(method_cfg)!r} has no 'kind'; valid: {', '.join(METHODS.names())}"
        )
    METHODS.get(str(method_cfg["kind"]))
    return typed("method", method_cfg)


def fit_from_config(
    method_cfg: DictConfig,
    acts: Tensor,
    grads: Tensor | None = None,
    loss_grad_norms: Tensor | None = None,
    seed: int = 0,
) -> DirectionFit:
    """Fit the method the typed ``method`` config describes (the run's ``cfg.method``, or
    :func:`method_config` of a dict); dispatches on ``kind`` (a config without ``name`` is named
    after its kind)."""
    method = METHODS.get(str(method_cfg["kind"]))
    cfg: dict[str, Any] = OmegaConf.to_container(method_cfg, resolve=True, enum_to_str=True)  # type: ignore[assignment]
    name = str(cfg["kind"] if OmegaConf.is_missing(method_cfg, "name") else cfg["name"])
    x = method_inputs(name, acts, grads, loss_grad_norms, seed, method.uses_grads)
    check_pairs(name, str(cfg["kind"]), x.acts.shape[0] // 2)
    raw, info = method.fit(cfg, x)
    raw_norm = float(raw.norm())
    if not (raw_norm > 0 and raw_norm < float("inf")):
        raise SteerexpError(
            f"method {name!r} gave a zero or non-finite direction (norm {raw_norm})"
        )
    v, sign = _fix_sign(raw / raw_norm, x, method)
    return DirectionFit(
        v.to(torch.float32).contiguous(),
        raw_norm,
        {"method": name, "kind": str(cfg["kind"]), **info, **sign},
    )


def fit_summary(fits: Mapping[str, DirectionFit]) -> dict[str, Any]:
    """Sign decisions over modules: any flip, mean pair-vote share, and (gradient methods)
    whether the first-order gradient rule agreed with the pair vote at every module."""
    infos = [f.info for f in fits.values()]
    out: dict[str, Any] = {
        "sign_flipped": any(bool(i.get("flipped")) for i in infos),
        "pair_vote_frac": float(np.mean([float(i.get("pair_vote_frac", np.nan)) for i in infos])),
        "grad_rule_agrees": None,
    }
    if all("grad_rule_agrees" in i for i in infos):
        out["grad_rule_agrees"] = all(bool(i["grad_rule_agrees"]) for i in infos)
    fallback = [i for i in infos if i.get("reg_fallback")]
    out["reg_fallback"] = bool(fallback)
    if fallback:
        out["reg_used"] = max(float(i.get("reg_used", 0.0)) for i in fallback)
    return out


def method_names() -> list[str]:
    """The option names of the ``method`` config group (``conf/method/*.yaml``)."""
    return options("method")


def load_method_config(name: str) -> DictConfig:
    """The ``method`` option ``name`` as Hydra composes it (its base merged), typed; unknown
    names give a did-you-mean error."""
    return method_config(group_config("method", name))


def fit_direction(
    name: str,
    acts: Tensor,
    grads: Tensor | None = None,
    loss_grad_norms: Tensor | None = None,
    seed: int = 0,
) -> Tensor:
    """Public API: the unit float32 direction ``[d]`` of the ``conf/method`` option ``name``."""
    return fit_from_config(load_method_config(name), acts, grads, loss_grad_norms, seed).vector
