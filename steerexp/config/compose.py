"""Typed configs: the schemas of :mod:`steerexp.config.schema` in Hydra's ConfigStore, and the
same schemas applied to configs handed over from outside Hydra.

:func:`register_configs` runs when ``steerexp`` is imported. Where typing happens: Hydra composes
a run's config against the schemas (the CLI, :func:`steerexp.api.compose`), the run makes sure
of every group section once (:func:`typed_run`) and hands the stages typed sections, which they
read and never re-type. A public call that takes a group config as a plain dict
(:mod:`steerexp.blocks`, :func:`steerexp.stages.fit.methods.fit_direction`, a test) passes it
through :func:`typed` once, which fills the schema's defaults and rejects unknown keys and wrong
types in one line, so Python never carries a second default.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, ValidationError

from steerexp import CONF_DIR
from steerexp.config.errors import SteerexpError, choice_error
from steerexp.config.schema import GROUPS, SECTIONS, VARIANTS, Config, rule_of

#: Config keys that cannot change a run's results: where reports and caches go, the logger,
#: how the sweep's ranking reads (``ranking.*``), the ``sweep_extend`` flag, and generation parallelism and chunking (samples are identical;
#: judged log-probs agree to 1e-5, not bitwise). A finished run dir is reused across them, a
#: sweep's recorded command ignores them, and job dir names leave them out.
RESULT_NEUTRAL_KEYS = (
    "report_name",
    "report_overwrite",
    "cache_dir",
    "logger",
    "ranking",
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
    for key in RESULT_NEUTRAL_KEYS:
        if key in GROUPS:
            keys += [f"{key}.{k}" for k in sorted(group_keys(key))]
        elif key in SECTIONS:
            keys += [f"{key}.{f.name}" for f in fields(SECTIONS[key])]
    return keys


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


def choices(schema: type, key: str) -> list[str] | None:
    """The valid values of a choice field (an Enum in the schema), or None for other fields."""
    hint = typing.get_type_hints(schema)[key]
    kinds = [hint, *typing.get_args(hint)]
    enum = next((k for k in kinds if isinstance(k, type) and issubclass(k, Enum)), None)
    if enum is None:
        return None
    return [m.value for m in enum] + (["null"] if type(None) in kinds else [])


def check_value(where: str, schema: type, key: str, value: Any) -> None:
    """``value`` must fit ``schema.key`` as it is: booleans are true or false (no "yes"), a choice
    field one of its values, the rest as OmegaConf converts them; a misfit is a one-line error
    naming ``<where>key`` (``where``: ``"model."``, or ``""`` at the top); a field with its own
    rule (``auto`` or a number) is checked by that rule."""
    rule = rule_of(schema, key)
    if rule is not None:
        rule(f"{where}{key}", value)
    if _type_name(schema, key).startswith("true or false") and not isinstance(value, bool):
        raise SteerexpError(f"{where}{key}={value!r} must be true or false")
    try:
        OmegaConf.merge(OmegaConf.structured(schema), {key: value})
    except ValidationError:
        valid = choices(schema, key)
        if valid is not None:
            raise choice_error(f"{where}{key}", value, valid) from None
        raise SteerexpError(f"{where}{key}={value!r} must be {_type_name(schema, key)}") from None


def validate(cfg: DictConfig) -> Config:
    """The composed config as typed objects, built once: each schema's ``__post_init__`` checks
    its ranges and cross-field rules (a one-line :class:`SteerexpError` naming the key)."""
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def typed_run(cfg: DictConfig) -> DictConfig:
    """The run's one conversion: ``cfg`` with every group section typed by its own schema (its
    variant's), what :func:`steerexp.pipeline.run` hands the stages. A Hydra-composed config is
    that already and is returned as it is; a section composed under its group's base schema (a
    user's option naming no ``<variant>_base``) is rebuilt with its variant's defaults."""
    out = cfg
    for group in GROUPS:
        section = cfg[group]
        if _is_typed(group, section):
            continue
        if out is cfg:
            out = copy.deepcopy(cfg)
        out[group] = typed(group, OmegaConf.to_container(section, resolve=True, enum_to_str=True))  # type: ignore[arg-type]
    return out


def _is_typed(group: str, cfg: Mapping[str, Any]) -> bool:
    """``cfg`` is a typed config of its schema (the variant's, for a group with variants)."""
    schema = schema_of(group, cfg)
    return isinstance(cfg, DictConfig) and issubclass(OmegaConf.get_type(cfg) or dict, schema)


def typed(group: str, cfg: Mapping[str, Any]) -> DictConfig:
    """``cfg`` as its schema's typed config: defaults filled in; an unknown key or a value of the
    wrong type is a one-line error. A config Hydra composed is returned as it is; one built from a
    plain dict is read-only and shared by every equal dict."""
    if _is_typed(group, cfg):
        return cfg  # type: ignore[return-value]
    schema = schema_of(group, cfg)
    return _typed(_Plain(group, json.dumps(cfg, sort_keys=True, default=repr), schema, cfg))


@dataclass(frozen=True)
class _Plain:
    """A plain group config, equal to another (and hashed) by its group and content only."""

    group: str
    content: str
    schema: type = field(compare=False)
    cfg: Mapping[str, Any] = field(compare=False)


@functools.lru_cache(maxsize=256)
def _typed(plain: _Plain) -> DictConfig:
    """Typed configs built from plain dicts, by group and content: building one costs
    milliseconds (an in-process cache hit of an extraction takes about one)."""
    out = _build(plain.group, plain.schema, plain.cfg)
    OmegaConf.set_readonly(out, True)
    return out


def _build(group: str, schema: type, cfg: Mapping[str, Any]) -> DictConfig:
    kinds = {f.name: str(f.type) for f in fields(schema)}
    for key in cfg:
        if key not in kinds:
            raise choice_error(f"key of {group} ({schema.__name__})", key, kinds)
        if kinds[key] == "bool" and not isinstance(cfg[key], bool):
            check_value(f"{group}.", schema, str(key), cfg[key])
    try:
        built: DictConfig = OmegaConf.merge(OmegaConf.structured(schema), cfg)  # type: ignore[assignment]
    except ValidationError:
        for key in cfg:
            check_value(f"{group}.", schema, str(key), cfg[key])
        raise
    try:
        complete = not OmegaConf.missing_keys(built)
    except InterpolationResolutionError:
        # a group section alone (a module's ``${model.layer_frac}``): its range rules run when
        # the composed config is validated
        complete = False
    if complete:
        OmegaConf.to_object(built)  # the schema's __post_init__ range checks
    return built


def user_dirs(config_dir: str | None = None, searchpath: Sequence[Any] = ()) -> list[Path]:
    """The user's config dirs in Hydra's search order, which puts them after the package's own
    tree: ``--config-dir DIR`` first, then each ``hydra.searchpath`` entry (``file://DIR``,
    ``pkg://module`` or a plain path; one with an interpolation is left to Hydra). A dir that does
    not exist is a one-line error (Hydra would only warn, or trace back)."""
    found: list[Path] = []
    if config_dir is not None:
        found.append(_existing_dir("--config-dir", config_dir, Path(config_dir)))
    for entry in searchpath:
        text = str(entry)
        if "${" in text:
            continue
        scheme, sep, rest = text.partition("://")
        if not sep:
            scheme, rest = "file", text
        if scheme == "file":
            found.append(_existing_dir("hydra.searchpath", text, Path(rest)))
        elif scheme == "pkg":
            found.append(_existing_dir("hydra.searchpath", text, _package_dir(rest)))
    return found


def _existing_dir(key: str, value: str, path: Path | None) -> Path:
    if path is None or not path.is_dir():
        raise SteerexpError(f"{key} {value!r}: no such config directory")
    return path.resolve()


def _package_dir(name: str) -> Path | None:
    """The folder of the importable package ``name`` (``pkg://`` entries), or None."""
    module = name.strip("/").replace("/", ".")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def options(group: str, dirs: Sequence[Path] = ()) -> list[str]:
    """The option names of a config group: ``<group>/*.yaml`` in the package's tree and in the
    user's config ``dirs`` (:func:`user_dirs`)."""
    return sorted({p.stem for d in (CONF_DIR, *dirs) for p in (Path(d) / group).glob("*.yaml")})


def option_file(group: str, option: str, dirs: Sequence[Path] = ()) -> Path | None:
    """The file Hydra reads for ``group=option``: the first match in search order."""
    return next(
        (p for d in (CONF_DIR, *dirs) if (p := Path(d) / group / f"{option}.yaml").is_file()),
        None,
    )


def check_user_dirs(dirs: Sequence[Path]) -> None:
    """A user's file at a path the package also ships (``model/organism.yaml``, ``config.yaml``)
    is never read, as the package's tree comes first in Hydra's search path: if its content
    differs, say so instead of ignoring it silently."""
    for d in dirs:
        for builtin in sorted(CONF_DIR.rglob("*.yaml")):
            rel = builtin.relative_to(CONF_DIR)
            path = Path(d) / rel
            if path.is_file() and builtin.read_bytes() != path.read_bytes():
                raise SteerexpError(
                    f"{path}: steerexp ships {rel.as_posix()} too, and Hydra reads the package's "
                    "first; give yours another name (or set STEEREXP_CONF_DIR to replace the "
                    "whole config tree)"
                )


def check_option_file(group: str, path: Path) -> None:
    """A group option's YAML against its schema, before Hydra composes it: every key must be the
    schema's (the variant's when its defaults list names ``<variant>_base``) and every plain
    value fit its type; a misfit is a one-line error naming the file."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        why = " ".join(str(e).split())
        raise SteerexpError(f"{path}: cannot read it as YAML ({why})") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise SteerexpError(f"{path}: a {group} option must be a mapping of keys to values")
    defaults = raw.pop("defaults", None) or []
    variants = VARIANTS.get(group, ("", {}))[1]
    bases = [d.removesuffix("_base") for d in defaults if isinstance(d, str)]
    schema = next((variants[b] for b in bases if b in variants), GROUPS[group])
    keys = _names(schema)
    required = [f.name for f in fields(schema) if f.default == MISSING and f.name not in raw]
    if required:
        raise SteerexpError(
            f"{path}: a {group} option must set {', '.join(required)} ({schema.__name__})"
        )
    for key, value in raw.items():
        if key not in keys:
            base = next((f"{v}_base" for v, c in variants.items() if key in _names(c)), None)
            hint = f" (the {base} schema has it: add 'defaults: [{base}, _self_]')" if base else ""
            error = choice_error(f"key of {group} ({schema.__name__})", key, keys)
            raise SteerexpError(f"{path}: {error}{hint}")
        if not (isinstance(value, str) and "${" in value):
            try:
                check_value(f"{group}.", schema, str(key), value)
            except SteerexpError as e:
                raise SteerexpError(f"{path}: {e}") from None


def _names(schema: type) -> set[str]:
    return {f.name for f in fields(schema)}


def group_config(group: str, option: str, *overrides: str) -> dict[str, Any]:
    """The ``group`` option ``option`` as Hydra composes it (schema defaults and bases merged;
    interpolations resolved against the other groups' defaults or ``overrides``), as a plain
    dict; an unknown option gives a did-you-mean error. Composing takes a Hydra start-up
    (~0.2 s), so each result is kept; callers get their own copy."""
    valid = options(group, user_dirs(searchpath=_searchpath(overrides)))
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


def _searchpath(overrides: Sequence[str]) -> list[Any]:
    """The entries of a ``hydra.searchpath=[...]`` override among ``overrides``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for o in OverridesParser.create().parse_overrides([a for a in overrides if "searchpath" in a]):
        if o.key_or_group == "hydra.searchpath" and isinstance(o.value(), list):
            return list(o.value())
    return []
