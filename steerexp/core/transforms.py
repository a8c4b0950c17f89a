"""The regressor transforms of the steering coefficient (``regress_x``): linear or symlog."""

from __future__ import annotations

from typing import Any

import numpy as np

from steerexp.core.errors import choice_error

X_TRANSFORMS = ("linear", "symlog")


def symlog(c: np.ndarray) -> np.ndarray:
    """``sign(c)·log(1+|c|)``: linear near 0, logarithmic for large |c|, odd-symmetric."""
    c = np.asarray(c, dtype=np.float64)
    return np.sign(c) * np.log1p(np.abs(c))


def transform_x(coeffs: Any, x: str = "symlog") -> np.ndarray:
    """The regressor for coefficients ``coeffs`` under transform ``x`` (symlog or linear)."""
    if x == "symlog":
        return symlog(coeffs)
    if x == "linear":
        return np.asarray(coeffs, dtype=np.float64)
    raise choice_error("regression x", x, X_TRANSFORMS)
