"""Stage 2: one unit steering direction per module from the extraction (methods, Fisher solver)."""

from steerexp.stages.fit.methods import fit_direction, fit_from_config

__all__ = ["fit_direction", "fit_from_config"]
