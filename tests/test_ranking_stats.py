"""Statistics across a sweep's runs (issue 21): one declared family, order tests that fail on
random directions, seed pooling, the sort key and ``> all K``; on fabricated sweep dirs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests
from test_report import tables, write_job

from steerexp.config.errors import SteerexpError
from steerexp.data.transforms import symlog
from steerexp.sweep import report

COEFFS = [-1.0, -0.5, 0.0, 0.5, 1.0]
SCENARIOS = [f"s{i}" for i in range(6)]


def set_metrics(job: Path, **values: object) -> None:
    metrics = json.loads((job / "metrics.json").read_text())
    metrics.update(values)
    (job / "metrics.json").write_text(json.dumps(metrics))


def job(sweep: Path, num: int, overrides: dict[str, object], **metrics: object) -> Path:
    """A finished job dir with these overrides and metrics (``slope``/``signed_score`` default 0)."""
    name = ",".join(f"{k}={v}" for k, v in overrides.items())
    path = sweep / f"{num}_{name}"
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- {k}={v}\n" for k, v in overrides.items())
    )
    method = str(overrides.get("method", "random"))
    row = {"method": method, "status": "ok", "module": "hs", "seed": 0, **metrics}
    row.setdefault("signed_score", row.get("slope", 0.0))
    (path / "metrics.json").write_text(json.dumps(row))
    (path / "status.json").write_text(json.dumps({"status": "ok", "error": None}))
    return path


def dose(slopes: pd.Series, rng: np.random.Generator, noise: float = 0.05) -> pd.DataFrame:
    """Judged rows with these per-scenario slopes (2 questions x 2 repeats per scenario)."""
    rows = [
        {
            "question_id": f"{s}_q{q}",
            "scenario": s,
            "coeff": c,
            "repeat": r,
            "log_ratio": slope * symlog(c) + noise * rng.standard_normal(),
            "valid": True,
        }
        for s, slope in slopes.items()
        for q in range(2)
        for c in COEFFS
        for r in range(2)
    ]
    return pd.DataFrame(rows)


def directions(rng: np.random.Generator, n: int, spread: float, scatter: float) -> np.ndarray:
    """Per-scenario true slopes of ``n`` random directions: each has its own effect (sd ``spread``),
    consistent across scenarios up to ``scatter``; a gap between two of them is real but no
    method's merit."""
    return rng.normal(0, spread, (n, 1)) + rng.normal(0, scatter, (n, len(SCENARIOS)))


def random_sweep(root: Path, seed: int, with_null: bool, extra: float | None = None) -> Path:
    """``method=random method.seed=0..7`` (plus a ``mean_diff`` row of slope ``extra``), each run
    with a K = 64 null of the same random directions in ``null_slopes.csv``."""
    rng = np.random.default_rng(seed)
    null = directions(rng, 64, spread=2.0, scatter=0.2)
    rows = directions(rng, 8, spread=2.0, scatter=0.2)
    table = pd.DataFrame(
        [
            {"direction": d, "scenario": s, "slope": null[d, i]}
            for d in range(64)
            for i, s in enumerate(SCENARIOS)
        ]
        + [{"direction": d, "scenario": "*", "slope": null[d].mean()} for d in range(64)]
    )
    specs = [({"method": "random", "method.seed": k}, rows[k]) for k in range(8)]
    if extra is not None:
        specs.append(({"method": "mean_diff"}, extra + rng.normal(0, 0.2, len(SCENARIOS))))
    for num, (ov, true) in enumerate(specs):
        path = job(root, num, ov, slope=float(true.mean()), null_k=64)
        dose(pd.Series(true, index=SCENARIOS), rng).to_csv(path / "dose_response.csv", index=False)
        if with_null:
            table.to_csv(path / "null_slopes.csv", index=False)
    return root


@pytest.mark.parametrize("seed", range(2))
def test_eight_random_directions_are_not_separable(tmp_path: Path, seed: int) -> None:
    """Eight random directions ranked as rows of one table (method.seed): at most one adjacent pair
    is separable against the null's pair gaps, while a paired t on the rows' own scenario spread
    (what a test without the null reference does) calls most of their gaps real."""
    sweep = random_sweep(tmp_path / "with", seed, with_null=True)
    df = report.build_report(sweep, reports_root=None)
    assert len(tables((sweep / "ranking.md").read_text())) == 1
    assert sorted(df["label"]) == [f"random[seed={k}]" for k in range(8)]
    csv = pd.read_csv(sweep / "ranking.csv")
    assert csv["sep_p"].notna().sum() == 7 and (csv["sep_ref"] == "null_pairs").sum() == 7
    assert int(df["sep_next"].fillna(False).sum()) <= 1
    naive = report.build_report(random_sweep(tmp_path / "without", seed, False), reports_root=None)
    assert (naive["sep_ref"] == "row_spread").sum() == 7
    assert int(naive["sep_next"].fillna(False).sum()) >= 4
    assert (
        "can call a gap between two random directions real"
        in (tmp_path / "without" / "ranking.md").read_text()
    )


def test_a_working_method_is_separable_from_random(tmp_path: Path) -> None:
    sweep = random_sweep(tmp_path / "s", 0, with_null=True, extra=20.0)
    df = report.build_report(sweep, reports_root=None)
    assert df["label"].iloc[0] == "mean_diff"
    assert bool(df["sep_next"].iloc[0]) and df["sep_p"].iloc[0] == pytest.approx(1 / 2017)
    md = (sweep / "ranking.md").read_text()
    assert "same gap between 2016 pairs of 64 random null directions" in md


def two_tables(sweep: Path, modules: list[str]) -> None:
    """Per module: pca_diff (p 0.01), mean_diff (p 0.02), random (p 0.5)."""
    num = 0
    for module in modules:
        for method, p in (("pca_diff", 0.01), ("mean_diff", 0.02), ("random", 0.5)):
            job(sweep, num, {"method": method, "module": module}, slope=1 / p, p_null=p, null_k=64)
            num += 1


def test_one_family_over_every_table_without_controls(tmp_path: Path) -> None:
    """p_null_adj is corrected over every table's rows (adding a table changes a row's adjusted p),
    and random rows are controls outside the family."""
    one = report.build_report(two_tables_dir(tmp_path / "one", ["hs"]), reports_root=None)
    two = report.build_report(two_tables_dir(tmp_path / "two", ["hs", "k_proj"]), reports_root=None)
    first = one.set_index("label")
    assert first.loc["pca_diff", "p_null_adj"] == pytest.approx(0.02)
    assert first.loc["mean_diff", "p_null_adj"] == pytest.approx(0.02)
    assert np.isnan(first.loc["random", "p_null_adj"])
    want = multipletests([0.01, 0.02, 0.01, 0.02], method="holm")[1]
    got = two[two["method"] != "random"].sort_values(["module", "p_null"])["p_null_adj"]
    assert got.tolist() == pytest.approx(list(want[[0, 2, 1, 3]]))
    assert two.loc[two["method"] == "pca_diff", "p_null_adj"].tolist() == pytest.approx([0.04] * 2)
    assert two["p_null_adj"].notna().sum() == 4
    md = (tmp_path / "two" / "ranking.md").read_text()
    assert "holm correction of p_null over one family of 4 rows" in md
    assert "random rows are controls, not in it" in md


def two_tables_dir(root: Path, modules: list[str]) -> Path:
    two_tables(root, modules)
    return root


def test_random_alone_is_the_family_and_bh_is_declared(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    for k, p in enumerate([0.01, 0.02, 0.5]):
        path = job(sweep, k, {"method": "random", "method.seed": k}, slope=1 / p, p_null=p)
        (path / ".hydra" / "config.yaml").write_text("ranking:\n  correction: bh\n")
    df = report.build_report(sweep, reports_root=None)
    assert df.sort_values("p_null")["p_null_adj"].tolist() == pytest.approx([0.03, 0.03, 0.5])
    md = (sweep / "ranking.md").read_text()
    assert "bh correction of p_null over one family of 3 rows" in md
    assert "the random rows are the family" in md
    holm = report.build_report(sweep, reports_root=None, correction="holm")
    assert holm.sort_values("p_null")["p_null_adj"].tolist() == pytest.approx([0.03, 0.04, 0.5])
    with pytest.raises(SteerexpError, match="ranking.correction 'bonferoni'; valid: bh, holm"):
        report.build_report(sweep, reports_root=None, correction="bonferoni")


def test_beyond_every_null_direction_reads_greater_than_all_k(tmp_path: Path) -> None:
    """A row beyond all 64 null directions shows ``> all 64`` (never an extrapolated 1e-10), read
    from ``null_beyond_all`` or, in older run dirs, from the rank p ``p_random_rank``."""
    sweep = tmp_path / "s"
    job(
        sweep,
        0,
        {"method": "mean_diff"},
        slope=30.0,
        p_null=1 / 65,
        null_k=64,
        null_beyond_all=True,
        p_random=1e-10,
    )
    job(sweep, 1, {"method": "pca_diff"}, slope=20.0, p_random_rank=1 / 65, null_k=64)
    job(
        sweep,
        2,
        {"method": "svd_steer"},
        slope=9.0,
        p_null=3 / 65,
        null_k=64,
        null_beyond_all=False,
    )
    df = report.build_report(sweep, reports_root=None)
    t = tables((sweep / "ranking.md").read_text())[""]
    col = t[0].index("p_null")
    assert [r[col] for r in t[1:]] == ["> all 64", "> all 64", "0.046"]
    assert "1e-10" not in (sweep / "ranking.md").read_text()
    assert df["p_null"].tolist() == pytest.approx([1 / 65, 1 / 65, 3 / 65])


def test_seed_is_replication_pooled_into_one_row(tmp_path: Path) -> None:
    """seed=101,202,303 x two methods: one table of two pooled rows (mean slope, the seeds' spread
    in the interval, n_seeds = 3); the six per-seed rows stay in ranking.csv."""
    sweep = tmp_path / "s"
    slopes = {"pca_diff": [10.0, 12.0, 14.0], "mean_diff": [5.0, 5.0, 5.0]}
    num = 0
    for i, seed in enumerate([101, 202, 303]):
        for method, s in slopes.items():
            job(
                sweep,
                num,
                {"method": method, "seed": seed},
                slope=s[i],
                seed=seed,
                slope_se=1.0,
                slope_lo=s[i] - 1.96,
                slope_hi=s[i] + 1.96,
                p_null=0.01,
            )
            num += 1
    df = report.build_report(sweep, reports_root=None)
    t = tables((sweep / "ranking.md").read_text())
    assert list(t) == [""] and [r[0] for r in t[""][1:]] == ["pca_diff", "mean_diff"]
    assert t[""][1][t[""][0].index("n_seeds")] == "3"
    pooled = df[df["pooled"]].set_index("label")
    assert pooled.loc["pca_diff", "n_seeds"] == 3 and pooled.loc["pca_diff", "slope"] == 12.0
    se = np.sqrt(1.0 + 4.0)  # mean se^2 = 1, variance between seeds = 4
    assert pooled.loc["pca_diff", "slope_se"] == pytest.approx(se)
    assert pooled.loc["pca_diff", "slope_hi"] == pytest.approx(12.0 + 1.959964 * se, rel=1e-6)
    assert pooled.loc["mean_diff", "slope_se"] == pytest.approx(1.0)
    csv = pd.read_csv(sweep / "ranking.csv")
    assert len(csv) == 8 and (~csv["in_table"]).sum() == 6
    assert sorted(csv.loc[~csv["in_table"], "seed"].astype(int)) == [101, 101, 202, 202, 303, 303]
    assert df.loc[df["in_table"], "p_null_adj"].notna().sum() == 2


def test_budget_effect_sorts_when_runs_report_it(tmp_path: Path) -> None:
    """The matched-coherence-budget effect is the sort key: a row that scores higher in norm units
    only by breaking the model ranks below one that steers within the budget."""
    sweep = tmp_path / "s"
    write_job(sweep, 0, "svd_steer", "hs", 10.0, 0.9, "ok")
    write_job(sweep, 1, "mean_diff", "hs", 5.0, 0.9, "ok")
    set_metrics(sweep / "0_method=svd_steer,module=hs", budget_effect=0.3)
    set_metrics(sweep / "1_method=mean_diff,module=hs", budget_effect=2.5)
    df = report.build_report(sweep, reports_root=None)
    assert df["label"].tolist() == ["mean_diff", "svd_steer"]
    md = (sweep / "ranking.md").read_text()
    assert "sorted by budget_effect" in md
    t = tables(md)[""]
    assert [r[0] for r in t[1:]] == ["mean_diff", "svd_steer"] and "budget_effect" in t[0]


def test_method_seed_picks_the_random_direction_not_the_run_seed() -> None:
    """``method.seed`` (when set) alone picks a random direction, so ``method.seed=0..7`` at one run
    seed are eight directions sampled with common random numbers."""
    import torch
    from helpers import group

    from steerexp.stages.fit.methods import fit_from_config, method_config

    acts = torch.randn(8, 16)
    cfg = group("method", "random")
    assert cfg["seed"] is None

    def fit(run_seed: int, method_seed: int | None = None) -> torch.Tensor:
        method = method_config({**cfg, "seed": method_seed})
        return fit_from_config(method, acts, seed=run_seed).vector

    by_run = [fit(s) for s in (3, 4)]
    fixed = [fit(s, 3) for s in (0, 9)]
    assert not torch.equal(by_run[0], by_run[1])
    assert torch.equal(fixed[0], fixed[1]) and torch.equal(fixed[0], by_run[0])
    assert not torch.equal(fit(0, 4), fixed[0])


def test_confirm_picks_the_top_shown_rows_and_half_the_scenarios(tmp_path: Path) -> None:
    """ranking.confirm's choice: the best shown single-run rows (no random control, no pooled row)
    and a seeded half of the scenarios, rounded up; the report prints the verdicts it recorded."""
    from steerexp.sweep import confirm

    df = pd.DataFrame(
        {
            "job": ["p", "a", "r", "b", "c"],
            "label": ["pooled", "mean_diff", "random", "pca_diff", "svd_steer"],
            "method": ["mean_diff", "mean_diff", "random", "pca_diff", "svd_steer"],
            "status": ["ok", "ok", "ok", "ok", "failed"],
            "in_table": [True, True, True, True, True],
            "pooled": [True, False, False, False, False],
        }
    )
    assert confirm.candidates(df, 2)["job"].tolist() == ["a", "b"]
    questions = [{"id": f"s{i // 2}_a{i % 2}", "scenario": f"s{i // 2}"} for i in range(12)]
    half = confirm.half_of_scenarios(questions, 7)
    assert len({q["scenario"] for q in half}) == 3 and len(half) == 6
    assert half == confirm.half_of_scenarios(questions, 7)
    no_scenario = [{"id": f"q{i}"} for i in range(5)]
    assert len(confirm.half_of_scenarios(no_scenario, 1)) == 3, "each question its own scenario"
    (tmp_path / "confirm").mkdir()
    pd.DataFrame(
        [
            ["a", "mean_diff", 30.0, 29.0, 31.0, 9, 3, 29.5, True, ""],
            ["b", "pca_diff", 27.0, 26.0, 28.0, 9, 3, 20.0, False, ""],
        ],
        columns=confirm.CONFIRM_COLUMNS,
    ).to_csv(tmp_path / "confirm" / "confirm.csv", index=False)
    text = "\n".join(confirm.section(tmp_path))
    assert "- mean_diff: replicates: slope 29.50 on 3 scenarios" in text
    assert "- pca_diff: does NOT replicate: slope 20.00" in text and "[26.00, 28.00]" in text


def test_order_test_falls_back_when_the_null_names_other_scenarios() -> None:
    """A null keyed by other scenario names (e.g. question ids) cannot referee the rows: the test
    uses the rows' own spread instead of giving up."""
    from steerexp.sweep import order

    a = pd.Series([3.0, 3.2, 2.9, 3.1], index=["s0", "s1", "s2", "s3"])
    b = a - 1.0 + np.array([0.01, -0.02, 0.0, 0.01])
    null = pd.DataFrame(np.arange(12.0).reshape(3, 4), columns=["q0", "q1", "q2", "q3"])
    p, ref = order.pair_test(a, b, null)
    assert ref == "row_spread" and p < 1e-3
    p, ref = order.pair_test(a, b, null.set_axis(list(a.index), axis=1))
    assert ref == "null_pairs" and p == pytest.approx(1.0), "every null gap (4, 8, 4) is wider"


def test_reachable_says_when_the_null_is_too_small_for_the_family() -> None:
    """A rank p cannot go below 1/(K+1): six rows under Holm over K = 64 can never reach 0.05
    (6/65 = 0.092), and the report says which K can; BH's floor is 1/(K+1) itself."""
    from steerexp.sweep import rows

    def frame(m: int, k: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "in_table": [True] * (m + 1),
                "status": ["ok"] * (m + 1),
                "p_null": [1 / (k + 1)] * (m + 1),
                "method": [f"m{i}" for i in range(m)] + ["random"],
                "null_k": [k] * (m + 1),
            }
        )

    floor, needed = rows.reachable(frame(6, 64), "holm")
    assert floor == pytest.approx(6 / 65) and needed == 120
    assert rows.reachable(frame(6, 120), "holm")[0] < 0.05
    assert rows.reachable(frame(6, 64), "bh") == (pytest.approx(1 / 65), 64)
    assert rows.reachable(frame(6, 64).drop(columns="null_k"), "holm") is None
