"""Aggregation of run results into tables shaped like the prompt-learning literature's (CoOp, CoCoOp, MaPLe).

Input rows are flat dicts (see :func:`rlptune.report.writer.result_to_row`)::

    {"protocol": "base2new", "dataset": "dtd", "method": "rlp", "seed": 1, "shots": 16,
     "base": 80.1, "new": 60.2, "h": 68.7,            # base2new, percent
     "accuracy": 71.3,                                 # few-shot / cross-dataset / domain-gen, percent
     "targets": {"caltech101": 93.1, ...},             # cross-dataset / domain-gen: accuracy per target dataset
     "trainable_params": 2048, "id_k": 0.93}           # optional

Every cell is mean ± sample std over seeds with the number of seeds (see :mod:`rlptune.analysis.stats`).

H, as in the literature: H = 2·Base·New / (Base + New) is computed from the *averaged* Base and New, both for a
dataset (average over seeds) and for the "Average" row (average over datasets of the per-dataset means), so the
numbers match published tables (e.g. CoCoOp's ImageNet CoOp row: HM(76.47, 67.88) = 71.92). The ± next to H is the
std over seeds of the per-seed H. The raw per-seed values are in the JSON output.

"Average" rows and columns: the value is the mean over datasets (or targets) of the per-dataset means; its ± is
the std over seeds of the per-seed average across datasets, shown only when every dataset has the same seeds
(otherwise the seeds do not line up and only the mean is shown). A method that lacks some of the table's datasets
gets an "Average (k/N)" row over the k it has, so it is not mistaken for the full average.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from rlptune.analysis.stats import harmonic_mean, jsonable, mean_std
from rlptune import registry
from rlptune.data.coop import COOP_DATASETS, coop_spellings
from rlptune.errors import RlptuneError
from rlptune.io import write_json, write_text

__all__ = [
    "Cell",
    "Table",
    "TableRow",
    "base2new_table",
    "cross_dataset_table",
    "dataset_sort_key",
    "domain_gen_table",
    "few_shot_curves",
    "few_shot_table",
    "other_runs_table",
    "collapse_shot_independent",
    "is_shot_independent",
    "harmonic_mean",
    "normalize_protocol",
    "protocol_table",
    "render_csv",
    "render_html",
    "render_markdown",
    "table_view",
    "table_to_json",
    "write_table",
]

Rows = Sequence[Mapping[str, Any]]
GroupBy = str | Callable[[Mapping[str, Any]], str]

# The order datasets appear in in the literature's tables; names are matched case- and punctuation-insensitively.
_DATASET_ORDER = [tuple(re.sub(r"[^a-z0-9]", "", s.lower()) for s in coop_spellings(name)) for name in COOP_DATASETS]
_DATASET_RANK = {alias: i for i, names in enumerate(_DATASET_ORDER) for alias in names}


def normalize_protocol(name: Any) -> str:
    """Map spellings such as "base_to_new", "few_shot", "cross_dataset", "dg" to the registered protocol's name
    (each protocol declares its aliases); an unknown spelling is returned as it is."""
    text = str(name or "")
    return registry.protocol_aliases().get(re.sub(r"[^a-z0-9]", "", text.lower()), text)


def dataset_sort_key(name: str) -> tuple[int, str]:
    """Literature order (ImageNet, Caltech101, ..., UCF101, then the ImageNet shifts), unknown names after, by name."""
    return (_DATASET_RANK.get(re.sub(r"[^a-z0-9]", "", str(name).lower()), len(_DATASET_ORDER)), str(name))


@dataclass
class Cell:
    """One table cell: the shown value, its ± (None when undefined), seed count and the raw per-seed values."""

    value: float
    std: float | None
    n: int
    values: list[float] = field(default_factory=list)
    seeds: list[Any] = field(default_factory=list)

    def format(self, decimals: int = 2) -> str:
        """``"76.47 ± 0.52"``; one seed: ``"76.47 ± –"`` (no spread observed, not a spread of 0); an average whose
        seeds do not line up: the mean alone."""
        if self.std is None:
            return f"{self.value:.{decimals}f} ± –" if self.n == 1 else f"{self.value:.{decimals}f}"
        return f"{self.value:.{decimals}f} ± {self.std:.{decimals}f}"

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"value": self.value, "std": self.std, "n": self.n, "values": self.values, "seeds": self.seeds})


@dataclass
class TableRow:
    labels: dict[str, str]
    cells: dict[str, Cell | None]
    n: int | None  # seeds behind the row (None for an average whose seeds do not line up)
    extra: dict[str, Any] = field(default_factory=dict)
    average: bool = False


@dataclass
class Table:
    """A literature-shaped table; render with :func:`render_markdown`, :func:`render_csv`, :func:`table_to_json`."""

    name: str
    title: str
    protocol: str
    label_columns: list[str]
    value_columns: list[str]
    rows: list[TableRow]
    extra_columns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _group(row: Mapping[str, Any], group_by: GroupBy) -> str:
    if callable(group_by):
        return str(group_by(row))
    if group_by not in row:
        raise RlptuneError(f"tables: a result row has no {group_by!r} field to group by")
    return str(row[group_by])


def _infer_protocol(row: Mapping[str, Any]) -> str:
    if row.get("protocol"):
        return normalize_protocol(row["protocol"])
    if row.get("base") is not None or row.get("new") is not None:
        return "base2new"
    if row.get("targets"):
        return "cross-dataset"
    return "few-shot"


def _select(rows: Rows, protocol: str) -> list[Mapping[str, Any]]:
    return collapse_shot_independent([row for row in rows if _infer_protocol(row) == protocol])


# Methods whose result depends on neither the shot count nor the seed (nothing is trained): a sweep runs them once
# per (shots, seed) cell, but they are one number per dataset and must be shown, and paired, once.
SHOT_INDEPENDENT_METHODS = frozenset({"zeroshot", "zsclip", "zeroshotclip"})


def is_shot_independent(row: Mapping[str, Any]) -> bool:
    """True for zero-shot CLIP rows (by method name, or a result's ``"shot_independent": true``)."""
    if row.get("shot_independent") is not None:
        return bool(row["shot_independent"])
    name = str(row.get("method") or "").split(" (")[0]
    return re.sub(r"[^a-z0-9]", "", name.lower()) in SHOT_INDEPENDENT_METHODS


def collapse_shot_independent(rows: Rows) -> list[Mapping[str, Any]]:
    """Rows where each zero-shot (dataset, method) is one row, not one per shot count and seed.

    The merged row keeps the mean of each accuracy over the runs (they are equal unless the evaluation itself is
    random), ``seed`` None, ``shots`` 0 for few-shot (the "0 shots" column) and ``merged_runs`` = how many runs it
    stands for. Other rows pass through unchanged (same objects, same order).
    """
    out: list[Mapping[str, Any]] = []
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        if not is_shot_independent(row):
            out.append(row)
            continue
        key = (
            _infer_protocol(row),
            str(row.get("dataset")),
            str(row.get("method")),
            str(row.get("tag")),
            str(row.get("source")),
        )
        if key not in groups:
            groups[key] = []
            out.append(groups[key])  # type: ignore[arg-type]  # placeholder, replaced below in the same position
        groups[key].append(row)
    return [_merge_runs(item) if isinstance(item, list) else item for item in out]


def _merge_runs(runs: list[Mapping[str, Any]]) -> dict[str, Any]:
    merged = dict(runs[0])
    for name in ("base", "new", "accuracy", "macro_f1", "base_macro_f1", "new_macro_f1"):
        values = [float(r[name]) for r in runs if r.get(name) is not None]
        if values:
            merged[name] = float(np.mean(values))
    targets: dict[str, list[float]] = {}
    for r in runs:
        for target, value in (r.get("targets") or {}).items():
            if isinstance(value, Mapping):
                value = value.get("top1", value.get("accuracy"))
            if value is not None:
                targets.setdefault(str(target), []).append(float(value))
    if targets:
        merged["targets"] = {t: float(np.mean(v)) for t, v in targets.items()}
    if merged.get("base") is not None and merged.get("new") is not None:
        merged["h"] = harmonic_mean(merged["base"], merged["new"])
    merged["seed"] = None
    if _infer_protocol(merged) == "few-shot":
        merged["shots"] = 0
    merged["merged_runs"] = len(runs)
    return merged


def _order(names: Iterable[str], wanted: Sequence[str] | None, key: Callable[[str], Any]) -> list[str]:
    present = list(dict.fromkeys(names))
    if wanted is not None:
        return [name for name in wanted if name in present]
    return sorted(present, key=key)


def _seed_key(seed: Any) -> tuple[int, Any]:
    return (0, seed) if isinstance(seed, (int, float)) else (1, str(seed))


def _spread(values: Sequence[float]) -> float | None:
    """Sample std over seeds; None for one seed (no spread observed: printed "–", empty in CSV, null in JSON)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def _cell(by_seed: Mapping[Any, float]) -> Cell | None:
    if not by_seed:
        return None
    seeds = sorted(by_seed, key=_seed_key)
    stats = mean_std(by_seed[s] for s in seeds)
    return Cell(value=stats.mean, std=_spread(stats.values), n=stats.n, values=stats.values, seeds=seeds)


def _seeds_align(cells: Sequence[Cell | None]) -> list[Any] | None:
    """The common seed list when every cell exists and has the same seeds, else None."""
    if not cells or any(c is None for c in cells):
        return None
    first = cells[0].seeds  # type: ignore[union-attr]
    return list(first) if all(c.seeds == first for c in cells) else None  # type: ignore[union-attr]


def _average_cell(cells: Sequence[Cell]) -> Cell:
    """Mean over datasets of the per-dataset means; ± over seeds of the per-seed average when seeds line up."""
    value = float(np.mean([c.value for c in cells]))
    seeds = _seeds_align(cells)
    if seeds is None:
        return Cell(value=value, std=None, n=0)
    per_seed = [float(np.mean([c.values[i] for c in cells])) for i in range(len(seeds))]
    return Cell(value=value, std=_spread(per_seed), n=len(seeds), values=per_seed, seeds=seeds)


def _put(store: dict, key: tuple, value: float, what: str) -> None:
    if key in store:
        raise RlptuneError(
            f"tables: two {what} results for {key}; filter the rows or pass group_by to tell the runs apart"
        )
    store[key] = float(value)


def _most_common(values: list[Any]) -> Any:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return max(set(values), key=lambda v: (values.count(v), -values.index(v)))


def _average_label(k: int, total: int) -> str:
    return "Average" if k == total else f"Average ({k}/{total})"


# ----------------------------------------------------------------------------------------------------------------
# base-to-new


def base2new_table(
    rows: Rows,
    group_by: GroupBy = "method",
    methods: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
) -> Table:
    """Per dataset × method: Base / New / H (mean ± std over seeds, n), then an Average row per method."""
    base: dict[tuple, float] = {}
    new: dict[tuple, float] = {}
    params: dict[tuple, list[Any]] = {}
    for row in _select(rows, "base2new"):
        key = (str(row["dataset"]), _group(row, group_by), row.get("seed"))
        if row.get("base") is None and row.get("new") is None:
            continue
        if row.get("base") is not None:
            _put(base, key, row["base"], "base2new")
        if row.get("new") is not None:
            _put(new, key, row["new"], "base2new")
        params.setdefault(key[:2], []).append(row.get("trainable_params"))
    keys = set(base) | set(new)
    ds_order = _order((k[0] for k in keys), datasets, dataset_sort_key)
    m_order = _order((k[1] for k in keys), methods, str)
    has_params = any(v is not None for vals in params.values() for v in vals)

    def cells_for(ds: str, m: str) -> dict[str, Cell | None]:
        b = {k[2]: v for k, v in base.items() if k[:2] == (ds, m)}
        nw = {k[2]: v for k, v in new.items() if k[:2] == (ds, m)}
        cb, cn = _cell(b), _cell(nw)
        ch = _cell({s: harmonic_mean(b[s], nw[s]) for s in b if s in nw})
        if ch is not None and cb is not None and cn is not None:
            ch.value = harmonic_mean(cb.value, cn.value)
        return {"Base": cb, "New": cn, "H": ch}

    out_rows: list[TableRow] = []
    per_method: dict[str, list[dict[str, Cell | None]]] = {m: [] for m in m_order}
    for ds in ds_order:
        for m in m_order:
            if not any(k[:2] == (ds, m) for k in keys):
                continue
            cells = cells_for(ds, m)
            per_method[m].append(cells)
            n = max(c.n for c in cells.values() if c is not None)
            extra = {"Params": _most_common(params.get((ds, m), []))} if has_params else {}
            out_rows.append(TableRow(labels={"Dataset": ds, "Method": m}, cells=cells, n=n, extra=extra))
    if len(ds_order) > 1:
        for m in m_order:
            found = per_method[m]
            if not found:
                continue
            cells_avg: dict[str, Cell | None] = {}
            for col in ("Base", "New"):
                col_cells = [c[col] for c in found if c[col] is not None]
                cells_avg[col] = _average_cell(col_cells) if col_cells else None  # type: ignore[arg-type]
            cells_avg["H"] = _average_h(found, cells_avg)
            seeds = _seeds_align([c["Base"] for c in found] + [c["New"] for c in found])
            extra = {"Params": None} if has_params else {}
            out_rows.append(
                TableRow(
                    labels={"Dataset": _average_label(len(found), len(ds_order)), "Method": m},
                    cells=cells_avg,
                    n=len(seeds) if seeds is not None else None,
                    extra=extra,
                    average=True,
                )
            )
    return Table(
        name="base2new",
        title="Base-to-new generalisation (accuracy %, mean ± std over seeds)",
        protocol="base2new",
        label_columns=["Dataset", "Method"],
        value_columns=["Base", "New", "H"],
        rows=out_rows,
        extra_columns=["Params"] if has_params else [],
        notes=[
            "H = 2·Base·New/(Base+New) of the averaged Base and New (as in the literature); its ± is the std over seeds of the per-seed H.",
            "Average: mean over datasets of the per-dataset means; ± over seeds of the per-seed average when all datasets share the same seeds.",
        ],
    )


def _average_h(found: list[dict[str, Cell | None]], avg: dict[str, Cell | None]) -> Cell | None:
    cb, cn = avg.get("Base"), avg.get("New")
    if cb is None or cn is None:
        return None
    value = harmonic_mean(cb.value, cn.value)
    if cb.seeds and cb.seeds == cn.seeds and cb.n and cn.n:
        per_seed = [harmonic_mean(b, n) for b, n in zip(cb.values, cn.values)]
        return Cell(value=value, std=_spread(per_seed), n=len(per_seed), values=per_seed, seeds=list(cb.seeds))
    return Cell(value=value, std=None, n=0)


# ----------------------------------------------------------------------------------------------------------------
# few-shot


def _shots_label(shots: Any) -> str:
    return f"{shots} shot" if shots == 1 else f"{shots} shots"


_ZERO_SHOT_NOTE = (
    "0 shots: zero-shot CLIP, which trains nothing; one evaluation per dataset, the same for every shot count and seed."
)


def few_shot_table(
    rows: Rows,
    group_by: GroupBy = "method",
    methods: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
) -> Table:
    """Per dataset × method: accuracy per shot count (mean ± std over seeds), then an Average row per method."""
    acc: dict[tuple, float] = {}
    for row in _select(rows, "few-shot"):
        if row.get("accuracy") is None:
            continue
        if row.get("shots") is None:
            raise RlptuneError(f"tables: a few-shot result for {row.get('dataset')!r} has no 'shots' field")
        _put(
            acc,
            (str(row["dataset"]), _group(row, group_by), int(row["shots"]), row.get("seed")),
            row["accuracy"],
            "few-shot",
        )
    shots = sorted({k[2] for k in acc})
    ds_order = _order((k[0] for k in acc), datasets, dataset_sort_key)
    m_order = _order((k[1] for k in acc), methods, str)
    columns = [_shots_label(s) for s in shots]
    out_rows: list[TableRow] = []
    per_method: dict[str, list[dict[str, Cell | None]]] = {m: [] for m in m_order}
    for ds in ds_order:
        for m in m_order:
            cells = {_shots_label(s): _cell({k[3]: v for k, v in acc.items() if k[:3] == (ds, m, s)}) for s in shots}
            if all(c is None for c in cells.values()):
                continue
            per_method[m].append(cells)
            n = max(c.n for c in cells.values() if c is not None)
            out_rows.append(TableRow(labels={"Dataset": ds, "Method": m}, cells=cells, n=n))
    if len(ds_order) > 1:
        for m in m_order:
            found = per_method[m]
            if not found:
                continue
            cells_avg: dict[str, Cell | None] = {}
            for col in columns:
                col_cells = [c[col] for c in found if c[col] is not None]
                cells_avg[col] = _average_cell(col_cells) if col_cells else None  # type: ignore[arg-type]
            ns = {c.n for c in cells_avg.values() if c is not None}
            out_rows.append(
                TableRow(
                    labels={"Dataset": _average_label(len(found), len(ds_order)), "Method": m},
                    cells=cells_avg,
                    n=ns.pop() if len(ns) == 1 and 0 not in ns else None,
                    average=True,
                )
            )
    return Table(
        name="few_shot",
        title="Few-shot classification (accuracy %, mean ± std over seeds)",
        protocol="few-shot",
        label_columns=["Dataset", "Method"],
        value_columns=columns,
        rows=out_rows,
        notes=[
            "Average: mean over datasets of the per-dataset means; ± over seeds when all datasets share the same seeds."
        ]
        + ([_ZERO_SHOT_NOTE] if 0 in shots else []),
    )


def few_shot_curves(rows_or_table: Rows | Table, group_by: GroupBy = "method") -> dict[str, dict[str, dict[str, list]]]:
    """Curve data ``{dataset: {method: {"shots", "mean", "std", "n"}}}`` (plus "Average") for accuracy-vs-shots plots."""
    table = rows_or_table if isinstance(rows_or_table, Table) else few_shot_table(rows_or_table, group_by)
    shot_of = {col: int(col.split()[0]) for col in table.value_columns}
    out: dict[str, dict[str, dict[str, list]]] = {}
    for row in table.rows:
        ds = "Average" if row.average else row.labels["Dataset"]
        curve: dict[str, list] = {"shots": [], "mean": [], "std": [], "n": []}
        for col, cell in row.cells.items():
            if cell is None:
                continue
            curve["shots"].append(shot_of[col])
            curve["mean"].append(cell.value)
            curve["std"].append(cell.std)
            curve["n"].append(cell.n)
        out.setdefault(ds, {})[row.labels["Method"]] = curve
    return out


# ----------------------------------------------------------------------------------------------------------------
# cross-dataset and domain generalisation


def _transfer_records(rows: Rows, protocol: str, group_by: GroupBy) -> dict[tuple, float]:
    """(source, method, target, seed) -> accuracy, from rows with a ``targets`` dict or a ``source`` field."""
    out: dict[tuple, float] = {}
    for row in _select(rows, protocol):
        method = _group(row, group_by)
        seed = row.get("seed")
        source = str(row.get("source") or row["dataset"])
        target = str(row["dataset"])
        if row.get("accuracy") is not None:
            _put(out, (source, method, target, seed), row["accuracy"], protocol)
        for name, value in (row.get("targets") or {}).items():
            if isinstance(value, Mapping):
                value = value.get("top1", value.get("accuracy"))
            if value is not None:
                _put(out, (source, method, str(name), seed), value, protocol)
    return out


def _transfer_table(
    rows: Rows, protocol: str, name: str, title: str, group_by: GroupBy, methods: Sequence[str] | None
) -> Table:
    rec = _transfer_records(rows, protocol, group_by)
    sources = _order((k[0] for k in rec), None, dataset_sort_key)
    targets = _order((k[2] for k in rec if k[2] != k[0]), None, dataset_sort_key)
    m_order = _order((k[1] for k in rec), methods, str)
    columns = ["Source", *targets, "Average"] if targets else ["Source"]
    out_rows: list[TableRow] = []
    for src in sources:
        for m in m_order:
            if not any(k[:2] == (src, m) for k in rec):
                continue
            cells: dict[str, Cell | None] = {
                "Source": _cell({k[3]: v for k, v in rec.items() if k[:3] == (src, m, src)})
            }
            for t in targets:
                cells[t] = None if t == src else _cell({k[3]: v for k, v in rec.items() if k[:3] == (src, m, t)})
            if targets:
                target_cells = [cells[t] for t in targets if cells[t] is not None]
                cells["Average"] = _average_cell(target_cells) if target_cells else None  # type: ignore[arg-type]
                if target_cells and len(target_cells) < len([t for t in targets if t != src]):
                    cells["Average"].std = None  # type: ignore[union-attr]  # missing targets: not comparable
            n = max((c.n for c in cells.values() if c is not None), default=0)
            out_rows.append(TableRow(labels={"Method": m, "Trained on": src}, cells=cells, n=n))
    return Table(
        name=name,
        title=title,
        protocol=protocol,
        label_columns=["Method", "Trained on"],
        value_columns=columns,
        rows=out_rows,
        notes=[
            "Source: accuracy on the training dataset's test set; Average: mean over the target columns "
            "(± over seeds of the per-seed target average; omitted when a target is missing)."
        ],
    )


def cross_dataset_table(rows: Rows, group_by: GroupBy = "method", methods: Sequence[str] | None = None) -> Table:
    """Method × (source, each target dataset, average over targets), as CoCoOp's cross-dataset table."""
    return _transfer_table(
        rows,
        "cross-dataset",
        "cross_dataset",
        "Cross-dataset transfer (accuracy %, mean ± std over seeds)",
        group_by,
        methods,
    )


def domain_gen_table(rows: Rows, group_by: GroupBy = "method", methods: Sequence[str] | None = None) -> Table:
    """Method × (source ImageNet, each shifted ImageNet, average over targets), as CoCoOp's domain-generalisation table."""
    return _transfer_table(
        rows, "domain-gen", "domain_gen", "Domain generalisation (accuracy %, mean ± std over seeds)", group_by, methods
    )


#: The table builders by table kind (what a protocol's ``table_kind`` names).
TABLE_KINDS: dict[str, Callable[..., Table]] = {
    "base2new": base2new_table,
    "few-shot": few_shot_table,
    "cross-dataset": cross_dataset_table,
    "domain-gen": domain_gen_table,
}


def protocol_table(kind: str, rows: Rows, group_by: GroupBy = "method") -> Table:
    """The table of ``kind`` (a protocol's ``table_kind``) over ``rows``; an unknown kind is one line."""
    if kind not in TABLE_KINDS:
        raise RlptuneError(f"tables: table kind {kind!r} is not known; available: {', '.join(TABLE_KINDS)}")
    return TABLE_KINDS[kind](rows, group_by=group_by)


def other_runs_table(rows: Rows, group_by: GroupBy = "method", methods: Sequence[str] | None = None) -> Table:
    """Runs outside the four protocols (e.g. a plain ``rlptune train``): test accuracy and macro-F1 per dataset × method."""
    acc: dict[tuple, float] = {}
    f1: dict[tuple, float] = {}
    for row in collapse_shot_independent(rows):
        if _infer_protocol(row) in TABLE_KINDS or row.get("accuracy") is None:
            continue
        key = (str(row["dataset"]), _group(row, group_by), row.get("shots"), row.get("seed"))
        _put(acc, key, row["accuracy"], "single-run")
        if row.get("macro_f1") is not None:
            f1[key] = float(row["macro_f1"])
    ds_order = _order((k[0] for k in acc), None, dataset_sort_key)
    m_order = _order((k[1] for k in acc), methods, str)
    shots = sorted({k[2] for k in acc}, key=_seed_key)
    out_rows = []
    for ds in ds_order:
        for m in m_order:
            for sh in shots:
                cells = {
                    "Accuracy": _cell({k[3]: v for k, v in acc.items() if k[:3] == (ds, m, sh)}),
                    "Macro-F1": _cell({k[3]: v for k, v in f1.items() if k[:3] == (ds, m, sh)}),
                }
                if cells["Accuracy"] is None:
                    continue
                out_rows.append(
                    TableRow(
                        labels={"Dataset": ds, "Method": m, "Shots": "all" if sh is None else str(sh)},
                        cells=cells,
                        n=cells["Accuracy"].n,
                    )
                )
    return Table(
        name="other_runs",
        title="Other runs (test accuracy %, mean ± std over seeds)",
        protocol="other",
        label_columns=["Dataset", "Method", "Shots"],
        value_columns=["Accuracy", "Macro-F1"],
        rows=out_rows,
    )


# ----------------------------------------------------------------------------------------------------------------
# renderers


def _seeds_text(row: TableRow) -> str:
    return "–" if row.n is None else str(row.n)


def _cell_text(cell: Cell | None, row: TableRow, decimals: int) -> str:
    if cell is None:
        return "–"
    text = cell.format(decimals)
    if row.n is not None and cell.n and cell.n != row.n:
        text += f" (n={cell.n})"
    return text


def _extra_text(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer()):
        return f"{int(value):,}"
    return str(value)


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def render_markdown(table: Table, decimals: int = 2, title: bool = True) -> str:
    """GitHub markdown; Average rows in bold; '–' for a missing cell; notes as a footnote paragraph."""
    header = [*table.label_columns, *table.value_columns, "Seeds", *table.extra_columns]
    align = ["---"] * len(table.label_columns) + ["---:"] * (len(header) - len(table.label_columns))
    lines = []
    if title:
        lines += [f"### {table.title}", ""]
    lines += ["| " + " | ".join(_md_escape(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    for row in table.rows:
        labels = [_md_escape(row.labels[c]) for c in table.label_columns]
        if row.average:
            labels[0] = f"**{labels[0]}**"
        cells = [_cell_text(row.cells.get(c), row, decimals) for c in table.value_columns]
        extra = [_extra_text(row.extra.get(c)) for c in table.extra_columns]
        lines.append("| " + " | ".join([*labels, *cells, _seeds_text(row), *extra]) + " |")
    if not table.rows:
        lines.append("| " + " | ".join(["(no results)"] + [""] * (len(header) - 1)) + " |")
    if table.notes:
        lines += ["", *(f"*{note}*" for note in table.notes)]
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else repr(round(float(value), 4))


def render_csv(table: Table) -> str:
    """One line per table row; each value column as ``col``, ``col std``, ``col n`` numbers (no ± strings)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = list(table.label_columns) + ["average"]
    for col in table.value_columns:
        header += [col, f"{col} std", f"{col} n"]
    header += ["seeds", *table.extra_columns]
    writer.writerow(header)
    for row in table.rows:
        line: list[Any] = [row.labels[c] for c in table.label_columns] + [int(row.average)]
        for col in table.value_columns:
            cell = row.cells.get(col)
            line += ["", "", ""] if cell is None else [_num(cell.value), _num(cell.std), cell.n]
        line += [
            "" if row.n is None else row.n,
            *("" if row.extra.get(c) is None else row.extra[c] for c in table.extra_columns),
        ]
        writer.writerow(line)
    return buffer.getvalue()


def table_to_json(table: Table) -> dict[str, Any]:
    """Machine-readable table: every cell with value, std, n and the raw per-seed values and seeds."""
    return jsonable(
        {
            "name": table.name,
            "title": table.title,
            "protocol": table.protocol,
            "label_columns": table.label_columns,
            "value_columns": table.value_columns,
            "extra_columns": table.extra_columns,
            "notes": table.notes,
            "rows": [
                {
                    "labels": row.labels,
                    "average": row.average,
                    "seeds": row.n,
                    "cells": {
                        c: (None if row.cells.get(c) is None else row.cells[c].to_dict()) for c in table.value_columns
                    },  # type: ignore[union-attr]
                    "extra": row.extra,
                }
                for row in table.rows
            ],
        }
    )


def table_view(table: Table, decimals: int = 2) -> dict[str, Any]:
    """The table as display strings (header, rows of cells, notes): what the HTML template renders."""
    header = [*table.label_columns, *table.value_columns, "Seeds", *table.extra_columns]
    rows = []
    for row in table.rows:
        cells = [{"text": str(row.labels[c]), "num": False} for c in table.label_columns]
        cells += [{"text": _cell_text(row.cells.get(c), row, decimals), "num": True} for c in table.value_columns]
        cells.append({"text": _seeds_text(row), "num": True})
        cells += [{"text": _extra_text(row.extra.get(c)), "num": True} for c in table.extra_columns]
        rows.append({"average": row.average, "cells": cells})
    return {"id": table.name, "caption": table.title, "header": header, "rows": rows, "notes": list(table.notes)}


def render_html(table: Table, decimals: int = 2) -> str:
    """An HTML <table> (escaped, no external assets), from the report's template (needs jinja2)."""
    from rlptune.report.templates import render_macro

    return render_macro("_blocks.html", "results_table", table_view(table, decimals))


def write_table(table: Table, stem: str | Path, decimals: int = 2) -> list[Path]:
    """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.json`` atomically; returns the three paths."""

    stem = Path(stem)
    return [
        write_text(stem.with_name(stem.name + ".md"), render_markdown(table, decimals)),
        write_text(stem.with_name(stem.name + ".csv"), render_csv(table)),
        write_json(stem.with_name(stem.name + ".json"), table_to_json(table)),
    ]
