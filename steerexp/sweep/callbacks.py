"""Hydra callbacks: rank a multirun when it ends (``ranking.csv``/``ranking.md``/plot) and count failures.

Registered in ``conf/config.yaml`` under ``hydra.callbacks``. The pipeline records per-job failures in
the job dirs instead of raising (Hydra skips ``on_multirun_end`` when a job raises), so this callback
sees every job; it records the sweep's tally in the run context (:mod:`steerexp.store.context`:
``sweep_failed``, ``sweep_error``), which :func:`steerexp.cli.cli` reads afterwards
to exit non-zero when a job failed or the ranking could not be written, and calls
:func:`rank_interrupted` on Ctrl-C (Hydra calls no callback then).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from steerexp.store import context

log = logging.getLogger(__name__)


class RankingCallback(Callback):
    """On multirun end: ``build_report(hydra.sweep.dir)``, print the tables, count the failed jobs.

    ``reports_root``: where the copy goes (None -> ``./multirun_reports``); ``print_tables``: echo
    ``ranking.md`` to stdout. The report's folder name is the config's ``report_name`` when set, else
    ``<date>_<time>-<id>`` of the sweep dir; with ``ranking.confirm: k`` the top k rows are re-run
    (:mod:`steerexp.sweep.confirm`) and the report rebuilt with the result; ``report_overwrite`` decides what happens when another
    sweep's report has that name (see :func:`steerexp.sweep.report.build_report`). Never raises: a report
    error is logged and kept in the run context's ``sweep_error``.
    """

    def __init__(self, reports_root: str | None = None, print_tables: bool = True) -> None:
        self.reports_root = reports_root
        self.print_tables = print_tables

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Reset the sweep's tally so a second sweep in one process starts clean."""
        ctx = context.current()
        ctx.sweep_failed, ctx.sweep_error, ctx.sweep = 0, None, (config, self)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Build and print the ranking of the sweep that just ended."""
        self.rank(config)
        context.current().sweep = None

    def rank(self, config: DictConfig, interrupted: bool = False) -> Path | None:
        """Write the ranking (jobs never started are ``interrupted`` rows when ``interrupted``);
        returns the sweep dir, or None when the report failed (the reason is in the run context's
        ``sweep_error``)."""
        ctx = context.current()
        ctx.sweep_failed, ctx.sweep_error = 0, None
        try:
            # Imported here: Hydra builds this callback for every run; the report loads matplotlib.
            from steerexp.sweep.report import DEFAULT_REPORTS_ROOT, build_report

            raw = OmegaConf.select(config, "hydra.sweep.dir", default=None)
            if raw is None:
                raise ValueError("config has no hydra.sweep.dir")
            sweep_dir = Path(str(raw))
            name = OmegaConf.select(config, "report_name")
            overwrite = bool(OmegaConf.select(config, "report_overwrite"))
            root = Path(self.reports_root) if self.reports_root else DEFAULT_REPORTS_ROOT
            report = functools.partial(
                build_report,
                sweep_dir,
                reports_root=root,
                name=str(name) if name else None,
                overwrite=overwrite,
                interrupted=interrupted,
            )
            df = report()
            k = int(OmegaConf.select(config, "ranking.confirm", default=0) or 0)
            if k > 0:
                # Imported here: only ranking.confirm needs it (pandas, and the pipeline later).
                from steerexp.sweep.confirm import confirm

                confirm(sweep_dir, df, k)
                df = report()  # with the confirmation section
            runs = df[~df["pooled"].astype(bool)]
            ctx.sweep_failed = int((~runs["status"].isin(["ok", "degenerate"])).sum())
            if self.print_tables:
                print((sweep_dir / "ranking.md").read_text(), flush=True)
            log.info("ranking written to %s and %s", sweep_dir, df.attrs.get("report_dir"))
            return sweep_dir
        except Exception as e:  # noqa: BLE001 -- a report problem must not turn a finished sweep into a crash
            ctx.sweep_error = f"{type(e).__name__}: {' '.join(str(e).split())}"
            log.error("could not build the sweep ranking: %s", ctx.sweep_error)
            return None


def rank_interrupted() -> str:
    """After Ctrl-C: rank what finished, the rest ``interrupted``; one line saying where it went."""
    ctx = context.current()
    if ctx.sweep is None:
        return "no sweep was running, so no ranking was written"
    config, callback = ctx.sweep
    callback.print_tables = False
    sweep_dir = callback.rank(config, interrupted=True)
    if sweep_dir is None:
        return f"the partial ranking could not be written: {ctx.sweep_error}"
    return (
        f"partial ranking written to {sweep_dir / 'ranking.md'} "
        f"({ctx.sweep_failed} job(s) not ok); rerun the same command to resume"
    )
