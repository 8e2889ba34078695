"""Part 7's tables and verdicts: ``--auto`` vs RLP's official recipe vs zero-shot, paired by (dataset, seed, shots)
with the study's verdict rule (:func:`rlptune.reproduce.analyse.verdict`: 95% t interval and Wilcoxon p); test
accuracies with 95% intervals; the ranks ``--auto`` chose and how often the spectrum rule agrees with validation.

Metric: test top-1 accuracy for few-shot and custom-folder runs, H for base-to-new runs. Intervals: a 95% Wilson
interval on the test images pooled over the seeds (accuracy), and a 95% t interval over the seeds' values.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ..analysis import stats as S
from ..config import former_prompt
from ..report.writer import result_to_row
from ..engine.auto import wilson_interval
from .analyse import verdict
from .auto_runs import ARMS, PART, block_name, dataset_label, split_key
from .plan import Plan, StudyResults
from .settings import StudySettings
from .tables import EvidenceTable, cell

PAIRS = (("--auto", "official recipe"), ("--auto", "zero-shot"), ("official recipe", "zero-shot"))
ACCURACY_COLUMNS = [
    "block",
    "dataset",
    "shots",
    "arm",
    "runs",
    "metric",
    "mean",
    "t_low",
    "t_high",
    "wilson_low",
    "wilson_high",
]
PAIRED_COLUMNS = ["block", "comparison", "metric", "n", "mean_a", "mean_b", "diff", "ci_low", "ci_high", "p"]
RANK_COLUMNS = [
    "block",
    "dataset",
    "shots",
    "runs",
    "kept_candidate",
    "ranks_chosen",
    "spectrum_ranks",
    "agree",
    "validation",
]


def _metric(block: str) -> str:
    return "h" if block == block_name("base2new") else "accuracy"


def part_rows(plan: Plan, results: StudyResults, settings: StudySettings) -> dict[str, dict[str, list[dict]]]:
    """block → arm → the table rows of its finished runs (``dataset``: the run's dataset, a custom folder by name;
    ``shots``: the study's shots for every base-to-new run, zero-shot's included, so that the arms pair)."""
    out: dict[str, dict[str, list[dict]]] = {}
    for (part, name), specs in plan.runs.items():
        if part != PART:
            continue
        block, arm = split_key(name)
        rows = out.setdefault(block, {}).setdefault(arm, [])
        for spec in specs:
            key = results.key(spec)
            if key not in results.runs:
                continue
            result = results.runs[key]
            row = {
                **result_to_row(result),
                "dataset": dataset_label(spec),
                "shots": spec.shots if spec.protocol == "few-shot" else settings.shots,
                "seed": spec.seed,
                "auto": result.get("auto"),
                "test_n": ((result.get("metrics") or {}).get("test") or {}).get("n"),
            }
            rows.append(row)
    return out


def _stratum_order(stratum: tuple[Any, Any]) -> tuple[str, int]:
    """(dataset, shots) by dataset name, then by the number of shots (1, 4, 16: not as text)."""
    return str(stratum[0]), int(stratum[1] or 0)


def _t_interval(values: Sequence[float]) -> tuple[float | None, float | None]:
    if len(values) < 2:
        return None, None
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    from scipy import stats as scipy_stats  # the study's statistics already need scipy (Wilcoxon)

    half = float(scipy_stats.t.ppf(0.975, len(values) - 1)) * sd / math.sqrt(len(values))
    return mean - half, mean + half


def _accuracy_rows(by: Mapping[str, Mapping[str, list[dict]]]) -> list[dict[str, Any]]:
    out = []
    for block, arms in by.items():
        metric = _metric(block)
        strata = sorted({(r["dataset"], r["shots"]) for rows in arms.values() for r in rows}, key=_stratum_order)
        for dataset, shots in strata:
            for arm, _, _ in ARMS:
                rows = [r for r in arms.get(arm, []) if r["dataset"] == dataset and r["shots"] == shots]
                values = [float(v) for v in (S.row_metric(r, metric) for r in rows) if v is not None]
                if not values:
                    continue
                low, high = _t_interval(values)
                row = {
                    "block": block,
                    "dataset": dataset,
                    "shots": shots,
                    "arm": arm,
                    "runs": len(values),
                    "metric": metric,
                    "mean": sum(values) / len(values),
                    "t_low": low,
                    "t_high": high,
                    "wilson_low": None,
                    "wilson_high": None,
                }
                counted = [
                    (r["accuracy"], r["test_n"]) for r in rows if r.get("test_n") and r.get("accuracy") is not None
                ]
                if metric == "accuracy" and counted:
                    correct = sum(round(a * n / 100) for a, n in counted)
                    row["wilson_low"], row["wilson_high"] = wilson_interval(correct, sum(n for _, n in counted))
                out.append(row)
    return out


def _paired(
    label: str, a_rows: Sequence[Mapping], b_rows: Sequence[Mapping], metric: str, block: str
) -> dict[str, Any]:
    c = S.paired_comparison(a_rows, b_rows, key=("dataset", "seed", "shots"), metric=metric)
    return {
        "block": block,
        "comparison": label,
        "metric": metric,
        "n": c.n,
        "mean_a": c.mean_a,
        "mean_b": c.mean_b,
        "diff": c.mean_diff,
        "ci_low": c.ci_low,
        "ci_high": c.ci_high,
        "p": c.p_value,
        "pairs": c.pairs,
    }


def _paired_rows(by: Mapping[str, Mapping[str, list[dict]]]) -> list[dict[str, Any]]:
    """Per block (few-shot per shot count too), and all custom folders together."""
    groups: list[tuple[str, str, Mapping[str, list[dict]]]] = []
    for block, arms in by.items():
        groups.append((block, _metric(block), arms))
        if block == block_name("few-shot"):
            for k in sorted({r["shots"] for rows in arms.values() for r in rows}):
                groups.append(
                    (
                        f"few-shot {k} shots",
                        "accuracy",
                        {a: [r for r in rows if r["shots"] == k] for a, rows in arms.items()},
                    )
                )
    folders = [arms for block, arms in by.items() if block.startswith("folder ")]
    if len(folders) > 1:
        groups.append(
            (
                "all custom folders",
                "accuracy",
                {arm: [r for arms in folders for r in arms.get(arm, [])] for arm, _, _ in ARMS},
            )
        )
    out = []
    for block, metric, arms in groups:
        for a, b in PAIRS:
            if arms.get(a) and arms.get(b):
                row = _paired(f"{a} − {b}", arms[a], arms[b], metric, block)
                if row["n"]:
                    out.append(row)
    return out


def _rank_rows(by: Mapping[str, Mapping[str, list[dict]]]) -> list[dict[str, Any]]:
    """Per (block, dataset, shots): what ``--auto`` kept, the rank of its best candidate on validation (what it
    kept, or what it would have kept had it beaten zero-shot: ``zs`` marks a run that returned the zero-shot
    prompt), the spectrum rule's rank, and in how many runs the two ranks agree."""
    out = []
    for block, arms in by.items():
        rows = [r for r in arms.get("--auto", []) if isinstance(r.get("auto"), dict)]
        for dataset, shots in sorted({(r["dataset"], r["shots"]) for r in rows}, key=_stratum_order):
            mine = sorted((r for r in rows if r["dataset"] == dataset and r["shots"] == shots), key=lambda r: r["seed"])
            chosen, spectrum, agree, compared = [], [], 0, 0
            for r in mine:
                record = r["auto"]
                best = _best_rank(record)
                chosen.append(f"{best}" + ("" if record.get("decision") == "candidate" else " (zs)"))
                rank = (record.get("spectrum") or {}).get("rank")
                spectrum.append("–" if rank is None else str(rank))
                if rank is not None and best is not None:
                    compared += 1
                    agree += int(rank == best)
            out.append(
                {
                    "block": block,
                    "dataset": dataset,
                    "shots": shots,
                    "runs": len(mine),
                    "kept_candidate": sum(1 for r in mine if r["auto"].get("decision") == "candidate"),
                    "ranks_chosen": ", ".join(chosen),
                    "spectrum_ranks": ", ".join(spectrum),
                    "agree": f"{agree}/{compared}",
                    "agree_n": agree,
                    "compared_n": compared,
                    "validation": "k-fold" if (mine[0]["auto"].get("folds") or 1) > 1 else "val split",
                }
            )
    return out


def _best_rank(record: Mapping[str, Any]) -> int | None:
    best = record.get("best_candidate") or {}
    rank = former_prompt((best.get("settings") or {}).get("prompt") or {})["rank"]
    return int(rank) if isinstance(rank, (int, float)) else None


def agreement(rank_rows: Sequence[Mapping[str, Any]], ranks: int = 3) -> dict[str, Any]:
    """The spectrum rule's agreement with validation selection over every ``--auto`` run, with a 95% Wilson
    interval; "supports" only when that interval lies above chance (1 / the number of ranks tried)."""
    agree = sum(int(r["agree_n"]) for r in rank_rows)
    n = sum(int(r["compared_n"]) for r in rank_rows)
    low, high = wilson_interval(agree, n) if n else (None, None)
    chance = 100.0 / ranks
    if not n:
        v = "cannot decide (no --auto run recorded both ranks)"
    elif low is not None and low > chance:
        v = "supports"
    elif high is not None and high < chance:
        v = "contradicts"
    else:
        v = f"cannot decide (95% interval contains chance, {chance:.0f}%)"
    return {
        "agree": agree,
        "n": n,
        "rate": 100.0 * agree / n if n else None,
        "low": low,
        "high": high,
        "chance": chance,
        "verdict": v,
    }


def auto_analysis(plan: Plan, results: StudyResults, settings: StudySettings) -> tuple[list[EvidenceTable], list[dict]]:
    """Part 7's tables and claims (each claim tagged ``part: auto``)."""
    by = part_rows(plan, results, settings)
    accuracy = _accuracy_rows(by)
    paired = _paired_rows(by)
    ranks = _rank_rows(by)
    tables = [
        EvidenceTable(
            "part7_auto_accuracy",
            "Part 7. --auto vs RLP's official recipe vs zero-shot: test accuracy (H for base-to-new)",
            ACCURACY_COLUMNS,
            accuracy,
            "mean over seeds; t_low/t_high: 95% t interval over the seeds; wilson_low/wilson_high: 95% Wilson "
            "interval on the test images of all seeds pooled (accuracy only).",
        ),
        EvidenceTable(
            "part7_auto_paired",
            "Part 7. Paired differences over (dataset, seed, shots): 95% t interval, Wilcoxon p",
            PAIRED_COLUMNS,
            paired,
        ),
        EvidenceTable(
            "part7_auto_ranks",
            "Part 7. What --auto chose, and the spectrum rule's rank beside validation's",
            RANK_COLUMNS,
            ranks,
            "ranks_chosen: the rank of the best candidate on validation per seed; (zs): the guard returned the "
            "zero-shot prompt instead. spectrum_ranks: the smallest rank holding 90% of a short full-rank "
            "run's update energy. agree: runs where the two ranks are equal.",
        ),
    ]
    claims = []
    for row in paired:
        if row["comparison"] in ("--auto − official recipe", "--auto − zero-shot") and not row["block"].startswith(
            "few-shot "
        ):
            claims.append(
                {
                    "claim": f"{row['comparison'].replace(' − ', ' beats ')} ({row['block']}, "
                    f"{'H' if row['metric'] == 'h' else 'test accuracy'})",
                    "evidence": (
                        f"Δ = {cell(row['diff'])} [{cell(row['ci_low'])}, {cell(row['ci_high'])}] 95% CI, "
                        f"Wilcoxon p = {cell(row['p'])}, n = {row['n']} pairs"
                    ),
                    "verdict": verdict(row),
                    "part": PART,
                }
            )
    agreed = agreement(ranks)
    claims.append(
        {
            "claim": "the spectrum rule (90% of the update's energy) picks the rank validation picks",
            "evidence": (
                f"{agreed['agree']} of {agreed['n']} --auto runs agree"
                + (
                    f" ({cell(agreed['rate'])}%, 95% Wilson [{cell(agreed['low'])}, {cell(agreed['high'])}];"
                    f" chance {agreed['chance']:.0f}%)"
                    if agreed["n"]
                    else ""
                )
            ),
            "verdict": agreed["verdict"],
            "part": PART,
        }
    )
    return tables, claims


def auto_markdown(settings: StudySettings, folders: Sequence[Any]) -> list[str]:
    """The lines of EVIDENCE.md that say what part 7 ran (its tables follow with the others)."""
    shots = "4" if settings.quick else "1, 4, 16"
    made = "; ".join(f"`{f.name}` ({f.classes} classes × {f.per_class} images)" for f in folders) or "none (no suite)"
    return [
        "## Part 7: `--auto` vs the official recipe vs zero-shot",
        "",
        "Three arms, paired by (dataset, seed, shots): zero-shot, RLP's official recipe, RLP `--auto` "
        "(`auto.rank_rule=both`: the default grid r ∈ {1, 2, 4} × crop scale ∈ {0.08, 0.5} × dropout ∈ {0.1, 0.3}, "
        "kept only past the guard, with the spectrum rule's rank recorded beside validation's; docs/AUTO.md). "
        f"Runs: few-shot with {shots} shots and base-to-new on {', '.join(settings.sweep_datasets or settings.datasets or [])}; "
        f"custom folders made by the study from the suite's rendered images and loaded by the image-folder loader "
        f"(its 50/20/30 split): {made}. Verdicts use the rule above (95% t interval excludes 0 and Wilcoxon p < 0.05).",
        "",
    ]
