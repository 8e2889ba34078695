"""Image features, encoded once and cached by content.

Methods that put nothing into the image tower train on cached features: each training image is encoded once per
augmented view (view v uses its own fixed random crop/flip per image), and epochs cycle through the views. The
cache key is a hash of the backbone identity, the transform settings, the view index and the item list (root,
relative paths, sha256 of each image's bytes), so any change invalidates it and unrelated runs (other
methods, other seeds with the same images) share it. Files are safetensors plus a small JSON manifest, written
atomically; no pickle anywhere.

The folder is bounded (``cache.max_gb``, least recently used evicted first; see :mod:`rlptune.cachedir`), and with
``cache.views = memory`` the features of augmented views are never written: they are computed once per view and kept
in this process's memory (``cache.memory_gb``), shared by every run the process makes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .. import cachedir, io
from ..io import default_cache_dir
from ..backbones import Backbone, eval_transform, train_transform
from ..data.images import load_image
from ..data.items import DatasetSplits, Item
from ..errors import RlptuneError

log = logging.getLogger(__name__)

CACHE_VERSION = 2


class ImageItems(Dataset):
    """Items → (image tensor, label, index); view > 0 seeds the random augmentation per (view, item)."""

    def __init__(
        self, splits: DatasetSplits, items: Sequence[Item], transform: Callable, view: int = 0, view_seed: int = 0
    ):
        self.splits, self.items, self.transform, self.view, self.view_seed = (
            splits,
            list(items),
            transform,
            view,
            view_seed,
        )

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


def transform_description(
    backbone: Backbone, view: int, augment: Augment = DEFAULT_AUGMENT, view_seed: int = 0
) -> dict:
    """What the features of ``view`` depend on besides the weights: the transform itself (its repr lists every
    parameter: sizes, crop scale and ratio, interpolation, flip, mean/std) and the per-image seeding scheme."""
    base = {"size": backbone.image_size, "mean": backbone.image_mean, "std": backbone.image_std}
    spec = " ".join(repr(transform_for_view(backbone, view, augment)).split())
    if view == 0:
        return {**base, "kind": "eval: resize bicubic + center crop", "transform": spec}
    kind = f"train: random resized crop ({augment[0]}, 1) bicubic" + (" + hflip" if augment[1] else "")
    return {
        **base,
        "kind": kind,
        "view": view,
        "view_seed": view_seed,
        "transform": spec,
        "seeding": "seed(view_seed*1000003 + view*100003 + index)",
    }


def cache_key(
    backbone: Backbone,
    splits: DatasetSplits,
    items: Sequence[Item],
    view: int,
    augment: Augment = DEFAULT_AUGMENT,
    view_seed: int = 0,
    normalize: bool = True,
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


@dataclass(frozen=True)
class _Encoding:
    """One request to :meth:`FeatureCache.get_or_encode`: what to encode and how, so a miss encodes it the same way
    wherever it is served from (no cache, the disk store, the memory store)."""

    backbone: Backbone
    splits: DatasetSplits
    items: Sequence[Item]
    view: int
    batch_size: int
    num_workers: int
    augment: Augment
    view_seed: int
    normalize: bool

    def encode(self) -> torch.Tensor:
        return encode_items(
            self.backbone,
            self.splits,
            self.items,
            self.view,
            self.batch_size,
            self.num_workers,
            augment=self.augment,
            view_seed=self.view_seed,
            normalize=self.normalize,
        )


#: Views kept in memory (``cache.views = memory``): cache key -> features, least recently used first. Shared by every
#: FeatureCache of the process, so the runs of one process (a sweep's methods and settings) share each view.
_VIEW_MEMORY: "OrderedDict[str, torch.Tensor]" = OrderedDict()
_VIEW_MEMORY_LOCK = threading.Lock()
VIEW_STORES = ("disk", "memory")


class FeatureCache:
    """Content-keyed store of image features under ``root`` (``features/<key>.safetensors`` + ``.json``).

    Every entry records the sha256 of its feature bytes and of its source images (the key's item fingerprint);
    both are checked on load, and an entry that fails (a damaged file, features that are not what was written)
    is rebuilt with a warning, never used. Entries are read under their per-key ``fcntl`` lock held shared and
    built under it held exclusively, so processes that need the same features encode them once, and written
    atomically, so no reader sees half a file. The entries stay under ``max_gb`` (least recently used evicted
    first, an entry in use never; :mod:`rlptune.cachedir`). ``views="memory"`` keeps augmented views (view > 0) in
    this process's memory instead of on disk, within ``memory_gb``.
    """

    MEMO_FILE = "content-hashes.json"

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        enabled: bool = True,
        *,
        max_gb: float = cachedir.DEFAULT_MAX_GB,
        views: str = "disk",
        memory_gb: float = cachedir.DEFAULT_MEMORY_GB,
    ) -> None:
        if views not in VIEW_STORES:
            raise RlptuneError(f"cache.views {views!r}: expected one of {', '.join(VIEW_STORES)}")
        for name, value in (("cache.max_gb", max_gb), ("cache.memory_gb", memory_gb)):
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not value >= 0
                or value == float("inf")
            ):
                raise RlptuneError(f"{name} must be a finite number of GB >= 0, got {value!r}")
        self.root = Path(root) if root else default_cache_dir()
        self.enabled = enabled
        self.max_bytes = int(max_gb * cachedir.GB)
        self.views = views
        self.memory_bytes = int(memory_gb * cachedir.GB)
        self.hits = 0
        self.misses = 0
        self.rebuilt = 0  # entries found damaged and encoded again
        self.not_stored = 0  # entries encoded but not written (they did not fit under the bound)
        self._memo_loaded = False

    @classmethod
    def from_config(cls, config) -> "FeatureCache":
        """The cache a run's settings ask for: ``train.cache_dir`` and the ``cache`` section."""
        settings = getattr(config, "cache", None)
        if settings is None:
            return cls(config.train.cache_dir)
        return cls(config.train.cache_dir, max_gb=settings.max_gb, views=settings.views, memory_gb=settings.memory_gb)

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
        request = _Encoding(backbone, splits, items, view, batch_size, num_workers, augment, view_seed, normalize)
        if not self.enabled:
            self.misses += 1
            return request.encode()
        in_memory = view > 0 and self.views == "memory"
        if not in_memory:
            self._check_root()
        self._load_memo()
        memo_size = len(_CONTENT_MEMO)
        sources = items_fingerprint(splits, items)
        key = cache_key(backbone, splits, items, view, augment, view_seed, normalize)
        if len(_CONTENT_MEMO) != memo_size:
            self._save_memo()
        if in_memory:
            return self._from_memory(key, request)
        return self._from_disk(key, sources, request)

    def _from_disk(self, key: str, sources: str, request: _Encoding) -> torch.Tensor:
        """The entry ``key`` read under its lock held shared, else built under it held exclusively (so processes
        that need the same features encode them once)."""
        path = self.path(key)
        locks, lock_name = cachedir.lock_path(self.root, key)
        rebuilt_before = self.rebuilt
        # shared: eviction (which takes the lock without waiting) never removes an entry while it is read
        with cachedir.entry_lock(locks, lock_name, shared=True, required=False):
            feats = self._load_verified(path, len(request.items), sources)
            if feats is not None:
                cachedir.touch(path)  # recency for least-recently-used eviction
                self.hits += 1
                return feats
        with cachedir.entry_lock(locks, lock_name):
            # built (or repaired) by another process while we waited?
            feats = self._load_verified(path, len(request.items), sources, quiet=self.rebuilt > rebuilt_before)
            if feats is not None:
                cachedir.touch(path)
                self.hits += 1
                return feats
            self.misses += 1
            feats = request.encode()
            self._store(key, feats, self._manifest(request, sources, feats))
        return feats

    @staticmethod
    def _manifest(request: _Encoding, sources: str, feats: torch.Tensor) -> dict:
        """What an entry records beside its features: where they came from and both hashes checked on load."""
        backbone, view = request.backbone, request.view
        return {
            "backbone": backbone.identity,
            "precision": backbone.precision,
            "dataset": request.splits.name,
            "view": view,
            "count": len(request.items),
            "transform": transform_description(backbone, view, request.augment, request.view_seed),
            "sources_sha256": sources,
            "features_sha256": _tensor_sha256(feats),
        }

    def _store(self, key: str, feats: torch.Tensor, manifest: dict) -> None:
        """Write the entry if it fits under the bound (evicting least recently used ones); else leave it unwritten."""
        from safetensors.torch import save

        data = save({"features": feats.detach().to("cpu").contiguous()}, {"manifest": json.dumps(manifest)})
        sidecar = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
        files = [(f"{key}.safetensors", data), (f"{key}.json", sidecar)]
        if not cachedir.store_entry(self.root, key, files, self.max_bytes):
            self.not_stored += 1

    def _from_memory(self, key: str, request: _Encoding) -> torch.Tensor:
        """``cache.views = memory``: the view's features from this process's store, encoded once per view."""
        with _VIEW_MEMORY_LOCK:
            feats = _VIEW_MEMORY.get(key)
            if feats is not None:
                _VIEW_MEMORY.move_to_end(key)
        if feats is not None:
            self.hits += 1
            return feats.clone()  # callers may not share one tensor: a run must not change another's view
        self.misses += 1
        feats = request.encode()
        size = feats.numel() * feats.element_size()
        if size <= self.memory_bytes:
            with _VIEW_MEMORY_LOCK:
                _VIEW_MEMORY[key] = feats.clone()
                total = sum(t.numel() * t.element_size() for t in _VIEW_MEMORY.values())
                while total > self.memory_bytes:
                    _, dropped = _VIEW_MEMORY.popitem(last=False)
                    total -= dropped.numel() * dropped.element_size()
        else:
            self.not_stored += 1
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
        except FileNotFoundError:
            return None  # evicted or cleared since the check: a miss, not damage
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
            if not path.is_file():
                return None
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
        for folder in (self.root, self.root / "features", self.root / "locks"):
            if folder.exists() and not folder.is_dir():
                raise RlptuneError(
                    f"{folder}: feature cache folder is a file, not a folder (train.cache_dir / $RLPTUNE_CACHE)"
                )
        try:
            (self.root / "features").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RlptuneError(
                io.os_error_line(exc, self.root / "features", "create the feature cache folder")
            ) from None
        try:
            (self.root / "locks").mkdir(exist_ok=True)
        except OSError:
            pass  # a read-only cache still serves its entries; a write says why it cannot lock

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
                if (
                    isinstance(value, list)
                    and len(value) == 5
                    and all(isinstance(v, int) for v in value[:4])
                    and isinstance(value[4], str)
                    and key not in _CONTENT_MEMO
                ):
                    _CONTENT_MEMO[key] = tuple(value)

    def _save_memo(self) -> None:
        try:
            io.write_json(self.root / self.MEMO_FILE, {k: list(v) for k, v in _CONTENT_MEMO.items()}, indent=0)
        except RlptuneError as exc:  # the memo only saves time; a full disk shows up where results are written
            log.warning("%s", exc)


def _tensor_sha256(tensor: torch.Tensor) -> str:
    data = tensor.detach().to("cpu").contiguous()
    return hashlib.sha256(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"").hexdigest()
