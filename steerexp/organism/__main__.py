"""``python -m steerexp.organism``: verify the shipped organism, retrain it, or measure one.

``--rebuild [--seed N] [--ship]`` retrains the recipe into the cache (and copies it over the
shipped checkpoint); ``--accept [DIR]`` prints every acceptance number of a checkpoint dir
(default: the shipped one) as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

from steerexp.organism import SHIPPED, build, ship, verify


def main(argv: list[str] | None = None) -> None:
    """Rebuild into the cache (and optionally ship it), or verify the shipped checkpoint."""
    ap = argparse.ArgumentParser(prog="python -m steerexp.organism", description=__doc__)
    ap.add_argument("--rebuild", action="store_true", help="retrain from the recipe into the cache")
    ap.add_argument("--seed", type=int, default=0, help="recipe seed of the rebuild (default 0)")
    ap.add_argument("--ship", action="store_true", help="copy the rebuild over the shipped one")
    ap.add_argument(
        "--accept",
        nargs="?",
        const=SHIPPED,
        type=Path,
        metavar="DIR",
        help="print the acceptance numbers of a checkpoint dir (default: the shipped one)",
    )
    args = ap.parse_args(argv)
    if args.ship and not args.rebuild:
        ap.error("--ship needs --rebuild")
    if args.rebuild:
        path = build(force=True, seed=args.seed)
        print(path)
        if args.ship:
            print(f"shipped: {ship(path)}")
    elif args.accept is not None:
        from steerexp.organism.acceptance import measure

        # the end-to-end runs print their rows: keep stdout for the JSON alone
        with tempfile.TemporaryDirectory() as runs, contextlib.redirect_stdout(sys.stderr):
            numbers = measure(args.accept, Path(runs))
        print(json.dumps(numbers, indent=1))
    else:
        manifest = verify()
        print(f"shipped organism {manifest['recipe_version']} seed {manifest['seed']}: ok")


if __name__ == "__main__":
    main()
