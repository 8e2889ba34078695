"""Zero-shot CLIP: hand-written templates, one or an ensemble (features averaged, as in CLIP's paper)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import RlptuneError
from .base import Method, register_method


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
        total = None
        for template in self.templates():
            texts = [template.format(name.replace("_", " ")) for name in self.classnames]
            feats = torch.cat(
                [
                    self.backbone.encode_text_ids(self.backbone.tokenize(texts[i : i + 256]), normalize=True)
                    for i in range(0, len(texts), 256)
                ]
            )
            total = feats if total is None else total + feats
        return F.normalize(total, dim=-1)

    def describe(self) -> dict:
        return {**super().describe(), "templates": self.templates()}
