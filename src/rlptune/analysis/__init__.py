"""Analysis of prompts and runs: spectral diagnostics, seed statistics, literature-shaped tables, figures, reports.

``spectrum``, ``stats`` and ``tables`` are light (numpy/torch; scipy only when a test statistic is computed) and
safe to import from the training loop; ``plots`` and ``report`` pull in matplotlib and are imported on first use.
"""

from __future__ import annotations

from typing import Any

from rlptune.analysis.spectrum import PromptDiagnostics, diagnose, prompt_diagnostics
from rlptune.analysis.stats import mean_std, paired_comparison, spearman
from rlptune.analysis.tables import (
    base2new_table,
    cross_dataset_table,
    domain_gen_table,
    few_shot_curves,
    few_shot_table,
    harmonic_mean,
    render_csv,
    render_markdown,
    table_to_json,
)

__all__ = [
    "PromptDiagnostics",
    "analyze_runs",
    "base2new_table",
    "collect_runs",
    "cross_dataset_table",
    "diagnose",
    "domain_gen_table",
    "few_shot_curves",
    "few_shot_table",
    "harmonic_mean",
    "mean_std",
    "paired_comparison",
    "prompt_diagnostics",
    "render_csv",
    "render_markdown",
    "result_to_row",
    "spearman",
    "table_to_json",
    "write_report",
]

_LAZY = {"analyze_runs", "collect_runs", "result_to_row", "write_report"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from rlptune.analysis import report

        return getattr(report, name)
    raise AttributeError(f"module 'rlptune.analysis' has no attribute {name!r}")
