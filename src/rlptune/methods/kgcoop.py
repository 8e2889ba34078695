"""KgCoOp (Yao et al., CVPR 2023): CoOp plus knowledge guidance towards the hand-crafted prompt.

loss = cross-entropy + λ · (1 − mean_c cos(g(t_c), g(h_c))), where g(t_c) is the learned class text feature and
g(h_c) the frozen CLIP's feature of the hand-crafted prompt (the dataset's template, e.g.
"a photo of a {}, a type of pet.", or "a photo of a {}." when the dataset has none). λ = 8 as in the paper.

Same placement and parameter count as CoOp (n·d, or r·(n+d) with ``prompt.kind: lowrank``): the guidance adds
no parameters. Inference is CoOp's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import RlptuneError
from .base import register_method
from .coop import CoOp
from .options import option, parse_options
from .shared import formula, handcrafted_features, handcrafted_template, prompt_term


@dataclass
class KgCoOpOptions:
    lambda_kg: float = option(8.0, "weight λ of the knowledge-guidance term λ·(1 − cos(learned, hand-crafted)) (paper: 8)")
    template: Optional[str] = option(None, "hand-crafted template ({} = class name); unset = the dataset's, else 'a photo of a {}.'")

    def validate(self) -> None:
        if self.lambda_kg < 0:
            raise RlptuneError(f"method.options.lambda_kg must be >= 0, got {self.lambda_kg}")


@register_method("kgcoop")
class KgCoOp(CoOp):
    options_class = KgCoOpOptions

    def __init__(self, config, backbone, classnames: list[str], dataset_template: str | None = None) -> None:
        self.options = parse_options(KgCoOpOptions, config.method.options, "kgcoop")
        super().__init__(config, backbone, classnames, dataset_template)
        self.template = handcrafted_template(dataset_template, self.options.template)
        self.register_buffer("handcrafted", handcrafted_features(backbone, classnames, self.template), persistent=False)
        self._last_text: torch.Tensor | None = None
        self.to(backbone.device)  # the prompt too (a random-init context is created on the CPU)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self.handcrafted = handcrafted_features(self.backbone, classnames, self.template)

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        text = self._merged_features if self._merged_features is not None else self.class_features()
        self._last_text = text if torch.is_grad_enabled() else None  # the loss regularises these very features
        return self.backbone.logit_scale * image_features.to(text.dtype) @ text.t()

    def guidance(self, text: torch.Tensor | None = None) -> torch.Tensor:
        """1 − mean cosine between learned and hand-crafted class features."""
        text = self.class_features() if text is None else text
        return 1.0 - F.cosine_similarity(text, self.handcrafted.to(text.dtype), dim=-1, eps=1e-7).mean()

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        text, self._last_text = self._last_text, None
        ce = F.cross_entropy(logits, labels)
        if self.options.lambda_kg == 0:
            return ce
        return ce + self.options.lambda_kg * self.guidance(text)

    def parameter_formula(self) -> str:
        d = self.backbone.text.width
        symbols = {"n": self.n_ctx, "d": d}
        if self.config.prompt.kind == "lowrank":
            symbols["r"] = self.config.prompt.rank
        if self.config.method.class_specific:
            symbols["C"] = len(self.classnames)
            return formula([prompt_term(self.config.prompt, self.n_ctx, d, len(self.classnames), copies_sym="C")], symbols)
        return formula([prompt_term(self.config.prompt, self.n_ctx, d)], symbols)

    def describe(self) -> dict:
        return {**super().describe(), "template": self.template, "lambda_kg": self.options.lambda_kg}
