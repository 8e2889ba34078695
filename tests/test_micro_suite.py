"""The micro benchmark: structure, determinism, and the on-disk cache."""

import numpy as np
import pytest
from PIL import Image

from rlptune.data.items import DatasetSplits
from rlptune.errors import RlptuneError
from rlptune.micro import world as W
from rlptune.micro.suite import (
    GENERIC_TEMPLATE,
    MICRO_DATASETS,
    MICRO_SHIFTS,
    dataset_scenes,
    load_micro_dataset,
    micro_spec,
    render_split,
)


def test_suite_structure():
    assert len(MICRO_DATASETS) >= 8
    assert len(set(MICRO_DATASETS)) == len(MICRO_DATASETS)
    for name in MICRO_DATASETS:
        spec = micro_spec(name)
        assert len(spec.classnames) >= 10, name
        assert len(set(spec.classnames)) == len(spec.classnames), name
        assert spec.style != "photo" and spec.style in W.STYLES, name
        assert spec.style not in GENERIC_TEMPLATE
        assert spec.splits["train"] >= 16 and 30 <= spec.splits["test"] <= 50
        for c in spec.classnames:  # plain words
            assert all(w.isalpha() for w in c.split()), c
    assert sum(len(v) for v in MICRO_SHIFTS.values()) >= 2


def test_shifts_share_classes_and_change_style():
    for src, shifts in MICRO_SHIFTS.items():
        for s in shifts:
            spec = micro_spec(s)
            assert spec.classnames == micro_spec(src).classnames
            assert spec.style != micro_spec(src).style
            assert spec.splits["test"] > 0 and spec.splits["train"] == 0


def test_scenes_carry_their_class_attributes():
    for name in MICRO_DATASETS:
        spec = micro_spec(name)
        for scene, label, _rng in dataset_scenes(name, "val"):
            assert scene.style == spec.style
            for attr, value in spec.classes[label][1]:
                assert getattr(scene, attr) == value


def test_splits_are_disjoint_draws():
    a, _ = render_split("micro-colors", "val")
    b, _ = render_split("micro-colors", "test")
    assert not {x.tobytes() for x in a} & {x.tobytes() for x in b}


def test_unknown_name_is_a_one_line_error():
    with pytest.raises(RlptuneError, match="unknown micro dataset"):
        micro_spec("micro-nope")


def test_load_writes_pngs_once_and_matches_memory(tmp_path):
    name = MICRO_SHIFTS["micro-shapes"][0]  # a test-only set: small and quick
    ds = load_micro_dataset(name, cache_dir=tmp_path)
    assert isinstance(ds, DatasetSplits)
    assert ds.template == GENERIC_TEMPLATE and ds.classnames == micro_spec(name).classnames
    assert not ds.train and len(ds.test) == 10 * micro_spec(name).splits["test"]
    images, labels = render_split(name, "test")
    for k in (0, 17, len(images) - 1):
        item = ds.test[k]
        assert item.label == labels[k] and item.classname == ds.classnames[item.label]
        assert not item.path.startswith("/")
        assert np.array_equal(np.asarray(Image.open(ds.abspath(item)).convert("RGB")), images[k])
    mtime = ds.abspath(ds.test[0]).stat().st_mtime_ns
    again = load_micro_dataset(name, cache_dir=tmp_path)
    assert again.root == ds.root and ds.abspath(ds.test[0]).stat().st_mtime_ns == mtime
    assert not [p for p in ds.root.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RLPTUNE_CACHE", str(tmp_path))
    ds = load_micro_dataset(MICRO_SHIFTS["micro-shapes"][1])
    assert str(ds.root).startswith(str(tmp_path))
