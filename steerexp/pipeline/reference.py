"""The random-direction null and the prompting reference of a ranking group (docs/statistics.md).

Any perturbation of the residual stream moves the log-ratio a little, so "slope != 0" proves
nothing; the question is whether a direction beats random directions of the same size in the
same place. Per group (model, modules, loss-free extraction, eval, judge, units, grid and the
run's sampling seed) the null is K seeded random unit directions (the ``random`` method at seeds
``random_null.seed .. random_null.seed + K - 1``, never sign-fixed), generated on the same
questions, repeats and coefficients and sampled with the run's own ``seed``: every row draws
the same uniforms as the run's row of the same (question, repeat, coefficient), so the run and
its K null directions share common random numbers and differ only in the direction. That makes a
random direction run at this seed exchangeable with the null's (the rank p below is exact), and
keeps sampling noise out of the comparison: with one shared noise draw for the null and another
for the run, a module where steering barely moves the answers (the organism's ``o_proj``) had
a null spread of 0.14 against a run's noise of 0.8, and called ``random`` itself "beyond all 64".
A seed sweep therefore builds one null per seed. The same single batched
generation also holds the prompting reference: the unsteered model with the dataset's positive
vs negative persona as its system turn (before the eval's own system text, if any), at
coefficient 0 -- the way the organism's corpus and chat models take a persona.

Both are cached as judged rows (``dose.csv``) under ``<cache>/nulls/<key>/`` and reused by
every method and later sweep of the group; slopes are recomputed under the run's ``regress_x``.
The key does not hold K: direction ``i`` is always the ``random`` method at seed
``random_null.seed + i``, so a cached K = 16 null is the first 16 directions of K = 64 and is
extended (only the missing directions are generated, at their nonzero coefficients: a
coefficient-0 row is the unsteered model whatever the direction, so it is copied) rather than
recomputed.

The null is symmetric by construction (a random unit direction and its negative are equally
likely), so its centre is fixed at 0 and a row is compared on ``|slope|``: the primary p is the
rank p ``p_null = (1 + #{null |slope| >= |slope|}) / (K + 1)``, exact under the null without
any distributional assumption and never below ``1 / (K + 1)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from steerexp.data.answers import AnswerSpec
from steerexp.data.pairs import Question
from steerexp.data.transforms import transform_x
from steerexp.models.steering import Steering
from steerexp.pipeline import steps
from steerexp.pipeline.state import RunState, need
from steerexp.stages.fit.methods import NULL_KIND, fit_from_config, method_config
from steerexp.stages.generate.rows import RowSpec, generate_rows, grid, make_rescore, with_system
from steerexp.stages.intervene.scales import base_scales
from steerexp.stages.judge.judges import dose_frame, judge_rows
from steerexp.store import cache, rowcache
from steerexp.store.columns import DOSE_COLUMNS

PERSONAS = ("positive", "negative")
NULL_COLUMNS = [*DOSE_COLUMNS, "direction", "persona"]


def null_directions(
    modules: Sequence[str], acts: Mapping[str, Any], k: int, seed: int, start: int = 0
) -> list[dict[str, Any]]:
    """Direction sets ``start .. k - 1``: the null method's (``random``) unit vectors at seeds
    ``seed + start .. seed + k - 1``."""
    cfg = method_config({"name": NULL_KIND, "kind": NULL_KIND})
    return [
        {m: fit_from_config(cfg, acts[m], seed=seed + i).vector for m in modules}
        for i in range(int(start), int(k))
    ]


def persona_texts(dataset_cfg: Mapping[str, Any]) -> dict[str, str]:
    """The dataset's persona template filled with its positive and negative word; empty (no
    prompting reference, its columns NaN) for datasets without one (explicit pairs, CAA files)."""
    template = dataset_cfg["template"]
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


def reference_rows(
    state: RunState,
    coeffs: Sequence[float],
    steerings: Sequence[Steering],
    personas: Mapping[str, str],
) -> pd.DataFrame:
    """:func:`generate_reference` for this run: its model, eval, questions, judge, sampling seed."""
    cfg, model = state.cfg, need(state, "model")
    return generate_reference(
        model.loaded,
        state.inputs.eval.section,
        state.inputs.questions,
        coeffs,
        steerings,
        personas,
        model.spec,
        str(cfg.judge.name),
        int(cfg.seed),
        state.progress,
    )


def ols_slope(x: np.ndarray, y: np.ndarray) -> float:
    """The OLS slope of ``y`` on ``x`` (NaN with fewer than 3 points or no spread in x)."""
    if len(x) < 3:
        return math.nan
    xc = x - x.mean()
    sxx = float(xc @ xc)
    return float(xc @ (y - y.mean())) / sxx if sxx > 0 else math.nan


def slope_table(dose: pd.DataFrame, by: Sequence[str], x: str = "symlog") -> pd.DataFrame:
    """The OLS slope of the valid rows of each ``by`` group under the regressor transform ``x``,
    with its number of valid rows ``n`` (columns ``*by, slope, n``)."""
    y = pd.to_numeric(dose["log_ratio"], errors="coerce").to_numpy(dtype=np.float64)
    xt = transform_x(dose["coeff"].to_numpy(dtype=np.float64), x)
    ok = dose["valid"].astype(bool).to_numpy() & np.isfinite(y) & np.isfinite(xt)
    frame = dose.loc[ok, list(by)].assign(_x=xt[ok], _y=y[ok])
    out = [
        (
            *(key if isinstance(key, tuple) else (key,)),
            ols_slope(g["_x"].to_numpy(), g["_y"].to_numpy()),
            len(g),
        )
        for key, g in frame.groupby(list(by), sort=True)
    ]
    return pd.DataFrame(out, columns=[*by, "slope", "n"])


def null_slopes(dose: pd.DataFrame, x: str = "symlog") -> np.ndarray:
    """The OLS slope of each null direction under the regressor transform ``x``."""
    null = dose[dose["direction"] >= 0]
    table = slope_table(null, ["direction"], x).set_index("direction")["slope"]
    return table.reindex(sorted(null["direction"].unique())).to_numpy(dtype=np.float64)


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


def compare(slope: float, slopes: np.ndarray) -> dict[str, Any]:
    """A row's slope against the null (centre fixed at 0: absolute slopes are compared).

    ``p_null`` = (1 + #null |slopes| ≥ |slope|)/(K + 1), the exact rank p (``p_random_rank`` is
    the same number under its old name); ``null_beyond_all``: |slope| exceeds every null |slope|
    (then ``p_null`` = 1/(K + 1), its floor). ``vs_random`` = |slope| / median |null slope|.
    ``p_random`` is the older parametric figure: a two-sided prediction p-value,
    ``t = (slope − mean₀)/(sd₀·√(1 + 1/K))`` with K − 1 df, which extrapolates past the null's
    range (kept for comparison; rank on ``p_null``)."""
    s = slopes[np.isfinite(slopes)]
    k = len(s)
    out: dict[str, Any] = {
        "vs_random": math.nan,
        "p_random": math.nan,
        "p_random_rank": math.nan,
        "p_null": math.nan,
        "null_beyond_all": False,
    }
    if not math.isfinite(slope) or k < 2:
        return out
    med = float(np.median(np.abs(s)))
    sd = float(s.std(ddof=1))
    out["vs_random"] = abs(slope) / med if med > 0 else math.inf
    if sd > 0:
        t = (slope - float(s.mean())) / (sd * math.sqrt(1 + 1 / k))
        out["p_random"] = float(2 * stats.t.sf(abs(t), k - 1))
    out["p_null"] = out["p_random_rank"] = (1 + int((np.abs(s) >= abs(slope)).sum())) / (k + 1)
    out["null_beyond_all"] = bool(abs(slope) > float(np.abs(s).max()))
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


def nested_rows(
    entry: Path,
    k: int,
    coeffs: Sequence[float],
    build: Callable[[int, Sequence[float], bool], pd.DataFrame],
    zero: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, dict[str, Any], bool]:
    """The cached rows of at least ``k`` directions at ``entry`` (its first ``k``), else built.

    ``build(start, coeffs, personas)`` generates directions ``start .. k - 1`` (indexed from
    ``start``) at ``coeffs``, with the persona rows when ``personas``. A coefficient-0 row is the
    unsteered model whatever the direction, so it is generated once and copied: from ``zero``
    (rows of one direction at c = 0, e.g. the run's own, sampled with the same seed) when given,
    else from direction 0. A cached entry of fewer directions is extended (only the missing
    directions' nonzero coefficients are generated) and rewritten. Returns (rows, meta, whether
    nothing was generated)."""
    t0 = time.perf_counter()
    hit = rowcache.load_rows(entry)
    have = 0 if hit is None else int(hit[0]["direction"].max()) + 1
    if hit is not None and have >= k:
        dose, meta = hit
        return dose[dose["direction"] < k].reset_index(drop=True), meta, True
    old, meta = hit if hit is not None else (None, {})
    if old is None and zero is None:
        dose = build(0, coeffs, True)
    else:
        new = build(have, [c for c in coeffs if c != 0.0], old is None)
        if zero is None:
            zero = old[(old["direction"] == 0) & (old["coeff"] == 0.0)]
        zero = zero.assign(persona="", direction=0)[NULL_COLUMNS]
        copies = [zero.assign(direction=d) for d in range(have, k)]
        dose = pd.concat([f for f in (old, new, *copies) if f is not None], ignore_index=True)
    dose = dose.sort_values(["direction", "persona"], kind="stable").reset_index(drop=True)
    meta = {
        **meta,
        "k": k,
        "built_k": [*meta.get("built_k", []), [have, k]],
        "build_s": float(meta.get("build_s") or 0.0) + time.perf_counter() - t0,
    }
    rowcache.save_rows(entry, dose[NULL_COLUMNS], meta)
    return dose[NULL_COLUMNS], meta, False


def scenario_slopes(
    dose: pd.DataFrame, scenarios: Mapping[str, str], x: str, key: str | None = None
) -> pd.DataFrame:
    """Per-scenario OLS slopes (``scenario, slope, n``), and the overall one as scenario ``*``;
    with ``key``, per value of that column too (e.g. each null direction)."""
    rows = dose.assign(scenario=dose["question_id"].astype(str).map(scenarios))
    by = [key] if key else []
    parts = [slope_table(rows, [*by, "scenario"], x)]
    overall = slope_table(rows.assign(scenario="*"), [*by, "scenario"], x)
    return pd.concat([overall, *parts], ignore_index=True)


@dataclass
class NullReference:
    """The run against its null: the metrics and each null direction's per-scenario slopes."""

    stats: dict[str, Any]
    slopes: pd.DataFrame


def null_reference(state: RunState) -> NullReference:
    """This run against its group's random null, and the prompting reference (cached;
    docs/statistics.md). The run's own coefficient-0 rows are every null direction's (the
    unsteered model, sampled with the same seed), so they are copied, not generated."""
    cfg, inputs = state.cfg, state.inputs
    model, ex = need(state, "model"), need(state, "extraction")
    run_dose = need(state, "judged").dose
    zero = run_dose.loc[run_dose["coeff"] == 0.0, DOSE_COLUMNS]
    slope = float(need(state, "regression").stats["slope"])
    k, seed0 = int(cfg.random_null.k), int(cfg.random_null.seed)
    personas = persona_texts(cfg.dataset)
    # The group holds the run's sampling seed (common random numbers with the run, see the
    # module docstring) but not K: a larger K extends the cached null (nested_rows).
    group = steps.group_payload(cfg, inputs, ex.acts_key)
    payload = {**group, "null": {"seed": seed0, "nested": True}, "personas": personas}
    key = cache.hash_key(payload)
    base = base_scales(str(cfg.coeff_units), ex, model.modules)

    def build(start: int, coeffs: Sequence[float], with_personas: bool) -> pd.DataFrame:
        steerings = [
            steps.scale(cfg, model, Steering(vectors, base)).steering
            for vectors in null_directions(model.modules, ex.acts, k, seed0, start)
        ]
        dose = reference_rows(state, coeffs, steerings, personas if with_personas else {})
        return dose.assign(
            direction=np.where(dose["direction"] >= 0, dose["direction"] + start, -1)
        )

    entry = steps.cache_root(cfg) / "nulls" / key
    dose, meta, cached = nested_rows(entry, k, inputs.coeffs, build, zero=zero)
    x = str(cfg.regress_x)
    scenarios = {q.id: q.scenario for q in inputs.questions}
    per = scenario_slopes(dose[dose["direction"] >= 0], scenarios, x, key="direction")
    overall = per[per["scenario"] == "*"].set_index("direction")["slope"]
    slopes = overall.reindex(range(k)).to_numpy(dtype=np.float64)
    stats_ = {
        "null_key": key,
        "null_cached": cached,
        "null_build_s": meta.get("build_s"),
        **summary(slopes),
        **compare(slope, slopes),
        **prompt_reference(dose, inputs.coeffs, slope, x),
    }
    return NullReference(stats_, per[["direction", "scenario", "slope"]])
