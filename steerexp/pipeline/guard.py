"""The Hydra callback that checks output dirs before Hydra writes anything there (issue 24).

:class:`OutputGuard` is first under ``hydra.callbacks`` (``conf/config.yaml``): Hydra calls
``on_run_start``/``on_multirun_start`` after composing the config and before it creates the run
dir, saves ``.hydra/*.yaml`` or writes ``multirun.yaml``; the checks are
:mod:`steerexp.store.guard`'s, plus "no finished run of another config in this run dir".
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from steerexp.config.errors import SteerexpError
from steerexp.store.guard import check_output_dir, check_sweep_command


def check_run_start(config: DictConfig) -> None:
    """A single run: its dir's place, and no finished run of another config in it."""
    # Imported here: Hydra builds this callback before every run, and these load torch and the
    # stages; only a run dir that already holds a run needs them.
    from steerexp.pipeline.checks import plain
    from steerexp.pipeline.experiment import _finished
    from steerexp.store.artifacts import config_hash

    run_dir = Path(str(config.hydra.run.dir))
    check_output_dir("hydra.run.dir", run_dir, OmegaConf.select(config, "cache_dir"))
    try:
        resolved = plain(OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]))
    except Exception:  # noqa: BLE001 -- unresolvable here (e.g. ${hydra:...}): the run checks later
        return
    _finished(run_dir, resolved, config_hash(resolved))


def check_multirun_start(config: DictConfig) -> None:
    sweep_dir = Path(str(config.hydra.sweep.dir))
    check_output_dir("hydra.sweep.dir", sweep_dir, OmegaConf.select(config, "cache_dir"))
    check_sweep_command(sweep_dir, config)


def _refuse(check: Any, config: DictConfig) -> None:
    """Run ``check``; bad input ends the process in one line, exit 2 (Hydra would only warn)."""
    try:
        check(config)
    except SteerexpError as e:
        print(f"steerexp: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


class OutputGuard(Callback):
    """The checks of the module docstring, before Hydra writes into the run or sweep dir."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse(check_run_start, config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse(check_multirun_start, config)
