"""Few-shot classification: train on every class with K images each, report test accuracy (CoOp)."""

from __future__ import annotations

from ..registry import register_protocol
from .base import Protocol


class FewShot(Protocol):
    name = "few-shot"
    title = "Few-shot classification"
    aliases = ("few_shot", "fewshot")
    recipe_key = "few-shot"
    table_kind = "few-shot"


FEW_SHOT = register_protocol(FewShot())

__all__ = ["FEW_SHOT", "FewShot"]
