"""steerexp: Hydra-configured experiments for activation steering of language models.

Pipeline (one module each): extract -> methods (fit direction) -> intervene -> generate
-> judge -> regress, called in that order by :func:`steerexp.pipeline.run`.
"""

from __future__ import annotations

import os
from pathlib import Path

__version__ = "0.1.0"

#: The Hydra config tree, shipped inside the package as package data and found by its path
#: next to this file, so a wheel install finds it from any working directory. Users add their
#: own options with ``--config-dir``/``hydra.searchpath`` (docs/configuration.md);
#: ``STEEREXP_CONF_DIR`` replaces the whole tree.
CONF_DIR = Path(os.environ.get("STEEREXP_CONF_DIR", Path(__file__).resolve().parent / "conf"))

#: Package data (suffix lists, prompt sets) shipped inside the package.
DATA_DIR = Path(__file__).resolve().parent / "data"


def cache_dir() -> Path:
    """Root of steerexp's on-disk caches (organism checkpoint, extractions).

    ``STEEREXP_CACHE`` overrides; default ``$XDG_CACHE_HOME/steerexp`` (``~/.cache/steerexp``).
    """
    env = os.environ.get("STEEREXP_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(xdg) / "steerexp"


#: Third-party caches steerexp's runs would otherwise write under ``~/.cache`` and
#: ``~/.local/share`` (matplotlib's font cache, W&B's cache and staging dirs): under
#: :func:`cache_dir` unless the variable is already set.
TOOL_CACHE_VARS = {
    "MPLCONFIGDIR": "matplotlib",
    "WANDB_CACHE_DIR": "wandb/cache",
    "WANDB_DATA_DIR": "wandb/data",
}


def _tool_cache_dirs() -> None:
    for var, sub in TOOL_CACHE_VARS.items():
        os.environ.setdefault(var, str(cache_dir() / sub))


#: The public API, imported on first use so ``import steerexp`` stays cheap (name -> module).
_PUBLIC = {
    "compose": "steerexp.api",
    "run": "steerexp.api",
    "RunResult": "steerexp.api",
    "Ranking": "steerexp.api",
    "extract": "steerexp.blocks",
    "fit": "steerexp.blocks",
    "steer": "steerexp.blocks",
    "Activations": "steerexp.blocks",
    "Directions": "steerexp.directions",
    "Direction": "steerexp.directions",
}
__all__ = [*_PUBLIC, "sweep", "cache_dir", "CONF_DIR", "DATA_DIR", "__version__"]


def __getattr__(name: str) -> object:
    """``steerexp.run``, ``steerexp.steer``... from their modules on first use. ``steerexp.sweep``
    is the :mod:`steerexp.sweep` package, which is callable (:func:`steerexp.api.sweep`)."""
    import importlib

    if name == "sweep":
        return importlib.import_module("steerexp.sweep")
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'steerexp' has no attribute {name!r}")


def _register_configs() -> None:
    # Imported here: Hydra's ConfigStore is only needed once a config is composed.
    from steerexp.config.compose import register_configs

    register_configs()


_tool_cache_dirs()
_register_configs()
