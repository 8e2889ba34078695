"""Image features, encoded once and cached by content.

Methods that put nothing into the image tower train on cached features: each training image is encoded once per
augmented view (view v uses its own fixed random crop/flip per image), and epochs cycle through the views. The
cache key is a hash of the backbone identity, the transform settings, the view index and the item list (root,
relative paths, sha256 of each image's bytes), so any change invalidates it and unrelated runs (other
methods, other seeds with the same images) share it. Files are safetensors plus a small JSON manifest, written
atomically; no pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .. import io
from ..io import default_cache_dir
from ..backbones import Backbone, eval_transform, train_transform
from ..data.images import load_image
from ..data.items import DatasetSplits, Item
from ..errors import RlptuneError

log = logging.getLogger(__name__)

CACHE_VERSION = 2


class ImageItems(Dataset):
    """Items → (image tensor, label, index); view > 0 seeds the random augmentation per (view, item)."""

    def __init__(self, splits: DatasetSplits, items: Sequence[Item], transform: Callable, view: int = 0, view_seed: int = 0):
        self.splits, self.items, self.transform, self.view, self.view_seed = splits, list(items), transform, view, view_seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        image = load_image(self.splits.abspath(item))
        if self.view > 0:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed((self.view_seed * 1_000_003 + self.view * 100_003 + index) % (2**63))
                tensor = self.transform(image)
        else:
            tensor = self.transform(image)
        return tensor, item.label, index


def items_fingerprint(splits: DatasetSplits, items: Sequence[Item]) -> str:
    """Hash of the dataset root, each item's path and label, and the sha256 of each image's bytes.

    Content, not size + modification time: an image rewritten with the same size and a restored mtime gets a new
    fingerprint. Hashes are memoised per file under (size, mtime, ctime, inode) - the kernel moves ctime on every
    write and it cannot be set back - so unchanged files are not re-read (see :func:`content_digest`).
    """
    digest = hashlib.sha256()
    digest.update(str(Path(splits.root).resolve()).encode())
    for item in items:
        path = splits.abspath(item)
        digest.update(f"{item.path}\0{item.label}\0{content_digest(path, splits.name)}\n".encode())
    return digest.hexdigest()


#: absolute path -> (size, mtime_ns, ctime_ns, inode, sha256 of the bytes); shared in-process, persisted per cache.
_CONTENT_MEMO: dict[str, tuple[int, int, int, int, str]] = {}


def content_digest(path: Path, dataset: str = "") -> str:
    """sha256 of a file's bytes, memoised while its (size, mtime, ctime, inode) stay the same."""
    try:
        st = os.stat(path)
    except OSError:
        raise RlptuneError(f"{path}: image listed in dataset {dataset!r} does not exist") from None
    stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    key = os.path.abspath(path)
    known = _CONTENT_MEMO.get(key)
    if known is not None and tuple(known[:4]) == stamp:
        return known[4]
    sha = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
    except OSError as exc:
        raise RlptuneError(f"{path}: cannot read image ({exc.strerror or exc})") from None
    _CONTENT_MEMO[key] = (*stamp, sha.hexdigest())
    return sha.hexdigest()


Augment = tuple  # (smallest crop-area fraction, horizontal flip)
DEFAULT_AUGMENT: Augment = (0.08, True)  # CoOp's random resized crop (0.08, 1) + flip


def transform_for_view(backbone: Backbone, view: int, augment: Augment = DEFAULT_AUGMENT) -> Callable:
    """View 0 = the evaluation transform (centre crop); view v > 0 = the training augmentation, seeded per image."""
    if view == 0:
        return eval_transform(backbone)
    return train_transform(backbone, crop_scale=(float(augment[0]), 1.0), flip=bool(augment[1]))


def transform_description(backbone: Backbone, view: int, augment: Augment = DEFAULT_AUGMENT, view_seed: int = 0) -> dict:
    """What the features of ``view`` depend on besides the weights: the transform itself (its repr lists every
    parameter: sizes, crop scale and ratio, interpolation, flip, mean/std) and the per-image seeding scheme."""
    base = {"size": backbone.image_size, "mean": backbone.image_mean, "std": backbone.image_std}
    spec = " ".join(repr(transform_for_view(backbone, view, augment)).split())
    if view == 0:
        return {**base, "kind": "eval: resize bicubic + center crop", "transform": spec}
    kind = f"train: random resized crop ({augment[0]}, 1) bicubic" + (" + hflip" if augment[1] else "")
    return {**base, "kind": kind, "view": view, "view_seed": view_seed, "transform": spec,
            "seeding": "seed(view_seed*1000003 + view*100003 + index)"}


def cache_key(
    backbone: Backbone, splits: DatasetSplits, items: Sequence[Item], view: int, augment: Augment = DEFAULT_AUGMENT,
    view_seed: int = 0, normalize: bool = True,
) -> str:
    desc = {
        "version": CACHE_VERSION,
        "backbone": backbone.identity,
        "precision": backbone.precision,
        "transform": transform_description(backbone, view, augment, view_seed),
        "items": items_fingerprint(splits, items),
    }
    if not normalize:  # raw image-tower output (the linear probe); normalised entries keep their existing keys
        desc["normalize"] = False
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:32]


@torch.no_grad()
def encode_items(
    backbone: Backbone,
    splits: DatasetSplits,
    items: Sequence[Item],
    view: int = 0,
    batch_size: int = 128,
    num_workers: int = 0,
    encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[int], None] | None = None,
    augment: Augment = DEFAULT_AUGMENT,
    view_seed: int = 0,
    normalize: bool = True,
) -> torch.Tensor:
    """Normalised (``normalize=False``: raw) image features (N, e) of ``items`` for one view (0 = centre crop).

    View v > 0 draws image i's crop and flip from ``seed(view_seed·1000003 + v·100003 + i)``: a run's fresh view of
    epoch e is view e + 1 with the run's seed, so every method and setting of a sweep that shares (backbone, images,
    seed, epoch) shares the features, and other seeds see other crops.
    """
    transform = transform_for_view(backbone, view, augment)
    dataset = ImageItems(splits, items, transform, view, view_seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    encode = encoder or (lambda images: backbone.encode_image(images, normalize=normalize))
    outs = []
    for images, _, _ in loader:
        outs.append(encode(images).float().cpu())
        if progress:
            progress(len(images))
    if not outs:
        return torch.empty(0, 0)
    return torch.cat(outs)


class FeatureCache:
    """Content-keyed store of image features under ``root`` (``features/<key>.safetensors`` + ``.json``).

    Every entry records the sha256 of its feature bytes and of its source images (the key's item fingerprint);
    both are checked on load, and an entry that fails (a damaged file, features that are not what was written)
    is rebuilt with a warning, never used. Entries are built under a per-key ``fcntl`` lock, so processes that
    need the same features encode them once, and written atomically, so no reader sees half a file.
    """

    MEMO_FILE = "content-hashes.json"

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool = True) -> None:
        self.root = Path(root) if root else default_cache_dir()
        self.enabled = enabled
        self.hits = 0
        self.misses = 0
        self.rebuilt = 0  # entries found damaged and encoded again
        self._memo_loaded = False

    def path(self, key: str) -> Path:
        return self.root / "features" / f"{key}.safetensors"

    def get_or_encode(
        self,
        backbone: Backbone,
        splits: DatasetSplits,
        items: Sequence[Item],
        view: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        augment: Augment = DEFAULT_AUGMENT,
        view_seed: int = 0,
        normalize: bool = True,
    ) -> torch.Tensor:
        if not items:
            raise RlptuneError(f"dataset {splits.name!r}: no images to encode")
        augment = tuple(augment) if view > 0 else DEFAULT_AUGMENT  # the centre crop does not depend on it
        view_seed = view_seed if view > 0 else 0
        if not self.enabled:
            self.misses += 1
            return encode_items(backbone, splits, items, view, batch_size, num_workers, augment=augment,
                                view_seed=view_seed, normalize=normalize)
        self._check_root()
        self._load_memo()
        memo_size = len(_CONTENT_MEMO)
        sources = items_fingerprint(splits, items)
        key = cache_key(backbone, splits, items, view, augment, view_seed, normalize)
        if len(_CONTENT_MEMO) != memo_size:
            self._save_memo()
        path = self.path(key)
        rebuilt_before = self.rebuilt
        feats = self._load_verified(path, len(items), sources)
        if feats is not None:
            self.hits += 1
            return feats
        with io.file_lock(self.root / "locks" / f"{key}.lock"):
            # built (or repaired) by another process while we waited?
            feats = self._load_verified(path, len(items), sources, quiet=self.rebuilt > rebuilt_before)
            if feats is not None:
                self.hits += 1
                return feats
            self.misses += 1
            feats = encode_items(backbone, splits, items, view, batch_size, num_workers, augment=augment,
                                 view_seed=view_seed, normalize=normalize)
            manifest = {
                "backbone": backbone.identity,
                "dataset": splits.name,
                "view": view,
                "count": len(items),
                "transform": transform_description(backbone, view, augment, view_seed),
                "sources_sha256": sources,
                "features_sha256": _tensor_sha256(feats),
            }
            io.write_safetensors(path, {"features": feats}, {"manifest": json.dumps(manifest)})
            io.write_json(path.with_suffix(".json"), manifest)
        return feats

    def content_hashes(self, splits: DatasetSplits, items: Sequence[Item]) -> list[str]:
        """sha256 of each item's image bytes, from the same memo the cache keys use (persisted in the cache folder),
        so images already hashed for features are not read again, and images hashed here are not read again for
        features."""
        if self.enabled:
            self._load_memo()
        memo_size = len(_CONTENT_MEMO)
        hashes = [content_digest(splits.abspath(item), splits.name) for item in items]
        if self.enabled and len(_CONTENT_MEMO) != memo_size:
            self._save_memo()
        return hashes

    def _load_verified(self, path: Path, count: int, sources: str, quiet: bool = False) -> torch.Tensor | None:
        """The entry at ``path`` if it exists and passes its checksums; a failing entry is reported and None."""
        if not path.is_file():
            return None
        from safetensors import safe_open

        problem = None
        try:
            with safe_open(str(path), framework="pt") as handle:
                manifest = json.loads((handle.metadata() or {}).get("manifest", "null"))
                feats = handle.get_tensor("features")
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
            problem = f"unreadable ({' '.join(str(exc).split())[:80] or type(exc).__name__})"
        else:
            if not isinstance(manifest, dict) or "features_sha256" not in manifest:
                problem = "no checksums recorded (written by an older rlptune)"
            elif manifest.get("sources_sha256") != sources:
                problem = "recorded for other source images"
            elif feats.ndim != 2 or feats.shape[0] != count:
                problem = f"holds {tuple(feats.shape)} features for {count} images"
            elif _tensor_sha256(feats) != manifest["features_sha256"]:
                problem = "feature checksum mismatch (the file is damaged)"
            elif not bool(torch.isfinite(feats).all()):
                problem = "holds non-finite features"
        if problem is None:
            return feats
        if quiet:  # already reported by this call
            return None
        self.rebuilt += 1
        log.warning("feature cache %s: %s; encoding the images again", path, problem)
        return None

    def _check_root(self) -> None:
        for folder in (self.root, self.root / "features"):
            if folder.exists() and not folder.is_dir():
                raise RlptuneError(f"{folder}: feature cache folder is a file, not a folder (train.cache_dir / $RLPTUNE_CACHE)")
        try:
            (self.root / "features").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RlptuneError(io.os_error_line(exc, self.root / "features", "create the feature cache folder")) from None

    def _load_memo(self) -> None:
        if self._memo_loaded:
            return
        self._memo_loaded = True
        try:
            data = json.loads((self.root / self.MEMO_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # no memo yet, or a damaged one: files are hashed again
        if isinstance(data, dict):
            for key, value in data.items():
                if (isinstance(value, list) and len(value) == 5 and all(isinstance(v, int) for v in value[:4])
                        and isinstance(value[4], str) and key not in _CONTENT_MEMO):
                    _CONTENT_MEMO[key] = tuple(value)

    def _save_memo(self) -> None:
        try:
            io.write_json(self.root / self.MEMO_FILE, {k: list(v) for k, v in _CONTENT_MEMO.items()}, indent=0)
        except RlptuneError as exc:  # the memo only saves time; a full disk shows up where results are written
            log.warning("%s", exc)


def _tensor_sha256(tensor: torch.Tensor) -> str:
    data = tensor.detach().to("cpu").contiguous()
    return hashlib.sha256(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"").hexdigest()
