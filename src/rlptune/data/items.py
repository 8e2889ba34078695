"""The data model every loader produces and every engine consumes.

A dataset is a list of :class:`Item` (an image path relative to a root, an integer label, a class name) in three
splits, plus the ordered class names. Paths stay relative so that split and few-shot files are portable between
machines; :meth:`DatasetSplits.abspath` resolves them against the root.
"""

from __future__ import annotations

import numbers
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import RlptuneError

SPLITS = ("train", "val", "test")


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

    def validate(
        self,
        source: str | Path | None = None,
        *,
        where: Mapping[str, Sequence[str]] | None = None,
        same_file: Mapping[str, str] | None = None,
    ) -> "DatasetSplits":
        """Check the dataset against the one rule every loader's result obeys; raise one line naming ``source``.

        The rule (so that no loader accepts what another refuses): the dataset has images; every label is
        ``0..n-1`` and every item carries its label's class name; an image has one label and sits in one split (an
        image in train and test would leak between training and evaluation); and when there is a training split,
        every class has at least one training image (test-only datasets, such as the ImageNet shifts, have none).

        ``where`` gives, per split, where each item came from (``"train[3]"``, ``"line 7"``) for the messages;
        ``same_file`` maps item paths that reach their file through a symlink to the path of that file, so that a
        link in ``test/`` to an image in ``train/`` counts as the same image.
        """
        check_rule(self, source or self.root, where, same_file)
        return self


def check_rule(
    splits: DatasetSplits,
    source: str | Path,
    where: Mapping[str, Sequence[str]] | None = None,
    same_file: Mapping[str, str] | None = None,
) -> None:
    """The one validation over the items of any loader (see :meth:`DatasetSplits.validate`)."""
    same_file = same_file or {}
    if not _obeys_rule(splits, same_file):  # the common case is decided with whole-list operations (ImageNet: 1.3M)
        _find_fault(splits, source, where, same_file)


def _find_fault(
    splits: DatasetSplits, source: str | Path, where: Mapping[str, Sequence[str]] | None, same_file: Mapping[str, str]
) -> None:
    """Item by item: raise the one line naming the first fault (nothing to raise for an image listed twice in one
    split under one label, which is allowed)."""
    names = splits.classnames
    n = len(names)
    seen: dict[str, tuple[str, int, str, str]] = {}  # file -> (split, label, where, path) of its first listing
    counts = {split: [0] * n for split in SPLITS}
    for split in SPLITS:
        places = where.get(split) if where is not None else None
        for i, item in enumerate(getattr(splits, split)):
            label = item.label
            if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 <= label < n:
                raise RlptuneError(f"{source}: {split} item {item.path!r} has label {label!r}, expected 0..{n - 1}")
            here = places[i] if places is not None else f"{split}[{i}]"
            if item.classname != names[label]:
                raise RlptuneError(
                    f"{source}: {here}: image {item.path!r} has class name {item.classname!r} but label {label} is "
                    f"{names[label]!r}"
                )
            counts[split][label] += 1
            key = same_file.get(item.path, item.path)
            first = seen.get(key)
            if first is None:
                seen[key] = (split, label, here, item.path)
                continue
            first_split, first_label, first_where, first_path = first
            via = "" if first_path == item.path else f" (the same file as {first_path!r})"
            if first_label != label:
                raise RlptuneError(
                    f"{source}: {here}: image {item.path!r}{via} is labelled {names[label]!r} but {first_where} "
                    f"labels it {names[first_label]!r}; an image has one label"
                )
            if first_split != split:
                raise RlptuneError(
                    f"{source}: {here}: image {item.path!r}{via} is in the {split} split and also in {first_split} "
                    f"({first_where}); an image in two splits leaks between training and evaluation"
                )
    if not seen:
        raise RlptuneError(f"{source}: no images listed (train, val and test are all empty)")
    if splits.train:
        lacking = [label for label in range(n) if not counts["train"][label]]
        if lacking:
            label = lacking[0]
            elsewhere = ", ".join(f"{counts[s][label]} in {s}" for s in ("val", "test") if counts[s][label])
            more = f" ({len(lacking)} such classes)" if len(lacking) > 1 else ""
            raise RlptuneError(
                f"{source}: class {names[label]!r} (label {label}) has no training images"
                f"{' but ' + elsewhere if elsewhere else ''}{more}; every class needs at least one image in train"
            )
    else:
        lacking = [label for label in range(n) if not any(counts[s][label] for s in SPLITS)]
        if lacking:
            more = f" ({len(lacking)} such classes)" if len(lacking) > 1 else ""
            raise RlptuneError(f"{source}: class {names[lacking[0]]!r} (label {lacking[0]}) has no images{more}")


def _obeys_rule(splits: DatasetSplits, same_file: Mapping[str, str]) -> bool:
    """True when the dataset surely obeys the rule; False sends it to :func:`check_rule`'s item-by-item pass, which
    finds and names the fault (or, for an image listed twice in one split with one label, finds none)."""
    names = splits.classnames
    n = len(names)
    keys: set[str] = set()
    total = 0
    labelled: dict[str, set[int]] = {}
    for split in SPLITS:
        items = getattr(splits, split)
        labels = [it.label for it in items]
        if labels:
            if set(map(type, labels)) != {int} or min(labels) < 0 or max(labels) >= n:
                return False
            if not all(map(operator.eq, map(names.__getitem__, labels), [it.classname for it in items])):
                return False
        paths = [it.path for it in items]
        keys.update(map(same_file.get, paths, paths) if same_file else paths)
        total += len(items)
        labelled[split] = set(labels)
    if total == 0 or len(keys) != total:
        return False
    covered = labelled["train"] if splits.train else labelled["train"] | labelled["val"] | labelled["test"]
    return len(covered) == n


def relabel(items: Sequence[Item], keep_labels: Sequence[int]) -> list[Item]:
    """Keep items whose label is in ``keep_labels`` and renumber labels 0..k-1 in the order given."""
    mapping = {old: new for new, old in enumerate(keep_labels)}
    return [Item(it.path, mapping[it.label], it.classname) for it in items if it.label in mapping]
