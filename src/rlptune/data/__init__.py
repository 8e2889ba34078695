"""Datasets, few-shot draws, base/new splits and image loading.

``load_dataset(name, root, **options)`` is the one entry point: ``name`` is a CoOp dataset (case-insensitive,
with aliases such as ``"eurosat"``, ``"flowers102"``, ``"imagenet-sketch"``), ``"folder"``, ``"csv"``,
``"split-json"``, or anything added with :func:`register_dataset` (e.g. the micro suite's ``"micro-*"`` names).
Every loader returns validated :class:`DatasetSplits` whose item paths are relative to ``splits.root``.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Callable, Iterable

from .. import registry
from ..errors import RlptuneError
from .coop import (
    COOP_11,
    COOP_DATASETS,
    COOP_TEMPLATES,
    EUROSAT_CLASSNAMES,
    IMAGENET_SHIFTS,
    load_coop,
    prompt_classname,
)
from .custom import load_csv, load_split_json
from .fewshot import base_new, fewshot_splits, sample_per_label, subsample_classes
from .folder import folder_classname, load_folder
from .images import MAX_IMAGE_PIXELS, SkippedImage, check_images, load_image, skipped_report
from .items import DatasetSplits, Item, relabel
from .paths import resolve_inside

#: Environment variable naming the folder that holds the CoOp datasets, used when ``root`` is not given.
DATA_ENV = "RLPTUNE_DATA"

Loader = Callable[..., DatasetSplits]

_LOADERS: dict[str, Loader] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in "-_ .")


_ROOTLESS: set[str] = set()  # datasets that need no root (generated ones, e.g. the micro suite)


def register_dataset(
    name: str, loader: Loader, *, aliases: Iterable[str] = (), overwrite: bool = False, needs_root: bool = True
) -> None:
    """Make ``loader(root, **options) -> DatasetSplits`` available to :func:`load_dataset` as ``name``.

    Names are matched case-insensitively, ignoring ``-``, ``_``, ``.`` and spaces. Registering a name (or alias)
    that is already taken raises unless ``overwrite`` is true.
    """
    if not isinstance(name, str) or not _key(name):
        raise RlptuneError(f"dataset name {name!r}: expected a non-empty string")
    if not callable(loader):
        raise RlptuneError(f"dataset {name!r}: loader must be callable")
    keys = [_key(name)] + [_key(a) for a in aliases]
    if not overwrite:
        for key in keys:
            if key in _ALIASES and _ALIASES[key] != name:
                raise RlptuneError(f"dataset name {key!r} is already registered for {_ALIASES[key]!r}")
        if name in _LOADERS:
            raise RlptuneError(f"dataset {name!r} is already registered")
    _LOADERS[name] = loader
    registry.note_plugin_module(getattr(loader, "__module__", None))  # a sweep's workers import it too
    if not needs_root:
        _ROOTLESS.add(name)
    for key in keys:
        _ALIASES[key] = name


def unregister_dataset(name: str) -> None:
    """Remove a registered dataset and its aliases (for tests and plug-ins that replace a loader)."""
    canonical = canonical_name(name)
    del _LOADERS[canonical]
    _ROOTLESS.discard(canonical)
    for key in [k for k, v in _ALIASES.items() if v == canonical]:
        del _ALIASES[key]


def list_datasets() -> list[str]:
    """Registered dataset names (canonical spelling), CoOp datasets first, then plug-ins' (the micro suite)."""
    registry.load_builtin_plugins()
    return list(_LOADERS)


def canonical_name(name: str) -> str:
    """The registered name ``name`` refers to; raises with the list of valid names."""
    if not (isinstance(name, str) and _key(name) in _ALIASES):
        registry.load_builtin_plugins()  # built-in plug-ins register their datasets on import
    canonical = _ALIASES.get(_key(name)) if isinstance(name, str) else None
    if canonical is None:
        raise RlptuneError(f"unknown dataset {name!r}; expected one of {', '.join(list_datasets())}")
    return canonical


def load_dataset(name: str, root: str | os.PathLike | None = None, **options) -> DatasetSplits:
    """Load dataset ``name`` from ``root`` (default: ``$RLPTUNE_DATA``); ``options`` go to its loader.

    For ``"csv"`` and ``"split-json"``, ``root`` is the CSV / JSON file (image paths are relative to its folder
    unless ``image_root=`` is given); for ``"folder"`` it is the image folder; for a CoOp dataset it is the folder
    holding the datasets (CoOp's ``$DATA``) or the dataset's own folder.
    """
    canonical = canonical_name(name)
    if root is None and canonical not in _ROOTLESS:
        env = os.environ.get(DATA_ENV)
        if not env:
            raise RlptuneError(f"dataset {canonical}: no data root given and ${DATA_ENV} is not set")
        root = env
    loader = _LOADERS[canonical]
    try:
        signature = inspect.signature(loader)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(root, **options)
        except TypeError:
            valid = [
                p.name
                for i, p in enumerate(signature.parameters.values())
                if i > 0 and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
            unknown = [k for k in options if k not in valid]
            raise RlptuneError(
                f"dataset {canonical}: unknown option(s) {', '.join(unknown) or '(bad arguments)'}; valid options: "
                f"{', '.join(valid) or 'none'}"
            ) from None
    splits = loader(root, **options)
    if canonical not in _SELF_CHECKED:
        # a plug-in's loader: its result obeys the same rule as the built-in loaders' (they check it themselves,
        # where they still know which line or file an item came from)
        if not isinstance(splits, DatasetSplits):
            raise RlptuneError(
                f"dataset {canonical}: its loader returned a {type(splits).__name__}, expected DatasetSplits"
            )
        splits.validate(f"dataset {canonical}")
    return splits


def _csv_loader(
    root,
    image_root=None,
    *,
    classnames=None,
    name=None,
    template="a photo of a {}.",
    fractions=(0.5, 0.2, 0.3),
    seed=1,
    check_files=True,
):
    return load_csv(
        root,
        image_root,
        classnames=classnames,
        name=name,
        template=template,
        fractions=fractions,
        seed=seed,
        check_files=check_files,
    )


def _split_json_loader(root, image_root=None, *, name=None, template="a photo of a {}.", check_files=True):
    return load_split_json(root, image_root, name=name, template=template, check_files=check_files)


for _name, _spec in COOP_DATASETS.items():
    register_dataset(_name, functools.partial(load_coop, _name), aliases=_spec.aliases)
register_dataset("folder", load_folder, aliases=("imagefolder", "image-folder"))
register_dataset("csv", _csv_loader)
register_dataset("split-json", _split_json_loader, aliases=("json", "splitjson"))
_SELF_CHECKED = frozenset(_LOADERS)  # the loaders above end with DatasetSplits.validate


__all__ = [
    "COOP_11",
    "COOP_DATASETS",
    "COOP_TEMPLATES",
    "DATA_ENV",
    "DatasetSplits",
    "EUROSAT_CLASSNAMES",
    "IMAGENET_SHIFTS",
    "Item",
    "MAX_IMAGE_PIXELS",
    "SkippedImage",
    "base_new",
    "canonical_name",
    "check_images",
    "fewshot_splits",
    "folder_classname",
    "list_datasets",
    "load_coop",
    "load_csv",
    "load_dataset",
    "load_folder",
    "load_image",
    "load_split_json",
    "prompt_classname",
    "register_dataset",
    "relabel",
    "resolve_inside",
    "sample_per_label",
    "skipped_report",
    "subsample_classes",
    "unregister_dataset",
]
