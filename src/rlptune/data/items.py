"""The data model every loader produces and every engine consumes.

A dataset is a list of :class:`Item` (an image path relative to a root, an integer label, a class name) in three
splits, plus the ordered class names. Paths stay relative so that split and few-shot files are portable between
machines; :meth:`DatasetSplits.abspath` resolves them against the root.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import RlptuneError


@dataclass(frozen=True)
class Item:
    """One labelled image: ``path`` is relative to the dataset root."""

    path: str
    label: int
    classname: str


@dataclass
class DatasetSplits:
    """Train / val / test items of one dataset, with class names indexed by label.

    ``root`` is the folder item paths are relative to. ``name`` identifies the dataset in results and caches.
    ``template`` is the hand-crafted zero-shot template the literature uses for this dataset (e.g.
    ``"a centered satellite photo of {}."`` for EuroSAT).
    """

    name: str
    root: Path
    classnames: list[str]
    train: list[Item]
    val: list[Item] = field(default_factory=list)
    test: list[Item] = field(default_factory=list)
    template: str = "a photo of a {}."
    hflip_invariant: bool = True  # False when mirroring changes the label (left/right positions)

    def abspath(self, item: Item) -> Path:
        return Path(self.root) / item.path

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, name: str) -> list[Item]:
        if name not in ("train", "val", "test"):
            raise RlptuneError(f"unknown split {name!r}: expected one of train, val, test")
        return getattr(self, name)

    def validate(self, source: str | Path | None = None) -> "DatasetSplits":
        """Check labels against class names; raise a one-line error naming ``source`` on a mismatch."""
        where = source or self.root
        n = len(self.classnames)
        for split_name in ("train", "val", "test"):
            for item in getattr(self, split_name):
                if not 0 <= item.label < n:
                    raise RlptuneError(
                        f"{where}: {split_name} item {item.path!r} has label {item.label}, expected 0..{n - 1}"
                    )
        return self


def relabel(items: Sequence[Item], keep_labels: Sequence[int]) -> list[Item]:
    """Keep items whose label is in ``keep_labels`` and renumber labels 0..k-1 in the order given."""
    mapping = {old: new for new, old in enumerate(keep_labels)}
    return [Item(it.path, mapping[it.label], it.classname) for it in items if it.label in mapping]
