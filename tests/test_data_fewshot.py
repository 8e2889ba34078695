"""Few-shot draws identical to the CoOp toolkit (Dassl), their JSON cache, and CoCoOp's base/new split."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
import os
from pathlib import Path

import pytest

from rlptune.data import DatasetSplits, Item, base_new, fewshot_splits, load_split_json, subsample_classes
from rlptune.errors import RlptuneError

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "coop_splits"
# In CI the fixtures must be there (a missing copy fails loudly); elsewhere their absence skips.
needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir() and not os.environ.get("CI"), reason="CoOp split fixtures not available"
)


def fixture_splits(name: str, tmp_path: Path) -> DatasetSplits:
    # the draw only needs the entries; images are not read
    return load_split_json(FIXTURES / f"split_zhou_{name}.json", tmp_path, name=name, check_files=False)


def dassl_reference(split_json: dict, num_shots: int, seed: int) -> tuple[list[str], list[str]]:
    """A straightforward re-statement of what CoOp does: ``random.seed(seed)`` then Dassl's
    ``generate_fewshot_dataset`` on train (K shots) and on val (min(K, 4) shots), repeat=False."""
    state = random.getstate()
    try:
        random.seed(seed)
        chosen = []
        for part, shots in (("train", num_shots), ("val", min(num_shots, 4))):
            tracker = defaultdict(list)  # insertion-ordered: labels in order of first appearance
            for entry in split_json[part]:
                tracker[entry[1]].append(entry)
            picked = []
            for _label, items in tracker.items():
                picked.extend(random.sample(items, shots) if len(items) >= shots else items)
            chosen.append([e[0] for e in picked])
        return chosen[0], chosen[1]
    finally:
        random.setstate(state)


def test_private_rng_matches_seeded_module_random():
    for seed in (1, 2, 3, 12345):
        rng = random.Random(seed)
        state = random.getstate()
        random.seed(seed)
        population = list(range(500))
        try:
            assert rng.sample(population, 16) == random.sample(population, 16)
            assert rng.choices(population, k=7) == random.choices(population, k=7)
            assert rng.random() == random.random()
        finally:
            random.setstate(state)


@needs_fixtures
@pytest.mark.parametrize(
    "name, shots, seed",
    [
        ("DescribableTextures", 16, 1),
        ("OxfordFlowers", 1, 2),
        ("OxfordFlowers", 8, 3),
        ("EuroSAT", 4, 1),
        ("Caltech101", 16, 2),
        ("OxfordPets", 2, 3),
    ],
)
def test_draw_equals_independent_reimplementation(tmp_path, name, shots, seed):
    splits = fixture_splits(name, tmp_path)
    raw = json.loads((FIXTURES / f"split_zhou_{name}.json").read_text())
    want_train, want_val = dassl_reference(raw, shots, seed)
    got = fewshot_splits(splits, shots, seed)
    assert [it.path for it in got.train] == want_train
    assert [it.path for it in got.val] == want_val
    assert len(got.train) == shots * splits.num_classes
    assert len(got.val) == min(shots, 4) * splits.num_classes
    assert got.test == splits.test and got.classnames == splits.classnames


@needs_fixtures
def test_pinned_paths_dtd_16_shots_seed_1(tmp_path):
    got = fewshot_splits(fixture_splits("DescribableTextures", tmp_path), 16, 1)
    assert [it.path for it in got.train[:4]] == [
        "banded/banded_0117.jpg",
        "banded/banded_0142.jpg",
        "banded/banded_0147.jpg",
        "banded/banded_0102.jpg",
    ]
    assert got.train[-1].path == "zigzagged/zigzagged_0068.jpg"
    assert [it.path for it in got.val[:2]] == ["banded/banded_0116.jpg", "banded/banded_0024.jpg"]
    assert got.val[-1].path == "zigzagged/zigzagged_0109.jpg"


@needs_fixtures
def test_pinned_paths_flowers_follow_first_appearance_order(tmp_path):
    got = fewshot_splits(fixture_splits("OxfordFlowers", tmp_path), 1, 2)
    assert got.train[0].label == 76  # the split file starts with label 76, so the draw does too
    assert [it.path for it in got.train[:4]] == [
        "image_00112.jpg",
        "image_00299.jpg",
        "image_00597.jpg",
        "image_00740.jpg",
    ]
    assert got.train[-1].path == "image_08036.jpg" and got.val[-1].path == "image_08039.jpg"


def toy(counts_train: dict[int, int], counts_val: dict[int, int] | None = None) -> DatasetSplits:
    def items(counts, tag):
        return [Item(f"{tag}/{lab}/{i}.jpg", lab, f"c{lab}") for lab, n in counts.items() for i in range(n)]

    n = max(counts_train) + 1
    return DatasetSplits(
        "toy",
        Path("."),
        [f"c{i}" for i in range(n)],
        items(counts_train, "tr"),
        items(counts_val or {}, "va"),
        items({0: 3}, "te"),
    )


def test_fewer_images_than_shots_keeps_all_or_repeats_or_fails():
    splits = toy({0: 10, 1: 3, 2: 10})
    got = fewshot_splits(splits, 5, 1)
    assert [sum(it.label == k for it in got.train) for k in range(3)] == [5, 3, 5]
    assert [it.path for it in got.train if it.label == 1] == ["tr/1/0.jpg", "tr/1/1.jpg", "tr/1/2.jpg"]
    # older Dassl (repeat=True) drew with replacement instead, which also moves the RNG for later classes
    rep = fewshot_splits(splits, 5, 1, repeat=True)
    assert [sum(it.label == k for it in rep.train) for k in range(3)] == [5, 5, 5]
    rng = random.Random(1)
    pools = [[it for it in splits.train if it.label == k] for k in range(3)]
    expected = rng.sample(pools[0], 5) + rng.choices(pools[1], k=5) + rng.sample(pools[2], 5)
    assert rep.train == expected
    with pytest.raises(RlptuneError, match=r"toy: class 'c1' has 3 train image\(s\), fewer than 5 shots"):
        fewshot_splits(splits, 5, 1, strict=True)


def test_no_shots_means_all_data_and_bad_arguments():
    splits = toy({0: 4, 1: 4})
    assert fewshot_splits(splits, 0, 1) is splits
    assert fewshot_splits(splits, -1, 1) is splits
    with pytest.raises(RlptuneError, match="num_shots must be an integer"):
        fewshot_splits(splits, 2.5, 1)
    with pytest.raises(RlptuneError, match="seed must be an integer"):
        fewshot_splits(splits, 2, "1")


def test_cache_is_portable_json_and_reused(tmp_path):
    splits = toy({0: 20, 1: 20}, {0: 8, 1: 8})
    cache = tmp_path / "fewshot" / "shot_4-seed_1.json"
    first = fewshot_splits(splits, 4, 1, cache_path=cache)
    record = json.loads(cache.read_text())
    assert record["format"] == "rlptune-fewshot/1" and record["num_shots"] == 4 and record["val_shots"] == 4
    assert record["train"][0] == [first.train[0].path, first.train[0].label, first.train[0].classname]
    assert not any(Path(p).is_absolute() for p, _l, _c in record["train"])
    assert not list(cache.parent.glob(".*.tmp"))  # written atomically, no temporary left behind
    # a cached draw is reused as is, even though a fresh draw with another seed state would differ
    record["train"] = record["train"][::-1]
    cache.write_text(json.dumps(record))
    again = fewshot_splits(splits, 4, 1, cache_path=cache)
    assert again.train == first.train[::-1] and again.val == first.val


def test_cache_mismatch_and_tampering_are_errors_naming_the_file(tmp_path):
    splits = toy({0: 20, 1: 20}, {0: 8, 1: 8})
    cache = tmp_path / "c.json"
    fewshot_splits(splits, 4, 1, cache_path=cache)
    with pytest.raises(RlptuneError, match=r"c\.json: few-shot cache field 'seed' is 1, expected 2"):
        fewshot_splits(splits, 4, 2, cache_path=cache)
    other = toy({0: 21, 1: 20}, {0: 8, 1: 8})
    with pytest.raises(RlptuneError, match=r"c\.json: few-shot cache was drawn from different toy items"):
        fewshot_splits(other, 4, 1, cache_path=cache)
    record = json.loads(cache.read_text())
    record["train"][0][0] = "../../etc/passwd"
    cache.write_text(json.dumps(record))
    with pytest.raises(RlptuneError, match=r"c\.json: train\[0\]: .*'\.\.'"):
        fewshot_splits(splits, 4, 1, cache_path=cache)
    record["train"][0][0] = "tr/0/not-in-split.jpg"
    cache.write_text(json.dumps(record))
    with pytest.raises(RlptuneError, match=r"c\.json: train\[0\]: .* is not an item of the train split"):
        fewshot_splits(splits, 4, 1, cache_path=cache)
    cache.write_text("{broken")
    with pytest.raises(RlptuneError, match=r"c\.json: not valid JSON"):
        fewshot_splits(splits, 4, 1, cache_path=cache)


@needs_fixtures
@pytest.mark.parametrize(
    "name, n_base, n_new",
    [
        ("DescribableTextures", 24, 23),
        ("EuroSAT", 5, 5),
        ("OxfordPets", 19, 18),
        ("OxfordFlowers", 51, 51),
        ("Caltech101", 50, 50),
    ],
)
def test_base_new_split(tmp_path, name, n_base, n_new):
    splits = fixture_splits(name, tmp_path)
    base, new = base_new(splits)
    m = math.ceil(splits.num_classes / 2)
    assert (base.num_classes, new.num_classes) == (n_base, n_new) == (m, splits.num_classes - m)
    assert base.classnames == splits.classnames[:m] and new.classnames == splits.classnames[m:]
    for part in ("train", "val", "test"):
        b, nw = base.split(part), new.split(part)
        assert len(b) + len(nw) == len(splits.split(part))
        assert {it.label for it in b} == set(range(m)) and {it.label for it in nw} == set(range(n_new))
        assert all(base.classnames[it.label] == it.classname for it in b)
        assert all(new.classnames[it.label] == it.classname for it in nw)
        # relabelled items keep their order
        assert [it.path for it in nw] == [it.path for it in splits.split(part) if it.label >= m]
    assert subsample_classes(splits, "all") is splits
    with pytest.raises(RlptuneError, match="class subset 'novel'"):
        subsample_classes(splits, "novel")


@needs_fixtures
def test_few_shot_then_base_as_cocoop_does(tmp_path):
    splits = fixture_splits("EuroSAT", tmp_path)
    base = subsample_classes(fewshot_splits(splits, 16, 1), "base")
    assert len(base.train) == 16 * 5 and len(base.val) == 4 * 5 and len(base.test) == 4200
    new = subsample_classes(fewshot_splits(splits, 16, 1), "new")
    assert len(new.test) == 3900 and new.classnames[0] == "Pasture Land"
