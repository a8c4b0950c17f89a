"""Stage 5: each completion's answer as a log-probability ratio."""

from steerexp.stages.judge.judges import judge_rows

__all__ = ["judge_rows"]
