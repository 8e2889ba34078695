"""Load a CLIP (open_clip or Hugging Face transformers, never patched) and expose its towers through one interface.

Loaders are registered by spec prefix or matcher (:func:`register_backbone_loader`); each model library implements
the tower interface of :mod:`.base` in its own module (:mod:`.openclip`, :mod:`.hf`).
"""

from .base import Backbone, BackboneFamily, BlockHook, TextTower, VisionTower, structural_copy, weights_hash
from .loader import (
    BackboneRequest,
    backbone_loaders,
    build_clip,
    finish_backbone,
    load_backbone,
    read_arch_json,
    read_state_dict,
    register_backbone_loader,
)
from .openclip import OPEN_CLIP, OpenClipTextTower, OpenClipVisionTower, SplitAttention
from .hf import HF, HFTextTower, HFTokenizer, HFVisionTower, export_hf_clip, write_clip_tokenizer_files
from .transforms import eval_transform, train_transform


def attention_block(name: str) -> tuple[str, int] | None:
    """(tower, block index) of an attention module named ``name`` by any library rlptune reads (see
    :meth:`BackboneFamily.attention_block`), else None."""
    for family in (OPEN_CLIP, HF):
        found = family.attention_block(name)
        if found is not None:
            return found
    return None


__all__ = [
    "write_clip_tokenizer_files",
    "Backbone",
    "BackboneFamily",
    "BackboneRequest",
    "BlockHook",
    "HF",
    "HFTextTower",
    "HFTokenizer",
    "HFVisionTower",
    "OPEN_CLIP",
    "OpenClipTextTower",
    "OpenClipVisionTower",
    "SplitAttention",
    "TextTower",
    "VisionTower",
    "attention_block",
    "backbone_loaders",
    "build_clip",
    "eval_transform",
    "export_hf_clip",
    "finish_backbone",
    "load_backbone",
    "read_arch_json",
    "read_state_dict",
    "register_backbone_loader",
    "structural_copy",
    "train_transform",
    "weights_hash",
]
