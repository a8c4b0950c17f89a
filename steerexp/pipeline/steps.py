"""One function per stage: each reads its part of the config and returns the typed value the
next stage takes (:mod:`steerexp.store.results`); :mod:`steerexp.pipeline.stages` calls them in
order. What a method needs (gradients, pulled-back rows) is read from its registry entry
(:class:`~steerexp.stages.fit.methods.Method`), never from its name."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from steerexp import cache_dir
from steerexp.config.errors import SteerexpError
from steerexp.data.answers import make_answer_spec
from steerexp.data.pairs import load_neutral_prompts
from steerexp.data.questionfiles import EvalSpec
from steerexp.models.loading import load_model
from steerexp.models.modules import resolve_modules
from steerexp.models.steering import Steering
from steerexp.pipeline.checks import RunInputs, plain
from steerexp.pipeline.state import Model, StageTimer
from steerexp.stages.extract.activations import extract as extract_rows
from steerexp.stages.extract.vjp import vjp_rows
from steerexp.stages.fit.methods import METHODS, fit_from_config
from steerexp.stages.generate.rows import generate_rows, grid, make_rescore
from steerexp.stages.intervene.scales import base_scales, calibrate_kl, neutral_prompt_ids
from steerexp.stages.judge.judges import dose_frame, judge_rows
from steerexp.stages.regress import coherence
from steerexp.stages.regress.ols import regress as fit_line
from steerexp.store import cache, rowcache
from steerexp.store.columns import DOSE_COLUMNS
from steerexp.store.results import (
    Directions,
    Extraction,
    Intervention,
    Judged,
    Regression,
)

#: Version of the judged-rows caches (generations and nulls).
# 2: stop_reason column; rows stop at end-of-turn tokens and the answer regex
# 3: text fields quoted (a completion's bare \r split rows of version-2 files)
# 4: n_tokens column (generated tokens per row)
ROWS_VERSION = 4


def cache_root(cfg: DictConfig) -> Path:
    """Root of the run's caches: extractions, and under it ``generations/`` and ``nulls/``."""
    return Path(cfg.cache_dir) if cfg.cache_dir else cache_dir() / "extractions"


def load(cfg: DictConfig, ev: EvalSpec) -> Model:
    """Load (or reuse) the model, resolve the target modules, spell the answers."""
    loaded = load_model(plain(cfg.model))
    spec = make_answer_spec(loaded.tokenizer, ev.answer_regex, ev.answers, ev.answer_prefix)
    return Model(loaded, resolve_modules(loaded, cfg.module), spec)


def extract(cfg: DictConfig, model: Model, inputs: RunInputs, progress: bool) -> Extraction:
    """Stage 1: activations, and loss gradients when the method uses them."""
    return extract_rows(
        model.loaded,
        cfg.model,
        model.modules,
        cfg.loss,
        inputs.pairs,
        int(cfg.extract.batch_size),
        cache_root(cfg),
        progress=progress,
        grad_tokens=str(cfg.extract.grad_tokens),
        need_grads=METHODS.get(str(cfg.method.kind)).uses_grads,
    )


def fit(cfg: DictConfig, model: Model, inputs: RunInputs, ex: Extraction) -> Directions:
    """Stage 2: one unit direction per module, fit on the loss gradients or, for a method that
    pulls back rows (``vjp_steer``), on the read-layer contrast pulled back to each module."""
    method = METHODS.get(str(cfg.method.kind))
    if method.uses_grads:
        for m in model.modules:
            if not bool(ex.grads[m].any()):
                raise SteerexpError(
                    f"method {cfg.method.name!r} needs loss gradients, but they are all zero at {m!r} "
                    f"(loss {cfg.loss.name!r} at loss.layer={cfg.loss.layer} does not depend on it; "
                    "use modules before the loss layer or another loss)"
                )
    rows, meta = ex.grads, {}
    if method.pulls_back_rows:
        read_layer, tokens = method.pullback(cfg.method, int(cfg.loss.layer))
        rows, meta = vjp_rows(
            model.loaded,
            cfg.model,
            model.modules,
            inputs.pairs,
            read_layer,
            tokens,
            int(cfg.extract.batch_size),
            cache_root(cfg),
        )
    fits = {
        m: fit_from_config(
            cfg.method, ex.acts[m], rows.get(m), ex.loss_grad_norms, seed=int(cfg.seed)
        )
        for m in model.modules
    }
    return Directions(fits, meta, dict(rows))


def kl_prompts(cfg: DictConfig, model: Model) -> list[list[int]]:
    """The held-out neutral prompts of ``kl.prompts`` (never the eval questions), tokenised."""
    return neutral_prompt_ids(model.loaded, load_neutral_prompts(str(cfg.kl.prompts)))


def scale(cfg: DictConfig, model: Model, steering: Steering) -> Intervention:
    """``coeff_units=kl``: rescale so one unit reaches the target KL; otherwise as it is."""
    if cfg.coeff_units != "kl":
        return Intervention(steering)
    kl = calibrate_kl(model.loaded, kl_prompts(cfg, model), steering)
    return Intervention(steering.scaled(kl["c_star"]), kl)


def intervene(cfg: DictConfig, model: Model, ex: Extraction, dirs: Directions) -> Intervention:
    """Stage 3: the size of one coefficient unit per module (norm, raw or iso-KL)."""
    scales = base_scales(str(cfg.coeff_units), ex, model.modules)
    return scale(cfg, model, Steering(dirs.vectors, scales))


def group_payload(cfg: DictConfig, inputs: RunInputs, acts_key: str) -> dict[str, Any]:
    """What generations depend on besides the direction: model and modules (via the loss-free
    extraction key, which also fixes the norm scales), the resolved eval (not its chunking),
    judge, units, grid and sampling seed (not how rows are chunked or spread over processes)."""
    resolved = plain(inputs.eval.section)
    ev = {k: v for k, v in resolved.items() if k not in ("max_batch_size", "workers")}
    return {
        "version": ROWS_VERSION,
        "acts_key": acts_key,
        "eval": ev,
        "judge": plain(cfg.judge),
        "coeff_units": str(cfg.coeff_units),
        "coeffs": inputs.coeffs,
        "seed": int(cfg.seed),
    }


def steering_id(steering: Steering) -> dict[str, Any]:
    """Content hash of the directions and their scales."""
    digest = {
        m: hashlib.sha256(v.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
        for m, v in sorted(steering.vectors.items())
    }
    return {
        "directions": digest,
        "scales": {m: float(s) for m, s in sorted(steering.scales.items())},
    }


def generate(
    cfg: DictConfig,
    model: Model,
    inputs: RunInputs,
    ex: Extraction,
    steering: Steering,
    progress: bool,
    timer: StageTimer,
) -> Judged:
    """Stages 4 and 5: every (question, coefficient, repeat) row generated and judged (the judge
    timed apart), or the judged rows of this very generation (same group, directions and
    scales) from the cache, which is read and written here only (:func:`rowcache.cached_rows`)."""
    key = cache.hash_key({"run": group_payload(cfg, inputs, ex.acts_key), **steering_id(steering)})

    def build() -> tuple[pd.DataFrame, dict[str, Any]]:
        rows = generate_rows(
            model.loaded,
            inputs.eval.section,
            grid(inputs.questions, inputs.coeffs, int(cfg.eval.repeats)),
            steering,
            model.spec,
            int(cfg.seed),
            progress,
        )
        with timer("judge"):
            rescore = make_rescore(
                model.loaded, inputs.eval.section, inputs.questions, steering, model.spec
            )
            dose = dose_frame(rows, judge_rows(str(cfg.judge.name), rows, model.spec, rescore))
        return dose, {"key": key, "method": str(cfg.method.name)}

    entry = cache_root(cfg) / "generations" / key
    dose, _, reused, _ = rowcache.cached_rows(entry, build)
    return Judged(with_scenarios(dose[DOSE_COLUMNS], inputs), key, reused=reused)


def with_scenarios(dose: pd.DataFrame, inputs: RunInputs) -> pd.DataFrame:
    """The judged rows with each question's ``scenario`` after ``question_id`` (not cached: it
    is a property of the question, and the eval config is part of the cache key)."""
    scenarios = {q.id: q.scenario for q in inputs.questions}
    out = dose.copy()
    out.insert(1, "scenario", out["question_id"].astype(str).map(scenarios))
    return out


def budget_coeff(cfg: DictConfig, model: Model, steering: Steering) -> float:
    """The coefficient, in the run's units, where the p95 token KL on the neutral prompts reaches
    1 nat (:func:`calibrate_kl`); 1 in ``coeff_units=kl`` (the units are that calibration); inf
    when steering never reaches it (then the budget is the grid's edge)."""
    if cfg.coeff_units == "kl":
        return 1.0
    try:
        return float(calibrate_kl(model.loaded, kl_prompts(cfg, model), steering)["c_star"])
    except RuntimeError:
        return math.inf


def regress(
    cfg: DictConfig, model: Model, inputs: RunInputs, steering: Steering, judged: Judged
) -> Regression:
    """Stage 6: the dose-response fit, and the coherence cost of each coefficient."""
    dose = judged.dose
    stats = fit_line(
        dose["coeff"],
        dose["log_ratio"],
        dose["valid"],
        x=str(cfg.regress_x),
        groups=dose["question_id"],
        clusters=dose["scenario"],
    )
    kl = coherence.mean_token_kl(model.loaded, kl_prompts(cfg, model), steering, inputs.coeffs)
    cost = coherence.cost_table(kl, inputs.coeffs, dose, dose["n_tokens"])
    summary = {**coherence.summary(cost), **coherence.pmass_summary(dose)}
    return Regression({**stats, **summary}, cost)
