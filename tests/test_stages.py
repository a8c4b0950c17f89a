"""The run as registered stages: no method name in pipeline code, stage order, stage timers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from helpers import compose_cfg
from omegaconf import OmegaConf

import steerexp.pipeline.stages as stages_mod
from steerexp.pipeline import state as state_mod
from steerexp.pipeline import summary
from steerexp.pipeline.reference import NullReference
from steerexp.pipeline.stages import PIPELINE, STAGES
from steerexp.pipeline.state import RunState, StageTimer
from steerexp.stages.fit import methods
from steerexp.stages.fit.methods import METHODS, fit_from_config

PIPELINE_DIR = Path(methods.__file__).resolve().parents[2] / "pipeline"


def method_names_in(folder: Path) -> list[str]:
    """``file:line: 'name'`` for each string literal (docstrings aside) in ``folder``'s modules
    that is a registered method kind."""
    kinds = set(METHODS.names())
    found = []
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text())
        docs = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        found += [
            f"{path.name}:{node.lineno}: {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docs
            and node.value in kinds
        ]
    return found


def test_no_method_name_in_pipeline_code(tmp_path: Path) -> None:
    """The pipeline reads a method's registry properties, never its name; the check finds a
    name when one is there."""
    assert method_names_in(PIPELINE_DIR) == []
    (tmp_path / "bad.py").write_text(
        '"""Doc naming vjp_steer."""\nif kind == "vjp_steer":\n    pass\n'
    )
    assert method_names_in(tmp_path) == ["bad.py:2: 'vjp_steer'"]


def test_method_properties_are_what_the_pipeline_reads() -> None:
    vjp, rnd, pca = METHODS.get("vjp_steer"), METHODS.get("random"), METHODS.get("pca_diff")
    assert vjp.pulls_back_rows and not pca.pulls_back_rows and not rnd.pulls_back_rows
    assert (rnd.orient, rnd.refittable, rnd.min_pairs) == ("none", False, 0)
    assert (pca.orient, pca.refittable) == ("pair_vote", True)
    assert METHODS.get(methods.NULL_KIND) is rnd
    with pytest.raises(Exception, match="orient"):
        methods.register("x", uses_grads=False, orient="vote")


def test_a_new_method_is_signed_by_its_orient_property(monkeypatch: pytest.MonkeyPatch) -> None:
    """A method pointing away from the positive side is flipped by the pair vote, and left as it
    is under ``orient="none"``: the rule comes from the registry entry, not the name."""
    acts = torch.tensor([[2.0, 0.0], [0.0, 0.0]] * 3)  # positive rows along +x

    def away(cfg, x):
        return -(x.acts[0::2] - x.acts[1::2]).mean(dim=0), {}

    for orient, sign in (("pair_vote", 1.0), ("none", -1.0)):
        monkeypatch.setitem(METHODS._items, "away", methods.Method(away, False, orient=orient))
        fit = fit_from_config(methods.method_config({"kind": "away"}), acts)
        assert fit.vector.tolist() == [sign, 0.0]
        assert fit.info["flipped"] is (orient == "pair_vote")


def test_whether_a_run_redraws_its_direction_is_the_registry_entry_s_answer() -> None:
    """The null stage asks the method's entry (never its name or config keys) whether a run draws
    its direction afresh from the run seed: ``random`` without its own seed does, with one not."""
    assert METHODS.get("random").redrawn(compose_cfg("method=random").method)
    assert not METHODS.get("random").redrawn(compose_cfg("method=random", "method.seed=3").method)
    assert not METHODS.get("pca_diff").redrawn(compose_cfg("method=pca_diff").method)


def test_where_rows_are_pulled_back_is_the_registry_entry_s_answer() -> None:
    """The fit stage asks the method's entry where its rows are read (never its config keys):
    ``vjp_steer`` at its ``read_layer``, or the loss layer when that is null."""
    vjp = METHODS.get("vjp_steer")
    assert vjp.pullback(compose_cfg("method=vjp_steer").method, -3) == (-3, "all")
    cfg = compose_cfg("method=vjp_steer", "method.read_layer=2", "method.tokens=last").method
    assert vjp.pullback(cfg, -3) == (2, "last")


def test_each_stage_needs_only_what_an_earlier_one_gives() -> None:
    fields = set(RunState.__dataclass_fields__)
    given: set[str] = set()
    for name in PIPELINE:
        stage = STAGES.get(name)
        assert set(stage.needs) <= given, (name, set(stage.needs) - given)
        assert set(stage.gives) <= fields
        given |= set(stage.gives)
    assert "judged" in given and "regression" in given
    assert PIPELINE.index("intervene") == PIPELINE.index("fit") + 1


def test_a_nested_timer_is_not_counted_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """generate times judge inside it: time_generate_s is generation alone, and the two add up
    to the wall time of the whole block."""
    clock = iter([0.0, 3.0, 5.0, 6.0])  # generate starts, judge starts, judge ends, generate ends
    monkeypatch.setattr(state_mod.time, "perf_counter", lambda: next(clock))
    metrics: dict[str, float] = {}
    timer = StageTimer(metrics)
    with timer("generate"), timer("judge"):
        pass
    assert metrics == {"time_generate_s": 4.0, "time_judge_s": 2.0}


@pytest.mark.parametrize("method_seed", [None, 3])
def test_a_drawn_direction_that_follows_the_run_seed_gets_the_nulls_spread(
    monkeypatch, tmp_path, method_seed
) -> None:
    """``random`` without ``method.seed`` draws another direction at every run seed, so its
    interval holds the null's spread (a reseed's slope is another null draw); with its own
    ``method.seed`` the direction is fixed and the interval stays the clustered CI."""
    base = {"slope": 1.0, "slope_se": 0.5, "slope_df": 5.0, "refit_slope_sd": float("nan")}
    metrics = {**base, **summary.interval(base)}
    stats = {"null_slope_sd": 4.0, "null_k": 64}
    monkeypatch.setattr(stages_mod, "null_reference", lambda s: NullReference(stats, None))
    monkeypatch.setattr(stages_mod.summary, "write_frames", lambda *a, **k: None)
    cfg = OmegaConf.create({"method": {"kind": "random", "seed": method_seed}})
    state = RunState(cfg, tmp_path, None, metrics)  # type: ignore[arg-type]
    STAGES.get("null").run(state)
    width = state.metrics["slope_hi"] - state.metrics["slope_lo"]
    clustered = 2 * 2.5706 * 0.5  # t(0.975, 5) x se on both sides
    if method_seed is None:
        assert width == pytest.approx(2 * 2.5706 * (0.5**2 + 4.0**2) ** 0.5, rel=1e-4)
    else:
        assert width == pytest.approx(clustered, rel=1e-4)
