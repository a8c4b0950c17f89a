"""Rank every job of a multirun: ``ranking.csv``, ``ranking.md`` (journal tables), ``dose_response.png``.

Reads only the run-directory contract (``metrics.json``, ``status.json``, ``dose_response.csv``,
``.hydra/overrides.yaml``), so a sweep can be re-ranked at any time, also while or after jobs fail:
``python -m steerexp.report multirun/2026-11-24/10-31-02 [--name NAME] [--reports-root DIR]``.
The output is deterministic: re-running on the same dir reproduces ``ranking.md`` byte for byte.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from steerexp.config.errors import SteerexpError, plain_name
from steerexp.render.journal import journal_table
from steerexp.render.plots import dose_curve, draw_dose_curve
from steerexp.store.guard import check_writable_dir
from steerexp.sweep import confirm, order, rows
from steerexp.sweep.collect import collect

log = logging.getLogger(__name__)
#: Reports are copied under the current working directory (where ``multirun/`` also goes).
DEFAULT_REPORTS_ROOT = Path("multirun_reports")

OUTPUTS = ("ranking.csv", "ranking.md", "dose_response.png")
#: In each report copy: the sweep dir it was made from, so a rebuild updates its own copy only.
SOURCE_FILE = "source.txt"


def _groups(df: pd.DataFrame) -> list[str]:
    """Table groups in sweep order (the order of their first job), e.g. ``module=k_proj`` then ``v_proj``."""
    return list(df.sort_values("_index", kind="mergesort")["_group"].drop_duplicates())


SORT_TEXT = {
    "budget_effect": "budget_effect (the effect at the matched coherence budget), descending, ties "
    "and rows without it by signed_score",
    "signed_score": "signed_score = slope * r2 * valid_frac^2, descending (positive = toward the "
    "trait); score is its absolute value",
}


def header(df: pd.DataFrame, keys: list[str], sweep_dir: Path) -> list[str]:
    """The lines above the tables: job counts, what was swept, the sort key, the declared family."""
    counted = df[~df["pooled"].astype(bool)]
    n_ok = int((counted["status"] == "ok").sum())
    n_failed = int((counted["status"] == "failed").sum())
    n_interrupted = int((counted["status"] == "interrupted").sum())
    n_missing = len(counted) - n_ok - n_failed - n_interrupted
    resolved = Path(sweep_dir).resolve()
    cwd = Path.cwd().resolve()
    shown = resolved.relative_to(cwd) if resolved.is_relative_to(cwd) else resolved
    controls = (
        "the random rows are the family (only random was swept)"
        if df.attrs.get("family_controls")
        else "random rows are controls, not in it"
    )
    lines = [
        f"# Ranking: {shown.as_posix()}",
        "",
        f"jobs: {len(counted)} (ok {n_ok}, failed {n_failed}, missing {n_missing}"
        + (f", interrupted {n_interrupted}" if n_interrupted else "")
        + "); "
        + f"swept: {', '.join(keys) or 'nothing'}; sorted by {SORT_TEXT[df.attrs['sort_key']]}",
        "",
        f"p_null_adj: {df.attrs['correction']} correction of p_null over one family of "
        f"{df.attrs['family_size']} rows, every table of this sweep ({controls})",
    ]
    reach = rows.reachable(df, str(df.attrs["correction"]))
    if reach is not None and reach[0] >= 0.05:
        lines[-1] += (
            f"; with this null no row can reach p_null_adj < 0.05 (the smallest possible is "
            f"{reach[0]:.2g}, every row beyond all K directions): set random_null.k={reach[1]} or "
            "more (the cached null is extended, not rebuilt)"
        )
    if df["pooled"].astype(bool).any():
        lines += [
            "",
            "seed is replication: rows that differ only in seed are pooled (mean slope; interval "
            "from sqrt(mean se^2 + variance between seeds)); the per-seed rows are in ranking.csv",
        ]
    return lines


def render_markdown(df: pd.DataFrame, keys: list[str], sweep_dir: Path) -> str:
    """``ranking.md``: a short header, one journal table per combination of swept non-method keys
    (seed pooled), failures."""
    lines = header(df, keys, sweep_dir)
    for group in _groups(df):
        part = df[(df["_group"] == group) & df["in_table"].astype(bool)]
        lines += [""] + ([f"## {group}", ""] if group else [])
        with_status = bool((part["status"] != "ok").any())
        lines.append(
            journal_table(part, label_col="label", extra_cols=("status",) if with_status else ())
        )
        lines += footer(part, df.attrs.get("order_null_k", {}).get(group))
    lines += confirm.section(sweep_dir)
    bad = df[(df["status"] != "ok") & ~df["pooled"].astype(bool)]
    bad = bad.sort_values("_index", kind="mergesort")
    if len(bad):
        lines += ["", "## Not ok", ""]
        for _, r in bad.iterrows():
            err = (
                " ".join(str(r["error"]).split())
                if isinstance(r["error"], str)
                else "no error text"
            )
            lines.append(f"- `{r['job']}`: {r['status']}: {err[:300]}")
    return "\n".join(lines) + "\n"


def footer(part: pd.DataFrame, n_null: int | None = None) -> list[str]:
    """Under a table: the order test's reference, the random null (K, the median |slope| that
    vs_random divides by) and the prompting reference (one line per null)."""
    lines = []
    if (line := order.footer_line(part, n_null)) is not None:
        lines += ["", line]
    cols = [
        "null_k",
        "null_abs_median",
        "null_abs_p95",
        "prompt_shift",
        "null_cached",
        "null_build_s",
    ]
    if "null_key" not in part or part["null_key"].isna().all():
        return lines
    for _, r in (
        part.dropna(subset=["null_key"])
        .drop_duplicates("null_key")
        .reindex(columns=cols)
        .iterrows()
    ):
        k, med, p95, shift = (pd.to_numeric(r[c], errors="coerce") for c in cols[:4])
        prompting = (
            "no persona given (the dataset has no persona template to prompt with)"
            if pd.isna(shift)
            else "positive minus negative persona, unsteered, log-ratio shift "
            f"{shift:.2f} (compare `shift`, each row's fitted change over the grid)"
        )
        lines += [
            "",
            f"null: K = {k:.0f} random directions; vs_random = |slope| / {med:.2f}, their median "
            f"|slope|; 95th percentile |slope| {p95:.2f}; p_null = (1 + #null |slope| >= |slope|) / "
            f"(K + 1), `> all {k:.0f}` = beyond every one (p_null = {1 / (k + 1):.2g}, the smallest "
            f"K can give); prompting reference: {prompting}",
        ]
    return lines


def _curve(job_dir: Path) -> pd.DataFrame | None:
    """A job's :func:`~steerexp.render.plots.dose_curve`, or None without data."""
    try:
        dose = pd.read_csv(job_dir / "dose_response.csv")
    except (OSError, ValueError):
        return None
    if not {"coeff", "log_ratio"} <= set(dose.columns):
        return None
    curve = dose_curve(dose)
    return curve if len(curve) else None


def plot_sweep(df: pd.DataFrame, sweep_dir: Path, out: Path) -> Path:
    """All jobs' mean log-ratio vs coefficient (error bar = s.e.m.), one panel per table, one line per job."""
    groups = _groups(df)
    ncol = min(3, len(groups))
    nrow = math.ceil(len(groups) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6 * ncol, 4.2 * nrow), squeeze=False)
    for ax, group in zip(axes.flat, groups, strict=False):
        drawn, coeffs = 0, []
        colors = plt.get_cmap("tab20").colors
        # every run is drawn (a pooled row's seeds each as its own line)
        for _, r in df[(df["_group"] == group) & ~df["pooled"].astype(bool)].iterrows():
            curve = _curve(Path(sweep_dir) / r["job"])
            if curve is None:
                continue
            name = str(r["label"]) + ("" if r["in_table"] else f" seed={r['seed']}")
            label = f"{name} (score {r['score']:.2f})" if pd.notna(r["score"]) else name
            style = {"color": colors[drawn % 20], "ls": ("-", "--", ":")[drawn // 20 % 3]}
            draw_dose_curve(ax, curve, label=label, **style)
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
            ax.text(
                0.5, 0.5, "no dose-response data", ha="center", va="center", transform=ax.transAxes
            )
    for ax in list(axes.flat)[len(groups) :]:
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
    correction: str | None = None,
) -> pd.DataFrame:
    """Write the ranking files into ``sweep_dir`` and copy them to ``reports_root/<name>/``.

    ``name`` (a plain folder name) defaults to the sweep dir's last two parts; a name already holding
    another sweep's report gets a ``-2``... suffix unless ``overwrite`` (:func:`report_dir`).
    ``reports_root=None`` skips the copy. ``interrupted``: planned jobs that never started are
    ``interrupted`` rows. ``correction`` (holm | bh) overrides the jobs' ``ranking.correction``.
    Returns the ranking (one row per job plus pooled rows, best first); its
    ``attrs["report_dir"]`` is where the copy went.
    """
    sweep_dir = Path(sweep_dir)
    if name is not None:
        plain_name("report_name", name)
    df, keys = collect(sweep_dir, interrupted=interrupted, correction=correction)
    public = df.drop(columns=["_group", "_index"])
    public.to_csv(sweep_dir / "ranking.csv", index=False)
    (sweep_dir / "ranking.md").write_text(render_markdown(df, keys, sweep_dir))
    plot_sweep(df, sweep_dir, sweep_dir / "dose_response.png")
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
    parser = argparse.ArgumentParser(
        prog="python -m steerexp.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("sweep_dir", type=Path, help="multirun/<date>/<time>")
    parser.add_argument(
        "--reports-root", type=Path, default=DEFAULT_REPORTS_ROOT, help="copy destination root"
    )
    parser.add_argument(
        "--name", default=None, help="folder name under --reports-root (default <date>_<time>)"
    )
    parser.add_argument("--no-copy", action="store_true", help="write into the sweep dir only")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace another sweep's report of the same --name"
    )
    parser.add_argument(
        "--correction",
        default=None,
        help="holm | bh: the family-wide correction of p_null (default: the jobs' ranking.correction)",
    )
    args = parser.parse_args(argv)
    try:
        if not args.no_copy:
            check_writable_dir("--reports-root", args.reports_root)
        build_report(
            args.sweep_dir,
            None if args.no_copy else args.reports_root,
            name=args.name,
            overwrite=args.overwrite,
            correction=args.correction,
        )
    except SteerexpError as e:
        print(f"steerexp.report: error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write((args.sweep_dir / "ranking.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
