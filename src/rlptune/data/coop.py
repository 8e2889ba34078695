"""The 11 CoOp datasets and the 4 ImageNet shifts, read exactly as the CoOp / CoCoOp toolkit reads them.

Folder layouts, split files, class names and zero-shot templates follow CoOp's ``datasets/*.py``,
``DATASETS.md`` and ``trainers/zsclip.py`` (see ``docs/DATASETS.md`` for each layout). ``root`` is the folder
that holds all datasets (CoOp's ``$DATA``, e.g. ``$DATA/eurosat/``) or the dataset's own folder.

Differences from the toolkit, all deliberate:

* a missing ``split_zhou_<Name>.json`` is an error (the toolkit would draw a new random split, which would not be
  comparable); download the published file instead;
* ImageNet's ``val`` split is left empty (the toolkit sets val = test, which is never used for model selection);
* image files inside ImageNet-style class folders are sorted (the toolkit keeps ``os.listdir`` order, which
  depends on the file system); pass ``file_order="listdir"`` to reproduce a run on the same file system;
* ImageNet-V2/-Sketch/-A/-R are test-only: their data is in ``test`` (the toolkit also copies it to train);
* every dataset obeys the one rule of every loader (``DatasetSplits.validate``): an image listed in two splits or
  under two labels, or a class without training images, is an error (the toolkit accepts them silently);
* what archive tools and operating systems leave in class folders (``__MACOSX/``, ``._*``, ``.DS_Store``,
  ``Thumbs.db``, ``desktop.ini``, hidden names) is skipped with one warning, never read as a class or an image.

Class names are kept exactly as the protocol has them (e.g. OxfordPets ``"american_bulldog"``, UCF101
``"Apply_Eye_Makeup"``); the toolkit replaces ``_`` by a space only when it writes a prompt - use
:func:`prompt_classname` there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import RlptuneError
from .common import (
    SPLIT_NAMES,
    Entry,
    Leftovers,
    build_splits,
    is_leftover,
    list_subdirs,
    read_folder_names,
    read_json_file,
    read_name_list,
    read_text,
)
from .custom import parse_split_object
from .items import DatasetSplits, Item
from .paths import real_root

#: CoOp's EuroSAT class-name rewrite (folder name -> class name), applied when the split file has folder names.
EUROSAT_CLASSNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@dataclass(frozen=True)
class CoopDataset:
    """Where one dataset lives and how it is read.

    ``folder``: the dataset's folder under ``$DATA``; ``image_dir``: the folder (inside it) item paths are relative
    to; ``split_file``: the split file inside ``folder``; ``kind``: ``split`` (a ``split_zhou`` JSON),
    ``aircraft`` (FGVCAircraft's variant files), ``imagenet`` (class folders + ``classnames.txt``) or ``shift``
    (a test-only ImageNet variant).
    """

    name: str
    folder: str
    image_dir: str
    template: str
    kind: str
    split_file: str | None = None
    aliases: tuple[str, ...] = ()
    source: str = ""
    classnames_file: str | None = None
    extra: dict = field(default_factory=dict)


def _split_dataset(name, folder, image_dir, template, aliases, source, **extra) -> CoopDataset:
    return CoopDataset(
        name, folder, image_dir, template, "split", f"split_zhou_{name}.json", aliases, source, extra=extra
    )


COOP_DATASETS: dict[str, CoopDataset] = {
    d.name: d
    for d in [
        CoopDataset(
            "ImageNet",
            "imagenet",
            "images",
            "a photo of a {}.",
            "imagenet",
            None,
            ("imagenet-1k", "ilsvrc"),
            "https://image-net.org (+ classnames.txt from the CoOp repository)",
            "classnames.txt",
        ),
        _split_dataset(
            "Caltech101",
            "caltech-101",
            "101_ObjectCategories",
            "a photo of a {}.",
            ("caltech", "caltech-101"),
            "http://www.vision.caltech.edu/Image_Datasets/Caltech101/",
        ),
        _split_dataset(
            "OxfordPets",
            "oxford_pets",
            "images",
            "a photo of a {}, a type of pet.",
            ("pets", "oxford-pets"),
            "https://www.robots.ox.ac.uk/~vgg/data/pets/",
        ),
        _split_dataset(
            "StanfordCars",
            "stanford_cars",
            "",
            "a photo of a {}.",
            ("cars", "stanford-cars"),
            "https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
        ),
        _split_dataset(
            "OxfordFlowers",
            "oxford_flowers",
            "jpg",
            "a photo of a {}, a type of flower.",
            ("flowers", "flowers102", "oxford-flowers", "flowers-102"),
            "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
            cat_to_name="cat_to_name.json",
        ),
        _split_dataset(
            "Food101",
            "food-101",
            "images",
            "a photo of {}, a type of food.",
            ("food", "food-101"),
            "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/",
        ),
        CoopDataset(
            "FGVCAircraft",
            "fgvc_aircraft",
            "images",
            "a photo of a {}, a type of aircraft.",
            "aircraft",
            None,
            ("aircraft", "fgvc", "fgvc-aircraft"),
            "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ (fgvc-aircraft-2013b, its data/ folder)",
            "variants.txt",
        ),
        _split_dataset(
            "SUN397",
            "sun397",
            "SUN397",
            "a photo of a {}.",
            ("sun",),
            "https://vision.princeton.edu/projects/2010/SUN/",
        ),
        _split_dataset(
            "DescribableTextures",
            "dtd",
            "images",
            "{} texture.",
            ("dtd", "textures"),
            "https://www.robots.ox.ac.uk/~vgg/data/dtd/",
        ),
        _split_dataset(
            "EuroSAT",
            "eurosat",
            "2750",
            "a centered satellite photo of {}.",
            ("euro-sat",),
            "https://github.com/phelber/EuroSAT (RGB version, folder 2750/)",
        ),
        _split_dataset(
            "UCF101",
            "ucf101",
            "UCF-101-midframes",
            "a photo of a person doing {}.",
            ("ucf",),
            "UCF-101-midframes.zip from the CoOp repository's DATASETS.md",
        ),
        CoopDataset(
            "ImageNetV2",
            "imagenetv2",
            "imagenetv2-matched-frequency-format-val",
            "a photo of a {}.",
            "shift",
            None,
            ("imagenet-v2",),
            "https://github.com/modestyachts/ImageNetV2 (matched-frequency)",
            "classnames.txt",
            extra={"numbered": True},
        ),
        CoopDataset(
            "ImageNetSketch",
            "imagenet-sketch",
            "images",
            "a photo of a {}.",
            "shift",
            None,
            ("imagenet-sketch", "sketch"),
            "https://github.com/HaohanWang/ImageNet-Sketch",
            "classnames.txt",
        ),
        CoopDataset(
            "ImageNetA",
            "imagenet-adversarial",
            "imagenet-a",
            "a photo of a {}.",
            "shift",
            None,
            ("imagenet-a", "imagenet-adversarial"),
            "https://github.com/hendrycks/natural-adv-examples",
            "classnames.txt",
        ),
        CoopDataset(
            "ImageNetR",
            "imagenet-rendition",
            "imagenet-r",
            "a photo of a {}.",
            "shift",
            None,
            ("imagenet-r", "imagenet-rendition"),
            "https://github.com/hendrycks/imagenet-r",
            "classnames.txt",
        ),
    ]
}

#: The hand-crafted zero-shot template of each dataset (CoOp's ``CUSTOM_TEMPLATES``).
COOP_TEMPLATES = {name: d.template for name, d in COOP_DATASETS.items()}

#: The 11 datasets of the few-shot / base-to-new / cross-dataset protocols, in the literature's table order.
COOP_11 = (
    "ImageNet",
    "Caltech101",
    "OxfordPets",
    "StanfordCars",
    "OxfordFlowers",
    "Food101",
    "FGVCAircraft",
    "SUN397",
    "DescribableTextures",
    "EuroSAT",
    "UCF101",
)
#: The four ImageNet shifts of the domain-generalisation protocol.
IMAGENET_SHIFTS = ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")


#: Each dataset's ``configs/datasets/<stem>.yaml`` stem in the official repositories (CoOp, KgCoOp, MaPLe, PromptSRC),
#: another spelling a recipe's dataset is known by (:func:`coop_name`).
CONFIG_STEMS = {
    "ImageNet": "imagenet",
    "Caltech101": "caltech101",
    "OxfordPets": "oxford_pets",
    "StanfordCars": "stanford_cars",
    "OxfordFlowers": "oxford_flowers",
    "Food101": "food101",
    "FGVCAircraft": "fgvc_aircraft",
    "SUN397": "sun397",
    "DescribableTextures": "dtd",
    "EuroSAT": "eurosat",
    "UCF101": "ucf101",
    "ImageNetV2": "imagenetv2",
    "ImageNetSketch": "imagenet_sketch",
    "ImageNetA": "imagenet_a",
    "ImageNetR": "imagenet_r",
}


def coop_spellings(name: str) -> tuple[str, ...]:
    """Every spelling of CoOp dataset ``name``: itself, its aliases and its official config stem."""
    spec = COOP_DATASETS[name]
    return (spec.name, *spec.aliases, CONFIG_STEMS[spec.name])


def coop_name(dataset: str | None) -> str | None:
    """The CoOp name of ``dataset`` (any case: the name, an alias or the official config stem); None for every
    other dataset. What a recipe's per-dataset rules and KgCoOp's per-dataset template are keyed by."""
    if not isinstance(dataset, str) or not dataset.strip():
        return None
    return _BY_SPELLING.get(dataset.strip().lower())


_BY_SPELLING = {spelling.lower(): name for name in COOP_DATASETS for spelling in coop_spellings(name)}


def prompt_classname(classname: str) -> str:
    """The class name as the toolkit puts it into a prompt: underscores become spaces."""
    return classname.replace("_", " ")


def dataset_dir(spec: CoopDataset, root: str | os.PathLike, marker: str | None = None) -> Path:
    """The dataset's own folder: ``root/<folder>`` if it holds the dataset (``marker`` exists there, by default
    the split file or classnames file), else ``root`` itself if it does."""
    root = Path(root)
    real_root(root)
    marker = marker or spec.split_file or spec.classnames_file or spec.image_dir
    for candidate in (root / spec.folder, root):
        if (candidate / marker).exists():
            return candidate
    raise RlptuneError(
        f"{spec.name}: {root / spec.folder / marker} not found; expected the {spec.name} layout under {root} "
        f"(see docs/DATASETS.md)"
    )


def load_coop(
    name: str,
    root: str | os.PathLike,
    *,
    split_file: str | os.PathLike | None = None,
    check_files: bool = True,
    file_order: str = "sorted",
) -> DatasetSplits:
    """Load CoOp dataset ``name`` (its canonical name, e.g. ``"EuroSAT"``) from ``root``.

    ``split_file`` overrides the dataset's split JSON; ``check_files`` (split-file datasets and FGVCAircraft)
    checks that every listed image exists; ``file_order`` (``"sorted"`` or ``"listdir"``) orders the images of
    ImageNet-style class folders.
    """
    if name not in COOP_DATASETS:
        raise RlptuneError(f"unknown CoOp dataset {name!r}; expected one of {', '.join(COOP_DATASETS)}")
    if file_order not in ("sorted", "listdir"):
        raise RlptuneError(f"file_order {file_order!r}: expected 'sorted' or 'listdir'")
    spec = COOP_DATASETS[name]
    loaders: dict[str, Callable[..., DatasetSplits]] = {
        "split": _load_split,
        "aircraft": _load_aircraft,
        "imagenet": _load_imagenet,
        "shift": _load_shift,
    }
    if split_file is not None and spec.kind != "split":
        raise RlptuneError(f"{spec.name}: has no split file; split_file applies to split-file datasets only")
    return loaders[spec.kind](spec, root, split_file=split_file, check_files=check_files, file_order=file_order)


def _load_split(spec: CoopDataset, root, *, split_file, check_files, file_order) -> DatasetSplits:
    if split_file is not None:
        ddir = dataset_dir(spec, root, marker=spec.image_dir or ".")
        path = Path(split_file)
    else:
        ddir = dataset_dir(spec, root)
        path = ddir / spec.split_file
    entries = parse_split_object(read_json_file(path, "split file"), path)
    if spec.name == "EuroSAT":
        entries = {
            s: [(p, lab, EUROSAT_CLASSNAMES.get(c, c), w) for p, lab, c, w in items] for s, items in entries.items()
        }
    cat_file = spec.extra.get("cat_to_name")
    if cat_file and (ddir / cat_file).exists():
        _check_cat_to_name(ddir / cat_file, entries, path)
    image_root = ddir / spec.image_dir if spec.image_dir else ddir
    if not image_root.is_dir():
        raise RlptuneError(f"{spec.name}: image folder {image_root} not found (see docs/DATASETS.md)")
    return build_splits(
        entries, name=spec.name, root=image_root, source=path, template=spec.template, check_files=check_files
    )


def _check_cat_to_name(cat_path: Path, entries: dict[str, list[Entry]], source: Path) -> None:
    """Flowers102: the split's class names must agree with ``cat_to_name.json`` (category id = label + 1)."""
    data = read_json_file(cat_path, "cat_to_name.json")
    if not isinstance(data, dict):
        raise RlptuneError(f"{cat_path}: expected a JSON object {{category id: class name}}")
    for split in SPLIT_NAMES:
        for _p, label, cname, where in entries[split]:
            expected = data.get(str(label + 1))
            if expected is not None and expected != cname:
                raise RlptuneError(
                    f"{source}: {where}: class name {cname!r} for label {label} disagrees with {cat_path.name} "
                    f"({expected!r})"
                )


def _load_aircraft(spec: CoopDataset, root, *, split_file, check_files, file_order) -> DatasetSplits:
    ddir = dataset_dir(spec, root)
    variants_path = ddir / "variants.txt"
    variants = read_name_list(variants_path)
    if not isinstance(variants, list):
        raise RlptuneError(f"{variants_path}: expected one variant name per line")
    label_of = {v: i for i, v in enumerate(variants)}
    entries: dict[str, list[Entry]] = {}
    for split in SPLIT_NAMES:
        path = ddir / f"images_variant_{split}.txt"
        items: list[Entry] = []
        for number, line in enumerate(read_text(path, "variant file").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.strip().split(" ")
            variant = " ".join(parts[1:])
            if len(parts) < 2 or variant not in label_of:
                raise RlptuneError(
                    f"{path}: line {number}: expected '<image id> <variant>' with a variant from variants.txt, "
                    f"got {line.strip()!r}"
                )
            items.append((parts[0] + ".jpg", label_of[variant], variant, f"{path.name} line {number}"))
        entries[split] = items
    return build_splits(
        entries,
        name=spec.name,
        root=ddir / spec.image_dir,
        source=ddir,
        template=spec.template,
        check_files=check_files,
        classnames=variants,
    )


class _Walk:
    """What one ImageNet-style load saw while listing class folders: the leftovers it skipped, and the items that
    reach their file through a symlink (so that a link from ``val/`` into ``train/`` is one image, not two)."""

    def __init__(self, image_root: Path):
        self.root = image_root
        self.leftovers = Leftovers(image_root)
        self.same_file: dict[str, str] = {}
        real = os.path.realpath(image_root)
        self._prefix = real if real.endswith(os.sep) else real + os.sep

    def items(self, rel: str, label: int, cname: str, file_order: str) -> list[Item]:
        """Every entry of class folder ``root/rel`` except leftovers, as the toolkit lists it (``os.listdir``)."""
        folder = self.root / rel
        try:
            with os.scandir(folder) as scan:
                entries = list(scan)
        except OSError as exc:
            raise RlptuneError(f"{folder}: cannot list class folder ({exc.strerror or exc})") from None
        kept = []
        for entry in entries:
            if is_leftover(entry.name):
                self.leftovers.add(entry.path, entry.is_dir(follow_symlinks=False))
            else:
                kept.append(entry)
        if file_order == "sorted":
            kept.sort(key=lambda e: e.name)
        if not kept:
            raise RlptuneError(f"{folder}: class folder has no images")
        moved = os.path.realpath(folder) != os.path.join(self._prefix, *rel.split("/"))
        out = []
        for entry in kept:
            path = f"{rel}/{entry.name}"
            if moved or entry.is_symlink():
                real = os.path.realpath(entry.path)
                key = real[len(self._prefix) :].replace(os.sep, "/") if real.startswith(self._prefix) else real
                if key != path:
                    self.same_file[path] = key
            out.append(Item(path, label, cname))
        return out


def _names_for(folders: list[str], mapping: dict[str, str], names_path: Path, image_dir: Path) -> list[str]:
    missing = [f for f in folders if f not in mapping]
    if missing:
        raise RlptuneError(
            f"{names_path}: class folder {missing[0]!r} (in {image_dir}) has no class name "
            f"({len(missing)} folder(s) missing)"
        )
    return [mapping[f] for f in folders]


def _load_imagenet(spec: CoopDataset, root, *, split_file, check_files, file_order) -> DatasetSplits:
    ddir = dataset_dir(spec, root)
    names_path = ddir / spec.classnames_file
    mapping = read_folder_names(names_path)
    image_root = ddir / spec.image_dir
    walk = _Walk(image_root)
    folders = list_subdirs(image_root / "train", walk.leftovers) if (image_root / "train").is_dir() else []
    if not folders:
        raise RlptuneError(f"{image_root / 'train'}: no class folders found; expected images/train/<wnid>/")
    val_folders = list_subdirs(image_root / "val", walk.leftovers) if (image_root / "val").is_dir() else []
    if val_folders != folders:
        raise RlptuneError(
            f"{image_root / 'val'}: expected the same {len(folders)} class folders as images/train, "
            f"found {len(val_folders)}"
        )
    classnames = _names_for(folders, mapping, names_path, image_root)
    train, test = [], []
    for label, folder in enumerate(folders):
        train += walk.items(f"train/{folder}", label, classnames[label], file_order)
        test += walk.items(f"val/{folder}", label, classnames[label], file_order)
    walk.leftovers.warn(image_root)
    splits = DatasetSplits(spec.name, image_root, classnames, train, [], test, spec.template)
    return splits.validate(image_root, same_file=walk.same_file)


def _load_shift(spec: CoopDataset, root, *, split_file, check_files, file_order) -> DatasetSplits:
    ddir = dataset_dir(spec, root)
    names_path = ddir / spec.classnames_file
    mapping = read_folder_names(names_path)
    image_root = ddir / spec.image_dir
    if not image_root.is_dir():
        raise RlptuneError(f"{spec.name}: image folder {image_root} not found (see docs/DATASETS.md)")
    walk = _Walk(image_root)
    if spec.extra.get("numbered"):
        # ImageNet-V2: folders 0..999 are the labels, in the order of classnames.txt.
        wnids = list(mapping)
        folders = [str(i) for i in range(len(wnids))]
        present = set(list_subdirs(image_root, walk.leftovers))
        absent = [f for f in folders if f not in present]
        if absent:
            raise RlptuneError(f"{image_root}: class folder {absent[0]!r} not found ({len(absent)} missing)")
        classnames = [mapping[w] for w in wnids]
    else:
        folders = list_subdirs(image_root, walk.leftovers)
        if not folders:
            raise RlptuneError(f"{image_root}: no class folders found")
        classnames = _names_for(folders, mapping, names_path, image_root)
    test: list[Item] = []
    for label, folder in enumerate(folders):
        test += walk.items(folder, label, classnames[label], file_order)
    walk.leftovers.warn(image_root)
    splits = DatasetSplits(spec.name, image_root, classnames, [], [], test, spec.template)
    return splits.validate(image_root, same_file=walk.same_file)
