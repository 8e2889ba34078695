"""Zero-shot CLIP: hand-written templates, one or an ensemble (features averaged, as in CLIP's paper)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import RlptuneError
from ..options import check_template, templates_option, use_dataset_template_option
from .base import Method, register_method
from .shared import handcrafted_features


@dataclass
class ZeroShotOptions:
    """The class-prompt templates (CoOp's zero-shot CLIP uses each dataset's own)."""

    templates: list = templates_option()
    use_dataset_template: bool = use_dataset_template_option()

    def validate(self) -> None:
        if not self.templates:
            raise RlptuneError(
                "method.options.templates is empty; expected at least one template such as 'a photo of a {}.'"
            )
        for template in self.templates:
            check_template(template, "method.options.templates")


@register_method("zeroshot", options=ZeroShotOptions)
class ZeroShot(Method):
    def templates(self) -> list[str]:
        if self.options.use_dataset_template and self.dataset_template:
            return [self.dataset_template]
        return list(self.options.templates)

    @torch.no_grad()
    def class_features(self) -> torch.Tensor:
        """CLIP's prompt ensemble: the mean of each template's normalised class features, renormalised."""
        total = sum(handcrafted_features(self.backbone, self.classnames, template) for template in self.templates())
        return F.normalize(total, dim=-1)

    def describe(self) -> dict:
        return {**super().describe(), "templates": self.templates()}
