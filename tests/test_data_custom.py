"""Custom data: image folders, CSV files, split JSON files, and the dataset registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlptune.data import (
    DatasetSplits,
    Item,
    list_datasets,
    load_csv,
    load_dataset,
    load_folder,
    load_split_json,
    register_dataset,
    unregister_dataset,
)
from rlptune.errors import RlptuneError


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG")  # loaders check existence only; decoding is check_images' job


def flat_folder(root: Path, counts: dict[str, int]) -> Path:
    for cls, n in counts.items():
        for i in range(n):
            touch(root / cls / f"{i:02d}.png")
    return root


# ---------------------------------------------------------------- image folders


def test_flat_folder_stratified_split_is_seeded_and_deterministic(tmp_path):
    root = flat_folder(tmp_path / "imgs", {"golden_retriever": 10, "tabby_cat": 20, "axolotl": 5})
    (root / "tabby_cat" / "notes.txt").write_text("not an image")
    (root / "tabby_cat" / ".hidden.png").write_bytes(b"x")
    a = load_folder(root, seed=3)
    b = load_folder(root, seed=3)
    c = load_folder(root, seed=4)
    assert a.classnames == ["axolotl", "golden retriever", "tabby cat"]  # sorted folders, underscores -> spaces
    assert a.train == b.train and a.val == b.val and a.test == b.test
    assert a.train != c.train
    sizes = {s: [sum(1 for it in a.split(s) if it.label == k) for k in range(3)] for s in ("train", "val", "test")}
    assert sizes == {"train": [2, 5, 10], "val": [1, 2, 4], "test": [2, 3, 6]}  # round(n*.5), round(n*.2), rest
    every = sorted(it.path for s in ("train", "val", "test") for it in a.split(s))
    assert len(every) == 35 and len(set(every)) == 35
    assert a.train[0].path.count("/") == 1 and not Path(a.train[0].path).is_absolute()


def test_flat_folder_custom_fractions(tmp_path):
    root = flat_folder(tmp_path / "imgs", {"a": 10, "b": 10})
    s = load_folder(root, fractions=(0.8, 0.0, 0.2), seed=1)
    assert (len(s.train), len(s.val), len(s.test)) == (16, 0, 4)
    with pytest.raises(RlptuneError, match="split fractions"):
        load_folder(root, fractions=(0.8, 0.3, 0.2))
    one = flat_folder(tmp_path / "tiny", {"a": 1, "b": 2})
    t = load_folder(one)
    assert {it.label for it in t.train} == {0, 1}  # every class keeps at least one training image


def test_presplit_folder(tmp_path):
    root = tmp_path / "imgs"
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        for cls in ("b_class", "a_class"):
            for i in range(n):
                touch(root / split / cls / f"{i}.jpg")
    s = load_dataset("folder", root)
    assert s.classnames == ["a class", "b class"]
    assert (len(s.train), len(s.val), len(s.test)) == (6, 2, 4)
    assert s.train[0] == Item("train/a_class/0.jpg", 0, "a class")


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = flat_folder(tmp_path / "imgs", {"a": 3})
    (root / "empty_one").mkdir()
    with pytest.raises(RlptuneError, match=r"empty_one: class folder has no images"):
        load_folder(root)


def test_folder_errors(tmp_path):
    with pytest.raises(RlptuneError, match="does not exist"):
        load_folder(tmp_path / "missing")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(RlptuneError, match="no class folders"):
        load_folder(tmp_path / "nothing")
    root = flat_folder(tmp_path / "dup", {"a_b": 1, "a b": 1})
    with pytest.raises(RlptuneError, match="same class name 'a b'"):
        load_folder(root)


def test_folder_classnames_mapping_file(tmp_path):
    root = flat_folder(tmp_path / "imgs", {"n01": 2, "n02": 2})
    names = tmp_path / "classnames.txt"
    names.write_text("n01 tench\nn02 great white shark\n")
    assert load_folder(root, classnames=names).classnames == ["tench", "great white shark"]
    names.write_text("n01 tench\n")
    with pytest.raises(RlptuneError, match="'n02' has no entry"):
        load_folder(root, classnames=names)


# ---------------------------------------------------------------- CSV


def test_csv_with_class_names_and_split_column(tmp_path):
    for p in ("x/1.jpg", "x/2.jpg", "y/3.jpg", "y/4.jpg"):
        touch(tmp_path / p)
    path = tmp_path / "data.csv"
    path.write_text("Path,Label,Split\nx/1.jpg,zebra,train\ny/3.jpg,ant,train\nx/2.jpg,zebra,test\ny/4.jpg,ant,val\n")
    s = load_csv(path)
    assert s.classnames == ["ant", "zebra"]
    assert s.train == [Item("x/1.jpg", 1, "zebra"), Item("y/3.jpg", 0, "ant")]
    assert s.val == [Item("y/4.jpg", 0, "ant")] and s.test == [Item("x/2.jpg", 1, "zebra")]
    assert s.name == "data" and Path(s.root) == tmp_path


def test_csv_integer_labels_with_and_without_classnames_file(tmp_path):
    for i in range(6):
        touch(tmp_path / "img" / f"{i}.png")
    path = tmp_path / "d.csv"
    path.write_text("path,label\n" + "".join(f"img/{i}.png,{i % 2}\n" for i in range(6)))
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    s = load_csv(path, classnames=names, seed=0)
    assert s.classnames == ["cat", "dog"]
    assert len(s.train) + len(s.val) + len(s.test) == 6
    assert load_csv(path).classnames == ["0", "1"]
    (tmp_path / "names.json").write_text(json.dumps({"0": "cat", "1": "dog"}))
    assert load_csv(path, classnames=tmp_path / "names.json").classnames == ["cat", "dog"]
    names.write_text("cat\n")
    with pytest.raises(RlptuneError, match=r"d\.csv: line 3: label 1 is out of range for .*names\.txt"):
        load_csv(path, classnames=names)


def test_csv_missing_columns_names_file_and_columns_found(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("file_name,category\na.jpg,cat\n")
    with pytest.raises(RlptuneError) as info:
        load_csv(path)
    message = str(info.value)
    assert "bad.csv" in message and "missing column(s) path, label" in message and "'file_name'" in message


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "CSV file is empty"),
        ("path,label\n", "no rows"),
        ("path,label\na.jpg\n", r"line 2: expected 2 fields"),
        ("path,label\na.jpg,\n", "line 2: empty label"),
        ("path,label,split\na.jpg,cat,holdout\n", "line 2: split 'holdout'"),
        ("path,label\nnothere.jpg,cat\n", r"1 of 1 listed images are missing.*line 2"),
    ],
)
def test_csv_errors_name_the_file(tmp_path, text, match):
    path = tmp_path / "my.csv"
    path.write_text(text)
    with pytest.raises(RlptuneError, match=match) as info:
        load_csv(path)
    assert "my.csv" in str(info.value)


def test_csv_not_utf8(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("path,label\ncaf\xe9.jpg,x\n".encode("latin-1"))
    with pytest.raises(RlptuneError, match=r"latin\.csv: CSV file is not UTF-8"):
        load_csv(path)


# ---------------------------------------------------------------- split JSON


def write_split(tmp_path: Path, obj, text: str | None = None) -> Path:
    path = tmp_path / "split.json"
    path.write_text(text if text is not None else json.dumps(obj))
    return path


def test_split_json_roundtrip(tmp_path):
    for p in ("a/1.jpg", "a/2.jpg", "b/3.jpg"):
        touch(tmp_path / "images" / p)
    obj = {"train": [["a/1.jpg", 0, "apple"], ["b/3.jpg", 1, "banana"]], "test": [["a/2.jpg", 0, "apple"]]}
    path = write_split(tmp_path, obj)
    s = load_split_json(path, tmp_path / "images", name="fruit", template="a photo of {}, a fruit.")
    assert s.name == "fruit" and s.template == "a photo of {}, a fruit." and s.classnames == ["apple", "banana"]
    assert s.val == [] and s.test == [Item("a/2.jpg", 0, "apple")]
    assert load_dataset("split-json", path, image_root=tmp_path / "images").classnames == ["apple", "banana"]


@pytest.mark.parametrize(
    "obj, text, match",
    [
        (None, "{not json", r"not valid JSON \(line 1"),
        ([], None, "expected a JSON object"),
        ({"train": [], "holdout": []}, None, r"unknown key\(s\) 'holdout'"),
        ({"train": {"a": 1}}, None, "'train' must be a list"),
        ({"train": [["a.jpg", 0]]}, None, r"train\[0\]: expected \[relative path, label, class name\]"),
        ({"train": [["a.jpg", "0", "x"]]}, None, r"train\[0\]: label must be an integer"),
        ({"train": [["a.jpg", 1.0, "x"]]}, None, r"train\[0\]: label must be an integer"),
        ({"train": [["a.jpg", True, "x"]]}, None, r"train\[0\]: label must be an integer"),
        ({"train": [["a.jpg", -1, "x"]]}, None, r"train\[0\]: label must be >= 0"),
        ({"train": [[5, 0, "x"]]}, None, r"train\[0\]: image path must be a string"),
        ({"train": [["a.jpg", 0, ""]]}, None, r"train\[0\]: class name must be a non-empty string"),
        (
            {"train": [["a.jpg", 0, "x"]], "test": [["b.jpg", 0, "y"]]},
            None,
            r"test\[0\]: label 0 has class name 'y' but train\[0\] gave it 'x'",
        ),
        (
            {"train": [["a.jpg", 0, "x"], ["b.jpg", 1, "x"]]},
            None,
            r"train\[1\]: class name 'x' has label 1 but train\[0\] gave it label 0",
        ),
        ({"train": [["a.jpg", 0, "x"], ["b.jpg", 2, "z"]]}, None, "label 1 has no images"),
        ({"train": [], "val": [], "test": []}, None, "no images listed"),
        ({"train": [["../a.jpg", 0, "x"]]}, None, r"train\[0\]: .*'\.\.'"),
        ({"train": [["/abs/a.jpg", 0, "x"]]}, None, r"train\[0\]: .*absolute"),
    ],
)
def test_split_json_errors_name_file_and_entry(tmp_path, obj, text, match):
    path = write_split(tmp_path, obj, text)
    with pytest.raises(RlptuneError, match=match) as info:
        load_split_json(path, check_files=False)
    assert str(path) in str(info.value)


def test_split_json_missing_file(tmp_path):
    with pytest.raises(RlptuneError, match=r"nope\.json: split file not found"):
        load_split_json(tmp_path / "nope.json")


# ---------------------------------------------------------------- registry


def test_register_dataset_and_options(tmp_path):
    calls = []

    def micro_loader(root, *, size=4):
        calls.append((root, size))
        return DatasetSplits("micro-shapes", Path(root), ["a"], [Item("x.png", 0, "a")])

    name = "micro-testonly-shapes"  # not a name the real micro suite uses
    register_dataset(name, micro_loader, aliases=("testonly-shapes",))
    try:
        assert name in list_datasets()
        assert load_dataset("Micro_TestOnly_Shapes", tmp_path, size=8).name == "micro-shapes"
        assert load_dataset("testonly-shapes", tmp_path).classnames == ["a"]
        assert calls == [(tmp_path, 8), (tmp_path, 4)]
        with pytest.raises(RlptuneError, match=r"unknown option\(s\) colour; valid options: size"):
            load_dataset(name, tmp_path, colour=1)
        with pytest.raises(RlptuneError, match="already registered"):
            register_dataset(name, micro_loader)
        with pytest.raises(RlptuneError, match="already registered"):
            register_dataset("other-testonly", micro_loader, aliases=("eurosat",))
    finally:
        unregister_dataset(name)
    assert name not in list_datasets()
    with pytest.raises(RlptuneError, match="unknown dataset"):
        load_dataset("testonly-shapes", tmp_path)
    with pytest.raises(RlptuneError, match="unknown dataset 'no-such'.*EuroSAT"):
        load_dataset("no-such", tmp_path)
