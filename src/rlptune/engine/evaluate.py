"""Evaluation: classification metrics with their 95% interval, a method's metrics on one split, the zero-shot
baseline of the same split, and the lines that say what small numbers can and cannot show.

On a small folder of one's own (5 classes × 20 images: 30 test images) a tuned prompt can end below zero-shot CLIP
and the gap between two recipes is within the noise of the test split. So every accuracy carries its Wilson 95%
interval (``ci95``, in percent), every run records the zero-shot accuracy of the same split beside its own, and
:func:`small_data_notes` words the two warnings a user needs (see docs/METHODS.md, "Small data").
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch

from ..analysis.stats import wilson_interval
from ..data.items import DatasetSplits
from ..errors import RlptuneError
from ..methods import Method, build_method
from .features import FeatureCache, encode_items

#: An interval wider than this many points of accuracy is called out: the split is too small to rank recipes.
WIDE_INTERVAL_POINTS = 10.0
#: The fields of the zero-shot baseline kept in result.json (per-class scores are left to an explicit zero-shot run).
BASELINE_FIELDS = ("top1", "ci95", "macro_f1", "n")
#: The knobs that usually matter when a prompt ends below zero-shot on little data (measured in docs/METHODS.md).
SMALL_DATA_KNOBS = "the crop scale (--crop-scale, e.g. 0.5), the epochs (--epochs) and --select-best"


def classification_metrics(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """Top-1 accuracy with its Wilson 95% interval, macro-F1 (over classes present in labels or predictions) and
    per-class accuracy (%)."""
    predictions = predictions.long().cpu()
    labels = labels.long().cpu()
    n = int(labels.numel())
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, predictions), torch.ones(n, dtype=torch.long), accumulate=True)
    tp = confusion.diag().double()
    support = confusion.sum(1).double()
    predicted = confusion.sum(0).double()
    per_class = torch.where(support > 0, tp / support.clamp(min=1), torch.full_like(tp, float("nan")))
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp))
    present = (support > 0) | (predicted > 0)
    macro_f1 = float(f1[present].mean()) if bool(present.any()) else 0.0
    low, high = wilson_interval(int(confusion.diag().sum()), n)
    return {
        "top1": 100.0 * float(tp.sum()) / max(n, 1),
        "ci95": [round(100.0 * low, 4), round(100.0 * high, 4)],
        "macro_f1": 100.0 * macro_f1,
        "per_class": [None if torch.isnan(v) else round(100.0 * float(v), 4) for v in per_class],
        "n": n,
    }


def evaluate_split(
    method, splits: DatasetSplits, split: str, cache: FeatureCache, batch_size: int = 128, num_workers: int = 0
) -> dict:
    """Metrics of ``method`` on one split (features from the cache when the image tower is untouched)."""
    items = splits.split(split)
    if not items:
        raise RlptuneError(f"dataset {splits.name!r}: the {split} split is empty")
    labels = torch.tensor([it.label for it in items])
    method.eval()
    if method.needs_image_tower:
        feats = encode_items(method.backbone, splits, items, 0, batch_size, num_workers, encoder=method.encode_images)
    else:
        feats = cache.get_or_encode(
            method.backbone,
            splits,
            items,
            view=0,
            batch_size=batch_size,
            num_workers=num_workers,
            normalize=method.normalize_features,
        )
    with torch.no_grad():
        method.merge()
        preds = torch.cat(
            [
                method.logits(feats[i : i + 4096].to(method.backbone.device)).argmax(-1).cpu()
                for i in range(0, len(feats), 4096)
            ]
        )
    # per_class is in class order; its names beside it, so result.json and eval --json say which class is which
    return {**classification_metrics(preds, labels, len(method.classnames)), "per_class_names": list(method.classnames)}


def zero_shot_of(method: Method, classnames: Sequence[str] | None = None) -> Method:
    """Zero-shot CLIP under ``method``'s settings: the same backbone, dataset template and zero-shot templates,
    with none of the method's own options (the baseline a tuned prompt has to beat), on ``classnames`` (default:
    the method's)."""
    config = copy.deepcopy(method.run_config)  # the engine's record of the run the method was built for
    config.method.name = "zeroshot"
    config.method.options = {}
    names = method.classnames if classnames is None else classnames
    return build_method(config, method.backbone, list(names), method.dataset_template)


def zero_shot_baseline(
    method: Method, splits: DatasetSplits, split: str, cache: FeatureCache, batch_size: int = 128, num_workers: int = 0
) -> dict[str, Any]:
    """Zero-shot accuracy (with its interval) of ``method``'s classes on ``split``: frozen centre-crop features, so
    the cache a feature-based run already filled answers it without encoding an image again."""
    metrics = evaluate_split(zero_shot_of(method, splits.classnames), splits, split, cache, batch_size, num_workers)
    return {key: metrics[key] for key in BASELINE_FIELDS}


def small_data_notes(metrics: Mapping[str, Any], against: tuple[str, float, float] | None = None) -> list[str]:
    """What the numbers cannot show, one line each: a split so small that its 95% interval is wider than
    :data:`WIDE_INTERVAL_POINTS` (the widest such split of ``metrics`` is named), and an accuracy below zero-shot's
    (``against`` = (where, the accuracy, zero-shot's), in percent), with the knobs that usually matter."""
    notes = []
    wide = [
        (value["ci95"][1] - value["ci95"][0], name, value)
        for name, value in metrics.items()
        if isinstance(value, Mapping) and isinstance(value.get("ci95"), (list, tuple)) and len(value["ci95"]) == 2
    ]
    if wide:
        width, name, value = max(wide, key=lambda w: w[0])
        if width > WIDE_INTERVAL_POINTS:
            low, high = value["ci95"]
            notes.append(
                f"note: the {name} split has {value['n']} images, so its 95% interval is {width:.1f} points wide "
                f"({low:.1f}-{high:.1f}%); differences smaller than that are within noise"
            )
    if against is not None and against[1] < against[2]:
        where, ours, zero = against
        notes.append(
            f"note: below zero-shot {where} ({ours:.1f}% vs {zero:.1f}% zero-shot); the knobs that usually matter: "
            f"{SMALL_DATA_KNOBS} (docs/METHODS.md, Small data)"
        )
    return notes


__all__ = [
    "classification_metrics",
    "evaluate_split",
    "small_data_notes",
    "zero_shot_baseline",
    "zero_shot_of",
]
