"""Training learns, is deterministic, resumes exactly; adapters round-trip and refuse other backbones."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlptune.backbones import load_backbone
from rlptune.config import resolve_config
from rlptune.data import load_dataset
from rlptune.engine import adapter as adapter_mod
from rlptune.engine import learning_rate, load_adapter, train
from rlptune.engine.features import FeatureCache
from rlptune.errors import RlptuneError


@pytest.fixture(scope="module")
def tiny(tiny_arch_path):
    return load_backbone(str(tiny_arch_path), device="cpu")


def _config(colour_folder, tmp_path, **sections):
    overrides = {
        "data": {"dataset": "folder", "root": str(colour_folder), "shots": 8},
        "train": {"epochs": 6, "aug_views": 1, "cache_dir": str(tmp_path / "cache")},
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return resolve_config(None, overrides)


def test_learning_happens_on_held_out_images(tiny, colour_folder, tmp_path):
    config = _config(
        colour_folder,
        tmp_path,
        method={"name": "coop", "class_specific": True},
        data={"shots": 0},
        train={"epochs": 20, "lr": 0.05, "batch_size": 16},
    )
    result = train(config, tmp_path / "run", backbone=tiny, progress=False)
    zero = train(
        _config(colour_folder, tmp_path, method={"name": "zeroshot"}), tmp_path / "zs", backbone=tiny, progress=False
    )
    assert (
        result["metrics"]["test"]["top1"] >= 70.0
    )  # 4 classes: chance is 25% (0.1.0 reached 75.0, this schedule 72.9)
    assert result["metrics"]["test"]["top1"] > zero["metrics"]["test"]["top1"] + 25
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == list(range(1, 21))
    assert lines[-1]["loss"] < lines[0]["loss"]
    diag = lines[-1]["diagnostics"]["ctx"]  # singular-value diagnostics of P and of P - P_init, every epoch
    assert 0.0 < diag["P"]["id_k"] <= 1.0 and diag["delta"]["frobenius_norm"] > 0


def test_same_seed_same_result_and_adapter_files(tiny, colour_folder, tmp_path):
    config = _config(colour_folder, tmp_path, method={"name": "rlp"}, prompt={"dropout": 0.3})
    a = train(config, tmp_path / "a", backbone=tiny, progress=False)
    b = train(config, tmp_path / "b", backbone=tiny, progress=False)
    assert a["metrics"] == b["metrics"]
    bytes_a = (tmp_path / "a" / "adapter" / "rlptune_adapter.safetensors").read_bytes()
    assert bytes_a == (tmp_path / "b" / "adapter" / "rlptune_adapter.safetensors").read_bytes()
    assert sorted(p.name for p in (tmp_path / "a" / "adapter").iterdir()) == [
        "README.md",
        "rlptune_adapter.json",
        "rlptune_adapter.safetensors",
        "training_config.yaml",
    ]
    assert len(bytes_a) < 4096  # 4 + 32 numbers on the 32-wide test tower


def test_resume_after_interruption_equals_uninterrupted(tiny, colour_folder, tmp_path, monkeypatch):
    config = _config(
        colour_folder,
        tmp_path,
        method={"name": "rlp"},
        prompt={"dropout": 0.2},
        train={"optimizer": "adamw", "lr": 0.01},
    )
    train(config, tmp_path / "full", backbone=tiny, progress=False)

    real_save = adapter_mod.save_checkpoint
    calls = {"n": 0}

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed right after the epoch-3 checkpoint

    import rlptune.engine.callbacks as callbacks_mod  # the checkpointing callback saves

    monkeypatch.setattr(callbacks_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "killed", backbone=tiny, progress=False)
    assert not (tmp_path / "killed" / "result.json").exists()
    monkeypatch.setattr(callbacks_mod, "save_checkpoint", real_save)
    train(config, tmp_path / "killed", backbone=tiny, resume=True, progress=False)
    full = (tmp_path / "full" / "adapter" / "rlptune_adapter.safetensors").read_bytes()
    resumed = (tmp_path / "killed" / "adapter" / "rlptune_adapter.safetensors").read_bytes()
    assert full == resumed
    epochs = [json.loads(ln)["epoch"] for ln in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5, 6]


def test_adapter_round_trip_gives_identical_logits(tiny, colour_folder, tmp_path):
    config = _config(colour_folder, tmp_path, method={"name": "rlp"}, train={"epochs": 3, "lr": 0.05})
    train(config, tmp_path / "run", backbone=tiny, progress=False)
    splits = load_dataset("folder", colour_folder)
    feats = FeatureCache(tmp_path / "cache").get_or_encode(tiny, splits, splits.test)
    method = load_adapter(tmp_path / "run" / "adapter", tiny)
    with torch.no_grad():
        unmerged = method.logits(feats)
        merged = method.merge().logits(feats)
    assert torch.allclose(unmerged, merged, atol=1e-5)
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    acc = 100.0 * float((merged.argmax(-1) == torch.tensor([i.label for i in splits.test])).float().mean())
    assert abs(acc - saved["metrics"]["test"]["top1"]) < 1e-9
    cfg = json.loads((tmp_path / "run" / "adapter" / "rlptune_adapter.json").read_text())
    assert cfg["backbone"]["identity"] == tiny.identity and cfg["trainable_params"] == 4 + 32


def test_adapter_on_another_backbone_names_both(tiny, colour_folder, tmp_path, tiny_arch_path):
    config = _config(colour_folder, tmp_path, method={"name": "rlp"}, train={"epochs": 0})
    train(config, tmp_path / "run", backbone=tiny, progress=False)
    other = load_backbone(f"random:{tiny_arch_path}", seed=5)
    with pytest.raises(RlptuneError) as info:
        load_adapter(tmp_path / "run" / "adapter", other)
    assert tiny.identity in str(info.value) and other.identity in str(info.value)


def test_corrupt_adapter_and_checkpoint_are_clear_errors(tiny, colour_folder, tmp_path):
    config = _config(colour_folder, tmp_path, method={"name": "rlp"}, train={"epochs": 1})
    train(config, tmp_path / "run", backbone=tiny, progress=False)
    (tmp_path / "run" / "adapter" / "rlptune_adapter.safetensors").write_bytes(b"garbage")
    with pytest.raises(RlptuneError, match="rlptune_adapter.safetensors: not a safetensors file"):
        load_adapter(tmp_path / "run" / "adapter", tiny)
    (tmp_path / "run" / "checkpoint" / "last.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(RlptuneError, match="last.safetensors: not an rlptune checkpoint"):
        train(config, tmp_path / "run", backbone=tiny, resume=True, progress=False)


def test_resume_with_other_settings_is_refused(tiny, colour_folder, tmp_path):
    config = _config(colour_folder, tmp_path, method={"name": "rlp"}, train={"epochs": 2})
    train(config, tmp_path / "run", backbone=tiny, progress=False)
    other = _config(colour_folder, tmp_path, method={"name": "rlp"}, train={"epochs": 2, "lr": 0.5})
    with pytest.raises(RlptuneError, match="other settings"):
        train(other, tmp_path / "run", backbone=tiny, resume=True, progress=False)


@pytest.mark.parametrize("epochs", [5, 10, 50, 200])
def test_schedule_is_dassls_constant_warmup_then_cosine(epochs):
    """Dassl: epoch 0 at the warm-up rate, epoch 1 at the full rate, epoch e >= 1 at lr·(1 + cos(π(e − 1)/T))/2."""
    config = resolve_config(None, {"train": {"epochs": epochs, "lr": 0.002, "warmup_epochs": 1, "warmup_lr": 1e-5}})
    lrs = [learning_rate(config.train, e) for e in range(epochs)]
    expected = [1e-5] + [0.5 * 0.002 * (1 + math.cos(math.pi * (e - 1) / epochs)) for e in range(1, epochs)]
    assert lrs == pytest.approx(expected, rel=1e-12, abs=0)
    assert lrs[1] == 0.002  # the peak rate is trained at
    if epochs == 50:  # an official CoOp run's log: 1e-5, 2.0e-3, 1.998e-3, ..., 7.9e-6
        assert f"{lrs[2]:.3e}" == "1.998e-03" and f"{lrs[-1]:.1e}" == "7.9e-06"


def test_step_schedule_runs_the_cosine_over_iterations_to_its_floor():
    """CLIP-LoRA: per-iteration cosine from lr to eta_min over the whole run, no warm-up."""
    config = resolve_config(
        None, {"train": {"iterations": 100, "lr": 2e-4, "min_lr": 1e-6, "warmup_epochs": 0, "schedule_unit": "step"}}
    )
    rates = [learning_rate(config.train, i // 10, i % 10, 10) for i in range(100)]
    assert rates[0] == pytest.approx(2e-4)
    assert rates[50] == pytest.approx(1e-6 + 0.5 * (2e-4 - 1e-6))
    assert rates[99] == pytest.approx(1e-6 + 0.5 * (2e-4 - 1e-6) * (1 + math.cos(math.pi * 99 / 100)))


def test_feature_cache_hits_and_invalidates(tiny, colour_folder, tmp_path):
    splits = load_dataset("folder", colour_folder)
    cache = FeatureCache(tmp_path / "c")
    first = cache.get_or_encode(tiny, splits, splits.test)
    again = cache.get_or_encode(tiny, splits, splits.test)
    assert torch.equal(first, again) and (cache.hits, cache.misses) == (1, 1)
    cache.get_or_encode(tiny, splits, splits.test, view=1)  # another view is another entry
    cache.get_or_encode(tiny, splits, splits.test[:-1])  # another item list too
    assert cache.misses == 3
    assert not list((tmp_path / "c").rglob("*.pkl"))
