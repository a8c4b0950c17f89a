"""Torch thread sizing: the CPUs a process may use, the model's width, the user's choice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from steerexp.models import threads


@pytest.fixture
def eight_cpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An 8-CPU affinity mask and an empty cgroup root (no quota) under ``tmp_path``."""
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 8)
    monkeypatch.setattr(threads, "CGROUP_ROOT", tmp_path)
    return tmp_path


def test_affinity_mask_is_the_ceiling(eight_cpus: Path) -> None:
    assert threads.usable_cpus({}) == 8


def test_slurm_cpus_per_task_caps(eight_cpus: Path) -> None:
    assert threads.usable_cpus({"SLURM_CPUS_PER_TASK": "3"}) == 3
    assert threads.usable_cpus({"SLURM_CPUS_PER_TASK": "64"}) == 8
    assert threads.usable_cpus({"SLURM_CPUS_PER_TASK": "junk"}) == 8


def test_cgroup_v2_quota_is_parsed_and_rounded_up(eight_cpus: Path) -> None:
    (eight_cpus / "cpu.max").write_text("250000 100000\n")
    assert threads.cgroup_cpus(eight_cpus) == 2.5
    assert threads.usable_cpus({}) == 3
    (eight_cpus / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpus(eight_cpus) is None
    assert threads.usable_cpus({}) == 8


def test_cgroup_v1_quota(eight_cpus: Path) -> None:
    (eight_cpus / "cpu").mkdir()
    (eight_cpus / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (eight_cpus / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.usable_cpus({}) == 2
    (eight_cpus / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.usable_cpus({}) == 8


def test_sizing_rule(eight_cpus: Path) -> None:
    wide, narrow = 4096, 128
    assert threads.sized_threads(narrow, env={}) == 1
    assert threads.sized_threads(wide, env={}) == 8
    assert threads.sized_threads(wide, workers=3, env={}) == 2
    assert threads.sized_threads(wide, workers=16, env={}) == 1
    assert threads.sized_threads(wide, env={"SLURM_CPUS_PER_TASK": "4"}) == 4


def test_user_choice_wins(eight_cpus: Path) -> None:
    assert threads.sized_threads(128, env={"OMP_NUM_THREADS": "6"}) == 6
    with threads.restored():
        torch.set_num_threads(torch.get_num_threads() + 1)  # the user's own call
        assert threads.sized_threads(128, env={}) == torch.get_num_threads()


def test_own_settings_are_not_the_users_and_are_restored() -> None:
    before = torch.get_num_threads()
    with threads.restored():
        threads.set_threads(before + 1)
        assert threads.user_threads({}) is None
        with threads.one_thread():
            assert torch.get_num_threads() == 1
            assert threads.user_threads({}) is None
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    assert threads.user_threads({}) is None


def test_config_width() -> None:
    class Cfg:
        hidden_size = 2560

    class Multi:
        text_config = Cfg()

    assert threads.config_width(Cfg()) == 2560
    assert threads.config_width(Multi()) == 2560
    assert threads.config_width(object()) == threads.SMALL_WIDTH
