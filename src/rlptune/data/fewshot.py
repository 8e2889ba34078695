"""Few-shot draws and base/new class splits, identical to the CoOp / CoCoOp toolkit (Dassl).

Few-shot (Dassl's ``DatasetBase.generate_fewshot_dataset``, called by every CoOp dataset after
``random.seed(cfg.SEED)``): one RNG seeded with the seed; the training items are grouped by label in order of
first appearance (items keep their split-file order inside a group); for each group ``rng.sample(group, K)``, or
the whole group when it has fewer than ``K`` items (Dassl's current default ``repeat=False``; ``repeat=True``
reproduces older Dassl versions, which drew ``rng.choices(group, k=K)`` instead). Then the validation items the
same way with ``min(K, 4)`` shots, the same RNG continuing. ``random.Random(seed)`` produces the same sequence as
``random.seed(seed)`` followed by the module-level functions, so the same images are chosen.

Base/new (CoCoOp's ``subsample_classes``): labels sorted, the first ``ceil(n / 2)`` are base, the rest new, each
group relabelled from 0 in label order.

Draws are cached as JSON with relative paths (never pickle), written atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
from pathlib import Path
from typing import Sequence

from ..errors import RlptuneError
from ..io import file_lock, write_json
from .common import check_entry, read_json_file
from .items import DatasetSplits, Item, relabel
from .paths import normalize_rel

log = logging.getLogger(__name__)

FEWSHOT_FORMAT = "rlptune-fewshot/1"
#: Validation shots are ``min(num_shots, VAL_SHOTS_CAP)``, as in the CoOp toolkit.
VAL_SHOTS_CAP = 4
SUBSETS = ("all", "base", "new")


def sample_per_label(items: Sequence[Item], num_shots: int, rng: random.Random, *, repeat: bool = False) -> list[Item]:
    """Dassl's per-label draw on one list of items, consuming ``rng`` exactly as Dassl consumes ``random``."""
    if num_shots < 1:
        return list(items)
    groups: dict[int, list[Item]] = {}
    for item in items:
        groups.setdefault(item.label, []).append(item)
    out: list[Item] = []
    for group in groups.values():
        if len(group) >= num_shots:
            out.extend(rng.sample(group, num_shots))
        elif repeat:
            out.extend(rng.choices(group, k=num_shots))
        else:
            out.extend(group)
    return out


def _check_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RlptuneError(f"{what} must be an integer, got {value!r}")
    return value


def _digest(items: Sequence[Item]) -> str:
    payload = json.dumps([[it.path, it.label, it.classname] for it in items], separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def fewshot_splits(
    splits: DatasetSplits,
    num_shots: int,
    seed: int,
    *,
    cache_path: str | os.PathLike | None = None,
    repeat: bool = False,
    strict: bool = False,
) -> DatasetSplits:
    """Draw ``num_shots`` training and ``min(num_shots, 4)`` validation items per class, CoOp-identically.

    ``num_shots < 1`` returns ``splits`` unchanged (the toolkit's "all data"). A class with fewer than
    ``num_shots`` items keeps all of them (a warning is logged and the cache records it); ``strict=True`` makes
    that an error naming the class. With ``cache_path``, an existing draw there is reused after checking it was
    drawn from the same items with the same settings, otherwise the new draw is written there atomically.
    The test split is never touched.
    """
    num_shots = _check_int(num_shots, "num_shots")
    seed = _check_int(seed, "seed")
    if num_shots < 1:
        return splits
    val_shots = min(num_shots, VAL_SHOTS_CAP)
    header = {
        "format": FEWSHOT_FORMAT,
        "dataset": splits.name,
        "num_shots": num_shots,
        "val_shots": val_shots,
        "seed": seed,
        "repeat": bool(repeat),
        "source": {"train": _digest(splits.train), "val": _digest(splits.val)},
    }
    if cache_path is None:
        return _draw(splits, header, num_shots, val_shots, seed, None, repeat, strict)
    cache_path = Path(cache_path)
    if cache_path.exists() and not cache_path.is_file():
        raise RlptuneError(f"{cache_path}: few-shot cache path is a folder, not a file")
    # one process draws and writes, the others wait and read its file (never a half-written one: atomic writes)
    with file_lock(cache_path.parent / f".{cache_path.name}.lock"):
        if cache_path.exists():
            train, val = _read_cache(cache_path, header, splits)
            return dataclasses.replace(splits, train=train, val=val)
        return _draw(splits, header, num_shots, val_shots, seed, cache_path, repeat, strict)


def _draw(splits, header, num_shots, val_shots, seed, cache_path, repeat, strict) -> DatasetSplits:
    """A fresh draw (and its cache file when ``cache_path`` is given)."""
    short = _short_classes(splits, splits.train, num_shots, "train") + _short_classes(
        splits, splits.val, val_shots, "val"
    )
    if short and strict:
        split, label, count, wanted = short[0]
        raise RlptuneError(
            f"{splits.name}: class {splits.classnames[label]!r} has {count} {split} image(s), fewer than "
            f"{wanted} shots ({len(short)} such class/split pair(s))"
        )
    if short:
        split, label, count, wanted = short[0]
        log.warning(
            "%s: %d class/split pair(s) have fewer images than shots and keep all of them, e.g. %r: %d %s image(s)"
            " for %d shots",
            splits.name,
            len(short),
            splits.classnames[label],
            count,
            split,
            wanted,
        )
    rng = random.Random(seed)
    train = sample_per_label(splits.train, num_shots, rng, repeat=repeat)
    val = sample_per_label(splits.val, val_shots, rng, repeat=repeat)
    if cache_path is not None:
        record = dict(header)
        record["short_classes"] = [
            {"split": s, "label": lab, "classname": splits.classnames[lab], "images": c, "shots": w}
            for s, lab, c, w in short
        ]
        record["train"] = [[it.path, it.label, it.classname] for it in train]
        record["val"] = [[it.path, it.label, it.classname] for it in val]
        write_json(cache_path, record, indent=1)
    return dataclasses.replace(splits, train=train, val=val)


def _short_classes(splits: DatasetSplits, items: Sequence[Item], shots: int, split: str) -> list[tuple]:
    counts: dict[int, int] = {}
    for item in items:
        counts[item.label] = counts.get(item.label, 0) + 1
    return [(split, label, count, shots) for label, count in counts.items() if count < shots]


def _read_cache(path: Path, header: dict, splits: DatasetSplits) -> tuple[list[Item], list[Item]]:
    data = read_json_file(path, "few-shot cache")
    if not isinstance(data, dict):
        raise RlptuneError(f"{path}: not a few-shot cache (expected a JSON object)")
    for key, expected in header.items():
        found = data.get(key)
        if found == expected:
            continue
        if key == "source":
            raise RlptuneError(
                f"{path}: few-shot cache was drawn from different {splits.name} items; delete it to draw again"
            )
        raise RlptuneError(
            f"{path}: few-shot cache field {key!r} is {found!r}, expected {expected!r} for this draw; delete it "
            f"or use another cache path"
        )
    out = []
    for split in ("train", "val"):
        known = {(it.path, it.label, it.classname): it for it in splits.split(split)}
        raw = data.get(split)
        if not isinstance(raw, list):
            raise RlptuneError(f"{path}: {split!r} must be a list of [path, label, class name] entries")
        items = []
        for i, value in enumerate(raw):
            where = f"{split}[{i}]"
            rel, label, cname = check_entry(value, path, where)
            key = (normalize_rel(rel, path, where), label, cname)
            if key not in known:
                raise RlptuneError(f"{path}: {where}: {rel!r} is not an item of the {split} split it was drawn from")
            items.append(known[key])
        out.append(items)
    return out[0], out[1]


def subsample_classes(splits: DatasetSplits, which: str = "all") -> DatasetSplits:
    """CoCoOp's base/new split: labels ``0..ceil(n/2)-1`` are base, the rest new; each relabelled from 0.

    (CoCoOp takes the labels present in the training split; for the CoOp datasets every class is present there,
    so this is the same as using ``0..n-1``.) ``"all"`` returns ``splits`` unchanged.
    """
    if which not in SUBSETS:
        raise RlptuneError(f"class subset {which!r} is not one of {', '.join(SUBSETS)}")
    if which == "all":
        return splits
    labels = list(range(splits.num_classes))
    m = math.ceil(len(labels) / 2)
    keep = labels[:m] if which == "base" else labels[m:]
    return dataclasses.replace(
        splits,
        classnames=[splits.classnames[i] for i in keep],
        train=relabel(splits.train, keep),
        val=relabel(splits.val, keep),
        test=relabel(splits.test, keep),
    )


def base_new(splits: DatasetSplits) -> tuple[DatasetSplits, DatasetSplits]:
    """``(base, new)`` as :func:`subsample_classes` makes them."""
    return subsample_classes(splits, "base"), subsample_classes(splits, "new")
