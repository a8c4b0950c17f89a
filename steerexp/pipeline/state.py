"""What a run's stages share: the config, the inputs, the loaded model, each stage's typed
result, the metrics they fill and the timer that times them (one ``time_<stage>_s`` each)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from steerexp.data.answers import AnswerSpec
from steerexp.models.loading import LoadedModel
from steerexp.pipeline.checks import RunInputs
from steerexp.store.results import Directions, Extraction, Intervention, Judged, Regression


class StageTimer:
    """``with timer("fit"):`` adds the block's own wall time to ``metrics["time_fit_s"]``; a block
    timed inside another (judge inside the cached generation) is not counted in the outer one."""

    def __init__(self, metrics: dict[str, Any]) -> None:
        self.metrics = metrics
        self._nested: list[float] = []  # per open block: seconds spent in blocks inside it

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        key = f"time_{stage}_s"
        self._nested.append(0.0)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            total = time.perf_counter() - t0
            own = total - self._nested.pop()
            self.metrics[key] = self.metrics.get(key, 0.0) + own
            if self._nested:
                self._nested[-1] += total


@dataclass
class Model:
    """The loaded model with the run's target modules and answer spec."""

    loaded: LoadedModel
    modules: list[str]
    spec: AnswerSpec


@dataclass
class RunState:
    """One run as its stages see it: each stage reads the fields earlier stages set (its
    ``needs``) and sets its own (its ``gives``); :func:`need` reads one that must be set."""

    cfg: DictConfig
    run_dir: Path
    inputs: RunInputs
    metrics: dict[str, Any]
    progress: bool = True
    timer: StageTimer = field(init=False)
    model: Model | None = None
    extraction: Extraction | None = None
    directions: Directions | None = None
    intervention: Intervention | None = None
    judged: Judged | None = None
    regression: Regression | None = None

    def __post_init__(self) -> None:
        self.timer = StageTimer(self.metrics)


def need(state: RunState, name: str) -> Any:
    """``state.<name>``, which an earlier stage must have set (a stage-order bug otherwise)."""
    value = getattr(state, name)
    if value is None:
        raise RuntimeError(f"no stage before this one set {name!r}: check the stage order")
    return value
