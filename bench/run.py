"""``make run`` from an empty cache: the default experiment's wall time against issue #21's target.

One ``python -m steerexp`` (the default organism run: ``random_null.k`` 64, ``fit.bootstrap`` 8)
in a child process with a fresh ``STEEREXP_CACHE`` that holds only a link to the built
checkpoint, so the extraction, the random null and the refits are all computed; torch threads
left to steerexp (no ``OMP_NUM_THREADS`` in the child's environment), as ``make run`` has them.
Reported: wall time (target < 60 s on this 2-core machine), the child's CPU time (itself and its
forked generation workers), the per-stage times from its ``metrics.json`` and the load average,
which on a shared machine moves the wall time and not the work.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.generate import REPO, child_env, organism_ready, run_overrides, seeded_cache
from steerexp.models.threads import USER_VARS

RESULTS = Path(__file__).resolve().parent / "results.json"
TARGET_WALL_S = 60.0


def timed_run(root: Path, name: str, ready: bool) -> tuple[float, dict[str, Any]]:
    """Wall seconds of one default run from an empty cache into ``root/name``, and its metrics
    (threads left to steerexp: the user's thread variables are dropped)."""
    cache = seeded_cache(root / f"cache-{name}", "organism" if ready else "tiny_random")
    env = {k: v for k, v in child_env(cache).items() if k not in USER_VARS}
    run_dir = root / name
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "steerexp", *run_overrides(ready), f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"default run failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, json.loads((run_dir / "metrics.json").read_text())


def default_run(root: Path, ready: bool) -> dict[str, Any]:
    """Wall and CPU seconds of one default run from an empty cache, and its metrics."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, metrics = timed_run(root, "run", ready)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mb": after.ru_maxrss / 1024,
        "stages_s": {
            k[5:-2]: v for k, v in metrics.items() if k.startswith("time_") and k.endswith("_s")
        },
        "torch_threads": metrics.get("torch_threads"),
        "null_k": metrics.get("null_k"),
        "null_cached": metrics.get("null_cached"),
        "status": metrics.get("status"),
    }


def main() -> None:
    """One default run, printed and recorded under ``run`` in ``bench/results.json``."""
    ready = organism_ready()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        res = default_run(Path(tmp), ready)
    res.update(
        target_wall_s=TARGET_WALL_S,
        load_avg_start=load0,
        load_avg_end=os.getloadavg()[0],
        cpus=os.cpu_count(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        command="python -m bench run",
    )
    ok = "PASS" if res["wall_s"] < TARGET_WALL_S else "FAIL"
    stages = ", ".join(f"{k} {v:.1f}" for k, v in res["stages_s"].items())
    print(
        f"default run from an empty cache: {res['wall_s']:.1f} s wall (target < {TARGET_WALL_S:.0f} s) "
        f"{ok}; {res['cpu_s']:.1f} CPU-s, peak RSS {res['peak_rss_mb']:.0f} MB, torch threads "
        f"{res['torch_threads']}; stages (s): {stages}; load average {load0:.1f} -> "
        f"{res['load_avg_end']:.1f} on {res['cpus']} CPUs",
        flush=True,
    )
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["run"] = res
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
