"""The column lists of the run artifacts and the journal's tables (rendered by :mod:`steerexp.render.journal`)."""

from __future__ import annotations

#: The judged rows of a run, one per generation (``dose_response.csv``).
DOSE_COLUMNS = [
    "question_id",
    "coeff",
    "repeat",
    "log_ratio",
    "pmass",
    "valid",
    "forced",
    "completion",
    "stop_reason",
    "n_tokens",
]


#: The journal's metric columns, in its tables' order.
JOURNAL_COLUMNS = ["slope", "r2", "valid_frac", "effect_size", "p_value", "score", "min", "max"]
#: The other statistics a run's metrics.json holds (the ranking CSV keeps them all).
EXTRA_STAT_COLUMNS = [
    "signed_score",
    "slope_ci_low",
    "slope_ci_high",
    "vs_random",
    "p_random",
    "p_random_holm",
    "p_random_rank",
    "anti_frac",
    "fitted_shift",
    "prompt_shift",
    "prompt_y_positive",
    "prompt_y_negative",
    "spearman",
    "n_valid",
    "n_rows",
    "pair_vote_frac",
    "null_k",
    "null_slope_mean",
    "null_slope_sd",
    "null_abs_median",
    "null_abs_p95",
    "null_build_s",
    "kl_at_max",
    "coherent_max",
    # per-run statistics of issue 21 (steerexp.stages.regress; absent from older run dirs)
    "slope_lo",
    "slope_hi",
    "slope_se",
    "slope_df",
    "slope_se_total",
    "refit_slope_sd",
    "fit_cos",
    "n_refits",
    "n_scenarios",
    "p_null",
    "null_beyond_all",
    "lof_p",
    "tanh_slope0",
    "tanh_plateau",
    "tanh_intercept",
    "aic_line",
    "aic_tanh",
    "valid_frac_lo",
    "valid_frac_hi",
    "steer_score",
    "budget_coeff",
    "budget_effect",
]
#: What the sweep report computes across runs (``steerexp.sweep``): the family-corrected p, the
#: order test against the next row, and seed pooling.
SWEEP_COLUMNS = [
    "label",
    "p_null_adj",
    "sep_next",
    "sep_p",
    "sep_ref",
    "pooled",
    "n_seeds",
    "in_table",
]
#: The config groups whose option names label a run: its identity in rankings and trackers.
IDENTITY_GROUPS = ("model", "module", "method", "loss", "dataset", "eval", "judge")
IDENTITY_COLUMNS = [*IDENTITY_GROUPS, "coeff_units", "seed"]
#: The timed stages of a run; each writes ``time_<stage>_s`` (plus ``time_total_s``).
TIMED_STAGES = ("load", "extract", "fit", "generate", "judge", "regress", "null", "refits")
TIME_COLUMNS = [f"time_{s}_s" for s in (*TIMED_STAGES, "total")]
#: How a run was produced (reuse, cache keys) rather than what it measured.
RUN_COLUMNS = [
    "dup_of",
    "sign_flipped",
    "grad_rule_agrees",
    "model_reused",
    "extraction_cached",
    "generations_reused",
    "null_cached",
    "cache_key",
    "acts_key",
    "generation_key",
    "null_key",
]
METRIC_COLUMNS = [
    *JOURNAL_COLUMNS,
    *EXTRA_STAT_COLUMNS,
    *SWEEP_COLUMNS,
    *IDENTITY_COLUMNS,
    *TIME_COLUMNS,
    *RUN_COLUMNS,
]


#: The statistics :func:`steerexp.stages.regress.regress` reports (NaN when it cannot fit).
STAT_KEYS = [
    "slope",
    "r2",
    "p_value",
    "slope_ci_low",
    "slope_ci_high",
    "score",
    "signed_score",
    "spearman",
    "slope_se",
    "slope_df",
]
