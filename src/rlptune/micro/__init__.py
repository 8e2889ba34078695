"""The embedded micro worlds: procedural image-caption worlds, a micro CLIP pretrained on each, and their suites.

Two versions ship, described as data in :data:`WORLDS` (one :class:`MicroWorld` each): ``micro`` (world v1: a
ModifiedResNet micro CLIP, the ``micro-*`` datasets; the tests' fast backbone) and ``micro-v2`` (world v2: a ViT micro
CLIP in OpenAI's layout, the ``micro2-*`` datasets; the default of ``train``, ``demo`` and ``reproduce``). One loader
builds either backbone from its open_clip model config and fp16 safetensors (keys as in
``open_clip.model.CLIP(**config).state_dict()``), and one :class:`~rlptune.micro.suite.MicroSuite` class draws, renders
and caches either suite. Images are 64x64 RGB with open_clip's default (OpenAI) mean/std normalisation.

Submodules: :mod:`.world` / :mod:`.v2.world` (scenes, rendering, captions), :mod:`.suite` / :mod:`.v2.suite` (the
datasets), :mod:`.pretrain` / :mod:`.v2.pretrain` (each version's pretraining recipe, ``rlptune pretrain-micro``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MICRO_CONFIG_PATH = Path(__file__).with_name("micro_clip.json")
MICRO_WEIGHTS_PATH = Path(__file__).parent / "weights" / "micro_clip.safetensors"

import torch  # noqa: E402

from ..backbones.loader import (  # noqa: E402
    MICRO_NAME,
    OPENAI_MEAN,
    OPENAI_STD,
    BackboneRequest,
    build_clip,
    finish_backbone,
    load_state_into,
    model_cfg_image_size,
    register_backbone_loader,
    tokenizer_for_cfg,
)
from ..data import register_dataset  # noqa: E402
from . import v2  # noqa: E402
from .files import read_config, read_state_dict  # noqa: E402
from .suite import MICRO_DATASETS, MICRO_SHIFTS, MicroSuite, load_micro_dataset  # noqa: E402
from .suite import SUITE as SUITE_V1  # noqa: E402


@dataclass(frozen=True)
class MicroWorld:
    """One shipped micro world: the backbone spec that names it, its micro CLIP's files, and its dataset suite."""

    backbone: str
    description: str
    config_path: Path
    weights_path: Path
    suite: MicroSuite
    pretrain_command: str
    hflip_variant: tuple[str, ...] = ()  # datasets whose labels a horizontal flip changes ("on the left")

    def config(self) -> dict[str, Any]:
        """The open_clip model config of this world's micro CLIP."""
        return read_config(self.config_path, self.backbone)

    def state_dict(self, path: str | Path | None = None) -> dict[str, torch.Tensor]:
        """The shipped weights (or ``path``), floating tensors in fp32."""
        return read_state_dict(
            Path(path) if path is not None else self.weights_path, self.backbone, self.pretrain_command
        )

    def load_backbone(self, request: BackboneRequest):
        cfg = self.config()
        model = build_clip(cfg)
        load_state_into(model, self.state_dict(), self.backbone)
        return finish_backbone(
            model,
            tokenizer_for_cfg(cfg),
            self.backbone,
            self.backbone,
            model_cfg_image_size(cfg),
            OPENAI_MEAN,
            OPENAI_STD,
            request,
        )

    def load_dataset(self, name: str, root=None):
        """A dataset of this world (generated once, cached under $RLPTUNE_CACHE); ``root`` is an optional cache folder."""
        splits = self.suite.load(name, cache_dir=root)
        if name.startswith(self.hflip_variant):
            splits.hflip_invariant = False
        return splits


WORLDS: dict[str, MicroWorld] = {
    world.backbone: world
    for world in (
        MicroWorld(
            MICRO_NAME,
            "micro (shipped micro CLIP, world v1)",
            MICRO_CONFIG_PATH,
            MICRO_WEIGHTS_PATH,
            SUITE_V1,
            "rlptune pretrain-micro",
            hflip_variant=("micro-positions",),
        ),
        MicroWorld(
            v2.MICRO2_NAME,
            "micro-v2 (shipped ViT micro CLIP, world v2)",
            v2.MICRO2_CONFIG_PATH,
            v2.MICRO2_WEIGHTS_PATH,
            v2.SUITE,
            v2.PRETRAIN_COMMAND,
        ),
    )
}


def world_of(backbone: str) -> MicroWorld | None:
    """The micro world a backbone spec names (``micro``, ``micro-v2``), or None for any other backbone."""
    return WORLDS.get(backbone)


for _world in WORLDS.values():
    register_backbone_loader(_world.backbone, _world.load_backbone, _world.description)
    for _name in _world.suite.all_names():
        register_dataset(_name, functools.partial(_world.load_dataset, _name), needs_root=False)

__all__ = [
    "MICRO_CONFIG_PATH",
    "MICRO_WEIGHTS_PATH",
    "MICRO_DATASETS",
    "MICRO_SHIFTS",
    "WORLDS",
    "MicroWorld",
    "load_micro_dataset",
    "world_of",
]
