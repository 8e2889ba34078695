"""The prompt-parameterisation seam: every parameterisation is a module returning the effective prompt, and owns
its parameter count and the formula that documents it (nothing outside ``prompts/`` asks "is it low-rank?")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .. import registry
from ..options import parse_kind_options


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

#: (parameter name inside a prompt module, dimension): where a stored tensor carries a size.
Dims = tuple[tuple[str, int], ...]


def _no_sizes(settings: Any) -> tuple[tuple[str, int, Dims], ...]:
    return ()


@dataclass(frozen=True)
class PromptLayout:
    """What a kind's stored tensors carry, known before anything is built: an adapter's sizes are checked against
    its settings first (an edited ``rank: 1000000000000`` is one line, not a terabyte allocation).

    ``tokens``: where n (tokens per prompt) is stored; ``sizes(settings)``: the kind's own sizes as
    ``(settings field, value, dims)`` read from the kind's options (low rank: ``prompt.rank`` in P_A's last and P_B's
    first dimension). A kind
    registered without a layout has no sizes checked before it is built (its tensors' shapes still are, on load)."""

    tokens: Dims = ()
    sizes: Callable[[Any], tuple[tuple[str, int, Dims], ...]] = _no_sizes
    #: the kind's options (``prompt.options.*``) a search over candidates (``--auto``) may vary (low rank: rank and
    #: dropout), and the kind whose trained update's spectrum picks the rank (low rank: ``full``); empty / None: none
    searchable: tuple[str, ...] = ()
    spectrum_kind: str | None = None


_LAYOUTS: dict[str, PromptLayout] = {}


def register_prompt_kind(
    name: str, builder: PromptBuilder, layout: PromptLayout | None = None, options: type | None = None
) -> None:
    """Make ``prompt.kind = name`` build ``builder(settings, init, from_text)`` (a new parameterisation, from anywhere);
    ``layout`` says where its tensors carry their sizes (see :class:`PromptLayout`); ``options`` is the dataclass of
    the kind's own settings (fields made with :func:`rlptune.option`, optional ``validate()``), set as
    ``prompt.options.<name>`` and read by the builder with :func:`prompt_options`."""
    registry.register_prompt_kind(name, builder, options)
    _LAYOUTS[name] = layout or PromptLayout()


def prompt_options(settings) -> Any:
    """The typed options of ``settings.kind`` filled from ``settings.options`` (what a builder and a layout read:
    low rank's ``prompt_options(settings).rank``); checked as settings resolution checks them."""
    return parse_kind_options(registry.prompt_options_class(settings.kind), settings.options, settings.kind)


def prompt_layout(kind: str) -> PromptLayout:
    """The registered layout of ``kind`` (empty for a kind registered without one)."""
    return _LAYOUTS.get(kind, PromptLayout())


def build_prompt(settings, init: torch.Tensor, from_text: bool) -> PromptModule:
    """A prompt module of ``init``'s shape for :class:`rlptune.config.PromptSettings` (``settings.kind`` picks it).

    ``init`` is the starting prompt (text embeddings when ``from_text``, else CoOp's random N(0, init_std²)).
    """
    return registry.prompt_builder(settings.kind)(settings, init, from_text)
