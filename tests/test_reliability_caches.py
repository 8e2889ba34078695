"""Caches that verify themselves: feature entries carry checksums of their data and source images, damaged entries
are rebuilt with a warning (never used), concurrent builders encode once; few-shot draws are written under a lock."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rlptune.engine.features as features
from rlptune.backbones import load_backbone
from rlptune.data import load_dataset
from rlptune.engine.features import FeatureCache, cache_key
from rlptune.errors import RlptuneError


@pytest.fixture(scope="module")
def tiny(tiny_arch_path):
    return load_backbone(str(tiny_arch_path), device="cpu")


@pytest.fixture()
def splits(tmp_path):
    from conftest import make_image_folder

    root = make_image_folder(tmp_path / "data", ["red", "green"], {"train": 3, "test": 2})
    return load_dataset("folder", root)


def _data_offset(path: Path) -> int:
    """Where the tensor bytes of a safetensors file start (8-byte header length + JSON header)."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def test_corrupted_feature_data_is_rebuilt_with_a_warning(tiny, splits, tmp_path, caplog):
    cache = FeatureCache(tmp_path / "c")
    good = cache.get_or_encode(tiny, splits, splits.test)
    path = cache.path(cache_key(tiny, splits, splits.test, 0))
    raw = bytearray(path.read_bytes())
    start = _data_offset(path)
    raw[start : start + 16] = b"\x00" * 16  # the data region, not the header: still a loadable file
    path.write_bytes(bytes(raw))
    again = FeatureCache(tmp_path / "c")
    with caplog.at_level(logging.WARNING):
        feats = again.get_or_encode(tiny, splits, splits.test)
    assert torch.equal(feats, good) and again.rebuilt == 1 and again.misses == 1
    assert "feature checksum mismatch" in caplog.text and str(path) in caplog.text
    third = FeatureCache(tmp_path / "c")
    assert torch.equal(third.get_or_encode(tiny, splits, splits.test), good) and third.hits == 1  # repaired


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no-checksum", "nan"])
def test_other_damage_is_rebuilt_never_used(tiny, splits, tmp_path, damage):
    from safetensors.torch import save_file

    cache = FeatureCache(tmp_path / "c")
    good = cache.get_or_encode(tiny, splits, splits.test)
    path = cache.path(cache_key(tiny, splits, splits.test, 0))
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-40])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    elif damage == "no-checksum":
        save_file({"features": torch.zeros_like(good)}, str(path))
    else:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata()
        bad = good.clone()
        bad[0, 0] = float("nan")
        import json

        manifest = json.loads(meta["manifest"])
        manifest["features_sha256"] = features._tensor_sha256(bad)
        save_file({"features": bad}, str(path), {"manifest": json.dumps(manifest)})
    again = FeatureCache(tmp_path / "c")
    assert torch.equal(again.get_or_encode(tiny, splits, splits.test), good) and again.rebuilt == 1


def test_changed_image_with_same_size_and_mtime_is_encoded_again(tiny, splits, tmp_path):
    from PIL import Image

    cache = FeatureCache(tmp_path / "c")
    before = cache.get_or_encode(tiny, splits, splits.test)
    path = splits.abspath(splits.test[0])
    stat, size = path.stat(), path.stat().st_size
    Image.new("RGB", (40, 40), (250, 250, 250)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:size] if len(data) >= size else data + b"\x00" * (size - len(data)))  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old modification time
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    again = FeatureCache(tmp_path / "c")
    after = again.get_or_encode(tiny, splits, splits.test)
    assert again.misses == 1 and not torch.equal(after[0], before[0]) and torch.equal(after[1:], before[1:])


def test_content_hashes_are_memoised_and_persisted(tiny, splits, tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path / "c")
    cache.get_or_encode(tiny, splits, splits.test)
    assert (tmp_path / "c" / FeatureCache.MEMO_FILE).is_file()
    features._CONTENT_MEMO.clear()
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: reads.append(str(f)) or real_open(f, *a, **k))
    FeatureCache(tmp_path / "c").get_or_encode(tiny, splits, splits.test)
    monkeypatch.undo()
    images = {str(splits.abspath(it)) for it in splits.test}
    assert not images & set(reads)  # unchanged files are not re-read: the persisted memo vouches for them


def test_cache_path_that_is_a_file_is_one_line(tiny, splits, tmp_path):
    blocker = tmp_path / "cache-file"
    blocker.write_text("x")
    with pytest.raises(RlptuneError, match="cache-file: feature cache folder is a file, not a folder"):
        FeatureCache(blocker).get_or_encode(tiny, splits, splits.test)


def _build(root: str, splits, tiny, start_at: float, queue) -> None:
    while time.time() < start_at:
        time.sleep(0.001)
    cache = FeatureCache(root)
    feats = cache.get_or_encode(tiny, splits, splits.test)
    queue.put((cache.misses, feats.sum().item()))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(delay=st.floats(0.0, 0.05))
def test_two_processes_needing_one_entry_encode_it_once(tiny, splits, tmp_path, delay):
    root = tmp_path / f"race-{time.monotonic_ns()}"
    real = features.encode_items

    def slow_encode(backbone, splits, items, *args, **kwargs):
        # no image tower in forked children (OpenMP is not fork-safe); a pause widens the race window
        time.sleep(0.1)
        return torch.arange(len(items) * 4, dtype=torch.float32).reshape(len(items), 4) / 7

    features.encode_items = slow_encode
    try:
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        start_at = time.time() + 0.2
        procs = [ctx.Process(target=_build, args=(str(root), splits, tiny, start_at + d, queue)) for d in (0.0, delay)]
        for p in procs:
            p.start()
        outcomes = [queue.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=30)
    finally:
        features.encode_items = real
    assert sorted(m for m, _ in outcomes) == [0, 1]  # one built it, the other waited and read it
    assert outcomes[0][1] == outcomes[1][1]
    assert not list((root / "features").glob(".*.tmp"))


def test_few_shot_cache_path_that_is_a_folder_is_one_line(splits, tmp_path):
    from rlptune.data.fewshot import fewshot_splits

    (tmp_path / "few_shot.json").mkdir()
    with pytest.raises(RlptuneError, match="few_shot.json: few-shot cache path is a folder, not a file"):
        fewshot_splits(splits, 1, 1, cache_path=tmp_path / "few_shot.json")


def test_safetensors_files_are_written_with_the_umask_mode(tmp_path):
    from rlptune import io

    path = io.write_safetensors(tmp_path / "t.safetensors", {"a": torch.zeros(2)})
    assert path.stat().st_mode & 0o777 == 0o666 & ~io._UMASK


def test_full_disk_is_one_line(tmp_path):
    import errno

    from rlptune import io

    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RlptuneError, match=r"out\.json: cannot write \(no space left on device\)"):
        io.atomic_write(tmp_path / "out.json", full)
    assert list(tmp_path.iterdir()) == []


def _draw(splits, path: str, start_at: float, queue) -> None:
    from rlptune.data.fewshot import fewshot_splits

    while time.time() < start_at:
        time.sleep(0.001)
    drawn = fewshot_splits(splits, 1, 3, cache_path=path)
    queue.put([it.path for it in drawn.train])


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(delay=st.floats(0.0, 0.01))
def test_two_processes_drawing_one_few_shot_cache_agree(splits, tmp_path, delay):
    import json

    path = tmp_path / f"draw-{time.monotonic_ns()}" / "few_shot.json"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    start_at = time.time() + 0.2
    procs = [ctx.Process(target=_draw, args=(splits, str(path), start_at + d, queue)) for d in (0.0, delay)]
    for p in procs:
        p.start()
    draws = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert draws[0] == draws[1]
    assert [e[0] for e in json.loads(path.read_text())["train"]] == draws[0]
    assert not list(path.parent.glob(".*.tmp"))
