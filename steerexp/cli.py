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
from steerexp.errors import SteerexpError, choice_error, error_text

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
        FAILED.append(f"{out_dir}: {error_text(e)}")
        log.error("job failed: %s", FAILED[-1])
        return None


def check_group_overrides(args: list[str]) -> None:
    """Unknown ``group=option`` values (sweep lists included) fail here, in one line, with
    did-you-mean and the valid choices, before Hydra composes anything."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep

    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra"}
    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    for o in OverridesParser.create().parse_overrides(candidates):
        if o.key_or_group not in groups or o.is_delete():
            continue
        value = o.value()
        values = (
            value.list
            if isinstance(value, ChoiceSweep)
            else [value]
            if isinstance(value, str)
            else []
        )
        options = sorted(p.stem for p in (CONF_DIR / o.key_or_group).glob("*.yaml"))
        for v in values:
            if str(v) not in options:
                raise choice_error(f"{o.key_or_group} option", v, options)


def cli() -> None:
    """Entry point of ``python -m steerexp``: exit 1 when the run, or any job of a sweep, failed."""
    from steerexp import callbacks

    try:
        check_group_overrides(sys.argv[1:])
    except SteerexpError as e:
        print(f"steerexp: error: {e}", file=sys.stderr)
        sys.exit(2)
    main()
    if FAILED and "-m" not in sys.argv and "--multirun" not in sys.argv:
        print(f"steerexp: error: {FAILED[-1].split(': ', 1)[1]}", file=sys.stderr)
        sys.exit(1)
    failed = max(len(FAILED), callbacks.LAST_SWEEP_FAILED)
    if failed:
        print(
            f"steerexp: {failed} job(s) of the sweep failed; their rows in ranking.md say why",
            file=sys.stderr,
        )
        sys.exit(1)
