"""The bounded feature cache (``cache.max_gb``, least recently used evicted first), ``rlptune cache info|ls|clear``,
and ``cache.views = memory`` (views never written; adapters byte-identical to the cached mode)."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rlptune.cachedir as cachedir
import rlptune.engine.features as features
from conftest import make_image_folder
from rlptune.backbones import load_backbone
from rlptune.cli import main
from rlptune.config import resolve_config
from rlptune.data import load_dataset
from rlptune.engine import train
from rlptune.engine.features import FeatureCache, cache_key
from rlptune.errors import RlptuneError

ENTRY = re.compile(r"^[0-9a-f]{32}\.(safetensors|json)$")


@pytest.fixture(scope="module")
def tiny(tiny_arch_path):
    return load_backbone(str(tiny_arch_path), device="cpu")


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = make_image_folder(tmp_path_factory.mktemp("data"), ["red", "green"], {"train": 3, "test": 2})
    return load_dataset("folder", root)


def fake_encode(backbone, splits, items, view=0, *args, view_seed=0, **kwargs):
    """Known features per (view, seed) without the image tower (forked children must not run OpenMP)."""
    return expected(len(items), view, view_seed)


def expected(count: int, view: int, seed: int) -> torch.Tensor:
    return (torch.arange(count * 64, dtype=torch.float32).reshape(count, 64) + view * 1000 + seed * 100_000) / 7


@pytest.fixture()
def fake_encoder(monkeypatch):
    monkeypatch.setattr(features, "encode_items", fake_encode)


def entry_bytes(root: Path) -> int:
    """Bytes of the complete entries (tensor file + sidecar) in the cache's features folder."""
    total = 0
    try:
        names = os.listdir(root / "features")
    except FileNotFoundError:
        return 0
    for name in names:
        if ENTRY.match(name):
            try:
                total += os.lstat(root / "features" / name).st_size
            except FileNotFoundError:
                pass
    return total


def keys_in(root: Path) -> set[str]:
    return {p.stem for p in (root / "features").glob("*.safetensors")}


def one_entry_size(tiny, splits, tmp_path: Path, view: int = 5, seed: int = 5) -> int:
    scratch = tmp_path / "scratch"
    FeatureCache(scratch).get_or_encode(tiny, splits, splits.test, view=view, view_seed=seed)
    return entry_bytes(scratch)


def key(tiny, splits, view: int, seed: int) -> str:
    return cache_key(tiny, splits, splits.test, view, features.DEFAULT_AUGMENT, seed if view else 0)


# -- the bound ------------------------------------------------------------------------------------------------------


def _writer(root: str, tiny, splits, max_gb: float, seed: int, start_at: float, queue) -> None:
    while time.time() < start_at:
        time.sleep(0.001)
    cache = FeatureCache(root, max_gb=max_gb)
    wrong = 0
    for view in (1, 2, 3):  # shared with the other writer
        wrong += not torch.equal(
            cache.get_or_encode(tiny, splits, splits.test, view=view, view_seed=3), expected(4, view, 3)
        )
    for view in range(1, 13):
        wrong += not torch.equal(
            cache.get_or_encode(tiny, splits, splits.test, view=view, view_seed=seed), expected(4, view, seed)
        )
    queue.put((wrong, cache.misses, cache.rebuilt, cache.not_stored))


def test_bound_holds_under_two_concurrent_writers(tiny, splits, tmp_path, fake_encoder):
    size = one_entry_size(tiny, splits, tmp_path)
    max_bytes = int(3.5 * size)
    root = tmp_path / "cache"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    start_at = time.time() + 0.3
    procs = [
        ctx.Process(target=_writer, args=(str(root), tiny, splits, max_bytes / 1e9, seed, start_at, queue))
        for seed in (1, 2)
    ]
    for p in procs:
        p.start()
    peak, samples = [0], [0]

    def sample():  # the bound holds at every moment, not only at the end
        while any(p.is_alive() for p in procs):
            peak[0] = max(peak[0], entry_bytes(root))
            samples[0] += 1

    watcher = threading.Thread(target=sample)
    watcher.start()
    outcomes = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    watcher.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    assert [o[0] for o in outcomes] == [0, 0]  # every reader got the right features, evictions or not
    assert all(o[2] == 0 for o in outcomes)  # no entry was ever seen half-deleted (that would be "damaged")
    assert sum(o[1] for o in outcomes) >= 24 + 3  # 27 distinct entries written ...
    assert peak[0] <= max_bytes and entry_bytes(root) <= max_bytes and samples[0] > 0
    assert 1 <= len(keys_in(root)) <= 3  # ... and the bound kept at most three of them
    assert not list((root / "features").glob(".*.tmp"))
    for name in os.listdir(root / "features"):  # every survivor is whole: tensor file and sidecar
        stem = name.split(".")[0]
        assert (root / "features" / f"{stem}.safetensors").is_file() and (root / "features" / f"{stem}.json").is_file()


def _reader(root: str, tiny, splits, max_gb: float, start_at: float, queue) -> None:
    while time.time() < start_at:
        time.sleep(0.001)
    cache = FeatureCache(root, max_gb=max_gb)
    wrong = 0
    for _ in range(15):
        for view in (1, 2):
            wrong += not torch.equal(
                cache.get_or_encode(tiny, splits, splits.test, view=view, view_seed=7), expected(4, view, 7)
            )
    queue.put((wrong, cache.rebuilt))


def test_readers_never_see_an_entry_half_deleted_while_another_process_evicts(tiny, splits, tmp_path, fake_encoder):
    size = one_entry_size(tiny, splits, tmp_path)
    max_bytes = int(2.5 * size)
    root = tmp_path / "cache"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    start_at = time.time() + 0.3
    reader = ctx.Process(target=_reader, args=(str(root), tiny, splits, max_bytes / 1e9, start_at, queue))
    writer = ctx.Process(target=_writer, args=(str(root), tiny, splits, max_bytes / 1e9, 1, start_at, queue))
    for p in (reader, writer):
        p.start()
    outcomes = [queue.get(timeout=120) for _ in range(2)]
    for p in (reader, writer):
        p.join(timeout=60)
    wrong_reader = next(o for o in outcomes if len(o) == 2)
    assert wrong_reader == (0, 0)  # right features every time, and no entry ever looked damaged
    assert entry_bytes(root) <= max_bytes


def test_eviction_takes_the_least_recently_used_entry_first(tiny, splits, tmp_path, fake_encoder):
    size = one_entry_size(tiny, splits, tmp_path)
    root = tmp_path / "cache"
    cache = FeatureCache(root, max_gb=3.5 * size / 1e9)
    keys = {}
    for i, view in enumerate((1, 2, 3)):
        cache.get_or_encode(tiny, splits, splits.test, view=view, view_seed=1)
        keys[view] = key(tiny, splits, view, 1)
        os.utime(cache.path(keys[view]), (1_000_000 + i * 10,) * 2)  # written long ago, in this order
    assert keys_in(root) == set(keys.values())
    cache.get_or_encode(tiny, splits, splits.test, view=1, view_seed=1)  # a read is a use: view 1 is now the newest
    assert cache.hits == 1 and cache.path(keys[1]).stat().st_mtime > 1_000_100
    cache.get_or_encode(tiny, splits, splits.test, view=4, view_seed=1)
    keys[4] = key(tiny, splits, 4, 1)
    assert keys_in(root) == {keys[1], keys[3], keys[4]}  # view 2 was the least recently used
    cache.get_or_encode(tiny, splits, splits.test, view=5, view_seed=1)
    keys[5] = key(tiny, splits, 5, 1)
    assert keys_in(root) == {keys[1], keys[4], keys[5]}  # then view 3
    assert not (root / "locks" / f"{keys[2]}.lock").exists()  # an evicted entry's lock goes with it


def test_an_entry_in_use_is_never_evicted(tiny, splits, tmp_path, fake_encoder):
    size = one_entry_size(tiny, splits, tmp_path)
    root = tmp_path / "cache"
    cache = FeatureCache(root, max_gb=2.5 * size / 1e9)
    for i, view in enumerate((1, 2)):
        cache.get_or_encode(tiny, splits, splits.test, view=view, view_seed=1)
        os.utime(cache.path(key(tiny, splits, view, 1)), (1_000_000 + i,) * 2)
    oldest = key(tiny, splits, 1, 1)
    with cachedir.entry_lock(root / "locks", f"{oldest}.lock", shared=True):  # someone is reading it
        cache.get_or_encode(tiny, splits, splits.test, view=3, view_seed=1)
    assert keys_in(root) == {oldest, key(tiny, splits, 3, 1)}  # the next oldest went instead


def test_an_entry_larger_than_the_bound_is_used_but_not_written(tiny, splits, tmp_path, fake_encoder, caplog):
    cache = FeatureCache(tmp_path / "cache", max_gb=1e-6)  # 1000 bytes: less than one entry
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            feats = cache.get_or_encode(tiny, splits, splits.test, view=1, view_seed=1)
    assert torch.equal(feats, expected(4, 1, 1)) and cache.misses == 2 and cache.not_stored == 2
    assert entry_bytes(tmp_path / "cache") == 0
    assert caplog.text.count("larger than cache.max_gb") <= 1


def test_a_symlinked_features_folder_is_never_evicted_from(tiny, splits, tmp_path, fake_encoder):
    size = one_entry_size(tiny, splits, tmp_path)
    outside = tmp_path / "elsewhere"
    FeatureCache(outside).get_or_encode(tiny, splits, splits.test, view=1, view_seed=1)
    before = {p.name: p.read_bytes() for p in (outside / "features").iterdir()}
    root = tmp_path / "cache"
    root.mkdir()
    (root / "features").symlink_to(outside / "features")
    cache = FeatureCache(root, max_gb=1.5 * size / 1e9)
    feats = cache.get_or_encode(tiny, splits, splits.test, view=2, view_seed=1)  # would need an eviction to fit
    assert torch.equal(feats, expected(4, 2, 1)) and cache.not_stored == 1
    assert {p.name: p.read_bytes() for p in (outside / "features").iterdir()} == before
    main(["cache", "clear", "--cache-dir", str(root)])
    assert {p.name: p.read_bytes() for p in (outside / "features").iterdir()} == before


# -- settings --------------------------------------------------------------------------------------------------------


def test_cache_settings_are_typed_validated_and_not_part_of_the_settings_hash():
    from rlptune.rundir import settings_hash

    config = resolve_config(None, {"cache": {"max_gb": "0.5", "views": "memory"}})
    assert config.cache.max_gb == 0.5 and config.cache.views == "memory" and config.cache.memory_gb == 2.0
    assert resolve_config().cache.max_gb == cachedir.DEFAULT_MAX_GB == 20.0
    assert settings_hash(config.to_dict()) == settings_hash(resolve_config().to_dict())
    for bad, fragment in (
        (-1, "cache.max_gb must be >= 0"),
        ("nan", "cache.max_gb: expected a finite number"),
        ("lots", "cache.max_gb: expected a number"),
    ):
        with pytest.raises(RlptuneError, match=re.escape(fragment)):
            resolve_config(None, {"cache": {"max_gb": bad}})
    with pytest.raises(RlptuneError, match="cache.views: expected one of disk, memory, got 'tape'"):
        resolve_config(None, {"cache": {"views": "tape"}})


@settings(max_examples=40, deadline=None, derandomize=True)
@given(days=st.floats(0, 1e6, allow_nan=False), spelling=st.sampled_from(["{!r}", "{:.17e}", " {} ", "{:.17g}", "+{}"]))
def test_older_than_means_the_same_days_in_every_spelling(days, spelling):
    text = spelling.format(days)
    assert cachedir.parse_days(text) == pytest.approx(days, rel=1e-15, abs=0)
    if days == int(days) and days < 1e15:
        assert cachedir.parse_days(str(int(days))) == days


@pytest.mark.parametrize("bad", ["-1", "nan", "inf", "soon", "", "1 day"])
def test_older_than_that_is_not_a_number_of_days_is_one_line(bad, tmp_path, capsys):
    code = main(["cache", "clear", "--cache-dir", str(tmp_path), f"--older-than={bad}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"rlptune: error: --older-than {bad!r}: expected a number of days >= 0" in err


# -- rlptune cache info | ls | clear ---------------------------------------------------------------------------------


def _train(colour_folder, out: Path, cache: Path, tiny, views: str) -> dict:
    config = resolve_config(
        None,
        {
            "data": {"dataset": "folder", "root": str(colour_folder), "shots": 4},
            "method": {"name": "coop"},
            "train": {"epochs": 3, "batch_size": 16, "cache_dir": str(cache), "val_every": 0, "log_diagnostics": False},
            "cache": {"views": views},
        },
    )
    return train(config, out, backbone=tiny, progress=False, log=lambda msg: None)


@pytest.fixture(scope="module")
def trained(tiny, colour_folder, tmp_path_factory):
    """One CoOp run with fresh views on disk, the same run with views in memory."""
    base = tmp_path_factory.mktemp("streaming")
    features._VIEW_MEMORY.clear()
    features._CONTENT_MEMO.clear()  # hashes of these images known from earlier tests would leave the memo file unwritten
    try:
        for views in ("disk", "memory"):
            _train(colour_folder, base / views, base / f"cache-{views}", tiny, views)
    finally:
        features._VIEW_MEMORY.clear()
    return base


def test_streaming_views_give_byte_identical_adapters_and_write_no_views(trained):
    disk = (trained / "disk" / "adapter" / "rlptune_adapter.safetensors").read_bytes()
    memory = (trained / "memory" / "adapter" / "rlptune_adapter.safetensors").read_bytes()
    assert disk == memory
    losses = {
        v: [json.loads(ln)["loss"] for ln in (trained / v / "metrics.jsonl").read_text().splitlines()]
        for v in ("disk", "memory")
    }
    assert losses["disk"] == losses["memory"] and len(losses["disk"]) == 3
    views_on_disk = [json.loads(p.read_text())["view"] for p in (trained / "cache-memory" / "features").glob("*.json")]
    assert views_on_disk and set(views_on_disk) == {0}  # centre crops only: no view was ever written
    assert {json.loads(p.read_text())["view"] for p in (trained / "cache-disk" / "features").glob("*.json")} == {
        0,
        1,
        2,
        3,
    }


def test_views_in_memory_are_encoded_once_per_process_and_shared_by_its_runs(tiny, splits, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(features, "encode_items", lambda *a, **k: calls.append(a[3]) or fake_encode(*a, **k))
    monkeypatch.setattr(features, "_VIEW_MEMORY", type(features._VIEW_MEMORY)())
    runs = [FeatureCache(tmp_path / "c", views="memory") for _ in range(2)]  # two runs of one process
    for run in runs:
        for view in (1, 2, 3):
            feats = run.get_or_encode(tiny, splits, splits.test, view=view, view_seed=1)
            assert torch.equal(feats, expected(4, view, 1))
            feats.add_(1)  # a run changing its copy changes nobody else's
    assert calls == [1, 2, 3] and (runs[0].misses, runs[1].hits) == (3, 3)
    assert not (tmp_path / "c" / "features").exists() or not list((tmp_path / "c" / "features").iterdir())
    small = FeatureCache(tmp_path / "c", views="memory", memory_gb=2.5 * 4 * 64 * 4 / 1e9)  # room for two views
    small.get_or_encode(tiny, splits, splits.test, view=4, view_seed=1)
    assert len(features._VIEW_MEMORY) == 2  # least recently used dropped first
    assert list(features._VIEW_MEMORY) == [key(tiny, splits, 3, 1), key(tiny, splits, 4, 1)]


def test_cache_info_on_a_used_cache_prints_sizes_per_backbone_and_kind(trained, tiny, capsys):
    root = trained / "cache-disk"
    assert main(["cache", "info", "--cache-dir", str(root)]) == 0
    text = capsys.readouterr().out
    entries = [json.loads(p.read_text()) for p in (root / "features").glob("*.json")]
    sizes = {"features": 0, "views": 0}
    for p in (root / "features").glob("*.safetensors"):
        view = json.loads(p.with_suffix(".json").read_text())["view"]
        sizes["views" if view else "features"] += p.stat().st_size + p.with_suffix(".json").stat().st_size
    n_views = sum(1 for e in entries if e["view"] > 0)
    n_centre = len(entries) - n_views
    assert n_views == 3 and n_centre >= 1
    assert re.search(
        rf"^centre-crop features\s+{n_centre}\s+{re.escape(cachedir.human_bytes(sizes['features']))}$", text, re.M
    )
    assert re.search(
        rf"^views \(random crops\)\s+{n_views}\s+{re.escape(cachedir.human_bytes(sizes['views']))}$", text, re.M
    )
    assert re.search(rf"^{re.escape(tiny.identity)}\s+centre-crop features\s+{n_centre}\s", text, re.M)
    assert re.search(rf"^\s+views \(random crops\)\s+{n_views}\s", text, re.M)
    assert "few-shot draws" in text and "few_shot.json" in text
    assert main(["cache", "info", "--cache-dir", str(root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kinds"]["views"] == {"entries": n_views, "bytes": sizes["views"]}
    assert data["backbones"][tiny.identity]["features"] == {"entries": n_centre, "bytes": sizes["features"]}
    assert data["kinds"]["memo"]["entries"] == 1 and data["foreign"] == {"files": 0, "bytes": 0}
    assert main(["cache", "ls", "--cache-dir", str(root), "--kind", "views", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(e["view"] for e in listed) == [1, 2, 3] and {e["seed"] for e in listed} == {1}
    assert main(["cache", "ls", "--cache-dir", str(root), "--backbone", tiny.identity.split("@")[0]]) == 0
    assert capsys.readouterr().out.count(tiny.identity) == len(entries)


def _used_cache(tiny, splits, root: Path) -> dict[str, Path]:
    """Two centre-crop entries, three views, a rendered micro dataset, the memo; returns the views' paths."""
    features._CONTENT_MEMO.clear()  # so that this cache gets its own memo file
    cache = FeatureCache(root)
    cache.get_or_encode(tiny, splits, splits.test)
    cache.get_or_encode(tiny, splits, splits.train)
    paths = {}
    for view in (1, 2, 3):
        cache.get_or_encode(tiny, splits, splits.test, view=view, view_seed=1)
        paths[f"view{view}"] = cache.path(key(tiny, splits, view, 1))
    micro = root / "micro" / "w2" / "micro2-shapes"
    (micro / "train" / "00").mkdir(parents=True)
    (micro / "train" / "00" / "000.png").write_bytes(b"png")
    (micro / "classnames.txt").write_text("circle\n")
    (micro / "COMPLETE").write_text("w2 micro2-shapes style=sketch\n")
    return paths


FOREIGN = {
    "notes.txt": b"mine",
    "features/README": b"do not delete",
    "features/0123456789abcdef0123456789abcdef.safetensors.bak": b"backup",
    "features/0123456789ABCDEF0123456789ABCDEF.safetensors": b"upper-case hex: not a key rlptune writes",
    "features/0123456789abcdef0123456789abcde.json": b"{}",
    "locks/mine.lock": b"",
    "micro/w2/micro2-shapes/train/00/extra.jpg": b"jpg",
    "micro/w2/micro2-shapes/notes.md": b"notes",
    "micro/w2/unfinished/COMPLETE": b"w2 unfinished",
    "micro/other/x.png": b"x",
    "models/ViT-B-16.pt": b"weights",
}


def _plant_foreign(root: Path, outside: Path) -> dict[str, bytes]:
    for rel, data in FOREIGN.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    outside.mkdir(exist_ok=True)
    (outside / "precious.safetensors").write_bytes(b"outside the cache")
    os.symlink(outside / "precious.safetensors", root / "features" / ("f" * 32 + ".safetensors"))
    os.symlink(outside, root / "micro" / "w2" / "micro2-linked")
    return {rel: data for rel, data in FOREIGN.items()}


def test_clear_older_than_removes_only_old_entries_and_says_what_it_freed(tiny, splits, tmp_path, capsys, fake_encoder):
    root = tmp_path / "cache"
    paths = _used_cache(tiny, splits, root)
    foreign = _plant_foreign(root, tmp_path / "outside")
    old = time.time() - 10 * 86400
    for name in ("view1", "view2"):
        os.utime(paths[name], (old, old))
    freed = sum(paths[n].stat().st_size + paths[n].with_suffix(".json").stat().st_size for n in ("view1", "view2"))
    keep = {p.name for p in (root / "features").iterdir()} - {
        f"{paths[n].stem}{s}" for n in ("view1", "view2") for s in (".safetensors", ".json")
    }
    assert main(["cache", "clear", "--cache-dir", str(root), "--older-than", "5"]) == 0
    said = capsys.readouterr().out.strip()
    assert said.startswith(f"freed {cachedir.human_bytes(freed)}: 2 views ({cachedir.human_bytes(freed)})")
    assert "not rlptune's left alone" in said
    assert {p.name for p in (root / "features").iterdir()} == keep  # the recent entries and the foreign files
    for rel, data in foreign.items():
        assert (root / rel).read_bytes() == data, rel
    assert (root / "micro" / "w2" / "micro2-shapes" / "COMPLETE").exists()  # rendered now: not old
    again = FeatureCache(root)
    assert torch.equal(
        again.get_or_encode(tiny, splits, splits.test, view=3, view_seed=1),
        FeatureCache(root, enabled=False).get_or_encode(tiny, splits, splits.test, view=3, view_seed=1),
    )
    assert again.hits == 1  # a kept entry still serves


def test_clear_everything_leaves_every_foreign_file_and_link_target(tiny, splits, tmp_path, capsys, fake_encoder):
    root = tmp_path / "cache"
    _used_cache(tiny, splits, root)
    foreign = _plant_foreign(root, tmp_path / "outside")
    assert main(["cache", "clear", "--cache-dir", str(root), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["removed"]) == {"features", "views", "micro", "memo"} and result["kept_in_use"] == 0
    for rel, data in foreign.items():
        assert (root / rel).read_bytes() == data, rel
    assert (tmp_path / "outside" / "precious.safetensors").read_bytes() == b"outside the cache"
    assert (root / "features" / ("f" * 32 + ".safetensors")).is_symlink()
    assert (root / "micro" / "w2" / "micro2-linked").is_symlink()
    assert all(row["entries"] == 0 for row in cachedir.summary(cachedir.scan(root))["kinds"].values())
    assert not (root / "micro" / "w2" / "micro2-shapes" / "COMPLETE").exists()
    assert not (root / "micro" / "w2" / "micro2-shapes" / "train" / "00" / "000.png").exists()
    assert not (root / "content-hashes.json").exists()
    assert main(["cache", "clear", "--cache-dir", str(root)]) == 0
    assert capsys.readouterr().out.startswith("nothing to clear")


def test_clear_by_kind_and_backbone_touches_nothing_else(tiny, splits, tmp_path, capsys, fake_encoder):
    root = tmp_path / "cache"
    paths = _used_cache(tiny, splits, root)
    assert main(["cache", "clear", "--cache-dir", str(root), "--kind", "views", "--backbone", "someone-else"]) == 0
    assert capsys.readouterr().out.startswith("nothing to clear") and all(p.exists() for p in paths.values())
    assert main(["cache", "clear", "--cache-dir", str(root), "--kind", "views", "--backbone", tiny.identity]) == 0
    assert capsys.readouterr().out.startswith("freed") and not any(p.exists() for p in paths.values())
    data = cachedir.summary(cachedir.scan(root))
    assert data["kinds"]["features"]["entries"] == 2 and data["kinds"]["micro"]["entries"] == 1


def test_clear_keeps_an_entry_that_is_being_read(tiny, splits, tmp_path, capsys, fake_encoder):
    root = tmp_path / "cache"
    paths = _used_cache(tiny, splits, root)
    with cachedir.entry_lock(root / "locks", f"{paths['view1'].stem}.lock", shared=True):
        assert main(["cache", "clear", "--cache-dir", str(root), "--kind", "views"]) == 0
    assert "1 entry in use kept" in capsys.readouterr().out
    assert paths["view1"].exists() and not paths["view2"].exists()


def test_leftovers_of_interrupted_writes_are_cleared_only_when_nobody_writes(
    tiny, splits, tmp_path, capsys, fake_encoder
):
    root = tmp_path / "cache"
    paths = _used_cache(tiny, splits, root)
    stem = paths["view1"].stem
    tmp_name = f".{stem}.safetensors.abc123_x.tmp"
    (root / "features" / tmp_name).write_bytes(b"half")  # a write killed half-way
    with cachedir.entry_lock(root / "locks", f"{stem}.lock"):  # ... or one under way right now
        assert main(["cache", "clear", "--cache-dir", str(root), "--kind", "leftovers"]) == 0
        assert (root / "features" / tmp_name).exists()
    capsys.readouterr()
    assert main(["cache", "clear", "--cache-dir", str(root), "--kind", "leftovers"]) == 0
    assert not (root / "features" / tmp_name).exists() and paths["view1"].exists()
    assert "1 leftovers" in capsys.readouterr().out


NAMES = st.text(alphabet="abcdef0123456789ABCDEF.-_ json", min_size=1, max_size=40).filter(
    lambda n: n not in (".", "..") and "/" not in n
)
PLACES = st.sampled_from(
    [
        "",
        "features",
        "locks",
        "micro",
        "micro/w2",
        "micro/w2/micro2-shapes",
        "micro/w2/micro2-shapes/train/00",
        "micro/w9",
    ]
)
RECOGNISED = re.compile(
    r"^(?:content-hashes\.json|\.content-hashes\.json\.\w+\.tmp"
    r"|features/(?:[0-9a-f]{32}\.(?:safetensors|json)|\.[0-9a-f]{32}\.(?:safetensors|json)\.\w+\.tmp)"
    r"|locks/(?:[0-9a-f]{32}\.lock|space\.lock)"
    r"|micro/w\d+/[^/]+/(?:(?:train|val|test)/\d{2,}/\d{3,}\.png|classnames\.txt|COMPLETE)|micro/w\d+/\.micro.*)$"
)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(planted=st.lists(st.tuples(PLACES, NAMES, st.binary(max_size=8)), min_size=1, max_size=6))
def test_clear_never_deletes_a_file_it_does_not_recognise(tiny, splits, tmp_path_factory, fake_encoder, planted):
    template = tmp_path_factory.getbasetemp() / "prop-template"
    if not template.exists():
        _used_cache(tiny, splits, template)
    root = tmp_path_factory.mktemp("prop") / "cache"
    shutil.copytree(template, root, symlinks=True)
    mine: dict[str, bytes] = {}
    for place, name, data in planted:
        rel = f"{place}/{name}" if place else name
        if RECOGNISED.match(rel) or (root / rel).is_dir() or any(rel.startswith(m + "/") for m in mine):
            continue  # names rlptune writes are not foreign (the grammar above is the documented one)
        if (root / rel).exists() and rel not in mine:
            continue
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        mine[rel] = data
    cachedir.clear(cachedir.scan(root), cachedir.scan(root).entries)
    for rel, data in mine.items():
        assert (root / rel).read_bytes() == data, rel
    assert all(row["entries"] == 0 for row in cachedir.summary(cachedir.scan(root))["kinds"].values())


@pytest.mark.parametrize(
    "args, fragment",
    [
        (
            ["info", "--kind", "views"],
            "cache info: --kind, --backbone and --older-than select entries for ls and clear",
        ),
        (["ls", "--kind", "pictures"], "--kind 'pictures': expected one of features, views, micro, memo, leftovers"),
    ],
)
def test_cache_command_mistakes_are_one_line(args, fragment, tmp_path, capsys):
    code = main(["cache", *args, "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err == f"rlptune: error: {fragment}\n"


def test_cache_folder_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "c").write_text("x")
    assert main(["cache", "info", "--cache-dir", str(tmp_path / "c")]) == 2
    assert (
        capsys.readouterr().err
        == f"rlptune: error: {tmp_path / 'c'}: cache folder is a file, not a folder (train.cache_dir / $RLPTUNE_CACHE)\n"
    )


def test_a_cache_folder_that_does_not_exist_is_empty_not_an_error(tmp_path, capsys):
    assert main(["cache", "info", "--cache-dir", str(tmp_path / "none")]) == 0
    assert "does not exist yet: empty" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache-dir", str(tmp_path / "none")]) == 0
    assert capsys.readouterr().out.startswith("nothing to clear") and not (tmp_path / "none").exists()
