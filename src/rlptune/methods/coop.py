"""CoOp: a learned context in front of every class name, cross-entropy on the class logits.

The context's parameterisation is a setting (``prompt.kind``): full-rank is CoOp as published; ``lowrank`` is RLP
on CoOp's placement. ``rlp`` is registered as its own name with RLP's defaults (configs/rlp.yaml); it is the same
module, not a copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import RlptuneError
from ..options import (
    checkpoint_text_option,
    class_specific_option,
    class_token_position_option,
    parse_options,
    shared_prefix_option,
    text_chunk_option,
)
from ..prompts import build_prompt
from ..text import PromptedClassText, context_from_init
from .base import DeclaredSize, Method, register_method
from .shared import formula, prompt_copies_size, prompt_kind_sizes, prompt_token_size


def initial_context(settings, backbone, shape_lead: tuple[int, ...] = ()) -> tuple[torch.Tensor, bool]:
    """The starting context (…, n, d): the first n = ``prompt.n_ctx`` token embeddings of ``prompt.ctx_init`` (its
    remaining tokens stay fixed words, see :class:`PromptedClassText`), or CoOp's N(0, init_std²). ``settings``: a
    method's :class:`~rlptune.methods.base.DeclaredSettings` (it declares ``prompt``)."""
    settings = settings.prompt
    width = backbone.text.width
    if settings.ctx_init:
        init = context_from_init(backbone, settings.ctx_init, settings.n_ctx)
        init = init.expand(*shape_lead, *init.shape).clone() if shape_lead else init
        return init, True
    return torch.randn(*shape_lead, settings.n_ctx, width) * settings.init_std, False


@dataclass
class CoOpOptions:
    """CoOp's own settings: where the class name goes, one context per class or one shared, and how the class
    prompts go through the text tower."""

    class_specific: bool = class_specific_option()
    class_token_position: str = class_token_position_option()
    text_chunk: int = text_chunk_option()
    checkpoint_text: bool = checkpoint_text_option()
    shared_prefix: bool = shared_prefix_option()


@register_method("coop", options=CoOpOptions)
class CoOp(Method):
    learns_prompt = True
    reads = ("prompt",)

    def __init__(self, settings, backbone, classnames: list[str], dataset_template: str | None = None) -> None:
        super().__init__(settings, backbone, classnames, dataset_template)
        lead = (len(classnames),) if self.options.class_specific else ()
        init, from_text = initial_context(self.settings, backbone, lead)
        self.n_ctx = int(init.shape[-2])
        self.prompt = build_prompt(self.settings.prompt, init, from_text).to(backbone.device)
        self.text = self._make_text(classnames)

    def _make_text(self, classnames: Sequence[str]) -> PromptedClassText:
        o = self.options
        return PromptedClassText(
            self.backbone,
            classnames,
            self.n_ctx,
            o.class_token_position,
            o.text_chunk,
            o.checkpoint_text,
            shared_prefix=o.shared_prefix,
            context_text=self.settings.prompt.ctx_init,
        ).to(self.backbone.device)

    @classmethod
    def declared_sizes(cls, settings, classnames: Sequence[str]) -> list[DeclaredSize]:
        """n_ctx (without an init text: with one, its token count bounds n), the prompt kind's own sizes, and with a class-specific
        context one prompt per class."""
        options = settings.method.options
        settings = settings.prompt
        sizes = (
            []
            if settings.ctx_init
            else prompt_token_size(settings, ["prompt"], "settings.prompt.n_ctx", settings.n_ctx)
        )
        sizes += prompt_kind_sizes(settings, ["prompt"])
        if parse_options(cls.options_class, options, cls.registered_name).class_specific:
            sizes += prompt_copies_size(
                settings, "prompt", "the number of classnames (class-specific context)", len(classnames)
            )
        return sizes

    def set_classnames(self, classnames: Sequence[str]) -> None:
        if self.options.class_specific and len(classnames) != self.prompt.shape[0]:
            raise RlptuneError(
                "a class-specific context (method.options.class_specific) cannot be applied to other classes"
            )
        super().set_classnames(classnames)
        self.text = self._make_text(classnames)

    def class_features(self) -> torch.Tensor:
        return F.normalize(self.text(self.prompt()), dim=-1)

    def prompt_matrices(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {"ctx": (self.prompt.merged(), self.prompt.initial.detach().clone())}

    def parameter_formula(self) -> str:
        d = self.backbone.text.width
        symbols = {"n": self.n_ctx, "d": d, **self.prompt.formula_symbols()}
        if self.options.class_specific:
            symbols["C"] = len(self.classnames)
            return formula([self.prompt.count_term("n", "d", copies_sym="C")], symbols)
        return formula([self.prompt.count_term("n", "d")], symbols)


@register_method("rlp")
class RLP(CoOp):
    """RLP on CoOp's placement: the same module, defined by the low-rank prompt (its preset sets the rest)."""

    requires_prompt_kind = "lowrank"
