"""Micro world v2: a ViT micro CLIP in OpenAI's layout (12 + 12 blocks) and the ``micro2-*`` datasets.

Importing this package (which :mod:`rlptune.micro` does, so that :func:`rlptune.registry.load_builtin_plugins`
reaches it) registers the ``micro2-*`` datasets and the backbone spec ``micro-v2``. Submodules: :mod:`.world`
(scenes that survive random resized crops), :mod:`.suite` (the datasets), :mod:`.pretrain` (the two-phase CPU
recipe: supervised image tower, then locked-image text alignment). The architecture is ``micro_clip_v2.json``
(open_clip model config, QuickGELU, heads of width 64) and the weights ``../weights/micro_clip_v2.safetensors``
(fp16, keys as in ``open_clip.model.CLIP(**config).state_dict()``, which is also OpenAI's layout:
:func:`export_openai` writes the ``.pt`` that OpenAI's ``build_model(state_dict)`` rebuilds).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch

from ...backbones.base import Backbone
from ...backbones.loader import (
    OPENAI_MEAN, OPENAI_STD, BackboneRequest, load_state_into, tokenizer_for_cfg, build_clip, finish_backbone,
    register_backbone_loader,
)
from ...data import register_dataset
from ...errors import RlptuneError
from ...io import atomic_write
from .suite import MICRO2_DATASETS, MICRO2_SHIFTS, all_names, load_micro2_dataset

MICRO2_NAME = "micro-v2"
MICRO2_CONFIG_PATH = Path(__file__).with_name("micro_clip_v2.json")
MICRO2_WEIGHTS_PATH = Path(__file__).resolve().parent.parent / "weights" / "micro_clip_v2.safetensors"


def micro2_config() -> dict[str, Any]:
    """The open_clip model config of the v2 micro CLIP."""
    if not MICRO2_CONFIG_PATH.is_file():
        raise RlptuneError(f"{MICRO2_CONFIG_PATH}: the micro v2 CLIP architecture is missing from this installation")
    return json.loads(MICRO2_CONFIG_PATH.read_text(encoding="utf-8"))


def micro2_state_dict(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The shipped weights (or ``path``), floating tensors in fp32."""
    path = Path(path) if path is not None else MICRO2_WEIGHTS_PATH
    if not path.is_file():
        raise RlptuneError(f"{path}: the micro v2 CLIP weights are missing; run `python -m rlptune.micro.v2.pretrain`")
    from safetensors.torch import load_file

    return {k: v.float() if torch.is_floating_point(v) else v for k, v in load_file(str(path)).items()}


def _load_micro_v2(request: BackboneRequest) -> Backbone:
    cfg = micro2_config()
    model = build_clip(cfg)
    load_state_into(model, micro2_state_dict(), MICRO2_NAME)
    size = int(cfg["vision_cfg"]["image_size"])
    return finish_backbone(model, tokenizer_for_cfg(cfg), MICRO2_NAME, MICRO2_NAME, size, OPENAI_MEAN, OPENAI_STD,
                           request)


def export_openai(path: str | Path, weights: str | Path | None = None) -> Path:
    """Write the v2 micro CLIP as an OpenAI CLIP state dict (``torch.save``; fp16 like OpenAI's files).

    open_clip's ``CLIP`` with QuickGELU and heads of width 64 has OpenAI's parameter names and shapes, so the file
    loads with ``open_clip.model.build_model_from_openai_state_dict`` (OpenAI's ``build_model``) and with
    ``rlptune`` as ``--backbone /path/to/file.pt``.
    """
    state = micro2_state_dict(weights)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def _micro2_loader(name: str, root=None):
    """A micro v2 dataset (generated once, cached under $RLPTUNE_CACHE); ``root`` is an optional cache folder."""
    return load_micro2_dataset(name, cache_dir=root)


for _name in all_names():
    register_dataset(_name, functools.partial(_micro2_loader, _name), needs_root=False)
register_backbone_loader(MICRO2_NAME, _load_micro_v2, "micro-v2 (shipped ViT micro CLIP, world v2)")

__all__ = ["MICRO2_CONFIG_PATH", "MICRO2_DATASETS", "MICRO2_NAME", "MICRO2_SHIFTS", "MICRO2_WEIGHTS_PATH",
           "export_openai", "load_micro2_dataset", "micro2_config", "micro2_state_dict"]
