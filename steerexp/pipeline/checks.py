"""Every check that needs no model (so bad input fails before anything loads), and a run's identity."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

from steerexp.config.compose import validate
from steerexp.data.files import check_leakage, with_holdout
from steerexp.data.pairs import (
    Pair,
    Question,
    answer_regex,
    check_coeffs,
    load_neutral_prompts,
    load_pairs,
    load_questions,
)
from steerexp.data.questionfiles import EvalSpec, resolve_eval
from steerexp.models.loading import validate_model_cfg
from steerexp.stages.extract.losses import LOSSES
from steerexp.stages.fit.methods import METHODS, check_pairs
from steerexp.stages.judge.judges import JUDGES
from steerexp.store.columns import IDENTITY_GROUPS


class RunInputs(NamedTuple):
    """What a run reads besides the model: contrast pairs, eval questions, coefficient grid, and
    the resolved eval the stages read (never ``cfg.eval``, which a file eval leaves unfilled)."""

    pairs: list[Pair]
    questions: list[Question]
    coeffs: list[float]
    eval: EvalSpec


def plain(cfg: Any) -> dict[str, Any]:
    """A config node as a plain, resolved dict (what the stages take)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]
    return dict(cfg)


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The option names a ranking row is labelled with."""
    ident: dict[str, Any] = {k: str(cfg[k].name) for k in IDENTITY_GROUPS}
    ident.update(coeff_units=str(cfg.coeff_units), seed=int(cfg.seed))
    return ident


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
    """Every check that needs no model, so bad input fails before anything loads: the schema's own
    rules (:func:`~steerexp.config.compose.validate`), then what needs files (the model path, pairs,
    questions, prompts, leakage, pair counts)."""
    validate(cfg)
    validate_model_cfg(cfg.model)
    METHODS.get(str(cfg.method.kind))
    LOSSES.get(str(cfg.loss.name))
    JUDGES.get(str(cfg.judge.name))
    spec = resolve_eval(cfg)
    answer_regex(spec.answer_regex)
    coeffs = check_coeffs(list(cfg.eval.coeffs))
    if cfg.coeff_units == "kl":
        load_neutral_prompts(str(cfg.kl.prompts))
    dataset = with_holdout(plain(cfg.dataset), plain(cfg.eval))
    inputs = RunInputs(load_pairs(dataset), load_questions(spec.section), coeffs, spec)
    check_pairs(str(cfg.method.name), str(cfg.method.kind), len(inputs.pairs))
    check_leakage(
        inputs.pairs, inputs.questions, str(cfg.dataset.path or f"dataset={cfg.dataset.name}")
    )
    return inputs
