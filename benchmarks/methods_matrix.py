"""The methods matrix: every method's base-to-new Base / New / H on a micro suite, mean ± std over seeds.

Reads finished runs (``result.json``) under a results folder, e.g. the one ``rlptune reproduce rlp --backbone
micro-v2`` writes, and prints two markdown tables: the suite average per method (mean over datasets of each seed,
then mean ± std over seeds; trainable parameters) and H per dataset and method. Only runs at the method's own recipe
count (tag == method, i.e. no grid changes); ``--lowrank`` adds each method's RLP-parameterised variant of the study
(its only change: ``prompt.kind lowrank`` with RLP's rank, dropout and init), shown as ``METHOD+lowrank``;
``--tags`` adds other variants by their exact tag.

    python benchmarks/methods_matrix.py RESULTS [--datasets micro2-shapes ...] [--lowrank] [--tags TAG ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from rlptune.report.writer import result_to_row
from rlptune.analysis.stats import harmonic_mean
from rlptune.reproduce.plan import LOWRANK

ORDER = (
    "zeroshot",
    "linear_probe",
    "coop",
    "rlp",
    "cocoop",
    "kgcoop",
    "deep_text",
    "deep_vision",
    "ivlp",
    "maple",
    "promptsrc",
    "clip_lora",
)


def load_rows(results: Path, tags: set[str] | None, lowrank: bool = False) -> list[dict]:
    rows = []
    for path in sorted(results.rglob("result.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        if result.get("protocol") != "base2new":
            continue
        row = result_to_row(result)
        tag = str(row.get("tag") or row["method"])
        if lowrank and tag != row["method"] and result.get("settings") == {"prompt": LOWRANK}:
            tag = f"{row['method']}+lowrank"
        elif tag != row["method"] and (tags is None or tag not in tags):
            continue
        row["group"] = tag
        rows.append(row)
    return rows


def _pm(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def matrix(rows: list[dict], datasets: list[str] | None = None) -> str:
    groups = sorted(
        {r["group"] for r in rows}, key=lambda g: (ORDER.index(g.split("+")[0]) if g.split("+")[0] in ORDER else 99, g)
    )
    datasets = datasets or sorted({r["dataset"] for r in rows})
    lines = ["| method | params | base | new | H | seeds | datasets |", "|---|---:|---:|---:|---:|---:|---:|"]
    per_dataset: dict[tuple[str, str], list[float]] = {}
    for g in groups:
        mine = [r for r in rows if r["group"] == g and r["dataset"] in datasets]
        seeds = sorted({r["seed"] for r in mine})
        base, new, h = [], [], []
        for s in seeds:
            by_ds = {r["dataset"]: r for r in mine if r["seed"] == s}
            if set(by_ds) != set(datasets):
                continue  # a seed counts only when every dataset has it
            b = statistics.fmean(by_ds[d]["base"] for d in datasets)
            base.append(b)
            if all(by_ds[d].get("new") is not None for d in datasets):
                n = statistics.fmean(by_ds[d]["new"] for d in datasets)
                new.append(n)
                h.append(harmonic_mean(b, n))
        for r in mine:
            if r.get("new") is not None:
                per_dataset.setdefault((g, r["dataset"]), []).append(harmonic_mean(r["base"], r["new"]))
        params = sorted({int(r["trainable_params"]) for r in mine if r.get("trainable_params") is not None})
        shown = f"{params[0]:,}" if len(params) == 1 else ("–" if not params else f"{params[0]:,}–{params[-1]:,}")
        lines.append(f"| {g} | {shown} | {_pm(base)} | {_pm(new)} | {_pm(h)} | {len(base)} | {len(datasets)} |")
    lines += [
        "",
        "H per dataset (mean ± std over seeds):",
        "",
        "| method | " + " | ".join(d.replace("micro2-", "") for d in datasets) + " |",
        "|---|" + "---:|" * len(datasets),
    ]
    for g in groups:
        if any((g, d) in per_dataset for d in datasets):
            lines.append(f"| {g} | " + " | ".join(_pm(per_dataset.get((g, d), [])) for d in datasets) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--datasets", nargs="+", default=None)
    parser.add_argument("--lowrank", action="store_true", help="add each method's low-rank (RLP) variant")
    parser.add_argument("--tags", nargs="+", default=None, help="variant tags to include besides the recipes")
    args = parser.parse_args()
    print(matrix(load_rows(args.results, set(args.tags) if args.tags else None, args.lowrank), args.datasets))


if __name__ == "__main__":
    main()
