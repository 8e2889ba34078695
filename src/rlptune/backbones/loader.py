"""Load a CLIP from any of the places users keep one, always through open_clip's own model classes.

Backbone specs (one string, as on the command line):

- ``micro`` — the micro CLIP shipped inside the package (no network, no files).
- ``ARCH:TAG`` — an open_clip architecture with a pretrained tag (``ViT-B-16:openai``); needs the hub or its cache.
- ``ARCH:/path/to/weights`` — an open_clip checkpoint file (``.bin``/``.pt``/``.safetensors``) for that architecture
  (ARCH is an open_clip name or an architecture ``.json``).
- ``/path/to/ViT-B-16.pt`` — an OpenAI CLIP file (TorchScript archive or plain state dict); architecture inferred.
- ``/path/to/arch.json`` or ``random:ARCH`` — an architecture (open_clip config JSON or name) with random
  weights, seeded; for tests and benchmarks.
- ``hf-hub:org/repo`` — open_clip's hub schema.
- ``hf:PATH_OR_NAME`` — a Hugging Face ``CLIPModel`` (a ``save_pretrained`` folder, or a hub name from the local
  cache or the network); see :mod:`.hf`.

Specs are resolved by a registry of loaders (:func:`register_backbone_loader`), not by one if-chain: a string key
ending in ``:`` is a prefix (``hf:``, ``random:``), another string key is an exact name (``micro``), and a callable
key is a matcher ``spec -> bool``; prefixes and names are looked up first (longest prefix wins), then matchers in
registration order. A loader returns the :class:`Backbone` (usually through :func:`finish_backbone`) with a
*resolvable* spec: file paths made absolute, so an adapter that records it loads from any working directory.

Third-party files are read with ``torch.load(weights_only=True)`` (or TorchScript), never unrestricted pickle.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

import torch

from .. import registry
from ..errors import RlptuneError
from .base import Backbone, BackboneFamily
from .structure import canonical_weights
from .openclip import OPEN_CLIP
from .precision import check_precision, resolve_precision

MICRO_NAME = "micro"


def _open_clip():
    import open_clip

    return open_clip


def _default_device(device: str) -> str:
    device = str(device).strip()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise RlptuneError(f"device {device!r}: expected auto, cpu, cuda, cuda:N, mps or xpu[:N]") from None
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = torch.device(device).index or 0
        if index >= count:
            raise RlptuneError(
                f"device {device!r}: "
                + (f"this machine has {count} CUDA device(s)" if count else "CUDA is not available on this machine")
                + "; use --device cpu or auto"
            )
    elif kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RlptuneError(f"device {device!r}: MPS is not available on this machine; use --device cpu or auto")
    elif kind not in ("cpu", "cuda", "mps"):
        backend = getattr(torch, kind, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise RlptuneError(f"device {device!r}: {kind} is not available on this machine; use --device cpu or auto")
    return device


def model_cfg_image_size(cfg: dict[str, Any]) -> int:
    """The input resolution an open_clip model config declares (a plug-in loader passes it to ``finish_backbone``)."""
    size = cfg.get("vision_cfg", {}).get("image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def read_arch_json(path: str | Path) -> dict[str, Any]:
    """An open_clip model config (``{"embed_dim", "vision_cfg", "text_cfg"}``), or a file that wraps one."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RlptuneError(f"{path}: architecture JSON not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RlptuneError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(cfg, dict) and "model_cfg" in cfg:
        cfg = cfg["model_cfg"]
    if not isinstance(cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
        raise RlptuneError(f"{path}: expected an open_clip model config with embed_dim, vision_cfg and text_cfg")
    return cfg


def build_clip(cfg: dict[str, Any]) -> torch.nn.Module:
    """Instantiate open_clip's own CLIP / CustomTextCLIP class from an architecture dict."""
    oc = _open_clip()
    cfg = dict(cfg)
    custom = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    cls = oc.model.CustomTextCLIP if custom else oc.model.CLIP
    try:
        return cls(**cfg)
    except TypeError as exc:
        raise RlptuneError(f"architecture config has an unexpected field: {exc}") from None


def tokenizer_for_cfg(cfg: dict[str, Any]):
    """CLIP's BPE tokenizer at the config's context length (no download: open_clip ships the vocabulary)."""
    oc = _open_clip()
    ctx = int(cfg.get("text_cfg", {}).get("context_length", 77))
    return oc.tokenizer.SimpleTokenizer(context_length=ctx)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.split("/")[1:2] == ["code"] or name.endswith("/constants.pkl") for name in zf.namelist())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, loaded safely: safetensors, TorchScript, or ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise RlptuneError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise RlptuneError(f"{path}: checkpoint file is empty")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif _is_torchscript(path):
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
            for key in [
                k for k in state if k in ("input_resolution", "context_length", "vocab_size") or k.endswith("attn_mask")
            ]:
                state.pop(key)  # scripted archives carry these non-weight buffers
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except RlptuneError:
        raise
    except Exception as exc:  # pickle refusals, truncated zips, wrong formats
        raise RlptuneError(f"{path}: not a loadable weights-only checkpoint ({_load_failure(exc)})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RlptuneError(f"{path}: expected a state dict of tensors")
    if next(iter(state)).startswith("module."):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _load_failure(exc: BaseException) -> str:
    """One line on why a weights file did not load (torch's own message is many lines and suggests unsafe loading)."""
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:  # torch.load(weights_only=True) refused the pickle
        detail = " ".join(text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].split())
        return f"torch.load(weights_only=True) refused it: {detail[:160]}; rlptune never runs code from a weights file"
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, KeyError) or not any(ch.isalpha() for ch in first):
        return f"not a PyTorch checkpoint, TorchScript archive or safetensors file ({type(exc).__name__})"
    return first[:200]


def _looks_openai(state: dict[str, torch.Tensor]) -> bool:
    return "text_projection" in state and ("visual.proj" in state or "visual.layer1.0.conv1.weight" in state)


def load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into an open_clip model strictly; a mismatch is one line naming ``source`` (for plug-in loaders)."""
    oc = _open_clip()
    state = oc.factory.convert_state_dict(model, state) if hasattr(oc.factory, "convert_state_dict") else state
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = oc.model.convert_to_custom_text_state_dict(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise RlptuneError(
            f"{source}: weights do not match the architecture "
            f"({len(missing)} missing e.g. {missing[:2]}, {len(unexpected)} unexpected e.g. {unexpected[:2]})"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise RlptuneError(
                f"{source}: weight {name} has shape {tuple(tensor.shape)}, expected {tuple(own[name].shape)}"
            )
    model.load_state_dict({k: v.float() if torch.is_floating_point(v) else v for k, v in state.items()}, strict=True)


@dataclass(frozen=True)
class BackboneRequest:
    """What a loader is asked for: the spec as typed and the load settings."""

    spec: str
    device: str = "cpu"
    precision: str = "fp32"
    seed: int = 0


BackboneLoader = Callable[[BackboneRequest], Backbone]
SpecMatcher = Union[str, Callable[[str], bool]]


@dataclass(frozen=True)
class _Registered:
    key: SpecMatcher
    loader: BackboneLoader
    name: str


_BY_NAME: dict[str, _Registered] = {}  # exact names and "prefix:" keys
_MATCHERS: list[_Registered] = []  # callables, tried in registration order


def register_backbone_loader(prefix_or_matcher: SpecMatcher, loader: BackboneLoader, name: str | None = None) -> None:
    """Make ``load_backbone`` hand specs matching ``prefix_or_matcher`` to ``loader(request) -> Backbone``.

    A string ending in ``:`` is a prefix (``"hf:"``); another string is an exact name (``"micro"``); a callable is
    a matcher ``spec -> bool``. Registering an existing string key replaces its loader (plug-ins may override).
    """
    if isinstance(prefix_or_matcher, str):
        if not prefix_or_matcher.strip():
            raise RlptuneError("register_backbone_loader: empty prefix")
        _BY_NAME[prefix_or_matcher] = _Registered(prefix_or_matcher, loader, name or prefix_or_matcher)
    elif callable(prefix_or_matcher):
        _MATCHERS.append(_Registered(prefix_or_matcher, loader, name or getattr(loader, "__name__", "loader")))
    else:
        raise RlptuneError(
            f"register_backbone_loader: expected a prefix string or a callable, got {prefix_or_matcher!r}"
        )
    registry.note_plugin_module(getattr(loader, "__module__", None))  # a sweep's workers import it too


def backbone_loaders() -> list[str]:
    """Names of the registered loaders, in lookup order (for help texts and docs)."""
    return [r.name for r in sorted(_BY_NAME.values(), key=lambda r: -len(r.key))] + [r.name for r in _MATCHERS]


def _find_loader(spec: str) -> _Registered | None:
    if spec in _BY_NAME and not spec.endswith(":"):
        return _BY_NAME[spec]
    prefixes = [k for k in _BY_NAME if k.endswith(":") and spec.startswith(k)]
    if prefixes:
        return _BY_NAME[max(prefixes, key=len)]
    for registered in _MATCHERS:
        if registered.key(spec):
            return registered
    return None


def load_backbone(spec: str, device: str = "cpu", precision: str = "auto", seed: int = 0) -> Backbone:
    """Load a CLIP by spec (see module docstring) and return it with tokenizer, transforms settings and identity.

    ``precision`` ``auto`` resolves for plain CLIP on ``device`` (:mod:`.precision`); a run or an adapter loaded on
    the backbone resolves it again for its method, while an explicit fp32/bf16/fp16 is kept by both."""
    device = _default_device(device)
    spec = str(spec).strip()
    if not spec:
        raise RlptuneError(
            "backbone: empty spec; expected 'micro', ARCH:TAG, ARCH:/path/weights, a .pt file, an arch .json or hf:PATH"
        )
    requested = check_precision(precision, "backbone precision")
    precision = resolve_precision(requested, device)
    registered = _find_loader(spec)
    if registered is None:  # plug-in packages (rlptune.micro: "micro", "micro-v2") register their loaders on import
        registry.load_builtin_plugins()
        registered = _find_loader(spec)
    if registered is None:
        raise RlptuneError(
            f"backbone {spec!r}: names no weights; use 'micro', ARCH:TAG (e.g. ViT-B-16:openai), ARCH:/path/to/weights, "
            f"an OpenAI .pt file, an architecture .json, random:ARCH or hf:PATH_OR_NAME"
        )
    backbone = registered.loader(BackboneRequest(spec, device, precision, seed))
    backbone.info.setdefault("typed_spec", spec)
    backbone.info["precision_requested"] = requested
    return backbone


def finish_backbone(
    model: torch.nn.Module,
    tokenizer,
    arch: str,
    spec: str,
    image_size: int,
    mean,
    std,
    request: BackboneRequest,
    family: BackboneFamily = OPEN_CLIP,
) -> Backbone:
    """fp32 weights, eval mode, the identity (``arch@sha256:<16 hex>`` over the canonical weights), moved to the
    device. ``arch`` only labels the identity; what identifies the backbone is its weights and structure."""
    model = model.float().eval()
    weights = canonical_weights(model, family)
    identity = f"{arch}@sha256:{weights[len('sha256:') :][:16]}"
    model.to(request.device)
    return Backbone(
        model=model,
        tokenizer=tokenizer,
        arch=arch,
        identity=identity,
        image_size=int(image_size),
        image_mean=tuple(float(m) for m in mean),
        image_std=tuple(float(s) for s in std),
        spec=spec,
        precision=request.precision,
        family=family,
        weights=weights,
    )


def absolute(path: str) -> str:
    """``path`` made absolute (what a resolvable spec records)."""
    return str(Path(path).expanduser().resolve())


OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _mean_std(model) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    mean = cfg.get("mean") or getattr(model.visual, "image_mean", None) or OPENAI_MEAN
    std = cfg.get("std") or getattr(model.visual, "image_std", None) or OPENAI_STD
    return tuple(mean), tuple(std)


# -- the built-in open_clip loaders -----------------------------------------------------------------------------


def _load_random(request: BackboneRequest) -> Backbone:
    """``random:ARCH`` / ``random:path.json`` / ``path.json``: an architecture with seeded random weights."""
    spec = request.spec
    target = spec[len("random:") :] if spec.startswith("random:") else spec
    if target.endswith(".json") or os.path.sep in target:
        cfg = read_arch_json(target)
        arch = Path(target).stem
        resolved = absolute(target) if spec == target else f"random:{absolute(target)}"
    else:
        cfg = _open_clip().factory.get_model_config(target)
        if cfg is None:
            raise RlptuneError(f"backbone {spec!r}: unknown open_clip architecture {target!r}")
        arch, resolved = target, spec
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(request.seed)
        model = build_clip(cfg)
    backbone = finish_backbone(
        model, tokenizer_for_cfg(cfg), arch, resolved, model_cfg_image_size(cfg), OPENAI_MEAN, OPENAI_STD, request
    )
    backbone.info["seed"] = request.seed
    return backbone


def _load_openai_file(request: BackboneRequest) -> Backbone:
    """An existing file: an OpenAI CLIP state dict or TorchScript archive (architecture inferred)."""
    spec = request.spec
    state = read_state_dict(spec)
    if not _looks_openai(state):
        raise RlptuneError(
            f"{spec}: cannot infer the architecture of this checkpoint; pass it as ARCH:{spec} (e.g. ViT-B-16:{spec})"
        )
    oc = _open_clip()
    try:
        # open_clip infers the architecture, but rounds weights through fp16 while loading: reload in fp32
        model = oc.model.build_model_from_openai_state_dict(dict(state), cast_dtype=torch.float32).float()
    except Exception as exc:
        raise RlptuneError(f"{spec}: not an OpenAI CLIP state dict ({type(exc).__name__}: {exc})") from None
    load_state_into(model, state, spec)
    size = int(
        model.visual.image_size[0] if isinstance(model.visual.image_size, (tuple, list)) else model.visual.image_size
    )
    tok = oc.tokenizer.SimpleTokenizer(context_length=int(model.positional_embedding.shape[0]))
    arch = f"openai-{'vit' if 'visual.proj' in state else 'rn'}-{state['text_projection'].shape[1]}"
    return finish_backbone(model, tok, arch, absolute(spec), size, OPENAI_MEAN, OPENAI_STD, request)


def _load_open_clip_name(request: BackboneRequest) -> Backbone:
    """``ARCH:TAG`` (pretrained tag), ``ARCH:/path/to/weights`` (a checkpoint file) or ``hf-hub:org/repo``."""
    spec = request.spec
    oc = _open_clip()
    if spec.startswith("hf-hub:"):
        arch, pretrained = spec, None
    else:
        arch, pretrained = spec.split(":", 1)
    if pretrained and (os.path.sep in pretrained or os.path.isfile(pretrained)):
        if arch.endswith(".json"):
            cfg, arch_name, arch_spec = read_arch_json(arch), Path(arch).stem, absolute(arch)
        else:
            cfg, arch_name, arch_spec = oc.factory.get_model_config(arch), arch, arch
        if cfg is None:
            raise RlptuneError(f"backbone {spec!r}: unknown open_clip architecture {arch!r}")
        model = build_clip(cfg)
        load_state_into(model, read_state_dict(pretrained), pretrained)
        return finish_backbone(
            model,
            tokenizer_for_cfg(cfg),
            arch_name,
            f"{arch_spec}:{absolute(pretrained)}",
            model_cfg_image_size(cfg),
            OPENAI_MEAN,
            OPENAI_STD,
            request,
        )
    try:
        model, _, _ = oc.create_model_and_transforms(arch, pretrained=pretrained, device="cpu")
    except Exception as exc:  # no network, unknown tag
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RlptuneError(f"backbone {spec!r}: open_clip could not load it ({first[:200]})") from None
    mean, std = _mean_std(model)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return finish_backbone(model, oc.get_tokenizer(arch), arch, spec, size, mean, std, request)


def _missing_checkpoint(request: BackboneRequest) -> Backbone:
    raise RlptuneError(f"{request.spec}: checkpoint file not found")


register_backbone_loader("random:", _load_random, "random:ARCH")
register_backbone_loader("hf-hub:", _load_open_clip_name, "hf-hub:org/repo (open_clip)")
register_backbone_loader(lambda spec: spec.endswith(".json"), _load_random, "arch .json (random weights)")
register_backbone_loader(os.path.isfile, _load_openai_file, "OpenAI .pt file")
register_backbone_loader(lambda spec: ":" in spec, _load_open_clip_name, "ARCH:TAG or ARCH:/path/to/weights")
register_backbone_loader(
    lambda spec: spec.endswith((".pt", ".pth", ".bin", ".safetensors")), _missing_checkpoint, "missing checkpoint"
)
