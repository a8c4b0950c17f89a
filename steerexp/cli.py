"""The Hydra task: compose ``steerexp/conf/config.yaml`` (plus the user's ``--config-dir`` /
``hydra.searchpath`` dirs) and the overrides, call :func:`steerexp.pipeline.run`.

A failing job never raises out of the task (Hydra would skip the end-of-sweep ranking); it
is recorded in its run dir and in the run context (:mod:`steerexp.store.context`), and :func:`cli` exits non-zero afterwards.
Command-line mistakes that Hydra would report as a traceback, or not at all, are caught by
:func:`check_args` first, in one line (exit 2). Exit codes: 0 ok; 2 bad input (a
:class:`SteerexpError`: on the command line, in a single run, or in every job of a sweep); 1 a
run/job failed for another reason, some jobs of a sweep failed, or the ranking could not be
written; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

import hydra
import yaml
from omegaconf import DictConfig, OmegaConf

from steerexp import CONF_DIR
from steerexp.config import compose as config
from steerexp.config import schema
from steerexp.config.errors import SteerexpError, choice_error, error_text, plain_name
from steerexp.store import context
from steerexp.store.guard import check_output_dir, check_writable_dir
from steerexp.sweep import callbacks

log = logging.getLogger("steerexp")

#: A short random id drawn once per process: default run/sweep dir names end in it, so two
#: runs started in the same second never share a dir.
RUN_ID = secrets.token_hex(3)
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+-]+")
MAX_JOB_NAME = 160
#: Keys whose value becomes one file or folder name: no separators, no ``..``.
NAME_KEYS = ("report_name", "hydra.job.name")


def job_dir_name(override_dirname: Any) -> str:
    """A job-dir name from Hydra's ``override_dirname``: runs of ``/``, spaces, quotes etc. become
    ``_`` (so ``model.path=Org/Name`` or ``cache_dir=/abs`` never nest), and a name longer than
    :data:`MAX_JOB_NAME` is cut and ends in a hash of the whole. The job number in front keeps
    names unique even when two values sanitise alike."""
    text = str(override_dirname)
    name = _UNSAFE.sub("_", text)
    if len(name) > MAX_JOB_NAME:
        name = name[: MAX_JOB_NAME - 9] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return name


OmegaConf.register_new_resolver("steerexp.run_id", lambda: RUN_ID, use_cache=True, replace=True)
OmegaConf.register_new_resolver("steerexp.job_dir_name", job_dir_name, replace=True)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """One job: run the experiment; record (don't raise) a failure."""
    from hydra.core.hydra_config import HydraConfig

    # Imported here: the pipeline loads torch, transformers and nnsight (seconds), which argument
    # checks, --help and `steerexp export` never need.
    from steerexp.pipeline import run

    out_dir = HydraConfig.get().runtime.output_dir
    ctx = context.current()
    ctx.jobs.append(out_dir)
    try:
        return run(cfg, out_dir).get("score")
    except Exception as e:
        ctx.failed.append(f"{out_dir}: {error_text(e)}")
        if isinstance(e, SteerexpError):
            ctx.bad_input.append(ctx.failed[-1])
        log.error("job failed: %s", ctx.failed[-1])
        return None


def _parse(args: list[str]) -> list[Any]:
    """Hydra's parse of each ``key=value`` argument; a parse error names the argument and how to quote."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    parsed = []
    for arg in args:
        try:
            parsed.extend(parser.parse_overrides([arg]))
        except OverrideParseException as e:
            key, _, value = arg.partition("=")
            lines = [
                ln for ln in str(e).splitlines() if ln and not ln.startswith(("See ", "Error "))
            ]
            why = lines[0] if lines else "syntax error"
            if "{N}" in value:
                hint = f"'{{N}}' must be quoted for Hydra: '{key}=\"{value}\"'"
            elif value.lstrip().startswith("[") and not value.rstrip().endswith("]"):
                hint = "a list needs its closing ']', e.g. eval.coeffs=[-0.5,0,0.5]"
            else:
                hint = f"quote values with brackets, parentheses, braces or spaces: '{key}=\"{value}\"'"
            raise SteerexpError(f"cannot parse override {arg!r} ({why}); {hint}") from None
    return parsed


def _yaml(rel: str) -> dict[str, Any]:
    """A config file as plain YAML (no interpolation resolved)."""
    return yaml.safe_load((CONF_DIR / rel).read_text()) or {}


def _groups() -> list[str]:
    return sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")


def _values(override: Any) -> list[Any]:
    """The value(s) of one override: a sweep list's elements, else the single value."""
    from hydra.core.override_parser.types import ChoiceSweep

    value = override.value()
    return list(value.list) if isinstance(value, ChoiceSweep) else [value]


def _check_key_value(key: str, values: list[Any], add: bool) -> None:
    """``group.key`` / ``section.key`` / ``key`` must be a key of its schema and each value fit its
    type (``steerexp.config.compose``), and ``+`` (add) is only for keys the schema lacks; Hydra
    would answer each with a traceback."""
    from dataclasses import fields

    parts = key.split(".")
    if parts[0].split("/")[0] == "hydra" or "@" in key or "/" in key or len(parts) > 2:
        return
    sections = schema.SECTIONS
    if len(parts) == 1:
        if parts[0] in sections:
            return
        schemas, where = [schema.Config], ""
        valid = config.root_keys()
    elif parts[0] in schema.GROUPS:
        kinds = schema.VARIANTS.get(parts[0], ("", {}))[1].values()
        schemas, where = [schema.GROUPS[parts[0]], *kinds], f"{parts[0]}."
        valid = config.group_keys(parts[0])
    elif parts[0] in sections:
        schemas, where = [sections[parts[0]]], f"{parts[0]}."
        valid = {f.name for f in fields(sections[parts[0]])}
    else:
        raise choice_error("key of the config", parts[0], config.root_keys())
    name = parts[-1]
    if name not in valid:
        raise choice_error(f"key of {where.rstrip('.') or 'the config'} (from {key})", name, valid)
    owner = next(c for c in schemas if name in {f.name for f in fields(c)})
    if add and owner is schemas[0]:
        raise SteerexpError(
            f"+{key}: {key} is already a key of the config; set it without the '+' ({key}=...)"
        )
    for v in values:
        if v is None or isinstance(v, bool | int | float | str | list | dict):
            if not (isinstance(v, str) and "${" in v):
                config.check_value(where, owner, name, v)


def _check_writable(key: str, value: str) -> None:
    """The static part of an output dir must be creatable and writable (else Hydra tracebacks)."""
    static = value.split("${", 1)[0]
    if "${" in value and not static.endswith("/"):
        static = static.rpartition("/")[0]
    try:
        check_writable_dir(key, static or ".")
    except SteerexpError as e:
        raise SteerexpError(
            str(e).replace(f"{key}={static or '.'!r}", f"{key}={value!r}")
        ) from None


def _config_dir(args: list[str]) -> str | None:
    """The value of Hydra's ``--config-dir DIR`` / ``-cd DIR`` / ``--config-dir=DIR``, if given."""
    for i, arg in enumerate(args):
        if arg in ("--config-dir", "-cd") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--config-dir="):
            return arg.partition("=")[2]
    return None


def check_args(args: list[str]) -> None:
    """Everything on the command line that Hydra would accept silently or answer with a traceback,
    checked before anything composes: parse errors (with a quoting hint), unknown group options
    (did-you-mean, the user's config dirs included), the user's own option files against their
    schemas, unknown ``+keys``, path-like names, and unwritable output dirs."""
    multirun = "-m" in args or "--multirun" in args
    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    overrides = _parse(candidates)
    groups = _groups()
    searchpath = [o.value() for o in overrides if o.key_or_group == "hydra.searchpath"]
    dirs = config.user_dirs(_config_dir(args), searchpath[-1] if searchpath else [])
    config.check_user_dirs(dirs)
    out_key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    out_value = str(_yaml("config.yaml")["hydra"][out_key.split(".")[1]]["dir"])
    for o in overrides:
        key = o.key_or_group
        if o.is_delete():
            continue
        values = _values(o)
        if key not in groups:
            _check_key_value(key, values, o.is_add())
        if key in groups:
            options = config.options(key, dirs)
            for v in values:
                if isinstance(v, str) and v not in options:
                    raise choice_error(f"{key} option", v, options)
                path = config.option_file(key, str(v), dirs)
                if key in schema.GROUPS and path is not None and path.parent.parent != CONF_DIR:
                    config.check_option_file(key, path)
        if key in NAME_KEYS:
            for v in values:
                if v is not None:
                    plain_name(key, v)
        if key in ("hydra.sweep.subdir", "hydra.output_subdir"):
            for v in values:
                if v is not None and (Path(str(v)).is_absolute() or ".." in Path(str(v)).parts):
                    raise SteerexpError(
                        f"{key}={v!r} must stay inside its parent dir (relative, no '..')"
                    )
        if key == out_key and len(values) == 1:
            out_value = str(values[0])
    static = out_value.split("${", 1)[0]
    if static:
        check_output_dir(out_key, static)
    _check_writable(out_key, out_value)


def _interrupted(multirun: bool) -> int:
    """Ctrl-C: rank the finished jobs of the sweep (the rest marked interrupted), say so in one line."""
    if not multirun:
        print("steerexp: interrupted (the run dir records status 'interrupted')", file=sys.stderr)
        return 130
    where = callbacks.rank_interrupted()
    print(f"steerexp: interrupted; {where}", file=sys.stderr)
    return 130


def cli() -> None:
    """Entry point of ``python -m steerexp`` and the ``steerexp`` console script; exit codes in the
    module docstring. ``steerexp export RUN_DIR ...`` hands the rest to :mod:`steerexp.export`."""

    args = sys.argv[1:]
    if args[:1] == ["export"]:
        # Imported here: the export formats load gguf/safetensors writers only this command needs.
        from steerexp.export import main as export_main

        sys.exit(export_main(args[1:]))
    multirun = "-m" in args or "--multirun" in args
    try:
        check_args(args)
    except SteerexpError as e:
        print(f"steerexp: error: {e}", file=sys.stderr)
        sys.exit(2)
    interrupted: list[bool] = []
    stderr = sys.stderr

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.append(True)
        # What Hydra prints of the interrupt is noise (a traceback, when it lands in Hydra's own
        # code); the one line below says what happened.
        sys.stderr = io.StringIO()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        main()
    except KeyboardInterrupt:
        sys.stderr = stderr
        sys.exit(_interrupted(multirun))
    except SystemExit:
        sys.stderr = stderr
        # Ctrl-C inside Hydra's own code (e.g. composing the next job's config) surfaces as
        # another error that Hydra reports and turns into exit 1: still an interruption.
        if interrupted:
            sys.exit(_interrupted(multirun))
        raise
    finally:
        sys.stderr = stderr
        signal.signal(signal.SIGINT, previous)
    ctx = context.current()
    if ctx.failed and not multirun:
        print(f"steerexp: error: {ctx.failed[-1].split(': ', 1)[1]}", file=sys.stderr)
        sys.exit(2 if ctx.bad_input else 1)
    if not multirun:
        return
    failed = max(len(ctx.failed), ctx.sweep_failed)
    if ctx.bad_input and len(ctx.bad_input) == len(ctx.jobs) == failed:
        print(
            f"steerexp: error: every job of the sweep failed on bad input; the last: "
            f"{ctx.bad_input[-1].split(': ', 1)[1]}",
            file=sys.stderr,
        )
        sys.exit(2)
    if failed:
        print(
            f"steerexp: {failed} job(s) of the sweep failed; their rows in ranking.md say why",
            file=sys.stderr,
        )
    if ctx.sweep_error:
        print(
            f"steerexp: error: the sweep's ranking could not be written: {ctx.sweep_error}",
            file=sys.stderr,
        )
    if failed or ctx.sweep_error:
        sys.exit(1)
