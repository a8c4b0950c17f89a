"""``run(cfg)``: the registered stages in order (:mod:`steerexp.pipeline.stages`): load, extract,
fit, intervene, generate (and judge), regress, refits, null.

The config is typed once, here (:func:`~steerexp.config.compose.typed_run`): each stage gets the
typed section it reads (``cfg.model``, ``cfg.loss``, ``cfg.method``, the resolved eval) and never
re-types it. Every check that needs no model runs first
(:func:`~steerexp.pipeline.checks.check_config`).
Artifacts are written as soon as their stage finishes, so a later failure loses nothing already
computed; a failure is recorded in ``status.json``/``metrics.json`` and re-raised to the caller,
which decides whether it ends the process (single run) or just the job (multirun).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig

from steerexp.config.compose import typed_run
from steerexp.config.errors import SteerexpError, error_text
from steerexp.data.questionfiles import record_split
from steerexp.models import threads
from steerexp.pipeline.checks import DEGENERATE, check_config, degenerate_reason, identity, plain
from steerexp.pipeline.stages import PIPELINE, STAGES
from steerexp.pipeline.state import RunState, need
from steerexp.pipeline.tracking import make_logger
from steerexp.render.journal import journal_table
from steerexp.store import artifacts
from steerexp.store.guard import check_output_dir


def execute(
    cfg: DictConfig, run_dir: Path, metrics: dict[str, Any], progress: bool = True
) -> pd.DataFrame:
    """The stages of :data:`~steerexp.pipeline.stages.PIPELINE` in order, each timed; fills
    ``metrics`` as it goes (each stage writes its artifacts when it is done) and returns the
    judged rows."""
    state = RunState(cfg, run_dir, check_config(cfg), metrics, progress)
    record_split(cfg, run_dir)
    torch.manual_seed(int(cfg.seed))
    for stage in (STAGES.get(name) for name in PIPELINE):
        if stage.when(cfg):
            with state.timer(stage.name):
                stage.run(state)
    return need(state, "judged").dose


def run(
    cfg: DictConfig, run_dir: Path | str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run one experiment into ``run_dir`` (Hydra's job dir by default); returns its metrics.

    A run dir whose ``status.json`` already says ``ok`` is skipped (resumed sweeps). On
    failure, ``status.json``/``metrics.json`` record it and the exception propagates. ``cfg``
    (Hydra's composed config) is typed here, once (:func:`~steerexp.config.compose.typed_run`).
    """
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir
    run_dir = Path(run_dir)
    check_output_dir("run dir", run_dir, cfg.get("cache_dir"))
    resolved = plain(cfg)
    config_hash = artifacts.config_hash(resolved)
    if _finished(run_dir, resolved, config_hash):
        print(f"[steerexp] {run_dir} already finished (status ok, same config); skipping")
        return json.loads((run_dir / "metrics.json").read_text())
    cfg = typed_run(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(run_dir / "environment.json", artifacts.environment())
    artifacts.write_json(run_dir / "config.json", artifacts.run_config(resolved))
    metrics: dict[str, Any] = {**identity(cfg), "status": "running", "error": None}
    logger = make_logger(cfg.logger)
    t_start = time.perf_counter()
    dose = None
    try:
        logger.start(cfg, run_dir)
        with threads.restored():
            dose = execute(cfg, run_dir, metrics, progress)
        why = degenerate_reason(metrics)
        metrics.update(status=DEGENERATE if why else "ok", error=why)
        if why:
            print(f"steerexp: warning: {run_dir}: {why}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        metrics.update(status="interrupted", error="interrupted (Ctrl-C); rerun to resume")
        raise
    except BaseException as e:
        metrics.update(status="failed", error=error_text(e))
        raise
    finally:
        metrics["time_total_s"] = time.perf_counter() - t_start
        artifacts.write_json(run_dir / "metrics.json", metrics)
        if metrics["status"] in ("ok", DEGENERATE):
            logger.log(metrics, dose, run_dir / "dose_response.png")
            print(journal_table(pd.DataFrame([metrics])), flush=True)
        logger.finish(str(metrics["status"]))
        artifacts.write_status(run_dir, str(metrics["status"]), metrics["error"], config_hash)
    return metrics


def _finished(run_dir: Path, resolved: dict[str, Any], config_hash: str) -> bool:
    """True when ``run_dir`` holds a finished run of this very config (skip it); a finished run of
    another config (or of one not recorded) is never reused or overwritten: that raises."""
    status = artifacts.read_status_file(run_dir)
    if status.get("status") not in ("ok", DEGENERATE):
        return False
    if status.get("config_hash") == config_hash:
        return True
    try:
        diff = artifacts.config_diff(json.loads((run_dir / "config.json").read_text()), resolved)
    except (OSError, ValueError):
        diff = "its config was not recorded"
    if not diff:
        return True  # hashed by an older steerexp that counted a now result-neutral key
    raise SteerexpError(
        f"run dir {str(run_dir)!r} already holds a finished run of a different config ({diff}); "
        "not reusing or overwriting it: choose a new hydra.run.dir/hydra.sweep.dir or delete that dir"
    )
