"""Load a CLIP (open_clip, never patched) and expose its towers through one small interface."""

from .base import Backbone, TextTower, weights_hash
from .loader import build_clip, load_backbone, read_arch_json, read_state_dict
from .transforms import eval_transform, train_transform

__all__ = [
    "Backbone",
    "TextTower",
    "build_clip",
    "eval_transform",
    "load_backbone",
    "read_arch_json",
    "read_state_dict",
    "train_transform",
    "weights_hash",
]
