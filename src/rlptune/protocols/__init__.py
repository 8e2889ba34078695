"""Protocols (few-shot, base-to-new, cross-dataset, domain generalisation), sweeps and their tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import RlptuneError


def __getattr__(name: str) -> Any:
    if name == "COOP_CROSS_TARGETS":  # the ten targets of ImageNet
        from ..data.coop import COOP_11

        return [n for n in COOP_11 if n != "ImageNet"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_targets(protocol: str, sources: Sequence[str]) -> dict[str, list[str]]:
    """The literature's targets: ImageNet → the other ten (cross-dataset) or its four shifts (domain-gen);
    on the micro suite, the other micro datasets or the source's shifted renderings."""
    targets: dict[str, list[str]] = {}
    for source in sources:
        if source.startswith("micro"):
            from ..micro.suite import MICRO_DATASETS, MICRO_SHIFTS

            if protocol == "cross-dataset":
                targets[source] = [d for d in MICRO_DATASETS if d != source]
            else:
                if source not in MICRO_SHIFTS:
                    raise RlptuneError(f"domain-gen: micro dataset {source!r} has no shifted variants; use one of {', '.join(MICRO_SHIFTS)}")
                targets[source] = list(MICRO_SHIFTS[source])
        else:
            from ..data.coop import COOP_11, IMAGENET_SHIFTS

            cross = [n for n in COOP_11 if n != "ImageNet"]
            targets[source] = list(cross if protocol == "cross-dataset" else IMAGENET_SHIFTS)
    return targets


def _method_label(row: dict[str, Any]) -> str:
    """A method and its swept settings (the run's tag), so grid points are separate table rows."""
    return str(row.get("tag") or row.get("method"))


def tables_for(rows: list[dict[str, Any]], protocol: str, group_by: str = "method"):
    from ..report import tables as T

    if protocol == "base2new":
        return T.base2new_table(rows, group_by=group_by)
    if protocol == "few-shot":
        return T.few_shot_table(rows, group_by=group_by)
    if protocol == "cross-dataset":
        return T.cross_dataset_table(rows, group_by=group_by)
    return T.domain_gen_table(rows, group_by=group_by)


def aggregate(
    results_dir: str | Path,
    protocol: str,
    out_stem: str | Path | None = None,
    run_dirs: Sequence[str | Path] | None = None,
) -> tuple[Any, str]:
    """Collect every finished run of ``protocol`` under ``results_dir`` into a table (md/csv/json); return it.
    ``run_dirs`` keeps only those runs (a sweep's own runs, not earlier sweeps' with other settings)."""
    from ..report import tables as T
    from ..report.writer import collect_runs

    rows = [r for r in collect_runs(results_dir) if T.normalize_protocol(r.get("protocol")) == protocol]
    if run_dirs is not None:
        wanted = {Path(d).resolve() for d in run_dirs}
        rows = [r for r in rows if Path(r["run_dir"]).resolve() in wanted]
    if not rows:
        raise RlptuneError(f"{results_dir}: no finished {protocol} runs")
    table = tables_for(rows, protocol, group_by=_method_label)
    markdown = T.render_markdown(table)
    if out_stem is not None:
        T.write_table(table, out_stem)
    return table, markdown


__all__ = [
    "aggregate",
    "default_targets",
    "tables_for",
]
