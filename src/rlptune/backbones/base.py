"""The backbone interface: a loaded CLIP seen through two small doors, the text tower and the image tower.

Methods never reach into one library's internals. They get a :class:`Backbone` whose :class:`TextTower` accepts
token embeddings with prompt vectors already spliced in and otherwise runs exactly the model's own text tower
(positional embeddings, causal mask, blocks, final norm, pooling at the end-of-text token, projection), and whose
:class:`VisionTower` runs the image transformer from its own modules with a hook between blocks. Both towers list
their attention modules for adapters (LoRA). Nothing here knows any tuning method exists, and nothing here knows
open_clip or Hugging Face: each library implements the towers in its own module (:mod:`.openclip`, :mod:`.hf`) and
registers a :class:`BackboneFamily`.

Interface (what methods may use):

- ``backbone.text``: ``embed(ids)``, ``eot_positions(ids)``, ``run_blocks(x, length, before_block)``,
  ``final_norm(x)``, ``pool(x, eot)``, ``head(pooled)``, ``encode_embeddings(emb, eot, truncate, before_block)``,
  ``attention_modules()``, ``width``, ``num_layers``, ``context_length``, ``token_embedding``,
  ``positional_embedding``, ``ln_final``, ``cast_dtype``, ``causal_mask(length)``.
- ``backbone.vision``: ``embed_tokens(images)`` (patches + class token + positions, before the pre-norm),
  ``pre_norm(x)``, ``embed(images) = pre_norm(embed_tokens(images))``, ``run_blocks(x, before_block)``,
  ``head(x)``, ``encode(images, before_block)``, ``attention_modules()``, ``width``, ``num_layers``.
- ``backbone``: ``tokenize``, ``encode_text_ids``, ``encode_image``, ``logit_scale``, ``autocast``,
  ``attention_modules(tower)``, ``adapter_copy(towers)``, ``identity``, ``weights``, ``structure``, ``spec``,
  ``image_size/mean/std``, ``device``, ``precision``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RlptuneError
from .structure import backbone_structure, canonical_weights, hash_state, module_fingerprint


BlockHook = Callable[[int, torch.Tensor], torch.Tensor]
"""``before_block(i, x) -> x``: called with the batch-first hidden states (B, L, w) before transformer block i."""

TOWERS = ("text", "vision")


def run_transformer_blocks(
    transformer: nn.Module,
    x: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    before_block: BlockHook | None = None,
) -> torch.Tensor:
    """Run an open_clip ``Transformer`` on batch-first ``x``; with ``before_block``, block by block with the hook.

    Kept here for callers of rlptune 0.1; the open_clip towers in :mod:`.openclip` use it.
    """
    if before_block is None:
        return transformer(x, attn_mask=attn_mask)
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None:
        raise RlptuneError(
            f"backbone transformer {type(transformer).__name__} has no resblocks: per-layer prompts are not supported"
        )
    batch_first = getattr(transformer, "batch_first", True)
    for i, block in enumerate(blocks):
        x = before_block(i, x)
        if batch_first:
            x = block(x, attn_mask=attn_mask)
        else:
            x = block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
    return x


class TextTower:
    """A CLIP text tower driven from token embeddings instead of token ids (the interface; see subclasses).

    Subclasses provide the modules (``token_embedding``, ``positional_embedding``, ``ln_final``), the pooling rule
    (:meth:`eot_positions`), :meth:`causal_mask`, :meth:`run_blocks`, :meth:`head`, :meth:`attention_modules` and
    ``num_layers``; the encoding itself (:meth:`encode_embeddings`) is shared, so every library pools and projects
    the same way.
    """

    # -- provided by each library ---------------------------------------------------------------------------
    @property
    def token_embedding(self) -> nn.Embedding:
        raise NotImplementedError

    @property
    def positional_embedding(self) -> torch.Tensor:
        """The (context_length, d) positional embeddings (read through, never copied)."""
        raise NotImplementedError

    @property
    def ln_final(self) -> nn.Module:
        """The final LayerNorm applied before pooling."""
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks (the deepest layer a per-layer prompt can reach)."""
        raise NotImplementedError

    def eot_positions(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Index of the pooled (end-of-text) token of each row, exactly as the library's own pooling picks it."""
        raise NotImplementedError

    def causal_mask(self, length: int) -> torch.Tensor | None:
        """The additive (length, length) causal mask (``-inf`` above the diagonal), or None without one."""
        raise NotImplementedError

    def run_blocks(self, x: torch.Tensor, length: int, before_block: BlockHook | None = None) -> torch.Tensor:
        """Positional embeddings + the transformer blocks over the first ``length`` positions of x (B, L, d).

        ``before_block(i, x) -> x`` (optional) is called on the batch-first hidden states before block i, e.g. to
        replace prompt tokens layer by layer; it must keep the sequence length (the causal mask is fixed).
        """
        raise NotImplementedError

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """The text projection into the joint space (final norm already applied)."""
        raise NotImplementedError

    def attention_modules(self) -> list[nn.Module]:
        """The self-attention module of every block, in order (for adapters; see :meth:`Backbone.adapter_copy`)."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------------------
    @property
    def width(self) -> int:
        """Token-embedding width d (512 for ViT-B-16): the width of a prompt vector."""
        return int(self.token_embedding.embedding_dim)

    @property
    def context_length(self) -> int:
        return int(self.positional_embedding.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.token_embedding.weight.dtype

    @property
    def cast_dtype(self) -> torch.dtype:
        """The dtype token embeddings are cast to before the blocks (the blocks' weight dtype)."""
        return self.dtype

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, L, d) of token ids (B, L)."""
        return self.token_embedding(token_ids.to(self.device))

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_final(x)

    @staticmethod
    def pool(x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """The hidden state (B, d) at each row's end-of-text position."""
        return x[torch.arange(x.shape[0], device=x.device), eot.to(x.device)]

    def encode_embeddings(
        self, embeddings: torch.Tensor, eot: torch.Tensor, truncate: bool = True, before_block: BlockHook | None = None
    ) -> torch.Tensor:
        """Text features (B, e) from token embeddings (B, L, d) whose end-of-text tokens sit at ``eot`` (B,).

        With ``truncate`` the transformer runs only over the first 1 + max(eot) positions: under the causal mask
        no later token can influence the pooled one, so the result equals the full-length run (tested).
        ``before_block`` is passed to :meth:`run_blocks`.
        """
        eot = eot.to(embeddings.device)
        length = int(eot.max().item()) + 1 if truncate else embeddings.shape[1]
        x = self.run_blocks(embeddings, length, before_block)
        return self.head(self.pool(self.final_norm(x), eot))


class VisionTower:
    """A CLIP image transformer run from its own modules, with a hook between blocks (the interface).

    ``encode(images)`` equals the library's own image encoding (tested); ``encode(images, before_block)`` lets the
    hook append tokens before block 0 and replace them before later blocks (per-layer prompt tokens). Tokens a
    hook appends are dropped before pooling, so pooling sees exactly the image's own tokens. A method that must
    add tokens *before* the pre-norm (MaPLe's layer-0 vision prompts) calls :meth:`embed_tokens`, appends, then
    :meth:`pre_norm`, :meth:`run_blocks` and :meth:`head` on the image's own tokens.
    """

    @property
    def module(self) -> nn.Module:
        """The image tower's root module."""
        raise NotImplementedError

    @property
    def width(self) -> int:
        """Token width w of the image transformer (768 for ViT-B-16): the width of a visual prompt vector."""
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def embed_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens + class token + positional embeddings, before the pre-norm: (B, 1 + P, w)."""
        raise NotImplementedError

    def pre_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The norm applied to the tokens before block 0 (open_clip ``ln_pre``, HF ``pre_layrnorm``)."""
        raise NotImplementedError

    def run_blocks(self, x: torch.Tensor, before_block: BlockHook | None = None) -> torch.Tensor:
        raise NotImplementedError

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Pooling (the tower's own), final norm and projection: unnormalised image features (B, e)."""
        raise NotImplementedError

    def attention_modules(self) -> list[nn.Module]:
        """The self-attention module of every block, in order (for adapters)."""
        raise NotImplementedError

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The input of block 0: ``pre_norm(embed_tokens(images))``, (B, 1 + P, w)."""
        return self.pre_norm(self.embed_tokens(images))

    def encode(self, images: torch.Tensor, before_block: BlockHook | None = None) -> torch.Tensor:
        """Unnormalised image features (B, e); tokens appended by ``before_block`` are dropped before pooling."""
        x = self.embed(images)
        own = x.shape[1]
        x = self.run_blocks(x, before_block)
        return self.head(x[:, :own])


class BackboneFamily:
    """How one model library's CLIP is seen through the interface (open_clip, Hugging Face transformers).

    A family builds the towers of a model, runs the library's own reference encoders (what the tower path is tested
    against) and readies a model copy for adapters. Register a new library's family with a loader
    (:func:`rlptune.backbones.register_backbone_loader`) and no method changes.
    """

    name = "family"

    def text_tower(self, model: nn.Module) -> TextTower:
        raise NotImplementedError

    def vision_tower(self, model: nn.Module) -> VisionTower:
        raise NotImplementedError

    def encode_text(self, model: nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
        """The library's own text encoder (unnormalised features)."""
        raise NotImplementedError

    def encode_image(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The library's own image encoder (unnormalised features)."""
        raise NotImplementedError

    def logit_scale(self, model: nn.Module) -> torch.Tensor:
        return model.logit_scale.detach().exp()

    def prepare_for_adapters(self, model: nn.Module, towers: Sequence[str]) -> None:
        """Make the attention modules of ``towers`` expose ``q_proj``/``k_proj``/``v_proj``/``out_proj`` as
        ``nn.Linear`` (in a model copy that shares the weights); a no-op where they already do."""

    def structure(self, model: nn.Module) -> dict[str, Any]:
        """The canonical description of the towers (see :mod:`.identity`): equal for two libraries' modules
        exactly when they compute the same function. This default describes the module tree as printed, so a
        family that does not override it is the same backbone only as itself."""
        return {"model": f"{self.name}:{module_fingerprint(model)}"}

    def from_canonical_state(
        self, state: dict[str, torch.Tensor], structure: dict[str, Any]
    ) -> dict[str, torch.Tensor] | None:
        """A canonical state dict under this library's names (the inverse of :meth:`canonical_state_dict`), or
        None where this library cannot hold it: how an identity hashed by older rlptune under another library's
        names is recognised."""
        return None

    def attention_block(self, name: str) -> tuple[str, int] | None:
        """(tower, block index) of the attention module this library names ``name`` in a model, else None: how an
        adapter that names modules (CLIP-LoRA) finds its blocks in another library's model of the same CLIP."""
        return None

    def canonical_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The weights under OpenAI CLIP's names and layout (what the identity hashes), so the same tensors hash
        the same in every library; this default keeps the library's own names."""
        return model.state_dict()


def structural_copy(model: nn.Module) -> nn.Module:
    """A new module tree that shares every parameter and buffer (the same tensors) with ``model``."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


@dataclass
class Backbone:
    """A loaded CLIP with its tokenizer, transforms settings and identity.

    ``identity`` (architecture + a hash of the weights) is the label adapters record, so that an adapter is never
    silently applied to other weights; ``weights`` (the full canonical hash) and ``structure`` (the towers'
    canonical description) are what identifies the backbone however it was spelled (see :mod:`.identity`);
    ``spec`` is a resolvable spec (absolute paths) that loads it again.
    """

    model: nn.Module
    tokenizer: Callable[..., torch.Tensor]
    arch: str
    identity: str
    image_size: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    spec: str = ""
    precision: str = "fp32"
    info: dict[str, Any] = field(default_factory=dict)
    family: BackboneFamily | None = None
    weights: str = ""
    structure: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family is None:
            raise RlptuneError(
                "Backbone needs its family (how its library's towers are read); build it with load_backbone"
            )
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.text = self.family.text_tower(self.model)
        if not self.weights:  # finish_backbone computes it before moving the model; direct constructions here
            self.weights = canonical_weights(self.model, self.family)
        if not self.structure:
            self.structure = backbone_structure(self.model, self.family, self.tokenizer, self.text)

    # -- settings -------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.text.device

    @property
    def embed_dim(self) -> int:
        """Width of the joint image–text space."""
        return int(self.encode_text_ids(self.tokenize(["x"])).shape[-1])

    def to(self, device: str | torch.device) -> "Backbone":
        self.model.to(device)
        return self

    def with_precision(self, precision: str) -> "Backbone":
        """This backbone run in ``precision`` (fp32, bf16 or fp16): itself when it already is, else a view that
        shares the model (no copy of a weight) and differs only in its autocast, identity unchanged."""
        if precision == self.precision:
            return self
        if precision not in ("fp32", "bf16", "fp16"):
            raise RlptuneError(f"backbone precision {precision!r} is not supported: expected fp32, bf16 or fp16")
        view = copy.copy(self)  # not dataclasses.replace: __post_init__ would freeze adapters injected into the model
        view.precision = precision
        view.info = {**self.info, "precision_requested": precision}
        return view

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision per the ``precision`` setting: bf16/fp16 autocast, nothing on fp32 (the weights stay fp32;
        rlptune.backbones.precision decides what ``auto`` means on each device)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.family.logit_scale(self.model)

    # -- text ----------------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)

    def encode_text_ids(self, token_ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """The library's own text encoder (the reference the prompted path is tested against)."""
        with self.autocast():
            feats = self.family.encode_text(self.model, token_ids.to(self.device))
        return F.normalize(feats.float(), dim=-1) if normalize else feats.float()

    # -- images --------------------------------------------------------------------------------------------
    @property
    def vision(self) -> VisionTower:
        """The image tower as a :class:`VisionTower` (raises RlptuneError for towers without tokens)."""
        return self.family.vision_tower(self.model)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        model = self._frozen_encoder() if self.precision != "fp32" and self.device.type == "cpu" else self.model
        with self.autocast():
            feats = self.family.encode_image(model, images.to(self.device))
        return F.normalize(feats.float(), dim=-1) if normalize else feats.float()

    def _frozen_encoder(self) -> nn.Module:
        """The model to run a gradient-free low-precision CPU pass through: a twin whose parameters are the same
        storage marked ``requires_grad`` (no copy of a weight).

        Why: with frozen weights, ``torch.matmul`` of a non-contiguous 3-D input (the attention in-projection of a
        batch-first transformer) does not fold the batch and instead expands the weight into a batched matmul;
        under CPU bf16 autocast that copies every weight once per token position, which made the bf16 image tower
        slower than fp32 (0.77 against 0.13 s/image on a random ViT-B-16, one thread). A weight that requires grad
        is folded into one matmul. Inside ``torch.no_grad`` nothing is recorded, and the twin is never trained.
        The model itself is left as it is (its flags decide what trains); the twin is rebuilt when the model's
        parameters change (adapters injected, or one set trainable), and not used while any of them trains or
        forward hooks are registered (a method prompting the tower works through the model itself)."""
        if torch.is_grad_enabled():
            return self.model
        params = list(self.model.parameters())
        if any(p.requires_grad for p in params) or any(
            m._forward_hooks or m._forward_pre_hooks for m in self.model.modules()
        ):
            return self.model
        key = tuple(id(p) for p in params)
        cached = getattr(self, "_frozen_encoder_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        memo: dict[int, Any] = {id(p): nn.Parameter(p.detach(), requires_grad=True) for p in params}
        memo.update({id(b): b for b in self.model.buffers()})
        twin = copy.deepcopy(self.model, memo)
        self._frozen_encoder_cache = (key, twin)
        return twin

    # -- adapters ------------------------------------------------------------------------------------------
    def tower(self, name: str) -> TextTower | VisionTower:
        if name not in TOWERS:
            raise RlptuneError(f"backbone tower {name!r}: expected one of {', '.join(TOWERS)}")
        return self.text if name == "text" else self.vision

    def attention_modules(self, tower: str) -> list[tuple[str, nn.Module]]:
        """(name in ``model``, module) of the self-attention of every block of ``tower`` ('text' or 'vision').

        On a copy from :meth:`adapter_copy` every module has ``q_proj``/``k_proj``/``v_proj``/``out_proj``
        ``nn.Linear`` children, so an adapter library targets ``f"{name}.q_proj"`` whatever the model library.
        """
        modules = self.tower(tower).attention_modules()
        names = {id(m): name for name, m in self.model.named_modules()}
        return [(names[id(m)], m) for m in modules]

    def adapter_copy(self, towers: Sequence[str] = TOWERS) -> "Backbone":
        """A backbone sharing every weight with this one (no copy of the data) whose attention modules in
        ``towers`` expose separate q/k/v/out ``nn.Linear`` projections: adapters injected into it leave this
        backbone (and its weight hash) untouched."""
        clone = dataclasses.replace(self, model=structural_copy(self.model), info=dict(self.info))
        clone.family.prepare_for_adapters(clone.model, towers)
        clone.text = clone.family.text_tower(clone.model)
        return clone


def weights_hash(model: nn.Module) -> str:
    """SHA-256 over the state dict under the library's own names (sorted names, shapes, fp32 bytes): stable across
    devices and file formats. The identity hashes the canonical naming instead (:attr:`Backbone.weights`)."""
    return hash_state(model.state_dict())
