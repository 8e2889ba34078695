"""What the RLP study runs on, its parts, and the methods it takes from the registry.

The study's methods are read, not listed: every registered method that has an official recipe
(:func:`rlptune.recipes.recipe_methods`, in the catalogue's order) with the method under study, :data:`SUBJECT`, last.
A method registered from outside the package that brings a recipe joins the study; one without a recipe has no
official settings to compare at and is left out.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from .. import recipes, registry
from ..errors import RlptuneError

#: The paper's parts, in order: what the study runs unless ``--parts`` says otherwise.
PAPER_PARTS = ("base2new", "lowrank", "rank", "ablation", "transfer", "density")
#: Every part (the command's ``--parts`` choices): the paper's, then ``auto`` (``--auto`` vs the official recipe vs
#: zero-shot, beyond the paper: asked for by name).
PARTS = (*PAPER_PARTS, "auto")
#: The parts that ``--sweep-datasets`` restricts (parts 1-2 always cover every dataset).
SWEEP_PARTS = ("rank", "ablation", "transfer")
#: The protocols of the transfer part (a skipped entry of that part names one of them).
TRANSFER_PROTOCOLS = ("few-shot", "cross-dataset", "domain-gen")
#: The paper's roles: the method under study, the method its claims compare against, and the untrained reference.
SUBJECT, BASELINE, REFERENCE = "rlp", "coop", "zeroshot"
#: The dataset suite (module, datasets attribute, shifts attribute) a micro backbone comes with.
SUITES: dict[str, tuple[str, str, str]] = {
    "micro": ("rlptune.micro.suite", "MICRO_DATASETS", "MICRO_SHIFTS"),
    "micro-v2": ("rlptune.micro.v2.suite", "MICRO2_DATASETS", "MICRO2_SHIFTS"),
}


def study_methods() -> list[str]:
    """Every registered method with an official recipe, in the recipe catalogue's order, the subject last."""
    known = set(registry.method_names())
    methods = [m for m in recipes.recipe_methods() if m in known and m != SUBJECT]
    return [*methods, SUBJECT]


@dataclass
class StudySettings:
    """What the study runs on and how much of it; ``quick`` shrinks every axis for CI."""

    backbone: str = "micro-v2"  # the micro CLIP on which every method runs (v1 "micro" skips the ViT methods)
    datasets: list[str] | None = None
    data_root: str | None = None
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    shots: int = 16
    epochs: int | None = None  # None: every method's official epochs
    parts: list[str] = field(default_factory=lambda: list(PAPER_PARTS))
    quick: bool = False
    sweep_datasets: list[str] | None = None  # parts 3-5 on these (default: ``datasets``)
    exclude: list[str] = field(default_factory=list)  # methods left out (reported as skipped, with this reason)

    def resolved(self) -> "StudySettings":
        """Fill the suite's datasets and apply ``quick``; check the parts."""
        unknown = [p for p in self.parts if p not in PARTS]
        if unknown:
            raise RlptuneError(f"reproduce --parts: unknown part {unknown[0]!r}; expected some of {', '.join(PARTS)}")
        datasets = list(self.datasets or suite(self.backbone)[0])
        methods = study_methods()
        unknown = [m for m in self.exclude if m not in methods]
        if unknown:
            raise RlptuneError(
                f"reproduce --exclude: {unknown[0]!r} is not one of the study's methods ({', '.join(methods)})"
            )
        strays = [d for d in (self.sweep_datasets or []) if d not in datasets]
        if strays:
            raise RlptuneError(
                f"reproduce --sweep-datasets: {strays[0]!r} is not among the study's datasets ({', '.join(datasets)})"
            )
        out = StudySettings(
            self.backbone,
            datasets,
            self.data_root,
            list(self.seeds),
            self.shots,
            self.epochs,
            list(self.parts),
            self.quick,
            list(self.sweep_datasets or datasets),
            list(self.exclude),
        )
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
        raise RlptuneError(
            f"reproduce --backbone {backbone}: no default datasets for this backbone; pass --datasets (and --data-root)"
        )
    module, datasets, shifts = SUITES[backbone]
    try:
        loaded = importlib.import_module(module)
    except ImportError:
        raise RlptuneError(
            f"reproduce --backbone {backbone}: its dataset suite ({module}) is not installed; pass --datasets"
        )
    return list(getattr(loaded, datasets)), dict(getattr(loaded, shifts))


def shifts_of(settings: StudySettings) -> dict[str, list[str]]:
    """The shifted variants of the study's suite; none for a backbone without one."""
    try:
        return suite(settings.backbone)[1]
    except RlptuneError:
        return {}
