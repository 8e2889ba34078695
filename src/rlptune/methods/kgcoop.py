"""KgCoOp (Yao et al., CVPR 2023): CoOp plus knowledge guidance towards the hand-crafted prompt.

loss = cross-entropy + λ · (1 − mean_c cos(g(t_c), g(h_c))), where g(t_c) is the learned class text feature and
g(h_c) the frozen CLIP's feature of the hand-crafted prompt. The hand-crafted prompt is KgCoOp's own per-dataset
template (its ``CUSTOM_TEMPLATES``, :data:`rlptune.method_templates.KGCOOP_TEMPLATES`, chosen by the CoOp name of
``data.dataset``; e.g. DTD "a photo of a {}, a type of texture.", where CoOp's zero-shot uses "{} texture."); for a
dataset KgCoOp does not know, the dataset's own template, else "a photo of a {}."; ``method.options.template``
overrides all of them. λ = 8 as in the paper.

Same placement and parameter count as CoOp (n·d, or r·(n+d) with ``prompt.kind: lowrank``): the guidance adds
no parameters. Inference is CoOp's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import RlptuneError
from ..data.coop import coop_name
from ..method_templates import KGCOOP_TEMPLATES
from .base import Batch, StepOutput, register_method
from .coop import CoOp, CoOpOptions
from ..options import option
from .shared import handcrafted_features, handcrafted_template


@dataclass
class KgCoOpOptions(CoOpOptions):
    lambda_kg: float = option(
        8.0, "weight λ of the knowledge-guidance term λ·(1 − cos(learned, hand-crafted)) (paper: 8)", low=0
    )
    template: Optional[str] = option(
        None,
        "hand-crafted template ({} = class name); unset = KgCoOp's own for a CoOp dataset, else the dataset's, "
        "else 'a photo of a {}.'",
    )

    def validate(self) -> None:
        if self.lambda_kg < 0:
            raise RlptuneError(f"method.options.lambda_kg must be >= 0, got {self.lambda_kg}")


def kgcoop_template(dataset: str | None, dataset_template: str | None) -> str | None:
    """KgCoOp's hand-crafted template for ``dataset`` (its CUSTOM_TEMPLATES entry), else the dataset's own."""
    name = coop_name(dataset)
    return KGCOOP_TEMPLATES.get(name, dataset_template) if name else dataset_template


@register_method("kgcoop", options=KgCoOpOptions)
class KgCoOp(CoOp):
    reads = CoOp.reads + ("data.dataset",)  # its hand-crafted template is chosen by the dataset

    def __init__(self, settings, backbone, classnames: list[str], dataset_template: str | None = None) -> None:
        super().__init__(settings, backbone, classnames, dataset_template)
        self.template = handcrafted_template(
            kgcoop_template(self.settings.data.dataset, dataset_template), self.options.template
        )
        self.register_buffer("handcrafted", handcrafted_features(backbone, classnames, self.template), persistent=False)
        self.to(backbone.device)  # the prompt too (a random-init context is created on the CPU)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self.handcrafted = handcrafted_features(self.backbone, classnames, self.template)

    def guidance(self, text: torch.Tensor | None = None) -> torch.Tensor:
        """1 − mean cosine between learned and hand-crafted class features."""
        text = self.class_features() if text is None else text
        return 1.0 - F.cosine_similarity(text, self.handcrafted.to(text.dtype), dim=-1, eps=1e-7).mean()

    def training_step(self, batch: Batch) -> StepOutput:
        """Cross-entropy plus λ·guidance, both on the same class features of this step."""
        text = self.class_features()
        logits = self.scores(self.image_features_of(batch), text)
        ce = F.cross_entropy(logits.float(), batch.labels)
        if self.options.lambda_kg == 0:
            return StepOutput(ce, logits, {"loss_ce": float(ce.detach())})
        guidance = self.guidance(text)
        return StepOutput(
            ce + self.options.lambda_kg * guidance,
            logits,
            {"loss_ce": float(ce.detach()), "guidance": float(guidance.detach())},
        )

    def describe(self) -> dict:
        return {**super().describe(), "template": self.template, "lambda_kg": self.options.lambda_kg}
