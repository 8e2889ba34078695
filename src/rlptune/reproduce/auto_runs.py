"""Part 7 (``auto``) of the study: which runs it needs, and the small custom folders it makes.

Three arms, paired by (dataset, seed, shots): zero-shot, RLP's official recipe, and RLP with ``--auto``
(``auto.rank_rule = both``: the validation grid, with the spectrum rule's rank recorded beside the choice). They run

- few-shot with 1, 4 and 16 shots on the study's sweep datasets (``--sweep-datasets``, default every dataset);
- base-to-new on the same datasets at the study's shots;
- on three custom folders of the size a practitioner brings (:data:`CUSTOM_FOLDERS`), each made by the study from the
  backbone's own dataset suite (the rendered images of the first classes of one of its datasets) and loaded through
  the normal image-folder loader (``data.dataset = folder``: its seeded 50/20/30 split).

The folders are written once under the cache folder (``study-folders/<backbone>/<name>``), the same bytes on every
machine; a finished folder carries a ``COMPLETE`` stamp and is reused. The official-recipe runs share their folders
with part 5's few-shot curves and part 1's base-to-new runs when the settings are equal.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .. import io
from ..data import load_dataset
from ..errors import RlptuneError
from ..sweeps.runner import RunSpec, make_specs
from .settings import REFERENCE, SUBJECT, StudySettings, SUITES, suite

PART = "auto"
#: The ``--auto`` arm's settings: the default grid, and the spectrum rule's rank recorded beside it.
AUTO_SETTINGS: dict[str, dict[str, Any]] = {"auto": {"enabled": True, "rank_rule": "both"}}
#: The arms: (name in the tables, method, settings changed from its recipe).
ARMS: tuple[tuple[str, str, dict[str, dict[str, Any]]], ...] = (
    ("zero-shot", REFERENCE, {}),
    ("official recipe", SUBJECT, {}),
    ("--auto", SUBJECT, AUTO_SETTINGS),
)
FEW_SHOTS = (1, 4, 16)
#: Shots of a custom-folder run: the folder loader's training split is 10-15 images per class, so every one is used.
FOLDER_SHOTS = 16
STAMP = "COMPLETE"


@dataclass(frozen=True)
class CustomFolder:
    """A practitioner-sized image folder: the first ``classes`` classes of the suite's dataset number ``source``,
    ``per_class`` images each (its training images first, then its test images)."""

    name: str
    source: int
    classes: int
    per_class: int


CUSTOM_FOLDERS = (
    CustomFolder("newcomer-5x20", 0, 5, 20),  # the newcomer's case of issue 29 (micro2-shapes on micro-v2)
    CustomFolder("few-8x10", 1, 8, 10),
    CustomFolder("wide-10x30", 4, 10, 30),
)
#: ``--quick``: one folder, 5 classes × 10 images.
QUICK_FOLDERS = (CustomFolder("newcomer-5x10", 0, 5, 10),)


def custom_folders(settings: StudySettings) -> list[CustomFolder]:
    """The part's custom folders; none on a backbone without a dataset suite to make them from."""
    if settings.backbone not in SUITES:
        return []
    return list(QUICK_FOLDERS if settings.quick else CUSTOM_FOLDERS)


def few_shots(settings: StudySettings) -> list[int]:
    return [4] if settings.quick else list(FEW_SHOTS)


def folder_root(settings: StudySettings, folder: CustomFolder) -> Path:
    """Where the study keeps a custom folder (under the cache folder: made once, the same on every machine)."""
    return io.default_cache_dir() / "study-folders" / settings.backbone / folder.name


def make_custom_folder(settings: StudySettings, folder: CustomFolder) -> Path:
    """Write ``<root>/<class>/<i>.png`` from the suite's rendered images (once; reused when stamped complete)."""
    root = folder_root(settings, folder)
    if (root / STAMP).is_file():
        return root
    datasets = suite(settings.backbone)[0]
    source = datasets[folder.source % len(datasets)]
    splits = load_dataset(source)
    if folder.classes > len(splits.classnames):
        raise RlptuneError(
            f"reproduce --parts auto: {source} has {len(splits.classnames)} classes; the custom folder "
            f"{folder.name} needs {folder.classes}"
        )
    items = [*splits.train, *splits.test]
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root.parent))
    try:
        for label in range(folder.classes):
            mine = [it for it in items if it.label == label][: folder.per_class]
            if len(mine) < folder.per_class:
                raise RlptuneError(
                    f"reproduce --parts auto: {source} class {splits.classnames[label]!r} has "
                    f"{len(mine)} images; the custom folder {folder.name} needs {folder.per_class}"
                )
            target = staging / splits.classnames[label]
            target.mkdir()
            for i, item in enumerate(mine):
                shutil.copyfile(splits.abspath(item), target / f"{i:03d}.png")
        (staging / STAMP).write_text(
            f"{source} classes 0-{folder.classes - 1}, {folder.per_class} images each\n", encoding="utf-8"
        )
        if root.exists():  # a half-made folder of an interrupted study (no stamp): made again
            shutil.rmtree(root)
        os.replace(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _arm_specs(
    protocol: str,
    datasets: Sequence[str],
    arm: tuple[str, str, dict],
    settings: StudySettings,
    shots: Sequence[int],
    data_root: str | None,
) -> list[RunSpec]:
    _, method, changes = arm  # none of them a recipe value: the official arm shares its folders with parts 1 and 5
    train = settings.train_overrides(protocol)
    return make_specs(
        protocol,
        datasets,
        [method],
        settings.seeds,
        shots,
        backbone=settings.backbone,
        data_root=data_root,
        grid=[changes],
        base_overrides={"backbone": {"precision": "fp32"}, **({"train": train} if train else {})},
    )


def block_name(protocol: str, folder: CustomFolder | None = None) -> str:
    return f"folder {folder.name}" if folder else protocol


def run_key(block: str, arm: str) -> tuple[str, str]:
    """The plan's key of one arm's runs in one block (few-shot, base2new, one custom folder)."""
    return (PART, f"{block} | {arm}")


def split_key(name: str) -> tuple[str, str]:
    block, _, arm = name.partition(" | ")
    return block, arm


def auto_runs(settings: StudySettings) -> dict[tuple[str, str], list[RunSpec]]:
    """Every run of the part, keyed by :func:`run_key`; the custom folders are made first (the specs resolve them)."""
    datasets = list(settings.sweep_datasets or settings.datasets or [])
    runs: dict[tuple[str, str], list[RunSpec]] = {}
    for arm in ARMS:
        runs[run_key(block_name("few-shot"), arm[0])] = _arm_specs(
            "few-shot", datasets, arm, settings, few_shots(settings), settings.data_root
        )
        runs[run_key(block_name("base2new"), arm[0])] = _arm_specs(
            "base2new", datasets, arm, settings, [settings.shots], settings.data_root
        )
    for folder in custom_folders(settings):
        root = str(make_custom_folder(settings, folder))
        for arm in ARMS:
            specs = _arm_specs("few-shot", ["folder"], arm, settings, [FOLDER_SHOTS], root)
            for spec in specs:  # the folders share the dataset name "folder": their runs are told apart by label
                spec.label = f"{spec.tag()}@{folder.name}"
            runs[run_key(block_name("few-shot", folder), arm[0])] = specs
    return runs


def dataset_label(spec: RunSpec) -> str:
    """The dataset a run is paired and tabled by: a custom folder by its name."""
    return Path(spec.data_root).name if spec.dataset == "folder" and spec.data_root else spec.dataset
