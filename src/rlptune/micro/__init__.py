"""The embedded micro world: a procedural image-caption world, a micro CLIP pretrained on it, and the micro suite.

Submodules: :mod:`.world` (scenes, rendering, captions), :mod:`.suite` (the micro benchmark datasets),
:mod:`.pretrain` (contrastive pretraining of the micro CLIP). The shipped weights live in ``weights/`` and the
architecture in ``micro_clip.json`` (open_clip model-config format).
"""

from pathlib import Path

MICRO_CONFIG_PATH = Path(__file__).with_name("micro_clip.json")
MICRO_WEIGHTS_PATH = Path(__file__).parent / "weights" / "micro_clip.safetensors"

__all__ = ["MICRO_CONFIG_PATH", "MICRO_WEIGHTS_PATH"]
