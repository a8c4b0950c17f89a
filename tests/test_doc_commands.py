"""Every command in README.md and docs/*.md, run or validated.

Commands are the ``steerexp``, ``python -m steerexp[.module]``, ``steerexp-report`` and
``make`` lines of the shell code blocks and the same commands in inline code spans (``a|b``
there lists alternatives; ``...`` and stand-ins like ``<overrides>`` or ``RUN_DIR`` are
dropped). Each is checked without loading a model:

- ``steerexp ARGS``: the CLI's own checks (:func:`steerexp.cli.check_args`), then every job of
  the sweep (the command line's axes and an experiment file's ``hydra.sweeper.params``)
  composed by Hydra and passed through the model-free checks
  (:func:`steerexp.pipeline.check_config`); a sweep of more than :data:`MAX_JOBS` jobs is
  covered value by value (:func:`jobs`);
  ``--help`` and ``--cfg`` are run. The experiment and the sweep themselves run in
  ``tests/test_wheel.py`` (``steerexp``, ``steerexp -m ...``) and ``tests/test_e2e.py``.
- ``python -m steerexp.X ...`` / ``steerexp-report``: the module's ``--help`` runs and lists
  every ``--flag`` the command uses.
- ``make TARGET``: ``make -n`` (nothing runs) knows the target, and every ``-m steerexp``
  line of its recipe is validated as above; ``make help`` runs and lists every documented target.

Each page runs in an empty working directory that holds ``examples/`` (a link) and the YAML
files its code blocks show under ``conf/`` (a block starting ``# conf/<group>/<name>.yaml``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
import itertools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import REPO
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, open_dict

from steerexp import CONF_DIR
from steerexp.cli import check_args
from steerexp.config import compose as config
from steerexp.config.schema import GROUPS
from steerexp.pipeline import check_config

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
#: A sweep of more jobs is validated with each value of each axis once, not every combination.
MAX_JOBS = 8
#: Documented commands that cannot be validated as written, and why (each must still be there).
NOT_VALIDATED = {
    "python -m steerexp method=my_method": "the method of docs/architecture.md's walk-through, "
    "registered in code first",
}


#: A usage pattern's stand-ins (``<overrides>``, ``[--out DIR]``, ``RUN_DIR``, ``key=a,b``):
#: left out of the ``steerexp`` arguments checked.
PLACEHOLDER = re.compile(r"<[^>]*>|^\[|\]$|^[A-Z][A-Z_]*$|^key=")


@dataclass(frozen=True)
class Command:
    page: Path
    text: str
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}: {shlex.join(self.argv)}"


def _program(argv: list[str]) -> str | None:
    """``steerexp``, ``steerexp-report``, ``make`` or ``python -m <module>`` for ours, else None."""
    if argv[:2] == ["python", "-m"] and len(argv) > 2 and argv[2].split(".")[0] == "steerexp":
        return argv[2]
    if argv and argv[0] in ("steerexp", "steerexp-report", "make"):
        return argv[0]
    return None


def _commands(page: Path, text: str) -> list[Command]:
    try:
        argv = [a for a in shlex.split(text, comments=True) if a != "..."]
    except ValueError:
        return []
    if not argv or _program(argv) is None:
        return []
    options = [a.split("|") if "|" in a else [a] for a in argv]
    if any(len(o) > 1 for o in options):  # `key=a|b`: the key goes with each alternative
        key = [o[0].partition("=")[0] + "=" if "=" in o[0] else "" for o in options]
        options = [
            [o[0], *(k + x if k and "=" not in x else x for x in o[1:])]
            for o, k in zip(options, key, strict=True)
        ]
    return [Command(page, text, tuple(c)) for c in itertools.product(*options)]


def documented() -> list[Command]:
    """Every command of every page, in page order, each once."""
    found: dict[tuple[str, ...], Command] = {}
    for page in PAGES:
        text = page.read_text()
        for lang, block in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
            if lang in SHELL:
                for line in block.replace("\\\n", " ").splitlines():
                    for c in _commands(page, line.strip()):
                        found.setdefault(c.argv, c)
        prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
        for span in re.findall(r"`([^`\n]+)`", prose):
            for c in _commands(page, span.strip()):
                found.setdefault(c.argv, c)
    return list(found.values())


COMMANDS = documented()


def page_files(page: Path, cwd: Path) -> None:
    """The page's ``# conf/...yaml`` blocks written under ``cwd``, and ``examples/`` linked."""
    (cwd / "examples").symlink_to(REPO / "examples")
    for block in re.findall(r"^```yaml\n(.*?)^```", page.read_text(), re.S | re.M):
        first, _, body = block.partition("\n")
        name = first.removeprefix("# ").strip()
        if re.fullmatch(r"conf/\w+/\w+\.yaml", name):
            (cwd / name).parent.mkdir(parents=True, exist_ok=True)
            (cwd / name).write_text(body)


def _config_dir(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a in ("--config-dir", "-cd") and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _compose(config_dir: str | None, *jobs: list[str]) -> list[DictConfig]:
    """The config ``steerexp`` composes for each job's overrides, Hydra's part included (one
    Hydra start-up for all)."""
    searchpath = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return [
            compose(config_name="config", overrides=[*searchpath, *job], return_hydra_config=True)
            for job in jobs
        ]


def jobs(argv: list[str]) -> tuple[list[list[str]], list[tuple[str, str]]]:
    """The overrides of each job the command runs (one for a single run). A sweep of more than
    :data:`MAX_JOBS` jobs gives its first job and one job per other value of each non-group
    axis, and the other options of its group axes as (group, option) pairs."""
    config_dir = _config_dir(argv)
    args = [a for a in argv if "=" in a and not a.startswith("-")]
    parsed = OverridesParser.create().parse_overrides(args)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    axes = {
        o.get_key_element(): [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        for o in parsed
        if o.is_sweep_override()
    }
    if "-m" in argv or "--multirun" in argv:
        params = _compose(config_dir, fixed)[0].hydra.sweeper.params or {}
        for key, value in params.items():
            (o,) = OverridesParser.create().parse_overrides([f"{key}={value}"])
            axes.setdefault(key, [f"{key}={v}" for v in o.sweep_string_iterator()])
    values = list(axes.values())
    if len(list(itertools.product(*values))) <= MAX_JOBS:
        return [[*fixed, *c] for c in itertools.product(*values)], []
    first = [v[0] for v in values]
    combos, options = [first], []
    for i, (key, v) in enumerate(axes.items()):
        for x in v[1:]:
            if key in GROUPS:
                options.append((key, x.partition("=")[2]))
            else:
                combos.append(first[:i] + [x] + first[i + 1 :])
    return [[*fixed, *c] for c in combos], options


def validate_steerexp(argv: list[str]) -> int:
    """``steerexp ARGS`` as the CLI checks it, then each job composed and checked, and each
    further group option composed with its schema; the number of jobs."""
    check_args(argv)
    config_dir = _config_dir(argv)
    all_jobs, options = jobs(argv)
    for cfg in _compose(config_dir, *all_jobs):
        with open_dict(cfg):
            del cfg["hydra"]
        check_config(cfg)
    searchpath = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []
    for group, option in options:
        assert config.group_config(group, option, *searchpath)["name"]
    return len(all_jobs)


def run_cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    program = _program(argv)
    module = {"steerexp": "steerexp", "steerexp-report": "steerexp.report"}.get(program, program)
    rest = argv[3:] if argv[0] == "python" else argv[1:]
    return subprocess.run(
        [sys.executable, "-m", module, *rest], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def make(*args: str) -> subprocess.CompletedProcess:
    """``make`` as a user types it: no variables inherited from a ``make`` this test runs under
    (``make test ARGS=...`` would pass its ARGS on to the documented command)."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "ARGS")
    }
    return subprocess.run(
        ["make", *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False, env=env
    )


def check(command: Command, cwd: Path) -> None:
    argv = list(command.argv)
    program = _program(argv)
    if program == "make":
        dry = make("-n", "-o", ".venv/.installed", *argv[1:])
        assert dry.returncode == 0, dry.stderr
        if argv[1:] == ["help"]:
            helped = make("help")
            assert helped.returncode == 0
            listed = {ln.split()[0] for ln in helped.stdout.splitlines() if ln.strip()}
            assert {c.argv[1] for c in COMMANDS if c.argv[0] == "make"} <= listed
        for line in dry.stdout.splitlines():
            try:
                recipe = shlex.split(line)
            except ValueError:  # a shell line continued on the next (not ours)
                continue
            if "-m" in recipe and recipe[recipe.index("-m") + 1].startswith("steerexp"):
                i = recipe.index("-m")
                check(Command(command.page, line, ("python", *recipe[i:])), cwd)
        return
    if program == "steerexp":
        args = [
            a for a in (argv[3:] if argv[0] == "python" else argv[1:]) if not PLACEHOLDER.search(a)
        ]
        if args[:1] == ["export"]:
            return check_export(args, cwd)
        if {"--help", "-h", "--cfg", "-c"} & set(args):
            out = run_cli(argv, cwd)
            assert out.returncode == 0, out.stderr
            return
        assert validate_steerexp(args) >= 1
        return
    flags = [f for a in argv for f in re.findall(r"(?<![\w-])--[\w-]+", a)]
    helped = module_help("steerexp.report" if program == "steerexp-report" else program)
    for flag in flags:
        assert flag in helped, f"{flag} is not an option of {program}"


@functools.cache
def module_help(module: str) -> str:
    """``python -m <module> --help``, run in-process (the module's ``main(argv)``)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"no module {module}"
    name = f"{module}.__main__" if spec.submodule_search_locations else module
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        importlib.import_module(name).main(["--help"])
    assert done.value.code in (0, None)
    return out.getvalue()


def check_export(args: list[str], cwd: Path) -> None:
    if importlib.util.find_spec("steerexp.export") is None:
        pytest.skip("steerexp.export is not on this branch yet")
    helped = run_cli(["steerexp", "export", "--help"], cwd)
    assert helped.returncode == 0, helped.stderr
    if "--to" in args:
        assert args[args.index("--to") + 1] in helped.stdout


def test_the_pages_hold_the_commands_they_should() -> None:
    """The collection sees every page's commands (a format change would silently drop them)."""
    by_page = {p: [c for c in COMMANDS if c.page == p] for p in PAGES}
    text = {c.text for c in COMMANDS}
    assert "steerexp -m method=mean_diff,pca_diff,svd_steer,random module=hs,o_proj" in text
    own = [
        c for c in by_page[REPO / "docs/own-data.md"] if c.argv[:3] == ("python", "-m", "steerexp")
    ]
    assert len(own) >= 4 and sum("-m" in c.argv[3:] for c in own) >= 2
    assert any(c.argv[:2] == ("make", "test") for c in by_page[REPO / "README.md"])
    assert any("--config-dir" in c.argv for c in by_page[REPO / "docs/configuration.md"])
    for text_ in NOT_VALIDATED:
        assert text_ in text, f"NOT_VALIDATED lists {text_!r}, which no page shows any more"


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_documented_command(
    command: Command, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if command.text in NOT_VALIDATED:
        pytest.skip(NOT_VALIDATED[command.text])
    page_files(command.page, tmp_path)
    monkeypatch.chdir(tmp_path)
    check(command, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in ("examples", "conf")) in (
        [],
        ["outputs"],
        ["multirun"],
    ), "validating wrote more than the CLI's output-dir check"


def test_own_data_commands_read_the_example_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The own-data page's paths are relative to the working directory, as typed."""
    page_files(REPO / "docs/own-data.md", tmp_path)
    monkeypatch.chdir(tmp_path)
    single = [
        c.argv[3:]
        for c in COMMANDS
        if c.page.name == "own-data.md"
        and c.argv[:3] == ("python", "-m", "steerexp")
        and "-m" not in c.argv[3:]
    ]
    for args in single:
        (cfg,) = _compose(None, list(args))
        assert str(cfg.dataset.path).startswith("examples/")
