"""``run(cfg)``: extract -> fit direction -> scaled intervention -> generate -> judge -> regress.

Every check that needs no model runs first (:func:`check_config`). Artifacts are written as
soon as their stage finishes, so a later failure loses nothing already computed; a failure is
recorded in ``status.json``/``metrics.json`` and re-raised to the caller, which decides
whether it ends the process (single run) or just the job (multirun).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from steerexp import artifacts, cache, cache_dir, coherence, null
from steerexp.data import (
    Pair,
    Question,
    answer_regex,
    check_coeffs,
    load_neutral_prompts,
    load_pairs,
    load_questions,
)
from steerexp.datafiles import prepare_eval, record_split
from steerexp.errors import SteerexpError, choice_error, error_text
from steerexp.extract import GRAD_TOKENS, extract
from steerexp.generate import generate_rows, grid, make_rescore
from steerexp.intervene import (
    COEFF_UNITS,
    Steering,
    base_scales,
    calibrate_kl,
    neutral_prompt_ids,
)
from steerexp.judge import JUDGES, AnswerSpec, judge_rows, make_answer_spec
from steerexp.losses import LOSSES
from steerexp.methods import METHODS, DirectionFit, fit_from_config
from steerexp.models import LoadedModel, load_model, resolve_modules, validate_model_cfg
from steerexp.regress import X_TRANSFORMS, journal_table, regress
from steerexp.tracking import make_logger
from steerexp.vjp import vjp_rows

IDENTITY = ("model", "module", "method", "loss", "dataset", "eval", "judge")


def _plain(cfg: Any) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The option names a ranking row is labelled with."""
    ident: dict[str, Any] = {
        k: str(OmegaConf.select(cfg, f"{k}.name", default="?")) for k in IDENTITY
    }
    ident.update(coeff_units=str(cfg.coeff_units), seed=int(cfg.seed))
    return ident


def check_int(
    cfg: DictConfig, key: str, minimum: int | None = None, default: int | None = None
) -> int:
    """``cfg.<key>`` as an int (``default`` when absent); a non-integer or one below ``minimum``
    fails naming the key."""
    value = OmegaConf.select(cfg, key, default=default)
    try:
        if isinstance(value, bool) or float(value) != int(value):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        raise SteerexpError(f"{key}={value!r} must be an integer") from None
    if minimum is not None and number < minimum:
        raise SteerexpError(f"{key}={number} must be >= {minimum}")
    return number


def check_config(cfg: DictConfig) -> tuple[list[Pair], list[Question], list[float]]:
    """Every check that needs no model, so bad input fails before anything loads."""
    check_int(cfg, "seed")
    check_int(cfg, "eval.repeats", 1)
    check_int(cfg, "eval.max_new_tokens", 1)
    check_int(cfg, "eval.max_batch_size", 1, default=32)
    workers = OmegaConf.select(cfg, "eval.workers", default="auto")
    if workers != "auto" and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise SteerexpError(f"eval.workers={workers!r} must be 'auto' or an integer >= 1")
    check_int(cfg, "extract.batch_size", 1)
    validate_model_cfg(_plain(cfg.model))
    if cfg.coeff_units not in COEFF_UNITS:
        raise choice_error("coeff_units", cfg.coeff_units, COEFF_UNITS)
    if cfg.regress_x not in X_TRANSFORMS:
        raise choice_error("regress_x", cfg.regress_x, X_TRANSFORMS)
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
    return (
        load_pairs(_plain(cfg.dataset)),
        load_questions(_plain(cfg.eval)),
        coeffs,
    )


def _kl_scales(loaded: Any, cfg: DictConfig, steering: Steering) -> dict[str, float]:
    """``coeff_units=kl``: calibrate on the held-out neutral prompts (never the eval questions)."""
    texts = load_neutral_prompts(str(cfg.kl.prompts))
    return calibrate_kl(loaded, neutral_prompt_ids(loaded, texts), steering)


def _coherence(
    loaded: LoadedModel, cfg: DictConfig, steering: Steering, coeffs: list[float], dose: pd.DataFrame
) -> pd.DataFrame:
    """Coherence cost per coefficient: KL on the held-out neutral prompts, valid share, length."""
    prompts = neutral_prompt_ids(loaded, load_neutral_prompts(str(cfg.kl.prompts)))
    kl = coherence.mean_token_kl(loaded, prompts, steering, coeffs)
    lengths = coherence.completion_lengths(loaded, list(dose["completion"]))
    return coherence.cost_table(kl, coeffs, dose, lengths)


def execute(cfg: DictConfig, run_dir: Path, metrics: dict[str, Any], progress: bool = True) -> None:
    """The six stages; fills ``metrics`` as it goes and writes each artifact when it is ready."""
    t = time.perf_counter
    pairs, questions, coeffs = check_config(cfg)
    record_split(cfg, run_dir)
    torch.manual_seed(int(cfg.seed))

    t0 = t()
    loaded = load_model(_plain(cfg.model))
    metrics.update(time_load_s=t() - t0, model_reused=loaded.reused, checkpoint=loaded.path)
    modules = resolve_modules(loaded, cfg.module)
    spec = make_answer_spec(
        loaded.tokenizer,
        str(cfg.eval.answer_regex),
        list(cfg.eval.answers),
        str(cfg.eval.answer_prefix),
    )

    t0 = t()
    root = Path(cfg.cache_dir) if cfg.cache_dir else cache_dir() / "extractions"
    uses_grads = METHODS.get(str(cfg.method.kind)).uses_grads
    ex = extract(
        loaded,
        _plain(cfg.model),
        modules,
        _plain(cfg.loss),
        pairs,
        int(cfg.extract.batch_size),
        root,
        progress=progress,
        grad_tokens=str(cfg.extract.grad_tokens),
        need_grads=uses_grads,
    )
    metrics.update(
        time_extract_s=t() - t0,
        extraction_cached=ex.cached,
        cache_key=ex.key,
        acts_key=ex.acts_key,
        n_pairs=len(pairs),
        **ex.balance,
    )

    t0 = t()
    if uses_grads:
        for m in modules:
            if not bool(ex.grads[m].any()):
                raise SteerexpError(
                    f"method {cfg.method.name!r} needs loss gradients, but they are all zero at {m!r} "
                    f"(loss {cfg.loss.name!r} at loss.layer={cfg.loss.layer} does not depend on it; "
                    "use modules before the loss layer or another loss)"
                )
    rows = ex.grads
    if str(cfg.method.kind) == "vjp_steer":
        read_layer = OmegaConf.select(cfg, "method.read_layer", default=None)
        rows, vjp_meta = vjp_rows(
            loaded,
            _plain(cfg.model),
            modules,
            pairs,
            int(cfg.loss.layer if read_layer is None else read_layer),
            str(OmegaConf.select(cfg, "method.tokens", default="all")),
            int(cfg.extract.batch_size),
            root,
        )
        metrics.update(vjp_meta)
    fits = {
        m: fit_from_config(
            cfg.method, ex.acts[m], rows.get(m), ex.loss_grad_norms, seed=int(cfg.seed)
        )
        for m in modules
    }
    scales = base_scales(str(cfg.coeff_units), ex, modules)
    steering = Steering({m: f.vector for m, f in fits.items()}, scales)
    if cfg.coeff_units == "kl":
        kl = _kl_scales(loaded, cfg, steering)
        steering = steering.scaled(kl["c_star"])
        metrics.update(kl)
    metrics["time_fit_s"] = t() - t0
    metrics.update(_fit_summary(fits))
    artifacts.write_directions(
        run_dir / "directions.safetensors",
        steering.vectors,
        {
            "method": metrics["method"],
            "loss": metrics["loss"],
            "coeff_units": metrics["coeff_units"],
            "raw_norms": {m: f.raw_norm for m, f in fits.items()},
            "scales": steering.scales,
            "fit_info": {m: f.info for m, f in fits.items()},
            "cache_key": ex.key,
        },
    )

    t0 = t()
    gen_key = cache.hash_key(
        {"run": _group_payload(cfg, ex.acts_key, coeffs), **_steering_id(steering)}
    )
    metrics["time_judge_s"] = 0.0

    def generate_and_judge() -> tuple[pd.DataFrame, dict[str, Any]]:
        rows = generate_rows(
            loaded,
            cfg.eval,
            grid(questions, coeffs, int(cfg.eval.repeats)),
            steering,
            spec,
            int(cfg.seed),
            progress,
        )
        t_judge = t()
        rescore = make_rescore(loaded, cfg.eval, questions, steering, spec)
        judged = judge_rows(str(cfg.judge.name), rows, spec, rescore)
        metrics["time_judge_s"] = t() - t_judge
        return artifacts.dose_frame(rows, judged), {"key": gen_key, "method": metrics["method"]}

    dose, _, reused, _ = null.cached_rows(root / "generations" / gen_key, generate_and_judge)
    dose = dose[artifacts.DOSE_COLUMNS]
    artifacts.write_dose_response(run_dir / "dose_response.csv", dose)
    metrics.update(
        generation_key=gen_key,
        generations_reused=reused,
        time_generate_s=t() - t0 - metrics["time_judge_s"],
    )

    t0 = t()
    metrics.update(
        regress(
            dose["coeff"],
            dose["log_ratio"],
            dose["valid"],
            x=str(cfg.regress_x),
            groups=dose["question_id"],
        )
    )
    cost = _coherence(loaded, cfg, steering, coeffs, dose)
    artifacts.write_coherence(run_dir / "coherence.csv", cost)
    metrics.update(coherence.summary(cost))
    title = f"{metrics['method']} | {metrics['module']} | {metrics['loss']} | {metrics['model']}"
    artifacts.plot_dose_response(
        run_dir / "dose_response.png", dose, title, x=str(cfg.regress_x), cost=cost
    )
    metrics["time_regress_s"] = t() - t0
    if int(cfg.random_null.k) > 0:
        t0 = t()
        metrics.update(
            _null_columns(
                cfg, loaded, ex, modules, questions, coeffs, spec, root, progress, metrics
            )
        )
        metrics["time_null_s"] = t() - t0
    metrics["_dose"] = dose


def _fit_summary(fits: dict[str, DirectionFit]) -> dict[str, Any]:
    """Sign decisions over modules: any flip, mean pair-vote share, and (gradient methods)
    whether the first-order gradient rule agreed with the pair vote at every module."""
    infos = [f.info for f in fits.values()]
    out: dict[str, Any] = {
        "sign_flipped": any(bool(i.get("flipped")) for i in infos),
        "pair_vote_frac": float(np.mean([float(i.get("pair_vote_frac", np.nan)) for i in infos])),
        "grad_rule_agrees": None,
    }
    if all("grad_rule_agrees" in i for i in infos):
        out["grad_rule_agrees"] = all(bool(i["grad_rule_agrees"]) for i in infos)
    fallback = [i for i in infos if i.get("reg_fallback")]
    out["reg_fallback"] = bool(fallback)
    if fallback:
        out["reg_used"] = max(float(i.get("reg_used", 0.0)) for i in fallback)
    return out


def _group_payload(cfg: DictConfig, acts_key: str, coeffs: list[float]) -> dict[str, Any]:
    """What generations depend on besides the direction: model and modules (via the loss-free
    extraction key, which also fixes the norm scales), eval (not its chunking), judge, units,
    grid and sampling seed (not how rows are chunked or spread over processes)."""
    ev = {k: v for k, v in _plain(cfg.eval).items() if k not in ("max_batch_size", "workers")}
    return {
        "version": null.NULL_VERSION,
        "acts_key": acts_key,
        "eval": ev,
        "judge": _plain(cfg.judge),
        "coeff_units": str(cfg.coeff_units),
        "coeffs": coeffs,
        "seed": int(cfg.seed),
    }


def _steering_id(steering: Steering) -> dict[str, Any]:
    """Content hash of the directions and their scales."""
    digest = {
        m: hashlib.sha256(v.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
        for m, v in sorted(steering.vectors.items())
    }
    return {
        "directions": digest,
        "scales": {m: float(s) for m, s in sorted(steering.scales.items())},
    }


def _null_columns(
    cfg: DictConfig,
    loaded: LoadedModel,
    ex: Any,
    modules: list[str],
    questions: list[Question],
    coeffs: list[float],
    spec: AnswerSpec,
    root: Path,
    progress: bool,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """This run against its group's random null, and the prompting reference (cached, SPEC 4.8)."""
    k, seed0 = int(cfg.random_null.k), int(cfg.random_null.seed)
    personas = null.persona_texts(_plain(cfg.dataset))
    # The run's own seed is not part of the group: a seed sweep shares one null, which is
    # sampled with its own seed (sampling noise in a slope is small next to the null's spread).
    group = {k_: v for k_, v in _group_payload(cfg, ex.acts_key, coeffs).items() if k_ != "seed"}
    payload = {**group, "null": {"k": k, "seed": seed0}, "personas": personas}
    key = cache.hash_key(payload)

    def build() -> tuple[pd.DataFrame, dict[str, Any]]:
        base = base_scales(str(cfg.coeff_units), ex, modules)
        steerings = []
        for vectors in null.null_directions(modules, ex.acts, k, seed0):
            st = Steering(vectors, base)
            if cfg.coeff_units == "kl":
                st = st.scaled(_kl_scales(loaded, cfg, st)["c_star"])
            steerings.append(st)
        dose = null.generate_reference(
            loaded,
            cfg.eval,
            questions,
            coeffs,
            steerings,
            personas,
            spec,
            str(cfg.judge.name),
            seed0,
            progress,
        )
        return dose, {"key": key, "payload": payload}

    dose, meta, cached, seconds = null.cached_rows(root / "nulls" / key, build)
    slopes = null.null_slopes(dose, str(cfg.regress_x))
    slope = float(metrics.get("slope", np.nan))
    return {
        "null_key": key,
        "null_cached": cached,
        "null_build_s": meta.get("build_s"),
        **null.summary(slopes),
        **null.compare(slope, slopes),
        **null.prompt_reference(dose, coeffs, slope, str(cfg.regress_x)),
    }


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
    resolved = _plain(cfg)
    config_hash = artifacts.config_hash(resolved)
    if _finished(run_dir, resolved, config_hash):
        print(f"[steerexp] {run_dir} already finished (status ok, same config); skipping")
        return json.loads((run_dir / "metrics.json").read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(run_dir / "environment.json", artifacts.environment())
    artifacts.write_json(run_dir / "config.json", artifacts.run_config(resolved))
    metrics: dict[str, Any] = {**identity(cfg), "status": "running", "error": None}
    logger = make_logger(cfg.get("logger"))
    t_start = time.perf_counter()
    try:
        logger.start(cfg, run_dir)
        execute(cfg, run_dir, metrics, progress)
        metrics["status"] = "ok"
    except KeyboardInterrupt:
        metrics.update(status="interrupted", error="interrupted (Ctrl-C); rerun to resume")
        raise
    except BaseException as e:
        metrics.update(status="failed", error=error_text(e))
        raise
    finally:
        dose = metrics.pop("_dose", None)
        metrics["time_total_s"] = time.perf_counter() - t_start
        artifacts.write_json(run_dir / "metrics.json", metrics)
        if metrics["status"] == "ok":
            logger.log(metrics, dose, run_dir / "dose_response.png")
            print(journal_table(pd.DataFrame([metrics])), flush=True)
        logger.finish(str(metrics["status"]))
        artifacts.write_status(run_dir, str(metrics["status"]), metrics["error"], config_hash)
    return metrics


def _finished(run_dir: Path, resolved: dict[str, Any], config_hash: str) -> bool:
    """True when ``run_dir`` holds a finished run of this very config (skip it); a finished run of
    another config (or of one not recorded) is never reused or overwritten: that raises."""
    status = artifacts.read_status_file(run_dir)
    if status.get("status") != "ok":
        return False
    if status.get("config_hash") == config_hash:
        return True
    try:
        diff = artifacts.config_diff(json.loads((run_dir / "config.json").read_text()), resolved)
    except (OSError, ValueError):
        diff = "its config was not recorded"
    raise SteerexpError(
        f"run dir {str(run_dir)!r} already holds a finished run of a different config ({diff}); "
        "not reusing or overwriting it: choose a new hydra.run.dir/hydra.sweep.dir or delete that dir"
    )
