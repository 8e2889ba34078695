"""Cross-dataset transfer: train on a source dataset (all classes), evaluate the same prompt on other datasets
(CoCoOp: ImageNet → the other ten CoOp datasets; on the micro suite, the other micro datasets)."""

from __future__ import annotations

from ..registry import register_protocol
from .base import Protocol


class CrossDataset(Protocol):
    name = "cross-dataset"
    title = "Cross-dataset transfer"
    aliases = ("cross_dataset", "xd")
    recipe_key = "cross-dataset"
    table_kind = "cross-dataset"
    uses_targets = True
    default_sources = ("micro-shapes",)  # the micro dataset that also has shifted renderings

    def default_targets(self, source: str) -> list[str]:
        """The other datasets of the source's suite (the dataset catalogues are read on first use: they import
        torch, and the command line lists protocols without it)."""
        if source.startswith("micro"):
            from ..micro.suite import MICRO_DATASETS

            return [d for d in MICRO_DATASETS if d != source]
        from ..data.coop import COOP_11

        return [n for n in COOP_11 if n != "ImageNet"]


CROSS_DATASET = register_protocol(CrossDataset())

__all__ = ["CROSS_DATASET", "CrossDataset"]
