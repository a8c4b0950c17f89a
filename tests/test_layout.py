"""The package tree is the architecture: imports flow entry point -> pipeline -> stages -> core.

A stage never imports another stage (what one stage hands the next is a typed value in
``steerexp.store.results``), core imports no stage, and neither imports the pipeline or the
sweep side. Every import counts, including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import steerexp

PACKAGE = Path(steerexp.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str) -> set[str]:
    """Every steerexp module ``source`` imports (``from steerexp import x`` counts as ``steerexp.x``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("steerexp")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("steerexp"):
                out.add(node.module)
                out |= {f"{node.module}.{a.name}" for a in node.names}
    return {
        m
        for m in out
        if (PACKAGE.parent / m.replace(".", "/")).exists()
        or (PACKAGE.parent / (m.replace(".", "/") + ".py")).exists()
    }


def layer(module: str) -> str:
    """``core`` (config, models, data, store, render), ``stages.<name>``, ``sweep``, ``pipeline``, ``organism`` or ``entry``."""
    parts = module.split(".")
    if len(parts) < 2:
        return "entry"
    if parts[1] == "stages" and len(parts) > 2:
        return f"stages.{parts[2]}"
    if parts[1] in ("config", "models", "data", "store", "render"):
        return "core"
    return parts[1] if parts[1] in ("stages", "sweep", "pipeline", "organism") else "entry"


#: Imports that cross the rules on purpose, each with its reason.
ALLOWED = {
    # ranking.confirm re-runs the top rows of a finished sweep: the report side calls the
    # pipeline once the ranking exists (a lazy import inside the function; no cycle at import)
    ("steerexp.sweep.confirm", "steerexp.pipeline.experiment"),
}


def violations(extra: dict[str, str] | None = None) -> list[str]:
    """One line per forbidden import in the package (plus ``extra``: module name -> source)."""
    sources = {module_name(p): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}
    bad = []
    for me, source in {**sources, **(extra or {})}.items():
        mine = layer(me)
        for target in sorted(imported(source)):
            if (me, target) in ALLOWED:
                continue
            theirs = layer(target)
            if (
                mine == "core"
                and theirs not in ("core", "organism", "entry")
                or (
                    mine == "core"
                    and target in ("steerexp.methods", "steerexp.report", "steerexp.cli")
                )
            ):
                bad.append(f"{me} (core) imports {target}")
            elif mine.startswith("stages.") and (
                (theirs.startswith("stages") and theirs != mine)
                or theirs in ("pipeline", "sweep")
                or target in ("steerexp.methods", "steerexp.report", "steerexp.cli")
            ):
                bad.append(f"{me} ({mine}) imports {target}")
            elif mine == "sweep" and (theirs.startswith("stages") or theirs == "pipeline"):
                bad.append(f"{me} (sweep) imports {target}")
    return bad


def test_imports_flow_one_way() -> None:
    assert violations() == []


def test_the_walk_sees_forbidden_imports() -> None:
    """The checker itself: a stage importing another stage, or core importing a stage, is reported."""
    probe = {
        "steerexp.stages.generate.probe": "from steerexp.stages.judge import judge_rows\n"
        "from steerexp.store import cache\n",
        "steerexp.store.probe": "def f():\n    from steerexp.stages.fit import fisher\n",
    }
    assert violations(probe) == [
        "steerexp.stages.generate.probe (stages.generate) imports steerexp.stages.judge",
        "steerexp.store.probe (core) imports steerexp.stages.fit",
        "steerexp.store.probe (core) imports steerexp.stages.fit.fisher",
    ]
