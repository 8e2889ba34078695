"""An image folder as a dataset.

Two layouts are recognised:

* ``root/{train,val,test}/<class>/<image>`` - the splits are given (``val`` and ``test`` may be missing). Used when
  ``root`` holds a ``train`` folder and no folders other than ``train``, ``val`` and ``test``; a root that mixes
  split folders with other folders is an error naming them (the layout is never guessed).
* ``root/<class>/<image>`` - split per class with a seeded, stratified split (default 50/20/30; ``fractions`` and
  ``seed`` change it; the same seed always gives the same split).

Images may sit in sub-folders of a class folder. Class names are the folder names with underscores turned into
spaces (or looked up in ``classnames``: a mapping or a file of ``<folder> <class name>`` lines, as ImageNet's
``classnames.txt``); classes are sorted by folder name. A class folder without images is an error naming it.

What archive tools and operating systems leave behind (``__MACOSX/``, ``._*``, ``.DS_Store``, ``Thumbs.db``,
``desktop.ini``, any hidden name) is never a class or an image: it is skipped, and one warning says how much was
skipped and names the first. The result obeys the one rule of every loader (``DatasetSplits.validate``): an image
reached from two splits (through a symlink) is an error, and so is a class without training images (a class folder
only under ``test/``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import RlptuneError
from .common import (
    DEFAULT_FRACTIONS,
    DEFAULT_TEMPLATE,
    SPLIT_NAMES,
    Entry,
    Leftovers,
    build_splits,
    check_unique_classnames,
    list_images,
    list_subdirs,
    read_folder_names,
    stratified_split,
)
from .items import DatasetSplits
from .paths import real_root


def folder_classname(folder: str) -> str:
    """The class name of a folder: underscores become spaces, runs of spaces collapse."""
    return " ".join(folder.replace("_", " ").split())


def load_folder(
    root: str | os.PathLike,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 1,
    classnames: str | os.PathLike | Mapping[str, str] | None = None,
    name: str | None = None,
    template: str = DEFAULT_TEMPLATE,
) -> DatasetSplits:
    """Load an image folder in either layout (see the module docstring); item paths are relative to ``root``."""
    root = Path(root)
    real_root(root)
    leftovers = Leftovers(root)
    same_file: dict[str, str] = {}
    subdirs = list_subdirs(root, leftovers)
    mapping = _folder_names(classnames)
    split_dirs = [d for d in subdirs if d in SPLIT_NAMES]
    if split_dirs and len(split_dirs) != len(subdirs):  # never guess which layout a mixed root means
        others = [d for d in subdirs if d not in SPLIT_NAMES]
        shown = ", ".join(repr(d) for d in others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise RlptuneError(
            f"{root}: holds split folder(s) {', '.join(d + '/' for d in split_dirs)} and unexpected folder(s) "
            f"{shown}; expected only train/, val/, test/ (each with class folders) or only class folders"
        )
    if split_dirs and "train" not in split_dirs:
        raise RlptuneError(
            f"{root}: holds {', '.join(d + '/' for d in split_dirs)} but no train/ folder; expected "
            f"train/<class>/<image> (val/ and test/ optional) or only class folders"
        )
    if split_dirs:
        per_split = {s: list_subdirs(root / s, leftovers) if s in subdirs else [] for s in SPLIT_NAMES}
        folders = sorted(set().union(*per_split.values()))
        if not folders:
            raise RlptuneError(f"{root / 'train'}: no class folders found; expected train/<class>/<image>")
        label_of = {f: i for i, f in enumerate(folders)}
        names = [_name(f, mapping, root) for f in folders]
        entries: dict[str, list[Entry]] = {s: [] for s in SPLIT_NAMES}
        for split in SPLIT_NAMES:
            for folder in per_split[split]:
                images = _class_images(root / split / folder, root, leftovers, same_file)
                label = label_of[folder]
                entries[split].extend((p, label, names[label], p) for p in images)
    else:
        if not subdirs:
            raise RlptuneError(
                f"{root}: no class folders found; expected <root>/<class>/<image> or <root>/train/<class>/<image>"
            )
        names = [_name(f, mapping, root) for f in subdirs]
        groups = [
            (label, _class_images(root / folder, root, leftovers, same_file)) for label, folder in enumerate(subdirs)
        ]
        drawn = stratified_split(groups, fractions, seed)
        entries = {s: [(p, lab, names[lab], p) for p, lab in drawn[s]] for s in SPLIT_NAMES}
    _check_unique(names, root)
    leftovers.warn(root)
    return build_splits(
        entries,
        name=name or root.resolve().name or "folder",
        root=root,
        source=root,
        template=template,
        check_paths=False,  # rlptune listed these folders itself
        check_files=False,
        classnames=names,
        same_file=same_file,
    )


def _class_images(folder: Path, root: Path, leftovers: Leftovers, same_file: dict[str, str]) -> list[str]:
    images = list_images(folder, root, leftovers=leftovers, same_file=same_file)
    if not images:
        raise RlptuneError(f"{folder}: class folder has no images")
    return images


def _folder_names(classnames: object) -> Mapping[str, str] | None:
    if classnames is None:
        return None
    if isinstance(classnames, Mapping):
        return {str(k): str(v) for k, v in classnames.items()}
    return read_folder_names(classnames)


def _name(folder: str, mapping: Mapping[str, str] | None, root: Path) -> str:
    if mapping is None:
        name = folder_classname(folder)
        if not name:
            raise RlptuneError(f"{root / folder}: folder name gives an empty class name")
        return name
    if folder not in mapping:
        raise RlptuneError(f"{root / folder}: class folder {folder!r} has no entry in the classnames given")
    return mapping[folder]


def _check_unique(names: list[str], root: Path) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise RlptuneError(f"{root}: two class folders give the same class name {name!r}")
        seen[name] = i
    check_unique_classnames(names, root, "class folder names")
