"""A sweep dir's jobs as one table: each job's metrics, overrides and status, planned jobs included."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from safetensors.torch import load_file

from steerexp.config.errors import SteerexpError
from steerexp.render.journal import sort_key
from steerexp.store.artifacts import config_hash
from steerexp.store.columns import (
    EXTRA_STAT_COLUMNS,
    JOURNAL_COLUMNS,
    METRIC_COLUMNS,
    TIME_COLUMNS,
)
from steerexp.sweep import order, rows

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
    """The overrides of every job the sweep planned (from ``multirun.yaml``, basic sweeper: its
    ``params`` and the command line), in job number order; empty when that cannot be told."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        cfg = yaml.safe_load((Path(sweep_dir) / "multirun.yaml").read_text())
        hyd = cfg["hydra"]
        if "BasicSweeper" not in str(hyd.get("sweeper", {}).get("_target_", "")):
            return []
        # The sweeper's own params (an experiment config's axes) come first, as BasicSweeper does.
        params = [f"{k}={v}" for k, v in (hyd["sweeper"].get("params") or {}).items()]
        task = [str(o) for o in hyd["overrides"]["task"]]
        parsed = OverridesParser.create().parse_overrides([*params, *task])
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
            row.update(
                {
                    k: v
                    for k, v in (_read_json(status_path)[0] or {}).items()
                    if k in ("status", "error")
                }
            )
        row.setdefault("status", "ok")
    elif status_path.is_file():
        data, err = _read_json(status_path)
        row.update(
            status=(data or {}).get("status", "failed"), error=(data or {}).get("error", err)
        )
    else:
        row.update(
            status="missing", error="no metrics.json or status.json (job not finished or killed)"
        )
    return row


def _stale(job_dir: Path) -> str | None:
    """Why an ``ok`` job's results are not those of the config Hydra recorded for the dir (a rerun
    with another config was refused there, after Hydra rewrote ``.hydra/``), or None."""
    stored = (_read_json(job_dir / "status.json")[0] or {}).get("config_hash")
    if not stored:
        return None
    try:
        from omegaconf import OmegaConf

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
    """By :func:`~steerexp.render.journal.sort_key` (``budget_effect`` when runs report it, else
    ``signed_score``) descending, NaN last; ties broken by ``signed_score``, label, then job name,
    so the order is stable."""
    key = pd.to_numeric(df[sort_key(df)], errors="coerce")
    tie = pd.to_numeric(df["signed_score"], errors="coerce")
    frame = pd.DataFrame(
        {
            "s": (-key).fillna(np.inf),
            "t": (-tie).fillna(np.inf),
            "m": df["label"].astype(str),
            "j": df["job"].astype(str),
        }
    )
    ordered = frame.sort_values(["s", "t", "m", "j"], kind="mergesort").index
    return df.loc[ordered].reset_index(drop=True)


def _mean_slopes(series: list[pd.Series | None]) -> pd.Series | None:
    """Per scenario, the mean of the given per-scenario slopes (a pooled row's)."""
    have = [s for s in series if s is not None]
    return pd.concat(have, axis=1).mean(axis=1) if have else None


def collect(
    sweep_dir: Path, interrupted: bool = False, correction: str | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """All job rows of ``sweep_dir`` (sorted) and the swept keys; raises when it is not a sweep dir.

    Jobs the sweep planned (``multirun.yaml``) but never started get a row too: status
    ``interrupted`` when ``interrupted`` (Ctrl-C), else ``missing``. Rows that differ only in a
    swept ``seed`` also get a pooled row (:mod:`steerexp.sweep.rows`); ``p_null_adj`` is corrected
    over the whole sweep by ``correction`` (None: the jobs' ``ranking.correction``), and each
    shown row is tested against the next (``sep_next``, :mod:`steerexp.sweep.order`).
    ``df.attrs`` records the correction, the family size and the sort key.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SteerexpError(
            f"not a sweep dir: {str(sweep_dir)!r} does not exist or is not a directory"
        )
    jobs = find_job_dirs(sweep_dir)
    if not jobs:
        raise SteerexpError(
            f"not a sweep dir: {str(sweep_dir)!r} has no job dirs (subdirs with .hydra/overrides.yaml); "
            "pass multirun/<date>/<time>"
        )
    correction = rows.correction_of(jobs, correction)
    names = [j.relative_to(sweep_dir).as_posix() for j in jobs]
    overrides = [read_overrides(j) for j in jobs]
    loaded = [{**load_job(j), "job": n} for j, n in zip(jobs, names, strict=True)]
    for row, job in zip(loaded, jobs, strict=True):
        if row.get("status") == "ok" and (why := _stale(job)):
            row.update(status="stale", error=why)
    started = {_job_number(n) for n in names}
    for num, ov in enumerate(planned_jobs(sweep_dir)):
        if num not in started:
            why = (
                "the sweep was interrupted before this job started"
                if interrupted
                else ("never started (sweep interrupted, or still running)")
            )
            status = "interrupted" if interrupted else "missing"
            loaded.append({"job": f"{num}_(not started)", "status": status, "error": why})
            overrides.append(ov)
    keys = swept_keys(overrides)
    split = rows.table_keys(keys)
    out = []
    for index, (row, ov) in enumerate(zip(loaded, overrides, strict=True)):
        row["_index"] = index
        for k in keys:
            if row.get(k) is None:
                row[k] = ov.get(k, "default")
        row["_group"] = ", ".join(f"{k}={ov.get(k, row.get(k, 'default'))}" for k in split)
        row["label"] = rows.row_label(str(row.get("method") or row["job"]), ov, keys)
        out.append(row)
    df = pd.DataFrame(out)
    known = list(dict.fromkeys(["job", "status", *keys, *METRIC_COLUMNS]))
    private = ("error", "_group", "_index")
    extra = sorted(c for c in df.columns if c not in known and c not in private)
    df = df.reindex(columns=[*known, *extra, *private])
    for c in [*JOURNAL_COLUMNS, *EXTRA_STAT_COLUMNS, *TIME_COLUMNS]:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    # Run dirs from before p_null: the rank p they hold is the same statistic.
    df["p_null"] = df["p_null"].fillna(df["p_random_rank"])
    for c in ("n_valid", "n_rows", "seed"):
        num = pd.to_numeric(df[c], errors="coerce")
        if num.notna().sum() == df[c].notna().sum() and (num.dropna() % 1 == 0).all():
            df[c] = num.astype("Int64")
    df["method"] = df["method"].where(df["method"].notna(), df["job"])
    by_job = {
        str(r.job): sweep_dir / str(r.job) if r.status == "ok" else None for r in df.itertuples()
    }
    scen = {j: order.scenario_slopes(d) if d else None for j, d in by_job.items()}
    nulls = {j: order.null_overall_slopes(d) if d else None for j, d in by_job.items()}
    df = rows.pool_seeds(df, keys, nulls)
    for i in df.index[df["pooled"].astype(bool)]:
        members = df[(df["_group"] == df.at[i, "_group"]) & (df["label"] == df.at[i, "label"])]
        scen[str(df.at[i, "job"])] = _mean_slopes([scen.get(str(j)) for j in members["job"]])
    df = _sort(df)
    df["dup_of"] = df["dup_of"].astype(object)
    df["sep_next"] = pd.Series(pd.NA, index=df.index, dtype="boolean")
    df["sep_ref"] = pd.Series(None, index=df.index, dtype=object)
    df["p_null_adj"] = rows.adjust(df, correction)
    shown = df["in_table"].astype(bool)
    null_k: dict[str, int] = {}
    for group in df["_group"].unique():
        idx = df.index[(df["_group"] == group) & shown]
        df.loc[idx, "dup_of"] = duplicates(df.loc[idx], sweep_dir)
        df.loc[idx, "p_random_holm"] = holm(df.loc[idx, "p_random"])
        null = next(
            (
                n
                for j in df.loc[idx, "job"]
                if by_job.get(str(j))
                and (n := order.null_scenario_slopes(by_job[str(j)])) is not None
            ),
            None,
        )
        null_k[group] = 0 if null is None else len(null)
        p, ref = order.order_tests([scen.get(str(j)) for j in df.loc[idx, "job"]], null)
        df.loc[idx, "sep_p"] = p
        df.loc[idx, "sep_ref"] = ref
        df.loc[idx, "sep_next"] = [
            pd.NA if not np.isfinite(v) else bool(v < order.ALPHA) for v in p
        ]
    df.attrs.update(
        correction=correction,
        family_size=int(rows.family(df).sum()),
        family_controls=bool((rows.family(df) & (df["method"] == rows.CONTROL)).any()),
        sort_key=sort_key(df),
        order_null_k=null_k,
    )
    return df, keys


def holm(p: pd.Series) -> pd.Series:
    """Holm-adjusted p-values over the finite entries of ``p`` (NaN stays NaN): ``p_random_holm``,
    the t-based ``p_random`` adjusted within one table, kept for readers of the older column; the
    ranking's own family-wide correction is ``p_null_adj``."""
    p = pd.to_numeric(p, errors="coerce")
    out = pd.Series(np.nan, index=p.index)
    ok = p.notna()
    if ok.any():
        out[ok] = rows.corrected(p[ok].to_numpy(), "holm")
    return out


#: Two rows are duplicates when their directions' mean |cos| over the same modules is at least this.
DUP_COS = 0.999


def _directions(job_dir: Path) -> dict[str, np.ndarray] | None:
    try:
        return {
            k: v.double().numpy()
            for k, v in load_file(str(job_dir / "directions.safetensors")).items()
        }
    except (OSError, ValueError, RuntimeError):
        return None


def duplicates(part: pd.DataFrame, sweep_dir: Path) -> list[str]:
    """Per row (in ranking order), the first better-ranked row whose directions on the same modules
    have mean |cos| >= ``DUP_COS`` with its own ("" when none)."""
    dirs = [
        _directions(Path(sweep_dir) / str(j)) if s == "ok" else None
        for j, s in zip(part["job"], part["status"], strict=True)
    ]
    labels = list(part["label"].astype(str))
    out = []
    for i, d in enumerate(dirs):
        match = ""
        for j in range(i):
            other = dirs[j]
            if d is None or other is None or set(d) != set(other):
                continue
            cos = np.mean(
                [
                    abs(d[m] @ other[m]) / (np.linalg.norm(d[m]) * np.linalg.norm(other[m]))
                    for m in d
                ]
            )
            if cos >= DUP_COS:
                match = (
                    labels[j]
                    if labels.count(labels[j]) == 1
                    else f"{labels[j]} ({part['job'].iloc[j]})"
                )
                break
        out.append(match)
    return out
