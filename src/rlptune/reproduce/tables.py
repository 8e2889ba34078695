"""A report table of the study: plain rows of named columns, written as markdown, CSV and JSON."""

from __future__ import annotations

import csv
import io as _stdio
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import io
from ..analysis import stats as S

#: Columns shown as whole numbers in markdown (counts and parameter numbers).
INTEGER_COLUMNS = frozenset({"runs", "n", "params", "params_full", "params_lowrank", "delta_params"})


@dataclass
class EvidenceTable:
    """A report table: plain rows of named columns (numbers raw in CSV/JSON, rounded in markdown)."""

    name: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    note: str = ""

    def markdown(self) -> str:
        lines = [
            f"### {self.title}",
            "",
            "| " + " | ".join(self.columns) + " |",
            "|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.columns))) + "|",
        ]
        for row in self.rows:
            lines.append("| " + " | ".join(cell(row.get(c), c) for c in self.columns) + " |")
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines) + "\n"

    def write(self, folder: Path) -> None:
        buffer = _stdio.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({c: S.jsonable(row.get(c)) for c in self.columns})
        io.write_text(folder / f"{self.name}.csv", buffer.getvalue())
        io.write_text(folder / f"{self.name}.md", self.markdown())
        io.write_json(
            folder / f"{self.name}.json",
            S.jsonable({"title": self.title, "columns": self.columns, "rows": self.rows, "note": self.note}),
        )


def cell(value: Any, column: str = "") -> str:
    """A value as the report shows it: – for none, counts whole, small numbers to 3 significant digits."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if column in INTEGER_COLUMNS and isinstance(value, (int, float)):
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 0.01 and value != 0 else f"{value:.2f}"
    return str(value)
