"""Which runs each part of the study needs: variants of a method's recipe, grouped by protocol, shared across parts
when their settings are equal; and the finished results those runs map to.

Parts 2 and 5 take their methods from the registry's traits (:attr:`rlptune.methods.Method.learns_prompt`,
``requires_prompt_kind``, ``ablation_of``) and the paper's roles in :mod:`.settings`:

- part 2 (low-rank) takes every *prompt method* of the study: one that learns a prompt whose ``prompt.kind`` can be
  chosen (the subject requires its own kind) and is not a one-tower ablation of another method (``deep_text`` and
  ``deep_vision`` are left to IVLP, the method they ablate); ``--quick`` keeps the prompt methods of the baseline's
  placement (the baseline's class and its subclasses: CoOp and KgCoOp);
- part 5 (transfer) takes the untrained reference, the baseline's placement (only the baseline with ``--quick``) and
  the subject.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import recipes
from ..errors import RlptuneError
from ..methods import get_method_class
from ..sweeps.runner import RunSpec, make_specs, spec_settings_hash
from .auto_runs import ARMS, auto_runs
from .auto_runs import PART as AUTO_PART
from .settings import BASELINE, REFERENCE, SUBJECT, SWEEP_PARTS, StudySettings, shifts_of, study_methods

#: RLP's own prompt settings, applied to another method's prompt for the low-rank variant (part 2).
LOWRANK = {"kind": "lowrank", "rank": 1, "dropout": 0.1, "a_std": 1.0, "b_std": 0.0}
RANKS = (1, 2, 3, 4, 8)
DROPOUTS = (0.0, 0.1, 0.2, 0.3, 0.5)
SMALL_GAUSSIAN = 0.02  # both factors N(0, 0.02²): the "two small Gaussians" init the default is compared with


def prompt_methods() -> list[str]:
    """The study's methods whose learned prompt can take any ``prompt.kind``, one-tower ablations left out."""
    out = []
    for name in study_methods():
        cls = get_method_class(name)
        if cls.learns_prompt and cls.requires_prompt_kind is None and cls.ablation_of is None:
            out.append(name)
    return out


def baseline_placement() -> list[str]:
    """The prompt methods placed as the baseline's prompt is (its class and subclasses: CoOp, KgCoOp)."""
    baseline = get_method_class(BASELINE)
    return [m for m in prompt_methods() if issubclass(get_method_class(m), baseline)]


def transfer_methods(settings: StudySettings) -> list[str]:
    """Part 5's methods: the untrained reference, the baseline's placement (the baseline alone when quick), the subject."""
    middle = [BASELINE] if settings.quick else baseline_placement()
    return [REFERENCE, *middle, SUBJECT]


@dataclass
class Variant:
    """One row of a part's tables: a method with settings changed from its recipe (the changes are the grid)."""

    name: str
    method: str
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)


def without_recipe_values(
    method: str, changes: Mapping[str, Mapping[str, Any]], shots: int
) -> dict[str, dict[str, Any]]:
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
        return [Variant(m, m) for m in study_methods()]
    if part == "lowrank":
        methods = prompt_methods() if not quick else baseline_placement()
        return [v for m in methods for v in (Variant(m, m), Variant(f"{m}+lowrank", m, {"prompt": dict(LOWRANK)}))]
    if part == "rank":
        ranks = RANKS if not quick else (1, 2, 4)
        out = []
        for alpha in (None, 1.0):
            for r in ranks:
                suffix = "" if alpha is None else ", α/r"
                out.append(
                    Variant(
                        f"rlp r={r}{' (=n)' if r == 4 else ''}{suffix}",
                        SUBJECT,
                        {"prompt": {"rank": r, "alpha": alpha}},
                    )
                )
        return out
    if part == "ablation":
        dropouts = DROPOUTS if not quick else (0.0, 0.1, 0.5)
        out = [Variant(f"rlp p={p}", SUBJECT, {"prompt": {"dropout": p}}) for p in dropouts]
        out += [
            Variant("rlp without P_fr (P_fr = 0)", SUBJECT, {"prompt": {"ctx_init": None}}),
            Variant("rlp small-Gaussian A, B", SUBJECT, {"prompt": {"a_std": SMALL_GAUSSIAN, "b_std": SMALL_GAUSSIAN}}),
            Variant("rlp AdamW", SUBJECT, {"train": {"optimizer": "adamw"}}),
        ]
        return out
    return []


def _specs(
    protocol: str,
    datasets: Sequence[str],
    variant: Variant,
    settings: StudySettings,
    shots: Sequence[int],
    targets: dict[str, list[str]] | None = None,
) -> list[RunSpec]:
    changes = without_recipe_values(variant.method, variant.changes, settings.shots)
    train = settings.train_overrides(protocol)
    specs = make_specs(
        protocol,
        datasets,
        [variant.method],
        settings.seeds,
        shots,
        backbone=settings.backbone,
        data_root=settings.data_root,
        grid=[changes],
        targets=targets,
        base_overrides={"backbone": {"precision": "fp32"}, **({"train": train} if train else {})},
    )
    return specs


@dataclass
class Plan:
    """Every run of the study, by part and variant, and the variants skipped with their reason."""

    runs: dict[tuple[str, str], list[RunSpec]] = field(default_factory=dict)  # (part, variant name) -> specs
    variants: dict[str, list[Variant]] = field(default_factory=dict)
    skipped: dict[tuple[str, str], str] = field(default_factory=dict)  # (part, variant name) -> reason

    def all_specs(self) -> list[RunSpec]:
        """Each run once (parts share runs whose settings are equal), ordered seed by seed, dataset by dataset within
        each part, every variant of a (dataset, seed) together: a study cut short (``--report-only``) then holds
        complete paired comparisons for the seeds it reached, not one method's runs without the other's."""
        seen, out = set(), []
        for part_index, specs in enumerate(self.runs.values()):
            for spec in specs:
                key = (spec.protocol, spec.dataset, spec.tag(), spec.shots, spec.seed, spec_settings_hash(spec))
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


@dataclass
class StudyResults:
    """The finished runs of one study: each run folder (under ``folder``, as text) → its ``result.json``. Passed to
    every step that reads results, so that two studies in one process never share a results folder."""

    folder: Path
    runs: dict[str, dict] = field(default_factory=dict)

    def key(self, spec: RunSpec) -> str:
        return str(spec.run_dir(self.folder))

    def of(self, specs: Sequence[RunSpec]) -> list[tuple[str, dict]]:
        """(run folder, result) of each finished run among ``specs``, in their order."""
        return [(self.key(s), self.runs[self.key(s)]) for s in specs if self.key(s) in self.runs]


def method_can_run(spec: RunSpec, backbone: Any) -> str | None:
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
    methods = transfer_methods(settings)
    shot_counts = [1, 2, 4, 8, 16] if not settings.quick else [1, 4]
    shifts = shifts_of(settings)
    datasets = list(settings.sweep_datasets or settings.datasets or [])
    source = datasets[0]
    # cross-dataset targets are only evaluated (no training): every other dataset of the study, sweep or not
    cross_targets = [d for d in (settings.datasets or datasets) if d != source]
    dg_source = next((d for d in datasets if shifts.get(d)), None) or next(iter(shifts), None)
    groups = []  # transfer first (a few runs), then the few-shot curves (many): a study cut short keeps the former
    for m in methods:
        if cross_targets:
            groups.append(
                Group(
                    "cross-dataset", "cross-dataset", [source], Variant(m, m), [settings.shots], {source: cross_targets}
                )
            )
        if dg_source:
            groups.append(
                Group(
                    "domain-gen",
                    "domain-gen",
                    [dg_source],
                    Variant(m, m),
                    [settings.shots],
                    {dg_source: list(shifts[dg_source])},
                )
            )
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
    if AUTO_PART in settings.parts:  # part 7's runs span protocols and generated folders (.auto_runs)
        plan.variants[AUTO_PART] = [Variant(name, method, changes) for name, method, changes in ARMS]
        plan.runs.update(auto_runs(settings))
    for key, specs in list(plan.runs.items()):
        if specs and specs[0].method in settings.exclude:
            plan.skipped[key] = f"excluded from this study (--exclude {specs[0].method})"
            del plan.runs[key]
    if backbone is not None:
        verdicts: dict[str, str | None] = {}
        for key, specs in list(plan.runs.items()):
            probe = specs[0]
            digest = spec_settings_hash(probe)
            if digest not in verdicts:
                verdicts[digest] = method_can_run(probe, backbone)
            if verdicts[digest] is not None:
                plan.skipped[key] = verdicts[digest]
                del plan.runs[key]
    return plan
