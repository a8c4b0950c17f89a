"""One experiment: the six stages in order (:func:`run`), and the group's random-null reference."""

from steerexp.pipeline.experiment import check_config, run

__all__ = ["check_config", "run"]
