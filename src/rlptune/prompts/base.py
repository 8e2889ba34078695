"""The prompt-parameterisation seam: every parameterisation is a module returning the effective prompt."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import RlptuneError


class PromptModule(nn.Module):
    """Base class: ``forward()`` → effective prompt (…, n, d); ``merged()`` → the same as one plain tensor.

    ``initial`` is the prompt before training (for ΔP diagnostics); it is a non-persistent buffer, so it never
    reaches an adapter file.
    """

    initial: torch.Tensor

    def forward(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def merged(self) -> torch.Tensor:
        """The inference-time prompt as one plain tensor (dropout off): zero extra cost after training."""
        was_training = self.training
        self.eval()
        try:
            return self.forward().detach().clone()
        finally:
            self.train(was_training)

    @property
    def shape(self) -> torch.Size:
        return self.initial.shape

    def num_trainable(self) -> int:
        return count_trainable(self)


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def build_prompt(settings, init: torch.Tensor, from_text: bool) -> PromptModule:
    """A prompt module of ``init``'s shape from :class:`rlptune.config.PromptSettings`.

    ``init`` is the starting prompt (text embeddings when ``from_text``, else CoOp's random N(0, init_std²)).
    Low-rank: ``P_fr`` is the text embeddings, or zeros when there is no init text, as in RLP.
    """
    from .full_rank import FullRankPrompt
    from .low_rank import LowRankPrompt

    if settings.kind == "full":
        return FullRankPrompt(init)
    if settings.kind == "lowrank":
        frozen = init if from_text else torch.zeros_like(init)
        return LowRankPrompt(
            frozen,
            rank=settings.rank,
            dropout=settings.dropout,
            a_std=settings.a_std,
            b_std=settings.b_std,
            alpha=settings.alpha,
        )
    raise RlptuneError(f"prompt.kind {settings.kind!r} is not known: expected full or lowrank")
