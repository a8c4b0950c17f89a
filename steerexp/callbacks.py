"""Hydra callbacks: rank a multirun when it ends (``ranking.csv``/``ranking.md``/plot) and count failures.

Registered in ``conf/config.yaml`` under ``hydra.callbacks``. The pipeline records per-job failures in
the job dirs instead of raising (Hydra skips ``on_multirun_end`` when a job raises), so this callback
sees every job; ``steerexp.__main__`` reads ``steerexp.callbacks.LAST_SWEEP_FAILED`` afterwards to exit
non-zero when a job failed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# Jobs of the last ranked sweep whose status is not "ok" (failed or missing). Read it as a module
# attribute (``steerexp.callbacks.LAST_SWEEP_FAILED``): ``from ... import`` would copy the old value.
LAST_SWEEP_FAILED: int = 0
# Why the last report could not be built (one line), or None when it was written.
LAST_SWEEP_ERROR: str | None = None


class RankingCallback(Callback):
    """On multirun end: ``build_report(hydra.sweep.dir)``, print the tables, set ``LAST_SWEEP_FAILED``.

    ``reports_root``: where the copy goes (None -> ``<repo>/multirun_reports``); ``print_tables``: echo
    ``ranking.md`` to stdout. The report's folder name is the config's ``report_name`` when set, else
    ``<date>_<time>`` of the sweep dir. Never raises: a report error is logged and kept in
    ``LAST_SWEEP_ERROR``.
    """

    def __init__(self, reports_root: str | None = None, print_tables: bool = True) -> None:
        self.reports_root = reports_root
        self.print_tables = print_tables

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Reset the module-level results so a second sweep in one process starts clean."""
        global LAST_SWEEP_FAILED, LAST_SWEEP_ERROR
        LAST_SWEEP_FAILED, LAST_SWEEP_ERROR = 0, None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Build and print the ranking of the sweep that just ended."""
        global LAST_SWEEP_FAILED, LAST_SWEEP_ERROR
        LAST_SWEEP_FAILED, LAST_SWEEP_ERROR = 0, None
        try:
            from steerexp.report import DEFAULT_REPORTS_ROOT, build_report

            raw = OmegaConf.select(config, "hydra.sweep.dir", default=None)
            if raw is None:
                raise ValueError("config has no hydra.sweep.dir")
            sweep_dir = Path(str(raw))
            name = OmegaConf.select(config, "report_name", default=None)
            root = Path(self.reports_root) if self.reports_root else DEFAULT_REPORTS_ROOT
            df = build_report(sweep_dir, reports_root=root, name=str(name) if name else None)
            LAST_SWEEP_FAILED = int((df["status"] != "ok").sum())
            if self.print_tables:
                print((sweep_dir / "ranking.md").read_text(), flush=True)
            log.info("ranking written to %s and %s", sweep_dir, root)
        except Exception as e:  # noqa: BLE001 -- a report problem must not turn a finished sweep into a crash
            LAST_SWEEP_ERROR = f"{type(e).__name__}: {' '.join(str(e).split())}"
            log.error("could not build the sweep ranking: %s", LAST_SWEEP_ERROR)
