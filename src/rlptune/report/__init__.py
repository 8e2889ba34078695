"""The results report: literature-shaped tables, figures and report.md/report.html, read from finished run folders.

It sits above the runs it reads (it imports the diagnostics in :mod:`rlptune.analysis`, never the reverse; the
trainer does not import it). ``tables`` is light (numpy); ``plots`` and ``writer`` pull in matplotlib and are
imported on first use.
"""

from __future__ import annotations

from typing import Any

from rlptune.report.tables import (
    base2new_table,
    cross_dataset_table,
    domain_gen_table,
    few_shot_curves,
    few_shot_table,
    render_csv,
    render_markdown,
    table_to_json,
)

__all__ = [
    "analyze_runs",
    "base2new_table",
    "collect_runs",
    "cross_dataset_table",
    "domain_gen_table",
    "few_shot_curves",
    "few_shot_table",
    "render_csv",
    "render_markdown",
    "result_to_row",
    "table_to_json",
    "write_report",
]

_LAZY = {"analyze_runs", "collect_runs", "result_to_row", "write_report"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from rlptune.report import writer

        return getattr(writer, name)
    raise AttributeError(f"module 'rlptune.report' has no attribute {name!r}")
