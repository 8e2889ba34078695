"""Shared-prefix (prefix-cached) text encoding: the context shared by all classes is encoded once per step.

With the class token at the end, every class prompt starts with the same tokens, ``[SOS] [ctx₁ … ctxₙ]`` (and any
fixed words after the context, e.g. "of a" after a 2-token context initialised from "a photo of a"). Under
the causal mask a token only sees earlier tokens, so the hidden states of that prefix are identical for every
class at every layer. This module computes them once (a batch of one sequence, P = 1 + n tokens) and runs only
each class's own tokens (name, full stop, end-of-text: S_c tokens) through the blocks, letting them attend to the
cached prefix keys and values, exactly as prefix/KV caching does in language-model serving. A step then costs
about P + Σ_c S_c token-layers instead of C · (P + S) and the attention scores are (S × (P + S)) per class.
Gradients flow back into the prefix (and so into the context) through the cached keys and values. Deep text
prompts, which replace the context positions before each of the first J blocks, only touch the prefix: the
``before_block`` hook of :func:`encode_prefix` applies them there, and the class tokens see them through the cache.

It runs the backbone's own modules and weights: for each open_clip ``ResidualAttentionBlock`` it calls ``ln_1``,
the attention's ``in_proj_weight``/``in_proj_bias`` and ``out_proj``, ``ls_1``, ``ln_2``, ``mlp`` and ``ls_2``
— the same computations in the same order as the block's ``forward`` — and nothing in open_clip is forked or
patched. Block types it does not know (``CustomResidualAttentionBlock``, cross-attention blocks, attention with
bias_k/bias_v or zero-attention, towers without a causal mask) are refused by :func:`unsupported_reason`, and the
caller falls back to the plain path. Equality with the plain path and with ``encode_text`` (within 1e-5, forward
and gradient) is tested in ``tests/test_speed_shared_prefix.py``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ClassPack",
    "PrefixCache",
    "encode_classes",
    "encode_pack",
    "encode_prefix",
    "encode_suffix",
    "pack_classes",
    "unsupported_reason",
]


def _block_class():
    try:
        from open_clip.transformer import ResidualAttentionBlock
    except ImportError:  # pragma: no cover - open_clip is a dependency
        return None
    return ResidualAttentionBlock


def unsupported_reason(tower) -> str | None:
    """Why the shared-prefix path cannot run on this text tower (``None`` when it can)."""
    transformer = tower.transformer
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None or len(blocks) == 0:
        return "the text transformer has no resblocks"
    block_cls = _block_class()
    for i, block in enumerate(blocks):
        if block_cls is None or type(block) is not block_cls:
            return f"text block {i} is a {type(block).__name__}, not open_clip's ResidualAttentionBlock"
        if hasattr(block, "ln_1_kv"):
            return f"text block {i} is a cross-attention block"
        attn = block.attn
        if not isinstance(attn, nn.MultiheadAttention):
            return f"text block {i} attention is a {type(attn).__name__}, not nn.MultiheadAttention"
        if not attn._qkv_same_embed_dim or attn.in_proj_weight is None:
            return f"text block {i} attention has separate q/k/v projections"
        if attn.bias_k is not None or attn.bias_v is not None or attn.add_zero_attn:
            return f"text block {i} attention adds bias_k/bias_v or zero attention"
        for name in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2"):
            if not hasattr(block, name):
                return f"text block {i} has no {name}"
    mask = tower.causal_mask(tower.context_length)
    if mask is None:
        return "the text tower has no causal mask"
    mask = mask.detach().float().cpu()
    upper = torch.triu(torch.ones_like(mask, dtype=torch.bool), diagonal=1)
    if not (torch.isneginf(mask[upper]).all() and (mask[~upper] == 0).all()):
        return "the text tower's attention mask is not the plain causal mask"
    return None


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, d) → (H, B, L, d/H)."""
    b, length, d = x.shape
    return x.view(b, length, heads, d // heads).permute(2, 0, 1, 3)


class PrefixCache:
    """Per-layer keys and values (H, B, P, d/H) of B shared prefixes (B = 1 for one context shared by all classes),
    with gradients attached."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], length: int) -> None:
        self.keys, self.values, self.length = keys, values, length

    @property
    def batch(self) -> int:
        return int(self.keys[0].shape[1])

    def tensors(self) -> list[torch.Tensor]:
        return [t for pair in zip(self.keys, self.values) for t in pair]

    @classmethod
    def from_tensors(cls, tensors: Sequence[torch.Tensor], length: int) -> "PrefixCache":
        return cls(list(tensors[0::2]), list(tensors[1::2]), length)


def encode_prefix(
    tower, prefix: torch.Tensor, before_block: Callable[[int, torch.Tensor], torch.Tensor] | None = None
) -> PrefixCache:
    """Run the shared prefix (P, d) — start token + context (+ fixed words) — or B of them (B, P, d) through every
    block once; return the per-layer K/V cache. The prefix's own outputs past the last block are not needed (no class
    pools inside the prefix), so the last block stops after its keys and values. ``before_block(i, x) -> x`` edits the
    prefix hidden states (B, P, d) before block i (deep prompts replacing the context positions); it must keep P.
    """
    x = prefix if prefix.dim() == 3 else prefix.unsqueeze(0)  # (B, P, d)
    batch, length, _ = x.shape
    cast = tower.cast_dtype
    x = x.to(cast) + tower.positional_embedding[:length].to(cast)
    keys, values = [], []
    blocks = tower.transformer.resblocks
    for i, block in enumerate(blocks):
        if before_block is not None:
            x = before_block(i, x)
        attn = block.attn
        heads = attn.num_heads
        h = block.ln_1(x)
        q, k, v = (_split_heads(t, heads) for t in F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1))
        keys.append(k)  # (H, B, P, hd)
        values.append(v)
        if i == len(blocks) - 1:
            break  # the last block's prefix outputs are never read
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (H, B, P, hd)
        out = out.permute(1, 2, 0, 3).reshape(batch, length, -1)
        x = x + block.ls_1(attn.out_proj(out))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return PrefixCache(keys, values, length)


def encode_suffix(tower, cache: PrefixCache, suffix: torch.Tensor, last_only: bool = False) -> torch.Tensor:
    """Hidden states (C, S, d) after the last block of the class tokens ``suffix`` (C, S, d), which sit at positions
    P … P + S - 1 after the cached prefix and attend to it and (causally) to each other. With a cache of B
    prefixes, ``suffix`` holds B consecutive blocks of C / B rows, block b attending to prefix b.

    With ``last_only`` the last block computes only the final position (what pooling reads when every row's
    end-of-text token is its last token) and the result is (C, 1, d): the other positions' last-block outputs are
    never read, and under the causal mask they cannot influence the final one.
    """
    count, length, _ = suffix.shape
    p, batch = cache.length, cache.batch
    if count % batch:
        raise ValueError(f"{count} suffix rows cannot be split over {batch} cached prefixes")
    cast = tower.cast_dtype
    x = suffix.to(cast) + tower.positional_embedding[p : p + length].to(cast)
    causal = torch.full((length, length), float("-inf"), device=x.device).triu(1)
    blocks = tower.transformer.resblocks
    for i, (block, k_pre, v_pre) in enumerate(zip(blocks, cache.keys, cache.values)):
        attn = block.attn
        heads = attn.num_heads
        head_dim = x.shape[-1] // heads
        h = block.ln_1(x)
        q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        mask = causal
        if last_only and i == len(blocks) - 1:
            x, q, mask = x[:, -1:], q[:, -1:], causal[-1:]
        rows = q.shape[1]
        q = _split_heads(q, heads) * head_dim**-0.5  # (H, C, rows, hd)
        k, v = _split_heads(k, heads), _split_heads(v, heads)  # (H, C, S, hd)
        # scores against the shared prefix: (H, B, C/B·rows, hd) × (H, B, hd, P), the prefix never expanded to C
        per = count // batch * rows
        s_pre = torch.matmul(q.reshape(heads, batch, per, head_dim), k_pre.transpose(-1, -2).to(q.dtype))
        s_pre = s_pre.view(heads, count, rows, p)
        s_own = torch.matmul(q, k.transpose(-1, -2)) + mask.to(q.dtype)  # (H, C, rows, S)
        weights = torch.cat([s_pre, s_own], dim=-1).softmax(dim=-1)
        w_pre, w_own = weights[..., :p], weights[..., p:]
        out = torch.matmul(w_pre.reshape(heads, batch, per, p).to(v_pre.dtype), v_pre).view(
            heads, count, rows, head_dim
        )
        out = out + torch.matmul(w_own.to(v.dtype), v)
        out = out.permute(1, 2, 0, 3).reshape(count, rows, heads * head_dim)
        x = x + block.ls_1(attn.out_proj(out))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x


def encode_classes(tower, cache: PrefixCache, suffix: torch.Tensor, eot: torch.Tensor | None = None) -> torch.Tensor:
    """Text features (C, e): suffix tokens through the blocks, final norm, pooling at ``eot`` (index in the suffix;
    ``None`` = every row's last token, the cheaper case), projection — the tail of open_clip's ``encode_text``."""
    if eot is None:
        pooled = encode_suffix(tower, cache, suffix, last_only=True)[:, -1]
        return tower.head(tower.ln_final(pooled))
    x = encode_suffix(tower, cache, suffix)
    x = tower.ln_final(x)
    pooled = x[torch.arange(x.shape[0], device=x.device), eot.to(x.device)]
    return tower.head(pooled)


# -- packed class tokens -------------------------------------------------------------------------------------------------
# Encoding the classes in one group per own-token length runs every product once per group (about 5 groups of ~20
# classes × 4–8 tokens at 100 classes), which on a CPU reaches about half the FLOP rate of one large batch. A pack
# lays the classes' own tokens end to end in ONE sequence with no padding, so every linear layer (q/k/v, output
# projection, MLP — over 98% of the work) runs on one large batch. Attention, about 1% of the work, is computed in a
# padded per-class layout (C, S_max): each class token sees the cached prefix and the earlier tokens of its own class
# only — exactly the keys it sees in its own prompt — and the results are gathered back into the packed order.


class ClassPack:
    """Several classes' own tokens laid end to end: where each token comes from and where it sits per class."""

    def __init__(self, members: Sequence[int], lengths: Sequence[int], width: int) -> None:
        """``lengths[i]``: own tokens (name, ".", EOT) of class ``members[i]``; ``width``: columns of the own-token
        buffer the tokens are gathered from (its padded length)."""
        self.members = list(members)
        self.lengths = [int(n) for n in lengths]
        self.longest = max(self.lengths)
        rows, offsets, slots, padded = [], [], [], []
        start = 0
        for i, (member, n) in enumerate(zip(self.members, self.lengths)):
            rows += [member * width + j for j in range(n)]
            offsets += list(range(n))
            slots += [i * self.longest + j for j in range(n)]
            padded.append([start + j if j < n else -1 for j in range(self.longest)])
            start += n
        self.tokens = start
        self.rows = torch.tensor(rows, dtype=torch.long)  # flat index into the (C·width) own-token rows
        self.offsets = torch.tensor(offsets, dtype=torch.long)  # position of each token after the prefix
        self.slots = torch.tensor(slots, dtype=torch.long)  # packed token -> flat (class, offset) slot
        pad = torch.tensor(padded, dtype=torch.long)
        self.padded = torch.where(
            pad < 0, torch.full_like(pad, start), pad
        )  # (classes, S_max) -> packed row (T = a zero row)
        self.eot = torch.tensor(self.lengths, dtype=torch.long).cumsum(0) - 1  # last own token of each class: pooled
        causal = torch.full((self.longest, self.longest), float("-inf")).triu(1)
        self.causal = causal  # (S_max, S_max) slot j sees slots <= j of its class
        self.causal_eot = causal[torch.tensor(self.lengths) - 1].unsqueeze(1)  # (classes, 1, S_max)


def pack_classes(lengths: Sequence[int], width: int, chunk: int = 0) -> list[ClassPack]:
    """Classes in their given order in packs of ``chunk`` classes (0 = all in one pack)."""
    step = chunk if chunk > 0 else len(lengths)
    return [
        ClassPack(range(start, min(start + step, len(lengths))), lengths[start : start + step], width)
        for start in range(0, len(lengths), step)
    ]


def _to_padded(t: torch.Tensor, pack: ClassPack, index: torch.Tensor) -> torch.Tensor:
    """(B, H, T, hd) packed → (B, H, classes, S_max, hd) padded (pads read a zero row)."""
    zero = t.new_zeros(t.shape[:2] + (1, t.shape[-1]))
    flat = torch.cat([t, zero], dim=2)[:, :, index.reshape(-1)]
    return flat.view(t.shape[0], t.shape[1], len(pack.members), pack.longest, t.shape[-1])


def encode_pack(tower, cache: PrefixCache, own: torch.Tensor, pack: ClassPack) -> torch.Tensor:
    """Text features (B, classes, e) of one pack under each of the B cached prefixes; ``own`` (C, W, d) holds every
    class's own-token embeddings (name, ".", EOT, padding). The last block computes only the EOT tokens, the only
    ones pooled (under the causal mask no other token of the last block can reach them)."""
    device = own.device
    p, batch = cache.length, cache.batch
    count = len(pack.members)
    cast = tower.cast_dtype
    rows, eot, padded, slots = (t.to(device) for t in (pack.rows, pack.eot, pack.padded, pack.slots))
    tokens = own.reshape(-1, own.shape[-1])[rows]  # (T, d)
    x = (tokens.to(cast) + tower.positional_embedding[p + pack.offsets.to(device)].to(cast)).unsqueeze(0)
    x = x.expand(batch, -1, -1)  # (B, T, d): the same class tokens after each prefix
    blocks = tower.transformer.resblocks
    for i, (block, k_pre, v_pre) in enumerate(zip(blocks, cache.keys, cache.values)):
        attn = block.attn
        heads = attn.num_heads
        h = block.ln_1(x)
        q, k, v = (
            _split_heads(t, heads).transpose(0, 1)
            for t in F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        )
        head_dim = q.shape[-1]
        k_own, v_own = _to_padded(k, pack, padded), _to_padded(v, pack, padded)  # (B, H, classes, S_max, hd)
        last = i == len(blocks) - 1
        if last:  # only the EOT tokens: (B, H, classes, 1, hd)
            x = x[:, eot]
            q_own, mask = q[:, :, eot].unsqueeze(3), pack.causal_eot.to(device)
        else:
            q_own, mask = _to_padded(q, pack, padded), pack.causal.to(device)
        q_own = q_own * head_dim**-0.5
        per = q_own.shape[3]
        k_pre, v_pre = k_pre.transpose(0, 1).to(q.dtype), v_pre.transpose(0, 1).to(q.dtype)  # (B, H, P, hd)
        s_pre = torch.matmul(q_own.reshape(batch, heads, count * per, head_dim), k_pre.transpose(-1, -2))
        s_own = torch.matmul(q_own, k_own.transpose(-1, -2)) + mask.to(q.dtype)  # (B, H, classes, rows, S_max)
        weights = torch.cat([s_pre.view(batch, heads, count, per, p), s_own], dim=-1).softmax(dim=-1)
        w_pre, w_own = weights[..., :p], weights[..., p:]
        out = torch.matmul(w_pre.reshape(batch, heads, count * per, p), v_pre).view(batch, heads, count, per, head_dim)
        out = out + torch.matmul(w_own, v_own)
        out = out.reshape(batch, heads, count * per, head_dim)
        if not last:
            out = out[:, :, slots]  # back to the packed order (B, H, T, hd)
        out = out.transpose(1, 2).reshape(batch, out.shape[2], -1)
        x = x + block.ls_1(attn.out_proj(out))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return tower.head(tower.ln_final(x))  # (B, classes, e)
