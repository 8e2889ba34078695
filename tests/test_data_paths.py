"""Path safety: entries from split files, CSVs and few-shot caches never escape the dataset root."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rlptune.data import load_csv, load_split_json, resolve_inside
from rlptune.errors import RlptuneError


@pytest.fixture()
def tree(tmp_path) -> tuple[Path, Path]:
    """root/ with one class folder and one image, and outside/secret.jpg next to it."""
    root = tmp_path / "root"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "a.jpg").write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"x")
    return root, outside


def test_plain_relative_paths_are_accepted_and_normalised(tree):
    root, _ = tree
    assert resolve_inside(root, "cat/a.jpg", "s.json", "train[0]", must_exist=True) == root / "cat" / "a.jpg"
    assert resolve_inside(root, "./cat//a.jpg", "s.json", "train[0]") == root / "cat" / "a.jpg"


@pytest.mark.parametrize("bad", ["../outside/secret.jpg", "cat/../../outside/secret.jpg", "..", "cat/.."])
def test_dotdot_rejected(tree, bad):
    root, _ = tree
    with pytest.raises(RlptuneError, match=r"s\.json: train\[3\]: .*'\.\.'"):
        resolve_inside(root, bad, "s.json", "train[3]")


@pytest.mark.parametrize("bad", ["/etc/passwd", "C:\\Windows\\x.jpg", "\\\\server\\share\\x.jpg", "D:/x.jpg"])
def test_absolute_rejected(tree, bad):
    root, _ = tree
    with pytest.raises(RlptuneError, match=r"s\.json: val\[0\]: .*absolute"):
        resolve_inside(root, bad, "s.json", "val[0]")


@pytest.mark.parametrize("bad", ["", "   ", ".", "./", 3, None])
def test_empty_or_non_string_rejected(tree, bad):
    root, _ = tree
    with pytest.raises(RlptuneError, match=r"s\.json: test\[1\]"):
        resolve_inside(root, bad, "s.json", "test[1]")


def test_symlinked_file_pointing_outside_rejected(tree):
    root, outside = tree
    os.symlink(outside / "secret.jpg", root / "cat" / "link.jpg")
    with pytest.raises(RlptuneError, match=r"s\.json: train\[0\]: .*'cat/link\.jpg' leads outside"):
        resolve_inside(root, "cat/link.jpg", "s.json", "train[0]")


def test_symlinked_folder_pointing_outside_rejected(tree):
    root, outside = tree
    os.symlink(outside, root / "dog")
    with pytest.raises(RlptuneError, match="leads outside the dataset root"):
        resolve_inside(root, "dog/secret.jpg", "s.json", "train[0]")


def test_symlinks_inside_the_root_and_a_symlinked_root_are_fine(tree, tmp_path):
    root, _ = tree
    os.symlink(root / "cat" / "a.jpg", root / "cat" / "b.jpg")
    os.symlink(root / "cat", root / "kitten")
    assert resolve_inside(root, "cat/b.jpg", "s.json", must_exist=True).name == "b.jpg"
    assert resolve_inside(root, "kitten/a.jpg", "s.json", must_exist=True).name == "a.jpg"
    linked_root = tmp_path / "linked"
    os.symlink(root, linked_root)  # CoOp's instructions suggest linking $DATA/<dataset> to an existing copy
    assert resolve_inside(linked_root, "cat/a.jpg", "s.json", must_exist=True) == linked_root / "cat" / "a.jpg"


def test_missing_file(tree):
    root, _ = tree
    with pytest.raises(RlptuneError, match=r"s\.json: train\[0\]: image 'cat/zzz\.jpg' not found"):
        resolve_inside(root, "cat/zzz.jpg", "s.json", "train[0]", must_exist=True)


def _split(root: Path, entries) -> Path:
    path = root / "split.json"
    path.write_text(json.dumps({"train": entries, "val": [], "test": []}))
    return path


@pytest.mark.parametrize("bad", ["../outside/secret.jpg", "/etc/hosts", "evil/secret.jpg"])
def test_split_json_escapes_rejected_naming_file_and_entry(tree, bad):
    root, outside = tree
    os.symlink(outside, root / "evil")
    path = _split(root, [["cat/a.jpg", 0, "cat"], [bad, 0, "cat"]])
    with pytest.raises(RlptuneError) as info:
        load_split_json(path)
    message = str(info.value)
    assert str(path) in message and "train[1]" in message and "\n" not in message


def test_csv_escapes_rejected_naming_file_and_line(tree):
    root, _ = tree
    path = root / "data.csv"
    path.write_text("path,label,split\ncat/a.jpg,cat,train\n../outside/secret.jpg,cat,test\n")
    with pytest.raises(RlptuneError, match=r"data\.csv: line 3: .*'\.\.'"):
        load_csv(path)
