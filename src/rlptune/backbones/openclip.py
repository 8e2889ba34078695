"""open_clip's CLIP seen through the backbone interface (its own modules and weights; nothing forked or patched).

Both of open_clip's layouts are read: ``CLIP`` (text modules attached to the model) and ``CustomTextCLIP`` (a
``TextTransformer`` under ``model.text``). Pooling at the end-of-text token is exact for the ``argmax`` and ``eos``
pool types; other text towers (CoCa's class token, padding masks) are refused with a clear error, as are image
towers without a token sequence (``ModifiedResNet``) where per-block access is asked for.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RlptuneError
from .base import BackboneFamily, BlockHook, TextTower, VisionTower, run_transformer_blocks
from .structure import activation_name, merge_blocks, module_fingerprint, norm_name, pooling_name


class OpenClipTextTower(TextTower):
    """open_clip's text tower driven from token embeddings."""

    def __init__(self, model: nn.Module) -> None:
        owner = getattr(model, "text", None)
        if owner is None or not hasattr(owner, "token_embedding"):
            owner = model
        for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final"):
            if not hasattr(owner, attr):
                raise RlptuneError(
                    f"backbone text tower has no {attr!r}: only open_clip transformer text towers are supported"
                )
        if getattr(owner, "cls_emb", None) is not None:
            raise RlptuneError(
                "backbone text tower appends a class token (CoCa-style); prompt injection needs EOT pooling"
            )
        pool = getattr(owner, "text_pool_type", getattr(owner, "pool_type", "argmax"))
        if pool not in ("argmax", "eos"):
            raise RlptuneError(f"backbone text pool type {pool!r} is not supported: expected 'argmax' or 'eos'")
        if getattr(owner, "use_pad_mask", False):
            raise RlptuneError("backbone text tower uses a padding mask; only causal-mask text towers are supported")
        self._owner = owner
        self.pool_type = pool
        self.eos_id = getattr(owner, "text_eos_id", getattr(owner, "eos_id", None))

    # the modules, read through (never copied) so that .to(device) on the model is seen here
    @property
    def token_embedding(self) -> nn.Embedding:
        return self._owner.token_embedding

    @property
    def transformer(self) -> nn.Module:
        """open_clip's ``Transformer`` (``resblocks``): the shared-prefix text path reads its blocks."""
        return self._owner.transformer

    @property
    def positional_embedding(self) -> torch.Tensor:
        return self._owner.positional_embedding

    @property
    def ln_final(self) -> nn.Module:
        return self._owner.ln_final

    @property
    def num_layers(self) -> int:
        return len(self.transformer.resblocks)

    @property
    def cast_dtype(self) -> torch.dtype:
        t = self.transformer
        return t.get_cast_dtype() if hasattr(t, "get_cast_dtype") else self.dtype

    def eot_positions(self, token_ids: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "eos" and self.eos_id is not None:
            return (token_ids == self.eos_id).int().argmax(dim=-1)
        return token_ids.argmax(dim=-1)

    def causal_mask(self, length: int) -> torch.Tensor | None:
        mask = getattr(self._owner, "attn_mask", None)
        return None if mask is None else mask[:length, :length]

    def run_blocks(self, x: torch.Tensor, length: int, before_block: BlockHook | None = None) -> torch.Tensor:
        cast = self.cast_dtype
        x = x[:, :length].to(cast) + self._owner.positional_embedding[:length].to(cast)
        return run_transformer_blocks(self.transformer, x, self.causal_mask(length), before_block)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        proj = getattr(self._owner, "text_projection", None)
        if proj is None:
            return pooled
        if isinstance(proj, nn.Linear):
            return proj(pooled)
        return pooled @ proj

    def attention_modules(self) -> list[nn.Module]:
        return [block.attn for block in self.transformer.resblocks]


class OpenClipVisionTower(VisionTower):
    """open_clip's ``VisionTransformer`` run from its own modules."""

    _REQUIRED = ("conv1", "class_embedding", "positional_embedding", "transformer", "ln_pre", "_pool")

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
        return int(self._visual.class_embedding.shape[-1])

    @property
    def num_layers(self) -> int:
        return len(self._visual.transformer.resblocks)

    @property
    def device(self) -> torch.device:
        return self._visual.class_embedding.device

    def embed_tokens(self, images: torch.Tensor) -> torch.Tensor:
        v = self._visual
        x = v.conv1(images.to(self.device))  # (B, w, grid, grid)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, P, w)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        return v.patch_dropout(x)  # identity unless patch dropout is configured and training

    def pre_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self._visual.ln_pre(x)

    def run_blocks(self, x: torch.Tensor, before_block: BlockHook | None = None) -> torch.Tensor:
        return run_transformer_blocks(self._visual.transformer, x, None, before_block)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        pooled, _ = self._visual._pool(x)
        proj = getattr(self._visual, "proj", None)
        return pooled @ proj if proj is not None else pooled

    def attention_modules(self) -> list[nn.Module]:
        return [block.attn for block in self._visual.transformer.resblocks]


class SplitAttention(nn.Module):
    """``nn.MultiheadAttention``'s forward with separate q/k/v/out ``nn.Linear`` projections.

    open_clip's blocks use ``nn.MultiheadAttention``, whose q/k/v projection is one fused ``in_proj_weight``
    parameter fed straight to ``F.multi_head_attention_forward``: an adapter library cannot wrap q, k and v
    separately. This module computes the same attention (scaled dot-product, same masks, same heads) with
    ``q_proj``/``k_proj``/``v_proj``/``out_proj`` whose weights are *views* of the original frozen tensors (no copy,
    equal to float rounding, tested). Supports what open_clip's blocks use: self/cross attention with equal
    embedding dims, additive or boolean ``attn_mask``, ``need_weights=False``.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not getattr(mha, "_qkv_same_embed_dim", True) or mha.bias_k is not None or mha.add_zero_attn:
            raise RlptuneError(
                "attention with separate k/v dims, bias_k/bias_v or add_zero_attn cannot be split for adapters"
            )
        d = mha.embed_dim
        self.embed_dim, self.num_heads, self.batch_first = d, mha.num_heads, mha.batch_first
        self.dropout = float(mha.dropout)
        weight, bias = mha.in_proj_weight, mha.in_proj_bias
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            linear = nn.Linear(d, d, bias=bias is not None, device="meta")
            linear.weight = nn.Parameter(weight.detach()[i * d : (i + 1) * d], requires_grad=False)
            if bias is not None:
                linear.bias = nn.Parameter(bias.detach()[i * d : (i + 1) * d], requires_grad=False)
            setattr(self, name, linear)
        out = nn.Linear(d, d, bias=mha.out_proj.bias is not None, device="meta")
        out.weight = nn.Parameter(mha.out_proj.weight.detach(), requires_grad=False)
        if mha.out_proj.bias is not None:
            out.bias = nn.Parameter(mha.out_proj.bias.detach(), requires_grad=False)
        self.out_proj = out

    def forward(self, query, key=None, value=None, key_padding_mask=None, need_weights=False, attn_mask=None, **kwargs):
        if key_padding_mask is not None or need_weights:
            raise RlptuneError("split attention: key_padding_mask / need_weights are not supported")
        key = query if key is None else key
        value = key if value is None else value
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        batch, q_len, _ = query.shape
        heads, head_dim = self.num_heads, self.embed_dim // self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, heads, head_dim).transpose(1, 2)

        q, k, v = split(self.q_proj(query)), split(self.k_proj(key)), split(self.v_proj(value))
        mask = attn_mask
        if mask is not None and mask.dtype == torch.bool:  # MultiheadAttention: True = not allowed
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(mask, float("-inf"))
        elif mask is not None:
            mask = mask.to(q.dtype)
        if mask is not None and mask.dim() == 3:  # (B·heads, L, S) as MultiheadAttention takes it
            mask = mask.view(batch, heads, mask.shape[-2], mask.shape[-1])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, q_len, self.embed_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None


class OpenClipFamily(BackboneFamily):
    name = "open_clip"

    def text_tower(self, model: nn.Module) -> TextTower:
        return OpenClipTextTower(model)

    def vision_tower(self, model: nn.Module) -> VisionTower:
        return OpenClipVisionTower(model)

    def encode_text(self, model: nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
        return model.encode_text(token_ids)

    def encode_image(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return model.encode_image(images)

    def prepare_for_adapters(self, model: nn.Module, towers: Sequence[str]) -> None:
        """Replace each fused ``nn.MultiheadAttention`` of ``towers`` by a :class:`SplitAttention` view of it."""
        for tower in towers:
            try:
                blocks = list(self.text_tower(model).transformer.resblocks) if tower == "text" else None
                if tower == "vision":
                    blocks = list(self.vision_tower(model).module.transformer.resblocks)
            except RlptuneError:
                blocks = []
            attention = [b for b in blocks if isinstance(getattr(b, "attn", None), nn.MultiheadAttention)]
            if not attention and not any(isinstance(getattr(b, "attn", None), SplitAttention) for b in blocks):
                kind = type(getattr(model, "visual", None)).__name__ if tower == "vision" else "text transformer"
                raise RlptuneError(f"the {tower} tower ({kind}) has no nn.MultiheadAttention blocks to adapt")
            for block in attention:
                block.attn = SplitAttention(block.attn)

    # -- identity ---------------------------------------------------------------------------------------------
    def structure(self, model: nn.Module) -> dict[str, Any]:
        """The towers' canonical description (:mod:`.identity`), read from open_clip's modules."""
        return {"text": _text_structure(model), "vision": _vision_structure(getattr(model, "visual", None))}

    def from_canonical_state(
        self, state: dict[str, torch.Tensor], structure: dict[str, Any]
    ) -> dict[str, torch.Tensor] | None:
        return state  # open_clip's CLIP keeps OpenAI's names

    _ATTENTION = re.compile(
        r"^(?:(?P<text>(?:text\.)?transformer)|(?P<vision>visual\.transformer))\.resblocks\.(?P<i>\d+)\.attn$"
    )

    def attention_block(self, name: str) -> tuple[str, int] | None:
        found = self._ATTENTION.match(name)
        return None if found is None else ("text" if found["text"] else "vision", int(found["i"]))

    def canonical_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``CLIP``'s state dict is already in OpenAI's names; ``CustomTextCLIP`` with a transformer text tower
        keeps it under ``text.``, which is dropped (open_clip converts the other way when loading)."""
        state = model.state_dict()
        text = getattr(model, "text", None)
        if text is not None and hasattr(text, "token_embedding") and not hasattr(model, "token_embedding"):
            state = {k[len("text.") :] if k.startswith("text.") else k: v for k, v in state.items()}
        return state


def _block_structure(block: nn.Module) -> dict[str, Any]:
    """One transformer block: heads, MLP width, activation, norms; a block of another shape by its modules."""
    attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
    standard = (
        type(block).__name__ == "ResidualAttentionBlock"
        and isinstance(attn, (nn.MultiheadAttention, SplitAttention))
        and isinstance(mlp, nn.Sequential)
        and [n for n, _ in mlp.named_children()] == ["c_fc", "gelu", "c_proj"]
        and not hasattr(block, "ln_1_kv")
    )
    if not standard:
        return {"block": module_fingerprint(block)}
    out = {
        "heads": int(attn.num_heads),
        "mlp_width": int(mlp.c_fc.out_features),
        "activation": activation_name(mlp.gelu),
        "norm": norm_name(block.ln_1)
        if norm_name(block.ln_1) == norm_name(block.ln_2)
        else [norm_name(block.ln_1), norm_name(block.ln_2)],
    }
    if not (isinstance(block.ls_1, nn.Identity) and isinstance(block.ls_2, nn.Identity)):
        out["layer_scale"] = True
    return out


def _projection(proj) -> list[int] | None:
    """(in, out) of a projection applied as ``x @ P`` (a parameter) or an ``nn.Linear``."""
    if proj is None:
        return None
    if isinstance(proj, nn.Linear):
        return [int(proj.in_features), int(proj.out_features)]
    return [int(n) for n in proj.shape]


def _text_structure(model: nn.Module) -> dict[str, Any]:
    try:
        tower = OpenClipTextTower(model)
    except RlptuneError:
        text = getattr(model, "text", None)
        return {"tower": module_fingerprint(text) if text is not None else None}
    owner = tower._owner
    vocab = int(owner.token_embedding.num_embeddings)
    return {
        "tower": "transformer",
        "vocab_size": vocab,
        "context_length": int(owner.positional_embedding.shape[0]),
        "width": int(owner.token_embedding.embedding_dim),
        **merge_blocks([_block_structure(b) for b in tower.transformer.resblocks]),
        "causal": getattr(owner, "attn_mask", None) is not None,
        "pool": pooling_name(tower.pool_type, tower.eos_id, vocab),
        "final_norm": norm_name(owner.ln_final),
        "projection": _projection(getattr(owner, "text_projection", None)),
    }


def _vision_structure(visual: nn.Module | None) -> dict[str, Any]:
    if visual is None:
        return {"tower": None}
    if type(visual).__name__ == "ModifiedResNet":  # OpenAI's ResNet: fixed blocks, described by its sizes
        return {
            "tower": "modified_resnet",
            "image_size": int(visual.image_size),
            "width": int(visual.conv3.out_channels),
            "layers": [len(getattr(visual, f"layer{i}")) for i in range(1, 5)],
            "heads": int(visual.attnpool.num_heads),
            "output_dim": int(visual.output_dim),
        }
    if type(visual).__name__ != "VisionTransformer" or not hasattr(visual, "conv1"):
        out: dict[str, Any] = {"tower": module_fingerprint(visual)}
        for attr in ("image_size", "output_dim"):
            if isinstance(getattr(visual, attr, None), (int, tuple, list)):
                value = getattr(visual, attr)
                out[attr] = list(value) if isinstance(value, (tuple, list)) else int(value)
        heads = getattr(getattr(visual, "attnpool", None), "num_heads", None)
        if heads is not None:
            out["heads"] = int(heads)
        return out
    size = visual.image_size
    size = [int(n) for n in size] if isinstance(size, (tuple, list)) else [int(size)] * 2
    conv = visual.conv1
    out = {
        "tower": "vit",
        "image_size": size,
        "patch_size": [int(n) for n in conv.kernel_size],
        "width": int(visual.class_embedding.shape[-1]),
        **merge_blocks([_block_structure(b) for b in visual.transformer.resblocks]),
        "pre_norm": norm_name(visual.ln_pre),
        "pool": _vision_pool(visual),
        "post_norm": norm_name(visual.ln_post),
        "projection": _projection(getattr(visual, "proj", None)),
    }
    if tuple(conv.stride) != tuple(conv.kernel_size) or conv.padding not in ((0, 0), 0, "valid"):
        out["patch_stride"] = [int(n) for n in conv.stride]
    return out


def _vision_pool(visual: nn.Module) -> str:
    """The pooled token: ``cls`` for the class token (the final norm acts per token, so before or after pooling
    is the same function), ``avg`` with where the norm sits, else the attentional pooler by its modules."""
    if getattr(visual, "attn_pool", None) is not None:
        return f"attentional:{module_fingerprint(visual.attn_pool)}"
    pool = getattr(visual, "pool_type", "tok")
    if pool == "tok":
        return "cls"
    if pool == "avg":
        return (
            "avg, norm after pooling" if getattr(visual, "final_ln_after_pool", False) else "avg, norm before pooling"
        )
    return str(pool)


OPEN_CLIP = OpenClipFamily()
