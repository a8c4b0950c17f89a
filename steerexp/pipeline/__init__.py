"""One experiment: the six stages in order (:func:`run`), and the group's random-null reference."""

# Registers the built-in model builders (organism, tiny_random) before any config names them.
import steerexp.organism  # noqa: F401
from steerexp.pipeline.experiment import check_config, run

__all__ = ["check_config", "run"]
