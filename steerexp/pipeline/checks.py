"""Every check that needs no model (so bad input fails before anything loads), and a run's identity."""

from __future__ import annotations

from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

from steerexp.core.columns import IDENTITY_GROUPS
from steerexp.core.data import (
    Pair,
    Question,
    answer_regex,
    check_coeffs,
    load_neutral_prompts,
    load_pairs,
    load_questions,
)
from steerexp.core.errors import SteerexpError, choice_error
from steerexp.core.models import validate_model_cfg
from steerexp.core.questionfiles import prepare_eval
from steerexp.core.transforms import X_TRANSFORMS
from steerexp.stages.extract.activations import GRAD_TOKENS
from steerexp.stages.extract.losses import LOSSES
from steerexp.stages.fit.methods import METHODS
from steerexp.stages.intervene.scales import COEFF_UNITS
from steerexp.stages.judge.judges import JUDGES


class Inputs(NamedTuple):
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
        if isinstance(value, bool) or float(value) != int(value):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        raise SteerexpError(f"{key}={value!r} must be an integer") from None
    if minimum is not None and number < minimum:
        raise SteerexpError(f"{key}={number} must be >= {minimum}")
    return number


def check_config(cfg: DictConfig) -> Inputs:
    """Every check that needs no model, so bad input fails before anything loads."""
    check_int(cfg, "seed")
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
    if int(cfg.random_null.k) != 0 and int(cfg.random_null.k) < 2:
        raise SteerexpError(
            f"random_null.k={cfg.random_null.k} must be 0 (no null) or >= 2 random directions"
        )
    if int(cfg.fit.bootstrap) != 0 and int(cfg.fit.bootstrap) < 2:
        raise SteerexpError(
            f"fit.bootstrap={cfg.fit.bootstrap} must be 0 (no refits) or >= 2 bootstrap refits"
        )
    return Inputs(load_pairs(plain(cfg.dataset)), load_questions(plain(cfg.eval)), coeffs)
