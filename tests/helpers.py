"""Shared test helpers: config composition and the tiny random model."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

# Registers the organism and tiny_random model builders (also for scripts that import helpers).
import steerexp.organism  # noqa: F401
from steerexp import CONF_DIR
from steerexp.config.compose import group_config
from steerexp.data.records import Question
from steerexp.models.loading import LoadedModel, load_model
from steerexp.models.steering import Steering
from steerexp.store import metrics


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

#: A fast tiny-model experiment: few pairs, one repeat, short completions, no null.
TINY_RUN = (
    "model=tiny_random",
    "dataset.max_pairs=4",
    "eval.repeats=1",
    "eval.max_new_tokens=4",
    "eval.coeffs=[-0.5,0,0.5]",
    # the random model never answers in 4 tokens: the forced judge keeps its fit defined
    "judge=forced",
    "random_null.k=0",
)


def one_line(info: Any) -> str:
    """The message of a ``pytest.raises`` error, asserted to be one line."""
    text = str(info.value)
    assert "\n" not in text
    return text


def sweep_args(tmp: Path, *overrides: str, reports: bool = True) -> list[str]:
    """The arguments of ``steerexp -m <overrides>`` into ``tmp/sweep``; with ``reports``, its
    report goes to ``tmp/reports`` under the name ``test``."""
    args = ["-m", *overrides, f"hydra.sweep.dir={tmp / 'sweep'}"]
    if reports:
        args += [f"hydra.callbacks.ranking.reports_root={tmp / 'reports'}", "report_name=test"]
    return args


def sweep_cmd(tmp: Path, *overrides: str, reports: bool = True) -> list[str]:
    """:func:`sweep_args` as a ``python -m steerexp`` command line (for a process of its own)."""
    return [sys.executable, "-m", "steerexp", *sweep_args(tmp, *overrides, reports=reports)]


def steerexp_in_process(
    *args: str, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m steerexp <args>`` in this process, as :func:`subprocess.run` would report it
    (exit status, stdout, stderr): the same CLI code, without a new interpreter importing torch
    and transformers (seconds per call). ``env`` replaces the environment for the call. A test
    of what only a separate process shows (signals, hash seeds, per-process ids) runs one."""
    from steerexp import cli
    from steerexp.store import context

    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd, saved_env = sys.argv, Path.cwd(), dict(os.environ)
    code: int | str | None = 0
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        os.chdir(cwd)
        sys.argv = ["steerexp", *args]
        with context.fresh(), redirect_stdout(out), redirect_stderr(err):
            try:
                cli.cli()
            except SystemExit as e:
                code = e.code
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    status = code if isinstance(code, int) else (0 if code is None else 1)
    return subprocess.CompletedProcess(["steerexp", *args], status, out.getvalue(), err.getvalue())


def run_sweep(
    tmp: Path,
    *overrides: str,
    reports: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """:func:`sweep_args`' sweep, run in this process from the repo root."""
    return steerexp_in_process(*sweep_args(tmp, *overrides, reports=reports), env=env)


#: The journal's table header, in order: the label, then the journal group of
#: :class:`~steerexp.store.metrics.RunMetrics` (the one definition of every metric).
JOURNAL_HEADER = ["method", *metrics.names("journal")]


def cli_exit(tmp: Path, *args: str) -> tuple[int, str]:
    """``python -m steerexp model=tiny_random <args>`` in this process (a run dir under ``tmp``
    unless ``args`` set one): its exit status and the last line it printed to stderr."""
    argv = ["model=tiny_random", *(a for arg in args for a in arg.split(" "))]
    if not any(a.startswith("hydra.run.dir=") for a in argv):
        argv.append(f"hydra.run.dir={tmp / 'run'}")
    out = steerexp_in_process(*argv)
    lines = out.stderr.strip().splitlines()
    return out.returncode, lines[-1] if lines else ""


#: Two modules, two questions and seeded unit directions for generation-row tests on the tiny
#: model (the ``row_ev``/``row_spec`` fixtures of conftest.py go with them).
ROW_MODULES = ["model.layers.1", "model.layers.2"]
ROW_QS = [
    Question("a", "Would you tell the truth?", "Yes"),
    Question("b", "Would you hide the mistake?", "No"),
]


def row_steering(seed: int) -> Steering:
    """A seeded random unit direction on :data:`ROW_MODULES`, scale 4."""
    g = torch.Generator().manual_seed(seed)
    return Steering(
        {
            m: torch.nn.functional.normalize(torch.randn(64, generator=g), dim=0)
            for m in ROW_MODULES
        },
        {m: 4.0 for m in ROW_MODULES},
    )
