"""Worker counts for chunk-parallel generation."""

from __future__ import annotations

import os

import pytest

from steerexp.stages.generate.parallel import map_ordered, usable_cpus, worker_count


def test_auto_uses_every_cpu_only_for_small_cpu_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("steerexp.stages.generate.parallel.usable_cpus", lambda: 6)
    assert worker_count("auto", 100, small_cpu_model=True) == 6
    assert worker_count("auto", 4, small_cpu_model=True) == 4
    assert worker_count("auto", 100, small_cpu_model=False) == 1
    assert worker_count(3, 100, small_cpu_model=False) == 3
    assert worker_count(3, 0, small_cpu_model=True) == 1


def test_map_ordered_keeps_order_and_runs_in_other_processes() -> None:
    def where(i: int) -> tuple[int, int]:
        return i * i, os.getpid()

    out = list(map_ordered(where, list(range(7)), workers=2))
    assert [v for v, _ in out] == [i * i for i in range(7)]
    assert os.getpid() not in {pid for _, pid in out}
    assert [v for v, _ in map_ordered(where, list(range(3)), workers=1)] == [0, 1, 4]
    assert usable_cpus() >= 1


def test_a_dead_worker_never_hangs_the_map() -> None:
    parent = os.getpid()

    def dies_in_a_worker(i: int) -> int:
        if i == 2 and os.getpid() != parent:
            os._exit(1)
        return i * i

    with pytest.warns(UserWarning, match="worker process died"):
        out = list(map_ordered(dies_in_a_worker, list(range(6)), workers=2))
    assert out == [i * i for i in range(6)]
