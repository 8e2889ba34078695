"""One rule for every dataset loader (docs/RELIABILITY.md, "Loaders, one rule (round 3)").

Every loader - the CoOp layouts (split JSON, FGVCAircraft's variant files, ImageNet-style class folders), a split
JSON, a CSV, an image folder and a plug-in's loader - refuses an image in two splits or under two labels and a class
without training images, with one line naming the file, the image or class and the splits. Folder walkers skip what
archive tools and operating systems leave (``__MACOSX/``, ``._*``, ``.DS_Store``, ``Thumbs.db``, ...) and say so in
one warning. A CSV header with a repeated column is refused; integer-like labels follow one rule whatever their sign
or leading zeros. The property test writes one random dataset as an image folder, a CSV and a split JSON and checks
that the three loaders agree, on clean data and on data that breaks the rule.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlptune.cli import main
from rlptune.data import DatasetSplits, Item, load_csv, load_dataset, register_dataset, unregister_dataset
from rlptune.data.common import is_leftover, prompt_key
from rlptune.errors import RlptuneError

LEAK = "an image in two splits leaks between training and evaluation"
LEFTOVER_WARNING = "that archive tools and operating systems leave"
INTEGER_WARNING = "integer labels without a classnames file; the numbers are used as class names"


# -- helpers -------------------------------------------------------------------------------------------------------


def write(path: Path, content: str | bytes = b"x") -> Path:
    """A file (the loaders never decode images, so a byte is an image as far as these checks go)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def link(path: Path, target: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)
    return path


@contextlib.contextmanager
def warnings_of(name: str):
    """The messages logged under logger ``name`` (usable inside hypothesis examples, unlike caplog)."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger(name)
    handler = Keep(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def one_line_error(call: Callable[[], object]) -> str:
    with pytest.raises(RlptuneError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message, message
    return message


def eurosat(root: Path, split: dict) -> Path:
    """$DATA/eurosat with a split file and every image it lists (``./`` spellings name an image listed already)."""
    ddir = root / "eurosat"
    write(ddir / "split_zhou_EuroSAT.json", json.dumps(split))
    for entries in split.values():
        for rel, _label, _name in entries:
            if not (ddir / "2750" / rel).exists() and not rel.startswith("./"):
                write(ddir / "2750" / rel)
    return root


GOOD_EUROSAT = {
    "train": [["AnnualCrop/a.jpg", 0, "AnnualCrop"], ["Forest/b.jpg", 1, "Forest"]],
    "val": [["AnnualCrop/c.jpg", 0, "AnnualCrop"]],
    "test": [["AnnualCrop/d.jpg", 0, "AnnualCrop"], ["Forest/e.jpg", 1, "Forest"]],
}


def eurosat_with(tmp: Path, split_name: str, entry: list) -> Path:
    """A good EuroSAT split with one more ``entry`` in ``split_name``."""
    split = {k: list(v) for k, v in GOOD_EUROSAT.items()}
    split[split_name] = split[split_name] + [entry]
    return eurosat(tmp, split)


def aircraft(root: Path, lines: dict[str, list[str]]) -> Path:
    ddir = root / "fgvc_aircraft"
    write(ddir / "variants.txt", "707-320\nA300B4\n")
    for split, rows in lines.items():
        write(ddir / f"images_variant_{split}.txt", "\n".join(rows) + "\n")
        for row in rows:
            write(ddir / "images" / f"{row.split(' ')[0]}.jpg")
    return root


def imagenet(root: Path, train: dict[str, list[str]], val: dict[str, list[str]]) -> Path:
    ddir = root / "imagenet"
    write(ddir / "classnames.txt", "".join(f"{wnid} {wnid.upper()}\n" for wnid in sorted(train)))
    for split, folders in (("train", train), ("val", val)):
        for wnid, files in folders.items():
            (ddir / "images" / split / wnid).mkdir(parents=True, exist_ok=True)
            for name in files:
                write(ddir / "images" / split / wnid / name)
    return root


def image_folder(root: Path, files: list[str]) -> Path:
    for rel in files:
        write(root / rel)
    return root


SPLIT_FOLDER = ["train/red/a.png", "train/green/b.png", "test/red/c.png", "test/green/d.png"]


def split_json_file(tmp: Path, obj: dict) -> Path:
    for entries in obj.values():
        for rel, _label, _name in entries:
            if not rel.startswith("./"):
                write(tmp / rel)
    return write(tmp / "split.json", json.dumps(obj))


def csv_text(tmp: Path, text: str, images=("red/a.png", "red/b.png", "green/c.png", "green/d.png")) -> Path:
    for rel in images:
        write(tmp / rel)
    return write(tmp / "labels.csv", text)


# -- the catalogue of this section ---------------------------------------------------------------------------------
# id -> (prepare the data in a fresh tmp folder and return the loading call, fragments of its one line)

CASES: dict[str, tuple[Callable[[Path], Callable[[], object]], tuple[str, ...]]] = {}


def case(case_id: str, *fragments: str):
    def register(build: Callable[[Path], Callable[[], object]]):
        CASES[case_id] = (build, fragments)
        return build

    return register


# the CoOp layouts


@case(
    "coop-train-test-leak",
    "split_zhou_EuroSAT.json: test[2]: image 'AnnualCrop/a.jpg' is in the test split and also in train (train[0])",
    LEAK,
)
def coop_train_test_leak(t):
    root = eurosat_with(t, "test", ["AnnualCrop/a.jpg", 0, "AnnualCrop"])
    return lambda: load_dataset("eurosat", root)


@case(
    "coop-train-val-leak-dotted", "val[1]: image 'Forest/b.jpg' is in the val split and also in train (train[1])", LEAK
)
def coop_train_val_leak_dotted(t):
    root = eurosat_with(t, "val", ["./Forest//b.jpg", 1, "Forest"])
    return lambda: load_dataset("eurosat", root)


@case(
    "coop-leak-through-symlink",
    "test[2]: image 'AnnualCrop/link.jpg' (the same file as 'AnnualCrop/a.jpg') is in the test split and also in "
    "train (train[0])",
    LEAK,
)
def coop_leak_through_symlink(t):
    root = eurosat_with(t, "test", ["AnnualCrop/link.jpg", 0, "AnnualCrop"])
    (t / "eurosat/2750/AnnualCrop/link.jpg").unlink()
    link(t / "eurosat/2750/AnnualCrop/link.jpg", "a.jpg")
    return lambda: load_dataset("eurosat", root)


@case(
    "coop-image-two-labels",
    "test[2]: image 'AnnualCrop/a.jpg' is labelled 'Forest' but train[0] labels it 'Annual Crop Land'; an image has "
    "one label",
)
def coop_image_two_labels(t):
    root = eurosat_with(t, "test", ["AnnualCrop/a.jpg", 1, "Forest"])
    return lambda: load_dataset("eurosat", root)


@case(
    "coop-class-without-training-images",
    "split_zhou_EuroSAT.json: class 'Sea or Lake' (label 2) has no training images but 1 in test; every class needs "
    "at least one image in train",
)
def coop_class_without_training_images(t):
    root = eurosat_with(t, "test", ["SeaLake/f.jpg", 2, "SeaLake"])
    return lambda: load_dataset("eurosat", root)


@case(
    "aircraft-train-test-leak",
    "images_variant_test.txt line 2: image '0001.jpg' is in the test split and also in train "
    "(images_variant_train.txt line 1)",
    LEAK,
)
def aircraft_train_test_leak(t):
    root = aircraft(t, {"train": ["0001 707-320", "0002 A300B4"], "val": [], "test": ["0003 A300B4", "0001 707-320"]})
    return lambda: load_dataset("aircraft", root)


@case("aircraft-class-without-training-images", "class 'A300B4' (label 1) has no training images but 1 in test")
def aircraft_class_without_training_images(t):
    root = aircraft(t, {"train": ["0001 707-320"], "val": [], "test": ["0003 A300B4"]})
    return lambda: load_dataset("aircraft", root)


@case(
    "imagenet-val-links-into-train",
    "imagenet/images: test[1]: image 'val/n02/d.JPEG' (the same file as 'train/n02/b.JPEG') is in the test split "
    "and also in train (train[1])",
    LEAK,
)
def imagenet_val_links_into_train(t):
    root = imagenet(t, {"n01": ["a.JPEG"], "n02": ["b.JPEG"]}, {"n01": ["c.JPEG"], "n02": []})
    link(t / "imagenet/images/val/n02/d.JPEG", "../../train/n02/b.JPEG")
    return lambda: load_dataset("imagenet", root)


# split JSON and CSV (an image listed in two splits was refused before: see the older sections)


@case("split-json-class-only-in-test", "split.json: class 'green' (label 1) has no training images but 1 in test")
def split_json_class_only_in_test(t):
    path = split_json_file(
        t, {"train": [["red/a.png", 0, "red"]], "test": [["red/b.png", 0, "red"], ["green/c.png", 1, "green"]]}
    )
    return lambda: load_dataset("split-json", path)


@case(
    "split-json-leak-through-symlink",
    "split.json: test[0]: image 'red/b.png' (the same file as 'red/a.png') is in the test split and also in train "
    "(train[0])",
    LEAK,
)
def split_json_leak_through_symlink(t):
    write(t / "red/a.png")
    link(t / "red/b.png", "a.png")
    path = write(t / "split.json", json.dumps({"train": [["red/a.png", 0, "red"]], "test": [["red/b.png", 0, "red"]]}))
    return lambda: load_dataset("split-json", path)


@case("csv-class-only-in-val", "labels.csv: class 'green' (label 0) has no training images but 1 in val")
def csv_class_only_in_val(t):
    path = csv_text(t, "path,label,split\nred/a.png,red,train\ngreen/c.png,green,val\n")
    return lambda: load_dataset("csv", path)


@case(
    "csv-duplicate-label-column",
    "labels.csv: header has two 'label' columns ('label' in column 2 and 'Label' in column 4); keep one",
)
def csv_duplicate_label_column(t):
    path = csv_text(t, "path,label,split,Label\nred/a.png,red,train,green\n")
    return lambda: load_dataset("csv", path)


@case(
    "csv-duplicate-path-column", "labels.csv: header has two 'path' columns ('path' in column 1 and 'PATH' in column 3)"
)
def csv_duplicate_path_column(t):
    path = csv_text(t, "path,label, PATH \nred/a.png,red,green/c.png\n")
    return lambda: load_dataset("csv", path)


@case(
    "csv-duplicate-split-column",
    "labels.csv: header has two 'split' columns ('split' in column 1 and 'split' in column 4)",
)
def csv_duplicate_split_column(t):
    path = csv_text(t, "split,path,label,split\ntrain,red/a.png,red,test\n")
    return lambda: load_dataset("csv", path)


@case(
    "csv-negative-label-with-classnames", "labels.csv: line 2: label -1 is out of range for classnames (2 class names)"
)
def csv_negative_label_with_classnames(t):
    path = csv_text(t, "path,label\nred/a.png,-1\ngreen/c.png,0\n")
    return lambda: load_csv(path, classnames=["red", "green"])


# image folders


@case(
    "folder-class-only-in-test",
    "ds: class 'blue' (label 0) has no training images but 1 in test; every class needs at least one image in train",
)
def folder_class_only_in_test(t):
    root = image_folder(t / "ds", SPLIT_FOLDER + ["test/blue/e.png"])
    return lambda: load_dataset("folder", root)


@case(
    "folder-link-across-splits",
    "ds: test/red/x.png: image 'test/red/x.png' (the same file as 'train/red/a.png') is in the test split and also "
    "in train (train/red/a.png)",
    LEAK,
)
def folder_link_across_splits(t):
    root = image_folder(t / "ds", SPLIT_FOLDER)
    link(root / "test/red/x.png", "../../train/red/a.png")
    return lambda: load_dataset("folder", root)


@case(
    "folder-split-folder-linked-to-another",
    "ds: val/green/b.png: image 'val/green/b.png' (the same file as 'train/green/b.png') is in the val split and "
    "also in train (train/green/b.png)",
    LEAK,
)
def folder_split_folder_linked_to_another(t):
    root = image_folder(t / "ds", SPLIT_FOLDER)
    link(root / "val", "train")
    return lambda: load_dataset("folder", root)


@case("folder-image-in-two-classes", "(the same file as ", "'red/a.png'", "'green/c.png'", "an image has one label")
def folder_image_in_two_classes(t):
    root = image_folder(t / "ds", ["red/a.png", "green/b.png"])
    link(root / "green/c.png", "../red/a.png")
    return lambda: load_dataset("folder", root)


# behaviours that are not errors, each a row of the section too: id -> the test here that holds it
NOT_ERRORS = {
    "folder-macosx-with-an-image": "test_macosx_folder_with_a_real_image_is_not_a_class",
    "folder-leftovers-beside-split-folders": "test_split_layout_with_leftovers_beside_the_split_folders",
    "imagenet-leftovers": "test_imagenet_layouts_skip_leftovers",
    "imagenet-shift-leftovers": "test_imagenet_shift_skips_leftovers",
    "predict-folder-leftovers": "test_predict_folders_skip_leftovers",
    "csv-negative-integer-labels": "test_integer_like_labels_all_get_the_warning",
    "csv-leading-zero-labels": "test_different_spellings_of_one_integer_are_named_in_the_warning",
    "csv-labels-only-looking-like-integers": "test_labels_that_only_look_like_integers_are_class_names",
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_dataset_gets_one_line_error(case, tmp_path):
    build, fragments = CASES[case]
    message = one_line_error(build(tmp_path))
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_cases_are_documented():
    """Every case of this file is a row of its section in docs/RELIABILITY.md, which names this file."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md").read_text(encoding="utf-8")
    section = doc.split("### Loaders, one rule (round 3)", 1)[1]
    assert "tests/test_reliability_loaders.py" in section
    missing = [case for case in list(CASES) + list(NOT_ERRORS) if f"`{case}`" not in section]
    assert not missing, f"docs/RELIABILITY.md does not list {missing}"
    assert all(callable(globals()[test]) for test in NOT_ERRORS.values())


def test_command_line_prints_the_rule_in_one_line(tmp_path, tiny_arch_path, capsys, monkeypatch):
    """The line reaches the user as ``rlptune: error: ...`` with exit status 2, before any backbone is loaded."""
    monkeypatch.delenv("RLPTUNE_DATA", raising=False)
    root = eurosat_with(tmp_path / "data", "test", ["AnnualCrop/a.jpg", 0, "AnnualCrop"])
    folder = image_folder(tmp_path / "ds", SPLIT_FOLDER + ["val/blue/e.png"])
    orphan = "class 'blue' (label 0) has no training images"
    for dataset, data_root, fragment in (("eurosat", root, LEAK), ("folder", folder, orphan)):
        out = tmp_path / f"out-{dataset}"
        code = main(
            [
                "train",
                "--dataset",
                dataset,
                "--data-root",
                str(data_root),
                "-o",
                str(out),
                "--backbone",
                str(tiny_arch_path),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("rlptune: error: ")]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert fragment in lines[0]
        assert not out.exists()


# -- leftovers of archive tools and operating systems --------------------------------------------------------------


def test_macosx_folder_with_a_real_image_is_not_a_class(tmp_path):
    root = image_folder(
        tmp_path / "ds",
        ["red/a.png", "red/b.png", "green/c.png", "green/d.png", "__MACOSX/red/._a.png", "__MACOSX/real.png"],
    )
    with warnings_of("rlptune.data.common") as warnings:
        splits = load_dataset("folder", root)
    assert splits.classnames == ["green", "red"]
    assert not any("MACOSX" in it.path for s in ("train", "val", "test") for it in splits.split(s))
    assert len(warnings) == 1
    assert warnings[0] == (
        f"{root}: ignored 1 file(s) and folder(s) {LEFTOVER_WARNING} (__MACOSX, ._*, .DS_Store, Thumbs.db, "
        "desktop.ini, hidden names), first '__MACOSX/'"
    )


def test_split_layout_with_leftovers_beside_the_split_folders(tmp_path):
    """``__MACOSX/`` beside ``train/`` and ``test/`` is not an 'unexpected folder' that stops the split layout."""
    junk = [
        "__MACOSX/train/red/._a.png",
        ".DS_Store",
        "train/Thumbs.db",
        "train/red/._a.png",
        "train/red/.DS_Store",
        "train/red/@eaDir/a.png",
        "train/green/desktop.ini",
        "test/red/__MACOSX/c.png",
        "train/.Trashes/x.png",
        "train/green/.Spotlight-V100/y.png",
        "test/.hidden/z.png",
    ]
    root = image_folder(tmp_path / "ds", SPLIT_FOLDER + junk)
    with warnings_of("rlptune.data.common") as warnings:
        splits = load_dataset("folder", root)
    assert sorted(it.path for it in splits.train + splits.test) == sorted(SPLIT_FOLDER)
    assert len(warnings) == 1 and f"ignored {len(junk)} file(s) and folder(s)" in warnings[0]
    assert warnings[0].endswith("first '.DS_Store'")


def test_clean_folder_gives_no_leftover_warning(tmp_path):
    root = image_folder(tmp_path / "ds", SPLIT_FOLDER + ["train/red/notes.txt"])
    with warnings_of("rlptune.data.common") as warnings:
        load_dataset("folder", root)
    assert warnings == []


def test_imagenet_layouts_skip_leftovers(tmp_path):
    """ImageNet's class folders are listed as the toolkit lists them (every file), leftovers excepted."""
    root = imagenet(
        tmp_path,
        {"n01": ["a.JPEG", "._a.JPEG", "Thumbs.db"], "n02": ["b.JPEG", "desktop.ini"]},
        {"n01": ["c.JPEG", ".DS_Store"], "n02": ["d.JPEG"]},
    )
    (root / "imagenet/images/train/__MACOSX/n01").mkdir(parents=True)
    write(root / "imagenet/images/train/__MACOSX/n01/._a.JPEG")
    with warnings_of("rlptune.data.common") as warnings:
        splits = load_dataset("imagenet", root)
    assert [it.path for it in splits.train] == ["train/n01/a.JPEG", "train/n02/b.JPEG"]
    assert [it.path for it in splits.test] == ["val/n01/c.JPEG", "val/n02/d.JPEG"]
    assert len(warnings) == 1 and "ignored 5 file(s) and folder(s)" in warnings[0]
    assert warnings[0].endswith("first 'train/__MACOSX/'")


def test_imagenet_shift_skips_leftovers(tmp_path):
    ddir = tmp_path / "imagenet-rendition"
    write(ddir / "classnames.txt", "n01 goldfish\nn02 shark\n")
    image_folder(ddir / "imagenet-r", ["n01/a.jpg", "n02/b.jpg", "n02/._b.jpg", "__MACOSX/n01/._a.jpg"])
    with warnings_of("rlptune.data.common") as warnings:
        splits = load_dataset("imagenet-r", tmp_path)
    assert splits.classnames == ["goldfish", "shark"] and len(splits.test) == 2 and not splits.train
    assert len(warnings) == 1 and "ignored 2 file(s) and folder(s)" in warnings[0]


def test_predict_folders_skip_leftovers(tmp_path):
    """``rlptune predict`` on a folder walks it like a loader: ``._a.png`` (an AppleDouble file, not an image) and
    ``__MACOSX/`` are skipped with one warning; an image named explicitly is always taken."""
    from rlptune.data.images import collect_images

    root = image_folder(
        tmp_path / "photos",
        ["a.png", "sub/b.jpg", "._a.png", "__MACOSX/._b.jpg", ".cache/c.png", "Thumbs.db", "notes.txt"],
    )
    with warnings_of("rlptune.data.common") as warnings:
        found = collect_images([root, root / "._a.png"])
    assert found == [root / "a.png", root / "sub/b.jpg", root / "._a.png"]
    assert len(warnings) == 1 and "ignored 4 file(s) and folder(s)" in warnings[0]


@pytest.mark.parametrize(
    "name",
    [
        "__MACOSX",
        "__macosx",
        "._x.png",
        ".DS_Store",
        "Thumbs.db",
        "THUMBS.DB",
        "desktop.ini",
        ".Trashes",
        ".Spotlight-V100",
        "@eaDir",
        ".git",
    ],
)
def test_leftover_names(name):
    assert is_leftover(name)


@pytest.mark.parametrize("name", ["MACOSX", "_MACOSX_", "thumbs", "a.png", "x.DS_Store", "desktop"])
def test_names_that_are_not_leftovers(name):
    assert not is_leftover(name)


# -- integer-like CSV labels: one rule -----------------------------------------------------------------------------


def _csv_labels(tmp: Path, labels: list[str]) -> Path:
    rows = "".join(f"img{i}.png,{label}\n" for i, label in enumerate(labels))
    return write(tmp / "labels.csv", "path,label\n" + rows)


@pytest.mark.parametrize("labels", [["0", "1", "2"], ["-1", "0", "1"], ["+1", "-2", "3"], ["007", "7", "08"]])
def test_integer_like_labels_all_get_the_warning(tmp_path, labels):
    path = _csv_labels(tmp_path, labels * 2)
    with warnings_of("rlptune.data.custom") as warnings:
        splits = load_csv(path, check_files=False)
    assert len(warnings) == 1 and warnings[0].startswith(f"{path}: {INTEGER_WARNING}")
    values = sorted({int(v) for v in labels})
    assert splits.classnames == [str(v) for v in values]  # sorted as numbers, named as numbers
    for item in splits.train + splits.val + splits.test:
        assert item.classname == str(int(labels[int(item.path[3:-4]) % len(labels)]))


def test_different_spellings_of_one_integer_are_named_in_the_warning(tmp_path):
    path = _csv_labels(tmp_path, ["007", "7", "1", "1"])
    with warnings_of("rlptune.data.custom") as warnings:
        splits = load_csv(path, check_files=False)
    assert splits.classnames == ["1", "7"]
    assert warnings[0].endswith("('1', '7'); '007' and '7' are one class")


@pytest.mark.parametrize("labels", [["١", "٢"], ["1_0", "2"], ["1.0", "2"], ["0x1", "2"], ["- 1", "2"]])
def test_labels_that_only_look_like_integers_are_class_names(tmp_path, labels):
    """ASCII digits with an optional sign are integers; what ``int()`` also reads (Arabic-Indic digits, ``1_0``)
    is a class name, as any other text."""
    path = _csv_labels(tmp_path, labels * 2)
    with warnings_of("rlptune.data.custom") as warnings:
        splits = load_csv(path, check_files=False)
    assert warnings == [] and splits.classnames == sorted(labels)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    values=st.lists(st.integers(-30, 30), min_size=1, max_size=6, unique=True),
    spelling=st.lists(st.tuples(st.integers(0, 2), st.booleans()), min_size=12, max_size=12),
)
def test_integer_labels_one_rule_whatever_the_spelling(values, spelling):
    """Any sign, any leading zeros: the same class (the number) and the same warning as plain ``0, 1, 2``."""
    labels = []
    for i, (zeros, plus) in enumerate(spelling):
        value = values[i % len(values)]
        digits = "0" * zeros + str(abs(value))
        labels.append(("-" if value < 0 else "+" if plus else "") + digits)
    with tempfile.TemporaryDirectory() as tmp:
        path = _csv_labels(Path(tmp), labels)
        with warnings_of("rlptune.data.custom") as warnings:
            splits = load_csv(path, check_files=False)
    present = sorted({values[i % len(values)] for i in range(len(labels))})
    assert splits.classnames == [str(v) for v in present]
    assert len(warnings) == 1 and INTEGER_WARNING in warnings[0]
    assert all(it.classname == str(int(labels[int(it.path[3:-4])])) for it in splits.train + splits.val + splits.test)


# -- plug-ins and generated datasets -------------------------------------------------------------------------------


def test_plugin_loader_result_obeys_the_rule(tmp_path):
    leaky = DatasetSplits(
        "leaky", tmp_path, ["a", "b"], [Item("x.png", 0, "a"), Item("y.png", 1, "b")], test=[Item("x.png", 0, "a")]
    )
    orphan = DatasetSplits("orphan", tmp_path, ["a", "b"], [Item("x.png", 0, "a")], test=[Item("y.png", 1, "b")])
    register_dataset("leaky-plugin", lambda root=None: leaky, needs_root=False)
    register_dataset("orphan-plugin", lambda root=None: orphan, needs_root=False)
    register_dataset("wrong-plugin", lambda root=None: {"train": []}, needs_root=False)
    try:
        assert "dataset leaky-plugin: test[0]: image 'x.png' is in the test split and also in train (train[0])" in (
            one_line_error(lambda: load_dataset("leaky-plugin"))
        )
        assert "dataset orphan-plugin: class 'b' (label 1) has no training images but 1 in test" in (
            one_line_error(lambda: load_dataset("orphan-plugin"))
        )
        assert "its loader returned a dict, expected DatasetSplits" in one_line_error(
            lambda: load_dataset("wrong-plugin")
        )
    finally:
        for name in ("leaky-plugin", "orphan-plugin", "wrong-plugin"):
            unregister_dataset(name)


def test_test_only_datasets_pass_but_need_every_class(tmp_path):
    """ImageNet shifts and the micro suites' shifts have no train split: then every class needs an image somewhere."""
    DatasetSplits("shift", tmp_path, ["a", "b"], [], test=[Item("x.png", 0, "a"), Item("y.png", 1, "b")]).validate()
    empty_class = DatasetSplits("shift", tmp_path, ["a", "b"], [], test=[Item("x.png", 0, "a")])
    assert "class 'b' (label 1) has no images" in one_line_error(empty_class.validate)
    wrong_name = DatasetSplits("x", tmp_path, ["a", "b"], [Item("x.png", 0, "b"), Item("y.png", 1, "b")])
    assert "train[0]: image 'x.png' has class name 'b' but label 0 is 'a'" in one_line_error(wrong_name.validate)
    nothing = DatasetSplits("x", tmp_path, ["a"], [])
    assert "no images listed" in one_line_error(nothing.validate)


POOL = [f"{folder}/{i}.png" for folder in ("a", "b") for i in range(5)]
FAULTS = [
    "none",
    "none",
    "none",
    "label-too-big",
    "label-negative",
    "label-bool",
    "name",
    "other-split",
    "same-split",
    "other-label",
    "link",
    "orphan",
    "test-only",
    "empty",
]


@st.composite
def small_splits(draw):
    """A clean little dataset (every class in train, distinct paths), then at most one change that may break the
    rule: a label out of range or a bool, another class name, an image repeated in another split, in the same split
    (allowed) or under another label, a symlink between two listed paths, a class left without training images, no
    train split at all, no items at all."""
    n = draw(st.integers(1, 3))
    names = ["red", "green", "blue"][:n]
    paths = draw(st.lists(st.sampled_from(POOL), min_size=n, max_size=8, unique=True))
    placed = [("train", label) for label in range(n)]
    placed += [(draw(st.sampled_from(["train", "val", "test"])), draw(st.integers(0, n - 1))) for _ in paths[n:]]
    items = {"train": [], "val": [], "test": []}
    for path, (split, label) in zip(paths, placed):
        items[split].append(Item(path, label, names[label]))
    fault = draw(st.sampled_from(FAULTS))
    links: dict[str, str] = {}
    split = draw(st.sampled_from(["train", "val", "test"]))
    other = draw(st.sampled_from([s for s in ("train", "val", "test") if s != split]))
    if items[split]:
        i = draw(st.integers(0, len(items[split]) - 1))
        it = items[split][i]
        if fault.startswith("label-") or fault == "name":
            label, cname = {
                "label-too-big": (n, it.classname),
                "label-negative": (-1, it.classname),
                "label-bool": (True, it.classname),
                "name": (it.label, it.classname + "!"),
            }[fault]
            items[split][i] = Item(it.path, label, cname)
        elif fault == "other-split":
            items[other].append(it)
        elif fault == "same-split":
            items[split].append(it)
        elif fault == "other-label" and n > 1:
            label = (it.label + 1) % n
            items[split].append(Item(it.path, label, names[label]))
        elif fault == "link" and len(paths) > 1:
            links[draw(st.sampled_from([p for p in paths if p != it.path]))] = it.path
    if fault == "orphan":
        items["train"] = [it for it in items["train"] if it.label != n - 1]
    elif fault == "test-only":
        items["train"] = []
    elif fault == "empty":
        items = {"train": [], "val": [], "test": []}
    return DatasetSplits("x", Path("."), names, items["train"], items["val"], items["test"]), links


@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=small_splits())
def test_quick_pass_never_accepts_what_the_item_by_item_pass_refuses(data):
    """The rule is decided with whole-list operations when the data is clean; whenever that quick pass says yes,
    the item-by-item pass (the one that words the errors) finds nothing either, and vice versa for clean data."""
    from rlptune.data.items import _find_fault, _obeys_rule

    splits, links = data
    try:
        _find_fault(splits, "src", None, links)
        fault = None
    except RlptuneError as exc:
        fault = str(exc)
    if _obeys_rule(splits, links):
        assert fault is None
    keys = [links.get(it.path, it.path) for s in ("train", "val", "test") for it in splits.split(s)]
    if fault is None and len(set(keys)) == len(keys):  # no image listed twice in one split: nothing to look at twice
        assert _obeys_rule(splits, links)


# -- the loaders agree (property test) -----------------------------------------------------------------------------

ODD_NAMES = [
    "café",
    "e\u0301clair",
    "日本語",
    "🐱 cat",
    "ﬁsh",
    "٣",
    "a\u200bb",
    "Ωmega",
    "z",
    "x,y",
    'say "hi"',
    "ß",
    "İstanbul",
    "-",
    "+7a",
    "١٢",
    "\ufeffbom",
    "zero\u00adwidth",
]


def _usable(name: str) -> bool:
    """A name every layout carries unchanged: a folder name (no separator, not a leftover), a stripped CSV cell, a
    folder class name (no '_', single spaces), and not integer-like (a CSV would read it as a number)."""
    return (
        bool(name)
        and " ".join(name.split()) == name
        and not is_leftover(name)
        and not any(c in name for c in "/\\_\x00")
        and re.fullmatch(r"[+-]?[0-9]+", name) is None
    )


CLASS_NAME = st.one_of(
    st.sampled_from(ODD_NAMES),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=6),
).filter(_usable)

LEFTOVERS = [
    "__MACOSX/train/{c}/._0.png",
    "__MACOSX/x.png",
    "train/{c}/._0.png",
    "train/{c}/.DS_Store",
    "Thumbs.db",
    "train/Thumbs.db",
    "train/{c}/__MACOSX/0.png",
    "train/{c}/@eaDir/0.png",
    ".hidden/0.png",
    "train/{c}/desktop.ini",
    ".Spotlight-V100/0.png",
    "train/.Trashes/0.png",
]


@st.composite
def datasets(draw):
    names = draw(st.lists(CLASS_NAME, min_size=1, max_size=4, unique_by=prompt_key))
    counts = draw(
        st.lists(
            st.tuples(st.integers(1, 2), st.integers(0, 1), st.integers(0, 2)), min_size=len(names), max_size=len(names)
        )
    )
    junk = draw(st.lists(st.tuples(st.sampled_from(LEFTOVERS), st.integers(0, len(names) - 1)), max_size=4))
    mode = draw(st.sampled_from(["clean", "clean", "leak-same", "leak-dotted", "leak-link", "orphan"]))
    leak = (draw(st.integers(0, len(names) - 1)), draw(st.sampled_from(["val", "test"])))
    orphan = draw(CLASS_NAME.filter(lambda n: prompt_key(n) not in {prompt_key(m) for m in names}))
    return names, counts, junk, mode, leak, orphan


def _write_layouts(tmp: Path, names, counts, junk, mode, leak, orphan):
    """One dataset as root/{train,val,test}/<class>/<i>.png, labels.csv and split.json (paths relative to root)."""
    root = tmp / "root"
    rows: list[tuple[str, str, str]] = []  # (path, class name, split)
    for name, per_split in zip(names, counts):
        for split, count in zip(("train", "val", "test"), per_split):
            for i in range(count):
                rows.append((write(root / split / name / f"{i}.png").relative_to(root).as_posix(), name, split))
    if mode == "orphan":
        rows.append((write(root / "test" / orphan / "0.png").relative_to(root).as_posix(), orphan, "test"))
    for pattern, k in junk:
        write(root / pattern.format(c=names[k]))
    if mode.startswith("leak"):
        k, split = leak
        source = f"train/{names[k]}/0.png"
        linked = (
            link(root / split / names[k] / "leak.png", f"../../train/{names[k]}/0.png").relative_to(root).as_posix()
        )
        listed = {"leak-same": source, "leak-dotted": "./" + source.replace("/", "//", 1), "leak-link": linked}[mode]
        rows.append((listed, names[k], split))
    classes = sorted({name for _p, name, _s in rows})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "split"])
    writer.writerows(rows)
    csv_path = write(tmp / "labels.csv", buffer.getvalue())
    split_obj = {s: [[p, classes.index(n), n] for p, n, sp in rows if sp == s] for s in ("train", "val", "test")}
    json_path = write(tmp / "split.json", json.dumps(split_obj))
    return root, csv_path, json_path, rows, classes


def _load_all(root: Path, csv_path: Path, json_path: Path) -> dict[str, Callable[[], DatasetSplits]]:
    return {
        "folder": lambda: load_dataset("folder", root),
        "csv": lambda: load_dataset("csv", csv_path, image_root=root),
        "split-json": lambda: load_dataset("split-json", json_path, image_root=root),
    }


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=datasets())
def test_folder_csv_and_split_json_agree(data):
    """The same dataset as an image folder, a CSV and a split JSON: the same classes and (path, label) sets; an image
    in two splits (listed twice, as ``./a//b``, or through a symlink) and a class without training images are
    refused by each of them; leftovers never become classes or images."""
    names, _counts, junk, mode, leak, orphan = data
    with tempfile.TemporaryDirectory() as tmp:
        root, csv_path, json_path, rows, classes = _write_layouts(Path(tmp), *data)
        loaders = _load_all(root, csv_path, json_path)
        if mode == "clean":
            expected = {s: {(p, classes.index(n)) for p, n, sp in rows if sp == s} for s in ("train", "val", "test")}
            with warnings_of("rlptune.data.common") as warnings:
                loaded = {kind: load() for kind, load in loaders.items()}
            for kind, splits in loaded.items():
                assert splits.classnames == classes, kind
                for split in ("train", "val", "test"):
                    assert {(it.path, it.label) for it in splits.split(split)} == expected[split], (kind, split)
            assert len(warnings) == (1 if junk else 0), warnings
            if junk:
                assert "__MACOSX" not in classes and LEFTOVER_WARNING in warnings[0]
            return
        for kind, load in loaders.items():
            message = one_line_error(load)
            if mode == "orphan":
                assert f"class {orphan!r} (label {classes.index(orphan)}) has no training images" in message, (
                    kind,
                    message,
                )
            else:
                k, split = leak
                assert LEAK in message and repr(f"train/{names[k]}/0.png") in message, (kind, message)
                assert f"in the {split} split and also in train" in message, (kind, message)
