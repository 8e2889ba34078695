"""Read the micro CLIP that ships inside the package (architecture JSON + fp16 safetensors): world v1's files."""

from __future__ import annotations

from typing import Any

import torch

from . import MICRO_CONFIG_PATH as CONFIG_PATH
from . import MICRO_WEIGHTS_PATH as WEIGHTS_PATH
from . import WORLDS
from ..backbones.loader import MICRO_NAME

__all__ = ["CONFIG_PATH", "WEIGHTS_PATH", "micro_config", "micro_state_dict"]


def micro_config() -> dict[str, Any]:
    return WORLDS[MICRO_NAME].config()


def micro_state_dict() -> dict[str, torch.Tensor]:
    return WORLDS[MICRO_NAME].state_dict()
