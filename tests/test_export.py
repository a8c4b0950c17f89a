"""Export: the GGUF is repeng's control-vector layout, and repeng and steering-vectors, loading
what steerexp wrote, steer the organism to the log-probs steerexp's own hooks give (1e-4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import steerexp
from steerexp.config.errors import SteerexpError
from steerexp.directions import Directions
from steerexp.export import export, load_steering_vector, main, read_gguf_provenance
from steerexp.organism import build as build_organism

MODULES = ["model.layers.2", "model.layers.3", "model.layers.4"]
TOL = 1e-4


@pytest.fixture(scope="module")
def organism() -> tuple[torch.nn.Module, object]:
    path = build_organism()
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def directions(modules: list[str] = MODULES, d: int = 128) -> Directions:
    """Seeded unit directions with unequal unit scales (as a norm-unit run has) and provenance."""
    gen = torch.Generator().manual_seed(0)
    vecs = {m: torch.nn.functional.normalize(torch.randn(d, generator=gen), dim=0) for m in modules}
    meta = {
        "method": "pca_diff",
        "loss": "nll",
        "coeff_units": "norm",
        "model_type": "qwen3",
        "model_id": "organism",
        "checkpoint_hash": "abc123",
        "dataset_hash": "def456",
        "modules": modules,
        "steerexp_version": steerexp.__version__,
    }
    return Directions(vecs, {m: 500.0 + 100 * i for i, m in enumerate(modules)}, meta)


def logprobs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=ids).logits.float(), -1)


@pytest.fixture(scope="module")
def ids(organism: tuple[torch.nn.Module, object]) -> torch.Tensor:
    tok = organism[1]
    return torch.tensor([tok("You broke a vase. Would you lie about it? No").input_ids])


def test_gguf_is_the_control_vector_layout(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    d = directions()
    path = export(d, "gguf", tmp_path)
    reader = gguf.GGUFReader(str(path))
    arch = reader.get_field("general.architecture")
    assert bytes(arch.parts[-1]).decode() == "controlvector"
    assert bytes(reader.get_field("controlvector.model_hint").parts[-1]).decode() == "qwen3"
    assert int(reader.get_field("controlvector.layer_count").parts[-1][0]) == 3
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert sorted(tensors) == ["direction.2", "direction.3", "direction.4"]
    for m, n in zip(MODULES, (2, 3, 4), strict=True):
        np.testing.assert_array_equal(
            tensors[f"direction.{n}"], (d.scales[m] * d.vectors[m]).numpy()
        )
    prov = read_gguf_provenance(path)
    assert prov["model_id"] == "organism" and prov["checkpoint_hash"] == "abc123"
    assert prov["dataset_hash"] == "def456" and prov["method"] == "pca_diff"
    assert (
        json.loads(prov["scales"]) == d.scales and prov["steerexp_version"] == steerexp.__version__
    )
    record = json.loads((tmp_path / "export_gguf.json").read_text())
    assert record["layer_mapping"]["model.layers.2"] == "block 2 output"


def test_only_residual_stream_has_layers(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    mlp = directions(["model.layers.2.mlp"])
    with pytest.raises(SteerexpError, match="not a residual-stream module"):
        export(mlp, "gguf", tmp_path)
    with pytest.raises(SteerexpError, match="not a residual-stream module"):
        export(mlp, "steering-vectors", tmp_path)
    back = Directions.load(export(mlp, "safetensors", tmp_path))
    assert back.scales == mlp.scales and back.meta["checkpoint_hash"] == "abc123"
    torch.testing.assert_close(back.vectors, mlp.vectors, rtol=0, atol=0)
    with pytest.raises(SteerexpError, match="llama.cpp cannot steer block 0"):
        export(directions(["model.layers.0"]), "gguf", tmp_path)
    assert export(directions(["model.layers.0"]), "repeng", tmp_path).is_file()


def test_repeng_round_trip(
    organism: tuple[torch.nn.Module, object], ids: torch.Tensor, tmp_path: Path
) -> None:
    """repeng's ControlVector.import_gguf + ControlModel on our GGUF = steerexp.steer."""
    from steerexp.export import import_repeng

    pytest.importorskip("gguf")
    pytest.importorskip("sklearn")
    try:
        repeng = import_repeng()
    except ImportError as e:
        pytest.skip(f"repeng not importable: {e}")
    model = organism[0]
    d = directions()
    vec = repeng.ControlVector.import_gguf(str(export(d, "repeng", tmp_path)))
    assert sorted(vec.directions) == [2, 3, 4] and vec.model_type == "qwen3"
    cm = repeng.ControlModel(model, [2, 3, 4])
    try:
        for coeff in (-1.5, 0.7):
            cm.set_control(vec, coeff)
            theirs = logprobs(cm, ids)
            cm.reset()
            with steerexp.steer(model, d, coeff):
                ours = logprobs(model, ids)
            assert float((theirs - ours).abs().max()) <= TOL
            assert float((ours - logprobs(model, ids)).abs().max()) > 0.05
    finally:
        cm.unwrap()


def test_steering_vectors_round_trip(
    organism: tuple[torch.nn.Module, object], ids: torch.Tensor, tmp_path: Path
) -> None:
    """steering-vectors' SteeringVector.apply on our export = steerexp.steer."""
    pytest.importorskip("steering_vectors")
    model = organism[0]
    d = directions()
    sv = load_steering_vector(export(d, "steering-vectors", tmp_path))
    assert sv.layer_type == "decoder_block" and sorted(sv.layer_activations) == [2, 3, 4]
    for coeff in (-1.5, 0.7):
        with sv.apply(model, multiplier=coeff):
            theirs = logprobs(model, ids)
        with steerexp.steer(model, d, coeff):
            ours = logprobs(model, ids)
        assert float((theirs - ours).abs().max()) <= TOL
        assert float((ours - logprobs(model, ids)).abs().max()) > 0.05


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    directions().save(run)
    assert main([str(run), "--to", "safetensors"]) == 0
    assert Path(capsys.readouterr().out.strip()) == run / "export" / "directions.safetensors"
    assert main([str(tmp_path / "missing"), "--to", "gguf"]) == 2
    assert "no directions.safetensors" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([str(run), "--to", "onnx"])
    assert e.value.code == 2
