"""Regenerate every figure the README quotes, from an empty cache, in one command (`make figures`).

Runs, each in a fresh ``STEEREXP_CACHE``: the shipped organism's acceptance numbers, the default
experiment (the README's end-to-end row), the journal's method table on ``hs`` and on
``o_proj``, the three-loss table, the honesty concept given only as files, the reseed coverage of
the slope interval (``scripts/reseed_coverage.py``), and ``make bench``.
The reference reports land in ``multirun_reports/{journal_hs,journal_o_proj,losses,concept_files}/``; everything printed is collected in
``multirun_reports/FIGURES.md`` with the command behind each block, so a README figure can be
traced to the run that made it. The min/median/max table over recipe seeds needs organism
rebuilds (about 11 min each) and comes from ``make test-slow`` / ``--rebuild --seed N``
instead.

``python scripts/figures.py [section ...]`` runs the named sections only (default: all).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REPORTS = REPO / "multirun_reports"
PY = sys.executable


def _sweep(name: str, *overrides: str) -> list[str]:
    """A ``-m`` sweep whose report goes to ``multirun_reports/<name>/`` (replacing the old one)."""
    return [
        PY, "-m", "steerexp", "-m", *overrides,
        f"report_name={name}", "report_overwrite=true",
        f"hydra.sweep.dir=multirun/figures/{name}",
    ]  # fmt: skip


SECTIONS: dict[str, list[str]] = {
    "organism": [PY, "-m", "steerexp.organism", "--accept"],
    "default_run": [PY, "-m", "steerexp"],
    "journal_hs": _sweep("journal_hs", "+experiment=journal", "module=hs"),
    "journal_o_proj": _sweep("journal_o_proj", "+experiment=journal", "module=o_proj"),
    "losses": _sweep("losses", "+experiment=journal_losses"),
    "concept": _sweep(
        "concept_files",
        "method=mean_diff,pca_diff,pca_center,random",
        "dataset=file",
        "dataset.path=examples/organism_personas.jsonl",
        "eval=file",
        "eval.path=examples/organism_questions.jsonl",
        'eval.prompt_template="{question}"',
        'eval.answer_prefix="Final choice:"',
        "eval.max_new_tokens=32",
    ),
    # issue 21's acceptance: >= 90% of seeds 1-5's slopes inside seed 0's [slope_lo, slope_hi]
    "reseed": [PY, "scripts/reseed_coverage.py"],
    "bench": [PY, "-m", "bench"],
}


SWEEPS = ("journal_hs", "journal_o_proj", "losses", "concept")


def run_section(name: str, cache: Path) -> str:
    """Run one section with ``cache`` as its STEEREXP_CACHE (a sweep also into an empty sweep
    dir, so no job of an earlier pass joins its report); return its Markdown block."""
    cmd = SECTIONS[name]
    sweep_dir = next((a.split("=", 1)[1] for a in cmd if a.startswith("hydra.sweep.dir=")), None)
    if sweep_dir is not None:
        shutil.rmtree(REPO / sweep_dir, ignore_errors=True)
    env = {**os.environ, "STEEREXP_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    shown = " ".join(c if c != PY else "python" for c in cmd)
    out = proc.stdout.strip()
    if name in SWEEPS:
        report_name = next(a for a in cmd if a.startswith("report_name=")).split("=", 1)[1]
        report = REPORTS / report_name / "ranking.md"
        out = report.read_text().strip() if proc.returncode == 0 else out
    block = f"## {name}\n\n`{shown}` (exit {proc.returncode}, {seconds:.0f} s wall)\n\n"
    block += out if name in SWEEPS else f"```\n{out}\n```"
    if proc.returncode != 0:
        block += f"\n\nstderr (last lines):\n```\n{proc.stderr.strip()[-3000:]}\n```"
    print(block, flush=True)
    return block


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        print(f"unknown section {unknown[0]!r}; valid: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    REPORTS.mkdir(exist_ok=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    blocks = [
        "# Figures quoted in the README",
        f"Made by `make figures` at commit {commit or '?'}, each section from an empty "
        "STEEREXP_CACHE on the machine that ran it.",
    ]
    failed = 0
    with tempfile.TemporaryDirectory(prefix="steerexp-figures-") as tmp:
        for name in names or list(SECTIONS):
            # The sweeps share one cache, as a user's sweeps would (the null is reused).
            shared = name in (*SWEEPS, "reseed")
            cache = Path(tmp) / ("sweeps" if shared else name)
            block = run_section(name, cache)
            failed += "(exit 0," not in block
            blocks.append(block)
    target = REPORTS / ("FIGURES.md" if not names else f"FIGURES-{'-'.join(names)}.md")
    target.write_text("\n\n".join(blocks) + "\n")
    print(f"wrote {target.relative_to(REPO)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
