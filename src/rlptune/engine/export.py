"""An adapter as a plain classifier: the merged class features and the logit scale, usable with open_clip alone.

A prompt method that leaves the image tower untouched (CoOp, RLP, KgCoOp, zero-shot, CLIP-LoRA on the text tower
only) scores an image as ``logit_scale · normalise(image_features) @ W.T``, where ``W`` (one normalised text feature
per class) is what the learned prompt produces once merged. ``W`` is all inference needs, so it is exported as a
safetensors file (``class_features``, float32, classes × embedding width) with a JSON beside it (class names, logit
scale, the backbone it belongs to). docs/ADAPTERS.md shows the five lines of open_clip that use it.

Methods that change the image side (MaPLe, IVLP and PromptSRC with visual prompts, CLIP-LoRA on the image tower),
whose class features depend on the image (CoCoOp), or that are not cosine classifiers (the linear probe) are refused
in one line: the stock image tower with fixed class features would not reproduce their predictions. Every export is
checked against the method's own scores before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import __version__, io
from ..errors import RlptuneError
from ..methods.base import Method
from ..rundir import check_output_file

CLASSIFIER_FORMAT = "rlptune-classifier"
CLASSIFIER_TENSOR = "class_features"


def classifier_paths(path: str | Path) -> tuple[Path, Path]:
    """(tensor file, JSON file) of ``-o FILE``: ``FILE`` must end in ``.safetensors``; the JSON is ``FILE`` with
    ``.json`` instead."""
    target = Path(path)
    if not str(path).strip() or target.suffix != ".safetensors":
        raise RlptuneError(
            f"{path}: -o/--output of a classifier export must end in .safetensors (the class names and logit scale go "
            f"beside it as .json)"
        )
    return target, target.with_suffix(".json")


def _is_our_tensor_file(first: bytes) -> bool:
    return CLASSIFIER_FORMAT.encode() in first[:4096]


def _is_our_json(first: bytes) -> bool:
    return first.lstrip().startswith(b"{") and f'"{CLASSIFIER_FORMAT}"'.encode() in first


def check_classifier_output(path: str | Path) -> tuple[Path, Path]:
    """The two files of ``-o FILE``, checked before any work: each replaces only an earlier classifier export."""
    tensor_path, json_path = classifier_paths(path)
    check_output_file(tensor_path, "-o/--output", _is_our_tensor_file, "a classifier export")
    check_output_file(json_path, "-o/--output (its .json)", _is_our_json, "a classifier export's JSON")
    return tensor_path, json_path


def why_not_exportable(method) -> str | None:
    """Why ``method``'s predictions cannot be a fixed classifier over the stock image tower, or None."""
    name = method.registered_name
    if method.needs_image_tower:
        return (
            f"method {name} changes the image tower (visual prompts or adapters inside it), so fixed class features "
            f"over the stock image tower would not reproduce its predictions; use the adapter with rlptune"
        )
    if not method.normalize_features:
        return (
            f"method {name} is a linear head over unnormalised image features, not a cosine classifier over class "
            f"text features; use the adapter with rlptune"
        )
    if type(method).logits is not Method.logits:
        return (
            f"method {name} computes its scores its own way, not from fixed class features (CoCoOp conditions them "
            f"on each image), so no fixed classifier reproduces its predictions; use the adapter with rlptune"
        )
    return None


@torch.no_grad()
def classifier(method) -> tuple[torch.Tensor, float]:
    """(class features W: C × e float32 normalised, logit scale) reproducing ``method``'s logits, checked on probe
    features; one line naming the method when it cannot be exported."""
    reason = why_not_exportable(method)
    if reason is not None:
        raise RlptuneError(reason)
    method.eval()
    with method.backbone.autocast():
        weights = method.class_features().detach().float().cpu()
    weights = torch.nn.functional.normalize(weights, dim=-1)
    scale = float(method.backbone.logit_scale)
    probe = torch.nn.functional.normalize(
        torch.randn(16, weights.shape[1], generator=torch.Generator().manual_seed(0)), dim=-1
    )
    with method.backbone.autocast():
        expected = method.logits(probe.to(method.backbone.device)).float().cpu()
    got = scale * probe @ weights.t()
    tolerance = 1e-3 * max(scale, 1.0) if method.backbone.precision == "fp32" else 5e-2 * max(scale, 1.0)
    if expected.shape != got.shape or not bool(torch.allclose(expected, got, atol=tolerance, rtol=0)):
        raise RlptuneError(
            f"method {method.registered_name}: its class scores are not scaled cosine similarities to fixed class "
            f"features (they depend on each image), so it cannot be exported as a classifier; use the adapter with rlptune"
        )
    return weights.contiguous(), scale


def export_classifier(method, path: str | Path) -> tuple[Path, Path]:
    """Write ``method`` as a classifier: ``path`` (safetensors, :data:`CLASSIFIER_TENSOR`) and its JSON beside it.

    Neither file replaces anything but an earlier export; both are written atomically, the JSON last.
    """
    tensor_path, json_path = check_classifier_output(path)
    weights, scale = classifier(method)
    backbone = method.backbone
    meta: dict[str, Any] = {
        "format": CLASSIFIER_FORMAT,
        "version": 1,
        "library": {"name": "rlptune", "version": __version__},
        "method": method.registered_name,
        "tensor": CLASSIFIER_TENSOR,
        "classnames": list(method.classnames),
        "logit_scale": scale,
        "backbone": {"identity": backbone.identity, "spec": backbone.spec},
        "logits": "logit_scale * normalize(image_features) @ class_features.T",
    }
    io.write_safetensors(tensor_path, {CLASSIFIER_TENSOR: weights}, {"format": CLASSIFIER_FORMAT})
    io.write_json(json_path, meta)
    return tensor_path, json_path


__all__ = [
    "CLASSIFIER_FORMAT",
    "CLASSIFIER_TENSOR",
    "check_classifier_output",
    "classifier",
    "classifier_paths",
    "export_classifier",
    "why_not_exportable",
]
