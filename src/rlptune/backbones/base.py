"""The backbone interface: a loaded CLIP seen through two small doors, the text tower and the image tower.

Methods never reach into open_clip internals: they get a :class:`Backbone` whose :class:`TextTower` accepts token
embeddings with prompt vectors already spliced in and otherwise runs exactly open_clip's own text tower (positional
embeddings, causal mask, final norm, pooling at the end-of-text token, projection), using the model's own modules
and weights. Nothing here knows any tuning method exists.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RlptuneError


BlockHook = Callable[[int, torch.Tensor], torch.Tensor]
"""``before_block(i, x) -> x``: called with the batch-first hidden states (B, L, w) before transformer block i."""


def run_transformer_blocks(
    transformer: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None, before_block: BlockHook | None = None
) -> torch.Tensor:
    """Run an open_clip ``Transformer`` on batch-first ``x``; with ``before_block``, block by block with the hook.

    Without a hook this is ``transformer(x, attn_mask=...)`` itself. With one, the transformer's own blocks
    (``resblocks``) run in order, exactly as its ``forward`` does, and ``before_block(i, x)`` may edit or extend
    the hidden states before block i (always given and returned batch-first).
    """
    if before_block is None:
        return transformer(x, attn_mask=attn_mask)
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None:
        raise RlptuneError(f"backbone transformer {type(transformer).__name__} has no resblocks: per-layer prompts are not supported")
    batch_first = getattr(transformer, "batch_first", True)
    for i, block in enumerate(blocks):
        x = before_block(i, x)
        if batch_first:
            x = block(x, attn_mask=attn_mask)
        else:
            x = block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
    return x


class TextTower:
    """Open_clip's text tower, driven from token embeddings instead of token ids.

    Works for both of open_clip's layouts: ``CLIP`` (text modules attached to the model) and ``CustomTextCLIP``
    (a ``TextTransformer`` under ``model.text``). Pooling at the end-of-text token is exact for the ``argmax`` and
    ``eos`` pool types; other text towers (CoCa's class token, HF text models) are refused with a clear error.
    """

    def __init__(self, model: nn.Module) -> None:
        owner = getattr(model, "text", None)
        if owner is None or not hasattr(owner, "token_embedding"):
            owner = model
        for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final"):
            if not hasattr(owner, attr):
                raise RlptuneError(f"backbone text tower has no {attr!r}: only open_clip transformer text towers are supported")
        if getattr(owner, "cls_emb", None) is not None:
            raise RlptuneError("backbone text tower appends a class token (CoCa-style); prompt injection needs EOT pooling")
        pool = getattr(owner, "text_pool_type", getattr(owner, "pool_type", "argmax"))
        if pool not in ("argmax", "eos"):
            raise RlptuneError(f"backbone text pool type {pool!r} is not supported: expected 'argmax' or 'eos'")
        if getattr(owner, "use_pad_mask", False):
            raise RlptuneError("backbone text tower uses a padding mask; only causal-mask text towers are supported")
        self._owner = owner
        self.pool_type = pool
        self.eos_id = getattr(owner, "text_eos_id", getattr(owner, "eos_id", None))

    # -- the modules, read through (never copied) so that .to(device) on the model is seen here ---------------
    @property
    def token_embedding(self) -> nn.Embedding:
        return self._owner.token_embedding

    @property
    def transformer(self) -> nn.Module:
        return self._owner.transformer

    @property
    def width(self) -> int:
        """Token-embedding width d (512 for ViT-B-16): the width of a prompt vector."""
        return int(self.token_embedding.embedding_dim)

    @property
    def positional_embedding(self) -> torch.Tensor:
        """The (context_length, d) positional embeddings (read through, never copied)."""
        return self._owner.positional_embedding

    @property
    def ln_final(self) -> nn.Module:
        """The final LayerNorm applied before pooling."""
        return self._owner.ln_final

    @property
    def cast_dtype(self) -> torch.dtype:
        """The dtype open_clip casts token embeddings to before the blocks (the blocks' weight dtype)."""
        t = self.transformer
        return t.get_cast_dtype() if hasattr(t, "get_cast_dtype") else self.dtype

    @property
    def context_length(self) -> int:
        return int(self._owner.positional_embedding.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.token_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, L, d) of token ids (B, L)."""
        return self.token_embedding(token_ids.to(self.device))

    def eot_positions(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Index of the pooled (end-of-text) token of each row, exactly as open_clip's pooling picks it."""
        if self.pool_type == "eos" and self.eos_id is not None:
            return (token_ids == self.eos_id).int().argmax(dim=-1)
        return token_ids.argmax(dim=-1)

    def causal_mask(self, length: int) -> torch.Tensor | None:
        mask = getattr(self._owner, "attn_mask", None)
        return None if mask is None else mask[:length, :length]

    def run_blocks(self, x: torch.Tensor, length: int, before_block: BlockHook | None = None) -> torch.Tensor:
        """Positional embeddings + the transformer blocks over the first ``length`` positions of x (B, L, d).

        ``before_block(i, x) -> x`` (optional) is called on the batch-first hidden states before block i, e.g. to
        replace prompt tokens layer by layer; it must keep the sequence length (the causal mask is fixed).
        """
        cast = self.transformer.get_cast_dtype() if hasattr(self.transformer, "get_cast_dtype") else x.dtype
        x = x[:, :length].to(cast) + self._owner.positional_embedding[:length].to(cast)
        return run_transformer_blocks(self.transformer, x, self.causal_mask(length), before_block)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm already applied; the text projection into the joint space."""
        proj = getattr(self._owner, "text_projection", None)
        if proj is None:
            return pooled
        if isinstance(proj, nn.Linear):
            return proj(pooled)
        return pooled @ proj

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
        x = self._owner.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot]
        return self.head(pooled)


class VisionTower:
    """Open_clip's ``VisionTransformer`` run from its own modules, with a hook between blocks.

    ``encode(images)`` equals ``model.encode_image(images)`` (tested); ``encode(images, before_block)`` lets the
    hook append tokens before block 0 and replace them before later blocks (per-layer prompt tokens). Tokens a
    hook appends are dropped before pooling, so pooling (class token, average or attentional) sees exactly the
    image's own tokens. Towers without a token sequence (``ModifiedResNet``, timm towers) are refused.
    """

    _REQUIRED = ("conv1", "class_embedding", "positional_embedding", "transformer", "_embeds", "_pool")

    def __init__(self, model: nn.Module) -> None:
        visual = getattr(model, "visual", None)
        missing = [a for a in self._REQUIRED if not hasattr(visual, a)] if visual is not None else ["visual"]
        if missing or not hasattr(visual.transformer, "resblocks"):
            name = type(visual).__name__ if visual is not None else "none"
            raise RlptuneError(
                f"backbone image tower {name} has no token transformer: prompts or adapters in the image tower need "
                f"an open_clip VisionTransformer (ViT); use a ViT backbone or a text-only method"
            )
        self._visual = visual

    @property
    def module(self) -> nn.Module:
        return self._visual

    @property
    def width(self) -> int:
        """Token width w of the image transformer (768 for ViT-B-16): the width of a visual prompt vector."""
        return int(self._visual.class_embedding.shape[-1])

    @property
    def num_layers(self) -> int:
        return len(self._visual.transformer.resblocks)

    @property
    def device(self) -> torch.device:
        return self._visual.class_embedding.device

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens + class token + positional embeddings (+ ln_pre): the input of block 0, (B, 1 + P, w)."""
        return self._visual._embeds(images.to(self.device))

    def run_blocks(self, x: torch.Tensor, before_block: BlockHook | None = None) -> torch.Tensor:
        return run_transformer_blocks(self._visual.transformer, x, None, before_block)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Pooling (the tower's own), final norm and projection: unnormalised image features (B, e)."""
        pooled, _ = self._visual._pool(x)
        proj = getattr(self._visual, "proj", None)
        return pooled @ proj if proj is not None else pooled

    def encode(self, images: torch.Tensor, before_block: BlockHook | None = None) -> torch.Tensor:
        """Unnormalised image features (B, e); tokens appended by ``before_block`` are dropped before pooling."""
        x = self.embed(images)
        own = x.shape[1]
        x = self.run_blocks(x, before_block)
        return self.head(x[:, :own])


@dataclass
class Backbone:
    """A loaded CLIP with its tokenizer, transforms and identity.

    ``identity`` (architecture + a hash of the weights) is what adapters record, so that an adapter is never
    silently applied to other weights.
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

    def __post_init__(self) -> None:
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.text = TextTower(self.model)

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

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision per the ``precision`` setting: bf16/fp16 autocast on GPU, nothing on fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach().exp()

    # -- text ----------------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)

    def encode_text_ids(self, token_ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Open_clip's own ``encode_text`` (the reference the prompted path is tested against)."""
        with self.autocast():
            feats = self.model.encode_text(token_ids.to(self.device))
        return F.normalize(feats.float(), dim=-1) if normalize else feats.float()

    # -- images --------------------------------------------------------------------------------------------
    @property
    def vision(self) -> VisionTower:
        """The image tower as a :class:`VisionTower` (raises RlptuneError for towers without tokens)."""
        return VisionTower(self.model)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        with self.autocast():
            feats = self.model.encode_image(images.to(self.device))
        return F.normalize(feats.float(), dim=-1) if normalize else feats.float()


def weights_hash(model: nn.Module) -> str:
    """SHA-256 over the state dict (sorted names, shapes, fp32 bytes): stable across devices and file formats."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not torch.is_floating_point(tensor) and tensor.dtype not in (torch.int64, torch.int32):
            continue
        t = tensor.detach().to("cpu")
        if torch.is_floating_point(t):
            t = t.float()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()
