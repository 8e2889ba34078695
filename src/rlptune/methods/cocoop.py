"""CoCoOp (Zhou et al., CVPR 2022): a context conditioned on each image by a small meta-network.

A meta-net ``e → e/16 → d`` (Linear, ReLU, Linear) maps each normalised image feature to a token π(x) that is
added to every context vector, so each image gets its own class prompts ``[SOS] [ctx + π(x)] [name] [.] [EOT]``
and its own class features: logits[b, c] = scale · ⟨f(x_b), g(t_c(x_b))⟩, and the cross-entropy is over these
per-image class features.

Batched: the prompts of all images × all classes of a step go through the text tower in one call
((B·C) sequences, truncated at the longest end-of-text token); ``images_per_call`` bounds that when memory is
short, and inference always splits into groups of ``inference_images_per_call`` images.

The context's parameterisation is ``prompt.kind`` (full-rank CoCoOp, or ``lowrank``: RLP's ``P_fr + s·A@B``);
the meta-net is not a prompt and stays a plain MLP.

Trainable parameters: ``n·d`` (or ``r·(n+d)``) + ``e·h + h + h·d + d`` with h = max(1, e // 16):
35,360 on ViT-B-16 (n=4, e=d=512, h=32).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RlptuneError
from ..prompts import build_prompt
from ..text import PromptedClassText
from .base import Batch, DeclaredSize, Method, StepOutput, register_method
from .coop import initial_context
from ..options import MAX_BATCH, MAX_TOKENS, class_token_position_option, option, text_chunk_option
from .shared import formula, prompt_kind_sizes, prompt_term, prompt_token_size


@dataclass
class CoCoOpOptions:
    hidden_ratio: int = option(
        16,
        "meta-net bottleneck: hidden width h = max(1, embed_dim // hidden_ratio) (CoCoOp: 16)",
        low=1,
        high=MAX_TOKENS,
    )
    images_per_call: int = option(
        0,
        "training: images whose B·C class prompts share one text-tower call (0 = the whole batch)",
        low=0,
        high=MAX_BATCH,
    )
    inference_images_per_call: int = option(
        32, "inference: images per text-tower call (bounds memory on large test sets)", low=1, high=MAX_BATCH
    )
    class_token_position: str = class_token_position_option()
    text_chunk: int = text_chunk_option()

    def validate(self) -> None:
        if self.hidden_ratio < 1:
            raise RlptuneError(f"method.options.hidden_ratio must be >= 1, got {self.hidden_ratio}")
        if self.images_per_call < 0 or self.inference_images_per_call < 1:
            raise RlptuneError("method.options.images_per_call must be >= 0 and inference_images_per_call >= 1")


@register_method("cocoop")
class CoCoOp(Method):
    options_class = CoCoOpOptions
    learns_prompt = True
    reads = ("prompt",)

    def __init__(self, settings, backbone, classnames: list[str], dataset_template: str | None = None) -> None:
        super().__init__(settings, backbone, classnames, dataset_template)
        init, from_text = initial_context(self.settings, backbone)
        self.n_ctx = int(init.shape[-2])
        self.prompt = build_prompt(self.settings.prompt, init, from_text)
        embed, width = backbone.embed_dim, backbone.text.width
        self.hidden = max(1, embed // self.options.hidden_ratio)
        self.meta_net = nn.Sequential(
            OrderedDict(
                [
                    ("linear1", nn.Linear(embed, self.hidden)),
                    ("relu", nn.ReLU(inplace=True)),
                    ("linear2", nn.Linear(self.hidden, width)),
                ]
            )
        ).to(backbone.device)
        self.text = self._make_text(classnames)
        self._merged_ctx: torch.Tensor | None = None
        self.to(backbone.device)  # the prompt too (a random-init context is created on the CPU)

    def _make_text(self, classnames: Sequence[str]) -> PromptedClassText:
        o = self.options
        return PromptedClassText(
            self.backbone,
            classnames,
            self.n_ctx,
            o.class_token_position,
            o.text_chunk,
            context_text=self.settings.prompt.ctx_init,
        ).to(self.backbone.device)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self.text = self._make_text(classnames)

    @classmethod
    def declared_sizes(cls, settings, classnames: Sequence[str]) -> list[DeclaredSize]:
        """The context's n_ctx (without an init text) and the prompt kind's own sizes; the meta-net's width is bounded by the backbone's."""
        settings = settings.prompt
        sizes = (
            []
            if settings.ctx_init
            else prompt_token_size(settings, ["prompt"], "settings.prompt.n_ctx", settings.n_ctx)
        )
        return sizes + prompt_kind_sizes(settings, ["prompt"])

    # -- text features ------------------------------------------------------------------------------------------
    def context(self) -> torch.Tensor:
        """The shared context (n, d) before the image token (merged into one plain tensor after :meth:`merge`)."""
        return self._merged_ctx if self._merged_ctx is not None else self.prompt()

    def image_tokens(self, image_features: torch.Tensor) -> torch.Tensor:
        """π(x): the meta-net's token (B, d) for each normalised image feature."""
        return self.meta_net(image_features.to(self.meta_net.linear1.weight.dtype))

    def conditional_class_features(self, ctx: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Normalised class features (B, C, e): every class prompt of every image in one batched text-tower call."""
        shifted = (ctx.unsqueeze(0) + tokens.unsqueeze(1)).to(self.text.prefix.dtype)  # (B, n, d)
        return F.normalize(self.text.encode_contexts(shifted), dim=-1)

    def class_features(self) -> torch.Tensor:
        """Class features of the context alone (no image token): for diagnostics, not used for scoring."""
        return F.normalize(self.text(self.context()), dim=-1)

    # -- scores ----------------------------------------------------------------------------------------------
    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        feats = image_features.float()
        ctx = self.context()
        tokens = self.image_tokens(feats)
        step = self.options.inference_images_per_call if not torch.is_grad_enabled() else self.options.images_per_call
        step = step if step > 0 else feats.shape[0]
        outs = []
        for start in range(0, feats.shape[0], step):
            text = self.conditional_class_features(ctx, tokens[start : start + step])
            outs.append(torch.einsum("be,bce->bc", feats[start : start + step], text))
        return self.backbone.logit_scale * torch.cat(outs, dim=0)

    def training_step(self, batch: Batch) -> StepOutput:
        """Cross-entropy over the per-image conditional class features (CoCoOp's logits)."""
        logits = self.logits(self.image_features_of(batch))
        return StepOutput(F.cross_entropy(logits.float(), batch.labels), logits)

    @torch.no_grad()
    def merge(self) -> "CoCoOp":
        """Fold the context's parameterisation into one tensor; class features stay per image (not cacheable)."""
        self.eval()
        self._merged_ctx = self.prompt.merged()
        return self

    def unmerge(self) -> None:
        self._merged_ctx = None

    def prompt_matrices(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {"ctx": (self.prompt.merged(), self.prompt.initial.detach().clone())}

    def parameter_formula(self) -> str:
        e, d, h = self.backbone.embed_dim, self.backbone.text.width, self.hidden
        ctx = prompt_term(self.prompt)
        symbols = {"n": self.n_ctx, "d": d, "e": e, "h": h, **self.prompt.formula_symbols()}
        return formula([ctx, ("e·h + h", e * h + h), ("h·d + d", h * d + d)], symbols)
