"""``rlptune reproduce rlp``: the RLP paper's experiments (arXiv 2312.10813) as one resumable command.

Six parts, each a set of protocol runs executed through :func:`rlptune.protocols.run_sweep` (finished runs are
skipped, interrupted ones resume) and analysed with :mod:`rlptune.analysis`:

1. ``base2new``  — every method with its official recipe; paired RLP − X (H) with a 95% t interval and Wilcoxon p.
2. ``lowrank``   — each prompt method full-rank vs ``prompt.kind=lowrank`` (RLP's r, dropout, init) at its own recipe.
3. ``rank``      — RLP with r ∈ {1, 2, 3, 4, 8, n}, with and without the α/r scale (α = 1).
4. ``ablation``  — dropout p ∈ {0, 0.1, 0.2, 0.3, 0.5}; no frozen branch (P_fr = 0: ``prompt.ctx_init`` unset);
   small-Gaussian factors; AdamW instead of SGD.
5. ``transfer``  — few-shot curves, cross-dataset transfer from one source, domain generalisation on shifted sets.
6. ``density``   — ID_1 and effective rank of each learned prompt vs its new-class accuracy (Spearman), per
   (method, dataset) across runs, and across the epochs of each run (every base-to-new run of the study logs its
   new-class accuracy per epoch with ``train.track_new``); pure analysis of the runs above.

``--sweep-datasets`` runs parts 3-5 (the RLP-only sweeps and the transfer protocols) on a subset of the datasets, and
``--exclude`` leaves methods out (the report lists both): the full study on 2 CPU cores is many hours.

Methods the backbone cannot run (prompts inside a ViT image tower on the ResNet ``micro``, prompt depths beyond its
text tower) are found before anything runs by building each method once on the backbone; they are skipped and the
report says why. The verdict on each of the paper's claims is decided by the statistics, whichever way they fall.
"""

from __future__ import annotations

import csv
import json
import importlib
import io as _stdio
import math
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .. import __version__, io, recipes
from ..analysis import plots
from ..analysis import stats as S
from ..analysis import tables as T
from ..analysis.report import _headline, result_to_row
from ..errors import RlptuneError
from ..methods import get_method_class
from . import tables_for
from .executors import ExecutorSettings
from ..rundir import METRICS, RESULT, check_output_folder, read_result
from .runner import _BACKBONES, make_specs, run_sweep, spec_settings_hash

#: The dataset suite (module, datasets attribute, shifts attribute) a micro backbone comes with.
SUITES: dict[str, tuple[str, str, str]] = {
    "micro": ("rlptune.micro.suite", "MICRO_DATASETS", "MICRO_SHIFTS"),
    "micro-v2": ("rlptune.micro.v2.suite", "MICRO2_DATASETS", "MICRO2_SHIFTS"),
}
ALL_METHODS = ("zeroshot", "linear_probe", "coop", "cocoop", "kgcoop", "deep_text", "deep_vision", "ivlp", "maple", "promptsrc",
               "clip_lora", "rlp")
PROMPT_METHODS = ("coop", "cocoop", "kgcoop", "ivlp", "maple", "promptsrc")
#: RLP's own prompt settings, applied to another method's prompt for the low-rank variant (part 2).
LOWRANK = {"kind": "lowrank", "rank": 1, "dropout": 0.1, "a_std": 1.0, "b_std": 0.0}
RANKS = (1, 2, 3, 4, 8)
#: The parts that ``--sweep-datasets`` restricts (parts 1-2 always cover every dataset).
SWEEP_PARTS = ("rank", "ablation", "transfer")
DROPOUTS = (0.0, 0.1, 0.2, 0.3, 0.5)
PARTS = ("base2new", "lowrank", "rank", "ablation", "transfer", "density")
#: A stratum decides only with this many runs: below it one tie-free ordering gives p ≈ 0 (scipy's t approximation).
MIN_SPEARMAN_POINTS = 6
SMALL_GAUSSIAN = 0.02  # both factors N(0, 0.02²): the "two small Gaussians" init the default is compared with


@dataclass
class StudySettings:
    """What the study runs on and how much of it; ``quick`` shrinks every axis for CI."""

    backbone: str = "micro-v2"  # the micro CLIP on which every method runs (v1 "micro" skips the ViT methods)
    datasets: list[str] | None = None
    data_root: str | None = None
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    shots: int = 16
    epochs: int | None = None  # None: every method's official epochs
    parts: list[str] = field(default_factory=lambda: list(PARTS))
    quick: bool = False
    sweep_datasets: list[str] | None = None  # parts 3-5 on these (default: ``datasets``)
    exclude: list[str] = field(default_factory=list)  # methods left out (reported as skipped, with this reason)

    def resolved(self) -> "StudySettings":
        """Fill the suite's datasets and apply ``quick``; check the parts."""
        unknown = [p for p in self.parts if p not in PARTS]
        if unknown:
            raise RlptuneError(f"reproduce --parts: unknown part {unknown[0]!r}; expected some of {', '.join(PARTS)}")
        datasets = list(self.datasets or suite(self.backbone)[0])
        unknown = [m for m in self.exclude if m not in ALL_METHODS]
        if unknown:
            raise RlptuneError(f"reproduce --exclude: {unknown[0]!r} is not one of the study's methods ({', '.join(ALL_METHODS)})")
        strays = [d for d in (self.sweep_datasets or []) if d not in datasets]
        if strays:
            raise RlptuneError(f"reproduce --sweep-datasets: {strays[0]!r} is not among the study's datasets ({', '.join(datasets)})")
        out = StudySettings(self.backbone, datasets, self.data_root, list(self.seeds), self.shots, self.epochs,
                            list(self.parts), self.quick, list(self.sweep_datasets or datasets), list(self.exclude))
        if self.quick:
            out.datasets = datasets[:2]
            out.sweep_datasets = [d for d in out.sweep_datasets if d in out.datasets] or out.datasets
            out.seeds = list(self.seeds)[:2] if len(self.seeds) >= 2 else list(self.seeds)
            out.shots = min(self.shots, 4)
            out.epochs = self.epochs or 4
        return out

    def train_overrides(self, protocol: str = "few-shot") -> dict[str, Any]:
        """Departures from the recipes: fewer epochs when asked, and on the v1 micro world a milder crop (its count
        and position classes are cut away by CoOp's 0.08 minimum area; the same departure as ``rlptune demo``).
        Base-to-new runs also score their new classes per epoch (``track_new``: logged, never used to choose)."""
        train: dict[str, Any] = {"track_new": True} if protocol == "base2new" else {}
        if self.epochs is not None:  # --epochs / --quick bound every method, CLIP-LoRA's iteration count included
            train["epochs"] = self.epochs
            train["iterations"] = 0
        if self.backbone == "micro":
            train["crop_scale"] = 0.5
        return train


def suite(backbone: str) -> tuple[list[str], dict[str, list[str]]]:
    """The datasets and shifted variants that come with a micro backbone; other backbones need --datasets."""
    if backbone not in SUITES:
        raise RlptuneError(f"reproduce --backbone {backbone}: no default datasets for this backbone; pass --datasets "
                           f"(and --data-root)")
    module, datasets, shifts = SUITES[backbone]
    try:
        loaded = importlib.import_module(module)
    except ImportError:
        raise RlptuneError(f"reproduce --backbone {backbone}: its dataset suite ({module}) is not installed; pass --datasets")
    return list(getattr(loaded, datasets)), dict(getattr(loaded, shifts))


# ----------------------------------------------------------------------------------------------------------------
# which runs each part needs


@dataclass
class Variant:
    """One row of a part's tables: a method with settings changed from its recipe (the changes are the grid)."""

    name: str
    method: str
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)


def _without_recipe_values(method: str, changes: Mapping[str, Mapping[str, Any]], shots: int) -> dict[str, dict[str, Any]]:
    """Drop changes equal to the recipe's value, so the same settings share one run folder across parts."""
    preset = recipes.preset(method, "base2new", shots) if method in recipes.recipe_methods() else {}
    out: dict[str, dict[str, Any]] = {}
    for section, values in changes.items():
        kept = {k: v for k, v in values.items() if k not in preset.get(section, {}) or preset[section][k] != v}
        if kept:
            out[section] = kept
    return out


def part_variants(part: str, settings: StudySettings) -> list[Variant]:
    """The base-to-new variants of parts 1-4 (part 5 has its own protocols)."""
    quick = settings.quick
    if part == "base2new":
        return [Variant(m, m) for m in ALL_METHODS]
    if part == "lowrank":
        methods = PROMPT_METHODS if not quick else ("coop", "kgcoop")
        return [v for m in methods for v in (Variant(m, m), Variant(f"{m}+lowrank", m, {"prompt": dict(LOWRANK)}))]
    if part == "rank":
        ranks = RANKS if not quick else (1, 2, 4)
        out = []
        for alpha in (None, 1.0):
            for r in ranks:
                suffix = "" if alpha is None else ", α/r"
                out.append(Variant(f"rlp r={r}{' (=n)' if r == 4 else ''}{suffix}", "rlp", {"prompt": {"rank": r, "alpha": alpha}}))
        return out
    if part == "ablation":
        dropouts = DROPOUTS if not quick else (0.0, 0.1, 0.5)
        out = [Variant(f"rlp p={p}", "rlp", {"prompt": {"dropout": p}}) for p in dropouts]
        out += [
            Variant("rlp without P_fr (P_fr = 0)", "rlp", {"prompt": {"ctx_init": None}}),
            Variant("rlp small-Gaussian A, B", "rlp", {"prompt": {"a_std": SMALL_GAUSSIAN, "b_std": SMALL_GAUSSIAN}}),
            Variant("rlp AdamW", "rlp", {"train": {"optimizer": "adamw"}}),
        ]
        return out
    return []


def _specs(protocol: str, datasets: Sequence[str], variant: Variant, settings: StudySettings, shots: Sequence[int],
           targets: dict[str, list[str]] | None = None) -> list:
    changes = _without_recipe_values(variant.method, variant.changes, settings.shots)
    train = settings.train_overrides(protocol)
    specs = make_specs(
        protocol, datasets, [variant.method], settings.seeds, shots, backbone=settings.backbone,
        data_root=settings.data_root, grid=[changes], targets=targets, base_overrides={"backbone": {"precision": "fp32"}, **({"train": train} if train else {})},
    )
    return specs


@dataclass
class Plan:
    """Every run of the study, by part and variant, and the variants skipped with their reason."""

    runs: dict[tuple[str, str], list] = field(default_factory=dict)  # (part, variant name) -> specs
    variants: dict[str, list[Variant]] = field(default_factory=dict)
    skipped: dict[tuple[str, str], str] = field(default_factory=dict)  # (part, variant name) -> reason

    def all_specs(self) -> list:
        """Each run once (parts share runs whose settings are equal), ordered seed by seed, dataset by dataset within
        each part, every variant of a (dataset, seed) together: a study cut short (``--report-only``) then holds
        complete paired comparisons for the seeds it reached, not one method's runs without the other's."""
        seen, out = set(), []
        for part_index, specs in enumerate(self.runs.values()):
            for spec in specs:
                key = (spec.protocol, spec.dataset, spec.tag(), spec.shots, spec.seed, _hash(spec))
                if key not in seen:
                    seen.add(key)
                    out.append((part_index, spec))
        parts: dict[str, int] = {}
        for part, _ in self.runs:
            parts.setdefault(part, len(parts))
        part_of = [parts[part] for part, _ in self.runs]
        datasets: dict[str, int] = {}
        for _, spec in out:
            datasets.setdefault(spec.dataset, len(datasets))
        out.sort(key=lambda item: (part_of[item[0]], item[1].seed, datasets[item[1].dataset], item[1].shots))
        return [spec for _, spec in out]


def method_can_run(spec, backbone) -> str | None:
    """None when the method builds on the backbone with these settings, else the one-line reason it cannot."""
    try:
        get_method_class(spec.method)(spec.config(), backbone, ["first class", "second class"])
    except RlptuneError as exc:
        return str(exc)
    return None


@dataclass
class Group:
    """The runs of one variant in one protocol: datasets × seeds × shot counts (targets for transfer protocols)."""

    part: str
    protocol: str
    datasets: list[str]
    variant: Variant
    shots: list[int]
    targets: dict[str, list[str]] | None = None


def planned_groups(settings: StudySettings) -> list[Group]:
    """Every group of runs the requested parts need (cheap: nothing is resolved or validated)."""
    groups: list[Group] = []
    for part in settings.parts:
        if part == "transfer":
            groups += _transfer_groups(settings)
            continue
        datasets = settings.sweep_datasets if part in SWEEP_PARTS and settings.sweep_datasets else settings.datasets
        for variant in part_variants(part, settings):
            groups.append(Group(part, "base2new", list(datasets or []), variant, [settings.shots]))
    return groups


def _transfer_groups(settings: StudySettings) -> list[Group]:
    methods = ("zeroshot", "coop", "kgcoop", "rlp") if not settings.quick else ("zeroshot", "coop", "rlp")
    shot_counts = [1, 2, 4, 8, 16] if not settings.quick else [1, 4]
    shifts = _shifts(settings)
    datasets = list(settings.sweep_datasets or settings.datasets or [])
    source = datasets[0]
    # cross-dataset targets are only evaluated (no training): every other dataset of the study, sweep or not
    cross_targets = [d for d in (settings.datasets or datasets) if d != source]
    dg_source = next((d for d in datasets if shifts.get(d)), None) or next(iter(shifts), None)
    groups = []  # transfer first (a few runs), then the few-shot curves (many): a study cut short keeps the former
    for m in methods:
        if cross_targets:
            groups.append(Group("cross-dataset", "cross-dataset", [source], Variant(m, m), [settings.shots], {source: cross_targets}))
        if dg_source:
            groups.append(Group("domain-gen", "domain-gen", [dg_source], Variant(m, m), [settings.shots],
                                {dg_source: list(shifts[dg_source])}))
    groups += [Group("few-shot", "few-shot", datasets, Variant(m, m), shot_counts) for m in methods]
    return groups


def make_plan(settings: StudySettings, backbone: Any = None) -> Plan:
    """All runs of the requested parts; with ``backbone`` given, variants it cannot run are moved to ``skipped``."""
    plan = Plan()
    for group in planned_groups(settings):
        part = "transfer" if group.protocol != "base2new" else group.part
        plan.variants.setdefault(part, []).append(group.variant)
        key = (group.part, group.variant.name)
        plan.runs[key] = _specs(group.protocol, group.datasets, group.variant, settings, group.shots, group.targets)
    for key, specs in list(plan.runs.items()):
        if specs and specs[0].method in settings.exclude:
            plan.skipped[key] = f"excluded from this study (--exclude {specs[0].method})"
            del plan.runs[key]
    if backbone is not None:
        verdicts: dict[str, str | None] = {}
        for key, specs in list(plan.runs.items()):
            probe = specs[0]
            digest = _hash(probe)
            if digest not in verdicts:
                verdicts[digest] = method_can_run(probe, backbone)
            if verdicts[digest] is not None:
                plan.skipped[key] = verdicts[digest]
                del plan.runs[key]
    return plan


def _shifts(settings: StudySettings) -> dict[str, list[str]]:
    try:
        return suite(settings.backbone)[1]
    except RlptuneError:
        return {}


# ----------------------------------------------------------------------------------------------------------------
# tables


@dataclass
class EvidenceTable:
    """A report table: plain rows of named columns (numbers raw in CSV/JSON, rounded in markdown)."""

    name: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    note: str = ""

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.columns))) + "|"]
        for row in self.rows:
            lines.append("| " + " | ".join(_cell(row.get(c), c) for c in self.columns) + " |")
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
        io.write_json(folder / f"{self.name}.json", S.jsonable(
            {"title": self.title, "columns": self.columns, "rows": self.rows, "note": self.note}))


INTEGER_COLUMNS = frozenset({"runs", "n", "params", "params_full", "params_lowrank", "delta_params"})


def _cell(value: Any, column: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if column in INTEGER_COLUMNS and isinstance(value, (int, float)):
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 0.01 and value != 0 else f"{value:.2f}"
    return str(value)


def _rows_by_variant(plan: Plan, part: str, results: Mapping[str, dict]) -> dict[str, list[dict]]:
    """Table rows (rlptune.analysis.report.result_to_row) of each variant of a part, from finished runs."""
    out: dict[str, list[dict]] = {}
    for (p, name), specs in plan.runs.items():
        if p != part:
            continue
        out[name] = [_row(results[str(s.run_dir(_RESULTS[0]))]) for s in specs if str(s.run_dir(_RESULTS[0])) in results]
    return out


def _row(result: Mapping[str, Any]) -> dict[str, Any]:
    """A run's table row with its training time (result_to_row leaves it out)."""
    return {**result_to_row(result), "train_seconds": result.get("train_seconds")}


def _hash(spec: Any) -> str:
    return spec_settings_hash(spec)


_RESULTS: list[Path] = [Path("results")]  # the results folder of the current study (set by run_study)


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def _std(values: Sequence[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return statistics.stdev(kept) if len(kept) > 1 else None


def _summary_row(name: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    h = [S.row_metric(r, "h") for r in rows]
    return {
        "variant": name, "runs": len(rows),
        "base": _mean([r.get("base") for r in rows]), "base_std": _std([r.get("base") for r in rows]),
        "new": _mean([r.get("new") for r in rows]), "new_std": _std([r.get("new") for r in rows]),
        "h": _mean(h), "h_std": _std(h),
        "params": _mean([r.get("trainable_params") for r in rows]),
        "train_s": _mean([r.get("train_seconds") for r in rows]),
        "id_1": _mean([r.get("id_k") for r in rows]), "eff_rank": _mean([r.get("effective_rank") for r in rows]),
    }


def _paired_row(label: str, a_rows: Sequence[Mapping], b_rows: Sequence[Mapping], metric: str = "h") -> dict[str, Any]:
    comparison = S.paired_comparison(a_rows, b_rows, key=("dataset", "seed"), metric=metric)
    return {"comparison": label, "metric": metric, "n": comparison.n, "mean_a": comparison.mean_a,
            "mean_b": comparison.mean_b, "diff": comparison.mean_diff, "ci_low": comparison.ci_low,
            "ci_high": comparison.ci_high, "p": comparison.p_value, "pairs": comparison.pairs}


SUMMARY_COLUMNS = ["variant", "runs", "base", "base_std", "new", "new_std", "h", "h_std", "params", "train_s", "id_1", "eff_rank"]
PAIRED_COLUMNS = ["comparison", "metric", "n", "mean_a", "mean_b", "diff", "ci_low", "ci_high", "p"]


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


def _with_rows(attach: dict[str, list[dict]], key: str, rows: list[dict]) -> list[dict]:
    attach[key] = rows
    return rows


def analyse(plan: Plan, results: Mapping[str, dict], settings: StudySettings) -> tuple[list[EvidenceTable], list[dict], dict]:
    """Every table of the study and the verdict on each of the paper's claims."""
    tables: list[EvidenceTable] = []
    claims: list[dict] = []
    figures: dict[str, list[dict]] = {}
    if "base2new" in plan.variants or any(p == "base2new" for p, _ in plan.skipped):
        by = _rows_by_variant(plan, "base2new", results)
        tables.append(EvidenceTable("part1_base2new", "Part 1. Base-to-new, every method (official recipes)", SUMMARY_COLUMNS,
                                    [_summary_row(n, r) for n, r in by.items()]))
        rlp = by.get("rlp", [])
        paired = [_paired_row(f"rlp − {name}", rlp, rows) for name, rows in by.items() if name != "rlp" and rows]
        paired = [p for p in paired if p["n"]]
        tables.append(EvidenceTable("part1_paired", "Part 1. Paired RLP − X on H over (dataset, seed): 95% t interval, Wilcoxon p",
                                    PAIRED_COLUMNS, paired))
        coop = next((p for p in paired if p["comparison"] == "rlp − coop"), None)
        if coop:
            claims.append({"claim": "RLP generalises base-to-new better than CoOp (paper: +5.76 H on average)",
                           "evidence": _evidence(coop), "verdict": verdict(coop)})
        params = {n: _mean([r.get("trainable_params") for r in rows]) for n, rows in by.items()}
        if params.get("rlp") and params.get("coop"):
            ratio = params["coop"] / params["rlp"]
            claims.append({"claim": "RLP tunes far fewer parameters than CoOp (paper: ~0.5K vs thousands)",
                           "evidence": f"rlp {params['rlp']:.0f} vs coop {params['coop']:.0f} trainable parameters ({ratio:.1f}×) on {settings.backbone}",
                           "verdict": "supports" if ratio > 1 else "contradicts"})
        figures["base2new"] = [r for rows in by.values() for r in rows]
        _tag(claims, "base2new")
    if "lowrank" in plan.variants:
        by = _rows_by_variant(plan, "lowrank", results)
        rows = []
        for m in PROMPT_METHODS:
            full, low = by.get(m), by.get(f"{m}+lowrank")
            if not full or not low:
                continue
            pair = _paired_row(f"{m}+lowrank − {m}", low, full)
            full_p, low_p = _mean([r.get("trainable_params") for r in full]), _mean([r.get("trainable_params") for r in low])
            rows.append({**pair, "method": m, "params_full": full_p, "params_lowrank": low_p,
                         "delta_params": None if full_p is None or low_p is None else low_p - full_p})
        tables.append(EvidenceTable("part2_lowrank", "Part 2. RLP on every prompt method: low-rank − full-rank at the method's recipe (ΔH, Δparams)",
                                    ["method", "n", "mean_b", "mean_a", "diff", "ci_low", "ci_high", "p", "params_full", "params_lowrank", "delta_params"],
                                    rows, "mean_b = full-rank H, mean_a = low-rank H, diff = ΔH (low − full), paired over (dataset, seed)."))
        for row in rows:
            claims.append({"claim": f"a low-rank prompt (RLP's parameterisation) raises {row['method']}'s H",
                           "evidence": _evidence(row), "verdict": verdict(row)})
        _tag(claims, "lowrank")
    if "rank" in plan.variants:
        by = _rows_by_variant(plan, "rank", results)
        tables.append(EvidenceTable("part3_rank", "Part 3. Rank sweep (n = 4 context tokens; α/r rows scale the update by 1/r)",
                                    SUMMARY_COLUMNS, [_summary_row(n, r) for n, r in by.items()]))
        points = [(r["settings"].get("prompt", {}).get("rank", 1) if r.get("settings") else 1, r) for n, rows in by.items() if "α" not in n for r in rows]
        rho = S.spearman([float(k) for k, _ in points], [r.get("new") for _, r in points])
        claims.append({"claim": "lower rank goes with better new-class accuracy (paper: r = 1 best among 1-3)",
                       "evidence": f"Spearman ρ(rank, new) = {_cell(rho.rho)}, p = {_cell(rho.p)}, n = {rho.n} (no α/r scale, all datasets and seeds)",
                       "verdict": _rho_verdict(rho, -1)})
        _tag(claims, "rank")
    if "ablation" in plan.variants:
        by = _rows_by_variant(plan, "ablation", results)
        tables.append(EvidenceTable("part4_ablation", "Part 4. Dropout sweep and initialisation ablation (RLP)",
                                    SUMMARY_COLUMNS, [_summary_row(n, r) for n, r in by.items()]))
        default = by.get("rlp p=0.1", [])
        paired = [_paired_row(f"rlp − {name}", default, rows) for name, rows in by.items() if name != "rlp p=0.1" and rows]
        tables.append(EvidenceTable("part4_paired", "Part 4. Paired RLP (recipe: p = 0.1, P_fr, LoRA init, SGD) − variant on H",
                                    PAIRED_COLUMNS, paired))
        for label, claim in (("rlp − rlp without P_fr (P_fr = 0)", "the frozen full-rank branch P_fr matters"),
                             ("rlp − rlp p=0.0", "dropout on the low-rank branch helps")):
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
    return (f"Δ = {_cell(row.get('diff'))} [{_cell(row.get('ci_low'))}, {_cell(row.get('ci_high'))}] 95% CI, "
            f"Wilcoxon p = {_cell(row.get('p'))}, n = {row.get('n')} pairs")


def _rho_verdict(rho: S.SpearmanResult, expected_sign: int) -> str:
    if rho.n < 3 or math.isnan(rho.rho):
        return "cannot decide (fewer than 3 points or a constant)"
    if rho.p < 0.05:
        return "supports" if rho.rho * expected_sign > 0 else "contradicts"
    return "cannot decide (p ≥ 0.05)"


def _density(plan: Plan, results: Mapping[str, dict]) -> tuple[EvidenceTable, list[dict], list[dict]]:
    """Spearman ρ of ID_1 / effective rank vs new-class accuracy within (method, dataset), over every base-to-new
    run that has a learned prompt (settings and seeds vary within a stratum)."""
    seen: dict[str, dict] = {}
    for (part, _), specs in plan.runs.items():
        for spec in specs:
            key = str(spec.run_dir(_RESULTS[0]))
            if spec.protocol == "base2new" and key in results and key not in seen:
                seen[key] = result_to_row(results[key])
    points = [r for r in seen.values() if r.get("id_k") is not None and r.get("new") is not None]
    strata: dict[tuple[str, str], list[dict]] = {}
    for r in points:
        strata.setdefault((r["method"], r["dataset"]), []).append(r)
    rows = []
    for (method, dataset), members in sorted(strata.items()):
        for measure in ("id_k", "effective_rank"):
            rho = S.spearman([r.get(measure) for r in members], [r.get("new") for r in members])
            rows.append({"method": method, "dataset": dataset, "measure": "ID_1" if measure == "id_k" else "effective rank",
                         "rho": rho.rho, "p": rho.p, "n": rho.n})
    claims = []
    for measure, sign, text in (("ID_1", 1, "higher information density goes with better new-class accuracy"),
                                ("effective rank", -1, "lower effective rank goes with better new-class accuracy")):
        decided = [r for r in rows if r["measure"] == measure and r["n"] >= MIN_SPEARMAN_POINTS and r["p"] is not None
                   and not math.isnan(r["p"]) and r["p"] < 0.05]
        agree = sum(1 for r in decided if r["rho"] * sign > 0)
        total = sum(1 for r in rows if r["measure"] == measure)
        v = ("cannot decide (no stratum with p < 0.05)" if not decided else "supports" if agree == len(decided)
             else "contradicts" if agree == 0 else "mixed (strata disagree)")
        claims.append({"claim": text, "evidence": f"{len(decided)} of {total} (method, dataset) strata have n ≥ "
                       f"{MIN_SPEARMAN_POINTS} and p < 0.05; "
                       f"{agree} of them with the expected sign", "verdict": v})
    table = EvidenceTable("part6_density", "Part 6. Information density vs new-class accuracy, within method and dataset (Spearman)",
                          ["method", "dataset", "measure", "rho", "p", "n"], rows,
                          "Points: every base-to-new run of the method on the dataset (its rank, dropout, init variants and seeds).")
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
        head = _headline(record.get("diagnostics") or {}) if record.get("new_acc") is not None else {}
        if head.get("id_k") is not None and head.get("effective_rank") is not None:
            ids.append(float(head["id_k"]))
            ranks.append(float(head["effective_rank"]))
            new.append(float(record["new_acc"]))
    return ids, ranks, new


def _density_across_epochs(plan: Plan, results: Mapping[str, dict]) -> tuple[EvidenceTable, list[dict]]:
    """Within one run: Spearman ρ over its epochs of ID_1 / effective rank vs the new-class accuracy logged per
    epoch; summarised per (method, dataset) as the median ρ and how many runs are significant either way."""
    per_run: dict[tuple[str, str], list[tuple[str, S.SpearmanResult]]] = {}
    seen: set[str] = set()
    for specs in plan.runs.values():
        for spec in specs:
            key = str(spec.run_dir(_RESULTS[0]))
            if spec.protocol != "base2new" or key not in results or key in seen:
                continue
            seen.add(key)
            ids, ranks, new = epoch_series(Path(key))
            if len(new) < 3:
                continue
            row = result_to_row(results[key])
            per_run.setdefault((row["method"], row["dataset"]), []).extend(
                [("ID_1", S.spearman(ids, new)), ("effective rank", S.spearman(ranks, new))])
    rows = []
    for (method, dataset), items in sorted(per_run.items()):
        for measure in ("ID_1", "effective rank"):
            rhos = [r for m, r in items if m == measure and not math.isnan(r.rho)]
            sig = [r for r in rhos if r.p is not None and not math.isnan(r.p) and r.p < 0.05]
            rows.append({"method": method, "dataset": dataset, "measure": measure, "runs": len(rhos),
                         "median_rho": statistics.median([r.rho for r in rhos]) if rhos else None,
                         "positive": sum(1 for r in sig if r.rho > 0), "negative": sum(1 for r in sig if r.rho < 0),
                         "epochs": statistics.median([r.n for r in rhos]) if rhos else None})
    claims = []
    for measure, sign, text in (("ID_1", 1, "within a run, epochs of higher information density have better new-class accuracy"),
                                ("effective rank", -1, "within a run, epochs of lower effective rank have better new-class accuracy")):
        mine = [r for r in rows if r["measure"] == measure and r["median_rho"] is not None]
        agree = sum(1 for r in mine if r["median_rho"] * sign > 0 and (r["positive"] if sign > 0 else r["negative"]) > r["runs"] / 2)
        against = sum(1 for r in mine if r["median_rho"] * sign < 0 and (r["negative"] if sign > 0 else r["positive"]) > r["runs"] / 2)
        v = ("cannot decide (no run logged new-class accuracy per epoch)" if not mine
             else "supports" if agree and not against and agree > len(mine) / 2
             else "contradicts" if against and not agree and against > len(mine) / 2
             else "mixed (strata disagree or most are undecided)")
        claims.append({"claim": text, "evidence": f"{agree} of {len(mine)} (method, dataset) strata have a median ρ of the "
                       f"expected sign with most runs significant that way, {against} the opposite", "verdict": v})
    table = EvidenceTable("part6_density_epochs",
                          "Part 6b. Information density vs new-class accuracy across the epochs of each run (Spearman per run)",
                          ["method", "dataset", "measure", "runs", "epochs", "median_rho", "positive", "negative"], rows,
                          "positive / negative: runs whose ρ over their epochs has p < 0.05 with that sign. Successive "
                          "epochs are not independent, so a per-run p overstates the evidence; read the counts across "
                          "runs and seeds, not a single p.")
    return table, claims


def _transfer_tables(plan: Plan, results: Mapping[str, dict], figures: dict) -> list[EvidenceTable]:
    out = []
    for protocol, name, title in (("few-shot", "part5_few_shot", "Part 5a. Few-shot accuracy"),
                                  ("cross-dataset", "part5_cross_dataset", "Part 5b. Cross-dataset transfer from one source"),
                                  ("domain-gen", "part5_domain_gen", "Part 5c. Domain generalisation to shifted renderings")):
        rows = [result_to_row(results[str(s.run_dir(_RESULTS[0]))]) for (p, _), specs in plan.runs.items() if p == protocol
                for s in specs if str(s.run_dir(_RESULTS[0])) in results]
        if not rows:
            continue
        figures[protocol] = rows
        table = tables_for(rows, protocol)
        out.append(_from_literature_table(name, title, table))
    return out


def _from_literature_table(name: str, title: str, table: Any) -> EvidenceTable:
    """A rlptune.analysis.tables.Table as an EvidenceTable (mean ± std cells)."""
    columns = [*table.label_columns, *table.value_columns]
    rows = []
    for row in table.rows:
        cells = {c: row.labels.get(c) for c in table.label_columns}
        for c in table.value_columns:
            cell = row.cells.get(c)
            cells[c] = None if cell is None else cell.value
        rows.append(cells)
    return EvidenceTable(name, title, columns, rows, "Cells: mean over seeds (per-seed values in the runs' result.json).")


# ----------------------------------------------------------------------------------------------------------------
# a report made in pieces: parts carried from an earlier report

#: The part each table (by name prefix) and figure (by file stem) of a report belongs to.
TABLE_PARTS = {"part1_": "base2new", "part2_": "lowrank", "part3_": "rank", "part4_": "ablation", "part5_": "transfer",
               "part6_": "density"}
FIGURE_PARTS = {"fig_base2new": "base2new", "fig_few_shot": "transfer", "fig_density": "density"}
#: Claims of reports written before claims named their part, by the opening words the study gives them.
_CLAIM_OPENINGS = {"RLP generalises base-to-new": "base2new", "RLP tunes far fewer": "base2new",
                   "a low-rank prompt": "lowrank", "lower rank goes with": "rank", "the frozen full-rank branch": "ablation",
                   "dropout on the low-rank branch": "ablation", "higher information density": "density",
                   "lower effective rank": "density", "within a run, epochs": "density"}
#: Settings every piece of one report must share (what the parts are measured on).
SHARED_SETTINGS = ("backbone", "datasets", "data_root", "seeds", "shots", "epochs", "quick", "exclude")


@dataclass
class EarlierReport:
    """The parts of an earlier report (``--merge``) that this invocation does not run, with where they came from."""

    source: Path
    summary: dict[str, Any]
    parts: list[str]
    tables: list[EvidenceTable]
    claims: list[dict]
    skipped: list[dict]
    figures: list[str]

    def provenance(self) -> dict[str, Any]:
        return {"source": str(self.source), "parts": self.parts, "runs": self.summary.get("runs"),
                "wall_seconds": self.summary.get("wall_seconds"),
                "train_seconds_total": self.summary.get("train_seconds_total"), "made_at": self.summary.get("made_at"),
                "rlptune_version": self.summary.get("rlptune_version")}


def _part_of(name: str, table: Mapping[str, str]) -> str | None:
    return next((part for prefix, part in table.items() if name.startswith(prefix)), None)


def _claim_part(claim: Mapping[str, Any]) -> str | None:
    return claim.get("part") or _part_of(str(claim.get("claim", "")), _CLAIM_OPENINGS)


#: The ``part`` a skipped entry may name: a part, or one of the transfer part's protocols.
_SKIPPED_PARTS = (*PARTS, "few-shot", "cross-dataset", "domain-gen")
#: Tables and figures are files of the report folder: plain names, never paths.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class _Checked:
    """One line naming the earlier ``evidence.json`` and the field whenever a value is not what a report writes."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, where: str, value: Any, expected: str) -> RlptuneError:
        shown = json.dumps(value, default=str)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return RlptuneError(f"{self.label}: {where} is {shown}; expected {expected} (the report was changed or damaged)")

    def mapping(self, value: Any, where: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, value, "an object")
        return value

    def items(self, value: Any, where: str, optional: bool = False) -> list:
        if value is None and optional:
            return []
        if not isinstance(value, list):
            raise self.fail(where, value, "a list")
        return value

    def count(self, value: Any, where: str, optional: bool = False) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(where, value, "a whole number >= 0")

    def seconds(self, value: Any, where: str) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise self.fail(where, value, "a number of seconds >= 0")

    def text(self, value: Any, where: str, optional: bool = False) -> None:
        if not (isinstance(value, str) or (optional and value is None)):
            raise self.fail(where, value, "text")

    def parts(self, value: Any, where: str, known: Sequence[str] = PARTS, among: str = "the study's parts") -> list[str]:
        names = self.items(value, where)
        for i, name in enumerate(names):
            if name not in known:
                raise self.fail(f"{where}[{i}]", name, f"one of {among} ({', '.join(known)})")
        if len(set(names)) != len(names):
            raise self.fail(where, value, "each part once")
        return names

    def file_names(self, value: Any, where: str, suffix: str = "") -> list[str]:
        names = self.items(value, where)
        for i, name in enumerate(names):
            if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name) or not name.endswith(suffix):
                raise self.fail(f"{where}[{i}]", name, f"a file name in the report folder{' ending ' + suffix if suffix else ''}")
        return names


def _check_summary(summary: Any, label: str) -> dict[str, Any]:
    """The earlier report's ``evidence.json`` as ``write_report`` writes it: every field a merge carries or states
    has its type and range, parts are the study's, and each carried part has something to show."""
    check = _Checked(label)
    if not isinstance(summary, dict) or not isinstance(summary.get("settings"), dict):
        raise RlptuneError(f"{label}: not a study report (expected the JSON `rlptune reproduce rlp` writes, with 'settings')")
    parts = check.parts(summary["settings"].get("parts"), "settings.parts")
    sweep = summary["settings"].get("sweep_datasets")
    if sweep is not None and not (isinstance(sweep, list) and all(isinstance(d, str) for d in sweep)):
        raise check.fail("settings.sweep_datasets", sweep, "a list of dataset names")
    check.count(summary.get("runs"), "runs")
    check.count(summary.get("planned_runs"), "planned_runs", optional=True)
    for key in ("wall_seconds", "train_seconds_total"):
        check.seconds(summary.get(key), key)
    for key in ("made_at", "rlptune_version"):
        check.text(summary.get(key), key, optional=True)
    check.file_names(summary.get("tables"), "tables")
    check.file_names(summary.get("figures", []), "figures", ".png")
    for i, claim in enumerate(check.items(summary.get("claims"), "claims")):
        check.mapping(claim, f"claims[{i}]")
        for key in ("claim", "evidence", "verdict"):
            check.text(claim.get(key), f"claims[{i}].{key}")
        if claim.get("part") is not None:
            check.parts([claim["part"]], f"claims[{i}].part")
    for i, entry in enumerate(check.items(summary.get("skipped"), "skipped", optional=True)):
        check.mapping(entry, f"skipped[{i}]")
        check.parts([entry.get("part")], f"skipped[{i}].part", _SKIPPED_PARTS, "the study's parts and protocols")
        for key in ("variant", "reason"):
            check.text(entry.get(key), f"skipped[{i}].{key}")
    estimate = summary.get("full_study_estimate")
    if estimate is not None:
        check.mapping(estimate, "full_study_estimate")
        check.count(estimate.get("runs"), "full_study_estimate.runs", optional=True)
        check.seconds(estimate.get("seconds"), "full_study_estimate.seconds")
        check.text(estimate.get("basis"), "full_study_estimate.basis", optional=True)
        for method, rate in check.mapping(estimate.get("rates", {}), "full_study_estimate.rates").items():
            check.seconds(rate, f"full_study_estimate.rates.{method}")
    if "pieces" in summary:  # reports written before --merge have none: the report is then one piece
        pieces = check.items(summary["pieces"], "pieces")
        if not pieces:
            raise check.fail("pieces", pieces, "one entry per invocation that made the report")
        covered: list[str] = []
        for i, piece in enumerate(pieces):
            check.mapping(piece, f"pieces[{i}]")
            names = check.parts(piece.get("parts"), f"pieces[{i}].parts", parts, "settings.parts")
            if not names:
                raise check.fail(f"pieces[{i}].parts", names, "the parts that piece made")
            covered += names
            check.count(piece.get("runs"), f"pieces[{i}].runs")
            for key in ("wall_seconds", "train_seconds_total"):
                check.seconds(piece.get(key), f"pieces[{i}].{key}")
            for key in ("source", "made_at", "rlptune_version"):
                check.text(piece.get(key), f"pieces[{i}].{key}", optional=True)
        if sorted(covered) != sorted(parts):
            raise check.fail("pieces", [p.get("parts") for p in pieces], f"the parts of settings.parts ({', '.join(parts)}), "
                             "each made by one piece")
    return summary


def _check_carried(summary: Mapping[str, Any], parts: Sequence[str], label: str) -> None:
    """Each part carried into the joined report has a table or figure to show, or says why it was skipped: a part
    with nothing would be claimed by the joined report without any result behind it."""
    shown = {_part_of(t, TABLE_PARTS) for t in summary["tables"]} | {_part_of(f, FIGURE_PARTS) for f in summary.get("figures", [])}
    skipped = {e["part"] for e in summary.get("skipped") or []}
    for part in parts:
        stated = {part} | ({"few-shot", "cross-dataset", "domain-gen"} if part == "transfer" else set())
        if part not in shown and not (stated & skipped):
            raise RlptuneError(f"{label}: its part {part!r} has no table or figure (and no skipped entry saying why); "
                               f"run that part in this invocation instead of carrying it")


def load_earlier_report(path: str | Path, settings: StudySettings) -> EarlierReport:
    """Read an earlier report folder (or its ``evidence.json``) and keep the parts ``settings`` does not run; its
    settings must equal this study's in everything the parts are measured on, else one line says which differs."""
    path = Path(path)
    file = path if path.suffix == ".json" else path / "evidence.json"
    label = f"reproduce --merge {file}"
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RlptuneError(f"{label}: no such file; expected a report folder written by `rlptune reproduce rlp`") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        raise RlptuneError(f"{label}: not a study report (expected the JSON `rlptune reproduce rlp` writes, with 'settings')") from None
    earlier = _check_summary(summary, label)["settings"]
    mine = S.jsonable(vars(settings))
    for key in SHARED_SETTINGS:
        if earlier.get(key) != mine.get(key):
            raise RlptuneError(f"{label}: its settings.{key} is {earlier.get(key)!r}, this study's is {mine.get(key)!r}; "
                               "a report joins only parts measured with the same " + ", ".join(SHARED_SETTINGS))
    parts = [p for p in earlier["parts"] if p not in settings.parts]
    if not parts:
        raise RlptuneError(f"{label}: it holds no part that this invocation does not run (its parts: "
                           f"{', '.join(earlier.get('parts', [])) or 'none'}; this one's: {', '.join(settings.parts)})")
    if any(p in SWEEP_PARTS for p in parts) and any(p in SWEEP_PARTS for p in settings.parts) \
            and earlier.get("sweep_datasets") != mine.get("sweep_datasets"):
        raise RlptuneError(f"{label}: its parts 3-5 ran on {earlier.get('sweep_datasets')}, this study's on "
                           f"{mine.get('sweep_datasets')}; one report states one set of sweep datasets")
    _check_carried(summary, parts, label)
    folder = file.parent
    tables = []
    for name in summary["tables"]:
        if _part_of(name, TABLE_PARTS) not in parts:
            continue
        try:
            data = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
            if not (isinstance(data["title"], str) and isinstance(data.get("note", ""), str)
                    and isinstance(data["columns"], list) and all(isinstance(c, str) for c in data["columns"])
                    and isinstance(data["rows"], list) and all(isinstance(r, dict) for r in data["rows"])):
                raise TypeError
            tables.append(EvidenceTable(name, data["title"], list(data["columns"]), list(data["rows"]), data.get("note", "")))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError):
            raise RlptuneError(f"{label}: its table {folder / (name + '.json')} is missing or not a report table") from None
    claims = [dict(c, part=_claim_part(c)) for c in summary.get("claims", []) if _claim_part(c) in parts]
    skipped = [s for s in summary.get("skipped") or [] if s.get("part") in parts
               or (s.get("part") in ("few-shot", "cross-dataset", "domain-gen") and "transfer" in parts)]
    figures = [f for f in summary.get("figures", []) if _part_of(f, FIGURE_PARTS) in parts]
    for figure in figures:
        if not (folder / figure).is_file():
            raise RlptuneError(f"{label}: its figure {folder / figure} is missing")
    return EarlierReport(file, summary, parts, tables, claims, skipped, figures)


def _join(settings: StudySettings, earlier: EarlierReport) -> StudySettings:
    """This study's settings with the earlier report's parts added (in the study's order)."""
    joined = StudySettings(**{**vars(settings)})
    joined.parts = [p for p in PARTS if p in settings.parts or p in earlier.parts]
    if not any(p in SWEEP_PARTS for p in settings.parts):
        joined.sweep_datasets = list(earlier.summary["settings"].get("sweep_datasets") or settings.datasets or [])
    return joined


def _copy_figures(earlier: EarlierReport, output: Path) -> None:
    """Bring the carried figures (png and its svg) into ``output`` unless they are already there."""
    for figure in earlier.figures:
        for name in (figure, str(Path(figure).with_suffix(".svg"))):
            source, target = earlier.source.parent / name, output / name
            if source.is_file() and source.resolve() != target.resolve():
                io.write_bytes(target, source.read_bytes())


# ----------------------------------------------------------------------------------------------------------------
# the command


def run_study(settings: StudySettings, results_dir: str | Path, output: str | Path, executor: ExecutorSettings | None = None,
              docs: str | Path | None = None, log: Callable[[str], None] | None = None,
              report_only: bool = False, merge: str | Path | None = None) -> dict[str, Any]:
    """Plan, run (resumable) and report the study; returns the report's summary (also ``<output>/evidence.json``).
    ``report_only`` runs nothing: the report is made from the runs already finished, and says how many are missing.
    ``merge`` names an earlier report (same settings) whose other parts join this one's, each with where it came from:
    a study too long for one machine or session is then made in pieces."""
    log = log or (lambda m: print(m, file=sys.stderr))
    settings = settings.resolved()
    # both folders as typed (an empty one is refused), before hours of runs and before anything is written
    data = [("the data root (--data-root)", settings.data_root)]
    if not report_only:
        check_output_folder(results_dir, kind="results", inputs=data, option="--results")
    check_output_folder(output, kind="evidence", inputs=[*data, ("the results folder (--results)", results_dir)])
    earlier = load_earlier_report(merge, settings) if merge is not None else None  # checked before hours of runs
    if earlier is not None:
        log(f"parts {', '.join(earlier.parts)} are carried from {earlier.source}")
    results_dir, output = Path(results_dir), Path(output)
    _RESULTS[0] = results_dir
    probe = make_specs("base2new", settings.datasets[:1], ["coop"], settings.seeds[:1], [settings.shots],
                                 backbone=settings.backbone, data_root=settings.data_root)[0]
    backbone = _BACKBONES.get(probe.config())
    plan = make_plan(settings, backbone)
    for (part, name), reason in plan.skipped.items():
        log(f"skipping {part} / {name}: {reason}")
    specs = plan.all_specs()
    started = time.perf_counter()
    if report_only:
        done = [s for s in specs if (s.run_dir(results_dir) / RESULT).is_file()]
        results = {str(s.run_dir(results_dir)): read_result(s.run_dir(results_dir)) for s in done}
        log(f"report only: {len(done)} of {len(specs)} planned runs are finished; the others are left out of the tables")
    else:
        finished = run_sweep(specs, results_dir, executor=executor, log=log,
                             backbone=backbone if (executor is None or executor.kind == "local") else None)
        results = {str(s.run_dir(results_dir)): r for s, r in zip(specs, finished)}
    wall = time.perf_counter() - started
    tables, claims, figures = analyse(plan, results, settings)
    summary = write_report(plan, results, settings, tables, claims, figures, output, wall, docs, planned=len(specs),
                           earlier=earlier)
    return summary


def estimate_full_seconds(results: Mapping[str, dict], settings: StudySettings,
                          measured_elsewhere: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The full study's wall time on this machine, from the measured seconds per training epoch of these runs
    (``measured_elsewhere``: rates these runs do not hold, from an earlier report). A rate is kept per method and
    protocol (``coop@base2new``): a base-to-new epoch trains on half the classes, a few-shot epoch on all of them;
    a protocol not measured for a method falls back to the method's mean over the protocols that were."""
    full = StudySettings(backbone=settings.backbone, datasets=None if settings.quick else settings.datasets,
                         data_root=settings.data_root).resolved()
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
        changes = _without_recipe_values(method, group.variant.changes, full.shots)
        rate = rates.get(f"{method}@{group.protocol}", rates.get(method, 0.0))
        for dataset in group.datasets:
            for shots in group.shots:
                shots = 0 if method == "zeroshot" and group.protocol != "few-shot" else shots
                preset = recipes.preset(method, group.protocol, max(shots, 1), dataset) if method in recipes.recipe_methods() else {}
                epochs = {**preset.get("train", {}), **changes.get("train", {})}.get("epochs") or 0
                for seed in full.seeds:
                    key = (group.protocol, dataset, method, repr(sorted(changes.items())), shots, seed)
                    if key in seen:
                        continue
                    seen.add(key)
                    total += rate * float(epochs) * max(shots, 1) + 2.0  # + ~2 s of evaluation and setup per run
    return {"runs": len(seen), "seconds": total, "rates": rates,
            "basis": "measured train seconds per epoch per shot of each method in this run, times each full run's "
                     "official epochs and shots, + 2 s per run; methods not run here (skipped on this backbone) count "
                     "only the 2 s, so on a backbone that skips methods this is a lower bound"}


def _joined_estimate(results: Mapping[str, dict], settings: StudySettings, earlier: EarlierReport) -> dict[str, Any]:
    """The full-study estimate of a report made in pieces, from every piece's measured rates. An earlier report that
    kept no rates (written before they were kept) cannot be joined rate by rate: the larger estimate is shown and the
    basis names both."""
    theirs = earlier.summary.get("full_study_estimate") or {}
    mine = estimate_full_seconds(results, settings, theirs.get("rates"))
    if "rates" not in theirs and theirs.get("seconds") is not None:
        larger = max((mine, theirs), key=lambda e: float(e["seconds"]))
        return {**larger, "basis": f"{larger.get('basis')}; {earlier.source} kept no rates to join, so the larger of "
                                   f"two estimates is shown: {float(mine['seconds']) / 3600:.1f} h from this invocation's "
                                   f"runs, {float(theirs['seconds']) / 3600:.1f} h from that report's"}
    return mine


def _by_part(items: list, part_of: Callable[[Any], str | None]) -> list:
    """Items in the study's part order (stable within a part)."""
    order = {p: i for i, p in enumerate(PARTS)}
    return sorted(items, key=lambda item: order.get(part_of(item) or "", len(PARTS)))


def _pieces(settings: StudySettings, runs: int, wall: float, train_seconds: float, made_at: str,
            earlier: EarlierReport | None) -> list[dict[str, Any]]:
    """Where each part of the report was measured: this invocation, then the earlier report's pieces it keeps."""
    pieces = [{"source": "this invocation", "parts": list(settings.parts), "runs": runs, "wall_seconds": wall,
               "train_seconds_total": train_seconds, "made_at": made_at}]
    if earlier is None:
        return pieces
    for piece in earlier.summary.get("pieces") or [{**earlier.provenance(), "parts": earlier.summary["settings"].get("parts", [])}]:
        kept = [p for p in piece.get("parts", []) if p in earlier.parts]
        if kept:
            source = str(earlier.source) if piece.get("source") in (None, "this invocation") else piece["source"]
            pieces.append({**piece, "source": source, "parts": kept})
    return pieces


def write_report(plan: Plan, results: Mapping[str, dict], settings: StudySettings, tables: list[EvidenceTable],
                 claims: list[dict], figures: Mapping[str, list[dict]], output: Path, wall: float,
                 docs: str | Path | None, planned: int | None = None, earlier: EarlierReport | None = None) -> dict[str, Any]:
    """report/: every table as md/csv/json, figures, evidence.json and EVIDENCE.md (also written to ``docs``); with
    ``earlier``, its parts join this invocation's and the report says where each part came from."""
    made_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    output.mkdir(parents=True, exist_ok=True)
    figure_files = _figures(figures, output)
    skipped = [{"part": p, "variant": n, "reason": r} for (p, n), r in plan.skipped.items()]
    train_seconds = sum(float(r.get("train_seconds") or 0.0) for r in results.values())
    pieces = _pieces(settings, len(results), wall, train_seconds, made_at, earlier)
    if earlier is not None:
        _copy_figures(earlier, output)
        estimate = _joined_estimate(results, settings, earlier)
        settings = _join(settings, earlier)
        tables = _by_part([*tables, *earlier.tables], lambda t: _part_of(t.name, TABLE_PARTS))
        claims = _by_part([*claims, *earlier.claims], _claim_part)
        skipped = [*skipped, *earlier.skipped]
        figure_files = _by_part([*figure_files, *earlier.figures], lambda f: _part_of(f, FIGURE_PARTS))
    else:
        estimate = estimate_full_seconds(results, settings)
    for table in tables:
        table.write(output)
    summary = {
        "settings": S.jsonable(vars(settings)), "wall_seconds": wall, "runs": len(results),
        "planned_runs": len(results) if planned is None else planned,
        "train_seconds_total": train_seconds,
        "tables": [t.name for t in tables], "claims": claims, "skipped": skipped, "figures": figure_files,
        "full_study_estimate": estimate, "made_at": made_at, "rlptune_version": __version__, "pieces": pieces,
    }
    io.write_json(output / "evidence.json", S.jsonable(summary))
    text = _markdown(settings, tables, claims, skipped, figure_files, wall, len(results), estimate,
                     summary["planned_runs"], pieces)
    io.write_text(output / "EVIDENCE.md", text)
    if docs:
        io.write_text(docs, text.replace("](", f"]({Path(_relative(output, Path(docs).parent))}/"))
    return summary


def _relative(target: Path, start: Path) -> str:
    return os.path.relpath(target.resolve(), start.resolve())


def _figures(figures: Mapping[str, list[dict]], output: Path) -> list[str]:
    files: list[str] = []
    if figures.get("base2new"):
        table = T.base2new_table(figures["base2new"], group_by=lambda r: str(r.get("tag") or r.get("method")))
        files += [p.name for p in plots.plot_base_new_bars(table, output / "fig_base2new")]
    if figures.get("few-shot"):
        files += [p.name for p in plots.plot_few_shot_curves(T.few_shot_curves(figures["few-shot"]), output / "fig_few_shot")]
    points = figures.get("density") or []
    if len(points) >= 3:
        files += [p.name for p in plots.plot_id_vs_accuracy(
            [r["id_k"] for r in points], [r["new"] for r in points], output / "fig_density",
            labels=[r["method"] for r in points], markers_by=[r["dataset"] for r in points])]
    return [f for f in files if f.endswith(".png")]


def _pieces_markdown(pieces: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["**Made in pieces** (`--merge`): each part's tables, figures and verdicts are those of the invocation that "
             "ran it, with the settings above; part 6 (density) pools the base-to-new runs of its own piece only.", ""]
    for piece in pieces:  # training time, not wall time: a piece reported with --report-only ran nothing then
        train = piece.get("train_seconds_total")
        lines.append(f"- parts {', '.join(piece['parts'])}: {piece.get('runs')} runs"
                     f"{f', {train / 60:.1f} min of training summed over runs' if isinstance(train, (int, float)) else ''}, "
                     f"made {piece.get('made_at') or 'at a time not recorded'} ({piece.get('source')})")
    return [*lines, ""]


def _markdown(settings: StudySettings, tables: list[EvidenceTable], claims: list[dict], skipped: list[dict],
              figures: list[str], wall: float, runs: int, estimate: Mapping[str, Any], planned: int | None = None,
              pieces: Sequence[Mapping[str, Any]] = ()) -> str:
    parts_left_out = [p for p in PARTS if p not in settings.parts]
    sweeps_cut = settings.sweep_datasets != settings.datasets and any(p in SWEEP_PARTS for p in settings.parts)
    reduced = bool(settings.exclude) or sweeps_cut or bool(parts_left_out)
    kind = ("QUICK study (smoke-test settings: too few epochs, shots and seeds to read anything into)" if settings.quick
            else "reduced study: see *Reduced on purpose* at the end" if reduced else "full study")
    lines = [
        "# Evidence: the RLP paper's claims in the micro world",
        "",
        f"Generated by `rlptune reproduce rlp` ({kind}). **These are micro-world results**: a tiny CLIP "
        f"(`{settings.backbone}`) pretrained on procedural drawings, not ViT-B/16 on the 11 datasets of the paper; "
        "they test the mechanisms the paper claims, not its numbers.",
        "",
        f"Settings: backbone `{settings.backbone}`, datasets {', '.join(settings.datasets or [])}, seeds "
        f"{', '.join(map(str, settings.seeds))}, {settings.shots} shots, epochs "
        f"{settings.epochs if settings.epochs is not None else 'of each official recipe'}; parts {', '.join(settings.parts)}. "
        f"{runs} runs ({wall / 60:.1f} min in the invocation that wrote this; finished runs are reused, not rerun). "
        "Departures from the recipes: "
        f"{settings.train_overrides() or 'none'}; base-to-new runs also score their new classes after every epoch "
        "(`train.track_new`, a logged diagnostic that changes no trained number).",
        "",
        *(_pieces_markdown(pieces) if len(pieces) > 1 else []),
        *([f"**Incomplete: {planned - runs} of the {planned} planned runs had not finished when this report was made "
            "(`--report-only`); tables and verdicts use the finished runs only (see each table's `runs` / `n`).**", ""]
          if planned is not None and planned > runs else []),
        f"The full study (3 seeds, every dataset of the suite, official epochs) is {estimate['runs']} runs, about "
        f"{estimate['seconds'] / 3600:.1f} h on this machine ({estimate['basis']}).",
        "",
        "## The paper's claims",
        "",
        "| claim | evidence | verdict |",
        "|---|---|---|",
        *[f"| {c['claim']} | {c['evidence']} | {c['verdict']} |" for c in claims],
        "",
        "A comparison supports a claim only when its 95% t interval excludes 0 and its Wilcoxon p < 0.05 (paired over "
        "dataset and seed); a Wilcoxon test cannot reach p < 0.05 with fewer than 6 non-zero pairs.",
        "",
    ]
    if skipped:
        lines += ["## Skipped on this backbone", "", "| part | variant | reason |", "|---|---|---|",
                  *[f"| {s['part']} | {s['variant']} | {s['reason']} |" for s in skipped], ""]
    lines += ["## Tables", ""]
    for table in tables:
        lines += [table.markdown(), f"(`{table.name}.csv`, `{table.name}.json`)", ""]
    if figures:
        lines += ["## Figures", "", *[f"![{f}]({f})" for f in figures], ""]
    if reduced:
        lines += ["## Reduced on purpose", ""]
        if settings.exclude:
            lines.append(f"- Methods left out: {', '.join(settings.exclude)} (listed under Skipped with the reason).")
        if parts_left_out:
            lines.append(f"- Parts not run: {', '.join(parts_left_out)} (`--parts`); the claims they test are not "
                         "judged in this report.")
        if sweeps_cut:
            lines.append(f"- Parts 3-5 (rank, ablation, transfer) ran on {', '.join(settings.sweep_datasets or [])} only.")
        lines.append("")
    return "\n".join(lines)
