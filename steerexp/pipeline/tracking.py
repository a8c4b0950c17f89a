"""Run loggers (``conf/logger/*.yaml``): ``none`` and Weights & Biases, one W&B run per job.

The pipeline calls ``logger = make_logger(cfg.logger)``, then ``logger.start(cfg, run_dir)``,
``logger.log(metrics, dose, plot)`` and ``logger.finish(status)``. W&B runs are grouped by sweep and
carry the option names as top-level config keys (``method``, ``module``, ``loss``, ``model``...), so
parallel-coordinates and table views over a sweep work as they are. ``offline`` mode (default) needs
no network; ``make wandb-sync`` uploads the runs later. Results already on disk matter more than the
logging of them: a W&B error while logging or finishing is reported as a warning, not raised.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf

from steerexp.config.errors import SteerexpError, choice_error
from steerexp.config.registry import Registry
from steerexp.store.artifacts import jsonable
from steerexp.store.columns import IDENTITY_GROUPS

log = logging.getLogger(__name__)

# Config groups whose chosen option name becomes a top-level W&B config key.
GROUPS = (*IDENTITY_GROUPS, "logger")
WANDB_MODES = ("offline", "online", "disabled")


class RunLogger(Protocol):
    """What the pipeline needs from a run logger."""

    def start(self, cfg: DictConfig, run_dir: Path) -> None: ...

    def log(self, metrics: dict[str, Any], dose: pd.DataFrame, plot: Path | None) -> None: ...

    def finish(self, status: str) -> None: ...


LOGGERS: Registry[type] = Registry("logger")


def make_logger(logger_cfg: Mapping[str, Any]) -> RunLogger:
    """The logger named by ``logger_cfg.name``, given its typed config (the run's ``cfg.logger``)."""
    cls = LOGGERS.get(str(logger_cfg["name"]))
    return cls(logger_cfg)


@LOGGERS.register("none")
class NoneLogger:
    """Logs nothing: the run directory holds every result."""

    def __init__(self, logger_cfg: DictConfig | None = None) -> None:
        self.logger_cfg = logger_cfg

    def start(self, cfg: DictConfig, run_dir: Path) -> None:
        """Nothing to start."""

    def log(self, metrics: dict[str, Any], dose: pd.DataFrame, plot: Path | None) -> None:
        """Nothing to log."""

    def finish(self, status: str) -> None:
        """Nothing to finish."""


def run_group(run_dir: Path) -> str:
    """W&B group: ``<date>_<time>`` of the sweep dir for a multirun job, of the run dir otherwise."""
    run_dir = Path(run_dir).resolve()
    base = run_dir.parent if (run_dir.parent / "multirun.yaml").is_file() else run_dir
    return "_".join(base.parts[-2:])


def _overrides(run_dir: Path) -> list[str]:
    """The job's override strings from ``.hydra/overrides.yaml`` (empty when absent)."""
    try:
        items = yaml.safe_load((Path(run_dir) / ".hydra" / "overrides.yaml").read_text()) or []
    except (OSError, yaml.YAMLError):
        return []
    return [str(i) for i in items] if isinstance(items, list) else []


def wandb_config(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Top-level option names and scalars (``method: pca_diff``, ``seed: 0``) plus the nested config."""
    try:
        full = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 -- e.g. ${hydra:...} outside a Hydra app; the raw config still helps
        full = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(full, dict)
    flat: dict[str, Any] = {k: v for k, v in full.items() if not isinstance(v, (dict, list))}
    for group in GROUPS:
        node = full.get(group)
        if isinstance(node, dict) and node.get("name") is not None:
            flat[group] = str(node["name"])
    flat.update(
        sweep=run_group(run_dir), job=Path(run_dir).name, overrides=_overrides(run_dir), cfg=full
    )
    return flat


@LOGGERS.register("wandb")
class WandbLogger:
    """One W&B run per job: config (option names + nested config), summary = metrics, dose table, plot."""

    def __init__(self, logger_cfg: DictConfig) -> None:
        self.project = str(logger_cfg.project)
        self.entity = logger_cfg.entity
        self.mode = str(logger_cfg.mode)
        if self.mode not in WANDB_MODES:
            raise choice_error("wandb mode", self.mode, WANDB_MODES)
        self.run: Any = None

    def start(self, cfg: DictConfig, run_dir: Path) -> None:
        """Open this job's run under ``run_dir/wandb/`` (no network in offline mode)."""
        import wandb

        config = wandb_config(cfg, run_dir)
        name = "|".join(str(config.get(k, "?")) for k in ("method", "module", "loss", "model"))
        try:
            self.run = wandb.init(
                project=self.project,
                entity=self.entity,
                mode=self.mode,
                dir=str(run_dir),
                group=config["sweep"],
                name=name,
                job_type="steer",
                config=config,
                reinit="finish_previous",
                settings=wandb.Settings(console="off", x_disable_stats=True, save_code=False),
            )
        except Exception as e:  # noqa: BLE001 -- W&B raises many types; report one line
            raise SteerexpError(
                f"wandb.init failed (mode={self.mode}): {type(e).__name__}: {e}"
            ) from e
        info = {
            "id": self.run.id,
            "name": name,
            "group": config["sweep"],
            "project": self.project,
            "mode": self.mode,
            "dir": str(getattr(self.run.settings, "sync_dir", "") or ""),
        }
        (Path(run_dir) / "wandb_run.json").write_text(json.dumps(info, indent=1) + "\n")

    def log(self, metrics: dict[str, Any], dose: pd.DataFrame, plot: Path | None) -> None:
        """Summary = metrics; a table of every generation; the mean curve as history; the plot."""
        if self.run is None:
            return
        try:
            import wandb

            self.run.summary.update(jsonable(dict(metrics)))
            if len(dose):
                self.run.log(
                    {"dose_response": wandb.Table(dataframe=dose.reset_index(drop=True))},
                    commit=False,
                )
                if {"coeff", "log_ratio"} <= set(dose.columns):
                    valid = dose[dose["valid"].astype(bool)] if "valid" in dose else dose
                    self.run.define_metric("curve/coeff", summary="none")
                    self.run.define_metric(
                        "curve/mean_log_ratio", step_metric="curve/coeff", summary="none"
                    )
                    for c, y in valid.groupby("coeff")["log_ratio"].mean().items():
                        self.run.log({"curve/coeff": float(c), "curve/mean_log_ratio": float(y)})
            if plot is not None and Path(plot).is_file():
                self.run.log({"dose_response_plot": wandb.Image(str(plot))})
        except Exception as e:  # noqa: BLE001 -- results are on disk already; logging is best effort
            log.warning("wandb logging failed: %s: %s", type(e).__name__, e)

    def finish(self, status: str) -> None:
        """Record the status and close the run (exit code 1 when the job failed)."""
        if self.run is None:
            return
        try:
            self.run.summary["status"] = status
            self.run.finish(exit_code=0 if status == "ok" else 1)
        except Exception as e:  # noqa: BLE001 -- see log()
            log.warning("wandb finish failed: %s: %s", type(e).__name__, e)
        self.run = None
