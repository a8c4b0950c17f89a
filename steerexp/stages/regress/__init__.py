"""Stage 6: dose-response statistics and the coherence cost of steering."""

from steerexp.stages.regress.ols import regress

__all__ = ["regress"]
