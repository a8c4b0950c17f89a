"""Shared test helpers: config composition and the tiny random model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

# Registers the organism and tiny_random model builders (also for scripts that import helpers).
import steerexp.organism  # noqa: F401
from steerexp import CONF_DIR
from steerexp.config.compose import group_config
from steerexp.models.loading import LoadedModel, load_model


def compose_cfg(*overrides: str) -> DictConfig:
    """The full steerexp config with overrides, as ``python -m steerexp`` would compose it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def group(name: str, option: str) -> dict[str, Any]:
    """One config-group option as composed (schema defaults filled), as a plain dict
    (``group("loss", "nll")``); keys that follow the model's resolve against ``tiny_random``."""
    return group_config(name, option, *([] if name == "model" else ["model=tiny_random"]))


def tiny() -> LoadedModel:
    return load_model(group("model", "tiny_random"))


REPO = Path(__file__).resolve().parent.parent


def sweep_cmd(tmp: Path, *overrides: str, reports: bool = True) -> list[str]:
    """``python -m steerexp -m <overrides>`` into ``tmp/sweep``; with ``reports``, its report goes
    to ``tmp/reports`` under the name ``test``."""
    cmd = [sys.executable, "-m", "steerexp", "-m", *overrides, f"hydra.sweep.dir={tmp / 'sweep'}"]
    if reports:
        cmd += [f"hydra.callbacks.ranking.reports_root={tmp / 'reports'}", "report_name=test"]
    return cmd


def run_sweep(
    tmp: Path,
    *overrides: str,
    reports: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 900,
) -> subprocess.CompletedProcess[str]:
    """Run :func:`sweep_cmd` from the repo root and capture its output."""
    return subprocess.run(
        sweep_cmd(tmp, *overrides, reports=reports),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


#: The journal's table columns, in order, stated here rather than imported from the
#: package so a changed column list fails the tests.
JOURNAL_HEADER = [
    "method",
    "slope",
    "r2",
    "valid_frac",
    "effect_size",
    "p_value",
    "score",
    "min",
    "max",
]


def cli_exit(monkeypatch: Any, capsys: Any, tmp: Path, *args: str) -> tuple[int, str]:
    """``python -m steerexp model=tiny_random <args>`` in this process (a run dir under ``tmp``
    unless ``args`` set one): its exit status and the last line it printed to stderr."""
    import pytest

    from steerexp import cli
    from steerexp.store import context

    argv = ["model=tiny_random", *(a for arg in args for a in arg.split(" "))]
    if not any(a.startswith("hydra.run.dir=") for a in argv):
        argv.append(f"hydra.run.dir={tmp / 'run'}")
    monkeypatch.setattr(sys, "argv", ["steerexp", *argv])
    with context.fresh(), pytest.raises(SystemExit) as info:
        cli.cli()
    lines = capsys.readouterr().err.strip().splitlines()
    return int(info.value.code or 0), lines[-1] if lines else ""
