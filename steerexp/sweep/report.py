"""Rank every job of a multirun: ``ranking.csv``, ``ranking.md`` (journal tables), ``dose_response.png``.

Reads only the run-directory contract (``metrics.json``, ``status.json``, ``dose_response.csv``,
``.hydra/overrides.yaml``), so a sweep can be re-ranked at any time, also while or after jobs fail:
``python -m steerexp.report multirun/2026-11-24/10-31-02 [--name NAME] [--reports-root DIR]``.
The output is deterministic: re-running on the same dir reproduces ``ranking.md`` byte for byte.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from statsmodels.stats.multitest import multipletests  # noqa: E402

from steerexp.core.columns import journal_table
from steerexp.core.errors import SteerexpError, plain_name
from steerexp.sweep import reliability

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
DEFAULT_REPORTS_ROOT = REPO / "multirun_reports"

STAT_COLS = ["slope", "r2", "valid_frac", "effect_size", "p_value", "score", "min", "max"]
JOURNAL_COLS = ["method", *STAT_COLS]
EXTRA_STAT_COLS = [
    "signed_score", "slope_ci_low", "slope_ci_high", "vs_random", "p_random", "p_random_holm", "p_random_rank",
    "anti_frac", "fitted_shift", "prompt_shift", "prompt_y_positive", "prompt_y_negative", "spearman",
    "n_valid", "n_rows", "pair_vote_frac", "null_k", "null_slope_mean", "null_slope_sd", "null_abs_median",
    "null_abs_p95", "null_build_s", "kl_at_max", "coherent_max",
]
IDENTITY_COLS = ["model", "module", "method", "loss", "dataset", "eval", "judge", "coeff_units", "seed"]
TIME_COLS = [f"time_{s}_s" for s in ("load", "extract", "fit", "generate", "judge", "regress", "null", "total")]
RUN_COLS = [
    "dup_of", "sign_flipped", "grad_rule_agrees", "model_reused", "extraction_cached", "generations_reused",
    "null_cached", "cache_key", "acts_key", "generation_key", "null_key",
]
#: Two rows are duplicates when their directions' mean |cos| over the same modules is at least this.
DUP_COS = 0.999
METRIC_COLS = [*STAT_COLS, *EXTRA_STAT_COLS, *reliability.COLUMNS, *IDENTITY_COLS, *TIME_COLS, *RUN_COLS]
OUTPUTS = ("ranking.csv", "ranking.md", "dose_response.png")
#: In each report copy: the sweep dir it was made from, so a rebuild updates its own copy only.
SOURCE_FILE = "source.txt"
_OVERRIDE_PREFIX = re.compile(r"^[+~]+")


def _job_number(rel: str) -> int:
    head = rel.split("_", 1)[0]
    return int(head) if head.isdigit() else sys.maxsize


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Job dirs of a sweep: every dir below it holding ``.hydra/overrides.yaml``, at any depth (sweeps
    whose override values nested the job dirs, as older steerexp versions did, are found whole),
    ordered by job number then name."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return []
    jobs = []
    for root, dirs, _ in os.walk(sweep_dir):
        here = Path(root)
        if here != sweep_dir and (here / ".hydra" / "overrides.yaml").is_file():
            jobs.append(here)
            dirs[:] = []
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    rel = {j: j.relative_to(sweep_dir).as_posix() for j in jobs}
    return sorted(jobs, key=lambda j: (_job_number(rel[j]), rel[j]))


def planned_jobs(sweep_dir: Path) -> list[dict[str, str]]:
    """The overrides of every job the sweep planned (from ``multirun.yaml``, basic sweeper), in job
    number order; empty when that cannot be told."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        cfg = yaml.safe_load((Path(sweep_dir) / "multirun.yaml").read_text())
        hyd = cfg["hydra"]
        if "BasicSweeper" not in str(hyd.get("sweeper", {}).get("_target_", "")):
            return []
        parsed = OverridesParser.create().parse_overrides([str(o) for o in hyd["overrides"]["task"]])
        batches = BasicSweeper.split_arguments(parsed, None)
    except Exception:  # noqa: BLE001 -- no plan is fine: the ranking then lists the job dirs only
        return []
    return [_override_dict(job) for batch in batches for job in batch]


def _override_dict(items: Sequence[Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        out[_OVERRIDE_PREFIX.sub("", key).strip()] = value.strip() if sep else "<deleted>"
    return out


def read_overrides(job_dir: Path) -> dict[str, str]:
    """``key -> value`` from Hydra's ``overrides.yaml`` (``+``/``++``/``~`` prefixes dropped)."""
    try:
        items = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []
    except (OSError, yaml.YAMLError):
        return {}
    return _override_dict(items if isinstance(items, list) else [])


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A JSON object from ``path``, or ``(None, error)`` when unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"unreadable {path.name}: {type(e).__name__}: {' '.join(str(e).split())}"
    if not isinstance(data, dict):
        return None, f"unreadable {path.name}: not a JSON object"
    return data, None


def load_job(job_dir: Path) -> dict[str, Any]:
    """One ranking row: ``metrics.json`` (else ``status.json``, else status ``missing``) plus the job name."""
    row: dict[str, Any] = {"job": job_dir.name}
    metrics_path, status_path = job_dir / "metrics.json", job_dir / "status.json"
    if metrics_path.is_file():
        data, err = _read_json(metrics_path)
        if data is None:
            row.update(status="failed", error=err)
            return row
        row.update(data)
        if "status" not in data and status_path.is_file():
            row.update({k: v for k, v in (_read_json(status_path)[0] or {}).items() if k in ("status", "error")})
        row.setdefault("status", "ok")
    elif status_path.is_file():
        data, err = _read_json(status_path)
        row.update(status=(data or {}).get("status", "failed"), error=(data or {}).get("error", err))
    else:
        row.update(status="missing", error="no metrics.json or status.json (job not finished or killed)")
    return row


def _stale(job_dir: Path) -> str | None:
    """Why an ``ok`` job's results are not those of the config Hydra recorded for the dir (a rerun
    with another config was refused there, after Hydra rewrote ``.hydra/``), or None."""
    stored = (_read_json(job_dir / "status.json")[0] or {}).get("config_hash")
    if not stored:
        return None
    try:
        from omegaconf import OmegaConf

        from steerexp.core.artifacts import config_hash

        recorded = OmegaConf.to_container(
            OmegaConf.load(job_dir / ".hydra" / "config.yaml"), resolve=True
        )
        if config_hash(recorded) == stored:  # type: ignore[arg-type]
            return None
    except Exception:  # noqa: BLE001 -- an unreadable/unresolvable config.yaml proves nothing
        return None
    return (
        "this dir holds the results of an earlier run with another config (the rerun with the "
        "config in .hydra/ was refused); rerun it in a new sweep dir"
    )


def swept_keys(overrides: Sequence[dict[str, str]]) -> list[str]:
    """Override keys whose value differs across jobs (or is absent in some), in first-seen order."""
    keys: list[str] = []
    for ov in overrides:
        keys.extend(k for k in ov if k not in keys)
    return [k for k in keys if len({ov.get(k) for ov in overrides}) > 1]


def _sort(df: pd.DataFrame) -> pd.DataFrame:
    """``signed_score`` descending (positive = toward the trait), NaN last; ties broken by method
    then job name, so the order is stable."""
    score = pd.to_numeric(df["signed_score"], errors="coerce")
    key = pd.DataFrame({"s": (-score).fillna(np.inf), "m": df["method"].astype(str), "j": df["job"]})
    order = key.sort_values(["s", "m", "j"], kind="mergesort").index
    return df.loc[order].reset_index(drop=True)


def collect(sweep_dir: Path, interrupted: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """All job rows of ``sweep_dir`` (sorted) and the swept keys; raises when it is not a sweep dir.

    Jobs the sweep planned (``multirun.yaml``) but never started get a row too: status
    ``interrupted`` when ``interrupted`` (Ctrl-C), else ``missing``.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SteerexpError(f"not a sweep dir: {str(sweep_dir)!r} does not exist or is not a directory")
    jobs = find_job_dirs(sweep_dir)
    if not jobs:
        raise SteerexpError(
            f"not a sweep dir: {str(sweep_dir)!r} has no job dirs (subdirs with .hydra/overrides.yaml); "
            "pass multirun/<date>/<time>"
        )
    names = [j.relative_to(sweep_dir).as_posix() for j in jobs]
    overrides = [read_overrides(j) for j in jobs]
    loaded = [{**load_job(j), "job": n} for j, n in zip(jobs, names, strict=True)]
    for row, job in zip(loaded, jobs, strict=True):
        if row.get("status") == "ok" and (why := _stale(job)):
            row.update(status="stale", error=why)
    started = {_job_number(n) for n in names}
    for num, ov in enumerate(planned_jobs(sweep_dir)):
        if num not in started:
            why = "the sweep was interrupted before this job started" if interrupted else (
                "never started (sweep interrupted, or still running)"
            )
            status = "interrupted" if interrupted else "missing"
            loaded.append({"job": f"{num}_(not started)", "status": status, "error": why})
            overrides.append(ov)
    keys = swept_keys(overrides)
    rows = []
    for index, (row, ov) in enumerate(zip(loaded, overrides, strict=True)):
        row["_index"] = index
        for k in keys:
            if row.get(k) is None:
                row[k] = ov.get(k, "default")
        row["_group"] = ", ".join(f"{k}={ov.get(k, row.get(k, 'default'))}" for k in keys if k != "method")
        rows.append(row)
    df = pd.DataFrame(rows)
    known = list(dict.fromkeys(["job", "status", *keys, *METRIC_COLS]))
    private = ("error", "_group", "_index")
    extra = sorted(c for c in df.columns if c not in known and c not in private)
    df = df.reindex(columns=[*known, *extra, *private])
    for c in [*STAT_COLS, *EXTRA_STAT_COLS, *reliability.COLUMNS, *TIME_COLS]:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    for c in ("n_valid", "n_rows", "seed"):
        num = pd.to_numeric(df[c], errors="coerce")
        if num.notna().sum() == df[c].notna().sum() and (num.dropna() % 1 == 0).all():
            df[c] = num.astype("Int64")
    df["method"] = df["method"].where(df["method"].notna(), df["job"])
    df = _sort(df)
    df["dup_of"] = df["dup_of"].astype(object)
    for group in df["_group"].unique():
        rows = df.index[df["_group"] == group]
        df.loc[rows, "p_random_holm"] = holm(df.loc[rows, "p_random"])
        df.loc[rows, "dup_of"] = duplicates(df.loc[rows], sweep_dir)
        ok = df.loc[rows, "status"] == "ok"
        dirs = [sweep_dir / str(j) if good else None for j, good in zip(df.loc[rows, "job"], ok, strict=True)]
        df.loc[rows, reliability.COLUMNS] = reliability.reliability(dirs).to_numpy()
    return df, keys


def holm(p: pd.Series) -> pd.Series:
    """Holm-adjusted p-values over the finite entries of ``p`` (NaN stays NaN)."""
    p = pd.to_numeric(p, errors="coerce")
    out = pd.Series(np.nan, index=p.index)
    ok = p.notna()
    if ok.any():
        out[ok] = multipletests(p[ok].to_numpy(), method="holm")[1]
    return out


def _directions(job_dir: Path) -> dict[str, np.ndarray] | None:
    try:
        return {k: v.double().numpy() for k, v in load_file(str(job_dir / "directions.safetensors")).items()}
    except (OSError, ValueError, RuntimeError):
        return None


def duplicates(rows: pd.DataFrame, sweep_dir: Path) -> list[str]:
    """Per row (in ranking order), the first better-ranked row whose directions on the same modules
    have mean |cos| >= ``DUP_COS`` with its own ("" when none)."""
    dirs = [_directions(Path(sweep_dir) / str(j)) if s == "ok" else None for j, s in zip(rows["job"], rows["status"], strict=True)]
    labels = list(rows["method"].astype(str))
    out = []
    for i, d in enumerate(dirs):
        match = ""
        for j in range(i):
            other = dirs[j]
            if d is None or other is None or set(d) != set(other):
                continue
            cos = np.mean([abs(d[m] @ other[m]) / (np.linalg.norm(d[m]) * np.linalg.norm(other[m])) for m in d])
            if cos >= DUP_COS:
                match = labels[j] if labels.count(labels[j]) == 1 else f"{labels[j]} ({rows['job'].iloc[j]})"
                break
        out.append(match)
    return out


def _groups(df: pd.DataFrame) -> list[str]:
    """Table groups in sweep order (the order of their first job), e.g. ``module=k_proj`` then ``v_proj``."""
    return list(df.sort_values("_index", kind="mergesort")["_group"].drop_duplicates())


def render_markdown(df: pd.DataFrame, keys: list[str], sweep_dir: Path) -> str:
    """``ranking.md``: a short header, one journal table per combination of swept non-method keys, failures."""
    n_ok = int((df["status"] == "ok").sum())
    n_failed = int((df["status"] == "failed").sum())
    n_interrupted = int((df["status"] == "interrupted").sum())
    n_missing = len(df) - n_ok - n_failed - n_interrupted
    resolved = Path(sweep_dir).resolve()
    shown = resolved.relative_to(REPO) if resolved.is_relative_to(REPO) else resolved
    lines = [
        f"# Ranking: {shown.as_posix()}",
        "",
        f"jobs: {len(df)} (ok {n_ok}, failed {n_failed}, missing {n_missing}"
        + (f", interrupted {n_interrupted}" if n_interrupted else "")
        + "); "
        + f"swept: {', '.join(keys) or 'nothing'}; sorted by signed_score = slope * r2 * valid_frac^2, "
        "descending (positive = toward the trait); score is its absolute value",
    ]
    for group in _groups(df):
        part = df[df["_group"] == group]
        lines += [""] + ([f"## {group}", ""] if group else [])
        with_status = bool((part["status"] != "ok").any())
        lines.append(journal_table(part, label_col="method", extra_cols=("status",) if with_status else ()))
        lines += footer(part)
    bad = df[df["status"] != "ok"].sort_values("_index", kind="mergesort")
    if len(bad):
        lines += ["", "## Not ok", ""]
        for _, r in bad.iterrows():
            err = " ".join(str(r["error"]).split()) if isinstance(r["error"], str) else "no error text"
            lines.append(f"- `{r['job']}`: {r['status']}: {err[:300]}")
    return "\n".join(lines) + "\n"


def footer(part: pd.DataFrame) -> list[str]:
    """Under a table: the order's reliability, the random null's spread and the prompting reference
    (one line per null)."""
    lines = ["", reliability.footer_line(part)] if (part["status"] == "ok").any() else []
    cols = ["null_k", "null_abs_median", "null_abs_p95", "prompt_shift", "null_cached", "null_build_s"]
    if "null_key" not in part or part["null_key"].isna().all():
        return lines
    for _, r in part.dropna(subset=["null_key"]).drop_duplicates("null_key").reindex(columns=cols).iterrows():
        k, med, p95, shift = (pd.to_numeric(r[c], errors="coerce") for c in cols[:4])
        lines += [
            "",
            f"null: {k:.0f} random directions, median |slope| {med:.2f}, 95th percentile |slope| {p95:.2f} "
            f"(`ns` = p_holm >= 0.05 against it); prompting reference: positive minus negative persona, "
            f"unsteered, log-ratio shift {shift:.2f} (compare `shift`, each row's fitted change over the grid)",
        ]
    return lines


def _curve(job_dir: Path) -> pd.DataFrame | None:
    """Mean, standard error and count of valid ``log_ratio`` per coefficient, or None without data."""
    try:
        dose = pd.read_csv(job_dir / "dose_response.csv")
    except (OSError, ValueError):
        return None
    if not {"coeff", "log_ratio"} <= set(dose.columns):
        return None
    y = pd.to_numeric(dose["log_ratio"], errors="coerce")
    if "valid" in dose:
        y = y.where(dose["valid"].astype(str).str.lower().isin(["true", "1", "1.0"]))
    g = pd.DataFrame({"c": pd.to_numeric(dose["coeff"], errors="coerce"), "y": y}).dropna().groupby("c")["y"]
    out = pd.DataFrame({"mean": g.mean(), "sem": g.sem().fillna(0.0), "n": g.count()}).reset_index()
    return out if len(out) else None


def plot_dose_response(df: pd.DataFrame, sweep_dir: Path, out: Path) -> Path:
    """All jobs' mean log-ratio vs coefficient (error bar = s.e.m.), one panel per table, one line per job."""
    groups = _groups(df)
    ncol = min(3, len(groups))
    nrow = math.ceil(len(groups) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6 * ncol, 4.2 * nrow), squeeze=False)
    for ax, group in zip(axes.flat, groups, strict=False):
        drawn, coeffs = 0, []
        colors = plt.get_cmap("tab20").colors
        for _, r in df[df["_group"] == group].iterrows():
            curve = _curve(Path(sweep_dir) / r["job"])
            if curve is None:
                continue
            label = f"{r['method']} (score {r['score']:.2f})" if pd.notna(r["score"]) else str(r["method"])
            style = {"color": colors[drawn % 20], "ls": ("-", "--", ":")[drawn // 20 % 3]}
            ax.errorbar(curve["c"], curve["mean"], yerr=curve["sem"], marker="o", ms=3, capsize=2, label=label,
                        **style)
            coeffs.extend(curve["c"].tolist())
            drawn += 1
        nonzero = [abs(c) for c in coeffs if c]
        if nonzero and max(nonzero) / min(nonzero) > 20:
            ax.set_xscale("symlog", linthresh=min(nonzero))
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.set_title(group or "all jobs", fontsize=10)
        ax.set_xlabel("coefficient")
        ax.set_ylabel("mean log-ratio (valid rows) ± s.e.m.")
        if drawn:
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, "no dose-response data", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    fig.suptitle(f"dose response: {sweep_name(sweep_dir)}", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return out


def sweep_name(sweep_dir: Path) -> str:
    """``multirun/2026-11-24/10-31-02-a1b2c3`` -> ``2026-11-24_10-31-02-a1b2c3`` (the copy's folder name)."""
    parts = Path(sweep_dir).resolve().parts
    return "_".join(parts[-2:])


def report_dir(reports_root: Path, name: str, sweep_dir: Path, overwrite: bool = False) -> Path:
    """Where a sweep's copy goes: ``reports_root/name`` when free, when it already holds this sweep's
    report (a rebuild or a resumed sweep), or with ``overwrite``; else the first free ``name-2``,
    ``name-3``... so another sweep's report is never replaced silently."""
    source = str(Path(sweep_dir).resolve())
    for i in itertools.count(1):
        dest = Path(reports_root) / (name if i == 1 else f"{name}-{i}")
        if not dest.exists() or (dest.is_dir() and not any(dest.iterdir())):
            return dest
        if not dest.is_dir():
            continue
        try:
            same = (dest / SOURCE_FILE).read_text().strip() == source
        except OSError:
            same = False
        if same or (overwrite and i == 1):
            return dest
        if i == 1:
            log.warning("report name %r is taken by another sweep; not replacing it", name)
    raise AssertionError("unreachable")


def build_report(
    sweep_dir: Path,
    reports_root: Path | None = DEFAULT_REPORTS_ROOT,
    name: str | None = None,
    overwrite: bool = False,
    interrupted: bool = False,
) -> pd.DataFrame:
    """Write the ranking files into ``sweep_dir`` and copy them to ``reports_root/<name>/``.

    ``name`` (a plain folder name) defaults to the sweep dir's last two parts; a name already holding
    another sweep's report gets a ``-2``... suffix unless ``overwrite`` (:func:`report_dir`).
    ``reports_root=None`` skips the copy. ``interrupted``: planned jobs that never started are
    ``interrupted`` rows. Returns the ranking (one row per job, best score first); its
    ``attrs["report_dir"]`` is where the copy went.
    """
    sweep_dir = Path(sweep_dir)
    if name is not None:
        plain_name("report_name", name)
    df, keys = collect(sweep_dir, interrupted=interrupted)
    public = df.drop(columns=["_group", "_index"])
    public.to_csv(sweep_dir / "ranking.csv", index=False)
    (sweep_dir / "ranking.md").write_text(render_markdown(df, keys, sweep_dir))
    plot_dose_response(df, sweep_dir, sweep_dir / "dose_response.png")
    public.attrs["report_dir"] = None
    if reports_root is not None:
        dest = report_dir(Path(reports_root), name or sweep_name(sweep_dir), sweep_dir, overwrite)
        dest.mkdir(parents=True, exist_ok=True)
        for f in OUTPUTS:
            shutil.copyfile(sweep_dir / f, dest / f)
        (dest / SOURCE_FILE).write_text(str(sweep_dir.resolve()) + "\n")
        public.attrs["report_dir"] = dest
    public.attrs["swept_keys"] = keys
    return public


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: rebuild a sweep's ranking and print ``ranking.md``; one-line error and exit 2 on bad input."""
    parser = argparse.ArgumentParser(prog="python -m steerexp.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="multirun/<date>/<time>")
    parser.add_argument("--reports-root", type=Path, default=DEFAULT_REPORTS_ROOT, help="copy destination root")
    parser.add_argument("--name", default=None, help="folder name under --reports-root (default <date>_<time>)")
    parser.add_argument("--no-copy", action="store_true", help="write into the sweep dir only")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace another sweep's report of the same --name"
    )
    args = parser.parse_args(argv)
    try:
        build_report(
            args.sweep_dir,
            None if args.no_copy else args.reports_root,
            name=args.name,
            overwrite=args.overwrite,
        )
    except SteerexpError as e:
        print(f"steerexp.report: error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write((args.sweep_dir / "ranking.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
