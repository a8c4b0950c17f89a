"""The column lists of the run artifacts and the journal's tables (rendered by :mod:`steerexp.render.journal`)."""

from __future__ import annotations

from steerexp.store import metrics

#: The judged rows of a run, one per generation (``dose_response.csv``).
DOSE_COLUMNS = [
    "question_id",
    "coeff",
    "repeat",
    "log_ratio",
    "pmass",
    "valid",
    "forced",
    "completion",
    "stop_reason",
    "n_tokens",
]


#: The ranking's columns by group, generated from :class:`~steerexp.store.metrics.RunMetrics`
#: (each field's meaning is there): the journal's, the other statistics of a run, what the sweep
#: computes across runs, the run's labels, its timings, how it was produced.
JOURNAL_COLUMNS = metrics.names("journal")
EXTRA_STAT_COLUMNS = metrics.names("stat")
SWEEP_COLUMNS = metrics.names("sweep")
IDENTITY_COLUMNS = metrics.names("identity")
TIME_COLUMNS = metrics.names("time")
RUN_COLUMNS = metrics.names("run")
METRIC_COLUMNS = metrics.names()
#: The config groups whose option names label a run: its identity in rankings and trackers.
IDENTITY_GROUPS = tuple(c for c in IDENTITY_COLUMNS if c not in ("coeff_units", "seed"))


#: The statistics :func:`steerexp.stages.regress.regress` reports (NaN when it cannot fit).
STAT_KEYS = [
    "slope",
    "r2",
    "p_value",
    "slope_ci_low",
    "slope_ci_high",
    "score",
    "signed_score",
    "spearman",
    "slope_se",
    "slope_df",
]
