"""Installable anywhere: package data, console scripts, ``--help``, and the user's own config
dirs (``--config-dir DIR`` / ``hydra.searchpath``) checked like the package's options.

The wheel itself is built, installed and run in ``tests/test_wheel.py`` (slow).
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, compose_cfg, steerexp_in_process

import steerexp
from steerexp import CONF_DIR, cli
from steerexp.cli import check_args
from steerexp.config import compose as config
from steerexp.config.errors import SteerexpError
from steerexp.config.schema import GROUPS

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
MY_LLAMA = (
    "name: my_llama\npath: meta-llama/Llama-3.2-1B-Instruct\narchitecture: LlamaForCausalLM\n"
)


def user_dir(tmp_path: Path, files: dict[str, str] | None = None) -> Path:
    """``tmp_path/conf`` holding ``model/my_llama.yaml`` (and ``files``: relative path -> text)."""
    root = tmp_path / "conf"
    for rel, text in {"model/my_llama.yaml": MY_LLAMA, **(files or {})}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def steerexp_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return steerexp_in_process(*args, cwd=cwd)


# --- the package ---------------------------------------------------------------------------


def test_package_data_globs_ship_every_file_of_the_package() -> None:
    """Every non-Python file under steerexp/ (config tree, launcher presets, organism checkpoint,
    data) matches a package-data glob, so the wheel carries it."""
    globs = PYPROJECT["tool"]["setuptools"]["package-data"]["steerexp"]
    root = REPO / "steerexp"
    shipped = {p for g in globs for p in root.glob(g) if p.is_file()}
    files = {
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }
    assert files - shipped == set()
    assert root / "conf/hydra/launcher/slurm_gpu.yaml" in shipped
    assert CONF_DIR == root / "conf"


def test_console_scripts_are_the_module_entry_points() -> None:
    """``steerexp`` is what ``python -m steerexp`` calls, ``steerexp-report`` what
    ``python -m steerexp.report`` calls."""
    scripts = PYPROJECT["project"]["scripts"]
    targets = {}
    for name, target in scripts.items():
        module, _, attr = target.partition(":")
        targets[name] = getattr(importlib.import_module(module), attr)
    report = importlib.import_module("steerexp.report")
    assert targets == {"steerexp": cli.cli, "steerexp-report": report.main}
    assert "cli()" in (REPO / "steerexp/__main__.py").read_text()


def test_help_lists_the_commands_and_the_users_options(tmp_path: Path) -> None:
    user_dir(tmp_path)
    out = steerexp_cli(tmp_path, "--config-dir", "conf", "--help")
    assert out.returncode == 0, out.stderr
    for command in ("steerexp export RUN_DIR", "steerexp -m key=a,b", "steerexp-report SWEEP_DIR"):
        assert command in out.stdout
    (models,) = [ln for ln in out.stdout.splitlines() if ln.startswith("model: ")]
    assert "my_llama" in models.split(", ") and "organism" in models.split(", ")


def test_export_is_a_subcommand(monkeypatch: pytest.MonkeyPatch) -> None:
    """``steerexp export ARGS`` calls ``steerexp.export.main(ARGS)`` and exits with its code."""
    if importlib.util.find_spec("steerexp.export") is None:
        pytest.skip("steerexp.export is not on this branch yet")
    export = importlib.import_module("steerexp.export")
    seen: list[list[str]] = []
    monkeypatch.setattr(export, "main", lambda argv: seen.append(argv) or 3)
    monkeypatch.setattr(sys, "argv", ["steerexp", "export", "outputs/x", "--to", "gguf"])
    with pytest.raises(SystemExit) as exit_:
        cli.cli()
    assert exit_.value.code == 3 and seen == [["outputs/x", "--to", "gguf"]]


# --- the user's own options ----------------------------------------------------------------


def test_own_option_via_config_dir_and_searchpath(tmp_path: Path) -> None:
    """``./conf/model/my_llama.yaml`` is picked up by ``--config-dir conf`` (relative to the
    working directory) and by ``hydra.searchpath=[file://DIR]``, and composes typed."""
    root = user_dir(tmp_path)
    check_args(["--config-dir", str(root), "model=my_llama"])
    check_args([f"--config-dir={root}", "-m", "model=my_llama,organism"])
    check_args([f"hydra.searchpath=[file://{root}]", "model=my_llama"])
    cfg = compose_cfg(f"hydra.searchpath=[file://{root}]", "model=my_llama")
    assert cfg.model.path == "meta-llama/Llama-3.2-1B-Instruct" and cfg.model.dtype == "auto"
    assert config.group_config("model", "my_llama", f"hydra.searchpath=[file://{root}]")[
        "architecture"
    ] == ("LlamaForCausalLM")

    out = steerexp_cli(tmp_path, "--config-dir", "conf", "model=my_llama", "--cfg", "job")
    assert out.returncode == 0, out.stderr
    assert "name: my_llama" in out.stdout and "dtype: auto" in out.stdout


def test_unknown_option_lists_the_users_options_too(tmp_path: Path) -> None:
    root = user_dir(tmp_path)
    with pytest.raises(SteerexpError, match=r"did you mean 'my_llama'\?.*my_llama, organism"):
        check_args(["--config-dir", str(root), "model=my_lama"])
    with pytest.raises(SteerexpError, match=r"unknown model option 'my_llama'"):
        check_args(["model=my_llama"])  # without the dir it is not an option


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "name: bad\npath: x/y\ndtyp: float16\n",
            r"bad.yaml: unknown key of model \(ModelConfig\) 'dtyp'; did you mean 'dtype'\?",
        ),
        ("path: x/y\n", r"bad.yaml: a model option must set name \(ModelConfig\)"),
        ("name: bad\ntrust_remote_code: maybe\n", r"model.trust_remote_code='maybe' must be true"),
        ("name: bad\nlayer_frac: [a, b]\n", r"model.layer_frac=\['a', 'b'\] must be a list of"),
        ("- name\n", r"bad.yaml: a model option must be a mapping"),
    ],
)
def test_a_wrong_user_option_is_a_one_line_error(tmp_path: Path, text: str, error: str) -> None:
    root = user_dir(tmp_path, {"model/bad.yaml": text})
    with pytest.raises(SteerexpError, match=error):
        check_args(["--config-dir", str(root), "model=bad"])
    with pytest.raises(SteerexpError, match=error):
        check_args([f"hydra.searchpath=[file://{root}]", "-m", "model=organism,bad"])


def test_a_wrong_user_option_exits_2_in_one_line(tmp_path: Path) -> None:
    user_dir(tmp_path, {"model/bad.yaml": "name: bad\ndtyp: float16\n"})
    out = steerexp_cli(tmp_path, "--config-dir", "conf", "model=bad")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "did you mean 'dtype'?" in out.stderr


def test_a_variant_key_without_its_base_names_the_base(tmp_path: Path) -> None:
    """A Fisher method file must start from ``fisher_base`` (as the package's do); with it, it
    is valid and composes with its own ``reg``."""
    bare = "name: mine\nkind: fisher\nreg: 0.1\n"
    root = user_dir(tmp_path, {"method/mine.yaml": bare})
    with pytest.raises(SteerexpError, match=r"add 'defaults: \[fisher_base, _self_\]'"):
        check_args(["--config-dir", str(root), "method=mine"])
    (root / "method/mine.yaml").write_text("defaults: [fisher_base, _self_]\n" + bare)
    check_args(["--config-dir", str(root), "method=mine"])
    cfg = compose_cfg(f"hydra.searchpath=[file://{root}]", "method=mine")
    assert cfg.method.reg == 0.1 and cfg.method.fisher == "ief"


@pytest.mark.parametrize("rel", ["model/organism.yaml", "config.yaml", "experiment/journal.yaml"])
def test_a_user_file_named_like_a_builtin_one_is_refused(tmp_path: Path, rel: str) -> None:
    """Hydra reads the package's tree first, so the user's ``model/organism.yaml`` (or
    ``config.yaml``) would be ignored silently; an identical copy is fine."""
    root = user_dir(tmp_path, {rel: "name: organism\ndtype: bfloat16\n"})
    with pytest.raises(SteerexpError, match=rf"steerexp ships {rel} too"):
        check_args(["--config-dir", str(root)])
    (root / rel).write_bytes((CONF_DIR / rel).read_bytes())
    check_args(["--config-dir", str(root)])


def test_a_missing_config_dir_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(SteerexpError, match=r"--config-dir '.*nowhere': no such config directory"):
        check_args(["--config-dir", str(tmp_path / "nowhere"), "model=organism"])
    with pytest.raises(SteerexpError, match=r"hydra.searchpath 'file://.*nowhere': no such"):
        check_args([f"hydra.searchpath=[file://{tmp_path}/nowhere]"])


def test_pkg_searchpath_entries_resolve_to_the_package() -> None:
    assert config.user_dirs(searchpath=["pkg://steerexp"]) == [Path(steerexp.__file__).parent]


def test_every_builtin_option_passes_the_file_check() -> None:
    """The file check accepts every option the package ships (it is no stricter than Hydra)."""
    for group in GROUPS:
        for option in config.options(group):
            config.check_option_file(group, CONF_DIR / group / f"{option}.yaml")
