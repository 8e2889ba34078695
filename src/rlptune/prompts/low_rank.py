"""RLP: the re-parameterised low-rank prompt ``P = P_fr + Dropout(s · P_A @ P_B)``.

``P_fr`` (frozen, e.g. the word embeddings of "a photo of a") holds the prior; only ``P_A`` (n×r) and ``P_B``
(r×d) train: r·(n + d) numbers (516 for n=4, r=1, d=512). Dropout acts on the low-rank update during training
only; :meth:`merged` folds the branch into one plain prompt, so inference costs nothing extra.

Initialisation (measured, see docs/RLP.md): a product of two factors has gradients that scale with the *other*
factor (∂L/∂A = s·G·Bᵀ, ∂L/∂B = s·Aᵀ·G), so two tiny Gaussian factors barely move under SGD at CoOp's learning
rate. The default is the LoRA arrangement: ``P_A ~ N(0, a_std²)`` with a_std = 1 and ``P_B = 0`` (b_std = 0),
so training starts exactly at ``P_fr`` (the zero-shot prompt) while ∂L/∂B = s·Aᵀ·G is as large as a full-rank
gradient projected on A's direction. ``alpha`` gives the optional LoRA scale s = alpha / r.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..errors import RlptuneError
from ..options import MAX_TOKENS, option
from .base import PromptLayout, PromptModule, prompt_options, register_prompt_kind


@dataclass
class LowRankOptions:
    """The low-rank kind's own settings (``prompt.options.*``, also spelled ``prompt.rank`` … as until 0.3)."""

    rank: int = option(1, "rank r of the low-rank update P_A @ P_B", low=1, high=MAX_TOKENS)
    dropout: float = option(0.0, "dropout on the low-rank update during training")
    a_std: float = option(1.0, "std of P_A's Gaussian init", low=0)
    b_std: float = option(0.0, "std of P_B's Gaussian init (0 starts exactly at P_fr)", low=0)
    alpha: Optional[float] = option(None, "LoRA-style scale: the update is multiplied by alpha / rank (unset = 1)")

    def validate(self) -> None:
        if self.rank < 1:
            raise RlptuneError(f"prompt.rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise RlptuneError(f"prompt.dropout must be in [0, 1), got {self.dropout}")
        if self.a_std < 0 or self.b_std < 0:
            raise RlptuneError("prompt.a_std, prompt.b_std and prompt.init_std must be >= 0")
        if self.alpha is not None and self.alpha <= 0:
            raise RlptuneError(f"prompt.alpha must be > 0 (or unset), got {self.alpha}")


class LowRankPrompt(PromptModule):
    def __init__(
        self,
        frozen: torch.Tensor,
        rank: int = 1,
        dropout: float = 0.0,
        a_std: float = 1.0,
        b_std: float = 0.0,
        alpha: float | None = None,
    ) -> None:
        super().__init__()
        *lead, n, d = frozen.shape
        self.rank = int(rank)
        self.scale = float(alpha) / self.rank if alpha is not None else 1.0
        self.register_buffer("frozen", frozen.detach().clone().float(), persistent=False)
        self.register_buffer("initial", frozen.detach().clone().float(), persistent=False)
        self.A = nn.Parameter(torch.randn(*lead, n, self.rank) * a_std)
        self.B = nn.Parameter(torch.randn(*lead, self.rank, d) * b_std)
        self.dropout = nn.Dropout(dropout)
        with torch.no_grad():  # the true starting point (non-zero when both factors start random)
            self.initial.add_(self.scale * (self.A @ self.B))

    def update(self) -> torch.Tensor:
        """The low-rank update s · P_A @ P_B, before dropout."""
        return self.scale * (self.A @ self.B)

    def forward(self) -> torch.Tensor:
        return self.frozen + self.dropout(self.update())

    def count_term(self, n_sym: str = "n", d_sym: str = "d", copies_sym: str = "") -> tuple[str, int]:
        lead = f"{copies_sym}·" if copies_sym else ""
        return f"{lead}r·({n_sym}+{d_sym})", self.num_trainable()

    def formula_symbols(self) -> dict[str, int]:
        return {"r": self.rank}


def _build_low_rank(settings, init: torch.Tensor, from_text: bool) -> LowRankPrompt:
    """RLP: ``P_fr`` is the text embeddings, or zeros when there is no init text, as in the paper."""
    opts: LowRankOptions = prompt_options(settings)
    frozen = init if from_text else torch.zeros_like(init)
    n, d = init.shape[-2], init.shape[-1]
    if opts.rank > min(n, d):  # valid, but the extra rank buys parameters and no expressiveness
        logging.getLogger(__name__).warning(
            "prompt.rank %d > min(n_ctx %d, width %d): P_A @ P_B cannot have rank above %d, so the extra rank only "
            "adds parameters",
            opts.rank,
            n,
            d,
            min(n, d),
        )
    return LowRankPrompt(
        frozen, rank=opts.rank, dropout=opts.dropout, a_std=opts.a_std, b_std=opts.b_std, alpha=opts.alpha
    )


#: ``A`` (…, n, r) holds the tokens per prompt; ``A``'s last and ``B``'s first dimension (…, r, d) the rank.
LOW_RANK_LAYOUT = PromptLayout(
    searchable=("rank", "dropout"),
    spectrum_kind="full",
    tokens=(("A", -2),),
    sizes=lambda settings: (("settings.prompt.rank", int(prompt_options(settings).rank), (("A", -1), ("B", -2))),),
)

register_prompt_kind("lowrank", _build_low_rank, LOW_RANK_LAYOUT, options=LowRankOptions)
