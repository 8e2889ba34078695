"""Locate and read the micro CLIP that ships inside the package (architecture JSON + fp16 safetensors)."""

from __future__ import annotations

import json
from typing import Any

import torch

from ..errors import RlptuneError

from . import MICRO_CONFIG_PATH as CONFIG_PATH
from . import MICRO_WEIGHTS_PATH as WEIGHTS_PATH


def micro_config() -> dict[str, Any]:
    if not CONFIG_PATH.is_file():
        raise RlptuneError(f"{CONFIG_PATH}: the micro CLIP architecture is missing from this installation")
    cfg = json.loads(CONFIG_PATH.read_text(encoding="utf-8"))
    return cfg.get("model_cfg", cfg)


def micro_state_dict() -> dict[str, torch.Tensor]:
    if not WEIGHTS_PATH.is_file():
        raise RlptuneError(
            f"{WEIGHTS_PATH}: the micro CLIP weights are missing; run `rlptune pretrain-micro` to create them"
        )
    from safetensors.torch import load_file

    return {k: v.float() if torch.is_floating_point(v) else v for k, v in load_file(str(WEIGHTS_PATH)).items()}
