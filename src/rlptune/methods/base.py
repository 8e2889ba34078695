"""What every method is: where prompts go and what the loss is, behind one interface the engine drives.

A method is an ``nn.Module`` built from (run config, backbone, class names). The engine only calls
:meth:`Method.logits` on image features (or images, for methods that put prompts into the image tower),
:meth:`Method.loss`, and the adapter helpers. Methods are registered by name so later methods plug in without
touching the engine.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import Backbone
from ..errors import RlptuneError

_REGISTRY: dict[str, type["Method"]] = {}


def register_method(name: str) -> Callable[[type["Method"]], type["Method"]]:
    def wrap(cls: type[Method]) -> type[Method]:
        _REGISTRY[name] = cls
        cls.registered_name = name
        return cls

    return wrap


def get_method_class(name: str) -> type["Method"]:
    if name not in _REGISTRY:
        raise RlptuneError(f"method.name {name!r} is not known; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


def build_method(config, backbone: Backbone, classnames: Sequence[str], dataset_template: str | None = None) -> "Method":
    cls = get_method_class(config.method.name)
    return cls(config, backbone, list(classnames), dataset_template=dataset_template)


class Method(nn.Module):
    """Base class. Subclasses set ``needs_image_tower`` when they change the image path (deep vision prompts);
    the others train on cached image features."""

    registered_name = "method"
    needs_image_tower = False
    transfers_to_new_classes = True  # False for per-class heads (linear probe): base-to-new skips "new"

    def __init__(self, config, backbone: Backbone, classnames: list[str], dataset_template: str | None = None) -> None:
        super().__init__()
        self.config = config
        self._backbone = [backbone]  # not a submodule: the frozen backbone is never part of the method's state
        self.classnames = list(classnames)
        self.dataset_template = dataset_template
        self._merged_features: torch.Tensor | None = None

    @property
    def backbone(self) -> Backbone:
        return self._backbone[0]

    # -- text side -----------------------------------------------------------------------------------------
    def class_features(self) -> torch.Tensor:
        """Normalised class text features (C, e) as used in training (with gradients)."""
        raise NotImplementedError

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Point the method at another list of classes (new classes, another dataset): learned prompts transfer."""
        self.classnames = list(classnames)
        self._merged_features = None

    @torch.no_grad()
    def merge(self) -> "Method":
        """Fold every trainable branch and precompute the class features: inference = image tower + one matmul."""
        self.eval()
        self._merged_features = self.class_features().detach()
        return self

    def unmerge(self) -> None:
        self._merged_features = None

    # -- image side -------------------------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image features; methods that prompt the image tower override this."""
        return self.backbone.encode_image(images)

    # -- scores and loss --------------------------------------------------------------------------------------
    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarities (B, C) between normalised image features and the class features."""
        text = self._merged_features if self._merged_features is not None else self.class_features()
        return self.backbone.logit_scale * image_features.to(text.dtype) @ text.t()

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels)

    # -- adapters -----------------------------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trained tensors only (what an adapter file holds)."""
        return {name: p.detach().clone() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
        own = dict(self.named_parameters())
        expected = {n for n, p in own.items() if p.requires_grad}
        if set(state) != expected:
            raise RlptuneError(
                f"{source}: tensors {sorted(state)} do not match method {self.registered_name!r} ({sorted(expected)})"
            )
        with torch.no_grad():
            for name, tensor in state.items():
                if tuple(tensor.shape) != tuple(own[name].shape):
                    raise RlptuneError(
                        f"{source}: tensor {name} has shape {tuple(tensor.shape)}, expected {tuple(own[name].shape)}"
                    )
                own[name].copy_(tensor.to(own[name].dtype))
        self._merged_features = None

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def prompt_matrices(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Named (effective prompt, initial prompt) pairs for diagnostics; empty for prompt-free methods."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {"method": self.registered_name, "trainable_params": self.num_trainable()}
