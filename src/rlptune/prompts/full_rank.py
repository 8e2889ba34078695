"""Full-rank prompt (CoOp): the context vectors themselves are the trainable parameters."""

from __future__ import annotations

import torch
from torch import nn

from .base import PromptLayout, PromptModule, register_prompt_kind


class FullRankPrompt(PromptModule):
    """P is an (…, n, d) parameter: n·d trainable numbers per prompt (8,192 for n=16, d=512)."""

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.ctx = nn.Parameter(init.detach().clone().float())
        self.register_buffer("initial", init.detach().clone().float(), persistent=False)

    def forward(self) -> torch.Tensor:
        return self.ctx

    def count_term(self, n_sym: str = "n", d_sym: str = "d", copies_sym: str = "") -> tuple[str, int]:
        lead = f"{copies_sym}·" if copies_sym else ""
        return f"{lead}{n_sym}·{d_sym}", self.num_trainable()


#: ``ctx`` (…, n, d) holds the tokens per prompt.
register_prompt_kind(
    "full", lambda settings, init, from_text: FullRankPrompt(init), PromptLayout(tokens=(("ctx", -2),))
)
