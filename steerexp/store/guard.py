"""Output dirs checked before Hydra writes anything there (issue 24); the Hydra callback that
runs these checks is :class:`steerexp.pipeline.guard.OutputGuard`. Refused, in one line with
exit status 2:

- a run or sweep dir inside the steerexp package or a cache (it would overwrite shipped files
  such as the organism's ``config.json``);
- a single run into a dir that holds a finished run of another config (Hydra would first have
  rewritten that dir's ``.hydra/*.yaml``, so its record no longer matched its results);
- a sweep into a dir whose recorded command (:data:`RECORD`: swept axes and fixed overrides,
  result-neutral keys left out) differs, unless ``sweep_extend=true``; the same command resumes.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import steerexp
from steerexp.config.compose import result_neutral
from steerexp.config.errors import SteerexpError
from steerexp.store.atomic import atomic_write

#: The sweep dir's record of the command(s) whose jobs it holds.
RECORD = "sweep_command.json"
PACKAGE_DIR = Path(steerexp.__file__).resolve().parent


def check_output_dir(key: str, path: Path | str, cache_dir: str | None = None) -> None:
    """``path`` must not lie inside the steerexp package or a cache (``steerexp.cache_dir()``,
    and the ``cache_dir`` a config sets)."""
    target = Path(path).expanduser().resolve()
    roots = [("the steerexp package", PACKAGE_DIR), ("the cache", steerexp.cache_dir())]
    if cache_dir:
        roots.append(("the cache", Path(cache_dir)))
    for what, root in roots:
        root = root.expanduser().resolve()
        if target == root or root in target.parents:
            raise SteerexpError(
                f"{key}={str(path)!r} is inside {what} ({root}); steerexp writes run files there "
                "and could overwrite what it keeps (shipped checkpoint, cache entries): choose a "
                "dir outside it"
            )


def check_writable_dir(key: str, path: Path | str) -> None:
    """``path`` must be a directory steerexp can create and write a file in."""
    base = Path(path)
    try:
        base.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise SteerexpError(
            f"{key}={str(path)!r}: cannot create or write {str(base)!r} ({reason}); "
            "choose a writable directory"
        ) from None


def sweep_command(config: DictConfig) -> dict[str, dict[str, Any]]:
    """A sweep's swept axes (key -> sorted values) and fixed overrides (key -> value), from the
    sweeper's ``params`` and the command line; ``hydra.*`` and result-neutral keys left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep

    hyd = config.hydra
    params = OmegaConf.select(hyd, "sweeper.params", default=None) or {}
    lines = [f"{k}={v}" for k, v in params.items()] + [str(o) for o in hyd.overrides.task]
    swept: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    for o in OverridesParser.create().parse_overrides(lines):
        key = o.key_or_group
        if key.split(".")[0].split("/")[0] == "hydra" or result_neutral(key):
            continue
        if o.is_delete():
            fixed[key] = "~"
        elif o.is_sweep_override():
            value = o.value()
            text = o.input_line.split("=", 1)[1] if o.input_line else str(value)
            swept[key] = sorted(map(str, value.list)) if isinstance(value, ChoiceSweep) else text
        else:
            fixed[key] = o.get_value_element_as_str()
    return {"swept": swept, "fixed": fixed}


def _differs(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> str:
    parts = []
    for kind in ("swept", "fixed"):
        a, b = old.get(kind, {}), new.get(kind, {})
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                parts.append(f"{kind} {k}: {a.get(k, '<absent>')} -> {b.get(k, '<absent>')}")
    more = f" and {len(parts) - 3} more" if len(parts) > 3 else ""
    return "; ".join(parts[:3]) + more


def _recorded(sweep_dir: Path) -> list[dict[str, Any]]:
    """The commands recorded in ``sweep_dir`` (from :data:`RECORD`, else an older steerexp's
    ``multirun.yaml``); empty when none ran there."""
    try:
        return list(json.loads((sweep_dir / RECORD).read_text())["commands"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        return [sweep_command(OmegaConf.load(sweep_dir / "multirun.yaml"))]  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 -- no readable record: nothing to compare with
        return []


def check_sweep_command(sweep_dir: Path, config: DictConfig) -> None:
    """Refuse a command other than the recorded one(s) unless ``sweep_extend=true``; record it."""
    command = sweep_command(config)
    recorded = _recorded(sweep_dir)
    if command in recorded:
        return
    if recorded and not OmegaConf.select(config, "sweep_extend", default=False):
        raise SteerexpError(
            f"hydra.sweep.dir={str(sweep_dir)!r} holds the jobs of another sweep command "
            f"({_differs(recorded[-1], command)}); its ranking would mix both: choose a new "
            "hydra.sweep.dir, rerun the recorded command to resume, or add sweep_extend=true "
            "to rank both commands' jobs together"
        )
    body = json.dumps({"commands": [*recorded, command]}, indent=1, sort_keys=True)
    atomic_write(sweep_dir / RECORD, lambda p: p.write_text(body + "\n"))
