"""Run every benchmark section, or the ones named: ``python -m bench fisher extract``.

Options after a section's name go to that section: ``python -m bench peers --shape organism``.
``realistic`` (hub-shaped random models at full width, :mod:`bench.realistic`) is the last of
the default run; ``python -m bench realistic`` runs it alone."""

from __future__ import annotations

import importlib
import sys
import time

SECTIONS = [
    "fisher",
    "extract",
    "generate",
    "sweep",
    "null",
    "peers",
    "threads",
    "run",
    "realistic",
]


def parse(argv: list[str]) -> list[tuple[str, list[str]]]:
    """Section names in order, each with the options that follow it."""
    plan: list[tuple[str, list[str]]] = []
    for arg in argv:
        if arg in SECTIONS:
            plan.append((arg, []))
        elif plan and (arg.startswith("-") or plan[-1][1]):
            plan[-1][1].append(arg)
        else:
            raise SystemExit(f"unknown bench section {arg!r}; valid: {', '.join(SECTIONS)}")
    return plan or [(name, []) for name in SECTIONS]


def main(argv: list[str]) -> None:
    for name, options in parse(argv):
        print(f"\n=== bench: {name} ===", flush=True)
        t0 = time.perf_counter()
        module = importlib.import_module(f"bench.{name}")
        if options:
            module.main(options)
        else:
            module.main()
        print(f"=== bench: {name} took {time.perf_counter() - t0:.0f} s wall ===", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
