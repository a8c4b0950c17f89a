"""One-call building blocks on any Hugging Face causal LM: ``extract`` activations (and loss
gradients), ``fit`` a direction, ``steer`` with plain forward hooks.

``extract`` runs the pipeline's extraction (:mod:`steerexp.stages.extract.activations`) on the
caller's model and tokenizer (wrapped for the call, left as they were afterwards); ``fit`` the
pipeline's methods and sign rule (:func:`steerexp.stages.fit.methods.fit_from_config`); ``steer``
adds ``coeff * s * v`` to each module's output at every position, as the pipeline's steering
does (:mod:`steerexp.models.steering`), with ``torch`` hooks removed when the block ends.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from steerexp.config.compose import group_config, typed
from steerexp.config.errors import SteerexpError, choice_error
from steerexp.data.records import Pair
from steerexp.directions import Directions
from steerexp.models.loading import LoadedModel
from steerexp.stages.extract.activations import extract as extract_rows
from steerexp.stages.fit.methods import fit_from_config, method_config
from steerexp.store.cache import hash_key


@dataclass
class Activations:
    """Per module ``acts`` ``[2 * n_pairs, d]`` float32, rows interleaved (``0::2`` positive),
    and with a loss the gradients of that loss w.r.t. each module's output (``grads``, same
    shape) and each row's loss-gradient norm; ``meta``: model, modules, loss, dataset hash."""

    acts: dict[str, Tensor]
    grads: dict[str, Tensor] = field(default_factory=dict)
    loss_grad_norms: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def modules(self) -> list[str]:
        return list(self.acts)


def _pairs(pairs: Sequence[Any]) -> list[Any]:
    """``(positive, negative)`` texts -> the project's pairs (each text a user turn, the
    assistant turn opened empty); :class:`steerexp.data.records.Pair` objects pass through."""
    out = []
    for i, p in enumerate(pairs):
        if isinstance(p, Pair):
            out.append(p)
        elif isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2:
            out.append(Pair(str(p[0]), str(p[1]), ""))
        else:
            raise SteerexpError(
                f"pairs[{i}]={p!r} must be a (positive, negative) pair of texts or a steerexp Pair"
            )
    if not out:
        raise SteerexpError("pairs is empty: give at least one (positive, negative) pair")
    return out


def _modules(model: nn.Module, modules: Sequence[str | int]) -> list[str]:
    """Module names; an int N is the residual stream after block N (``model.layers.N``)."""
    names = {n for n, _ in model.named_modules() if n}
    out = [f"model.layers.{m}" if isinstance(m, int) else str(m) for m in modules]
    for m in out:
        if m not in names:
            raise choice_error(
                "module of the model", m, sorted(n for n in names if n.count(".") <= 2)
            )
    if not out:
        raise SteerexpError("modules is empty: name at least one module (e.g. model.layers.3)")
    return out


def _loss_config(loss: str | Mapping[str, Any] | None, loss_layer: int) -> DictConfig | None:
    """The loss (an option name or a config dict) as a typed config: this call's one conversion."""
    if loss is None:
        return None
    if isinstance(loss, str):
        return typed("loss", group_config("loss", loss, f"model.loss_layer={loss_layer}"))
    return typed("loss", dict(loss))


def _fingerprint(model: nn.Module) -> dict[str, Any]:
    """What identifies an in-memory model's weights for the extraction memo: its name and a cheap
    checksum of every parameter (so weights edited in place never hit a stale entry)."""
    sums = [float(p.detach().sum(dtype=torch.float64)) for p in model.parameters()]
    return {"name_or_path": str(getattr(model.config, "_name_or_path", "")), "param_sums": sums}


@contextmanager
def _wrapped(model: nn.Module, tokenizer: Any, need_grads: bool) -> Iterator[Any]:
    """The caller's model as a :class:`~steerexp.models.loading.LoadedModel` for one extraction;
    every attribute nnsight adds to its modules is removed afterwards (so the model is plain again
    and can be wrapped anew)."""
    from nnsight.modeling.transformers import TransformersModel

    if tokenizer.pad_token_id is None:
        tokenizer = copy.deepcopy(tokenizer)  # the caller's tokenizer keeps no pad token
        tokenizer.pad_token = tokenizer.eos_token
    before = {n: dict(m.__dict__) for n, m in model.named_modules()}
    if need_grads:
        model.enable_input_require_grads()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lm = TransformersModel(model, tokenizer=tokenizer)
        name = str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        loaded = LoadedModel(name=name, hf=model, tokenizer=tokenizer, lm=lm, path=name)
        loaded.fingerprint = _fingerprint(model)
        yield loaded
    finally:
        if need_grads:
            model.disable_input_require_grads()
        for n, m in model.named_modules():
            for key in set(m.__dict__) - set(before.get(n, m.__dict__)):
                del m.__dict__[key]  # nnsight's per-module state (``forward``, ``__nnsight__``)


def extract(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[Any],
    modules: Sequence[str | int],
    loss: str | Mapping[str, Any] | None = None,
    batch_size: int = 16,
    loss_layer: int = -3,
    progress: bool = False,
) -> Activations:
    """Activations of ``modules`` at the last token of each side of each pair (chat-templated as
    the pipeline does), and with ``loss`` (``"nll"``, ``"hs_diff"``, ``"reprpo_margin"`` or a loss
    config dict) the gradients of that loss. ``model``: any HF causal LM; ``modules``: names
    (``"model.layers.3.mlp"``) or block indices (``3`` = ``model.layers.3``, the residual stream).
    ``loss_layer`` is the loss's read layer (``output_hidden_states`` index) for a named loss."""
    rows = _pairs(pairs)
    names = _modules(model, modules)
    loss_cfg = _loss_config(loss, loss_layer)
    need_grads = loss_cfg is not None
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    with _wrapped(model, tokenizer, need_grads) as loaded:
        model_cfg = typed("model", {"name": loaded.name, "path": loaded.name, "dtype": dtype})
        ex = extract_rows(
            loaded,
            model_cfg,
            names,
            loss_cfg if loss_cfg is not None else _loss_config("nll", loss_layer),  # type: ignore[arg-type]
            rows,
            batch_size,
            cache_root=None,
            progress=progress,
            need_grads=need_grads,
        )
        meta = {
            "model_id": loaded.name,
            "model_type": str(getattr(model.config, "model_type", "")),
            "checkpoint_hash": hash_key(loaded.fingerprint),
            "modules": names,
            "loss": None if loss_cfg is None else str(loss_cfg["name"]),
            "dataset_hash": ex.meta["pairs"],
            "cache_key": ex.key,
        }
    return Activations(dict(ex.acts), dict(ex.grads), ex.loss_grad_norms, meta)


def fit(
    method: str | Mapping[str, Any],
    acts: Activations | Mapping[str, Tensor] | Tensor,
    grads: Mapping[str, Tensor] | Tensor | None = None,
    seed: int = 0,
) -> Directions:
    """A unit direction per module by ``method`` (a ``conf/method`` option such as ``"pca_diff"``,
    or a method config dict), with the pipeline's sign rule: ``result.sign[m]`` says whether it
    was flipped and the pair-vote share. ``acts``: :func:`extract`'s result, a dict of
    ``[2n, d]`` tensors (rows interleaved, positive first) or one tensor; gradient methods take
    ``grads`` (default: those in ``acts``). The result is in raw units (scale 1), so
    ``steer(model, direction, c)`` adds ``c * v``."""
    raw = group_config("method", method) if isinstance(method, str) else dict(method)
    cfg = method_config(raw)  # the one conversion of this public call
    meta: dict[str, Any] = {}
    norms = None
    if isinstance(acts, Activations):
        meta = dict(acts.meta)
        grads = grads if grads is not None else (acts.grads or None)
        norms, acts = acts.loss_grad_norms, acts.acts
    table = {"direction": acts} if isinstance(acts, Tensor) else dict(acts)
    grad_table = {"direction": grads} if isinstance(grads, Tensor) else dict(grads or {})
    fits = {
        m: fit_from_config(cfg, a, grad_table.get(m), norms, seed=seed) for m, a in table.items()
    }
    name = str(raw.get("name") or raw["kind"])
    meta.update(
        method=name,
        coeff_units="raw",
        modules=list(fits),
        fit_info={m: f.info for m, f in fits.items()},
        raw_norms={m: f.raw_norm for m, f in fits.items()},
    )
    meta.setdefault("loss", None)
    meta = {k: v for k, v in meta.items() if v is not None}
    return Directions({m: f.vector for m, f in fits.items()}, dict.fromkeys(fits, 1.0), meta)


def _hook(delta: Tensor) -> Any:
    """A forward hook adding ``delta`` to a module's output (its first element if a tuple)."""

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        h = output[0] if isinstance(output, tuple) else output
        new = h + delta.to(h.device, h.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


@contextmanager
def steer(
    model: nn.Module, directions: Directions | Mapping[str, Tensor], coeff: float
) -> Iterator[nn.Module]:
    """``with steer(model, directions, coeff): model.generate(...)``: every forward pass inside
    adds ``coeff * s * v`` to each direction's module output at every position (``s`` the run's
    coefficient unit, so coefficient 1 here is coefficient 1 of the run). Plain ``torch`` forward
    hooks, removed when the block ends, also on an exception; a dict of tensors is added as is
    (scale 1). At ``coeff = 0`` the outputs are bit-identical to the unsteered model's."""
    if not isinstance(directions, Directions):
        directions = Directions(dict(directions), dict.fromkeys(directions, 1.0))
    deltas = directions.scaled(coeff)
    targets = {m: model.get_submodule(m) for m in _modules(model, list(deltas))}
    handles = []
    try:
        for m, module in targets.items():
            handles.append(module.register_forward_hook(_hook(deltas[m])))
        yield model
    finally:
        for h in handles:
            h.remove()
