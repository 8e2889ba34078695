"""Diagnostics of prompts and runs: spectral diagnostics of a prompt and seed statistics.

Light (numpy/torch; scipy only when a test statistic is computed) and safe to import from the training loop. The
report writer that reads finished run folders (tables, figures, report.md/html) is :mod:`rlptune.report`, a layer
above the runs it reads; nothing here imports it.
"""

from __future__ import annotations

from rlptune.analysis.spectrum import PromptDiagnostics, diagnose, prompt_diagnostics
from rlptune.analysis.stats import harmonic_mean, mean_std, paired_comparison, spearman

__all__ = [
    "PromptDiagnostics",
    "diagnose",
    "harmonic_mean",
    "mean_std",
    "paired_comparison",
    "prompt_diagnostics",
    "spearman",
]
