"""Random-direction null on the organism: the checks of issue 11, rerunnable on any organism.

``python -m bench.null [--out DIR] [--seeds 20] [--methods a,b]`` (or ``python -m bench null``) runs, in one process on the
organism (``STEEREXP_CACHE``), on ``module=hs``: pca_diff and the iEF/emp pair (building the
null once), ``method=random`` at fresh seeds 1..N (not the null's; they must reuse the null), then
the other journal methods. It writes two sweep dirs with ``ranking.md``/``ranking.csv`` and ``checks.json``, and prints:

- how many fresh random seeds get ``p_random > 0.05`` (target: >= 18 of 20);
- ``pca_diff``'s ``p_random`` (target < 1e-3) and ``vs_random`` (target >= 5);
- whether any row steering toward the negative persona (slope < 0) ranks above one steering
  toward the positive persona; the rows flagged ``dup_of``;
- cos(fisher_steer_reg2, fisher_steer_emp_reg2) (iEF vs emp; 1.0 would mean iEF does nothing);
- each null direction's p_random against the other K - 1 (leave-one-out calibration);
- the null's cost: its one batched generation over one method's generate+judge (bench ratio),
  and that every later run found it cached.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from steerexp import CONF_DIR
from steerexp.pipeline import run
from steerexp.stages.fit.methods import method_names
from steerexp.sweep import report


def _job(sweep: Path, num: int, overrides: list[str]) -> dict:
    """One job as a multirun would lay it out (``.hydra/overrides.yaml``), run in this process."""
    job = sweep / f"{num}_{'_'.join(o.replace('=', '-') for o in overrides)}"
    (job / ".hydra").mkdir(parents=True, exist_ok=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["module=hs", *overrides])
    try:
        return run(cfg, job, progress=False)
    except Exception as e:  # a failed method is a row of the ranking, not the end of the bench
        return {"status": "failed", "error": str(e), "method": overrides[0]}


def _cos(a: Path, b: Path) -> float:
    da, db = (
        load_file(str(a / "directions.safetensors")),
        load_file(str(b / "directions.safetensors")),
    )
    return float(
        np.mean([float(torch.dot(da[m], db[m]) / (da[m].norm() * db[m].norm())) for m in da])
    )


def leave_one_out(key: Path) -> np.ndarray:
    """Each null direction's p_random against the other K - 1 (a calibration check needing no
    new generation; the null's rows are read from the cache)."""
    from steerexp import cache_dir
    from steerexp.pipeline import reference as null

    dose = pd.read_csv(cache_dir() / "extractions" / "nulls" / str(key) / "dose.csv")
    slopes = null.null_slopes(dose)
    return np.array(
        [null.compare(s, np.delete(slopes, i))["p_random"] for i, s in enumerate(slopes)]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench null")
    parser.add_argument("--out", type=Path, default=None, help="output dir (default: a temp dir)")
    parser.add_argument("--seeds", type=int, default=20, help="fresh random seeds 1..N")
    parser.add_argument(
        "--methods", default=None, help="comma-separated (default: every conf/method)"
    )
    args = parser.parse_args(argv or [])
    torch.set_num_threads(1)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-null-"))
    methods = (
        args.methods.split(",") if args.methods else [m for m in method_names() if m != "random"]
    )
    t0 = time.perf_counter()
    journal, seeds = out / "journal", out / "random"
    for i, m in enumerate(methods):
        _job(journal, i, [f"method={m}"])
    for s in range(1, args.seeds + 1):
        _job(seeds, s, ["method=random", f"seed={s}"])
    wall = time.perf_counter() - t0
    ranking = report.build_report(journal, reports_root=None)
    fresh = report.build_report(seeds, reports_root=None)
    fresh = fresh[~fresh["pooled"]]  # one row per seed (the report also pools them into one)
    ok = ranking[ranking["status"] == "ok"].reset_index(drop=True)
    slopes = ok["slope"].to_numpy()
    wrong_above = [
        (ok.loc[i, "method"], ok.loc[j, "method"])
        for i in range(len(ok))
        for j in range(i + 1, len(ok))
        if slopes[i] < 0 < slopes[j]
    ]
    by_method = ok.set_index("method")
    jobs = {r["method"]: journal / r["job"] for _, r in ok.iterrows()}
    pca = by_method.loc["pca_diff"] if "pca_diff" in by_method.index else None
    gen_cost = (
        float(pca["time_generate_s"] + pca["time_judge_s"]) if pca is not None else float("nan")
    )
    null_cost = float(ok["null_build_s"].dropna().iloc[0])
    loo = leave_one_out(Path(ok["null_key"].iloc[0]))
    checks = {
        "null_leave_one_out_p_gt_005": int((loo > 0.05).sum()),
        "random_fresh_seeds_p_gt_005": int((fresh["p_random"] > 0.05).sum()),
        "random_fresh_seeds": int(fresh["p_random"].notna().sum()),
        "random_fresh_p_random": fresh.sort_values("seed")["p_random"].round(4).tolist(),
        "pca_diff_p_random": None if pca is None else float(pca["p_random"]),
        "pca_diff_vs_random": None if pca is None else float(pca["vs_random"]),
        "negative_rows_ranked_above_positive": wrong_above,
        "dup_of": {r["method"]: r["dup_of"] for _, r in ok.iterrows() if r["dup_of"]},
        "cos_ief_vs_emp_reg2": _cos(jobs["fisher_steer_reg2"], jobs["fisher_steer_emp_reg2"])
        if {"fisher_steer_reg2", "fisher_steer_emp_reg2"} <= set(jobs)
        else None,
        "null_abs_median": float(ok["null_abs_median"].iloc[0]),
        "null_abs_p95": float(ok["null_abs_p95"].iloc[0]),
        "prompt_shift": float(ok["prompt_shift"].iloc[0]),
        "null_build_s": null_cost,
        "one_method_generate_judge_s": gen_cost,
        "bench_ratio_null_over_method": null_cost / gen_cost,
        "null_built_once": int((~ok["null_cached"].astype(bool)).sum()) == 1
        and bool(fresh["null_cached"].astype(bool).all()),
        "distinct_null_keys": int(pd.concat([ok["null_key"], fresh["null_key"]]).nunique()),
        "wall_s": wall,
        "out": str(out),
    }
    (out / "checks.json").write_text(json.dumps(checks, indent=1, default=str) + "\n")
    print((journal / "ranking.md").read_text())
    print(json.dumps(checks, indent=1, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
