"""Base-to-new generalisation: train on the base half of the classes (first ⌈n/2⌉ labels), then score the base
classes' test images and, with the same prompt, the new half's with its class names; H is their harmonic mean
(CoCoOp)."""

from __future__ import annotations

from typing import Any

from ..errors import RlptuneError
from ..registry import register_protocol
from .base import Evaluation, Metrics, Protocol


class BaseToNew(Protocol):
    name = "base2new"
    title = "Base-to-new generalisation"
    aliases = ("base-to-new", "b2n")
    recipe_key = "base2new"
    table_kind = "base2new"
    new_classes = True

    def training_subset(self, config: Any) -> str:
        """Always the base half; ``data.subsample=new`` contradicts the protocol."""
        if config.data.subsample == "new":
            raise RlptuneError(
                f"data.subsample=new contradicts data.protocol={self.name}, which trains on the base classes"
            )
        return "base"

    def evaluate(self, run: Evaluation) -> tuple[Metrics, Metrics]:
        """Base accuracy; new accuracy and H when the method can score unseen classes."""
        metrics: Metrics = {"base": run.test()}
        extra: Metrics = {}
        if run.transfers_to_new_classes:
            metrics["new"] = run.new_classes()
            extra["h"] = run.harmonic_mean(metrics["base"]["top1"], metrics["new"]["top1"])
        return metrics, extra


BASE_TO_NEW = register_protocol(BaseToNew())

__all__ = ["BASE_TO_NEW", "BaseToNew"]
