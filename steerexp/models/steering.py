"""The steering value and how it is applied: ``h <- h + c * s * v`` on every target module.

The edit is written inside an nnsight trace (:func:`steer`, wherever activations or logits of a
forward are read), or, for the decode loop of generation, by plain forward hooks
(:func:`added`) that live only for the ``with`` block: the added vector does not change between
steps, and nnsight's per-step interleaving cost more than the whole steering (a sixth of a
small model's decode step). Both add the same tensor the same way, so samples are identical.
No hook outlives a run. A coefficient of exactly 0 adds exact zeros, so those rows are
bit-identical to the unsteered model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from steerexp.models.loading import LoadedModel
from steerexp.models.tokens import model_inputs


@dataclass
class Steering:
    """Unit directions and their per-module scale ``s`` (one coefficient unit, in activation space)."""

    vectors: dict[str, Tensor]
    scales: dict[str, float]

    def scaled(self, factor: float) -> Steering:
        return Steering(self.vectors, {m: s * factor for m, s in self.scales.items()})


def shifts(steering: Steering, coeffs: Tensor, device: torch.device) -> dict[str, Tensor]:
    """Per module, the ``[B, 1, d]`` float32 shift ``coeffs[row] * s * v`` (exact zeros at c = 0)."""
    c = coeffs.to(device, torch.float32)[:, None, None]
    return {
        m: c * (steering.scales[m] * steering.vectors[m].to(device, torch.float32))
        for m in steering.vectors
    }


def steer(loaded: LoadedModel, deltas: dict[str, Tensor]) -> None:
    """Inside a trace or generation step: add each module's shift to its output, in the order the
    model runs them (:meth:`LoadedModel.forward_order`), whatever order ``deltas`` has."""
    for m in loaded.forward_order(list(deltas)):
        envoy = loaded.envoy(m)
        envoy.output = _shift(envoy.output, deltas[m])


def _shift(out: Any, delta: Tensor) -> Any:
    """A module output with ``delta`` added to its hidden state, as :func:`steer` writes it."""
    h = out[0] if isinstance(out, tuple) else out
    new = h + delta.to(h.dtype)
    return (new, *out[1:]) if isinstance(out, tuple) else new


@contextmanager
def hooked(module: torch.nn.Module, fn: Callable[[Any], Any]) -> Iterator[None]:
    """``fn(output)`` on every forward of ``module`` inside the block (its return, unless None,
    replaces the output); the hook is removed on exit, whatever happens."""
    handle = module.register_forward_hook(lambda _m, _i, out: fn(out))
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def untraced(model: torch.nn.Module) -> Iterator[None]:
    """Inside the block, ``model``'s modules run their own ``forward`` rather than nnsight's
    per-call controller (which only checks for a running trace and calls it: a tenth of a small
    model's decode step). For loops that need no tracing; modules with an accelerate hook keep
    the controller, which runs that hook."""
    popped = []
    for module in model.modules():
        fwd = module.__dict__.get("forward")
        if type(fwd).__name__ == "Controller" and "_hf_hook" not in module.__dict__:
            popped.append((module, module.__dict__.pop("forward")))
    try:
        yield
    finally:
        for module, fwd in popped:
            module.__dict__["forward"] = fwd


@contextmanager
def added(loaded: LoadedModel, deltas: dict[str, Tensor]) -> Iterator[None]:
    """Inside the block, every forward of the plain HF model adds each module's shift to its
    output (the hook form of :func:`steer`, for loops that need no tracing; run
    :func:`untraced`). The hooks read ``deltas`` at every forward, so a decode loop may shrink
    its rows in place as rows leave the batch."""
    with ExitStack() as stack:
        stack.enter_context(untraced(loaded.hf))
        for m in deltas:
            stack.enter_context(
                hooked(loaded.hf.get_submodule(m), lambda out, m=m: _shift(out, deltas[m]))
            )
        yield


def steered_logits(
    loaded: LoadedModel, ids: Tensor, mask: Tensor, steering: Steering | None, coeffs: Tensor | None
) -> Tensor:
    """Logits of one forward pass, steered per row (or not at all)."""
    ids, mask = ids.to(loaded.device), mask.to(loaded.device)
    deltas = (
        shifts(steering, coeffs, loaded.device)
        if steering is not None and coeffs is not None
        else {}
    )
    with torch.no_grad(), loaded.lm.trace(model_inputs(ids, mask)):
        steer(loaded, deltas)
        logits = loaded.lm.output.logits.save()
    return logits
