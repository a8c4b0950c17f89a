"""Reseed coverage of the slope interval (issue 21's acceptance, run by ``make figures``).

Runs the organism's journal table (``+experiment=journal module=hs``) at seed 0 and at seeds
1..5, then counts how many reseeded slopes fall inside seed 0's ``[slope_lo, slope_hi]``: the
interval claims to cover what another seed and another draw of the fit would give, so at least
90% should. Prints a Markdown table per method and the overall share; exits 1 below 90%.

``python scripts/reseed_coverage.py [--methods mean_diff,pca_diff] [--seeds 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = 0.9


def sweep(sweep_dir: Path, methods: str | None, seeds: str) -> None:
    """One ``-m`` sweep of the journal table (or ``methods``) over ``seeds`` into ``sweep_dir``."""
    axis = ["+experiment=journal"] if methods is None else [f"method={methods}"]
    cmd = [
        sys.executable, "-m", "steerexp", "-m", *axis, "module=hs", f"seed={seeds}",
        f"hydra.sweep.dir={sweep_dir}", f"hydra.callbacks.ranking.reports_root={sweep_dir}",
        "report_name=report", "report_overwrite=true",
        "hydra.callbacks.ranking.print_tables=false",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)


def metrics(sweep_dir: Path) -> list[dict]:
    return [
        json.loads(p.read_text())
        for p in sorted(sweep_dir.glob("*/metrics.json"))  # job dirs; the report sits beside them
        if json.loads(p.read_text()).get("status") == "ok"
    ]


def coverage(runs: list[dict]) -> tuple[list[str], float]:
    """Markdown rows (method, seed-0 interval, reseeded slopes, covered) and the overall share."""
    base = {r["method"]: r for r in runs if int(r["seed"]) == 0}
    lines = ["| method | seed 0 slope [lo, hi] | reseeded slopes | inside |", "|:--|:--|:--|--:|"]
    inside = total = 0
    for method, b in sorted(base.items()):
        others = sorted((r for r in runs if r["method"] == method and int(r["seed"]) != 0),
                        key=lambda r: int(r["seed"]))  # fmt: skip
        hits = [b["slope_lo"] <= r["slope"] <= b["slope_hi"] for r in others]
        inside, total = inside + sum(hits), total + len(hits)
        slopes = ", ".join(f"{r['slope']:.2f}" for r in others)
        lines.append(
            f"| {method} | {b['slope']:.2f} [{b['slope_lo']:.2f}, {b['slope_hi']:.2f}] "
            f"| {slopes} | {sum(hits)}/{len(hits)} |"
        )
    share = inside / total if total else float("nan")
    lines.append(f"\ncoverage: {inside}/{total} = {share:.2f} (target >= {TARGET:.2f})")
    return lines, share


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=None, help="comma list (default: the journal table)")
    ap.add_argument("--seeds", type=int, default=5, help="reseeds after seed 0 (default 5)")
    ap.add_argument("--dir", default="multirun/figures/reseed", help="sweep dir (under the repo)")
    args = ap.parse_args(argv)
    sweep_dir = REPO / args.dir
    seeds = ",".join(str(s) for s in range(args.seeds + 1))
    sweep(sweep_dir, args.methods, seeds)
    lines, share = coverage(metrics(sweep_dir))
    print("\n".join(lines))
    return 0 if share >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
