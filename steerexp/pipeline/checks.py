"""Every check that needs no model (so bad input fails before anything loads), and a run's identity."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

from steerexp.core.columns import IDENTITY_GROUPS
from steerexp.core.config import check_seed
from steerexp.core.data import (
    Pair,
    Question,
    answer_regex,
    check_coeffs,
    load_neutral_prompts,
    load_pairs,
    load_questions,
)
from steerexp.core.datafiles import check_leakage, with_holdout
from steerexp.core.errors import SteerexpError, choice_error
from steerexp.core.models import validate_model_cfg
from steerexp.core.questionfiles import prepare_eval
from steerexp.core.transforms import X_TRANSFORMS
from steerexp.stages.extract.activations import GRAD_TOKENS
from steerexp.stages.extract.losses import LOSS_TERMS, LOSSES
from steerexp.stages.fit.methods import METHODS, check_pairs
from steerexp.stages.intervene.scales import COEFF_UNITS
from steerexp.stages.judge.judges import JUDGES
from steerexp.sweep.rows import CORRECTIONS


class RunInputs(NamedTuple):
    """What a run reads besides the model: contrast pairs, eval questions, coefficient grid."""

    pairs: list[Pair]
    questions: list[Question]
    coeffs: list[float]


def plain(cfg: Any) -> dict[str, Any]:
    """A config node as a plain, resolved dict (what the stages take)."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The option names a ranking row is labelled with."""
    ident: dict[str, Any] = {k: str(cfg[k].name) for k in IDENTITY_GROUPS}
    ident.update(coeff_units=str(cfg.coeff_units), seed=int(cfg.seed))
    return ident


def check_int(cfg: DictConfig, key: str, minimum: int | None = None) -> int:
    """``cfg.<key>`` as an int; a non-integer or one below ``minimum`` fails naming the key."""
    value = OmegaConf.select(cfg, key)
    try:
        if isinstance(value, bool):
            raise ValueError
        number = value if isinstance(value, int) else int(value)
        if not isinstance(value, int) and float(value) != number:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise SteerexpError(f"{key}={value!r} must be an integer") from None
    if minimum is not None and number < minimum:
        raise SteerexpError(f"{key}={number} must be >= {minimum}")
    return number


def check_sampling(cfg: DictConfig) -> None:
    """Sampling and loss weights that would otherwise fail only at generation or after extraction."""
    ev = cfg.eval
    if not float(ev.temperature) > 0:
        raise SteerexpError(f"eval.temperature={ev.temperature} must be > 0")
    if ev.min_p is not None and not 0 <= float(ev.min_p) <= 1:
        raise SteerexpError(f"eval.min_p={ev.min_p} must be between 0 and 1 (or null: off)")
    if ev.repetition_penalty is not None and not float(ev.repetition_penalty) > 0:
        raise SteerexpError(
            f"eval.repetition_penalty={ev.repetition_penalty} must be > 0 (or null: off)"
        )
    terms = LOSS_TERMS.get(str(cfg.loss.name), {})
    for _, key in terms.values():
        if key is None:
            continue
        weight = cfg.loss[key]
        if weight != "auto":
            try:
                number = float(weight)
            except (TypeError, ValueError):
                number = math.nan
            if isinstance(weight, bool) or not math.isfinite(number):
                raise SteerexpError(f"loss.{key}={weight!r} must be a finite number or 'auto'")
    if "balance_target" in cfg.loss and not 0 < float(cfg.loss.balance_target) < 1:
        raise SteerexpError(
            f"loss.balance_target={cfg.loss.balance_target} must be strictly between 0 and 1"
        )


#: A finished run whose dose-response fit is undefined (too few valid rows, or one valid dose):
#: not ``ok``, not ``failed``; its ranking row says why.
DEGENERATE = "degenerate"


def degenerate_reason(metrics: dict[str, Any]) -> str | None:
    """Why a finished run's fit is undefined (slope, r2 or p not finite), or None when it is not."""
    stats = {k: metrics.get(k, math.nan) for k in ("slope", "r2", "p_value")}
    if all(isinstance(v, int | float) and math.isfinite(v) for v in stats.values()):
        return None
    n_valid, n_rows = metrics.get("n_valid", "?"), metrics.get("n_rows", "?")
    return (
        f"degenerate fit: {n_valid} of {n_rows} rows valid, too few (or at one dose) for a slope; "
        "slope, r2 and p are undefined (NaN): check eval.coeffs (e.g. smaller magnitudes) and "
        "the judge's validity"
    )


def check_config(cfg: DictConfig) -> RunInputs:
    """Every check that needs no model, so bad input fails before anything loads."""
    check_seed("seed", check_int(cfg, "seed"))
    null_k = check_int(cfg, "random_null.k", 0)
    check_seed("random_null.seed", check_int(cfg, "random_null.seed"), max(null_k, 1))
    check_sampling(cfg)
    check_int(cfg, "eval.repeats", 1)
    check_int(cfg, "eval.max_new_tokens", 1)
    check_int(cfg, "eval.max_batch_size", 1)
    workers = cfg.eval.workers
    if workers != "auto" and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise SteerexpError(f"eval.workers={workers!r} must be 'auto' or an integer >= 1")
    check_int(cfg, "extract.batch_size", 1)
    validate_model_cfg(plain(cfg.model))
    COEFF_UNITS.get(str(cfg.coeff_units))
    X_TRANSFORMS.get(str(cfg.regress_x))
    if cfg.extract.grad_tokens not in GRAD_TOKENS:
        raise choice_error("extract.grad_tokens", cfg.extract.grad_tokens, GRAD_TOKENS)
    METHODS.get(str(cfg.method.kind))
    LOSSES.get(str(cfg.loss.name))
    JUDGES.get(str(cfg.judge.name))
    prepare_eval(cfg)
    answer_regex(str(cfg.eval.answer_regex))
    coeffs = check_coeffs(list(cfg.eval.coeffs))
    if cfg.coeff_units == "kl":
        load_neutral_prompts(str(cfg.kl.prompts))
    if cfg.ranking.correction not in CORRECTIONS:
        raise choice_error("ranking.correction", cfg.ranking.correction, list(CORRECTIONS))
    check_int(cfg, "ranking.confirm", 0)
    if int(cfg.random_null.k) != 0 and int(cfg.random_null.k) < 2:
        raise SteerexpError(
            f"random_null.k={cfg.random_null.k} must be 0 (no null) or >= 2 random directions"
        )
    if int(cfg.fit.bootstrap) != 0 and int(cfg.fit.bootstrap) < 2:
        raise SteerexpError(
            f"fit.bootstrap={cfg.fit.bootstrap} must be 0 (no refits) or >= 2 bootstrap refits"
        )
    dataset = with_holdout(plain(cfg.dataset), plain(cfg.eval))
    inputs = RunInputs(load_pairs(dataset), load_questions(plain(cfg.eval)), coeffs)
    check_pairs(str(cfg.method.name), str(cfg.method.kind), len(inputs.pairs))
    check_leakage(
        inputs.pairs, inputs.questions, str(cfg.dataset.path or f"dataset={cfg.dataset.name}")
    )
    return inputs
