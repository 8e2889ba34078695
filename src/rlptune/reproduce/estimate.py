"""The full study's wall time on this machine, from the training rates the finished runs measured."""

from __future__ import annotations

import statistics
from typing import Any, Mapping

from .. import recipes
from .merge import EarlierReport
from .plan import planned_groups, without_recipe_values
from .settings import REFERENCE, StudySettings


def estimate_full_seconds(
    results: Mapping[str, dict], settings: StudySettings, measured_elsewhere: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """The full study's wall time on this machine, from the measured seconds per training epoch of these runs
    (``results``: run folder → result; ``measured_elsewhere``: rates these runs do not hold, from an earlier report).
    A rate is kept per method and protocol (``coop@base2new``): a base-to-new epoch trains on half the classes, a
    few-shot epoch on all of them; a protocol not measured for a method falls back to the method's mean over the
    protocols that were."""
    full = StudySettings(
        backbone=settings.backbone, datasets=None if settings.quick else settings.datasets, data_root=settings.data_root
    ).resolved()
    per_epoch: dict[str, list[float]] = {}
    for r in results.values():
        epochs = r.get("epochs") or 0
        if epochs and r.get("train_seconds") is not None:
            rate = float(r["train_seconds"]) / epochs / max(r.get("shots") or 1, 1)
            per_epoch.setdefault(f"{r['method']}@{r.get('protocol')}", []).append(rate)
            per_epoch.setdefault(r["method"], []).append(rate)
    rates = {**(measured_elsewhere or {}), **{m: statistics.fmean(v) for m, v in per_epoch.items()}}
    seen: set = set()
    total = 0.0
    for group in planned_groups(full):
        method = group.variant.method
        changes = without_recipe_values(method, group.variant.changes, full.shots)
        rate = rates.get(f"{method}@{group.protocol}", rates.get(method, 0.0))
        for dataset in group.datasets:
            for shots in group.shots:
                shots = 0 if method == REFERENCE and group.protocol != "few-shot" else shots
                preset = (
                    recipes.preset(method, group.protocol, max(shots, 1), dataset)
                    if method in recipes.recipe_methods()
                    else {}
                )
                epochs = {**preset.get("train", {}), **changes.get("train", {})}.get("epochs") or 0
                for seed in full.seeds:
                    key = (group.protocol, dataset, method, repr(sorted(changes.items())), shots, seed)
                    if key in seen:
                        continue
                    seen.add(key)
                    total += rate * float(epochs) * max(shots, 1) + 2.0  # + ~2 s of evaluation and setup per run
    return {
        "runs": len(seen),
        "seconds": total,
        "rates": rates,
        "basis": "measured train seconds per epoch per shot of each method in this run, times each full run's "
        "official epochs and shots, + 2 s per run; methods not run here (skipped on this backbone) count "
        "only the 2 s, so on a backbone that skips methods this is a lower bound",
    }


def joined_estimate(results: Mapping[str, dict], settings: StudySettings, earlier: EarlierReport) -> dict[str, Any]:
    """The full-study estimate of a report made in pieces, from every piece's measured rates. An earlier report that
    kept no rates (written before they were kept) cannot be joined rate by rate: the larger estimate is shown and the
    basis names both."""
    theirs = earlier.summary.get("full_study_estimate") or {}
    mine = estimate_full_seconds(results, settings, theirs.get("rates"))
    if "rates" not in theirs and theirs.get("seconds") is not None:
        larger = max((mine, theirs), key=lambda e: float(e["seconds"]))
        return {
            **larger,
            "basis": f"{larger.get('basis')}; {earlier.source} kept no rates to join, so the larger of "
            f"two estimates is shown: {float(mine['seconds']) / 3600:.1f} h from this invocation's "
            f"runs, {float(theirs['seconds']) / 3600:.1f} h from that report's",
        }
    return mine
