"""Classification metrics: top-1, macro-F1 and per-class accuracy, in percent."""

from __future__ import annotations

import torch


def classification_metrics(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """Top-1 accuracy, macro-F1 (over classes present in labels or predictions) and per-class accuracy (%)."""
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
    return {
        "top1": 100.0 * float(tp.sum()) / max(n, 1),
        "macro_f1": 100.0 * macro_f1,
        "per_class": [None if torch.isnan(v) else round(100.0 * float(v), 4) for v in per_class],
        "n": n,
    }

