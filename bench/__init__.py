"""Benchmarks (`make bench`): each section prints ratios measured within one run."""

# Registers the organism and tiny_random model builders (steerexp.models.builders.BUILDERS).
import steerexp.organism  # noqa: F401
