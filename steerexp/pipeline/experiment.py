"""``run(cfg)``: extract -> fit -> intervene -> generate -> judge -> regress, one call per stage.

Every check that needs no model runs first (:func:`~steerexp.pipeline.checks.check_config`).
Artifacts are written as soon as their stage finishes, so a later failure loses nothing already
computed; a failure is recorded in ``status.json``/``metrics.json`` and re-raised to the caller,
which decides whether it ends the process (single run) or just the job (multirun).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig

from steerexp.config.errors import SteerexpError, error_text
from steerexp.data.prompts import check_prompts
from steerexp.data.questionfiles import record_split
from steerexp.directions import provenance
from steerexp.models import threads
from steerexp.pipeline import steps, summary
from steerexp.pipeline.checks import DEGENERATE, check_config, degenerate_reason, identity, plain
from steerexp.pipeline.reference import null_reference, scenario_slopes
from steerexp.pipeline.refits import bootstrap_refits
from steerexp.pipeline.tracking import make_logger
from steerexp.render import plots
from steerexp.render.journal import journal_table
from steerexp.stages.fit.methods import fit_summary
from steerexp.stages.regress.coherence import PMASS_MIN
from steerexp.stages.regress.dose import curve_stats
from steerexp.store import artifacts
from steerexp.store.columns import DOSE_COLUMNS
from steerexp.store.guard import check_output_dir


class StageTimer:
    """``with timer("fit"):`` adds the block's wall time to ``metrics["time_fit_s"]``."""

    def __init__(self, metrics: dict[str, Any]) -> None:
        self.metrics = metrics

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        key = f"time_{stage}_s"
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.metrics[key] = self.metrics.get(key, 0.0) + time.perf_counter() - t0


def execute(
    cfg: DictConfig, run_dir: Path, metrics: dict[str, Any], progress: bool = True
) -> pd.DataFrame:
    """The six stages; fills ``metrics`` as it goes, writes each artifact when it is ready and
    returns the judged rows."""
    inputs = check_config(cfg)
    record_split(cfg, run_dir)
    torch.manual_seed(int(cfg.seed))
    timer = StageTimer(metrics)

    with timer("load"):
        model = steps.load(cfg, inputs.eval)
    threads.set_threads(threads.sized_threads(threads.config_width(model.loaded.hf.config)))
    metrics.update(torch_threads=torch.get_num_threads())
    metrics.update(model_reused=model.loaded.reused, checkpoint=model.loaded.path)
    asked, _ = check_prompts(model.loaded, inputs.eval.section, inputs.questions, run_dir)
    metrics["n_skipped_long"] = len(inputs.questions) - len(asked)
    inputs = inputs._replace(questions=asked)

    with timer("extract"):
        ex = steps.extract(cfg, model, inputs, progress)
    metrics.update(
        extraction_cached=ex.cached,
        cache_key=ex.key,
        acts_key=ex.acts_key,
        n_pairs=len(inputs.pairs),
        **ex.balance,
    )

    with timer("fit"):
        directions = steps.fit(cfg, model, inputs, ex)
        intervention = steps.intervene(cfg, model, ex, directions)
    steering = intervention.steering
    metrics.update(**directions.meta, **intervention.calibration)
    metrics.update(fit_summary(directions.fits))
    artifacts.write_directions(
        run_dir / "directions.safetensors",
        steering.vectors,
        {
            "method": metrics["method"],
            "loss": metrics["loss"],
            "coeff_units": metrics["coeff_units"],
            "raw_norms": {m: f.raw_norm for m, f in directions.fits.items()},
            "scales": steering.scales,
            "fit_info": {m: f.info for m, f in directions.fits.items()},
            "cache_key": ex.key,
            **provenance(plain(cfg.model), model.loaded, model.modules, ex.meta["pairs"]),
        },
    )

    with timer("generate"):
        generations = steps.generate(cfg, model, inputs, ex, steering, progress)
    with timer("judge"):
        judged = steps.judge(cfg, model, inputs, steering, generations)
    artifacts.write_dose_response(run_dir / "dose_response.csv", judged.dose)
    metrics.update(generation_key=judged.key, generations_reused=judged.reused)

    x = str(cfg.regress_x)
    with timer("regress"):
        fit = steps.regress(cfg, model, inputs, steering, judged)
        metrics.update(fit.stats)
        warn_low_pmass(metrics, str(cfg.judge.name))
        artifacts.write_coherence(run_dir / "coherence.csv", fit.cost)
        curve, means, theta = curve_stats(judged.dose, x, steps.budget_coeff(cfg, model, steering))
        metrics.update(curve)
        scenarios = {q.id: q.scenario for q in inputs.questions}
        own = scenario_slopes(judged.dose, scenarios, x)
        summary.write_frames(run_dir, dose_means=means, scenario_slopes=own)
        title = (
            f"{metrics['method']} | {metrics['module']} | {metrics['loss']} | {metrics['model']}"
        )
        plots.plot_dose_response(
            run_dir / "dose_response.png",
            judged.dose,
            title,
            x=x,
            cost=fit.cost,
            means=means,
            tanh=theta,
        )

    with timer("refits"):
        refits = bootstrap_refits(
            cfg, model, inputs, ex, directions.rows, steering, judged.dose, progress
        )
        metrics.update(refits.stats)
        metrics.update(summary.interval(metrics))
        summary.write_frames(run_dir, refits=refits.table)

    if int(cfg.random_null.k) > 0:
        with timer("null"):
            zero = judged.dose.loc[judged.dose["coeff"] == 0.0, DOSE_COLUMNS]
            ref = null_reference(cfg, model, inputs, ex, float(fit.stats["slope"]), zero, progress)
            metrics.update(ref.stats)
            summary.write_frames(run_dir, null_slopes=ref.slopes)
    return judged.dose


def warn_low_pmass(metrics: dict[str, Any], judge: str) -> None:
    """Say when most valid rows put little probability on the answer options (a forced judge
    then reads them anyway, so ``valid_frac`` alone looks fine)."""
    low = metrics.get("low_pmass_frac")
    if isinstance(low, float) and low > 0.5:
        print(
            f"[steerexp] judge={judge}: {low:.0%} of valid rows put < {PMASS_MIN} probability on "
            f"the answer options (median pmass {metrics['pmass_median']:.2g}); their log-ratios "
            "compare options the model hardly considers (see coherence.csv)",
            flush=True,
        )


def run(
    cfg: DictConfig, run_dir: Path | str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run one experiment into ``run_dir`` (Hydra's job dir by default); returns its metrics.

    A run dir whose ``status.json`` already says ``ok`` is skipped (resumed sweeps). On
    failure, ``status.json``/``metrics.json`` record it and the exception propagates.
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
