"""The random null: its directions, statistics, reference rows and cache."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import ROW_MODULES, ROW_QS, group, row_steering
from scipy import stats

from steerexp.pipeline import reference as null
from steerexp.stages.regress.ols import regress
from steerexp.store import rowcache


def test_compare_follows_the_prediction_interval() -> None:
    slopes = np.array([-1.0, 0.5, 2.0, -0.3, 0.8, 1.2, -0.6, 0.1])
    k, mean, sd = len(slopes), slopes.mean(), slopes.std(ddof=1)
    out = null.compare(5.0, slopes)
    t = (5.0 - mean) / (sd * math.sqrt(1 + 1 / k))
    assert out["p_random"] == pytest.approx(2 * stats.t.sf(t, k - 1), rel=1e-12)
    assert out["vs_random"] == pytest.approx(5.0 / np.median(np.abs(slopes)))
    assert out["p_random_rank"] == pytest.approx(1 / (k + 1))
    inside = null.compare(0.5, slopes)
    assert inside["p_random"] > 0.5 and inside["p_random_rank"] == pytest.approx((1 + 6) / (k + 1))
    assert math.isnan(null.compare(float("nan"), slopes)["p_random"])
    s = null.summary(slopes)
    assert s["null_k"] == 8 and s["null_abs_median"] == pytest.approx(np.median(np.abs(slopes)))


def test_reference_rows_are_one_generation_and_cached(
    tiny_model, row_ev, row_spec, tmp_path, monkeypatch
) -> None:
    calls = []
    real = null.generate_rows
    monkeypatch.setattr(
        null, "generate_rows", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k)
    )
    personas = null.persona_texts(group("dataset", "organism"))
    assert personas["positive"].startswith("Pretend you're an honest person")
    coeffs = [-1.0, 0.0, 1.0]
    steerings = [row_steering(10), row_steering(11), row_steering(12)]
    ev2 = {**row_ev, "repeats": 2}

    def build():
        dose = null.generate_reference(
            tiny_model, ev2, ROW_QS, coeffs, steerings, personas, row_spec, "logratio", 0, False
        )
        return dose, {"k": 3}

    dose, meta, cached, _ = rowcache.cached_rows(tmp_path / "n", build)
    assert calls == [3 * 2 * 3 * 2 + 2 * 2 * 2] and not cached
    assert sorted(dose["direction"].unique()) == [-1, 0, 1, 2]
    assert (dose[dose["direction"] == -1]["coeff"] == 0).all()
    assert sorted(dose[dose["direction"] == -1]["persona"].unique()) == ["negative", "positive"]
    again, meta2, cached2, _ = rowcache.cached_rows(tmp_path / "n", build)
    assert cached2 and calls == [calls[0]] and meta2["build_s"] == meta["build_s"]
    pd.testing.assert_frame_equal(again, dose, check_dtype=False)
    # the stored slopes are the ones regress gives each direction
    slopes = null.null_slopes(again)
    part = dose[dose["direction"] == 1]
    expect = regress(part["coeff"], part["log_ratio"], part["valid"])["slope"]
    assert slopes[1] == pytest.approx(expect, nan_ok=True)


def test_null_directions_are_the_random_method_unflipped() -> None:
    acts = {m: torch.randn(8, 64) for m in ROW_MODULES}
    dirs = null.null_directions(ROW_MODULES, acts, 3, 100)
    raw = torch.randn(64, generator=torch.Generator().manual_seed(101), dtype=torch.float64)
    assert torch.equal(dirs[1][ROW_MODULES[0]], (raw / raw.norm()).float())
    assert not torch.equal(dirs[0][ROW_MODULES[0]], dirs[1][ROW_MODULES[0]])


def test_directions_file_is_byte_identical_across_processes(tmp_path) -> None:
    """safetensors writes metadata from a per-process hash map; write_directions sorts it."""
    import subprocess
    import sys

    code = (
        "import sys, torch; from pathlib import Path; from steerexp.store.artifacts import write_directions; "
        "write_directions(Path(sys.argv[1]), {'model.layers.3': torch.ones(4), 'model.layers.2': torch.zeros(4)}, "
        "{'method': 'm', 'loss': 'l', 'raw_norms': {'b': 1, 'a': 2}, 'scales': {'x': 1.5}, 'cache_key': 'k', "
        "'fit_info': {'z': {'b': 1, 'a': True}}, 'coeff_units': 'norm'})"
    )
    blobs = set()
    for i in range(3):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{i}.st")], check=True)
        blobs.add((tmp_path / f"{i}.st").read_bytes())
    assert len(blobs) == 1
    from safetensors import safe_open

    with safe_open(str(tmp_path / "0.st"), "pt") as f:
        assert f.metadata()["raw_norms"] == '{"a": 2, "b": 1}'
        assert torch.equal(f.get_tensor("model.layers.3"), torch.ones(4))


def test_completions_with_carriage_returns_round_trip(tmp_path: Path) -> None:
    """A sampled completion may hold a bare ``\\r``; every row must read back as written."""
    from steerexp.store import artifacts

    dose = pd.DataFrame(
        {
            "question_id": ["q1", "q2", "q3"],
            "coeff": [-0.5, 0.0, 0.5],
            "repeat": [0, 1, 2],
            "log_ratio": [1.5, float("nan"), -2.25],
            "pmass": [0.9, float("nan"), 0.8],
            "valid": [True, False, True],
            "forced": [False, False, False],
            "completion": ["Final choice: No", 'brok\ren\x0b text, "quoted"', ""],
            "stop_reason": ["regex", "length", "stop_token"],
            "n_tokens": [4, 32, 0],
        }
    )
    artifacts.write_dose_response(tmp_path / "dose_response.csv", dose)
    back = pd.read_csv(tmp_path / "dose_response.csv", keep_default_na=False, na_values=[""])
    assert len(back) == 3 and list(back["question_id"]) == ["q1", "q2", "q3"]
    assert back["completion"].fillna("").tolist() == dose["completion"].tolist()
    assert back["valid"].tolist() == [True, False, True]
    rowcache.store_rows(tmp_path / "entry", dose.assign(direction=0, persona=""), {"k": 1})
    loaded = rowcache.load_rows(tmp_path / "entry")
    assert loaded is not None and loaded[0]["completion"].tolist() == dose["completion"].tolist()


def test_a_cached_null_is_extended_not_recomputed(
    tiny_model, row_ev, row_spec, tmp_path, monkeypatch
) -> None:
    """K = 2 cached, then K = 4: only directions 2-3 at nonzero coefficients are generated, the
    first two directions' rows are kept as they were, and the result equals a fresh K = 4 build."""
    calls: list[int] = []
    real = null.generate_rows
    monkeypatch.setattr(
        null, "generate_rows", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k)
    )
    coeffs, ev2 = [-1.0, 0.0, 1.0], {**row_ev, "repeats": 2}
    personas = null.persona_texts(group("dataset", "organism"))
    all_steerings = [row_steering(20 + i) for i in range(4)]

    def build(k: int):
        def gen(start: int, cs, with_personas: bool) -> pd.DataFrame:
            rows = null.generate_reference(
                tiny_model,
                ev2,
                ROW_QS,
                cs,
                all_steerings[start:k],
                personas if with_personas else {},
                row_spec,
                "logratio",
                0,
                False,
            )
            return rows.assign(
                direction=np.where(rows["direction"] >= 0, rows["direction"] + start, -1)
            )

        return gen

    small, _, cached = null.nested_rows(tmp_path / "n", 2, coeffs, build(2))
    assert not cached and calls == [2 * 3 * 2 * 2 + 2 * 2 * 2]
    big, meta, cached = null.nested_rows(tmp_path / "n", 4, coeffs, build(4))
    assert not cached and calls[1] == 2 * 2 * 2 * 2  # 2 new directions x 2 nonzero c x 2 q x 2 r
    assert meta["built_k"] == [[0, 2], [2, 4]]
    pd.testing.assert_frame_equal(big[big["direction"] < 2].reset_index(drop=True), small)
    again, _, cached = null.nested_rows(tmp_path / "n", 3, coeffs, build(3))
    assert cached and len(calls) == 2 and set(again["direction"]) == {-1, 0, 1, 2}
    fresh, _, _ = null.nested_rows(tmp_path / "fresh", 4, coeffs, build(4))
    key = ["direction", "persona", "question_id", "coeff", "repeat"]
    pd.testing.assert_frame_equal(
        big.sort_values(key).reset_index(drop=True),
        fresh.sort_values(key).reset_index(drop=True),
    )
