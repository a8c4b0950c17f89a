"""One definition of every metric: :class:`RunMetrics`, whose fields (the ranking's columns in
table order, then the rest of ``metrics.json``), each with its group and one-line meaning, generate the column lists (:mod:`steerexp.store.columns`),
the ``ranking.md`` headers and the metrics table of docs/artifacts.md (:func:`docs_table`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

#: The groups of the ranking's fixed columns, in ``ranking.csv`` order: the journal's columns,
#: the other statistics of a run, what the sweep computes across runs, the run's labels, its
#: timings, how it was produced.
GROUPS = ("journal", "stat", "sweep", "identity", "time", "run")
#: The rest of ``metrics.json`` (``ranking.csv`` keeps them after the fixed columns, by name); the
#: loss-balance keys (``loss_*``, :mod:`steerexp.stages.extract.balance`) are named per loss term.
INFO = "info"


def metric(group: str, meaning: str, shown: str | None = None) -> Any:
    """A :class:`RunMetrics` field: its ``group``, its one-line ``meaning`` and, where
    ``ranking.md`` heads it otherwise, the header it is ``shown`` under."""
    if group not in (*GROUPS, INFO):
        raise ValueError(f"metric group {group!r}; valid: {', '.join((*GROUPS, INFO))}")
    return field(default=None, metadata={"group": group, "meaning": meaning, "shown": shown})


def _time(what: str) -> Any:
    return metric("time", f"wall seconds of {what}")


@dataclass
class RunMetrics:
    """A ranking row: a run's ``metrics.json`` and what the sweep adds (None: not computed).
    A new metric is a new field here; the column lists and the docs table follow."""

    # the journal's columns
    slope: float | None = metric(
        "journal", "OLS slope of the log-ratio on the regressor x(c); > 0 = toward the trait"
    )
    r2: float | None = metric("journal", "R² of that fit")
    valid_frac: float | None = metric("journal", "fraction of generations with a judgeable answer")
    effect_size: float | None = metric("journal", "|slope| / sd of the log-ratio at c = 0")
    p_value: float | None = metric("journal", "t test of slope ≠ 0, clustered by scenario")
    score: float | None = metric("journal", "|slope| · r2 · valid_frac² (the journal's score)")
    min: float | None = metric("journal", "smallest valid log-ratio")
    max: float | None = metric("journal", "largest valid log-ratio")
    # the other statistics of a run
    signed_score: float | None = metric("stat", "slope · r2 · valid_frac² (sort key fallback)")
    slope_ci_low: float | None = metric("stat", "95% CI of the slope, clustered: low end")
    slope_ci_high: float | None = metric("stat", "95% CI of the slope, clustered: high end")
    vs_random: float | None = metric("stat", "|slope| / median |slope| of the null directions")
    p_random: float | None = metric(
        "stat", "parametric t-based p against the null (kept to compare)"
    )
    p_random_holm: float | None = metric("stat", "Holm-corrected p_random within its table")
    p_random_rank: float | None = metric("stat", "p_null under its older name")
    anti_frac: float | None = metric(
        "stat", "share of questions whose own slope has the other sign"
    )
    fitted_shift: float | None = metric(
        "stat", "the fit's log-ratio change over the grid", shown="shift"
    )
    prompt_shift: float | None = metric(
        "stat", "prompting's shift: mean valid log-ratio, positive minus negative persona"
    )
    prompt_y_positive: float | None = metric("stat", "mean valid log-ratio, positive persona")
    prompt_y_negative: float | None = metric("stat", "mean valid log-ratio, negative persona")
    spearman: float | None = metric("stat", "Spearman correlation of coefficient and log-ratio")
    n_valid: int | None = metric("stat", "valid (judgeable) generations")
    n_rows: int | None = metric("stat", "generations")
    pair_vote_frac: float | None = metric("stat", "share of pairs whose difference agrees with +v")
    null_k: int | None = metric("stat", "random null directions K")
    null_slope_mean: float | None = metric("stat", "mean slope of the null directions")
    null_slope_sd: float | None = metric("stat", "sd of the null directions' slopes")
    null_abs_median: float | None = metric("stat", "median |slope| of the null directions")
    null_abs_p95: float | None = metric("stat", "95th percentile |slope| of the null directions")
    null_build_s: float | None = metric("stat", "seconds spent building the cached null")
    kl_at_max: float | None = metric(
        "stat", "mean token KL on the neutral prompts at the largest |c|"
    )
    coherent_max: float | None = metric("stat", "largest |c| still coherent (coherence.csv)")
    slope_lo: float | None = metric(
        "stat", "slope 95% interval with the refit spread: low end", shown="slope 95% CI"
    )
    slope_hi: float | None = metric(
        "stat", "slope 95% interval with the refit spread: high end", shown="slope 95% CI"
    )
    slope_se: float | None = metric(
        "stat", "CR2 standard error of the slope, clustered by scenario"
    )
    slope_df: float | None = metric("stat", "Bell-McCaffrey degrees of freedom of slope_se")
    slope_se_total: float | None = metric("stat", "√(slope_se² + refit_slope_sd²)")
    refit_slope_sd: float | None = metric("stat", "sd of the slope over the bootstrap refits")
    fit_cos: float | None = metric("stat", "mean cos of the refits with the full-data direction")
    n_refits: int | None = metric("stat", "bootstrap refits B (0: none, or a method without)")
    n_scenarios: int | None = metric("stat", "scenario clusters of the eval questions")
    p_null: float | None = metric(
        "stat", "rank p against the null: (1 + #{|null| ≥ |slope|})/(K + 1)"
    )
    null_beyond_all: bool | None = metric("stat", "|slope| beyond every null direction's")
    lof_p: float | None = metric("stat", "lack-of-fit F test of the line against per-c means")
    tanh_slope0: float | None = metric("stat", "slope at 0 of the tanh fit y = a + p·tanh(s·x/p)")
    tanh_plateau: float | None = metric("stat", "plateau p of the tanh fit")
    tanh_intercept: float | None = metric("stat", "intercept a of the tanh fit")
    aic_line: float | None = metric("stat", "Gaussian AIC of the line")
    aic_tanh: float | None = metric("stat", "Gaussian AIC of the tanh fit")
    valid_frac_lo: float | None = metric(
        "stat", "valid fraction at the most negative coefficient", shown="valid_lo"
    )
    valid_frac_hi: float | None = metric(
        "stat", "valid fraction at the most positive coefficient", shown="valid_hi"
    )
    steer_score: float | None = metric(
        "stat", "failure-counted effect at the grid's symmetric edge"
    )
    budget_coeff: float | None = metric("stat", "coefficient where the p95 token KL reaches 1 nat")
    budget_effect: float | None = metric(
        "stat", "failure-counted effect at budget_coeff (sort key)"
    )
    # what the sweep computes across runs
    label: str | None = metric("sweep", "the row's label (method, with its swept method.* keys)")
    p_null_adj: float | None = metric("sweep", "p_null corrected over the sweep's family")
    sep_next: bool | None = metric("sweep", "separable from the next row at 0.05 (sep_p < 0.05)")
    sep_p: float | None = metric("sweep", "rank p of the gap to the next row among null pairs")
    sep_ref: str | None = metric("sweep", "the reference the order test used")
    pooled: bool | None = metric("sweep", "a row pooling the seeds of a swept seed")
    n_seeds: int | None = metric("sweep", "seeds pooled into the row")
    in_table: bool | None = metric("sweep", "shown in ranking.md (per-seed rows of a pool: false)")
    # the run's labels
    model: str | None = metric("identity", "model option")
    module: str | None = metric("identity", "module option")
    method: str | None = metric("identity", "method option")
    loss: str | None = metric("identity", "loss option")
    dataset: str | None = metric("identity", "dataset option")
    eval: str | None = metric("identity", "eval option")
    judge: str | None = metric("identity", "judge option")
    coeff_units: str | None = metric("identity", "coefficient units (norm, raw, kl)")
    seed: int | None = metric("identity", "the run's seed")
    # timings
    time_load_s: float | None = _time("loading the model")
    time_extract_s: float | None = _time("extraction (activations, gradients)")
    time_fit_s: float | None = _time("fitting the directions")
    time_intervene_s: float | None = _time("sizing the coefficient unit")
    time_generate_s: float | None = _time("generation (judging aside)")
    time_judge_s: float | None = _time("judging the generations")
    time_regress_s: float | None = _time("the fit, coherence cost and plot")
    time_null_s: float | None = _time("the random null and prompting reference")
    time_refits_s: float | None = _time("the bootstrap refits")
    time_total_s: float | None = _time("the whole run")
    # how the run was produced
    dup_of: str | None = metric("run", "a better-ranked row whose directions have |cos| ≥ 0.999")
    sign_flipped: bool | None = metric("run", "the pair vote flipped the direction at some module")
    grad_rule_agrees: bool | None = metric(
        "run", "gradient methods: the first-order rule agreed with the pair vote"
    )
    model_reused: bool | None = metric("run", "the model was already loaded in this process")
    extraction_cached: bool | None = metric("run", "the extraction came from the cache")
    generations_reused: bool | None = metric("run", "the judged rows came from the cache")
    null_cached: bool | None = metric("run", "the null came from the cache")
    cache_key: str | None = metric("run", "extraction cache key")
    acts_key: str | None = metric("run", "loss-free extraction key (activations)")
    generation_key: str | None = metric("run", "generation cache key")
    null_key: str | None = metric("run", "null cache key")
    # the rest of metrics.json
    status: str | None = metric(INFO, "ok, degenerate, failed or interrupted (status.json)")
    error: str | None = metric(INFO, "why the run failed or is degenerate (one line)")
    torch_threads: int | None = metric(INFO, "torch threads the run used")
    checkpoint: str | None = metric(INFO, "path of the loaded checkpoint")
    n_skipped_long: int | None = metric(INFO, "eval questions skipped as too long for the model")
    n_pairs: int | None = metric(INFO, "contrast pairs the direction was fit on")
    reg_fallback: bool | None = metric(INFO, "Fisher methods: the solve fell back to a larger reg")
    reg_used: float | None = metric(INFO, "Fisher methods: the largest reg used (with a fallback)")
    pmass_median: float | None = metric(
        INFO, "median probability on the answer options, valid rows"
    )
    low_pmass_frac: float | None = metric(INFO, "share of valid rows with pmass below 0.1")
    c_star: float | None = metric(INFO, "coeff_units=kl: the norm coefficient of one KL unit")
    kl_p95_at_c_star: float | None = metric(
        INFO, "coeff_units=kl: p95 token KL at ±c_star, worse sign"
    )
    kl_p95_plus: float | None = metric(INFO, "coeff_units=kl: p95 token KL at +c_star")
    kl_p95_minus: float | None = metric(INFO, "coeff_units=kl: p95 token KL at −c_star")
    kl_n_prompts: int | None = metric(INFO, "coeff_units=kl: neutral prompts calibrated on")
    vjp_key: str | None = metric(INFO, "pulled-back rows (vjp_steer): cache key")
    vjp_read: str | None = metric(INFO, "pulled-back rows: the read layer")
    vjp_tokens: str | None = metric(INFO, "pulled-back rows: the tokens averaged")
    vjp_cached: bool | None = metric(INFO, "pulled-back rows came from the cache")
    vjp_u_norm: float | None = metric(INFO, "pulled-back rows: norm of the read-layer contrast u")


def names(*groups: str) -> list[str]:
    """The fields of ``groups`` (when none: of every group of :data:`GROUPS`), in table order."""
    want = groups or GROUPS
    return [f.name for f in fields(RunMetrics) if f.metadata["group"] in want]


def shown(name: str) -> str:
    """The header ``ranking.md`` shows column ``name`` under."""
    return {f.name: f.metadata["shown"] or f.name for f in fields(RunMetrics)}[name]


def docs_table() -> str:
    """The markdown table of every column: name, group, ranking.md header, meaning."""
    lines = ["| column | group | meaning |", "|---|---|---|"]
    for f in fields(RunMetrics):
        head = f" (`{f.metadata['shown']}` in ranking.md)" if f.metadata["shown"] else ""
        meaning = str(f.metadata["meaning"]).replace("|", "\\|")
        lines.append(f"| `{f.name}` | {f.metadata['group']} | {meaning}{head} |")
    return "\n".join(lines)
