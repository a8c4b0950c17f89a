"""Caches (extraction, judged rows, models, third-party): checked entries, permissions, full or
unwritable disks cost only the reuse, keys by content."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from helpers import tiny

from steerexp.models.loading import model_fingerprint
from steerexp.store import cache
from steerexp.store.artifacts import write_json


def test_files_and_cache_entries_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        entry = cache.save(tmp_path / "cache", "k", {"t": torch.zeros(2)}, {"p": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o664
    assert entry is not None and entry.stat().st_mode & 0o777 == 0o775
    assert (entry / cache.TENSORS).stat().st_mode & 0o777 == 0o664


def test_unwritable_cache_runs_uncached_with_a_warning(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.warns(UserWarning, match=r"extraction cache .* is not writable .*running uncached"):
        assert cache.save(blocker / "cache", "k", {"t": torch.zeros(2)}, {}) is None


def test_fingerprint_is_by_content_not_path(tmp_path: Path) -> None:
    src = Path(tiny().path)
    copy = tmp_path / "elsewhere"
    shutil.copytree(src, copy)
    fp = [
        model_fingerprint({}, SimpleNamespace(path=str(p), fingerprint=None)) for p in (src, copy)
    ]
    assert fp[0] == fp[1] and "model.safetensors" in fp[0]["files"]
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    changed = model_fingerprint({}, SimpleNamespace(path=str(copy), fingerprint=None))
    assert changed["files"]["config.json"] != fp[0]["files"]["config.json"]
    hub = model_fingerprint(
        {"revision": "main"},
        SimpleNamespace(path="Org/Name", fingerprint=None, hf=SimpleNamespace(config=object())),
    )
    assert hub == {"hub_id": "Org/Name", "revision": "main", "commit": None}


def _rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "question_id": ["q1", "q1", "q2", "q2"],
            "coeff": [-0.5, 0.5, -0.5, 0.5],
            "log_ratio": [-1.25, 2.5, -0.75, 3.0],
            "valid": [True, True, True, True],
            "completion": ["a", "b", "c", "d"],
        }
    )


@pytest.mark.parametrize("damage", ["edit", "truncate", "no_digest"])
def test_damaged_row_cache_entry_is_rebuilt(tmp_path: Path, damage: str) -> None:
    """An edited log-ratio used to change the slope, a truncated file to drop rows (status ok)."""
    from steerexp.store import rowcache

    entry = tmp_path / "generations" / "key"
    rowcache.store_rows(entry, _rows(), {"n": 4})
    dose, meta = rowcache.load_rows(entry)
    pd.testing.assert_frame_equal(dose, _rows())
    assert meta == {"n": 4}
    rows = entry / "dose.csv"
    text = rows.read_text()
    if damage == "edit":
        rows.write_text(text.replace("2.5", "9.5"))
    elif damage == "truncate":
        rows.write_text("".join(text.splitlines(keepends=True)[:3]))
    else:
        (entry / "meta.json").write_text(json.dumps({"n": 4}))
    assert rowcache.load_rows(entry) is None
    assert not entry.exists()
    built = []

    def build() -> tuple[pd.DataFrame, dict]:
        built.append(True)
        return _rows(), {"n": 4}

    dose, _, cached, _ = rowcache.cached_rows(entry, build)
    assert built == [True] and not cached and len(dose) == 4
    dose, _, cached, _ = rowcache.cached_rows(entry, build)
    assert built == [True] and cached and dose["log_ratio"].tolist() == [-1.25, 2.5, -0.75, 3.0]


def test_extraction_cache_disk_full_warns_once_and_goes_on(tmp_path: Path, monkeypatch) -> None:
    """safetensors reports a full disk as SafetensorError, not OSError: it used to end the run."""
    from safetensors import SafetensorError

    from steerexp.store import cache

    def full(*args, **kwargs) -> None:
        raise SafetensorError("Error while serializing: No space left on device (os error 28)")

    monkeypatch.setattr(cache, "save_file", full)
    with pytest.warns(
        UserWarning, match=r"could not write extraction cache entry k .*No space left"
    ):
        assert cache.save(tmp_path, "k", {"x": torch.ones(2)}, {"p": 1}) is None
    assert not (tmp_path / "k").exists()


def test_row_cache_disk_full_warns_and_goes_on(tmp_path: Path, monkeypatch) -> None:
    import errno
    import os

    from steerexp.store import rowcache

    def full(*args, **kwargs) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rowcache.artifacts, "write_frame", full)
    with pytest.warns(UserWarning, match=r"could not cache .*No space left on device"):
        dose, _, cached, _ = rowcache.cached_rows(tmp_path / "e", lambda: (_rows(), {}))
    assert len(dose) == 4 and not cached and not (tmp_path / "e").exists()


def test_model_build_into_a_full_cache_goes_to_a_temp_dir(tmp_path: Path, monkeypatch) -> None:
    import errno

    from steerexp.models import builders

    def full(target: Path, replace: bool = True):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(builders, "atomic_dir", full)
    with pytest.warns(UserWarning, match=r"could not write .*No space left on device.*temporary"):
        built = builders.atomic_build(
            tmp_path / "m", lambda out: (out / "config.json").write_text("{}")
        )
    assert built != tmp_path / "m" and (built / "config.json").read_text() == "{}"


def test_matplotlib_and_wandb_caches_live_under_steerexp_cache(tmp_path: Path) -> None:
    import os

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MPLCONFIGDIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")
    }
    env.update(STEEREXP_CACHE=str(tmp_path / "cache"), HOME=str(tmp_path / "home"))
    code = (
        "import steerexp, matplotlib.font_manager, wandb.env as e; "
        "print(matplotlib.get_cachedir()); print(e.get_cache_dir()); print(e.get_data_dir())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    cache = tmp_path / "cache"
    assert out.stdout.split() == [
        str(cache / "matplotlib"),
        str(cache / "wandb/cache"),
        str(cache / "wandb/data"),
    ]
    assert list((cache / "matplotlib").glob("fontlist*.json"))
    assert not (tmp_path / "home").exists()
