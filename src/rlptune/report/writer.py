"""Reading run folders and writing the results report (``report.md`` + a self-contained ``report.html``).

A run folder, as the engine writes it, holds ``result.json`` and, optionally, ``metrics.jsonl`` (one JSON object per
epoch). Readers here are tolerant of missing optional keys so that older or partial runs still show up; anything
that makes a run unreadable raises :class:`~rlptune.errors.RlptuneError` naming the file.

``result.json``::

    {"protocol": "base2new", "dataset": "dtd", "method": "rlp", "seed": 1, "shots": 16, "backbone": "ViT-B/16",
     "trainable_params": 2048,
     "metrics": {"base": {"top1": 80.1, "macro_f1": 79.5, "per_class": [...]}, "new": {...}}  # base2new
              | {"test": {...}},                                                              # other protocols
     "targets": {"caltech101": {"top1": 93.1}, ...},          # optional: cross-dataset / domain-gen
     "prompt_diagnostics": {"ctx": {"P": {...}, "delta": {...}}},  # optional: per prompt name (or one {"P", "delta"})
     "settings": {...}}

``metrics.jsonl``: ``{"epoch", "lr", "loss", "train_acc", "val_acc"?, "diagnostics"?}`` per line.
"""

from __future__ import annotations

import yaml

import base64
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from rlptune.analysis.spectrum import diagnostics_from_singular_values, primary_diagnostics, prompt_diagnostics_by_name
from rlptune.analysis.stats import jsonable, paired_comparison, row_metric, spearman
from rlptune.report.tables import (
    Table,
    _infer_protocol,
    base2new_table,
    collapse_shot_independent,
    is_shot_independent,
    cross_dataset_table,
    domain_gen_table,
    few_shot_curves,
    few_shot_table,
    harmonic_mean,
    other_runs_table,
    normalize_protocol,
    render_markdown,
    table_view,
    write_table,
)
from rlptune.errors import RlptuneError
from rlptune import __version__
from rlptune.report import plots
from rlptune.config import TrainSettings
from rlptune.io import write_json, write_text
from rlptune.rundir import CONFIG, METRICS, RESULT, check_output_folder

__all__ = [
    "analyze_runs",
    "collect_runs",
    "compare_methods",
    "diagnostics_table",
    "disambiguate_methods",
    "read_metrics_jsonl",
    "read_result",
    "render_analysis_markdown",
    "result_to_row",
    "write_report",
]

PromptLoader = Callable[[Path], Mapping[str, Any] | None]


# ----------------------------------------------------------------------------------------------------------------
# reading


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """Parse one result.json (a run folder or the file itself); a corrupt or non-object file is a one-line error."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULT
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RlptuneError(f"{path}: no such result file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RlptuneError(f"{path}: not a readable JSON result ({exc})") from None
    if not isinstance(data, dict):
        raise RlptuneError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_metrics_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Epoch records of a metrics.jsonl; a truncated last line (a run killed mid-write) is skipped, others are errors."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise RlptuneError(f"{path}: cannot read ({exc})") from None
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise RlptuneError(f"{path}:{number}: not a JSON object") from None
        if isinstance(record, dict):
            records.append(record)
    return records


def _top1(value: Any) -> float | None:
    """Accuracy in percent from ``{"top1": ..}`` (or "accuracy"/"acc") or a bare number."""
    if isinstance(value, Mapping):
        for key in ("top1", "accuracy", "acc"):
            if value.get(key) is not None:
                return float(value[key])
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _f1(value: Any) -> float | None:
    return float(value["macro_f1"]) if isinstance(value, Mapping) and value.get("macro_f1") is not None else None


def result_to_row(result: Mapping[str, Any], source: str | os.PathLike | None = None) -> dict[str, Any]:
    """Flatten a result.json into a table row: base/new/h for base2new, accuracy (+ targets) otherwise, percent.

    Keeps ``settings`` and ``prompt_diagnostics`` (for spectra and custom grouping) and copies the headline
    diagnostics (``id_k``, ``id_k_delta``, ``effective_rank``, ... of the first prompt) to the top level. Only
    ``method`` is required; a missing dataset reads as "unknown", a missing protocol is inferred from the metrics.
    """
    where = f"{source}: " if source else "result: "
    if not result.get("method"):
        raise RlptuneError(f"{where}missing required field 'method'")
    metrics = result.get("metrics") or {}
    if not isinstance(metrics, Mapping):
        raise RlptuneError(f"{where}'metrics' must be an object")
    row: dict[str, Any] = {
        "protocol": normalize_protocol(result["protocol"]) if result.get("protocol") else None,
        "dataset": str(result.get("dataset") or "unknown"),
        "method": str(result["method"]),
        "tag": str(result.get("tag") or result["method"]),
        "seed": result.get("seed"),
        "shots": result.get("shots"),
        "backbone": result.get("backbone"),
        "trainable_params": result.get("trainable_params"),
    }
    base, new = _top1(metrics.get("base")), _top1(metrics.get("new"))
    if base is not None:
        row["base"] = base
    if new is not None:
        row["new"] = new
    if base is not None and new is not None:
        row["h"] = harmonic_mean(base, new)
    for name, key in (("base", "base_macro_f1"), ("new", "new_macro_f1"), ("test", "macro_f1")):
        if _f1(metrics.get(name)) is not None:
            row[key] = _f1(metrics.get(name))
    accuracy = _top1(metrics.get("test"))
    if accuracy is None:
        accuracy = _top1(metrics.get("accuracy", metrics.get("top1")))
    if accuracy is not None:
        row["accuracy"] = accuracy
    targets = result.get("targets") or metrics.get("targets") or {}
    if isinstance(targets, Mapping):
        flat = {str(k): _top1(v) for k, v in targets.items()}
        if any(v is not None for v in flat.values()):
            row["targets"] = {k: v for k, v in flat.items() if v is not None}
    if row["protocol"] is None:
        row["protocol"] = _infer_protocol({**row, "protocol": None})
    diag = result.get("prompt_diagnostics")
    if isinstance(diag, Mapping) and prompt_diagnostics_by_name(dict(diag)):
        row["prompt_diagnostics"] = dict(diag)
        row.update(headline(diag))
    if isinstance(result.get("settings"), Mapping):
        row["settings"] = dict(result["settings"])
    return row


def headline(diag: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level id_k / effective_rank / numerical_rank (+ _delta) of the first prompt of a prompt_diagnostics dict
    (one prompt's ``{"P", "delta"}`` or ``{name: {"P", "delta"}}``; all names listed in ``prompts``)."""
    named = prompt_diagnostics_by_name(dict(diag))
    if not named:
        return {}
    out: dict[str, Any] = {"prompts": list(named)}
    diag = next(iter(named.values()))
    for part, suffix in (("P", ""), ("delta", "_delta")):
        d = diag.get(part)
        if not isinstance(d, Mapping):
            continue
        for key in ("id_k", "effective_rank", "numerical_rank"):
            if d.get(key) is not None:
                out[key + suffix] = d[key]
        if d.get("k") is not None and "k" not in out:
            out["k"] = d["k"]
    return out


def collect_runs(results_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows for every result.json under ``results_dir`` (sorted by path), each with ``run_dir`` and, when a
    metrics.jsonl sits next to it, ``history`` (its epoch records)."""
    root = Path(results_dir)
    if not root.exists():
        raise RlptuneError(f"{root}: no such results folder")
    files = [root] if root.is_file() else sorted(p for p in root.rglob(RESULT) if p.is_file())
    rows = []
    for path in files:
        row = result_to_row(read_result(path), source=path)
        row["run_dir"] = str(path.parent)
        if "settings" not in row and (path.parent / CONFIG).is_file():
            settings = _read_config(path.parent / CONFIG)  # a plain `rlptune train` run keeps them there
            if settings:
                row["settings"] = settings
        metrics = path.parent / METRICS
        if metrics.is_file():
            row["history"] = read_metrics_jsonl(metrics)
        rows.append(row)
    return rows


def _read_config(path: Path) -> dict[str, Any] | None:
    """The run's resolved settings from its config.yaml, or None when it cannot be read (labels only, not needed)."""

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _flat_settings(settings: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if not isinstance(settings, Mapping):
        return out
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat_settings(value, name + "."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return out


def disambiguate_methods(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copies of the rows where runs of one method that differ only in settings (a sweep such as rank 1 2 4 8) get
    distinct method labels, e.g. ``"rlp (rank=2)"``, built from the settings that differ between runs sharing
    protocol, dataset, method, seed and shots. Rows without such duplicates keep their label."""
    out = [dict(r) for r in rows]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in out:
        key = (row.get("protocol"), row.get("dataset"), row.get("method"), row.get("seed"), row.get("shots"))
        groups.setdefault(key, []).append(row)
    varying: dict[Any, set[str]] = {}
    for key, members in groups.items():
        if len(members) < 2:
            continue
        flats = [_flat_settings(m.get("settings")) for m in members]
        names = set().union(*flats)
        varying.setdefault(key[2], set()).update(
            n for n in names if len({f.get(n) for f in flats}) > 1 and not n.endswith(("dir", "path", "seed"))
        )
    for row in out:
        names = sorted(varying.get(row.get("method"), ()))
        if names:
            flat = _flat_settings(row.get("settings"))
            row["method"] = (
                f"{row['method']} (" + ", ".join(f"{n.split('.')[-1]}={flat.get(n, '–')}" for n in names) + ")"
            )
    _label_repeats_by_folder(out)
    return out


def _label_repeats_by_folder(rows: list[dict[str, Any]]) -> None:
    """Runs still indistinguishable after the settings (the same training run twice into two folders) are labelled
    by the shortest tail of their folder path that tells them apart ("coop [runs/b]"), else by position."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if is_shot_independent(row):
            continue  # zero-shot repeats are one result, merged later (collapse_shot_independent)
        key = (row.get("protocol"), row.get("dataset"), row.get("method"), row.get("seed"), row.get("shots"))
        groups.setdefault(key, []).append(row)
    for members in groups.values():
        if len(members) < 2:
            continue
        parts = [Path(m["run_dir"]).parts if m.get("run_dir") else () for m in members]
        names = None
        if all(parts):
            for depth in range(1, max(len(p) for p in parts) + 1):
                tails = ["/".join(p[-depth:]) for p in parts]
                if len(set(tails)) == len(tails):
                    names = tails
                    break
        names = names or [f"run {i}" for i in range(1, len(members) + 1)]
        for member, name in zip(members, names):
            member["method"] = f"{member['method']} [{name}]"


# ----------------------------------------------------------------------------------------------------------------
# ID_k analysis


def _rediagnose(part: Mapping[str, Any], k: int) -> dict[str, Any] | None:
    """Recompute ID_k etc. for another k from a stored spectrum (one matrix or a stack's list of spectra)."""
    sv, shape = part.get("singular_values"), part.get("shape")
    if not sv or not shape:
        return None
    if isinstance(sv[0], (list, tuple)):
        parts = [diagnostics_from_singular_values(s, shape[-2:], k) for s in sv]
        return {
            "k": k,
            "id_k": float(np.mean([p.id_k for p in parts])),
            "effective_rank": part.get("effective_rank"),
            "numerical_rank": part.get("numerical_rank"),
        }
    d = diagnostics_from_singular_values(sv, shape, k)
    return {
        "k": k,
        "id_k": d.id_k,
        "effective_rank": part.get("effective_rank", d.effective_rank),
        "numerical_rank": part.get("numerical_rank", d.numerical_rank),
    }


def _run_diagnostics(row: Mapping[str, Any], k: int | None, loader: PromptLoader | None) -> tuple[dict, str | None]:
    """(prompt_diagnostics, where it came from): result.json, else the last metrics.jsonl epoch, else the loader."""
    found, source = primary_diagnostics(row.get("prompt_diagnostics")), RESULT
    if found is None:
        source = None
        for record in reversed(row.get("history") or []):
            found = primary_diagnostics(record.get("diagnostics"))
            if found is not None:
                source = "metrics.jsonl (last epoch)"
                break
    if found is None and loader is not None and row.get("run_dir"):
        found = primary_diagnostics(loader(Path(row["run_dir"])))
        source = "recomputed" if found is not None else None
    if found is None:
        return {}, None
    out = {key: dict(value) for key, value in found[1].items() if isinstance(value, Mapping)}
    if k is not None and any(part.get("k") != k for part in out.values()):
        source = f"{source}, ID recomputed for k={k}"
        for part in out.values():
            if part.get("k") != k:
                redone = _rediagnose(part, k)
                if redone is None:
                    raise RlptuneError(
                        f"{row.get('run_dir', 'run')}: diagnostics were stored for k={part.get('k')} without the "
                        f"spectrum needed to recompute k={k}"
                    )
                part.update(redone)
    return out, source


def _run_label(row: Mapping[str, Any], root: Path | None = None) -> str:
    if row.get("run_label"):
        return str(row["run_label"])
    if row.get("run_dir"):
        path = Path(row["run_dir"])
        if root is not None:
            try:
                return str(path.relative_to(root)) or path.name
            except ValueError:
                pass
        return str(path)
    return f"{row.get('method')}/{row.get('dataset')}/seed{row.get('seed')}"


def diagnostics_table(
    rows: Sequence[Mapping[str, Any]],
    k: int | None = None,
    which: str = "P",
    metric: str | None = None,
    prompt_loader: PromptLoader | None = None,
    root: Path | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-run diagnostics rows and the Spearman correlation of ID_k (of ``which``: "P" or "delta") with ``metric``
    (default: new-class accuracy when any run has it, else test accuracy)."""
    if metric is None:
        metric = "new" if any(r.get("new") is not None for r in rows) else "accuracy"
    if which not in ("P", "delta"):
        raise RlptuneError(f"analyze: 'which' must be 'P' or 'delta', got {which!r}")
    table: list[dict[str, Any]] = []
    for row in rows:
        diag, source = _run_diagnostics(row, k, prompt_loader)
        p, d = diag.get("P", {}), diag.get("delta", {})
        table.append(
            {
                "run": _run_label(row, root),
                "protocol": row.get("protocol"),
                "dataset": row.get("dataset"),
                "method": row.get("method"),
                "seed": row.get("seed"),
                "shots": row.get("shots"),
                "k": p.get("k", d.get("k", k)),
                "id_k": p.get("id_k"),
                "id_k_delta": d.get("id_k"),
                "effective_rank": p.get("effective_rank"),
                "effective_rank_delta": d.get("effective_rank"),
                "numerical_rank": p.get("numerical_rank"),
                "numerical_rank_delta": d.get("numerical_rank"),
                "base": row.get("base"),
                "new": row.get("new"),
                "h": row.get("h"),
                "accuracy": row.get("accuracy"),
                "diagnostics_source": source,
            }
        )
    x_key = "id_k" if which == "P" else "id_k_delta"
    ks = {r["k"] for r in table if r[x_key] is not None and r.get(metric) is not None}
    if len(ks) > 1:
        raise RlptuneError("analyze: the runs store ID_k for different k; pass k to recompute them on one k")
    correlation = {"x": x_key, "y": metric, "k": next(iter(ks), None), **_grouped_correlations(table, x_key, metric)}
    return jsonable(table), correlation


def _grouped_correlations(table: Sequence[Mapping[str, Any]], x_key: str, metric: str) -> dict[str, Any]:
    """Spearman ρ (p, n) within each method, within each dataset, and pooled over all runs.

    Pooled over methods, ρ mostly measures "which method" (methods differ in both ID_k and accuracy), so the pooled
    numbers come with the grouping they pool over (``pooled_over``) and the within-group numbers come first.
    """
    points = [r for r in table if r.get(x_key) is not None and r.get(metric) is not None]
    pooled = spearman([r[x_key] for r in points], [r[metric] for r in points])

    def within(field: str) -> list[dict[str, Any]]:
        out = []
        for group in sorted({str(r.get(field)) for r in points}):
            members = [r for r in points if str(r.get(field)) == group]
            corr = spearman([r[x_key] for r in members], [r[metric] for r in members])
            out.append({"group": group, **corr.to_dict()})
        return out

    return {
        **pooled.to_dict(),
        "pooled_over": {
            "methods": sorted({str(r.get("method")) for r in points}),
            "datasets": sorted({str(r.get("dataset")) for r in points}),
        },
        "within_method": within("method"),
        "within_dataset": within("dataset"),
    }


def analyze_runs(
    run_dirs: Iterable[str | os.PathLike],
    k: int | None = None,
    which: str = "P",
    metric: str | None = None,
    prompt_loader: PromptLoader | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``rlptune analyze RUN_DIR...``: per-run diagnostics and the Spearman ρ (p, n) of ID_k vs new-class accuracy.

    Each argument is a run folder, a result.json, or a folder of runs (searched recursively). Diagnostics come
    from result.json's ``prompt_diagnostics``, else the last epoch of metrics.jsonl, else ``prompt_loader(run_dir)``
    (a callable returning :func:`~rlptune.analysis.spectrum.prompt_diagnostics` output, e.g. from a checkpoint);
    with ``k`` they are recomputed for that k from the stored singular values. ``metric`` defaults to "new" when
    any run is a base-to-new run, else "accuracy". Runs without the metric or without diagnostics are listed but
    not counted in n.
    """
    rows: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        rows.extend(collect_runs(run_dir))
    if not rows:
        raise RlptuneError("analyze: no result.json found in the given folders")
    return diagnostics_table(rows, k=k, which=which, metric=metric, prompt_loader=prompt_loader)


def _fmt(value: Any, decimals: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        if decimals == 0:
            return str(int(value)) if value.is_integer() else f"{value:.1f}"  # a stack's mean rank can be fractional
        return f"{value:.{decimals}f}"
    return str(value)


_ANALYSIS_COLUMNS = [
    ("Run", "run", 0),
    ("Dataset", "dataset", 0),
    ("Method", "method", 0),
    ("Seed", "seed", 0),
    ("ID_k (P)", "id_k", 3),
    ("ID_k (ΔP)", "id_k_delta", 3),
    ("eff. rank (P)", "effective_rank", 2),
    ("eff. rank (ΔP)", "effective_rank_delta", 2),
    ("rank (P)", "numerical_rank", 0),
    ("rank (ΔP)", "numerical_rank_delta", 0),
    ("New (%)", "new", 2),
    ("Acc. (%)", "accuracy", 2),
]


def _rho_text(corr: Mapping[str, Any]) -> str:
    if corr.get("rho") is None:
        return f"ρ undefined (n = {corr.get('n')}: fewer than 3 points or constant values)"
    p = "p < 0.0001" if corr["p"] < 1e-4 else f"p = {corr['p']:.3g}"
    return f"ρ = {corr['rho']:.3f}, {p}, n = {corr.get('n')}"


def _correlation_lines(correlation: Mapping[str, Any]) -> list[str]:
    """Within-method and within-dataset Spearman lines first, then the pooled one with what it pools over."""
    y = {"new": "new-class accuracy", "base": "base-class accuracy", "h": "H", "accuracy": "test accuracy"}.get(
        str(correlation.get("y")), str(correlation.get("y"))
    )
    which = "ΔP" if correlation.get("x") == "id_k_delta" else "P"
    k = correlation.get("k") or 1
    lines = [f"Spearman correlation of ID_{k} ({which}) with {y}:"]
    for field, name in (("within_method", "method"), ("within_dataset", "dataset")):
        for group in correlation.get(field) or []:
            lines.append(f"- within {name} {group['group']}: {_rho_text(group)}")
    over = correlation.get("pooled_over") or {}
    methods, datasets = over.get("methods") or [], over.get("datasets") or []
    grouping = f" over {len(methods)} method(s) × {len(datasets)} dataset(s)" if over else ""
    caveat = (
        "; across methods this mostly says which method, not how ID relates to accuracy" if len(methods) > 1 else ""
    )
    lines.append(f"- pooled{grouping}: {_rho_text(correlation)}{caveat}")
    return lines


def _correlation_text(correlation: Mapping[str, Any]) -> str:
    return "\n".join(_correlation_lines(correlation))


def render_analysis_markdown(table_rows: Sequence[Mapping[str, Any]], correlation: Mapping[str, Any]) -> str:
    """Markdown for ``rlptune analyze``: one row per run, then Spearman ρ within each method, within each dataset,
    and pooled (with what it pools over)."""
    k = correlation.get("k") or next((r.get("k") for r in table_rows if r.get("k")), 1)
    header = [name.replace("ID_k", f"ID_{k}") for name, _, _ in _ANALYSIS_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (len(header) - 4)) + "|"]
    for row in table_rows:
        lines.append(
            "| " + " | ".join(_fmt(row.get(key), dec).replace("|", "\\|") for _, key, dec in _ANALYSIS_COLUMNS) + " |"
        )
    return "\n".join(lines) + "\n\n" + _correlation_text(correlation) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# comparisons


def compare_methods(
    rows: Sequence[Mapping[str, Any]], baseline: str | None = None, max_methods: int = 6
) -> list[dict[str, Any]]:
    """Paired comparisons between methods: base2new H and New over (dataset, seed), few-shot (and other single-run)
    accuracy over (dataset, shots, seed). Each method against ``baseline`` if given, else every pair (when
    ≤ ``max_methods``).

    Zero-shot CLIP is one number per dataset whatever the seed and shot count, so repeating it per seed would fake
    pairs: against it, the other method is first averaged over seeds and paired over datasets only (few-shot: per
    shot count). Each comparison names what it is paired over (``paired_over``).
    """
    specs = [
        ("base2new", "h", ("dataset", "seed")),
        ("base2new", "new", ("dataset", "seed")),
        ("few-shot", "accuracy", ("dataset", "shots", "seed")),
        ("other", "accuracy", ("dataset", "shots", "seed")),
    ]
    known = {"base2new", "few-shot", "cross-dataset", "domain-gen"}
    out: list[dict[str, Any]] = []
    for protocol, metric, key in specs:
        selected = collapse_shot_independent(
            [
                r
                for r in rows
                if (r.get("protocol") == protocol or (protocol == "other" and r.get("protocol") not in known))
            ]
        )
        methods = sorted({str(r["method"]) for r in selected})
        if baseline is not None:
            pairs = [(m, baseline) for m in methods if m != baseline and baseline in methods]
        elif len(methods) <= max_methods:
            pairs = [(a, b) for i, b in enumerate(methods) for a in methods[i + 1 :]]
        else:
            pairs = []
        for a, b in pairs:
            a_rows = [r for r in selected if r["method"] == a]
            b_rows = [r for r in selected if r["method"] == b]
            if all(map(is_shot_independent, a_rows)) and not all(map(is_shot_independent, b_rows)):
                a, b, a_rows, b_rows = b, a, b_rows, a_rows  # zero-shot is the reference: "method − zero-shot"
            for label, a_side, b_side, pair_key, over in _pairings(protocol, key, a_rows, b_rows, metric):
                result = paired_comparison(a_side, b_side, key=pair_key, metric=metric)
                if result.n:
                    out.append(
                        {
                            "protocol": label,
                            "a": a,
                            "b": b,
                            "paired_over": over,
                            **{k: v for k, v in result.to_dict().items() if k != "pairs"},
                        }
                    )
    return out


def _pairings(
    protocol: str, key: tuple[str, ...], a_rows: list, b_rows: list, metric: str
) -> list[tuple[str, list, list, tuple[str, ...], str]]:
    """(label, a rows, b rows, key, what the pairs are) for one method pair: as is, or, when one side is
    shot/seed-independent (zero-shot), the other side averaged over seeds and paired over datasets, per shot count."""
    a_fixed = bool(a_rows) and all(is_shot_independent(r) for r in a_rows)
    b_fixed = bool(b_rows) and all(is_shot_independent(r) for r in b_rows)
    if not (a_fixed or b_fixed):
        return [(protocol, a_rows, b_rows, key, ", ".join(key))]
    if a_fixed and b_fixed:
        return [(protocol, a_rows, b_rows, ("dataset",), "dataset")]
    trained = b_rows if a_fixed else a_rows
    fixed = a_rows if a_fixed else b_rows
    out = []
    shot_counts = (
        sorted({r.get("shots") for r in trained}, key=lambda s: (s is None, s or 0)) if "shots" in key else [None]
    )
    for shots in shot_counts:
        members = [r for r in trained if "shots" not in key or r.get("shots") == shots]
        averaged = _seed_means(members, metric)
        label = (
            protocol
            if shots is None or len(shot_counts) == 1 and protocol != "few-shot"
            else f"{protocol} ({shots} shots)"
        )
        sides = (fixed, averaged) if a_fixed else (averaged, fixed)
        out.append((label, sides[0], sides[1], ("dataset",), "dataset (seed mean vs zero-shot)"))
    return out


def _seed_means(rows: Sequence[Mapping[str, Any]], metric: str) -> list[dict[str, Any]]:
    """One row per dataset with the metric averaged over the seeds (the per-seed H for "h")."""
    values: dict[str, list[float]] = {}
    for row in rows:
        value = row_metric(row, metric)
        if value is not None:
            values.setdefault(str(row.get("dataset")), []).append(value)
    return [{"dataset": ds, metric: float(np.mean(v)), "seeds": len(v)} for ds, v in values.items()]


def _comparison_rows(comparisons: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["Protocol", "Metric", "A", "B", "Paired over", "Pairs", "Mean A − B", "95% CI", "Wilcoxon p"]
    body = []
    for c in comparisons:
        ci = "–" if c.get("ci_low") is None else f"[{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]"
        mean = "–" if c.get("mean_diff") is None else f"{c['mean_diff']:+.2f}"
        p = "–" if c.get("p_value") is None else f"{c['p_value']:.3g}"
        metric = {"h": "H", "new": "New", "accuracy": "Accuracy"}.get(c["metric"], c["metric"])
        body.append([c["protocol"], metric, c["a"], c["b"], str(c.get("paired_over", "")), str(c["n"]), mean, ci, p])
    return header, body


# ----------------------------------------------------------------------------------------------------------------
# report


class _Doc:
    """Builds report.md (strings) and the block model of report.html (rendered by the Jinja2 templates) side by side."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.md: list[str] = []
        self.summary: list[str] = []
        self.sections: list[dict[str, Any]] = []

    def _blocks(self) -> list[dict[str, Any]]:
        if not self.sections:
            raise RlptuneError("report: a block was added before any section heading")
        return self.sections[-1]["blocks"]

    def intro(self, title: str, text: str) -> None:
        self.md += [f"# {title}", "", text, ""]
        self.summary.append(text)

    def heading(self, text: str) -> None:
        self.md += [f"## {text}", ""]
        slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
        self.sections.append({"id": f"section-{slug}", "title": text, "blocks": []})

    def para(self, text: str, css: str = "") -> None:
        self.md += [text, ""]
        self._blocks().append({"kind": "para", "text": text, "class": css})

    def bullets(self, lines: Sequence[str], css: str = "") -> None:
        self.md += [f"- {line}" for line in lines] + [""]
        self._blocks().append({"kind": "list", "entries": list(lines), "class": css})

    def table(self, table: Table, files: Sequence[Path]) -> None:
        rel = [p.relative_to(self.out).as_posix() for p in files]
        self.md += [render_markdown(table), "Files: " + ", ".join(f"[{Path(r).suffix[1:]}]({r})" for r in rel), ""]
        self._blocks().append({"kind": "table", "table": table_view(table)})
        self._blocks().append({"kind": "files", "files": rel})

    def simple_table(self, name: str, header: Sequence[str], body: Sequence[Sequence[str]], caption: str = "") -> None:
        self.md.append("| " + " | ".join(header) + " |")
        self.md.append("|" + "|".join("---" for _ in header) + "|")
        self.md += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
        self.md.append("")
        view = {
            "id": name,
            "caption": caption,
            "header": list(header),
            "notes": [],
            "rows": [{"average": False, "cells": [{"text": c, "num": _looks_numeric(c)} for c in row]} for row in body],
        }
        self._blocks().append({"kind": "table", "table": view})

    def figure(self, paths: Sequence[Path], caption: str) -> None:
        png, svg = paths[0], paths[1]
        rel_png, rel_svg = png.relative_to(self.out).as_posix(), svg.relative_to(self.out).as_posix()
        self.md += [f"![{caption}]({rel_png})", "", f"*{caption}* ([SVG]({rel_svg}))", ""]
        data = png.read_bytes()
        width, height = _png_size(data)
        self._blocks().append(
            {
                "kind": "figure",
                "figure": {
                    "id": png.stem.replace("_", "-"),
                    "caption": caption,
                    "svg": rel_svg,
                    "width": width,
                    "height": height,
                    "src": "data:image/png;base64," + base64.b64encode(data).decode("ascii"),
                },
            }
        )

    def html(self, title: str) -> str:
        from rlptune.report.templates import render

        return render("report.html", title=title, summary=self.summary, sections=self.sections, version=__version__)


def _looks_numeric(text: str) -> bool:
    return bool(re.fullmatch(r"[-+−\[\]0-9.,eE ±–]+", text.strip())) and any(ch.isdigit() for ch in text)


def _png_size(data: bytes) -> tuple[int, int]:
    """Pixel width and height from a PNG's IHDR chunk (so the page reserves the figure's box before decoding)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 24:
        raise RlptuneError("report: a figure is not a PNG file")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _pick_runs(
    rows: Sequence[Mapping[str, Any]], limit: int, need: Callable[[Mapping[str, Any]], bool]
) -> list[Mapping[str, Any]]:
    """First qualifying run of each (method, dataset), methods interleaved so every method shows up; at most ``limit``."""
    by_method: dict[str, list[Mapping[str, Any]]] = {}
    seen: set[tuple] = set()
    for row in rows:
        key = (row.get("method"), row.get("dataset"))
        if need(row) and key not in seen:
            seen.add(key)
            by_method.setdefault(str(row.get("method")), []).append(row)
    picked: list[Mapping[str, Any]] = []
    queues = [by_method[m] for m in sorted(by_method)]
    while len(picked) < limit and any(queues):
        for queue in queues:
            if queue and len(picked) < limit:
                picked.append(queue.pop(0))
    return picked


def _spectrum(row: Mapping[str, Any], part: str) -> list[float] | None:
    found = primary_diagnostics(row.get("prompt_diagnostics"))
    diag = found[1].get(part) if found is not None else None
    if not isinstance(diag, Mapping) or not diag.get("singular_values"):
        return None
    sv = diag["singular_values"]
    return list(sv[0]) if isinstance(sv[0], (list, tuple)) else list(sv)  # a stack: its first matrix


def _aug_views(row: Mapping[str, Any]) -> int | None:
    """The run's train.aug_views: from its settings, else its config.yaml; None when neither says."""
    settings = row.get("settings")
    train = settings.get("train") if isinstance(settings, Mapping) else None
    if not (isinstance(train, Mapping) and "aug_views" in train) and row.get("run_dir"):
        config = _read_config(Path(str(row["run_dir"])) / CONFIG)
        train = config.get("train") if config else None
    value = train.get("aug_views") if isinstance(train, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _training_curve_note(picked: Sequence[Mapping[str, Any]]) -> str:
    """What the training curves are, with the augmentation default read from the settings and the plotted runs' own."""
    default = TrainSettings().aug_views
    used = sorted({v for v in (_aug_views(r) for r in picked) if v is not None})
    unknown = sum(_aug_views(r) is None for r in picked)
    if used:
        runs = (
            f"These runs used train.aug_views = {', '.join(map(str, used))}"
            + (f" ({unknown} run(s) did not record it)" if unknown else "")
            + ". "
        )
    else:
        runs = "These runs did not record train.aug_views. "
    return (
        "What the curves are: training loss and accuracy are averages over each epoch's mini-batches, measured while "
        f"the prompt is being updated, on augmented training views. train.aug_views is {default} by default. With 0, "
        "every epoch draws a fresh random crop and flip per image; with K > 0, frozen-image methods cycle "
        "through K cached augmented views, one per epoch, so the curves can show a saw-tooth with period K: it is the "
        f"view changing, not the optimisation. {runs}Validation accuracy (dashed), when the run logged it, is "
        "measured once at the end of each epoch on the held-out validation split without augmentation: read "
        "generalisation from that line, not from the training one."
    )


def _shown_runs(picked: Sequence[Mapping[str, Any]], eligible: Sequence[Mapping[str, Any]]) -> str:
    """Which runs a per-run figure shows, counted from what it draws, against the runs it could have drawn."""
    methods = sorted({str(r.get("method")) for r in picked})
    datasets = sorted({str(r.get("dataset")) for r in picked})
    all_datasets = {str(r.get("dataset")) for r in eligible}
    seeds = sorted({str(r.get("seed")) for r in picked})
    of = f" of {len(all_datasets)}" if len(all_datasets) > len(datasets) else ""
    left = len({(r.get("method"), r.get("dataset"), r.get("seed"), r.get("shots")) for r in eligible}) - len(picked)
    return (
        f"{len(picked)} run(s), one per method and dataset shown: {len(methods)} method(s) ({', '.join(methods)}) on "
        f"{len(datasets)}{of} dataset(s) ({', '.join(datasets)}), seed {', '.join(seeds)}"
        + (f"; {left} other run(s) with this data are not drawn" if left > 0 else "")
    )


def write_report(
    rows_or_results_dir: Sequence[Mapping[str, Any]] | str | os.PathLike,
    out_dir: str | os.PathLike,
    title: str = "rlptune results",
    baseline: str | None = None,
) -> list[Path]:
    """``rlptune report RESULTS_DIR -o OUT``: tables (md/csv/json), figures (png/svg), report.md and report.html.

    report.html is rendered from the Jinja2 templates in ``rlptune/report/templates`` and is self-contained:
    tables as HTML, figures embedded as base64 PNG, inline CSS, no scripts and no external links. Runs of one method
    that differ only in settings (a sweep) are labelled apart first (:func:`disambiguate_methods`), and zero-shot
    runs repeated per shot count and seed are shown once. Returns
    ``[report.md, report.html, *tables, *figures, *json]``.
    """
    from rlptune.report.templates import environment

    environment()  # fail on a missing jinja2 before any file is written
    reported = (
        [("the results folder it reports on", rows_or_results_dir)]
        if isinstance(rows_or_results_dir, (str, os.PathLike))
        else []
    )
    check_output_folder(out_dir, kind="report", inputs=reported)  # never over the user's files or the runs read
    root: Path | None = None
    if isinstance(rows_or_results_dir, (str, os.PathLike)):
        root = Path(rows_or_results_dir)
        rows = collect_runs(root)
        if not rows:
            raise RlptuneError(f"{root}: no result.json found (a finished run folder holds one)")
    else:
        rows = [dict(r) for r in rows_or_results_dir]
        for row in rows:
            row["protocol"] = _infer_protocol(row)
        if not rows:
            raise RlptuneError("report: no result rows given")
    rows = disambiguate_methods(rows)
    out = Path(out_dir)
    tables_dir, figures_dir = out / "tables", out / "figures"
    doc = _Doc(out)
    protocols = sorted({str(r.get("protocol")) for r in rows})
    doc.intro(
        title,
        (
            f"{len(rows)} runs; protocols: {', '.join(protocols)}; methods: {', '.join(sorted({str(r['method']) for r in rows}))}; "
            f"datasets: {len({str(r['dataset']) for r in rows})}. Accuracies in %, mean ± sample std over seeds "
            "(– : one seed, no spread observed)."
        ),
    )

    table_files: list[Path] = []
    figure_files: list[Path] = []
    builders = [
        ("base2new", "Base-to-new generalisation", base2new_table),
        ("few-shot", "Few-shot classification", few_shot_table),
        ("cross-dataset", "Cross-dataset transfer", cross_dataset_table),
        ("domain-gen", "Domain generalisation", domain_gen_table),
        ("other", "Single runs", other_runs_table),
    ]
    for protocol, heading, build in builders:
        table = build(rows)
        if not table.rows:
            continue
        doc.heading(heading)
        files = write_table(table, tables_dir / table.name)
        table_files += files
        doc.table(table, files)
        if protocol == "base2new":
            paths = _plot("plot_base_new_bars", table, figures_dir / "base2new_bars")
            figure_files += paths
            n_methods = len({row.labels["Method"] for row in table.rows})
            n_datasets = len({row.labels["Dataset"] for row in table.rows if not row.average})
            doc.figure(
                paths,
                f"Base / New / H for {n_methods} method(s) on {n_datasets} dataset(s) "
                f"({plots.bars_spread_note(table)}); colour and hatch: method",
            )
        if protocol == "few-shot":
            curves = few_shot_curves(table)
            paths = _plot("plot_few_shot_curves", curves, figures_dir / "few_shot_curves")
            figure_files += paths
            zero_shot = any(c.get("shots") == [0] for methods in curves.values() for c in methods.values())
            shown = [d for d in curves if d != "Average"]
            doc.figure(
                paths,
                f"Few-shot accuracy vs shots per class on {len(shown)} dataset(s) "
                f"({plots.few_shot_spread_note(curves)}; whiskers and band: ± std; markers of "
                "different methods are nudged sideways so equal values stay visible"
                + ("; zero-shot CLIP is the horizontal dotted line)" if zero_shot else ")"),
            )

    comparisons = compare_methods(rows, baseline=baseline)
    if comparisons:
        doc.heading("Paired comparisons")
        doc.para(
            "Difference A − B paired as the 'Paired over' column says: mean, 95% t confidence interval and two-sided "
            "Wilcoxon signed-rank p-value. Against zero-shot CLIP (one number per dataset), the other method is first "
            "averaged over seeds, so the pairs are datasets."
        )
        doc.simple_table("comparisons", *_comparison_rows(comparisons))

    diag_rows = [
        r
        for r in rows
        if primary_diagnostics(r.get("prompt_diagnostics"))
        or any(primary_diagnostics(h.get("diagnostics")) for h in r.get("history") or [])
    ]
    analysis: dict[str, Any] = {}
    if diag_rows:
        doc.heading("Information density")
        table_rows, corr_p = diagnostics_table(diag_rows, which="P", root=root)
        _, corr_delta = diagnostics_table(diag_rows, which="delta", root=root)
        analysis = {"runs": table_rows, "correlation": {"P": corr_p, "delta": corr_delta}}
        k = corr_p.get("k") or next((r.get("k") for r in table_rows if r.get("k")), 1)
        header = [name.replace("ID_k", f"ID_{k}") for name, _, _ in _ANALYSIS_COLUMNS]
        body = [[_fmt(r.get(key), dec) for _, key, dec in _ANALYSIS_COLUMNS] for r in table_rows]
        doc.simple_table("diagnostics", header, body)
        for corr in (corr_p, corr_delta):
            lines = _correlation_lines(corr)
            doc.para(lines[0])
            doc.bullets([line[2:] for line in lines[1:]], css="correlation")
        y = str(corr_p["y"])
        points = [r for r in table_rows if r.get("id_k") is not None and r.get(y) is not None]
        if len(points) >= 2:
            what = "new-class accuracy" if y == "new" else "test accuracy"
            paths = _plot(
                "plot_id_vs_accuracy",
                [r["id_k"] for r in points],
                [r[y] for r in points],
                figures_dir / ("id_vs_new" if y == "new" else "id_vs_accuracy"),
                labels=[str(r["method"]) for r in points],
                markers_by=[str(r["dataset"]) for r in points],
                k=k,
                ylabel=f"{what[0].upper()}{what[1:]} (%)",
            )
            figure_files += paths
            doc.figure(
                paths,
                f"Information density of the prompt vs {what}, one point per run ({len(points)} runs "
                f"of {len({str(r['method']) for r in points})} method(s) on "
                f"{len({str(r['dataset']) for r in points})} dataset(s)); colour and trend-line dash: "
                "method, marker: dataset; one trend line and Spearman ρ per method (the pooled ρ is in "
                "the title with what it pools over)",
            )
        for part, name, label in (("P", "spectra", "P"), ("delta", "spectra_delta", "ΔP")):
            picked = _pick_runs(rows, 8, lambda r, part=part: _spectrum(r, part) is not None)
            if picked:
                eligible = [r for r in rows if _spectrum(r, part) is not None]
                spectra = {f"{r['method']} ({r['dataset']}, seed {r.get('seed')})": _spectrum(r, part) for r in picked}
                paths = _plot(
                    "plot_singular_spectra",
                    spectra,
                    figures_dir / name,
                    title=f"Singular-value spectra of {label}",
                    methods=[str(r["method"]) for r in picked],
                    markers_by=[str(r["dataset"]) for r in picked],
                )
                figure_files += paths
                doc.figure(
                    paths,
                    f"Singular values of {label} (log scale) of {_shown_runs(picked, eligible)}; "
                    "colour and dash: method, marker: dataset",
                )

    with_history = _pick_runs(rows, 6, lambda r: bool(r.get("history")))
    if with_history:
        records = {f"{r['method']} ({r['dataset']}, seed {r.get('seed')})": r["history"] for r in with_history}
        try:
            paths = _plot(
                "plot_training_curves",
                records,
                figures_dir / "training_curves",
                methods=[str(r["method"]) for r in with_history],
                markers_by=[str(r["dataset"]) for r in with_history],
            )
        except RlptuneError:
            paths = []
        if paths:
            doc.heading("Training curves")
            has_val = any(rec.get("val_acc") is not None for r in with_history for rec in r["history"])
            doc.para(
                _training_curve_note(with_history) + ("" if has_val else " These runs logged no validation accuracy."),
                css="note",
            )
            figure_files += paths
            eligible = [r for r in rows if r.get("history")]
            doc.figure(
                paths,
                "Training loss, accuracy (training solid, validation dashed) and information density "
                f"per epoch of {_shown_runs(with_history, eligible)}; colour: method, marker: dataset",
            )

    json_files = [write_json(out / "comparisons.json", jsonable(comparisons))]
    if analysis:
        json_files.append(write_json(out / "analysis.json", jsonable(analysis)))

    md_path = write_text(out / "report.md", "\n".join(doc.md).rstrip() + "\n")
    html_path = write_text(out / "report.html", doc.html(title))
    return [md_path, html_path, *table_files, *figure_files, *json_files]


def _plot(name: str, *args: Any, **kwargs: Any) -> list[Path]:
    """Import plots lazily: matplotlib is only needed when a report is actually drawn."""

    return getattr(plots, name)(*args, **kwargs)
