"""The target modules of a run: a ``module.template`` with ``{N}`` filled for the selected layers."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from steerexp.config.compose import typed
from steerexp.config.errors import SteerexpError
from steerexp.models.loading import LoadedModel


def select_layers(n_layers: int, layers: Any, layer_frac: Any) -> list[int]:
    """Explicit ``layers`` win; else every i with ``lo <= i / n_layers <= hi``."""
    if layers is not None:
        chosen = [int(i) for i in layers]
        bad = [i for i in chosen if not -n_layers <= i < n_layers]
        if bad or not chosen:
            raise SteerexpError(
                f"module.layers={list(layers)} is outside the model's {n_layers} layers "
                f"(valid: 0..{n_layers - 1}, or negative from the end)"
            )
        return sorted({i % n_layers for i in chosen})
    lo, hi = (float(x) for x in layer_frac)
    if not 0.0 <= lo <= hi <= 1.0:
        raise SteerexpError(f"module.layer_frac={[lo, hi]} must satisfy 0 <= lo <= hi <= 1")
    chosen = [i for i in range(n_layers) if lo <= i / n_layers <= hi]
    if not chosen:
        raise SteerexpError(
            f"module.layer_frac={[lo, hi]} selects no layer of a {n_layers}-layer model; widen it"
        )
    return chosen


def resolve_modules(loaded: LoadedModel, module_cfg: Mapping[str, Any]) -> list[str]:
    """Fill ``{N}`` in the template for the selected layers; every name must exist."""
    module_cfg = typed("module", module_cfg)
    template = str(module_cfg.template)
    if "{N}" not in template:
        raise SteerexpError(f"module.template={template!r} has no '{{N}}' layer placeholder")
    explicit = module_cfg.layers
    frac = None if explicit is not None else module_cfg.layer_frac
    layers = select_layers(loaded.n_layers, explicit, frac)
    names = set(loaded.module_names())
    paths = [template.replace("{N}", str(i)) for i in layers]
    missing = [p for p in paths if p not in names]
    if missing:
        layer0 = template.replace("{N}", str(layers[0]))
        pool = sorted(n for n in names if re.fullmatch(r"model\.layers\.\d+(\..+)?", n))
        pool0 = [
            n.replace(f".{layers[0]}.", ".{N}.", 1)
            for n in pool
            if n.startswith(f"model.layers.{layers[0]}.")
        ]
        close = difflib.get_close_matches(template, pool0, n=4, cutoff=0.3)
        hint = ", ".join(close) if close else ", ".join(pool0[:8])
        fused = _fused_siblings(template, pool0)
        note = (
            f"this model fuses it into {', '.join(map(repr, fused))} (steer that module instead); "
            if fused
            else ""
        )
        raise SteerexpError(
            f"module.template={template!r} matches no module of {loaded.name} ({layer0!r} missing); "
            f"{note}closest: {hint}"
        )
    return paths


def _fused_siblings(template: str, pool: list[str]) -> list[str]:
    """Modules beside a missing ``x_proj`` that fuse it with others (``gate_up_proj``, ``qkv_proj``)."""
    parent, _, leaf = template.rpartition(".")
    stem, sep, suffix = leaf.rpartition("_")
    if not sep or not stem:
        return []
    found = []
    for name in pool:
        head, _, other = name.rpartition(".")
        o_stem, o_sep, o_suffix = other.rpartition("_")
        if head != parent or other == leaf or not o_sep or o_suffix != suffix:
            continue
        parts = o_stem.split("_")
        if (stem in parts and len(parts) > 1) or (
            len(stem) == 1 and o_stem.isalpha() and stem in o_stem and len(o_stem) > 1
        ):
            found.append(name)
    return found
