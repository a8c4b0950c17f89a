"""The public ``Directions``: a run's ``directions.safetensors`` (or :func:`steerexp.fit`'s result)
with its coefficient unit and provenance, and :func:`provenance`, what a run records about where
its directions came from.

A direction file holds one unit vector per module (key = module name, e.g. ``model.layers.3``)
and string metadata: ``scales`` (per module, the activation-space size ``s`` of one coefficient
unit, so coefficient ``c`` adds ``c * s * v``), ``coeff_units``, ``method``, ``loss``,
``fit_info`` (the sign decision per module) and the provenance keys of :func:`provenance`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from torch import Tensor

from steerexp import __version__
from steerexp.config.errors import SteerexpError
from steerexp.models.loading import model_fingerprint
from steerexp.store.artifacts import write_directions
from steerexp.store.cache import hash_key

if TYPE_CHECKING:
    from steerexp.models.loading import LoadedModel

FILE = "directions.safetensors"
#: A residual-stream module: the output of decoder block N (module template ``model.layers.{N}``).
RESIDUAL = re.compile(r"model\.layers\.(\d+)")
#: Metadata keys whose values are JSON (the rest are plain strings).
JSON_KEYS = ("scales", "raw_norms", "fit_info", "modules")


def steerexp_version() -> str:
    return __version__


def checkpoint_hash(fingerprint: Mapping[str, Any]) -> str:
    """A short hash of a model fingerprint (``steerexp.models.loading.model_fingerprint``)."""
    return hash_key(dict(fingerprint))


def provenance(
    model_cfg: Mapping[str, Any], loaded: LoadedModel, modules: list[str], dataset_hash: str
) -> dict[str, Any]:
    """Where a run's directions came from: model id and type, checkpoint hash (content of the
    weights, not their path), modules, dataset hash (of the contrast pairs) and steerexp version."""
    return {
        "model": str(model_cfg.get("name")),
        "model_id": str(model_cfg.get("path") or model_cfg.get("builder") or model_cfg.get("name")),
        "model_type": str(getattr(loaded.hf.config, "model_type", "")),
        "checkpoint_hash": checkpoint_hash(model_fingerprint(model_cfg, loaded)),
        "modules": list(modules),
        "dataset_hash": dataset_hash,
        "steerexp_version": steerexp_version(),
    }


@dataclass
class Directions:
    """Unit directions per module with their coefficient unit and provenance.

    ``vectors[m]`` is a unit float32 vector; ``scales[m]`` the size of one coefficient unit at
    ``m`` (the run's ``coeff_units``: ``norm``/``kl``/``raw``), so :func:`steerexp.steer` with
    coefficient ``c`` adds ``c * scales[m] * vectors[m]``, exactly what the run did at ``c``.
    ``meta`` holds the rest of the file's metadata (method, loss, fit_info, provenance)."""

    vectors: dict[str, Tensor]
    scales: dict[str, float]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> Directions:
        """Read a run dir's ``directions.safetensors`` (or that file itself)."""
        path = Path(path)
        file = path / FILE if path.is_dir() else path
        if not file.is_file():
            raise SteerexpError(
                f"no {FILE} at {str(path)!r}; give a finished run dir or the file itself"
            )
        with safe_open(str(file), framework="pt") as f:
            vectors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 -- safe_open has no __iter__
            raw = f.metadata() or {}
        meta: dict[str, Any] = {}
        for k, v in raw.items():
            meta[k] = json.loads(v) if k in JSON_KEYS else v
        scales = {m: float(s) for m, s in (meta.pop("scales", None) or {}).items()}
        missing = [m for m in vectors if m not in scales]
        if missing:
            raise SteerexpError(
                f"{str(file)!r} has no coefficient scale for {missing}; it predates the export "
                "metadata (rerun the experiment)"
            )
        return cls(vectors, scales, meta)

    def save(self, path: str | Path) -> Path:
        """Write as ``directions.safetensors`` (``path`` a dir or a file name); :meth:`load` reads it."""
        path = Path(path)
        file = path / FILE if path.suffix != ".safetensors" else path
        file.parent.mkdir(parents=True, exist_ok=True)
        return write_directions(file, self.vectors, {**self.meta, "scales": self.scales})

    @property
    def modules(self) -> list[str]:
        return list(self.vectors)

    @property
    def method(self) -> str | None:
        return self.meta.get("method")

    @property
    def loss(self) -> str | None:
        return self.meta.get("loss")

    @property
    def coeff_units(self) -> str:
        return str(self.meta.get("coeff_units", "raw"))

    @property
    def sign(self) -> dict[str, dict[str, Any]]:
        """Per module, the sign decision: ``flipped`` and ``pair_vote_frac`` (the share of pairs
        whose projection difference is positive on the kept direction); empty for ``random``."""
        info = self.meta.get("fit_info") or {}
        keys = ("flipped", "pair_vote_frac", "grad_rule", "grad_rule_agrees")
        return {m: {k: i[k] for k in keys if k in i} for m, i in info.items()}

    def scaled(self, coeff: float = 1.0) -> dict[str, Tensor]:
        """Per module, the float32 shift added at coefficient ``coeff``: ``coeff * s * v``."""
        c = torch.tensor(float(coeff), dtype=torch.float32)
        return {m: c * (self.scales[m] * v.float()) for m, v in self.vectors.items()}

    def layers(self, modules: list[str] | None = None) -> dict[str, int]:
        """Residual-stream modules (``model.layers.N``) -> block index N; any other module is a
        one-line error (only the residual stream has a layer index in llama.cpp/repeng/steering-vectors)."""
        out = {}
        for m in modules or self.modules:
            match = RESIDUAL.fullmatch(m)
            if match is None:
                raise SteerexpError(
                    f"module {m!r} is not a residual-stream module (model.layers.N, module=hs); "
                    "only those map to a layer index: export it with --to safetensors"
                )
            out[m] = int(match.group(1))
        return out

    def provenance(self) -> dict[str, str]:
        """Every metadata field as a string (what exports carry), the unit scales included."""
        meta = {**self.meta, "scales": self.scales}
        return {
            k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in meta.items()
        }


#: :func:`steerexp.fit` returns this same class (one module or many, in raw units).
Direction = Directions
