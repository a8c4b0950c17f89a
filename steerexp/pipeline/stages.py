"""The run's stages as registered objects, in the order :data:`PIPELINE` runs them.

A :class:`Stage` has a name (its timer: ``time_<name>_s``), the :class:`RunState` fields it
``needs`` and the ones it ``gives``, and ``when`` it runs. Each fills its metrics and writes its
artifacts as soon as it is done, so a later failure loses nothing already computed. ``generate``
is generation and judging as one cached unit (``time_judge_s`` is its judging part).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from steerexp.config.registry import Registry
from steerexp.data.prompts import check_prompts
from steerexp.directions import provenance
from steerexp.models import threads
from steerexp.pipeline import steps, summary
from steerexp.pipeline.checks import plain
from steerexp.pipeline.reference import null_reference, scenario_slopes
from steerexp.pipeline.refits import bootstrap_refits
from steerexp.pipeline.state import RunState, need
from steerexp.render import plots
from steerexp.stages.fit.methods import METHODS, fit_summary
from steerexp.stages.regress.coherence import PMASS_MIN
from steerexp.stages.regress.dose import curve_stats
from steerexp.store import artifacts


def always(_cfg: DictConfig) -> bool:
    """A stage every run has."""
    return True


@dataclass(frozen=True)
class Stage:
    """``run(state)`` reads the ``needs`` fields of the state and sets its ``gives`` fields."""

    name: str
    run: Callable[[RunState], None]
    needs: tuple[str, ...] = ()
    gives: tuple[str, ...] = ()
    when: Callable[[DictConfig], bool] = always


STAGES: Registry[Stage] = Registry("stage")


def stage(
    name: str,
    needs: tuple[str, ...] = (),
    gives: tuple[str, ...] = (),
    when: Callable[[DictConfig], bool] = always,
) -> Callable[[Callable[[RunState], None]], Stage]:
    """Decorator: register ``fn(state)`` as the stage ``name``."""

    def deco(fn: Callable[[RunState], None]) -> Stage:
        return STAGES.register(name)(Stage(name, fn, needs, gives, when))

    return deco


@stage("load", gives=("model",))
def load(state: RunState) -> None:
    """Load (or reuse) the model; size the torch threads to it; drop questions too long for it."""
    cfg, metrics = state.cfg, state.metrics
    state.model = model = steps.load(cfg, state.inputs.eval)
    threads.set_threads(threads.sized_threads(threads.config_width(model.loaded.hf.config)))
    metrics.update(torch_threads=torch.get_num_threads())
    metrics.update(model_reused=model.loaded.reused, checkpoint=model.loaded.path)
    questions = state.inputs.questions
    asked, _ = check_prompts(model.loaded, state.inputs.eval.section, questions, state.run_dir)
    metrics["n_skipped_long"] = len(questions) - len(asked)
    state.inputs = state.inputs._replace(questions=asked)


@stage("extract", needs=("model",), gives=("extraction",))
def extract(state: RunState) -> None:
    """Activations, and loss gradients when the method uses them (cached)."""
    state.extraction = ex = steps.extract(
        state.cfg, need(state, "model"), state.inputs, state.progress
    )
    state.metrics.update(
        extraction_cached=ex.cached,
        cache_key=ex.key,
        acts_key=ex.acts_key,
        n_pairs=len(state.inputs.pairs),
        **ex.balance,
    )


@stage("fit", needs=("model", "extraction"), gives=("directions",))
def fit(state: RunState) -> None:
    """One unit direction per module, signed as its method says."""
    state.directions = dirs = steps.fit(
        state.cfg, need(state, "model"), state.inputs, need(state, "extraction")
    )
    state.metrics.update(**dirs.meta)
    state.metrics.update(fit_summary(dirs.fits))


@stage("intervene", needs=("model", "extraction", "directions"), gives=("intervention",))
def intervene(state: RunState) -> None:
    """The size of one coefficient unit per module; writes ``directions.safetensors``."""
    model, ex, dirs = need(state, "model"), need(state, "extraction"), need(state, "directions")
    state.intervention = intervention = steps.intervene(state.cfg, model, ex, dirs)
    metrics, steering = state.metrics, intervention.steering
    metrics.update(**intervention.calibration)
    artifacts.write_directions(
        state.run_dir / "directions.safetensors",
        steering.vectors,
        {
            "method": metrics["method"],
            "loss": metrics["loss"],
            "coeff_units": metrics["coeff_units"],
            "raw_norms": {m: f.raw_norm for m, f in dirs.fits.items()},
            "scales": steering.scales,
            "fit_info": {m: f.info for m, f in dirs.fits.items()},
            "cache_key": ex.key,
            **provenance(plain(state.cfg.model), model.loaded, model.modules, ex.meta["pairs"]),
        },
    )


@stage("generate", needs=("model", "extraction", "intervention"), gives=("judged",))
def generate(state: RunState) -> None:
    """Every (question, coefficient, repeat) row, generated and judged (or reused from the
    generation cache); writes ``dose_response.csv``."""
    judged = steps.generate(
        state.cfg,
        need(state, "model"),
        state.inputs,
        need(state, "extraction"),
        need(state, "intervention").steering,
        state.progress,
        state.timer,
    )
    state.judged = judged
    if judged.reused:
        state.metrics["time_judge_s"] = 0.0  # nothing judged: the rows were cached judged
    artifacts.write_dose_response(state.run_dir / "dose_response.csv", judged.dose)
    state.metrics.update(generation_key=judged.key, generations_reused=judged.reused)


@stage("regress", needs=("model", "intervention", "judged"), gives=("regression",))
def regress(state: RunState) -> None:
    """The dose-response fit, coherence cost, curve and per-scenario slopes, and the plot."""
    cfg, metrics, run_dir = state.cfg, state.metrics, state.run_dir
    model, steering = need(state, "model"), need(state, "intervention").steering
    dose = need(state, "judged").dose
    x = str(cfg.regress_x)
    state.regression = fit = steps.regress(
        cfg, model, state.inputs, steering, need(state, "judged")
    )
    metrics.update(fit.stats)
    warn_low_pmass(metrics, str(cfg.judge.name))
    artifacts.write_coherence(run_dir / "coherence.csv", fit.cost)
    curve, means, theta = curve_stats(dose, x, steps.budget_coeff(cfg, model, steering))
    metrics.update(curve)
    scenarios = {q.id: q.scenario for q in state.inputs.questions}
    own = scenario_slopes(dose, scenarios, x)
    summary.write_frames(run_dir, dose_means=means, scenario_slopes=own)
    title = f"{metrics['method']} | {metrics['module']} | {metrics['loss']} | {metrics['model']}"
    plots.plot_dose_response(
        run_dir / "dose_response.png", dose, title, x=x, cost=fit.cost, means=means, tanh=theta
    )


@stage("refits", needs=("model", "extraction", "directions", "intervention", "judged"))
def refits(state: RunState) -> None:
    """Bootstrap refits of the direction (none for a method that does not use the pairs)."""
    result = bootstrap_refits(state)
    state.metrics.update(result.stats)
    state.metrics.update(summary.interval(state.metrics))
    summary.write_frames(state.run_dir, refits=result.table)


def has_null(cfg: DictConfig) -> bool:
    """``random_null.k`` > 0: the run is compared with its group's random null."""
    return int(cfg.random_null.k) > 0


@stage("null", needs=("model", "extraction", "judged", "regression"), when=has_null)
def null(state: RunState) -> None:
    """This run against its group's random null, and the prompting reference (cached)."""
    ref = null_reference(state)
    state.metrics.update(ref.stats)
    cfg = state.cfg
    if METHODS.get(str(cfg.method.kind)).redrawn(cfg.method):
        # a new seed draws a new direction: the direction's spread is the null's
        state.metrics.update(summary.interval(state.metrics, ref.stats["null_slope_sd"]))
    summary.write_frames(state.run_dir, null_slopes=ref.slopes)


#: The stages of a run, in order.
PIPELINE = ("load", "extract", "fit", "intervene", "generate", "regress", "refits", "null")


def warn_low_pmass(metrics: dict[str, object], judge: str) -> None:
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
