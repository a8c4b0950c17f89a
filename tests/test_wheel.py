"""The built wheel, installed in a fresh venv that cannot see the source tree, runs the default
experiment and a two-job sweep from an empty directory and writes only there (``make test-wheel``).

The fresh venv gets the shared venv's dependencies through a ``.pth`` line naming its
site-packages: a plain path line adds the folder to ``sys.path`` without processing the ``.pth``
files in it, so the editable install of the checkout stays inactive (checked below).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import REPO

pytestmark = pytest.mark.slow
#: What a run may leave in a checkout without counting as a write into it.
IGNORED = {".git", "__pycache__", ".pytest_cache", ".venv", ".ruff_cache"}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (symlinks not followed, :data:`IGNORED` names skipped) with its
    size and modification time."""
    found: dict[str, tuple[int, int]] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in IGNORED]
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            found[os.path.relpath(os.path.join(folder, name), root)] = (st.st_size, st.st_mtime_ns)
    return found


def checkout_files() -> list[str]:
    """The checkout's files as git sees them (tracked and new, not ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    return [f for f in out.stdout.decode().split("\0") if f and (REPO / f).is_file()]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding only the wheel built from a copy of the checkout (built from a copy so the
    build's own ``build/`` and ``*.egg-info`` stay out of the checkout)."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    for rel in checkout_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    clean = env(work)
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", str(src), "-w", str(work / "dist")],
        check=True,
        cwd=work,
        env=clean,
    )
    (wheel,) = (work / "dist").glob("steerexp-*.whl")
    venv = work / "fresh"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=clean
    )
    python = venv / "bin" / "python"
    # pip first: it must not see the shared venv (and its editable steerexp) while installing
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", str(wheel)], check=True, env=clean
    )
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "shared_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def env(tmp: Path) -> dict[str, str]:
    """The environment of a new user: no PYTHONPATH, empty caches."""
    e = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    e.update(STEEREXP_CACHE=str(tmp / "cache"), XDG_CACHE_HOME=str(tmp / "xdg"), HF_HUB_OFFLINE="1")
    return e


def run(venv: Path, cwd: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        cwd=cwd,
        env=env(cwd.parent),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_wheel_runs_the_experiment_and_a_sweep_from_an_empty_dir(
    fresh: Path, tmp_path: Path
) -> None:
    site_before = snapshot(fresh / "lib")
    repo_before = snapshot(REPO)
    cwd = tmp_path / "work"
    cwd.mkdir()

    where = run(fresh, cwd, "python", "-c", "import steerexp; print(steerexp.__file__)")
    assert where.returncode == 0, where.stderr
    installed = Path(where.stdout.strip())
    assert installed.is_relative_to(fresh) and not installed.is_relative_to(REPO)
    package = installed.parent
    shipped = {p.relative_to(package).as_posix() for p in (package / "conf").rglob("*.yaml")}
    source = {
        p.relative_to(REPO / "steerexp").as_posix()
        for p in (REPO / "steerexp/conf").rglob("*.yaml")
    }
    assert shipped == source and "conf/hydra/launcher/slurm_gpu.yaml" in shipped

    helped = run(fresh, cwd, "steerexp", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "steerexp export RUN_DIR" in helped.stdout and "model: glm4_9b" in helped.stdout

    bad = run(fresh, cwd, "steerexp", "model=organsm")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == (
        "steerexp: error: unknown model option 'organsm'; did you mean 'organism'? valid: "
        + ", ".join(sorted(p.stem for p in (REPO / "steerexp/conf/model").glob("*.yaml")))
        + "\n"
    )
    if (package / "export.py").is_file():
        exported = run(fresh, cwd, "steerexp", "export", "--help")
        assert exported.returncode == 0 and "--to" in exported.stdout, exported.stderr

    (cwd / "conf" / "model").mkdir(parents=True)
    (cwd / "conf" / "model" / "my_llama.yaml").write_text(
        "name: my_llama\npath: meta-llama/Llama-3.2-1B-Instruct\narchitecture: LlamaForCausalLM\n"
    )
    own = run(fresh, cwd, "steerexp", "--config-dir", "conf", "model=my_llama", "--cfg", "job")
    assert own.returncode == 0, own.stderr
    assert "name: my_llama" in own.stdout and "path: meta-llama/Llama-3.2-1B-Instruct" in own.stdout

    single = run(fresh, cwd, "steerexp")
    assert single.returncode == 0, single.stderr[-3000:]
    (run_dir,) = (cwd / "outputs").glob("*/*")
    assert json.loads((run_dir / "status.json").read_text())["status"] == "ok"
    assert json.loads((run_dir / "metrics.json").read_text())["slope"] > 0

    sweep = run(fresh, cwd, "steerexp", "-m", "method=pca_diff,random")
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    (sweep_dir,) = (cwd / "multirun").glob("*/*")
    jobs = sorted(p.parent for p in sweep_dir.glob("*/status.json"))
    assert len(jobs) == 2
    assert all(json.loads((j / "status.json").read_text())["status"] == "ok" for j in jobs)
    assert all((j / "metrics.json").is_file() for j in jobs)
    (report,) = (cwd / "multirun_reports").glob("*/ranking.md")
    assert "pca_diff" in report.read_text() and "random" in report.read_text()

    rebuilt = run(fresh, cwd, "steerexp-report", str(sweep_dir), "--no-copy")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout == (sweep_dir / "ranking.md").read_text()

    assert snapshot(fresh / "lib") == site_before, "a run wrote into site-packages"
    assert snapshot(REPO) == repo_before, "a run wrote into the source tree"
    assert sorted(p.name for p in cwd.iterdir()) == [
        "conf",
        "multirun",
        "multirun_reports",
        "outputs",
    ]
