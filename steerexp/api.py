"""The notebook API: compose a config, run one experiment or a sweep in-process, read the results.

``compose`` builds the typed config exactly as the command line does (same checks first);
``run`` calls :func:`steerexp.pipeline.run`, the function the CLI's Hydra task calls, so the
cache, the artifacts and the numbers are the CLI's; ``sweep`` runs Hydra's multirun in-process
(the CLI's own task and ranking callback), so job dirs, ``ranking.md`` and the report copy are
those of ``steerexp -m``. The one-call building blocks for any HF model (``extract``, ``fit``,
``steer``) are in :mod:`steerexp.blocks`.

Where typing happens: overrides are checked against the schemas before anything composes
(:func:`steerexp.cli.check_args`), Hydra composes the typed config, and the run makes sure of
each section once (:func:`steerexp.config.compose.typed_run`) before its stages read them.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf

from steerexp import CONF_DIR, cli
from steerexp.config.errors import SteerexpError
from steerexp.directions import Directions
from steerexp.store import context


@dataclass
class RunResult:
    """One finished run: ``metrics`` (metrics.json), ``dose`` (the dose-response rows,
    dose_response.csv), ``directions`` (directions.safetensors) and where they are (``run_dir``)."""

    run_dir: Path
    metrics: dict[str, Any]
    dose: pd.DataFrame
    directions: Directions
    config: DictConfig | None = None

    @classmethod
    def load(cls, run_dir: str | Path) -> RunResult:
        """Read a finished run dir (made by ``steerexp`` or :func:`run`)."""
        import json

        run_dir = Path(run_dir)
        hydra_cfg = run_dir / ".hydra" / "config.yaml"
        return cls(
            run_dir=run_dir,
            metrics=json.loads((run_dir / "metrics.json").read_text()),
            dose=pd.read_csv(run_dir / "dose_response.csv"),
            directions=Directions.load(run_dir),
            config=OmegaConf.load(hydra_cfg) if hydra_cfg.is_file() else None,  # type: ignore[arg-type]
        )


@dataclass
class Ranking:
    """A sweep's ranking: ``table`` (one row per job, best score first, as ranking.csv),
    ``tables`` (ranking.md, the markdown tables), ``sweep_dir`` and ``report_dir`` (the copy)."""

    table: pd.DataFrame
    tables: str
    sweep_dir: Path
    report_dir: Path | None = None
    failed: int = 0
    swept_keys: list[str] = field(default_factory=list)

    def _repr_markdown_(self) -> str:
        return self.tables


def _check(overrides: Sequence[str], out_key: str, out_dir: str) -> list[str]:
    """The CLI's checks (:func:`steerexp.cli.check_args`), output dir included; returns the list."""
    args = [str(o) for o in overrides]
    flags = [a for a in args if a.startswith("-")]
    if flags:
        raise SteerexpError(
            f"overrides {flags} are command-line flags; pass key=value overrides only "
            "(steerexp.sweep runs the multirun)"
        )
    cli.check_args(
        [*(["-m"] if out_key == "hydra.sweep.dir" else []), f"{out_key}={out_dir}", *args]
    )
    return args


def _compose(args: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name="config", overrides=args)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=args)


def _with_dir(overrides: Iterable[str], config_dir: str | Path | None) -> list[str]:
    """``config_dir`` (your own options, as ``--config-dir``) as Hydra's ``hydra.searchpath``."""
    args = [str(o) for o in overrides]
    if config_dir is not None:
        args.append(f"hydra.searchpath=[file://{Path(config_dir).resolve()}]")
    return args


def compose(overrides: Iterable[str] = (), config_dir: str | Path | None = None) -> DictConfig:
    """The typed config of ``steerexp <overrides>``: ``conf/config.yaml`` with the overrides, after
    the CLI's checks (unknown keys and options, wrong types and unparsable values are one-line
    :class:`~steerexp.config.errors.SteerexpError`s). ``compose(["method=random"]).method.kind``.
    ``config_dir``: a dir of your own options (``<dir>/model/my_llama.yaml``), as ``--config-dir``."""
    args = _with_dir(overrides, config_dir)
    return _compose(_check(args, "hydra.run.dir", tempfile.gettempdir()))


def _stamp() -> str:
    """``<date>/<time>-<random id>``: a fresh default dir name per call (as the CLI's, per process)."""
    return time.strftime("%Y-%m-%d/%H-%M-%S") + f"-{secrets.token_hex(3)}"


def _write_hydra_dir(run_dir: Path, cfg: DictConfig, overrides: list[str]) -> None:
    """``.hydra/config.yaml`` and ``overrides.yaml``, as Hydra writes them into a CLI run dir."""
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, hydra_dir / "config.yaml")
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(overrides))


def run(
    overrides: Iterable[str] = (),
    run_dir: str | Path | None = None,
    progress: bool = True,
    config_dir: str | Path | None = None,
) -> RunResult:
    """Run one experiment in this process: ``steerexp.run(["method=mean_diff"])`` does what
    ``steerexp method=mean_diff`` does (same config, cache, artifacts and numbers), into
    ``run_dir`` (default ``outputs/<date>/<time>-<id>`` under the working directory). A run dir
    that already holds this finished config is reused, as on the command line; errors raise.
    ``config_dir``: a dir of your own options, as ``--config-dir``."""
    # Imported here: the pipeline loads torch, transformers and nnsight; compose() needs none.
    from steerexp.pipeline import run as run_pipeline

    args = _with_dir(overrides, config_dir)
    given = [a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")]
    target = Path(run_dir) if run_dir is not None else Path(given[-1] if given else "outputs")
    if run_dir is None and not given:
        target = target / _stamp()
    checked = _check(args, "hydra.run.dir", str(target))
    cfg = _compose([a for a in checked if not a.startswith("hydra.run.")])
    task = [a for a in checked if not a.startswith("hydra")]
    _write_hydra_dir(target, cfg, task)
    run_pipeline(cfg, target, progress=progress)
    result = RunResult.load(target)
    result.config = cfg
    return result


def _param(key: str, values: Any) -> str:
    """``{"method": ["a", "b"]}`` -> ``method=a,b`` (a string is passed through as Hydra syntax)."""
    if isinstance(values, str):
        return f"{key}={values}"
    if not isinstance(values, Sequence) or not values:
        raise SteerexpError(f"sweep params[{key!r}]={values!r} must be a non-empty list of values")
    return f"{key}=" + ",".join(str(v) for v in values)


def sweep(
    params: Mapping[str, Any],
    overrides: Iterable[str] = (),
    sweep_dir: str | Path | None = None,
    reports_root: str | Path | None = None,
    print_tables: bool = False,
    config_dir: str | Path | None = None,
) -> Ranking:
    """Run a sweep in this process, as ``steerexp -m key=a,b ... <overrides>`` does: one job per
    combination of ``params`` (``{"method": ["pca_diff", "random"], "module": ["hs"]}``), each into
    ``<sweep_dir>/<n>_<overrides>`` (default ``multirun/<date>/<time>-<id>``), then the ranking
    (ranking.md/csv/png in the sweep dir and a copy under ``reports_root``, default
    ``./multirun_reports``). A failed job is a row saying why, not an exception. ``config_dir``:
    a dir of your own options, as ``--config-dir``."""
    # Imported here: the report loads matplotlib.
    from steerexp.sweep.report import DEFAULT_REPORTS_ROOT, SOURCE_FILE

    target = Path(sweep_dir) if sweep_dir is not None else Path("multirun") / _stamp()
    axes = [_param(k, v) for k, v in params.items()]
    args = _check(_with_dir([*axes, *overrides], config_dir), "hydra.sweep.dir", str(target))
    extra = [f"hydra.sweep.dir={target}", f"hydra.callbacks.ranking.print_tables={print_tables}"]
    if reports_root is not None:
        extra.append(f"hydra.callbacks.ranking.reports_root={reports_root}")
    argv = sys.argv
    n_failed = len(context.current().failed)
    sys.argv = ["steerexp", "-m", *args, *extra]
    try:
        cli.main()
    except SystemExit as e:
        if e.code:
            raise SteerexpError(f"the sweep stopped (exit {e.code}); see the log above") from None
    finally:
        sys.argv = argv
    ctx = context.current()
    if ctx.sweep_error:
        raise SteerexpError(f"the sweep's ranking could not be written: {ctx.sweep_error}")
    table = pd.read_csv(target / "ranking.csv")
    root = Path(reports_root) if reports_root is not None else DEFAULT_REPORTS_ROOT
    source = sorted(root.glob(f"*/{SOURCE_FILE}"))
    report = next(
        (p.parent for p in source if p.read_text().strip() == str(target.resolve())), None
    )
    return Ranking(
        table=table,
        tables=(target / "ranking.md").read_text(),
        sweep_dir=target,
        report_dir=report,
        failed=max(len(ctx.failed) - n_failed, ctx.sweep_failed),
        swept_keys=[k for k in params],
    )
