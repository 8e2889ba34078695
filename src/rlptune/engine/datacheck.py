"""What a run trained and evaluated on, by content, so that ``--resume`` notices images that changed under their names.

The settings hash (:func:`rlptune.rundir.settings_hash`) covers the data root's *path*, not what is in it: a dataset
whose images were replaced under the same names resumes with the same hash, and the old checkpoint would go on
training, or be evaluated, on other data. Each run therefore records ``data_hashes.json``: the sha256 of every
training, validation and test image's bytes and its class (a digest of the full hashes, and the first 16 hex digits
per image to say which one changed), from the hashes the feature cache keeps anyway
(:meth:`rlptune.engine.features.FeatureCache.content_hashes`), so recording costs a ``stat`` per image once they are
known. A resumed run compares the images it would use now with the record and refuses, in one line naming the data
root, when they differ.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from .. import io
from ..data.items import DatasetSplits
from ..errors import RlptuneError
from ..rundir import DATA_HASHES
from .features import FeatureCache

log = logging.getLogger(__name__)

DATA_FORMAT = "rlptune-data/1"
SPLITS = ("train", "val", "test")


def data_record(splits: DatasetSplits, cache: FeatureCache) -> dict[str, Any]:
    """``{"format", "root", "classes", "digest", "items": {split: {path: "LABEL:SHA"}}}`` of every item of ``splits``:
    ``digest`` covers the full sha256 of every image; each item keeps its first 16 hex digits (enough to say which
    image changed, and a record of a large test set stays small)."""
    full: dict[str, dict[str, str]] = {}
    for split in SPLITS:
        listed = splits.split(split)
        hashes = cache.content_hashes(splits, listed) if listed else []
        full[split] = {item.path: f"{item.label}:{sha}" for item, sha in zip(listed, hashes)}
    classes = list(splits.classnames)
    payload = json.dumps({"classes": classes, "items": full}, sort_keys=True, separators=(",", ":"))
    items = {
        split: {path: entry[: entry.index(":") + 17] for path, entry in entries.items()}
        for split, entries in full.items()
    }
    return {
        "format": DATA_FORMAT,
        "root": str(Path(splits.root).resolve()),
        "classes": classes,
        "digest": hashlib.sha256(payload.encode()).hexdigest(),
        "items": items,
    }


def write_data_record(folder: Path, record: dict[str, Any]) -> None:
    """Write the record atomically, compact (one entry per image: it is as long as the dataset)."""
    io.write_text(folder / DATA_HASHES, json.dumps(record, separators=(",", ":")) + "\n")


def check_resumed_data(folder: Path, record: dict[str, Any], shown_folder: Path | None = None) -> None:
    """Refuse to resume the run in ``folder`` when the images it recorded are not the ones ``record`` lists now.

    A run written before the record existed cannot be checked: a warning says so and the run resumes."""
    path = folder / DATA_HASHES
    shown = (shown_folder or folder) / DATA_HASHES
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        log.warning(
            "%s: no record of the images this run trained on (an older rlptune wrote it); resuming without "
            "checking that the data is unchanged",
            shown_folder or folder,
        )
        return
    except (OSError, UnicodeDecodeError) as exc:
        raise RlptuneError(
            f"{shown}: cannot read the record of the run's images ({exc}); use --overwrite to train "
            "again, or another output folder"
        ) from None
    try:
        recorded = json.loads(text)
    except (ValueError, RecursionError):
        recorded = None
    if not _well_formed(recorded):
        raise RlptuneError(
            f"{shown}: not a record of the run's images (damaged?); use --overwrite to train again, "
            "or another output folder"
        )
    if recorded["digest"] == record["digest"]:
        return
    changed, added, removed = [], [], []
    if recorded["classes"] != record["classes"]:
        changed.append(f"the class list ({len(recorded['classes'])} classes then, {len(record['classes'])} now)")
    for split in SPLITS:
        before, now = recorded["items"].get(split, {}), record["items"][split]
        changed += [f"{split} {p!r}" for p in sorted(now) if p in before and before[p] != now[p]]
        added += [f"{split} {p!r}" for p in sorted(now) if p not in before]
        removed += [f"{split} {p!r}" for p in sorted(before) if p not in now]
    counts = ", ".join(
        f"{len(v)} {what}" for what, v in (("changed", changed), ("added", added), ("removed", removed)) if v
    )
    first = (changed or added or removed or ["the image list"])[0]
    raise RlptuneError(
        f"{record['root']}: the images differ from those this run trained on ({counts or 'same files, other order'}; "
        f"first: {first}); resuming would continue or evaluate the old prompt on other data: use --overwrite to train "
        f"again, or another output folder"
    )


def _well_formed(recorded: Any) -> bool:
    if (
        not isinstance(recorded, dict)
        or recorded.get("format") != DATA_FORMAT
        or not isinstance(recorded.get("digest"), str)
    ):
        return False
    classes, items = recorded.get("classes"), recorded.get("items")
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        return False
    if not isinstance(items, dict) or not set(items) <= set(SPLITS):
        return False
    return all(isinstance(v, dict) and all(isinstance(e, str) for e in v.values()) for v in items.values())


__all__ = ["check_resumed_data", "data_record", "write_data_record"]
