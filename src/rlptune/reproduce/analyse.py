"""The study's tables and the verdict on each of the paper's claims, decided by the statistics whichever way they
fall (:mod:`rlptune.analysis.stats`: paired t interval and Wilcoxon p, Spearman ρ)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..analysis import stats as S
from ..config import former_prompt
from ..report.writer import headline, result_to_row
from ..protocols import tables_for
from ..rundir import METRICS
from .plan import Plan, StudyResults
from .settings import StudySettings
from .tables import EvidenceTable, cell

#: A stratum decides only with this many runs: below it one tie-free ordering gives p ≈ 0 (scipy's t approximation).
MIN_SPEARMAN_POINTS = 6
SUMMARY_COLUMNS = [
    "variant",
    "runs",
    "base",
    "base_std",
    "new",
    "new_std",
    "h",
    "h_std",
    "params",
    "train_s",
    "id_1",
    "eff_rank",
]
PAIRED_COLUMNS = ["comparison", "metric", "n", "mean_a", "mean_b", "diff", "ci_low", "ci_high", "p"]


def _rows_by_variant(plan: Plan, part: str, results: StudyResults) -> dict[str, list[dict]]:
    """Table rows (rlptune.report.writer.result_to_row) of each variant of a part, from finished runs."""
    return {
        name: [_row(result) for _, result in results.of(specs)] for (p, name), specs in plan.runs.items() if p == part
    }


def _row(result: Mapping[str, Any]) -> dict[str, Any]:
    """A run's table row with its training time (result_to_row leaves it out)."""
    return {**result_to_row(result), "train_seconds": result.get("train_seconds")}


def _summary_row(name: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    mean, std = S.mean_or_none, S.std_or_none
    h = [S.row_metric(r, "h") for r in rows]
    return {
        "variant": name,
        "runs": len(rows),
        "base": mean([r.get("base") for r in rows]),
        "base_std": std([r.get("base") for r in rows]),
        "new": mean([r.get("new") for r in rows]),
        "new_std": std([r.get("new") for r in rows]),
        "h": mean(h),
        "h_std": std(h),
        "params": mean([r.get("trainable_params") for r in rows]),
        "train_s": mean([r.get("train_seconds") for r in rows]),
        "id_1": mean([r.get("id_k") for r in rows]),
        "eff_rank": mean([r.get("effective_rank") for r in rows]),
    }


def _paired_row(label: str, a_rows: Sequence[Mapping], b_rows: Sequence[Mapping], metric: str = "h") -> dict[str, Any]:
    comparison = S.paired_comparison(a_rows, b_rows, key=("dataset", "seed"), metric=metric)
    return {
        "comparison": label,
        "metric": metric,
        "n": comparison.n,
        "mean_a": comparison.mean_a,
        "mean_b": comparison.mean_b,
        "diff": comparison.mean_diff,
        "ci_low": comparison.ci_low,
        "ci_high": comparison.ci_high,
        "p": comparison.p_value,
        "pairs": comparison.pairs,
    }


def verdict(row: Mapping[str, Any], expected_sign: int = 1, alpha: float = 0.05) -> str:
    """supports / contradicts / cannot decide: the 95% interval must exclude 0 and Wilcoxon p < alpha."""
    low, high, p = row.get("ci_low"), row.get("ci_high"), row.get("p")
    if low is None or high is None or p is None or any(isinstance(v, float) and math.isnan(v) for v in (low, high, p)):
        return "cannot decide (too few pairs)"
    if p < alpha and low > 0:
        return "supports" if expected_sign > 0 else "contradicts"
    if p < alpha and high < 0:
        return "contradicts" if expected_sign > 0 else "supports"
    return "cannot decide (interval contains 0 or p ≥ 0.05)"


def analyse(plan: Plan, results: StudyResults, settings: StudySettings) -> tuple[list[EvidenceTable], list[dict], dict]:
    """Every table of the study and the verdict on each of the paper's claims."""
    tables: list[EvidenceTable] = []
    claims: list[dict] = []
    figures: dict[str, list[dict]] = {}
    if "base2new" in plan.variants or any(p == "base2new" for p, _ in plan.skipped):
        by = _rows_by_variant(plan, "base2new", results)
        tables.append(
            EvidenceTable(
                "part1_base2new",
                "Part 1. Base-to-new, every method (official recipes)",
                SUMMARY_COLUMNS,
                [_summary_row(n, r) for n, r in by.items()],
            )
        )
        rlp = by.get("rlp", [])
        paired = [_paired_row(f"rlp − {name}", rlp, rows) for name, rows in by.items() if name != "rlp" and rows]
        paired = [p for p in paired if p["n"]]
        tables.append(
            EvidenceTable(
                "part1_paired",
                "Part 1. Paired RLP − X on H over (dataset, seed): 95% t interval, Wilcoxon p",
                PAIRED_COLUMNS,
                paired,
            )
        )
        coop = next((p for p in paired if p["comparison"] == "rlp − coop"), None)
        if coop:
            claims.append(
                {
                    "claim": "RLP generalises base-to-new better than CoOp (paper: +5.76 H on average)",
                    "evidence": _evidence(coop),
                    "verdict": verdict(coop),
                }
            )
        params = {n: S.mean_or_none([r.get("trainable_params") for r in rows]) for n, rows in by.items()}
        if params.get("rlp") and params.get("coop"):
            ratio = params["coop"] / params["rlp"]
            claims.append(
                {
                    "claim": "RLP tunes far fewer parameters than CoOp (paper: ~0.5K vs thousands)",
                    "evidence": f"rlp {params['rlp']:.0f} vs coop {params['coop']:.0f} trainable parameters ({ratio:.1f}×) on {settings.backbone}",
                    "verdict": "supports" if ratio > 1 else "contradicts",
                }
            )
        figures["base2new"] = [r for rows in by.values() for r in rows]
        _tag(claims, "base2new")
    if "lowrank" in plan.variants:
        by = _rows_by_variant(plan, "lowrank", results)
        rows = []
        for v in plan.variants["lowrank"]:
            m = v.method
            if v.name != m:
                continue  # each method once, at its full-rank variant
            full, low = by.get(m), by.get(f"{m}+lowrank")
            if not full or not low:
                continue
            pair = _paired_row(f"{m}+lowrank − {m}", low, full)
            full_p = S.mean_or_none([r.get("trainable_params") for r in full])
            low_p = S.mean_or_none([r.get("trainable_params") for r in low])
            rows.append(
                {
                    **pair,
                    "method": m,
                    "params_full": full_p,
                    "params_lowrank": low_p,
                    "delta_params": None if full_p is None or low_p is None else low_p - full_p,
                }
            )
        tables.append(
            EvidenceTable(
                "part2_lowrank",
                "Part 2. RLP on every prompt method: low-rank − full-rank at the method's recipe (ΔH, Δparams)",
                [
                    "method",
                    "n",
                    "mean_b",
                    "mean_a",
                    "diff",
                    "ci_low",
                    "ci_high",
                    "p",
                    "params_full",
                    "params_lowrank",
                    "delta_params",
                ],
                rows,
                "mean_b = full-rank H, mean_a = low-rank H, diff = ΔH (low − full), paired over (dataset, seed).",
            )
        )
        for row in rows:
            claims.append(
                {
                    "claim": f"a low-rank prompt (RLP's parameterisation) raises {row['method']}'s H",
                    "evidence": _evidence(row),
                    "verdict": verdict(row),
                }
            )
        _tag(claims, "lowrank")
    if "rank" in plan.variants:
        by = _rows_by_variant(plan, "rank", results)
        tables.append(
            EvidenceTable(
                "part3_rank",
                "Part 3. Rank sweep (n = 4 context tokens; α/r rows scale the update by 1/r)",
                SUMMARY_COLUMNS,
                [_summary_row(n, r) for n, r in by.items()],
            )
        )
        points = [
            (former_prompt((r.get("settings") or {}).get("prompt") or {})["rank"], r)
            for n, rows in by.items()
            if "α" not in n
            for r in rows
        ]
        rho = S.spearman([float(k) for k, _ in points], [r.get("new") for _, r in points])
        claims.append(
            {
                "claim": "lower rank goes with better new-class accuracy (paper: r = 1 best among 1-3)",
                "evidence": f"Spearman ρ(rank, new) = {cell(rho.rho)}, p = {cell(rho.p)}, n = {rho.n} (no α/r scale, all datasets and seeds)",
                "verdict": _rho_verdict(rho, -1),
            }
        )
        _tag(claims, "rank")
    if "ablation" in plan.variants:
        by = _rows_by_variant(plan, "ablation", results)
        tables.append(
            EvidenceTable(
                "part4_ablation",
                "Part 4. Dropout sweep and initialisation ablation (RLP)",
                SUMMARY_COLUMNS,
                [_summary_row(n, r) for n, r in by.items()],
            )
        )
        default = by.get("rlp p=0.1", [])
        paired = [
            _paired_row(f"rlp − {name}", default, rows) for name, rows in by.items() if name != "rlp p=0.1" and rows
        ]
        tables.append(
            EvidenceTable(
                "part4_paired",
                "Part 4. Paired RLP (recipe: p = 0.1, P_fr, LoRA init, SGD) − variant on H",
                PAIRED_COLUMNS,
                paired,
            )
        )
        for label, claim in (
            ("rlp − rlp without P_fr (P_fr = 0)", "the frozen full-rank branch P_fr matters"),
            ("rlp − rlp p=0.0", "dropout on the low-rank branch helps"),
        ):
            row = next((p for p in paired if p["comparison"] == label), None)
            if row:
                claims.append({"claim": claim, "evidence": _evidence(row), "verdict": verdict(row)})
        _tag(claims, "ablation")
    if "transfer" in plan.variants:
        tables.extend(_transfer_tables(plan, results, figures))
    if "density" in settings.parts:
        table, density_claims, points = _density(plan, results)
        tables.append(table)
        claims.extend(density_claims)
        figures["density"] = points
        table, epoch_claims = _density_across_epochs(plan, results)
        tables.append(table)
        claims.extend(epoch_claims)
        _tag(claims, "density")
    return tables, claims, figures


def _tag(claims: list[dict], part: str) -> None:
    """Name the part of the claims just added (a merged report takes claims part by part)."""
    for claim in claims:
        claim.setdefault("part", part)


def _evidence(row: Mapping[str, Any]) -> str:
    return (
        f"Δ = {cell(row.get('diff'))} [{cell(row.get('ci_low'))}, {cell(row.get('ci_high'))}] 95% CI, "
        f"Wilcoxon p = {cell(row.get('p'))}, n = {row.get('n')} pairs"
    )


def _rho_verdict(rho: S.SpearmanResult, expected_sign: int) -> str:
    if rho.n < 3 or math.isnan(rho.rho):
        return "cannot decide (fewer than 3 points or a constant)"
    if rho.p < 0.05:
        return "supports" if rho.rho * expected_sign > 0 else "contradicts"
    return "cannot decide (p ≥ 0.05)"


def _base2new_runs(plan: Plan, results: StudyResults) -> dict[str, dict]:
    """Each finished base-to-new run of the plan once (parts share runs): run folder → result."""
    seen: dict[str, dict] = {}
    for specs in plan.runs.values():
        for key, result in results.of([s for s in specs if s.protocol == "base2new"]):
            seen.setdefault(key, result)
    return seen


def _density(plan: Plan, results: StudyResults) -> tuple[EvidenceTable, list[dict], list[dict]]:
    """Spearman ρ of ID_1 / effective rank vs new-class accuracy within (method, dataset), over every base-to-new
    run that has a learned prompt (settings and seeds vary within a stratum)."""
    seen = {key: result_to_row(result) for key, result in _base2new_runs(plan, results).items()}
    points = [r for r in seen.values() if r.get("id_k") is not None and r.get("new") is not None]
    strata: dict[tuple[str, str], list[dict]] = {}
    for r in points:
        strata.setdefault((r["method"], r["dataset"]), []).append(r)
    rows = []
    for (method, dataset), members in sorted(strata.items()):
        for measure in ("id_k", "effective_rank"):
            rho = S.spearman([r.get(measure) for r in members], [r.get("new") for r in members])
            rows.append(
                {
                    "method": method,
                    "dataset": dataset,
                    "measure": "ID_1" if measure == "id_k" else "effective rank",
                    "rho": rho.rho,
                    "p": rho.p,
                    "n": rho.n,
                }
            )
    claims = []
    for measure, sign, text in (
        ("ID_1", 1, "higher information density goes with better new-class accuracy"),
        ("effective rank", -1, "lower effective rank goes with better new-class accuracy"),
    ):
        decided = [
            r
            for r in rows
            if r["measure"] == measure
            and r["n"] >= MIN_SPEARMAN_POINTS
            and r["p"] is not None
            and not math.isnan(r["p"])
            and r["p"] < 0.05
        ]
        agree = sum(1 for r in decided if r["rho"] * sign > 0)
        total = sum(1 for r in rows if r["measure"] == measure)
        v = (
            "cannot decide (no stratum with p < 0.05)"
            if not decided
            else "supports"
            if agree == len(decided)
            else "contradicts"
            if agree == 0
            else "mixed (strata disagree)"
        )
        claims.append(
            {
                "claim": text,
                "evidence": f"{len(decided)} of {total} (method, dataset) strata have n ≥ "
                f"{MIN_SPEARMAN_POINTS} and p < 0.05; "
                f"{agree} of them with the expected sign",
                "verdict": v,
            }
        )
    table = EvidenceTable(
        "part6_density",
        "Part 6. Information density vs new-class accuracy, within method and dataset (Spearman)",
        ["method", "dataset", "measure", "rho", "p", "n"],
        rows,
        "Points: every base-to-new run of the method on the dataset (its rank, dropout, init variants and seeds).",
    )
    return table, claims, points


def epoch_series(run_dir: Path) -> tuple[list[float], list[float], list[float]]:
    """(ID_1, effective rank, new-class accuracy) of the first prompt at each epoch of a run that logged both its
    prompt diagnostics and ``new_acc`` (``train.track_new``); empty lists otherwise."""
    path = Path(run_dir) / METRICS
    ids, ranks, new = [], [], []
    if not path.is_file():
        return ids, ranks, new
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line) if line.strip() else {}
        head = headline(record.get("diagnostics") or {}) if record.get("new_acc") is not None else {}
        if head.get("id_k") is not None and head.get("effective_rank") is not None:
            ids.append(float(head["id_k"]))
            ranks.append(float(head["effective_rank"]))
            new.append(float(record["new_acc"]))
    return ids, ranks, new


def _density_across_epochs(plan: Plan, results: StudyResults) -> tuple[EvidenceTable, list[dict]]:
    """Within one run: Spearman ρ over its epochs of ID_1 / effective rank vs the new-class accuracy logged per
    epoch; summarised per (method, dataset) as the median ρ and how many runs are significant either way."""
    per_run: dict[tuple[str, str], list[tuple[str, S.SpearmanResult]]] = {}
    for key, result in _base2new_runs(plan, results).items():
        ids, ranks, new = epoch_series(Path(key))
        if len(new) < 3:
            continue
        row = result_to_row(result)
        per_run.setdefault((row["method"], row["dataset"]), []).extend(
            [("ID_1", S.spearman(ids, new)), ("effective rank", S.spearman(ranks, new))]
        )
    rows = []
    for (method, dataset), items in sorted(per_run.items()):
        for measure in ("ID_1", "effective rank"):
            rhos = [r for m, r in items if m == measure and not math.isnan(r.rho)]
            sig = [r for r in rhos if r.p is not None and not math.isnan(r.p) and r.p < 0.05]
            rows.append(
                {
                    "method": method,
                    "dataset": dataset,
                    "measure": measure,
                    "runs": len(rhos),
                    "median_rho": statistics.median([r.rho for r in rhos]) if rhos else None,
                    "positive": sum(1 for r in sig if r.rho > 0),
                    "negative": sum(1 for r in sig if r.rho < 0),
                    "epochs": statistics.median([r.n for r in rhos]) if rhos else None,
                }
            )
    claims = []
    for measure, sign, text in (
        ("ID_1", 1, "within a run, epochs of higher information density have better new-class accuracy"),
        ("effective rank", -1, "within a run, epochs of lower effective rank have better new-class accuracy"),
    ):
        mine = [r for r in rows if r["measure"] == measure and r["median_rho"] is not None]
        agree = sum(
            1
            for r in mine
            if r["median_rho"] * sign > 0 and (r["positive"] if sign > 0 else r["negative"]) > r["runs"] / 2
        )
        against = sum(
            1
            for r in mine
            if r["median_rho"] * sign < 0 and (r["negative"] if sign > 0 else r["positive"]) > r["runs"] / 2
        )
        v = (
            "cannot decide (no run logged new-class accuracy per epoch)"
            if not mine
            else "supports"
            if agree and not against and agree > len(mine) / 2
            else "contradicts"
            if against and not agree and against > len(mine) / 2
            else "mixed (strata disagree or most are undecided)"
        )
        claims.append(
            {
                "claim": text,
                "evidence": f"{agree} of {len(mine)} (method, dataset) strata have a median ρ of the "
                f"expected sign with most runs significant that way, {against} the opposite",
                "verdict": v,
            }
        )
    table = EvidenceTable(
        "part6_density_epochs",
        "Part 6b. Information density vs new-class accuracy across the epochs of each run (Spearman per run)",
        ["method", "dataset", "measure", "runs", "epochs", "median_rho", "positive", "negative"],
        rows,
        "positive / negative: runs whose ρ over their epochs has p < 0.05 with that sign. Successive "
        "epochs are not independent, so a per-run p overstates the evidence; read the counts across "
        "runs and seeds, not a single p.",
    )
    return table, claims


def _transfer_tables(plan: Plan, results: StudyResults, figures: dict) -> list[EvidenceTable]:
    out = []
    for protocol, name, title in (
        ("few-shot", "part5_few_shot", "Part 5a. Few-shot accuracy"),
        ("cross-dataset", "part5_cross_dataset", "Part 5b. Cross-dataset transfer from one source"),
        ("domain-gen", "part5_domain_gen", "Part 5c. Domain generalisation to shifted renderings"),
    ):
        rows = [
            result_to_row(result)
            for (p, _), specs in plan.runs.items()
            if p == protocol
            for _, result in results.of(specs)
        ]
        if not rows:
            continue
        figures[protocol] = rows
        table = tables_for(rows, protocol)
        out.append(_from_literature_table(name, title, table))
    return out


def _from_literature_table(name: str, title: str, table: Any) -> EvidenceTable:
    """A rlptune.report.tables.Table as an EvidenceTable (mean ± std cells)."""
    columns = [*table.label_columns, *table.value_columns]
    rows = []
    for row in table.rows:
        cells = {c: row.labels.get(c) for c in table.label_columns}
        for c in table.value_columns:
            value = row.cells.get(c)
            cells[c] = None if value is None else value.value
        rows.append(cells)
    return EvidenceTable(
        name, title, columns, rows, "Cells: mean over seeds (per-seed values in the runs' result.json)."
    )
