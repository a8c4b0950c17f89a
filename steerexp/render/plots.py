"""Dose-response figures: a run's ``dose_response.png`` and the curves a sweep report overlays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steerexp.data.transforms import transform_x
from steerexp.store.atomic import atomic_write


def dose_curve(dose: pd.DataFrame) -> pd.DataFrame:
    """Per coefficient (``c``): ``mean``, standard error (``sem``, 0 for one row) and count ``n``
    of the valid, finite log-ratios; ``valid`` may be bools or their text as read from a CSV."""
    y = pd.to_numeric(dose["log_ratio"], errors="coerce")
    if "valid" in dose:
        y = y.where(dose["valid"].astype(str).str.lower().isin(["true", "1", "1.0"]))
    c = pd.to_numeric(dose["coeff"], errors="coerce")
    g = pd.DataFrame({"c": c, "y": y.where(np.isfinite(y))}).dropna().groupby("c")["y"]
    return pd.DataFrame(
        {"mean": g.mean(), "sem": g.sem().fillna(0.0), "n": g.count()}
    ).reset_index()


def draw_dose_curve(ax: Any, curve: pd.DataFrame, **style: Any) -> None:
    """A :func:`dose_curve` on ``ax``: the means, error bars one s.e.m. (``style`` overrides)."""
    style = {"marker": "o", "ms": 3, "capsize": 2, **style}
    ax.errorbar(curve["c"], curve["mean"], yerr=curve["sem"], **style)


def plot_dose_response(
    path: Path,
    df: pd.DataFrame,
    title: str,
    x: str = "symlog",
    cost: pd.DataFrame | None = None,
    means: pd.DataFrame | None = None,
    tanh: tuple[float, float, float] | None = None,
) -> Path:
    """Valid log-ratios by coefficient, the per-coefficient means (± s.e.m., or with ``means``
    their scenario-clustered 95% CIs), the OLS fit and, with ``tanh`` = (a, s, p), the saturating
    curve ``a + p tanh(s x / p)``; with ``cost`` (a ``coherence.cost_table``), a second panel
    beside it: KL on neutral prompts and valid fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, 1 if cost is None else 2, figsize=(6 if cost is None else 11, 4), squeeze=False
    )
    ax = axes[0, 0]
    ok = df[df["valid"] & np.isfinite(df["log_ratio"])]
    ax.scatter(ok["coeff"], ok["log_ratio"], s=12, alpha=0.4, label="rows")
    if means is not None and len(ok):
        m = means.dropna(subset=["mean"])
        err = np.abs(np.vstack([m["mean"] - m["ci_low"], m["ci_high"] - m["mean"]]))
        ax.errorbar(
            m["coeff"],
            m["mean"],
            yerr=np.nan_to_num(err),
            fmt="o",
            ms=6,
            color="C1",
            capsize=3,
            label="mean, 95% CI (clustered)",
        )
    elif len(ok):
        draw_dose_curve(ax, dose_curve(df), ms=6, color="C1", label="mean ± s.e.m.")
    grid = np.linspace(df["coeff"].min(), df["coeff"].max(), 100)
    if ok["coeff"].nunique() >= 2:
        b, a = np.polyfit(transform_x(ok["coeff"].to_numpy(), x), ok["log_ratio"].to_numpy(), 1)
        ax.plot(grid, a + b * transform_x(grid, x), "--", color="C3", label=f"OLS on {x}(c)")
    if tanh is not None and all(np.isfinite(tanh)):
        a, s, p = tanh
        ax.plot(
            grid,
            a + p * np.tanh(s * transform_x(grid, x) / p),
            "-",
            color="C2",
            label=f"tanh fit (slope at 0 {s:.3g}, plateau ±{p:.3g})",
        )
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="coefficient", ylabel="log p(trait) - log p(other)", title=title)
    ax.legend(fontsize=8)
    if cost is not None:
        kl_ax = axes[0, 1]
        kl_ax.plot(
            cost["coeff"], cost["kl"], "o-", color="C3", label="mean token KL (neutral prompts)"
        )
        kl_ax.axhline(1.0, color="C3", lw=0.6, ls=":")
        kl_ax.set(
            xlabel="coefficient", ylabel="KL(steered || unsteered), nats", title="coherence cost"
        )
        frac_ax = kl_ax.twinx()
        frac_ax.plot(cost["coeff"], cost["valid_frac"], "s--", color="C0", label="valid fraction")
        frac_ax.axhline(0.8, color="C0", lw=0.6, ls=":")
        frac_ax.set(ylabel="valid fraction", ylim=(0, 1.05))
        lines = kl_ax.get_lines()[:1] + frac_ax.get_lines()[:1]
        kl_ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="lower left")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    return path
