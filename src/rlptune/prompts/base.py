"""The prompt-parameterisation seam: every parameterisation is a module returning the effective prompt, and owns
its parameter count and the formula that documents it (nothing outside ``prompts/`` asks "is it low-rank?")."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .. import registry


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

    @property
    def copies(self) -> int:
        """How many (n, d) prompts this module holds (the product of the leading dimensions: layers, classes)."""
        return int(torch.Size(self.initial.shape[:-2]).numel())

    def num_trainable(self) -> int:
        return count_trainable(self)

    def count_term(self, n_sym: str = "n", d_sym: str = "d", copies_sym: str = "") -> tuple[str, int]:
        """(symbolic formula, value) of the trainable count, e.g. ``("r·(n+d)", 516)``."""
        raise NotImplementedError

    def formula_symbols(self) -> dict[str, int]:
        """Symbols of :meth:`count_term` beyond n and d (e.g. ``{"r": 1}``)."""
        return {}


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


PromptBuilder = Callable[[object, torch.Tensor, bool], PromptModule]


def register_prompt_kind(name: str, builder: PromptBuilder) -> None:
    """Make ``prompt.kind = name`` build ``builder(settings, init, from_text)`` (a new parameterisation, from anywhere)."""
    registry.register_prompt_kind(name, builder)


def build_prompt(settings, init: torch.Tensor, from_text: bool) -> PromptModule:
    """A prompt module of ``init``'s shape for :class:`rlptune.config.PromptSettings` (``settings.kind`` picks it).

    ``init`` is the starting prompt (text embeddings when ``from_text``, else CoOp's random N(0, init_std²)).
    """
    return registry.prompt_builder(settings.kind)(settings, init, from_text)
