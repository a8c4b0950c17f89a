"""The Hydra task: compose ``conf/config.yaml`` + overrides, call :func:`steerexp.pipeline.run`.

A failing job never raises out of the task (Hydra would skip the end-of-sweep ranking); it
is recorded in its run dir and in :data:`FAILED`, and :func:`cli` exits non-zero afterwards.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from steerexp import CONF_DIR

log = logging.getLogger("steerexp")

#: ``"<job dir>: <error>"`` for each job of this process that failed.
FAILED: list[str] = []


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """One job: run the experiment; record (don't raise) a failure."""
    from hydra.core.hydra_config import HydraConfig

    from steerexp.pipeline import run

    out_dir = HydraConfig.get().runtime.output_dir
    try:
        return run(cfg, out_dir).get("score")
    except Exception as e:
        FAILED.append(f"{out_dir}: {type(e).__name__}: {' '.join(str(e).split())}")
        log.error("job failed: %s", FAILED[-1])
        return None


def cli() -> None:
    """Entry point of ``python -m steerexp``: exit 1 when the run, or any job of a sweep, failed."""
    from steerexp import callbacks

    main()
    if FAILED and "-m" not in sys.argv and "--multirun" not in sys.argv:
        print(f"steerexp: error: {FAILED[-1].split(': ', 1)[1]}", file=sys.stderr)
        sys.exit(1)
    failed = max(len(FAILED), callbacks.LAST_SWEEP_FAILED)
    if failed:
        print(f"steerexp: {failed} job(s) of the sweep failed; their rows in ranking.md say why", file=sys.stderr)
        sys.exit(1)
