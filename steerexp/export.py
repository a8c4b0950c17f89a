"""``steerexp export RUN_DIR --to gguf|repeng|steering-vectors|safetensors [--out DIR]``: a run's
directions in the formats other tools load, each with its provenance.

- ``gguf``: repeng's control-vector layout, which llama.cpp loads with ``--control-vector``:
  architecture ``controlvector``, ``controlvector.model_hint`` (the HF ``model_type``),
  ``controlvector.layer_count``, and one float32 tensor ``direction.N`` per steered block.
- ``repeng``: the same GGUF layout (``repeng_control_vector.gguf``), for ``repeng.ControlVector.import_gguf`` (block 0 allowed;
  :func:`to_repeng` builds the object directly).
- ``steering-vectors``: ``steering_vector.safetensors`` with one tensor ``layer.N`` per block and
  ``layer_type`` ``decoder_block`` (:func:`load_steering_vector` builds a ``SteeringVector``).
- ``safetensors``: ``directions.safetensors`` as the run wrote it: module names, unit vectors,
  the unit scales in the metadata (:meth:`steerexp.Directions.load` reads it; any module).

Layer mapping: steerexp's residual-stream module ``model.layers.N`` (``module=hs``), the output
of decoder block N (0-based), is ``direction.N`` in repeng and llama.cpp, which add it to the
output of block N, and layer N of steering-vectors' ``decoder_block`` matcher. llama.cpp cannot
steer block 0 (it rejects ``direction.0``). Other modules (``o_proj``, ``mlp``...) have no
layer index there: they export to ``safetensors`` only. Units: every layer tensor is
``s * v``, one coefficient unit of the run, so coefficient (``--control-vector-scaled``
scale, repeng ``coeff``, steering-vectors ``multiplier``) 1 there = coefficient 1 here.
Every export carries the run's provenance (model id and type, checkpoint hash, modules, method,
loss, dataset hash, unit scales, coefficient units, steerexp version): GGUF key-values
``steerexp.<key>``, safetensors metadata, and ``export_<format>.json`` beside each file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerexp.config.errors import SteerexpError, choice_error
from steerexp.directions import FILE, Directions

FORMATS = ("gguf", "repeng", "steering-vectors", "safetensors")
GGUF_ARCH = "controlvector"


def layer_tensors(d: Directions, allow_zero: bool = True) -> dict[int, np.ndarray]:
    """Block index -> float32 ``s * v`` (coefficient 1 of the run) for residual-stream directions."""
    layers = d.layers()
    if not allow_zero and 0 in layers.values():
        raise SteerexpError(
            "llama.cpp cannot steer block 0 (model.layers.0; it rejects direction.0): "
            "export with --to repeng, steering-vectors or safetensors"
        )
    scaled = d.scaled(1.0)
    return {layers[m]: scaled[m].numpy().astype(np.float32) for m in sorted(layers, key=layers.get)}


def write_gguf(d: Directions, path: Path, allow_zero: bool = False) -> Path:
    """The control-vector GGUF of repeng's ``export_gguf`` (llama.cpp ``--control-vector``), plus
    the provenance as ``steerexp.<key>`` strings."""
    import gguf

    tensors = layer_tensors(d, allow_zero)
    hint = str(d.meta.get("model_type") or "")
    if not hint:
        raise SteerexpError(
            "the directions do not record the model type (model_type metadata) that GGUF's "
            "controlvector.model_hint needs; rerun the experiment with this steerexp version"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), GGUF_ARCH)
    writer.add_string(f"{GGUF_ARCH}.model_hint", hint)
    writer.add_uint32(f"{GGUF_ARCH}.layer_count", len(tensors))
    for key, value in sorted(d.provenance().items()):
        writer.add_string(f"steerexp.{key}", value)
    for layer, vec in tensors.items():
        writer.add_tensor(f"direction.{layer}", vec)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read_gguf_provenance(path: Path) -> dict[str, str]:
    """The ``steerexp.<key>`` strings of an exported GGUF file."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    out = {}
    for name, f in reader.fields.items():
        if name.startswith("steerexp."):
            out[name.removeprefix("steerexp.")] = bytes(f.parts[-1]).decode()
    return out


def write_steering_vector(d: Directions, path: Path) -> Path:
    """``layer.N`` tensors (``s * v``) and ``layer_type`` plus provenance in the metadata."""
    from safetensors.torch import save_file

    tensors = {f"layer.{n}": torch.from_numpy(v) for n, v in layer_tensors(d).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={**d.provenance(), "layer_type": "decoder_block"})
    return path


def load_steering_vector(path: str | Path) -> Any:
    """A ``steering_vectors.SteeringVector`` from :func:`write_steering_vector`'s file."""
    from safetensors import safe_open
    from steering_vectors import SteeringVector

    with safe_open(str(path), framework="pt") as f:
        acts = {int(k.split(".")[1]): f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        layer_type = (f.metadata() or {}).get("layer_type", "decoder_block")
    return SteeringVector(layer_activations=acts, layer_type=layer_type)


def import_repeng() -> Any:
    """``repeng`` (0.4.0 annotates with ``np.float_``, gone in NumPy 2: aliased to ``float64``)."""
    if not hasattr(np, "float_"):
        np.float_ = np.float64  # type: ignore[attr-defined]
    import repeng

    return repeng


def to_repeng(d: Directions) -> Any:
    """A ``repeng.ControlVector`` (``model_type``, ``directions = {N: s * v}``)."""
    ControlVector = import_repeng().ControlVector

    return ControlVector(model_type=str(d.meta.get("model_type", "")), directions=layer_tensors(d))


#: format -> (file name, writer, how to load it).
_WRITERS: dict[str, tuple[str, Any, str]] = {
    "gguf": (
        "control_vector.gguf",
        lambda d, p: write_gguf(d, p),
        "llama-cli -m MODEL.gguf --control-vector-scaled {file} 1.0  # coefficient 1 = one run unit",
    ),
    "repeng": (
        "repeng_control_vector.gguf",
        lambda d, p: write_gguf(d, p, allow_zero=True),
        "from repeng import ControlVector, ControlModel; v = ControlVector.import_gguf('{file}'); "
        "cm = ControlModel(model, list(v.directions)); cm.set_control(v, coeff)",
    ),
    "steering-vectors": (
        "steering_vector.safetensors",
        write_steering_vector,
        "from steerexp.export import load_steering_vector; "
        "sv = load_steering_vector('{file}'); with sv.apply(model, multiplier=coeff): ...",
    ),
    "safetensors": (
        FILE,
        lambda d, p: d.save(p),
        "import steerexp; d = steerexp.Directions.load('{file}'); "
        "with steerexp.steer(model, d, coeff): ...",
    ),
}


def export(run_dir: str | Path | Directions, to: str, out: str | Path | None = None) -> Path:
    """Write a run's (or a :class:`Directions`') directions in format ``to`` under ``out``
    (default ``RUN_DIR/export/``) with ``export_<format>.json`` (provenance, layer mapping, how
    to load);
    returns the written file."""
    if to not in FORMATS:
        raise choice_error("export format", to, FORMATS)
    if isinstance(run_dir, Directions):
        d = run_dir
        if out is None:
            raise SteerexpError("exporting Directions from memory needs an out dir")
    else:
        d = Directions.load(run_dir)
    where = Path(out) if out is not None else Path(run_dir) / "export"  # type: ignore[arg-type]
    name, writer, how = _WRITERS[to]
    target = where / name
    layers = {} if to == "safetensors" else d.layers()
    writer(d, target)
    record = {
        "format": to,
        "file": name,
        "provenance": {k: d.meta.get(k) for k in sorted(d.meta) if k != "fit_info"},
        "unit_scales": d.scales,
        "layer_mapping": {m: f"block {n} output" for m, n in layers.items()},
        "load": how.format(file=target),
    }
    (where / f"export_{to.replace('-', '_')}.json").write_text(
        json.dumps(record, indent=2, sort_keys=True) + "\n"
    )
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """``steerexp export RUN_DIR --to FORMAT [--out DIR]``; bad input: one line, exit 2."""
    parser = argparse.ArgumentParser(
        prog="steerexp export", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument(
        "run_dir", type=Path, help="a finished run dir (holds directions.safetensors)"
    )
    parser.add_argument("--to", required=True, choices=FORMATS, help="output format")
    parser.add_argument(
        "--out", type=Path, default=None, help="output dir (default RUN_DIR/export)"
    )
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        path = export(args.run_dir, args.to, args.out)
    except SteerexpError as e:
        print(f"steerexp export: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
