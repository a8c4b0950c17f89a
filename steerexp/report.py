"""``python -m steerexp.report <sweep_dir>`` rebuilds a sweep's ranking (:mod:`steerexp.sweep.report`)."""

import sys

from steerexp.sweep.report import main

if __name__ == "__main__":
    sys.exit(main())
