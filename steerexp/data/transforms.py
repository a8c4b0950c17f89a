"""The regressor transforms of the steering coefficient (``regress_x``), a registry like the
methods': ``@X_TRANSFORMS.register("name")`` adds one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from steerexp.config.registry import Registry

#: ``regress_x`` options: name -> the regressor of the coefficients.
X_TRANSFORMS: Registry[Callable[[Any], np.ndarray]] = Registry("regress_x")


@X_TRANSFORMS.register("symlog")
def symlog(c: Any) -> np.ndarray:
    """``sign(c)·log(1+|c|)``: linear near 0, logarithmic for large |c|, odd-symmetric."""
    c = np.asarray(c, dtype=np.float64)
    return np.sign(c) * np.log1p(np.abs(c))


@X_TRANSFORMS.register("linear")
def linear(c: Any) -> np.ndarray:
    """The coefficients as they are."""
    return np.asarray(c, dtype=np.float64)


def transform_x(coeffs: Any, x: str = "symlog") -> np.ndarray:
    """The regressor for coefficients ``coeffs`` under the transform named ``x``."""
    return X_TRANSFORMS.get(x)(coeffs)
