"""Speed-relevant guarantees of the engine: the feature cache, cheap inference, precision settings."""

from __future__ import annotations

import json
import os

import pytest
import torch

from rlptune.backbones import load_backbone
from rlptune.config import resolve_config
from rlptune.data import load_dataset
from rlptune.engine import prepare_dataset, train
from rlptune.engine.features import FeatureCache, cache_key
from rlptune.engine.trainer import Trainer
from rlptune.methods import build_method


@pytest.fixture(scope="module")
def tiny(tiny_arch_path):
    return load_backbone(str(tiny_arch_path), device="cpu")


@pytest.fixture(scope="module")
def splits(colour_folder):
    return load_dataset("folder", colour_folder)


def _config(colour_folder, tmp_path, **sections):
    overrides = {
        "data": {"dataset": "folder", "root": str(colour_folder), "shots": 4},
        "train": {"epochs": 2, "aug_views": 2, "cache_dir": str(tmp_path / "cache"), "batch_size": 8},
        "prompt": {"n_ctx": 4},
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return resolve_config(None, overrides)


class Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1


# -- feature cache -------------------------------------------------------------------------------------------------


def test_views_are_distinct_deterministic_and_safe_files(tiny, splits, tmp_path):
    cache = FeatureCache(tmp_path / "c")
    v0, v1, v2 = (cache.get_or_encode(tiny, splits, splits.train[:8], view=v) for v in (0, 1, 2))
    assert not torch.equal(v1, v2) and not torch.equal(v0, v1)  # each view is its own augmentation
    again = FeatureCache(tmp_path / "other").get_or_encode(tiny, splits, splits.train[:8], view=1)
    assert torch.equal(again, v1)  # seeded per (view, image): rebuilding gives the same features
    files = sorted(p.suffix for p in (tmp_path / "c" / "features").iterdir())
    assert files == [".json"] * 3 + [".safetensors"] * 3  # safetensors + a JSON manifest; no pickle anywhere
    assert not list((tmp_path / "c" / "features").glob(".*.tmp"))  # atomic writes leave no temporaries


def test_cache_key_covers_backbone_transform_view_and_items(tiny, splits, tiny_arch_path, colour_folder, tmp_path):
    items = splits.train[:6]
    key = cache_key(tiny, splits, items, 1)
    other_weights = load_backbone(f"random:{tiny_arch_path}", seed=7)
    assert cache_key(other_weights, splits, items, 1) != key
    assert cache_key(tiny, splits, items, 2) != key
    assert cache_key(tiny, splits, items[::-1], 1) != key
    assert cache_key(tiny, splits, items[:-1], 1) != key
    tiny_bf16 = load_backbone(str(tiny_arch_path), precision="bf16")
    assert cache_key(tiny_bf16, splits, items, 1) != key  # autocast features differ
    path = splits.abspath(items[0])  # keyed by content: a touch alone keeps the key, new bytes change it
    stat, original = path.stat(), path.read_bytes()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert cache_key(tiny, splits, items, 1) == key
    try:
        path.write_bytes(bytes([original[0] ^ 1]) + original[1:])  # same size, mtime restored below
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert cache_key(tiny, splits, items, 1) != key
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_training_cycles_views_and_never_runs_the_image_tower_once_cached(tiny, colour_folder, tmp_path, monkeypatch):
    config = _config(colour_folder, tmp_path, train={"epochs": 4, "aug_views": 2})
    train(config, tmp_path / "warm", backbone=tiny, progress=False)  # builds 2 train views + test features
    images = Counter()
    monkeypatch.setattr(tiny, "encode_image", lambda *a, **k: images(*a) or pytest.fail("image tower ran"))
    result = train(config, tmp_path / "again", backbone=tiny, progress=False)
    assert images.calls == 0 and result["epochs"] == 4
    monkeypatch.undo()

    # with aug_views = V, epoch e trains on cached view (e mod V) + 1
    data = prepare_dataset(config, tmp_path / "warm" / "few_shot.json")  # the same 16 items: cache hits
    method = build_method(config, tiny, data.classnames)
    trainer = Trainer(config, method, data, tmp_path / "t", cache=FeatureCache(tmp_path / "cache"), progress=False)
    views = [trainer.epoch_features(e) for e in range(4)]
    assert not torch.equal(views[0], views[1])
    assert torch.equal(views[0], views[2]) and torch.equal(views[1], views[3])


def test_fresh_views_differ_every_epoch_and_seed_and_are_shared_across_methods(tiny, colour_folder, tmp_path):
    """The default (official) mode: a new crop per image and epoch, drawn from the run's seed; another method with
    the same seed reads the very same features from the cache."""

    def features(method_name, seed, epochs):
        config = _config(colour_folder, tmp_path, method={"name": method_name}, train={"aug_views": 0, "seed": seed})
        data = prepare_dataset(config)
        method = build_method(config, tiny, data.classnames)
        cache = FeatureCache(tmp_path / "cache")
        trainer = Trainer(config, method, data, tmp_path / "t", cache=cache, progress=False)
        return [trainer.epoch_features(e) for e in range(epochs)], cache

    coop, _ = features("coop", 1, 3)
    assert not torch.equal(coop[0], coop[1]) and not torch.equal(coop[1], coop[2])
    rlp, cache = features("rlp", 1, 3)
    assert all(torch.equal(a, b) for a, b in zip(coop, rlp)) and cache.misses == 0  # shared, not re-encoded
    other_seed, _ = features("coop", 2, 1)
    assert not torch.equal(other_seed[0], coop[0])


def test_fp32_is_the_cpu_default_and_trainable_tensors_must_be_fp32(tiny, colour_folder, tmp_path, monkeypatch):
    config = _config(colour_folder, tmp_path, method={"name": "coop"})
    method = build_method(config, tiny, ["red", "green", "blue", "yellow"])
    method.prompt.ctx.data = method.prompt.ctx.data.half()
    from rlptune.errors import RlptuneError

    trainer = Trainer(config, method, load_dataset("folder", colour_folder), tmp_path / "t", progress=False)
    with pytest.raises(RlptuneError, match="must be fp32"):
        trainer.fit()
    from rlptune.backbones import precision

    monkeypatch.setattr(precision, "CPU_BF16_WITHIN_SEED_SPREAD", False)  # bf16 not (yet) cleared for CPUs
    assert config.backbone.precision == "auto"  # the default, resolved when a run starts
    precision.settle_run_precision(config, tiny)
    assert json.loads(json.dumps(config.to_dict()))["backbone"]["precision"] == "fp32"
