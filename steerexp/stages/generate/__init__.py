"""Stage 4: batched, seeded generation with a per-row coefficient and direction."""

from steerexp.stages.generate.rows import generate_rows

__all__ = ["generate_rows"]
