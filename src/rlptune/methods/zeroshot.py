"""Zero-shot CLIP: hand-written templates, one or an ensemble (features averaged, as in CLIP's paper)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import RlptuneError
from .base import Method, register_method
from .shared import handcrafted_features


@register_method("zeroshot")
class ZeroShot(Method):
    honours = frozenset({"use_dataset_template"})  # CoOp's zero-shot CLIP uses each dataset's template

    def templates(self) -> list[str]:
        if self.config.method.use_dataset_template and self.dataset_template:
            return [self.dataset_template]
        templates = list(self.config.method.templates)
        for t in templates:
            if "{}" not in t:
                raise RlptuneError(f"method.templates: template {t!r} has no '{{}}' for the class name")
        return templates

    @torch.no_grad()
    def class_features(self) -> torch.Tensor:
        """CLIP's prompt ensemble: the mean of each template's normalised class features, renormalised."""
        total = sum(handcrafted_features(self.backbone, self.classnames, template) for template in self.templates())
        return F.normalize(total, dim=-1)

    def describe(self) -> dict:
        return {**super().describe(), "templates": self.templates()}
