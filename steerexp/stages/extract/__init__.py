"""Stage 1: activations and loss gradients of the target modules on the contrast pairs."""

from steerexp.stages.extract.activations import extract
from steerexp.stages.extract.vjp import vjp_rows

__all__ = ["extract", "vjp_rows"]
