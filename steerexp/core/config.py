"""Typed configs: the schemas of :mod:`steerexp.core.schema` in Hydra's ConfigStore, and the
same schemas applied to configs handed over from outside Hydra.

:func:`register_configs` runs when ``steerexp`` is imported. Code given a group config as a plain
dict (a test, a script) passes it through :func:`typed`, which fills the schema's defaults and
rejects unknown keys and wrong types in one line, so Python never carries a second default.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError

from steerexp import CONF_DIR
from steerexp.core.errors import SteerexpError, choice_error
from steerexp.core.schema import GROUPS, VARIANTS, Config

#: Config keys that cannot change a run's results: where reports and caches go, the logger,
#: the ``sweep_extend`` flag, and generation parallelism and chunking (samples are identical;
#: judged log-probs agree to 1e-5, not bitwise). A finished run dir is reused across them, a
#: sweep's recorded command ignores them, and job dir names leave them out.
RESULT_NEUTRAL_KEYS = (
    "report_name",
    "report_overwrite",
    "cache_dir",
    "logger",
    "sweep_extend",
    "eval.workers",
    "eval.max_batch_size",
)
#: Overrides that change results but stay out of job dir names (paths and prompt texts hold
#: ``/`` and braces); the job number in front keeps such names unique.
UNNAMED_KEYS = (
    "dataset.path",
    "eval.path",
    "dataset.template",
    "eval.prompt_template",
    "eval.system",
)


def result_neutral(key: str) -> bool:
    """Whether an override key (``logger.mode``, ``+eval.workers``) is in :data:`RESULT_NEUTRAL_KEYS`."""
    key = key.lstrip("+~")
    return any(key == k or key.startswith(f"{k}.") for k in RESULT_NEUTRAL_KEYS)


def job_name_excluded_keys() -> list[str]:
    """Hydra's ``override_dirname.exclude_keys`` (exact keys): :data:`UNNAMED_KEYS` and every
    result-neutral key, the logger group's own keys spelled out."""
    keys = [*UNNAMED_KEYS, *RESULT_NEUTRAL_KEYS]
    keys += [f"{group}.{k}" for group in ("logger",) for k in sorted(group_keys(group))]
    return keys


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


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (``steerexp_schema`` and the group bases), and
    the resolver ``conf/config.yaml`` takes the job-name exclusions from."""
    from hydra.core.config_store import ConfigStore

    OmegaConf.register_new_resolver(
        "steerexp.job_name_excluded", job_name_excluded_keys, replace=True
    )

    cs = ConfigStore.instance()
    cs.store(name="steerexp_schema", node=Config)
    for group, (_key, variants) in VARIANTS.items():
        for name, node in variants.items():
            cs.store(group=group, name=f"{name}_base", node=node)


def schema_of(group: str, cfg: Mapping[str, Any]) -> type:
    """The schema a ``group`` config follows (its variant's, if the group has variants)."""
    base = GROUPS[group]
    key, variants = VARIANTS.get(group, ("", {}))
    return variants.get(str(cfg.get(key)), base) if key else base


def group_keys(group: str) -> set[str]:
    """Every key some schema of ``group`` has (for did-you-mean errors)."""
    classes = [GROUPS[group], *VARIANTS.get(group, ("", {}))[1].values()]
    return {f.name for c in classes for f in fields(c)}


def root_keys() -> set[str]:
    return {f.name for f in fields(Config)}


_TYPE_NAMES = {
    "bool": "true or false",
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "list[int]": "a list of integers",
    "list[float]": "a list of numbers",
    "list[str]": "a list of strings",
}


def _type_name(schema: type, key: str) -> str:
    kind = str({f.name: f.type for f in fields(schema)}[key])
    base, null = kind.removesuffix(" | None"), kind.endswith(" | None")
    return _TYPE_NAMES.get(base, base) + (" or null" if null else "")


def check_value(where: str, schema: type, key: str, value: Any) -> None:
    """``value`` must fit ``schema.key`` as it is: booleans are true or false (no "yes"), the rest
    as OmegaConf converts them; a misfit is a one-line error naming ``<where>key`` (``where``:
    ``"model."``, or ``""`` at the top)."""
    if _type_name(schema, key).startswith("true or false") and not isinstance(value, bool):
        raise SteerexpError(f"{where}{key}={value!r} must be true or false")
    try:
        OmegaConf.merge(OmegaConf.structured(schema), {key: value})
    except ValidationError:
        raise SteerexpError(f"{where}{key}={value!r} must be {_type_name(schema, key)}") from None


#: Typed configs already built from plain dicts, by group and content: building one costs
#: milliseconds (an in-process cache hit of an extraction takes about one).
_TYPED: dict[tuple[str, str], DictConfig] = {}
_TYPED_MAX = 256


def typed(group: str, cfg: Mapping[str, Any]) -> DictConfig:
    """``cfg`` as its schema's typed config: defaults filled in; an unknown key or a value of the
    wrong type is a one-line error. A config Hydra composed is returned as it is; one built from a
    plain dict is read-only and shared by every equal dict."""
    schema = schema_of(group, cfg)
    if isinstance(cfg, DictConfig) and issubclass(OmegaConf.get_type(cfg) or dict, schema):
        return cfg
    key = (group, json.dumps(cfg, sort_keys=True, default=repr))
    if key not in _TYPED:
        if len(_TYPED) >= _TYPED_MAX:
            _TYPED.clear()
        _TYPED[key] = _build(group, schema, cfg)
        OmegaConf.set_readonly(_TYPED[key], True)
    return _TYPED[key]


def _build(group: str, schema: type, cfg: Mapping[str, Any]) -> DictConfig:
    kinds = {f.name: str(f.type) for f in fields(schema)}
    for key in cfg:
        if key not in kinds:
            raise choice_error(f"key of {group} ({schema.__name__})", key, kinds)
        if kinds[key] == "bool" and not isinstance(cfg[key], bool):
            check_value(f"{group}.", schema, str(key), cfg[key])
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), cfg)  # type: ignore[return-value]
    except ValidationError:
        for key in cfg:
            check_value(f"{group}.", schema, str(key), cfg[key])
        raise


def options(group: str) -> list[str]:
    """The option names of a config group (``conf/<group>/*.yaml``)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def group_config(group: str, option: str, *overrides: str) -> dict[str, Any]:
    """The ``group`` option ``option`` as Hydra composes it (schema defaults and bases merged;
    interpolations resolved against the other groups' defaults or ``overrides``), as a plain
    dict; an unknown option gives a did-you-mean error. Composing takes a Hydra start-up
    (~0.2 s), so each result is kept; callers get their own copy."""
    valid = options(group)
    if option not in valid:
        raise choice_error(group, option, valid)
    return copy.deepcopy(_composed(group, option, overrides))


@functools.lru_cache(maxsize=128)
def _composed(group: str, option: str, overrides: tuple[str, ...]) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    args = [f"{group}={option}", *overrides]
    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name="config", overrides=args)
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=args)
    return OmegaConf.to_container(cfg[group], resolve=True)  # type: ignore[return-value]
