"""Config schemas: every group's keys, types and defaults in one place (Hydra structured configs).

``conf/config.yaml`` starts from :class:`Config` (stored as ``steerexp_schema`` by
:func:`steerexp.config.compose.register_configs`), so a composed config is typed: a typo'd key or a
wrong type is an error, and a group's YAML states only what differs from its schema. Variants
with their own keys extend a base and are listed in :data:`VARIANTS`; each is stored as
``<variant>_base`` for a group file's defaults list (``defaults: [fisher_base, _self_]``).

Every rule about a value lives here: a choice field is an ``Enum`` (OmegaConf refuses any other
value as it composes; OmegaConf 2.3 has no ``Literal``). A field that is a number or ``auto``
has no OmegaConf type (a ``Union`` field crashes Hydra's composition in OmegaConf 2.3,
omegaconf#1087), so its :data:`RULE` metadata is its type: it refuses any other value on the
command line and in option files before Hydra composes
(:func:`steerexp.config.compose.check_value`) and in ``__post_init__``; ranges and cross-field
rules are the dataclasses' ``__post_init__``, run once when
:func:`steerexp.config.compose.validate` turns the composed config into these objects (and by
:func:`~steerexp.config.compose.typed` for plain dicts).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from omegaconf import II, MISSING

from steerexp.config.errors import SteerexpError


class Dtype(StrEnum):
    """``model.dtype``: auto = bfloat16 on a GPU, float32 on CPU."""

    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


#: ``model.quantization`` (bitsandbytes); its members are not Python names, hence the call form.
Quantization = StrEnum("Quantization", {"4bit": "4bit", "8bit": "8bit"})


class Fisher(StrEnum):
    """``method.fisher``: inverse empirical Fisher, empirical Fisher, or activation covariance."""

    ief = "ief"
    emp = "emp"
    cov = "cov"


class RegScale(StrEnum):
    """``method.reg_scale``: λ = reg × the mean eigenvalue (relative) or reg itself (absolute)."""

    relative = "relative"
    absolute = "absolute"


class Combine(StrEnum):
    """``method.combine`` of ``fisher_dual``: which per-side solve(s) make the direction."""

    mean = "mean"
    pos = "pos"
    neg = "neg"
    diff = "diff"


class RowTokens(StrEnum):
    """Gradient rows summed over every token (all) or taken at the read token only (last)."""

    all = "all"
    last = "last"


class LossTokens(StrEnum):
    """``loss.tokens``: the assistant tokens (suffix) or every token (all)."""

    suffix = "suffix"
    all = "all"


class CoeffUnits(StrEnum):
    """``coeff_units``: fraction of the activation norm, raw, or iso-KL multiples."""

    norm = "norm"
    raw = "raw"
    kl = "kl"


class RegressX(StrEnum):
    """``regress_x``: the dose axis of the regression."""

    symlog = "symlog"
    linear = "linear"


class Correction(StrEnum):
    """``ranking.correction``: Holm (family-wise) or Benjamini-Hochberg (FDR)."""

    holm = "holm"
    bh = "bh"


class WandbMode(StrEnum):
    """``logger.mode`` of wandb."""

    offline = "offline"
    online = "online"
    disabled = "disabled"


#: Seeds torch (and every generator steerexp draws from) accepts: 0 .. 2**63 - 1.
MAX_SEED = 2**63 - 1


def check_seed(key: str, value: int, span: int = 1) -> int:
    """A seed (and the ``span - 1`` seeds after it) must lie in 0 .. :data:`MAX_SEED`."""
    if not 0 <= value <= MAX_SEED - (span - 1):
        top = MAX_SEED - (span - 1)
        raise SteerexpError(
            f"{key}={value} is out of range: seeds run from 0 to {top} (2**63 - 1"
            + (f" - {span - 1}, for the {span} seeds from it" if span > 1 else "")
            + ")"
        )
    return value


def at_least(key: str, value: int, minimum: int) -> None:
    """``value`` >= ``minimum``, else a one-line error naming ``key``."""
    if value < minimum:
        raise SteerexpError(f"{key}={value} must be >= {minimum}")


#: The ``field(metadata=...)`` key of a field's own value rule: ``rule(key, value)`` raises a
#: one-line error naming the key, the value and what is valid.
RULE = "rule"


def auto_or_count(key: str, value: Any) -> None:
    """``auto`` or an integer >= 1 (``eval.workers``)."""
    if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise SteerexpError(f"{key}={value!r} must be 'auto' or an integer >= 1")


def auto_or_number(key: str, value: Any) -> None:
    """``auto`` or a finite number (``loss.beta``)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if value != "auto" and (isinstance(value, bool) or not math.isfinite(number)):
        raise SteerexpError(f"{key}={value!r} must be a finite number or 'auto'")


def rule_of(schema: type, key: str) -> Callable[[str, Any], None] | None:
    """The :data:`RULE` of ``schema.key``, or None."""
    return next(f.metadata.get(RULE) for f in fields(schema) if f.name == key)


def zero_or_at_least_two(key: str, value: int, off: str, what: str) -> None:
    """``k``/``bootstrap``: 0 turns the feature off; one alone has no spread."""
    if value != 0 and value < 2:
        raise SteerexpError(f"{key}={value} must be 0 ({off}) or >= 2 {what}")


@dataclass
class ModelConfig:
    """``model``: where the weights come from and how they load."""

    name: str = MISSING
    #: hub id or local dir; null with a ``builder`` (organism, tiny_random)
    path: str | None = None
    builder: str | None = None
    revision: str | None = None
    #: the checkpoint's expected ``architectures`` entry (checked at load); null: not checked
    architecture: str | None = None
    #: auto (bfloat16 on a GPU, float32 on CPU) | float32 | bfloat16 | float16
    dtype: Dtype = Dtype.auto
    #: null | 4bit | 8bit (bitsandbytes)
    quantization: Quantization | None = None  # type: ignore[valid-type]
    #: auto: cuda when available, else cpu
    device: str = "auto"
    trust_remote_code: bool = False
    #: load pickle weights (pytorch_model.bin, *.pt): pickle can run code, so steerexp refuses
    #: them unless this is true; convert once instead (the refusal gives the command)
    allow_pickle: bool = False
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    #: the blocks ``module.layers=null`` steers: every i with lo <= i / n_layers <= hi
    layer_frac: list[float] = field(default_factory=lambda: [0.3, 0.9])
    #: the losses' read layer, indexed like HF's ``output_hidden_states``: 0 = embedding output,
    #: k = output of block k-1, -1 = the final norm's output; -3 = the block two before the last
    loss_layer: int = -3
    #: build the architecture of ``path`` (a shipped config.json) with seeded random weights
    random_init: bool = False
    #: with random_init: keep only this many blocks
    num_layers: int | None = None
    #: with random_init: config.json keys to change (``+model.config_overrides.k=v``)
    config_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModuleConfig:
    """``module``: which submodule of which blocks is steered."""

    name: str = MISSING
    #: the module path with ``{N}`` for the block index
    template: str = MISSING
    #: explicit block indices (e.g. [10, 12]) win; null: the blocks in ``layer_frac``
    layers: list[int] | None = None
    #: default: the model's (the organism sets its own, hub models get 0.3-0.9)
    layer_frac: list[float] = II("model.layer_frac")


@dataclass
class MethodConfig:
    """``method``: how a direction is fit from activations and gradients."""

    name: str = MISSING
    #: the registered method (``steerexp.stages.fit.methods.METHODS``)
    kind: str = MISSING


@dataclass
class FisherMethod(MethodConfig):
    """``(F + λI)⁻¹ ḡ``: ``fisher`` ief | emp | cov; λ = ``reg`` (× mean eigenvalue if relative)."""

    kind: str = "fisher"
    fisher: Fisher = Fisher.ief
    reg: float = 1e-2
    reg_scale: RegScale = RegScale.relative


@dataclass
class FisherDualMethod(FisherMethod):
    """One Fisher solve per side; ``combine`` mean | pos | neg | diff."""

    kind: str = "fisher_dual"
    combine: Combine = Combine.mean


@dataclass
class VjpMethod(MethodConfig):
    """The read-layer contrast pulled back to the module (``read_layer`` null: the loss layer)."""

    kind: str = "vjp_steer"
    read_layer: int | None = None
    tokens: RowTokens = RowTokens.all


@dataclass
class RandomMethod(MethodConfig):
    """A seeded Gaussian direction (the null, as a method). ``seed`` null: the run's ``seed``; set,
    it picks the direction alone, so ``method=random method.seed=0,1,2`` are three directions (rows
    of one ranking table) sampled with the same run seed (common random numbers)."""

    kind: str = "random"
    seed: int | None = None


@dataclass
class LossConfig:
    """``loss``: the loss whose gradients the gradient methods use."""

    name: str = MISSING
    #: read layer (``model.loss_layer`` indexing); default: the model's
    layer: int = II("model.loss_layer")
    #: tokens whose log-probability the loss averages: suffix (assistant tokens) | all
    tokens: LossTokens = LossTokens.suffix


@dataclass
class MarginLoss(LossConfig):
    """``hs_diff + beta · margin term``. ``beta: auto`` is the beta whose margin term has
    ``balance_target`` of the gradient norm at the steered modules (chosen and recorded per
    extraction: loss_beta, grad_share_* in metrics.json and the extraction cache's meta.json)."""

    beta: Any = field(default=1.0e4, metadata={RULE: auto_or_number})
    balance_target: float = 0.5
    margin: float = 0.99

    def __post_init__(self) -> None:
        auto_or_number("loss.beta", self.beta)
        if not 0 < self.balance_target < 1:
            raise SteerexpError(
                f"loss.balance_target={self.balance_target} must be strictly between 0 and 1"
            )


@dataclass
class FileSource:
    """A group whose rows may come from a file (README "Bring your own concept")."""

    name: str = MISSING
    #: a file (jsonl, json, csv, txt) or an offline Hugging Face dataset; null: none
    path: str | None = None
    #: auto (from the extension; a directory = hf) | jsonl | json | csv | txt | hf
    format: str = "auto"
    #: split of a Hugging Face DatasetDict (null: its only split)
    split: str | None = None


@dataclass
class DatasetConfig(FileSource):
    """``dataset``: the contrast pairs directions are extracted from; with ``path``,
    from that file."""

    #: persona mode: a template with {persona}, the two personas, and the suffix rows
    template: str | None = None
    positive: str | None = None
    negative: str | None = None
    #: persona mode: suffix list (a file in steerexp/data or a path)
    suffixes: str | None = None
    #: persona mode: add every word-prefix of each suffix as its own pair
    truncate: bool = False
    #: fraction of rows held out (seeded by split_seed, disjoint) for an eval reading this same
    #: file and split; null: 0.25 when the eval reads it, else 0
    holdout: float | None = None
    split_seed: int = 0
    #: at most this many pairs (a seeded subsample, stable across runs); null = all
    max_pairs: int | None = None


@dataclass
class EvalConfig(FileSource):
    """``eval``: questions, coefficient grid and sampling of the dose-response; with
    ``path``, the questions come from that file instead of ``questions``."""

    system: str | None = None
    #: ``{choices}`` becomes "'Answer: A' or 'Answer: B'" (answer_prefix + each option)
    prompt_template: str = "{question}\n\nThink briefly, then end with exactly {choices}."
    #: null: derived from the options, ``<answer_prefix>\s*\(?(A|B)(?!\w)``; else exactly one
    #: capture group
    answer_regex: str | None = None
    #: appended by judge=forced when the regex never matched
    answer_prefix: str = "Answer:"
    #: the answer tokens (from the file's options when ``path`` is set)
    answers: list[str] | None = None
    #: ``{id, text, trait_answer}`` items (from the file when ``path`` is set)
    questions: list[dict[str, Any]] | None = None
    #: coefficient grid, in units of coeff_units; must contain 0
    coeffs: list[float] = field(default_factory=lambda: [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0])
    repeats: int = 4
    max_new_tokens: int = 192
    do_sample: bool = True
    temperature: float = 1.0
    min_p: float | None = 0.05
    repetition_penalty: float | None = 1.0
    max_batch_size: int = 32
    #: generation processes on CPU: auto = one per usable core for small models (width < 1024,
    #: one thread each; results are identical to 1), else 1 | an integer
    workers: Any = field(default="auto", metadata={RULE: auto_or_count})

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise SteerexpError(f"eval.temperature={self.temperature} must be > 0")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise SteerexpError(f"eval.min_p={self.min_p} must be between 0 and 1 (or null: off)")
        if self.repetition_penalty is not None and not self.repetition_penalty > 0:
            raise SteerexpError(
                f"eval.repetition_penalty={self.repetition_penalty} must be > 0 (or null: off)"
            )
        at_least("eval.repeats", self.repeats, 1)
        at_least("eval.max_new_tokens", self.max_new_tokens, 1)
        at_least("eval.max_batch_size", self.max_batch_size, 1)
        auto_or_count("eval.workers", self.workers)


@dataclass
class JudgeConfig:
    """``judge``: how a completion becomes a log-ratio."""

    name: str = MISSING


@dataclass
class LoggerConfig:
    """``logger``: where run metrics go besides the run dir."""

    name: str = MISSING


@dataclass
class WandbLogger(LoggerConfig):
    """Weights & Biases: one run per job, grouped by sweep; mode offline | online | disabled."""

    project: str = "steerexp"
    entity: str | None = None
    mode: WandbMode = WandbMode.offline


@dataclass
class KLConfig:
    #: held-out neutral prompts (one per line; a file in steerexp/data or a path) that
    #: ``coeff_units=kl`` calibrates on and every run's coherence cost is measured on
    prompts: str = "neutral_prompts.txt"


@dataclass
class ExtractConfig:
    batch_size: int = 16
    #: gradient rows: all = summed over tokens, the gradient with respect to a bias added at every
    #: position, exactly what the intervention adds (``g . v`` is steering's first-order effect) |
    #: last = at the read token only (identically zero for ``nll``: the last position predicts
    #: no token of the sequence)
    grad_tokens: RowTokens = RowTokens.all

    def __post_init__(self) -> None:
        at_least("extract.batch_size", self.batch_size, 1)


@dataclass
class FitConfig:
    #: refit the direction on this many bootstrap resamples of the contrast pairs (0: none); their
    #: slopes' spread widens ``slope_lo``/``slope_hi`` (steerexp.pipeline.refits)
    bootstrap: int = 8

    def __post_init__(self) -> None:
        zero_or_at_least_two("fit.bootstrap", self.bootstrap, "no refits", "bootstrap refits")


@dataclass
class RandomNullConfig:
    """``k`` seeded random unit directions per ranking group (0: no null); they are the
    ``random`` method at seeds ``seed .. seed + k - 1``; their rows are sampled with the run's
    ``seed`` (common random numbers with the run).
    A cached null of fewer directions is extended, never recomputed (nested seeds)."""

    k: int = 64
    seed: int = 1000000

    def __post_init__(self) -> None:
        zero_or_at_least_two("random_null.k", self.k, "no null", "random directions")
        check_seed("random_null.seed", self.seed, max(self.k, 1))


#: ``ranking.correction`` name -> its statsmodels ``multipletests`` method.
CORRECTIONS = {"holm": "holm", "bh": "fdr_bh"}


@dataclass
class RankingConfig:
    """How a sweep's ranking reads across its runs (``steerexp.sweep``)."""

    #: multiple-comparison correction of ``p_null`` over the whole sweep (every table; ``random``
    #: rows excluded unless they are all that was swept): holm | bh (Benjamini-Hochberg FDR)
    correction: Correction = Correction.holm
    #: re-run the top k rows on a fresh seed to check they replicate (0: none)
    confirm: int = 0

    def __post_init__(self) -> None:
        at_least("ranking.confirm", self.confirm, 0)


@dataclass
class Config:
    """The whole experiment (``conf/config.yaml`` picks each group's option)."""

    model: ModelConfig = MISSING
    module: ModuleConfig = MISSING
    method: MethodConfig = MISSING
    loss: LossConfig = MISSING
    dataset: DatasetConfig = MISSING
    eval: EvalConfig = MISSING
    judge: JudgeConfig = MISSING
    logger: LoggerConfig = MISSING
    seed: int = 0
    #: norm: c is a fraction of the module's mean activation norm | raw: c as is | kl: multiples
    #: of the c* whose p95 per-token KL on the neutral prompts is 1 nat
    coeff_units: CoeffUnits = CoeffUnits.norm
    kl: KLConfig = field(default_factory=KLConfig)
    #: regress on symlog(c) = sign(c) log(1 + |c|) or on c itself (linear)
    regress_x: RegressX = RegressX.symlog
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    random_null: RandomNullConfig = field(default_factory=RandomNullConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    #: extraction cache; null: steerexp.cache_dir()/extractions
    cache_dir: str | None = None
    #: the sweep report's folder name under multirun_reports/; null: <date>_<time>-<id>
    report_name: str | None = None
    report_overwrite: bool = False
    #: let a sweep command that differs from the one recorded in ``hydra.sweep.dir`` add its
    #: jobs there (one ranking over both); without it such a command is refused
    sweep_extend: bool = False

    def __post_init__(self) -> None:
        check_seed("seed", self.seed)


#: Per group: the schema, and for groups with variants the key that picks one and its schemas.
GROUPS: dict[str, type] = {
    "model": ModelConfig,
    "module": ModuleConfig,
    "method": MethodConfig,
    "loss": LossConfig,
    "dataset": DatasetConfig,
    "eval": EvalConfig,
    "judge": JudgeConfig,
    "logger": LoggerConfig,
}
#: The top-level keys that hold a fixed sub-config (not a group).
SECTIONS: dict[str, type] = {
    "kl": KLConfig,
    "extract": ExtractConfig,
    "random_null": RandomNullConfig,
    "ranking": RankingConfig,
    "fit": FitConfig,
}
#: Groups whose options differ in keys: the key that picks the variant, and each variant's schema
#: (stored as ``<variant>_base``); an option matching none follows the group's base schema.
VARIANTS: dict[str, tuple[str, dict[str, type]]] = {
    "method": (
        "kind",
        {
            "fisher": FisherMethod,
            "fisher_dual": FisherDualMethod,
            "vjp_steer": VjpMethod,
            "random": RandomMethod,
        },
    ),
    "loss": ("name", {"reprpo_margin": MarginLoss}),
    "logger": ("name", {"wandb": WandbLogger}),
}
