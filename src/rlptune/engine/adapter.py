"""Adapters (what a user ships) and training checkpoints (what a killed run resumes from).

Adapter folder = ``adapter_config.json`` (method, prompt settings, class names, templates, backbone identity,
library version) + ``adapter_model.safetensors`` (the trained tensors only: 516 numbers for RLP n=4 r=1 on a
512-wide text tower). Frozen parts (``P_fr``, class-token embeddings) are rebuilt from the backbone, whose
identity is checked on load.

Checkpoint = one safetensors file holding the trainable tensors and the optimizer's tensors, with everything else
(epoch, optimizer scalars, config digest) as JSON in its metadata: one file, written atomically, so it is always
either the previous or the new checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from .. import __version__, io
from ..backbones import Backbone, load_backbone
from ..config import config_from_dict
from ..errors import RlptuneError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_MODEL = "adapter_model.safetensors"
ADAPTER_FORMAT = 1


def save_adapter(directory: str | Path, method, config, extra: dict[str, Any] | None = None) -> Path:
    directory = Path(directory)
    cfg = config.to_dict()
    payload = {
        "format": ADAPTER_FORMAT,
        "library": {"name": "rlptune", "version": __version__},
        "method": method.registered_name,
        "backbone": {"identity": method.backbone.identity, "spec": method.backbone.spec, "arch": method.backbone.arch},
        "classnames": list(method.classnames),
        "dataset_template": method.dataset_template,
        "settings": {"method": cfg["method"], "prompt": cfg["prompt"]},
        "trainable_params": method.num_trainable(),
        **(extra or {}),
    }
    io.write_safetensors(directory / ADAPTER_MODEL, method.trainable_state(), {"format": str(ADAPTER_FORMAT)})
    io.write_json(directory / ADAPTER_CONFIG, payload)
    return directory


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / ADAPTER_CONFIG
    if not path.is_file():
        raise RlptuneError(f"{directory}: not an adapter folder (no {ADAPTER_CONFIG})")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RlptuneError(f"{path}: not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(payload, dict):
        raise RlptuneError(f"{path}: expected a JSON object")
    for key in ("format", "library", "method", "backbone", "classnames", "settings"):
        if key not in payload:
            raise RlptuneError(f"{path}: missing field {key!r}")
    if payload["format"] != ADAPTER_FORMAT:
        raise RlptuneError(f"{path}: adapter format {payload['format']!r}, this rlptune reads format {ADAPTER_FORMAT}")
    lib = payload.get("library") or {}
    if lib.get("name") != "rlptune":
        raise RlptuneError(f"{path}: written by {lib.get('name')!r}, not rlptune")
    theirs = str(lib.get("version", "0")).split(".")[0]
    if theirs != __version__.split(".")[0]:
        raise RlptuneError(f"{path}: written by rlptune {lib.get('version')}, incompatible with rlptune {__version__}")
    return payload


def load_adapter(directory: str | Path, backbone: Backbone | None = None, device: str = "auto"):
    """Rebuild the method of an adapter folder on its backbone (loaded from the recorded spec if not given)."""
    from ..methods import build_method

    directory = Path(directory)
    payload = read_adapter_config(directory)
    recorded = payload["backbone"].get("identity")
    if backbone is None:
        backbone = load_backbone(payload["backbone"].get("spec") or "micro", device=device)
    if backbone.identity != recorded:
        raise RlptuneError(
            f"{directory}: adapter was trained on backbone {recorded}, but the loaded backbone is {backbone.identity}"
        )
    config = config_from_dict({**payload["settings"]}, f"{directory / ADAPTER_CONFIG}")
    config.method.name = payload["method"]
    method = build_method(config, backbone, payload["classnames"], payload.get("dataset_template"))
    model_path = directory / ADAPTER_MODEL
    if not model_path.is_file():
        raise RlptuneError(f"{directory}: missing {ADAPTER_MODEL}")
    from safetensors.torch import load_file

    try:
        state = load_file(str(model_path))
    except Exception as exc:
        raise RlptuneError(f"{model_path}: not a safetensors file ({str(exc).splitlines()[0][:120]})") from None
    method.load_trainable_state(state, str(model_path))
    return method.eval()


# -- checkpoints -----------------------------------------------------------------------------------------------

def config_digest(config) -> str:
    """Digest of the settings that change the training trajectory (a resume with other settings is refused)."""
    cfg = config.to_dict()
    relevant = {k: cfg[k] for k in ("backbone", "data", "method", "prompt", "train")}
    relevant["train"] = {k: v for k, v in relevant["train"].items() if k not in ("checkpoint_every", "num_workers", "cache_dir")}
    relevant["backbone"] = {k: v for k, v in relevant["backbone"].items() if k != "device"}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for idx, entry in state["state"].items():
        scalars["state"][str(idx)] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
                scalars["state"][str(idx)][key] = {"tensor": f"optim.{idx}.{key}"}
            else:
                scalars["state"][str(idx)][key] = {"value": value}
    return tensors, scalars


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], scalars: dict) -> dict:
    state = {}
    for idx, entry in scalars["state"].items():
        state[int(idx)] = {
            key: (tensors[spec["tensor"]] if "tensor" in spec else spec["value"]) for key, spec in entry.items()
        }
    return {"state": state, "param_groups": scalars["param_groups"]}


def save_checkpoint(path: str | Path, method, optimizer, epoch: int, config, extra: dict | None = None) -> Path:
    opt_tensors, opt_scalars = _flatten_optimizer(optimizer.state_dict())
    tensors = {f"param.{k}": v for k, v in method.trainable_state().items()}
    tensors.update(opt_tensors)
    meta = {
        "epoch": epoch,
        "optimizer": opt_scalars,
        "config_digest": config_digest(config),
        "library_version": __version__,
        **(extra or {}),
    }
    return io.write_safetensors(path, tensors, {"rlptune_checkpoint": json.dumps(meta, default=str)})


def load_checkpoint(path: str | Path, method, optimizer, config) -> dict:
    """Restore trainable tensors and optimizer state; return the checkpoint's metadata (``epoch`` completed)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get("rlptune_checkpoint")
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:
        raise RlptuneError(f"{path}: not an rlptune checkpoint ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})") from None
    if raw is None:
        raise RlptuneError(f"{path}: not an rlptune checkpoint (no rlptune_checkpoint metadata)")
    meta = json.loads(raw)
    if meta.get("config_digest") != config_digest(config):
        raise RlptuneError(f"{path}: checkpoint was written with other settings; use a new output folder or the same config")
    method.load_trainable_state({k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")}, str(path))
    optimizer.load_state_dict(_unflatten_optimizer({k: v for k, v in tensors.items() if k.startswith("optim.")}, meta["optimizer"]))
    return meta


def dataclass_json(obj) -> dict:
    return dataclasses.asdict(obj)
