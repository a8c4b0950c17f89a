"""Shared test helpers: config composition and the tiny random model."""

from __future__ import annotations

from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from steerexp import CONF_DIR
from steerexp.core.models import LoadedModel, load_model


def compose_cfg(*overrides: str) -> DictConfig:
    """The full steerexp config with overrides, as ``python -m steerexp`` would compose it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def group(name: str, option: str) -> dict[str, Any]:
    """One config-group option as a plain dict (``group("loss", "nll")``)."""
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / name / f"{option}.yaml"), resolve=True)  # type: ignore[return-value]


def tiny() -> LoadedModel:
    return load_model(group("model", "tiny_random"))
