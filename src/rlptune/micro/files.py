"""Read a shipped micro CLIP's files (open_clip model-config JSON + fp16 safetensors); imports nothing of the worlds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..errors import RlptuneError


def read_config(path: Path, backbone: str) -> dict[str, Any]:
    """The open_clip model config at ``path`` (a file that wraps it under ``model_cfg`` is unwrapped)."""
    if not path.is_file():
        raise RlptuneError(f"{path}: the {backbone} CLIP architecture is missing from this installation")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    return cfg.get("model_cfg", cfg)


def read_state_dict(path: Path, backbone: str, pretrain_command: str) -> dict[str, torch.Tensor]:
    """The weights at ``path`` with floating tensors in fp32 (they ship in fp16)."""
    if not path.is_file():
        raise RlptuneError(f"{path}: the {backbone} CLIP weights are missing; run `{pretrain_command}` to create them")
    return {k: v.float() if torch.is_floating_point(v) else v for k, v in load_file(str(path)).items()}
