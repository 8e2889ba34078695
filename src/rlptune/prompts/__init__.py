"""How a prompt matrix is parameterised. A method asks for "a prompt of shape (…, n, d)" and gets a module whose
``forward()`` returns the effective tensor; it never knows which parameterisation it got."""

from .base import (
    PromptLayout,
    PromptModule,
    build_prompt,
    count_trainable,
    prompt_layout,
    prompt_options,
    register_prompt_kind,
)
from .full_rank import FullRankPrompt
from .low_rank import LowRankOptions, LowRankPrompt

__all__ = [
    "FullRankPrompt",
    "LowRankOptions",
    "LowRankPrompt",
    "PromptLayout",
    "PromptModule",
    "build_prompt",
    "count_trainable",
    "prompt_layout",
    "prompt_options",
    "register_prompt_kind",
]
