"""Fuzzing the data files users write: every outcome is a loaded dataset or an RlptuneError, nothing else."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlptune.data import DatasetSplits, load_csv, load_split_json
from rlptune.errors import RlptuneError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """root/ with a few real files, a symlink leading outside it, and a folder where a file is expected."""
    base = tmp_path_factory.mktemp("fuzz")
    root = base / "root"
    for rel in ("a.png", "b/c.png", "b/d.png", "sub/dir/e.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "folder.png").mkdir()
    (base / "outside").mkdir()
    (base / "outside" / "x.png").write_bytes(b"x")
    os.symlink(base / "outside", root / "link")
    return root


PATHS = st.one_of(
    st.sampled_from(
        [
            "a.png",
            "b/c.png",
            "b/d.png",
            "./a.png",
            "b//c.png",
            "sub/dir/e.jpg",
            "missing.png",
            "folder.png",
            "link/x.png",
            "../outside/x.png",
            "/etc/passwd",
            "C:\\x.png",
            "",
            ".",
            "..",
            "b/../a.png",
            "a.png\x00",
            "\ud800.png",
            "x" * 300,
        ]
    ),
    st.text(max_size=12),
)
LABELS = st.one_of(
    st.integers(-2, 4),
    st.booleans(),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.none(),
    st.integers(2**62, 2**80),
)
NAMES = st.one_of(st.sampled_from(["cat", "dog", "bird", "", " "]), st.text(max_size=6), st.integers(0, 3), st.none())
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
GOOD_ENTRY = st.tuples(
    st.sampled_from(["a.png", "b/c.png", "b/d.png", "sub/dir/e.jpg"]),
    st.integers(0, 2),
    st.sampled_from(["cat", "dog", "bird"]),
).map(list)
ENTRY = st.one_of(
    GOOD_ENTRY, st.tuples(PATHS, LABELS, NAMES).map(list), JSON, st.lists(PATHS | LABELS | NAMES, max_size=4)
)
SPLIT_LIST = st.one_of(st.lists(ENTRY, max_size=6), st.lists(GOOD_ENTRY, max_size=6), JSON)
GOOD_PATHS = st.sampled_from(["a.png", "b/c.png", "b/d.png", "sub/dir/e.jpg"])
CONSISTENT_ENTRY = st.tuples(st.one_of(GOOD_PATHS, GOOD_PATHS, PATHS), st.integers(0, 2)).map(
    lambda t: [t[0], t[1], ["cat", "dog", "bird"][t[1]]]
)
NEAR_VALID = st.fixed_dictionaries(
    {"train": st.lists(CONSISTENT_ENTRY, min_size=1, max_size=6)},
    optional={"val": st.lists(CONSISTENT_ENTRY, max_size=4), "test": st.lists(CONSISTENT_ENTRY, max_size=4)},
)
SPLIT_OBJECT = st.one_of(
    NEAR_VALID,
    NEAR_VALID,
    st.dictionaries(st.sampled_from(["train", "val", "test"]), SPLIT_LIST, max_size=3),
    st.dictionaries(st.sampled_from(["train", "val", "test", "extra", "Train", ""]), SPLIT_LIST, max_size=4),
    JSON,
)


def outcome(call):
    try:
        result = call()
    except RlptuneError as exc:
        message = str(exc)
        assert message and "\n" not in message
        return None
    assert isinstance(result, DatasetSplits)
    result.validate()
    for part in ("train", "val", "test"):
        for item in result.split(part):
            assert not Path(item.path).is_absolute() and ".." not in item.path.split("/")
    return result


@FUZZ
@given(obj=SPLIT_OBJECT, check_files=st.booleans())
def test_split_json_contents(world, obj, check_files):
    path = world.parent / "fuzz_split.json"
    path.write_text(json.dumps(obj))
    result = outcome(lambda: load_split_json(path, world, check_files=check_files))
    if result is not None:
        # a loaded entry never leads outside the root, even through the symlink
        for part in ("train", "val", "test"):
            for item in result.split(part):
                real = os.path.realpath(result.abspath(item))
                assert real.startswith(os.path.realpath(world) + os.sep)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_split_json_raw_bytes(world, raw):
    path = world.parent / "fuzz_raw.json"
    path.write_bytes(raw)
    outcome(lambda: load_split_json(path, world, check_files=False))


CSV_CELL = st.one_of(
    st.sampled_from(
        [
            "a.png",
            "b/c.png",
            "../x.png",
            "/etc/passwd",
            "cat",
            "0",
            "1",
            "-1",
            "train",
            "test",
            "val",
            "holdout",
            "",
            '"',
            ",",
        ]
    ),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6),
)


@FUZZ
@given(
    header=st.one_of(
        st.just(["path", "label"]),
        st.just(["path", "label", "split"]),
        st.lists(st.sampled_from(["path", "label", "split", "x", ""]), max_size=4),
    ),
    rows=st.lists(st.lists(CSV_CELL, min_size=0, max_size=4), max_size=6),
    with_names=st.booleans(),
)
def test_csv_contents(world, header, rows, with_names):
    path = world.parent / "fuzz.csv"
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n", encoding="utf-8")
    names = world.parent / "names.txt"
    names.write_text("cat\ndog\n")
    outcome(lambda: load_csv(path, world, classnames=names if with_names else None, check_files=False))
