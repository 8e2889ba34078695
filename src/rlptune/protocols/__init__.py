"""Protocols as registered objects (few-shot, base-to-new, cross-dataset, domain generalisation) and their tables
(sweeps over them live in :mod:`rlptune.sweeps`).

Each protocol is a :class:`Protocol` in a module of its own, registered on import; everything else reads the
registry (:func:`get_protocol`, :func:`protocol_names`). A protocol from outside the package is a subclass and one
:func:`register_protocol` call (docs/EXTENDING.md). Importing this package does not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import RlptuneError
from ..registry import get_protocol, protocol_names, register_protocol
from .base import Evaluation, Protocol
from .few_shot import FEW_SHOT  # the built-in four register on import, in the order the command line lists them
from .base_to_new import BASE_TO_NEW
from .cross_dataset import CROSS_DATASET
from .domain_generalisation import DOMAIN_GENERALISATION


def __getattr__(name: str) -> Any:
    if name == "PROTOCOLS":  # the registered names now (plug-ins included)
        return tuple(protocol_names())
    if name == "COOP_CROSS_TARGETS":  # the ten targets of ImageNet
        from ..data.coop import COOP_11

        return [n for n in COOP_11 if n != "ImageNet"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_targets(protocol: str, sources: Sequence[str]) -> dict[str, list[str]]:
    """Each source's default targets under ``protocol`` (:meth:`Protocol.default_targets`): the literature's
    (ImageNet → the other ten, or its four shifts) or, on the micro suite, the other micro datasets or the source's
    shifted renderings."""
    chosen = get_protocol(protocol, what="protocol")
    return {source: list(chosen.default_targets(source)) for source in sources}


def _method_label(row: dict[str, Any]) -> str:
    """A method and its swept settings (the run's tag), so grid points are separate table rows."""
    return str(row.get("tag") or row.get("method"))


def tables_for(rows: list[dict[str, Any]], protocol: str, group_by: str = "method"):
    """The table of ``protocol``'s runs, built by its table kind; an unknown protocol is one line."""
    from ..report import tables as T

    chosen = get_protocol(protocol, what="protocol")
    kind = chosen.table_kind
    if kind == chosen.name:
        return T.protocol_table(kind, rows, group_by=group_by)
    # a protocol tabled like another: its rows enter the builder under that kind, the table keeps its own name
    mine = T.protocol_table(
        kind,
        [{**r, "protocol": kind} for r in rows if T.normalize_protocol(r.get("protocol")) == chosen.name],
        group_by=group_by,
    )
    mine.protocol = chosen.name
    mine.name = chosen.name.replace("-", "_")
    mine.title = f"{chosen.title or chosen.name} ({mine.title[0].lower()}{mine.title[1:]})"
    return mine


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
    "BASE_TO_NEW",
    "CROSS_DATASET",
    "DOMAIN_GENERALISATION",
    "Evaluation",
    "FEW_SHOT",
    "PROTOCOLS",
    "Protocol",
    "aggregate",
    "default_targets",
    "get_protocol",
    "protocol_names",
    "register_protocol",
    "tables_for",
]
