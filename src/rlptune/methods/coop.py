"""CoOp: a learned context in front of every class name, cross-entropy on the class logits.

The context's parameterisation is a setting (``prompt.kind``): full-rank is CoOp as published; ``lowrank`` is RLP
on CoOp's placement. ``rlp`` is registered as its own name with RLP's defaults (configs/rlp.yaml); it is the same
module, not a copy.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import RlptuneError
from ..prompts import build_prompt
from ..text import PromptedClassText, context_from_init
from .base import DeclaredSize, Method, register_method
from .shared import formula, prompt_copies_size, prompt_kind_sizes, prompt_token_size


def initial_context(config, backbone, shape_lead: tuple[int, ...] = ()) -> tuple[torch.Tensor, bool]:
    """The starting context (…, n, d): the first n = ``prompt.n_ctx`` token embeddings of ``prompt.ctx_init`` (its
    remaining tokens stay fixed words, see :class:`PromptedClassText`), or CoOp's N(0, init_std²)."""
    settings = config.prompt
    width = backbone.text.width
    if settings.ctx_init:
        init = context_from_init(backbone, settings.ctx_init, settings.n_ctx)
        init = init.expand(*shape_lead, *init.shape).clone() if shape_lead else init
        return init, True
    return torch.randn(*shape_lead, settings.n_ctx, width) * settings.init_std, False


@register_method("coop")
class CoOp(Method):
    honours = frozenset({"class_specific", "class_token_position", "text_chunk", "checkpoint_text"})

    def __init__(self, config, backbone, classnames: list[str], dataset_template: str | None = None) -> None:
        super().__init__(config, backbone, classnames, dataset_template)
        lead = (len(classnames),) if config.method.class_specific else ()
        init, from_text = initial_context(config, backbone, lead)
        self.n_ctx = int(init.shape[-2])
        self.prompt = build_prompt(config.prompt, init, from_text).to(backbone.device)
        self.text = self._make_text(classnames)

    def _make_text(self, classnames: Sequence[str]) -> PromptedClassText:
        m = self.config.method
        return PromptedClassText(
            self.backbone, classnames, self.n_ctx, m.class_token_position, m.text_chunk, m.checkpoint_text,
            shared_prefix=m.shared_prefix, context_text=self.config.prompt.ctx_init,
        ).to(self.backbone.device)

    @classmethod
    def declared_sizes(cls, config, classnames: Sequence[str]) -> list[DeclaredSize]:
        """n_ctx (without an init text: with one, its token count bounds n), the prompt kind's own sizes, and with a class-specific
        context one prompt per class."""
        settings = config.prompt
        sizes = [] if settings.ctx_init else prompt_token_size(settings, ["prompt"], "settings.prompt.n_ctx", settings.n_ctx)
        sizes += prompt_kind_sizes(settings, ["prompt"])
        if config.method.class_specific:
            sizes += prompt_copies_size(settings, "prompt", "the number of classnames (class-specific context)", len(classnames))
        return sizes

    def set_classnames(self, classnames: Sequence[str]) -> None:
        if self.config.method.class_specific and len(classnames) != self.prompt.shape[0]:
            raise RlptuneError("a class-specific context (method.class_specific) cannot be applied to other classes")
        super().set_classnames(classnames)
        self.text = self._make_text(classnames)

    def class_features(self) -> torch.Tensor:
        return F.normalize(self.text(self.prompt()), dim=-1)

    def prompt_matrices(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {"ctx": (self.prompt.merged(), self.prompt.initial.detach().clone())}

    def parameter_formula(self) -> str:
        d = self.backbone.text.width
        symbols = {"n": self.n_ctx, "d": d, **self.prompt.formula_symbols()}
        if self.config.method.class_specific:
            symbols["C"] = len(self.classnames)
            return formula([self.prompt.count_term("n", "d", copies_sym="C")], symbols)
        return formula([self.prompt.count_term("n", "d")], symbols)


@register_method("rlp")
class RLP(CoOp):
    """RLP on CoOp's placement: the same module, defined by the low-rank prompt (its preset sets the rest)."""

    requires_prompt_kind = "lowrank"
