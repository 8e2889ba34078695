"""Image features, encoded once and cached by content.

Methods that put nothing into the image tower train on cached features: each training image is encoded once per
augmented view (view v uses its own fixed random crop/flip per image), and epochs cycle through the views. The
cache key is a hash of the backbone identity, the transform settings, the view index and the item list (root,
relative paths, file sizes and modification times), so any change invalidates it and unrelated runs (other
methods, other seeds with the same images) share it. Files are safetensors plus a small JSON manifest, written
atomically; no pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .. import io
from ..io import default_cache_dir
from ..backbones import Backbone, eval_transform, train_transform
from ..data.items import DatasetSplits, Item
from ..errors import RlptuneError

CACHE_VERSION = 2


def _load_image(path: Path):
    from ..data.images import load_image

    return load_image(path)


class ImageItems(Dataset):
    """Items → (image tensor, label, index); view > 0 seeds the random augmentation per (view, item)."""

    def __init__(self, splits: DatasetSplits, items: Sequence[Item], transform: Callable, view: int = 0, view_seed: int = 0):
        self.splits, self.items, self.transform, self.view, self.view_seed = splits, list(items), transform, view, view_seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        image = _load_image(self.splits.abspath(item))
        if self.view > 0:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed((self.view_seed * 1_000_003 + self.view * 100_003 + index) % (2**63))
                tensor = self.transform(image)
        else:
            tensor = self.transform(image)
        return tensor, item.label, index


def items_fingerprint(splits: DatasetSplits, items: Sequence[Item]) -> str:
    digest = hashlib.sha256()
    digest.update(str(Path(splits.root).resolve()).encode())
    for item in items:
        path = splits.abspath(item)
        try:
            st = path.stat()
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            raise RlptuneError(f"{path}: image listed in dataset {splits.name!r} does not exist") from None
        digest.update(f"{item.path}\0{item.label}\0{stamp}\n".encode())
    return digest.hexdigest()


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
    view_seed: int = 0,
) -> str:
    desc = {
        "version": CACHE_VERSION,
        "backbone": backbone.identity,
        "precision": backbone.precision,
        "transform": transform_description(backbone, view, augment, view_seed),
        "items": items_fingerprint(splits, items),
    }
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
) -> torch.Tensor:
    """Normalised image features (N, e) of ``items`` for one view (0 = centre crop), in item order.

    View v > 0 draws image i's crop and flip from ``seed(view_seed·1000003 + v·100003 + i)``: a run's fresh view of
    epoch e is view e + 1 with the run's seed, so every method and setting of a sweep that shares (backbone, images,
    seed, epoch) shares the features, and other seeds see other crops.
    """
    transform = transform_for_view(backbone, view, augment)
    dataset = ImageItems(splits, items, transform, view, view_seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    encode = encoder or backbone.encode_image
    outs = []
    for images, _, _ in loader:
        outs.append(encode(images).float().cpu())
        if progress:
            progress(len(images))
    if not outs:
        return torch.empty(0, 0)
    return torch.cat(outs)


class FeatureCache:
    """Content-keyed store of image features under ``root`` (``features/<key>.safetensors`` + ``.json``)."""

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool = True) -> None:
        self.root = Path(root) if root else default_cache_dir()
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

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
    ) -> torch.Tensor:
        if not items:
            raise RlptuneError(f"dataset {splits.name!r}: no images to encode")
        augment = tuple(augment) if view > 0 else DEFAULT_AUGMENT  # the centre crop does not depend on it
        view_seed = view_seed if view > 0 else 0
        key = cache_key(backbone, splits, items, view, augment, view_seed)
        path = self.path(key)
        if self.enabled and path.is_file():
            from safetensors.torch import load_file

            try:
                feats = load_file(str(path))["features"]
                if feats.shape[0] == len(items):
                    self.hits += 1
                    return feats
            except Exception:  # a damaged cache file is rebuilt, never trusted
                pass
        self.misses += 1
        feats = encode_items(backbone, splits, items, view, batch_size, num_workers, augment=augment, view_seed=view_seed)
        if self.enabled:
            manifest = {
                "backbone": backbone.identity,
                "dataset": splits.name,
                "view": view,
                "count": len(items),
                "transform": transform_description(backbone, view, augment, view_seed),
            }
            io.write_safetensors(path, {"features": feats}, {"manifest": json.dumps(manifest)})
            io.write_json(path.with_suffix(".json"), manifest)
        return feats
