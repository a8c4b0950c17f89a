"""One definition of every metric: RunMetrics generates the column lists, the ranking.md headers
and the docs table (a run's metrics.json holding only defined keys: test_e2e)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from helpers import JOURNAL_HEADER

from steerexp.pipeline.stages import PIPELINE
from steerexp.render.journal import journal_table
from steerexp.store import columns, metrics

DOCS = Path(__file__).resolve().parent.parent / "docs" / "artifacts.md"


def test_docs_table_is_the_dataclass() -> None:
    text = DOCS.read_text()
    start = text.index("<!-- metrics table: generated -->\n") + len(
        "<!-- metrics table: generated -->\n"
    )
    table = text[start : text.index("\n<!-- end metrics table -->")]
    assert table == metrics.docs_table()
    rows = table.splitlines()[2:]
    assert len(rows) == len(metrics.names(*metrics.GROUPS, metrics.INFO))
    assert "| `slope_lo` | stat | " in table and "(`slope 95% CI` in ranking.md)" in table


def test_column_lists_follow_the_dataclass() -> None:
    assert columns.JOURNAL_COLUMNS == JOURNAL_HEADER[1:] == metrics.names("journal")
    assert columns.METRIC_COLUMNS == [
        *columns.JOURNAL_COLUMNS,
        *columns.EXTRA_STAT_COLUMNS,
        *columns.SWEEP_COLUMNS,
        *columns.IDENTITY_COLUMNS,
        *columns.TIME_COLUMNS,
        *columns.RUN_COLUMNS,
    ]
    assert "status" not in columns.METRIC_COLUMNS  # info keys sort after the fixed columns
    assert len(set(metrics.names(*metrics.GROUPS, metrics.INFO))) == len(
        metrics.names(*metrics.GROUPS, metrics.INFO)
    )


def test_every_stage_has_a_time_column() -> None:
    assert {f"time_{s}_s" for s in (*PIPELINE, "judge", "total")} == set(columns.TIME_COLUMNS)


def test_ranking_headers_come_from_the_dataclass() -> None:
    row = {c: 0.5 for c in metrics.names("journal", "stat")}
    row.update(method="m", null_k=8, p_null=0.5, null_beyond_all=False, dup_of=None)
    head = journal_table(pd.DataFrame([row])).splitlines()[0]
    cells = [c.strip() for c in head.strip("|").split("|")]
    assert cells[: len(JOURNAL_HEADER)] == JOURNAL_HEADER
    for name in ("slope_lo", "valid_frac_lo", "valid_frac_hi", "fitted_shift"):
        assert metrics.shown(name) in cells and metrics.shown(name) != name
