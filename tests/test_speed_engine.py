"""Speed-relevant guarantees of the engine: the feature cache, cheap inference, precision settings."""

from __future__ import annotations

import json
import os

import pytest
import torch

from rlptune.backbones import load_backbone
from rlptune.config import resolve_config
from rlptune.data import load_dataset
from rlptune.engine import predict, prepare_dataset, train
from rlptune.engine.features import FeatureCache, cache_key
from rlptune.engine.trainer import Trainer, evaluate_split
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

    # epochs cycle through the cached views: epoch e trains on view (e mod V) + 1
    data = prepare_dataset(config, tmp_path / "warm" / "few_shot.json")  # the same 16 items: cache hits
    method = build_method(config, tiny, data.classnames)
    trainer = Trainer(config, method, data, tmp_path / "t", cache=FeatureCache(tmp_path / "cache"), progress=False)
    views = trainer.train_views()
    assert len(views) == 2 and not torch.equal(views[0], views[1])
    used = []
    real_logits = method.logits
    monkeypatch.setattr(method, "logits", lambda x: used.append(x.detach().clone()) or real_logits(x))
    monkeypatch.setattr(trainer, "train_views", lambda: views)
    trainer.fit()
    rows = {v: {tuple(r.tolist()) for r in views[v]} for v in (0, 1)}
    per_epoch = len(used) // 4
    for epoch in range(4):
        batch_rows = {tuple(r.tolist()) for x in used[epoch * per_epoch : (epoch + 1) * per_epoch] for r in x}
        assert batch_rows <= rows[epoch % 2]


# -- inference ------------------------------------------------------------------------------------------------------

def test_eval_and_predict_cost_one_text_pass(tiny, colour_folder, splits, tmp_path, monkeypatch):
    config = _config(colour_folder, tmp_path, method={"name": "rlp"})
    train(config, tmp_path / "run", backbone=tiny, progress=False)
    from rlptune.engine import load_adapter

    method = load_adapter(tmp_path / "run" / "adapter", tiny)
    text_calls = Counter()
    method.text.register_forward_pre_hook(lambda *a: text_calls())
    cache = FeatureCache(tmp_path / "cache")
    metrics = evaluate_split(method, splits, "test", cache, batch_size=5)
    assert metrics["n"] == len(splits.test) and text_calls.calls == 1  # class features once, then matmuls
    image_calls = Counter()
    real = tiny.encode_image
    monkeypatch.setattr(tiny, "encode_image", lambda x, **k: image_calls() or real(x, **k))
    rows = predict(method, [colour_folder / "test"], top_k=2, batch_size=7)
    assert len(rows) == len(splits.test)
    assert text_calls.calls == 2  # one more text pass for the whole predict call, however many batches
    assert image_calls.calls == -(-len(splits.test) // 7)


# -- precision ------------------------------------------------------------------------------------------------------

def test_bf16_autocast_in_every_forward_with_fp32_prompts(tiny_arch_path, colour_folder, tmp_path):
    backbone = load_backbone(str(tiny_arch_path), precision="bf16")  # CPU autocast stands in for the GPU here
    text_states, image_states = [], []
    # the MLP of a text block runs on the shared-prefix path and on the plain path alike
    backbone.text.transformer.resblocks[0].mlp.register_forward_pre_hook(
        lambda *a: text_states.append(torch.is_autocast_enabled("cpu"))
    )
    backbone.model.visual.register_forward_pre_hook(lambda *a: image_states.append(torch.is_autocast_enabled("cpu")))
    for method_name, extra in (("coop", {}), ("rlp", {}), ("coop", {"class_specific": True})):
        config = _config(colour_folder, tmp_path, method={"name": method_name, **extra}, backbone={"precision": "bf16"})
        result = train(config, tmp_path / f"{method_name}{len(extra)}", backbone=backbone, progress=False)
        assert result["epochs"] == 2
        assert text_states and all(text_states) and image_states and all(image_states)
        method = build_method(config, backbone, ["red", "green", "blue", "yellow"])
        method.train()
        method.class_features().sum().backward()
        for p in method.parameters():
            if p.requires_grad:
                assert p.dtype == torch.float32 and p.grad.dtype == torch.float32
    assert resolve_config(None, {}).backbone.precision == "fp32"  # fp32 is the default


def test_fp32_is_the_cpu_default_and_trainable_tensors_must_be_fp32(tiny, colour_folder, tmp_path):
    config = _config(colour_folder, tmp_path, method={"name": "coop"})
    method = build_method(config, tiny, ["red", "green", "blue", "yellow"])
    method.prompt.ctx.data = method.prompt.ctx.data.half()
    from rlptune.errors import RlptuneError

    trainer = Trainer(config, method, load_dataset("folder", colour_folder), tmp_path / "t", progress=False)
    with pytest.raises(RlptuneError, match="must be fp32"):
        trainer.fit()
    assert json.loads(json.dumps(config.to_dict()))["backbone"]["precision"] == "fp32"
