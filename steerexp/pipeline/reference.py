"""The random-direction null and the prompting reference of a ranking group (SPEC 4.8).

Any perturbation of the residual stream moves the log-ratio a little, so "slope != 0" proves
nothing; the question is whether a direction beats random directions of the same size in the
same place. Per group (model, modules, loss-free extraction, eval, judge, units, grid; not the
run's seed, so seed sweeps share it) the null is K seeded random unit directions (the ``random``
method at seeds ``random_null.seed .. random_null.seed + K - 1``, never sign-fixed), generated
on the same questions, repeats and coefficients; its rows are sampled per row from
``random_null.seed``, so the K directions share common random numbers. The same single batched
generation also holds the prompting reference: the unsteered model with the dataset's positive
vs negative persona as its system turn (before the eval's own system text, if any), at
coefficient 0 -- the way the organism's corpus and chat models take a persona.

Both are cached as judged rows (``dose.csv``) under ``<cache>/nulls/<key>/`` and reused by
every method and later sweep of the group; slopes are recomputed under the run's ``regress_x``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from scipy import stats

from steerexp.core import cache, rowcache
from steerexp.core.answers import AnswerSpec
from steerexp.core.columns import DOSE_COLUMNS
from steerexp.core.config import typed
from steerexp.core.data import Question
from steerexp.core.results import Extraction
from steerexp.core.steering import Steering
from steerexp.core.transforms import transform_x
from steerexp.pipeline import steps
from steerexp.pipeline.checks import Inputs, plain
from steerexp.pipeline.steps import Model
from steerexp.stages.fit.methods import fit_from_config
from steerexp.stages.generate.rows import RowSpec, generate_rows, grid, make_rescore, with_system
from steerexp.stages.intervene.scales import base_scales
from steerexp.stages.judge.judges import dose_frame, judge_rows
from steerexp.stages.regress.ols import regress

PERSONAS = ("positive", "negative")
NULL_COLUMNS = [*DOSE_COLUMNS, "direction", "persona"]


def null_directions(
    modules: Sequence[str], acts: Mapping[str, Any], k: int, seed: int
) -> list[dict[str, Any]]:
    """K direction sets: the ``random`` method's unit vectors at seeds ``seed .. seed + k - 1``."""
    cfg = {"name": "random", "kind": "random"}
    return [
        {m: fit_from_config(cfg, acts[m], seed=seed + i).vector for m in modules}
        for i in range(int(k))
    ]


def persona_texts(dataset_cfg: Mapping[str, Any]) -> dict[str, str]:
    """The dataset's persona template filled with its positive and negative word; empty (no
    prompting reference, its columns NaN) for datasets without one (explicit pairs, CAA files)."""
    dataset_cfg = typed("dataset", dataset_cfg)
    template = dataset_cfg.template
    words = [dataset_cfg[p] for p in PERSONAS]
    if not template or "{persona}" not in str(template) or not all(words):
        return {}
    return {p: str(template).format(persona=str(w)) for p, w in zip(PERSONAS, words, strict=True)}


def generate_reference(
    loaded: Any,
    eval_cfg: Mapping[str, Any],
    questions: Sequence[Question],
    coeffs: Sequence[float],
    steerings: Sequence[Steering],
    personas: Mapping[str, str],
    spec: AnswerSpec,
    judge: str,
    seed: int,
    progress: bool = True,
) -> pd.DataFrame:
    """One batched generation over every null direction's grid and both persona prompts; judged."""
    repeats = int(eval_cfg["repeats"])
    specs: list[RowSpec] = []
    for k in range(len(steerings)):
        specs += grid(questions, coeffs, repeats, direction=k)
    for text in personas.values():
        specs += [RowSpec(q, 0.0, r, 0, text) for q in questions for r in range(repeats)]
    rows = generate_rows(loaded, eval_cfg, specs, steerings, spec, seed, progress)
    by_text = {text: p for p, text in personas.items()}
    frames = []
    for k in range(len(steerings)):
        part = [
            (s, r)
            for s, r in zip(specs, rows, strict=True)
            if s.system is None and s.direction == k
        ]
        rescore = make_rescore(loaded, eval_cfg, questions, steerings[k], spec)
        gen = [r for _, r in part]
        frames.append(
            dose_frame(gen, judge_rows(judge, gen, spec, rescore)).assign(direction=k, persona="")
        )
    for text, name in by_text.items():
        gen = [r for s, r in zip(specs, rows, strict=True) if s.system == text]
        rescore = make_rescore(loaded, with_system(eval_cfg, text), questions, None, spec)
        frames.append(
            dose_frame(gen, judge_rows(judge, gen, spec, rescore)).assign(
                direction=-1, persona=name
            )
        )
    return pd.concat(frames, ignore_index=True)[NULL_COLUMNS]


def null_slopes(dose: pd.DataFrame, x: str = "symlog") -> np.ndarray:
    """The OLS slope of each null direction under the regressor transform ``x``."""
    null = dose[dose["direction"] >= 0]
    return np.array(
        [
            float(regress(part["coeff"], part["log_ratio"], part["valid"], x=x)["slope"])
            for _, part in null.groupby("direction", sort=True)
        ]
    )


def summary(slopes: np.ndarray) -> dict[str, float | int]:
    """The null's spread: K, mean and sd of its slopes, median and 95th percentile of |slope|."""
    s = slopes[np.isfinite(slopes)]
    return {
        "null_k": len(s),
        "null_slope_mean": float(s.mean()) if len(s) else math.nan,
        "null_slope_sd": float(s.std(ddof=1)) if len(s) > 1 else math.nan,
        "null_abs_median": float(np.median(np.abs(s))) if len(s) else math.nan,
        "null_abs_p95": float(np.percentile(np.abs(s), 95)) if len(s) else math.nan,
    }


def compare(slope: float, slopes: np.ndarray) -> dict[str, float]:
    """A row's slope against the null.

    ``vs_random`` = |slope| / median |null slope|; ``p_random`` = two-sided prediction p-value,
    ``t = (slope − mean₀)/(sd₀·√(1 + 1/K))`` with K − 1 df; ``p_random_rank`` = (1 + #null
    |slopes| ≥ |slope|)/(K + 1), the empirical p (never below 1/(K + 1))."""
    s = slopes[np.isfinite(slopes)]
    k = len(s)
    out = {"vs_random": math.nan, "p_random": math.nan, "p_random_rank": math.nan}
    if not math.isfinite(slope) or k < 2:
        return out
    med = float(np.median(np.abs(s)))
    sd = float(s.std(ddof=1))
    out["vs_random"] = abs(slope) / med if med > 0 else math.inf
    if sd > 0:
        t = (slope - float(s.mean())) / (sd * math.sqrt(1 + 1 / k))
        out["p_random"] = float(2 * stats.t.sf(abs(t), k - 1))
    out["p_random_rank"] = (1 + int((np.abs(s) >= abs(slope)).sum())) / (k + 1)
    return out


def prompt_reference(
    dose: pd.DataFrame, coeffs: Sequence[float], slope: float, x: str
) -> dict[str, float]:
    """Prompting's log-ratio shift (mean valid y, positive minus negative persona) beside the
    run's fitted shift over the grid: slope × (x(max c) − x(min c))."""
    ys = {}
    for p in PERSONAS:
        part = dose[(dose["persona"] == p) & dose["valid"].astype(bool)]
        y = pd.to_numeric(part["log_ratio"], errors="coerce").dropna()
        ys[p] = float(y.mean()) if len(y) else math.nan
    span = transform_x(np.array([max(coeffs), min(coeffs)]), x)
    return {
        "prompt_shift": ys["positive"] - ys["negative"],
        "prompt_y_positive": ys["positive"],
        "prompt_y_negative": ys["negative"],
        "fitted_shift": float(slope * (span[0] - span[1])) if math.isfinite(slope) else math.nan,
    }


def null_reference(
    cfg: DictConfig, model: Model, inputs: Inputs, ex: Extraction, slope: float, progress: bool
) -> dict[str, Any]:
    """This run against its group's random null, and the prompting reference (cached, SPEC 4.8)."""
    k, seed0 = int(cfg.random_null.k), int(cfg.random_null.seed)
    personas = persona_texts(plain(cfg.dataset))
    # The run's own seed is not part of the group: a seed sweep shares one null, which is
    # sampled with its own seed (sampling noise in a slope is small next to the null's spread).
    group = {
        k_: v
        for k_, v in steps.group_payload(cfg, ex.acts_key, inputs.coeffs).items()
        if k_ != "seed"
    }
    payload = {**group, "null": {"k": k, "seed": seed0}, "personas": personas}
    key = cache.hash_key(payload)

    def build() -> tuple[pd.DataFrame, dict[str, Any]]:
        base = base_scales(str(cfg.coeff_units), ex, model.modules)
        steerings = [
            steps.scale(cfg, model, Steering(vectors, base)).steering
            for vectors in null_directions(model.modules, ex.acts, k, seed0)
        ]
        dose = generate_reference(
            model.loaded,
            cfg.eval,
            inputs.questions,
            inputs.coeffs,
            steerings,
            personas,
            model.spec,
            str(cfg.judge.name),
            seed0,
            progress,
        )
        return dose, {"key": key, "payload": payload}

    dose, meta, cached, _ = rowcache.cached_rows(steps.cache_root(cfg) / "nulls" / key, build)
    slopes = null_slopes(dose, str(cfg.regress_x))
    return {
        "null_key": key,
        "null_cached": cached,
        "null_build_s": meta.get("build_s"),
        **summary(slopes),
        **compare(slope, slopes),
        **prompt_reference(dose, inputs.coeffs, slope, str(cfg.regress_x)),
    }
