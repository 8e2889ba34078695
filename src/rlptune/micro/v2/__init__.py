"""Micro world v2: a ViT micro CLIP in OpenAI's layout (12 + 12 blocks) and the ``micro2-*`` datasets.

:mod:`rlptune.micro` registers the ``micro2-*`` datasets and the backbone spec ``micro-v2`` from its table of
worlds (:data:`rlptune.micro.WORLDS`); this package keeps world v2's own parts. Submodules: :mod:`.world`
(scenes that survive random resized crops), :mod:`.suite` (the datasets), :mod:`.pretrain` (the two-phase CPU
recipe: supervised image tower, then locked-image text alignment). The architecture is ``micro_clip_v2.json``
(open_clip model config, QuickGELU, heads of width 64) and the weights ``../weights/micro_clip_v2.safetensors``
(fp16, keys as in ``open_clip.model.CLIP(**config).state_dict()``, which is also OpenAI's layout:
:func:`export_openai` writes the ``.pt`` that OpenAI's ``build_model(state_dict)`` rebuilds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...io import atomic_write
from ..files import read_config, read_state_dict
from .suite import MICRO2_DATASETS, MICRO2_SHIFTS, SUITE, load_micro2_dataset

MICRO2_NAME = "micro-v2"
MICRO2_CONFIG_PATH = Path(__file__).with_name("micro_clip_v2.json")
MICRO2_WEIGHTS_PATH = Path(__file__).resolve().parent.parent / "weights" / "micro_clip_v2.safetensors"
PRETRAIN_COMMAND = "rlptune pretrain-micro --version 2"


def micro2_config() -> dict[str, Any]:
    """The open_clip model config of the v2 micro CLIP."""
    return read_config(MICRO2_CONFIG_PATH, MICRO2_NAME)


def micro2_state_dict(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The shipped weights (or ``path``), floating tensors in fp32."""
    return read_state_dict(Path(path) if path is not None else MICRO2_WEIGHTS_PATH, MICRO2_NAME, PRETRAIN_COMMAND)


def export_openai(path: str | Path, weights: str | Path | None = None) -> Path:
    """Write the v2 micro CLIP as an OpenAI CLIP state dict (``torch.save``; fp16 like OpenAI's files).

    open_clip's ``CLIP`` with QuickGELU and heads of width 64 has OpenAI's parameter names and shapes, so the file
    loads with ``open_clip.model.build_model_from_openai_state_dict`` (OpenAI's ``build_model``) and with
    ``rlptune`` as ``--backbone /path/to/file.pt``.
    """
    state = micro2_state_dict(weights)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


__all__ = [
    "MICRO2_CONFIG_PATH",
    "MICRO2_DATASETS",
    "MICRO2_NAME",
    "MICRO2_SHIFTS",
    "MICRO2_WEIGHTS_PATH",
    "PRETRAIN_COMMAND",
    "SUITE",
    "export_openai",
    "load_micro2_dataset",
    "micro2_config",
    "micro2_state_dict",
]
