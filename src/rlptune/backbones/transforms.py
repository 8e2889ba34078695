"""Image transforms from a backbone's preprocessing settings (size, mean, std), CoOp-style augmentation."""

from __future__ import annotations

from typing import Callable

from torchvision import transforms as T

from .base import Backbone


def eval_transform(backbone: Backbone) -> Callable:
    """Resize the short side (bicubic), centre crop, normalise: CLIP's own evaluation preprocessing."""
    size = backbone.image_size
    return T.Compose(
        [
            T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(backbone.image_mean, backbone.image_std),
        ]
    )


def train_transform(backbone: Backbone, crop_scale: tuple[float, float] = (0.08, 1.0), flip: bool = True) -> Callable:
    """CoOp's training augmentation: random resized crop (bicubic) and horizontal flip, then normalise."""
    size = backbone.image_size
    steps = [T.RandomResizedCrop(size, scale=crop_scale, interpolation=T.InterpolationMode.BICUBIC)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(backbone.image_mean, backbone.image_std)]
    return T.Compose(steps)
