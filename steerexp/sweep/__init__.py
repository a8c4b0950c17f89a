"""What happens across runs: the ranking callback, the sweep report, experiment tracking.

The package itself is callable:
``steerexp.sweep(params={...})`` is :func:`steerexp.api.sweep`."""

import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    """``steerexp.sweep`` is both this package and the notebook call that runs a sweep."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from steerexp.api import sweep

        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
