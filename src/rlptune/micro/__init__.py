"""The embedded micro world: a procedural image-caption world, a micro CLIP pretrained on it, and the micro suite.

Submodules: :mod:`.world` (scenes, rendering, captions), :mod:`.suite` (the micro benchmark datasets),
:mod:`.pretrain` (contrastive pretraining of the micro CLIP, ``rlptune pretrain-micro``). The architecture ships as
``micro_clip.json`` (open_clip model-config format) and the trained weights as ``weights/micro_clip.safetensors``
(fp16 floating tensors, keys as in ``open_clip.model.CLIP(**config).state_dict()``; integer BatchNorm counters stay
int64). Images are 64x64 RGB with open_clip's default (OpenAI) mean/std normalisation.
"""

from pathlib import Path

MICRO_CONFIG_PATH = Path(__file__).with_name("micro_clip.json")
MICRO_WEIGHTS_PATH = Path(__file__).parent / "weights" / "micro_clip.safetensors"

import functools  # noqa: E402

from ..data import register_dataset  # noqa: E402
from .suite import MICRO_DATASETS, MICRO_SHIFTS, load_micro_dataset  # noqa: E402  (after the paths submodules use)


def _micro_loader(micro_name: str, root=None):
    """A micro dataset (generated, cached under $RLPTUNE_CACHE); ``root`` is an optional cache folder."""
    splits = load_micro_dataset(micro_name, cache_dir=root)
    if micro_name.startswith("micro-positions"):
        splits.hflip_invariant = False  # "on the left" mirrors to "on the right"
    return splits


for _name in list(MICRO_DATASETS) + [s for shifts in MICRO_SHIFTS.values() for s in shifts]:
    register_dataset(_name, functools.partial(_micro_loader, _name), needs_root=False)

from ..backbones.loader import (  # noqa: E402
    MICRO_NAME, OPENAI_MEAN, OPENAI_STD, BackboneRequest, load_state_into, model_cfg_image_size, tokenizer_for_cfg,
    build_clip, finish_backbone, register_backbone_loader,
)
from . import shipped  # noqa: E402


def _load_micro(request: BackboneRequest):
    """``micro``: the micro CLIP shipped inside the package (no network, no files)."""
    cfg, state = shipped.micro_config(), shipped.micro_state_dict()
    model = build_clip(cfg)
    load_state_into(model, state, "micro")
    return finish_backbone(model, tokenizer_for_cfg(cfg), "micro", MICRO_NAME, model_cfg_image_size(cfg), OPENAI_MEAN, OPENAI_STD, request)


register_backbone_loader(MICRO_NAME, _load_micro, "micro (shipped micro CLIP)")

from . import v2  # noqa: E402,F401  (registers the micro2-* datasets and the micro-v2 backbone)

__all__ = ["MICRO_CONFIG_PATH", "MICRO_WEIGHTS_PATH", "MICRO_DATASETS", "MICRO_SHIFTS", "load_micro_dataset"]
