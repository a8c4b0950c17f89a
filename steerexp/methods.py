"""Public API: ``fit_direction(name, acts, ...)``; the methods live in :mod:`steerexp.stages.fit`."""

from steerexp.stages.fit.methods import fit_direction

__all__ = ["fit_direction"]
