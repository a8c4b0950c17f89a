"""Run every benchmark section, or the ones named: ``python -m bench fisher extract``.

``realistic`` (hub-shaped random models at full width, :mod:`bench.realistic`) is the last of
the default run; ``python -m bench realistic`` runs it alone."""

from __future__ import annotations

import importlib
import sys
import time

SECTIONS = ["fisher", "extract", "generate", "sweep", "null", "peers", "threads", "realistic"]


def main(argv: list[str]) -> None:
    for name in argv or SECTIONS:
        if name not in SECTIONS:
            raise SystemExit(f"unknown bench section {name!r}; valid: {', '.join(SECTIONS)}")
        print(f"\n=== bench: {name} ===", flush=True)
        t0 = time.perf_counter()
        importlib.import_module(f"bench.{name}").main()
        print(f"=== bench: {name} took {time.perf_counter() - t0:.0f} s wall ===", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
