"""The method contract: what every method declares, and the only things the engine calls.

A method is an ``nn.Module`` built from (its settings, backbone, class names), registered with its typed options
(peft's config-class-with-model-class arrangement); its settings are a :class:`DeclaredSettings`: its options and
exactly the run settings its class declares in ``reads``, never the whole run config::

    @register_method("kgcoop", options=KgCoOpOptions)
    class KgCoOp(CoOp): ...

The engine drives training through :meth:`Method.training_step` (one :class:`Batch` in, one :class:`StepOutput`
out), the epoch hooks, and — for methods fitted in closed form such as the linear probe —
:meth:`Method.fit_closed_form`; inference goes through :meth:`Method.merge`, :meth:`Method.encode_images` and
:meth:`Method.logits`; adapters through :meth:`Method.adapter_state` / :meth:`Method.load_adapter_state`. Nothing is
discovered with ``hasattr``: every hook has a default here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import eval_transform
from ..backbones.base import Backbone
from ..data.common import check_unique_classnames
from ..errors import RlptuneError
from .. import registry
from ..options import NoOptions, parse_options


@dataclass
class Batch:
    """One training step's inputs, prepared by the engine."""

    labels: torch.Tensor
    features: torch.Tensor | None = None  # (B, e) normalised frozen image features (methods with a frozen image tower)
    images: torch.Tensor | None = None  # (B, 3, H, W) augmented images (methods with needs_image_tower)
    epoch: int = 0
    step: int = 0


@dataclass
class StepOutput:
    """What a training step returns: the loss to back-propagate, the logits for accuracy, extra numbers to log."""

    loss: torch.Tensor
    logits: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class ClosedFormData:
    """Centre-crop image features handed to a closed-form method (train, and validation when the split has one)."""

    train_features: torch.Tensor
    train_labels: torch.Tensor
    val_features: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    log: Callable[[str], None] = print


@dataclass(frozen=True)
class DeclaredSize:
    """A size an adapter's settings declare and its stored tensors carry: dimension ``dim`` of every tensor whose
    name fully matches ``pattern``, for some (pattern, dim) in ``carriers``.

    Checked against a file's tensors before the method is built (:func:`rlptune.engine.adapter.check_declared_sizes`),
    because building allocates what the settings declare: an edited ``rank: 1000000000000`` must be one line, not a
    16 TB allocation.
    """

    field: str  # where the size is written, e.g. "settings.prompt.rank"
    value: int
    carriers: tuple[tuple[str, int], ...]


def register_method(name: str, options: type | None = None) -> Callable[[type["Method"]], type["Method"]]:
    """Class decorator: make ``cls`` available as ``method.name = name`` with its typed options dataclass.

    A subclass of a registered method keeps its parent's options (the code it inherits reads them, e.g. CoOp's
    ``class_specific``): an ``options`` class that does not already extend the parent's gets its fields added
    (its own fields win on a shared name), as a subclass also inherits its parent's recipe."""

    def wrap(cls: type[Method]) -> type[Method]:
        if options is not None:
            cls.options_class = _with_parent_options(options, cls)
        cls.registered_name = name
        registry.register_method_class(name, cls, cls.options_class)
        return cls

    return wrap


def _with_parent_options(options: type, cls: type) -> type:
    parent = next(
        (b.options_class for b in cls.__mro__[1:] if _registered(b)), NoOptions
    )  # the nearest registered parent
    if parent is NoOptions or issubclass(options, parent):
        return options
    merged = type(
        options.__name__,
        (options, parent),
        {"__module__": options.__module__, "__doc__": options.__doc__, "__qualname__": options.__qualname__},
    )
    return dataclass(merged)


def _registered(klass: type) -> bool:
    name = vars(klass).get("registered_name")
    return (
        isinstance(name, str) and name in registry.method_names() and registry.method_entry(name).method_class is klass
    )


def get_method_class(name: str) -> type["Method"]:
    return registry.method_entry(name).method_class


def list_methods() -> list[str]:
    return registry.method_names()


def build_method(
    config, backbone: Backbone, classnames: Sequence[str], dataset_template: str | None = None
) -> "Method":
    """Build ``config``'s method: the only place that sees the whole config. The method receives a
    :class:`DeclaredSettings` (its options and what its class declares in ``reads``); the whole config is kept
    beside it as the engine's record (:attr:`Method.run_config`)."""
    cls = get_method_class(config.method.name)
    method = cls(DeclaredSettings.of(cls, config), backbone, list(classnames), dataset_template=dataset_template)
    method.run_config = copy.deepcopy(config)
    return method


class DeclaredSettings:
    """The settings a method is built with: ``method`` (name and options) and exactly the sections (``"prompt"``) or
    section fields (``"data.dataset"``) its class declares in :attr:`Method.reads`.

    A deep copy that refuses assignment, so nothing a method does changes the run's config; reading a setting the
    class does not declare is one line naming the method, the setting and the fix, so a method's dependence on the
    settings is visible in its class (and a run's settings hash cannot miss what a method reads)."""

    def __init__(self, owner: str, values: dict[str, Any], where: str = "", declarer: str = "") -> None:
        object.__setattr__(self, "_owner", owner)  # the registered name, quoted
        object.__setattr__(self, "_where", where)  # "data." for a partly declared section, "" at the top
        object.__setattr__(self, "_declarer", declarer)  # the class whose ``reads`` to extend
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def of(cls, method_class: type["Method"], config) -> "DeclaredSettings":
        """What ``method_class`` may read of the run config ``config``: ``method`` and its declared ``reads``."""
        owner = f"{method_class.registered_name!r}"
        values: dict[str, Any] = {"method": copy.deepcopy(config.method)}
        fields: dict[str, dict[str, Any]] = {}
        for declared in method_class.reads:
            section, _, name = str(declared).partition(".")
            source = getattr(config, section, None) if section and not section.startswith("_") else None
            if source is None or (name and (name.startswith("_") or not hasattr(source, name))):
                raise RlptuneError(
                    f"{method_class.__name__}.reads declares {declared!r}, which is not a setting; expected a "
                    f"section such as 'prompt' or a section field such as 'data.dataset'"
                )
            if not name:
                values[section] = copy.deepcopy(source)
            elif section not in values:
                fields.setdefault(section, {})[name] = copy.deepcopy(getattr(source, name))
        for section, declared_fields in fields.items():
            if section not in values:  # a whole section declared too wins
                values[section] = cls(owner, declared_fields, f"{section}.", method_class.__name__)
        return cls(owner, values, "", method_class.__name__)

    def __getattr__(self, name: str) -> Any:  # only called for what was not declared
        if name.startswith("_"):
            raise AttributeError(name)
        setting = f"{self._where}{name}"
        fix = repr(setting) if self._where else f"{setting!r} (or the fields it reads, '{setting}.<field>')"
        raise RlptuneError(
            f"method {self._owner} reads setting {setting!r}, which it does not declare; add {fix} to "
            f"{self._declarer}.reads"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        raise RlptuneError(
            f"method {self._owner}: the settings it is built with are read-only (tried to set "
            f"{self._where}{name}); keep what changes on the method itself"
        )

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)

    def __repr__(self) -> str:
        shown = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return f"DeclaredSettings({self._owner}, {shown})"


class Method(nn.Module):
    """Base class of every method; subclasses override what they change (see the module docstring)."""

    registered_name: ClassVar[str] = "method"
    options_class: ClassVar[type] = NoOptions
    #: True: the method changes the image tower (prompts or adapters inside it) and trains on images, not features.
    needs_image_tower: bool = False
    #: False for per-class heads (linear probe): base-to-new skips the "new" evaluation.
    transfers_to_new_classes: ClassVar[bool] = True
    #: True: trained by :meth:`fit_closed_form` on centre-crop features instead of the gradient loop.
    closed_form: ClassVar[bool] = False
    #: False: the engine hands this method the image tower's unnormalised features (closed-form fit and evaluation;
    #: the linear probe, as CoOp's lpclip fits them), and its :meth:`encode_images` returns the same.
    normalize_features: ClassVar[bool] = True
    #: The ``prompt.kind`` this method requires (``"lowrank"`` for RLP), or None when any parameterisation works.
    requires_prompt_kind: ClassVar[str | None] = None
    #: True: the method learns a prompt built by :func:`rlptune.prompts.build_prompt`, so ``prompt.kind`` (full-rank
    #: or ``lowrank``) chooses its parameterisation (the RLP study's low-rank part takes such methods).
    learns_prompt: ClassVar[bool] = False
    #: The registered method this one is a one-tower ablation of (``deep_text`` and ``deep_vision`` are IVLP with one
    #: tower's prompts), or None: a study can leave an ablation to the method it ablates.
    ablation_of: ClassVar[str | None] = None

    #: What the method reads beyond its options: whole sections (``"prompt"``) or section fields
    #: (``"data.dataset"``) of the run config; its :class:`DeclaredSettings` holds exactly these (and ``method``).
    #: Subclasses inherit it; one that reads more extends it (``reads = CoOp.reads + ("data.dataset",)``).
    reads: ClassVar[tuple[str, ...]] = ()
    #: The whole run config the engine built this method from (set by :func:`build_method` and adapter loading), so
    #: that functions given only a method (``save_pretrained``, ``eval``, zero-shot baselines) know its run. The
    #: engine's record: a method's own code reads :attr:`settings`, never this.
    run_config: Any = None

    def __init__(
        self, settings, backbone: Backbone, classnames: list[str], dataset_template: str | None = None
    ) -> None:
        super().__init__()
        if not isinstance(settings, DeclaredSettings):  # a whole run config, handed to the class directly
            self.run_config = copy.deepcopy(settings)
            settings = DeclaredSettings.of(type(self), settings)
        self.settings = settings
        self.options = parse_options(self.options_class, settings.method.options, self.registered_name)
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
        raise NotImplementedError(f"method {self.registered_name!r} does not define class_features()")

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Point the method at another list of classes (new classes, another dataset): learned prompts transfer."""
        check_unique_classnames(list(classnames), "classnames")
        self.classnames = list(classnames)
        self._merged_features = None

    # -- image side -------------------------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image features; methods that prompt the image tower override this."""
        return self.backbone.encode_image(images)

    @torch.no_grad()
    def frozen_image_features(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen CLIP's normalised image features (no prompts, no gradients)."""
        return self.backbone.encode_image(images)

    # -- scores ------------------------------------------------------------------------------------------------
    def scores(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarities (B, C) between normalised image and class features."""
        return self.backbone.logit_scale * image_features.to(text_features.dtype) @ text_features.t()

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """Inference scores (B, C); uses the merged class features when :meth:`merge` has run."""
        text = self._merged_features if self._merged_features is not None else self.class_features()
        return self.scores(image_features, text)

    # -- training ----------------------------------------------------------------------------------------------
    def image_features_of(self, batch: Batch) -> torch.Tensor:
        """The batch's image features: the engine's frozen features, or the (prompted) image tower on its images."""
        if batch.features is not None:
            return batch.features
        if batch.images is None:
            raise RlptuneError(f"method {self.registered_name!r}: the batch carries neither image features nor images")
        return self.encode_images(batch.images)

    def training_step(self, batch: Batch) -> StepOutput:
        """Cross-entropy over the class logits; methods with extra loss terms override this."""
        logits = self.scores(self.image_features_of(batch), self.class_features())
        return StepOutput(F.cross_entropy(logits.float(), batch.labels), logits)

    def on_train_start(self, total_epochs: int, steps_per_epoch: int) -> None:
        """Called once before the first epoch (also when resuming): schedules of loss weights, aggregation windows."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called before every epoch (0-based)."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called after every epoch's last step (0-based), before metrics and the checkpoint are written."""

    def fit_closed_form(self, data: ClosedFormData) -> dict[str, Any]:
        """Fit without the gradient loop (``closed_form = True``); returns the record to log."""
        raise NotImplementedError(f"method {self.registered_name!r} is not fitted in closed form")

    # -- inference ---------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) of a batch of preprocessed images (see :attr:`preprocess`): the model-shaped entry point."""
        return self.logits(self.encode_images(images))

    @property
    def preprocess(self) -> Callable:
        """The backbone's evaluation transform: PIL image → the tensor :meth:`forward` expects."""
        return eval_transform(self.backbone)

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, top_k: int = 5, batch_size: int = 64, merge: bool = True
    ) -> list[dict[str, Any]]:
        """Top-k labels and probabilities (softmax over the classes) of a batch of preprocessed images, (B, 3, H, W)
        or one (3, H, W) image (see :attr:`preprocess`); one row ``{labels, probs}`` per image.

        A method computes; it reads no files and draws no progress: :func:`rlptune.predict` decodes paths, folders
        and PIL images and calls this with ``merge=False`` after merging once for all its batches."""
        if not isinstance(images, torch.Tensor):
            raise RlptuneError(
                f"{type(self).__name__}.predict takes a tensor of preprocessed images (method.preprocess), got "
                f"{type(images).__name__}; for paths, folders or PIL images use rlptune.predict(method, images)"
            )
        if images.dim() not in (3, 4):
            raise RlptuneError(
                f"{type(self).__name__}.predict: expected images (B, 3, H, W) or (3, H, W), got shape "
                f"{tuple(images.shape)}"
            )
        batch = images if images.dim() == 4 else images.unsqueeze(0)
        if merge:
            self.eval()
            self.merge()
        k = max(1, min(int(top_k), len(self.classnames)))
        rows: list[dict[str, Any]] = []
        for start in range(0, len(batch), max(1, int(batch_size))):
            probs = self(batch[start : start + batch_size].to(self.backbone.device)).float().softmax(-1).cpu()
            top = probs.topk(k, dim=-1)
            for values, indices in zip(top.values, top.indices):
                rows.append({"labels": [self.classnames[int(i)] for i in indices], "probs": [float(v) for v in values]})
        return rows

    @torch.no_grad()
    def merge(self) -> "Method":
        """Fold every trainable branch and precompute the class features: inference = image tower + one matmul."""
        self.eval()
        self._merged_features = self.class_features().detach()
        return self

    def unmerge(self) -> None:
        """Drop everything :meth:`merge` cached (called before training and after loading new weights)."""
        self._merged_features = None

    def train(self, mode: bool = True) -> "Method":
        if mode:
            self.unmerge()  # merged (inference) features must never stand in for the trainable path
        return super().train(mode)

    # -- adapters -----------------------------------------------------------------------------------------------
    @classmethod
    def declared_sizes(cls, settings: DeclaredSettings, classnames: Sequence[str]) -> list[DeclaredSize]:
        """The sizes ``settings`` (what this class declares, as :class:`DeclaredSettings`) declare for this method's
        adapter tensors (see :class:`DeclaredSize`); none by default. A method whose settings size its tensors
        (context length, rank, prompt tokens) lists them here."""
        return []

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The trained tensors only (what an adapter file holds)."""
        return {name: p.detach().clone() for name, p in self.named_parameters() if p.requires_grad}

    def load_adapter_state(self, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
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
                check_dtype(name, tensor, own[name].dtype, source)
                own[name].copy_(tensor)
        self.unmerge()

    def export_adapter_files(self, directory: Path) -> Path | None:
        """Write the adapter in another tool's own format too (CLIP-LoRA on a Hugging Face CLIP: a peft adapter);
        nothing by default."""
        return None

    # -- description ---------------------------------------------------------------------------------------------
    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def parameter_formula(self) -> str:
        """The trainable count as a formula with its values; methods with prompts describe their own."""
        return f"{self.num_trainable():,}"

    def prompt_matrices(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Named (effective prompt, initial prompt) pairs for diagnostics; empty for prompt-free methods."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {"method": self.registered_name, "trainable_params": self.num_trainable()}

    # -- sharing (as transformers / peft models do) --------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, **kwargs: Any) -> Path:
        """Write this method as a hub-shaped adapter folder (adapter, ``training_config.yaml``, model card); the
        same as :func:`rlptune.save_pretrained` (``config``, ``result``, ``command`` keywords)."""
        return registry.hub_function("save_pretrained")(self, directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload this method to the Hugging Face hub repo ``repo_id`` (needs ``huggingface_hub``); the same as
        :func:`rlptune.push_to_hub` (``private``, ``token``, ``commit_message``, … keywords). Returns the commit URL."""
        return registry.hub_function("push_to_hub")(self, repo_id, **kwargs)


def check_dtype(name: str, tensor: torch.Tensor, expected: torch.dtype, source: str) -> None:
    """A stored tensor must have its parameter's dtype: an int64 tensor would be silently converted (and large values
    rounded), a float64 one rounded or overflowed to inf. rlptune writes every tensor in its parameter's dtype."""
    if tensor.dtype != expected:
        kind = "floating-point" if tensor.is_floating_point() else "not floating-point"
        raise RlptuneError(
            f"{source}: tensor {name!r} is {_dtype_name(tensor.dtype)} ({kind}), expected {_dtype_name(expected)} as "
            f"rlptune writes it"
        )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
