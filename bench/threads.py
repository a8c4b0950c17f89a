"""The default experiment beside a CPU-burning process: what sharing the machine costs a run.

Two ``python -m steerexp`` runs from an empty extraction cache, torch threads left to steerexp
(no ``OMP_NUM_THREADS`` in the child's environment, so :mod:`steerexp.models.threads` sizes
them), one alone and one beside a process that spins on one core. The slowdown (wall time
beside / alone) is reported against the share of the machine the burner leaves: with ``n``
usable CPUs and one burner a run is owed ``(n - 1) / n`` of the machine, so the target is a
slowdown of at most ``n / (n - 1)`` (torch's default threads spin-waiting on the burner's core
cost 3x, see ``docs/benchmarks.md``). Other load on the machine counts against both runs alike
only when it is steady: the load average is printed with the result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.generate import organism_ready
from bench.run import timed_run
from steerexp.models.threads import usable_cpus

RESULTS = Path(__file__).resolve().parent / "results.json"


def default_run(root: Path, name: str, ready: bool) -> tuple[float, int]:
    """Wall seconds of one default run into ``root/name`` and the torch threads it used."""
    seconds, metrics = timed_run(root, name, ready)
    return seconds, int(metrics.get("torch_threads", 0))


def main() -> None:
    ready = organism_ready()
    cpus = usable_cpus()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        alone, threads = default_run(Path(tmp), "alone", ready)
        burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            beside, _ = default_run(Path(tmp), "beside", ready)
        finally:
            burner.kill()
            burner.wait()
    slowdown = beside / alone
    target = cpus / (cpus - 1) if cpus > 1 else float("inf")
    ok = "PASS" if slowdown <= target else "FAIL"
    print(
        f"default run, torch threads sized by steerexp ({threads}): alone {alone:.1f} s, "
        f"beside a 1-core burner {beside:.1f} s: slowdown {slowdown:.2f}x, target <= "
        f"{target:.2f}x ({cpus} usable CPUs) {ok}; load average {load0:.1f} -> {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["shared_cpu"] = {
        "alone_s": alone,
        "beside_burner_s": beside,
        "slowdown": slowdown,
        "target": target,
        "torch_threads": threads,
        "usable_cpus": cpus,
        "load_avg_start": load0,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m bench threads",
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
