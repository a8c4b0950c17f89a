"""A 2 methods x 2 modules multirun vs one single run, each a fresh ``python -m steerexp`` process.

- sweep: ``python -m steerexp -m method=pca_diff,mean_diff module=hs,o_proj hydra.sweep.dir=<tmp>``
  (4 jobs in one process with the basic launcher: one model load, one extraction per module);
- single: ``python -m steerexp hydra.run.dir=<tmp>`` (the default run).

Both on the organism (on ``model=tiny_random dataset=honesty eval=white_lie`` while the organism is
not ready, see ``bench.generate``), each with its own fresh ``STEEREXP_CACHE`` temp dir that holds
only a link to the already built checkpoint: build time does not count and the extraction cache
starts empty. The sweep's ranking copy goes to a temp dir, not ``multirun_reports/``. Measured:
wall time ratio sweep / single, target <= 2.5x. One run of each (they take tens of seconds),
single first.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from bench.generate import organism_ready, run_overrides, run_steerexp, seeded_cache

TARGET_RATIO = 2.5
STAGES = ["load", "extract", "fit", "generate", "judge", "regress", "total"]
SWEEP = ["-m", "method=pca_diff,mean_diff", "module=hs,o_proj"]


def stage_seconds(run_dirs: list[Path]) -> str:
    """``stage=seconds`` summed over the runs' ``metrics.json`` (where the time went)."""
    metrics = [json.loads(p.read_text()) for d in run_dirs if (p := d / "metrics.json").exists()]
    return " ".join(
        f"{s}={sum(float(m.get(f'time_{s}_s') or 0.0) for m in metrics):.1f}" for s in STAGES
    )


def main() -> None:
    """Wall time of the 4-job sweep over that of one default run."""
    ready = organism_ready()
    model = "organism" if ready else "tiny_random"
    extra = run_overrides(ready)
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        root = Path(tmp)
        single = run_steerexp(
            [*extra, f"hydra.run.dir={root}/run"], seeded_cache(root / "cache-single", model)
        )
        sweep = run_steerexp(
            [
                *SWEEP,
                *extra,
                f"hydra.sweep.dir={root}/sweep",
                f"hydra.callbacks.ranking.reports_root={root}/reports",
            ],
            seeded_cache(root / "cache-sweep", model),
        )
        jobs = sorted(p.parent for p in (root / "sweep").glob("*/metrics.json"))
        n_ok = sum(
            1 for d in jobs if json.loads((d / "metrics.json").read_text()).get("status") == "ok"
        )
        print(f"python -m steerexp {' '.join([*SWEEP, *extra])}: {n_ok}/4 jobs ok", flush=True)
        print(f"  in-run seconds, single: {stage_seconds([root / 'run'])}", flush=True)
        print(f"  in-run seconds, sweep (sum over jobs): {stage_seconds(jobs)}", flush=True)
    ratio = sweep / single
    print(
        f"{'sweep (4 jobs) / single run':<34} {sweep:>14.1f} s {single:>14.1f} s {ratio:>7.2f}x   "
        f"target <= {TARGET_RATIO:.1f}x {'PASS' if ratio <= TARGET_RATIO else 'FAIL'}",
        flush=True,
    )


if __name__ == "__main__":
    main()
