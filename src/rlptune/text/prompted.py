"""The prompted text path: splice context vectors among class-name tokens and encode all classes at once.

For C classes and a context of n vectors the token sequence of class c is
``[SOS] [ctx₁ … ctxₙ] [name tokens] [.] [EOT] [pad …]`` (class token at the end; CoOp's "middle" and "front"
positions move the name). With a ``context_text`` longer than n tokens (the fixed-words layout of the official
MaPLe / IVLP / PromptSRC code: ``n_ctx = 2`` and "a photo of a" give ``[SOS] [ctx₁ ctx₂] of a {name}.``) the first n
tokens of that text are the learned slot and the rest stay as fixed word embeddings after it. The fixed words,
name, full stop and EOT embeddings come from the backbone's own token embedding, so a context equal to the
embeddings of "a photo of a" (or of "a photo" before the fixed "of a") reproduces
``encode_text("a photo of a {name}.")`` exactly.
The transformer runs only over the first 1 + max(EOT position) tokens (exact under the causal mask), optionally in
chunks of classes with activation checkpointing so memory stays bounded for 1,000 classes.

With the class token at the end and one context shared by all classes (the default CoOp/RLP set-up) the encoding
is prefix-cached (:mod:`rlptune.text.shared_prefix`): ``[SOS] [ctx] [fixed words]`` goes through the blocks once
per call and only each class's own tokens are run, packed end to end in one sequence (no padding) and, with
``chunk``, in packs of at most ``chunk`` classes, each optionally under activation checkpointing. Class-specific
contexts, other class positions, ``shared_prefix=False`` and text towers the shared path does not support use the
plain path above. Deep text prompts (a ``before_block`` hook that replaces the context positions layer by layer) run
on either path: on the shared one the hook edits only the prefix, which is where those positions are.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..backbones.base import Backbone, BlockHook
from ..errors import RlptuneError
from . import shared_prefix as sp

PLACEHOLDER = "X"


def text_embeddings(backbone: Backbone, text: str) -> torch.Tensor:
    """Word embeddings (n, d) of ``text``'s BPE tokens (no start/end tokens): a context initialisation."""
    text = " ".join(text.replace("_", " ").split())
    ids = backbone.tokenize([text])[0]
    eot = int(backbone.text.eot_positions(ids[None])[0])
    if eot <= 1:
        raise RlptuneError(f"prompt.ctx_init {text!r} has no tokens")
    with torch.no_grad():
        return backbone.text.embed(ids[None, 1:eot])[0].float().clone()


def context_from_init(backbone: Backbone, ctx_init: str, n_ctx: int, field: str = "prompt.n_ctx") -> torch.Tensor:
    """The learned part (n, d) of a context initialised from ``ctx_init``: its first ``n_ctx`` token embeddings.

    The remaining tokens of ``ctx_init`` stay fixed text (pass ``context_text=ctx_init`` to
    :class:`PromptedClassText`), as the official MaPLe / IVLP / PromptSRC code does. An ``n_ctx`` at or above the
    init's token count learns the whole init (CoOp's "a photo of a" with the default n_ctx). ``field`` names the
    setting that gave ``n_ctx`` in the error.
    """
    if n_ctx < 1:
        raise RlptuneError(f"{field} must be >= 1, got {n_ctx}")
    return text_embeddings(backbone, ctx_init)[:n_ctx].clone()


def _overflowing(backbone: Backbone, texts: Sequence[str], eot: torch.Tensor, ctx_len: int) -> int | None:
    """The first text with more than ``ctx_len`` tokens (start and end included), or None.

    The tokenizer truncates a longer text and puts its end token last, so an end token at the last position is
    either an exact fit (accepted, as CLIP's own tokenizer accepts it) or a cut text: those rows are tokenised
    again with one more position, where only a cut text still ends at (or beyond) ``ctx_len - 1``.
    """
    last = [i for i, e in enumerate(eot.tolist()) if e >= ctx_len - 1]
    if not last:
        return None
    try:
        longer = backbone.tokenizer([texts[i] for i in last], context_length=ctx_len + 1)
    except TypeError:  # a tokenizer without a context_length argument: an end token at the last position is refused
        return last[0]
    ends = backbone.text.eot_positions(longer).tolist()
    return next((i for i, e in zip(last, ends) if e >= ctx_len), None)


class PromptedClassText(nn.Module):
    """Token buffers for one list of class names around an n-token context slot, and the batched encoder."""

    def __init__(
        self,
        backbone: Backbone,
        classnames: Sequence[str],
        n_ctx: int,
        position: str = "end",
        chunk: int = 0,
        use_checkpoint: bool = False,
        shared_prefix: bool = True,
        context_text: str | None = None,
    ) -> None:
        """``context_text``: the text whose first ``n_ctx`` tokens are the learned slot; its remaining tokens stay
        fixed words after the slot (``None``: n placeholders, no fixed words)."""
        super().__init__()
        if position not in ("end", "middle", "front"):
            raise RlptuneError(f"method.class_token_position {position!r}: expected end, middle or front")
        if not classnames:
            raise RlptuneError("no class names to build prompts for")
        self._backbone = [backbone]  # a list: keep the backbone out of this module's parameters and state
        self.n_ctx = int(n_ctx)
        self.position = position
        self.chunk = int(chunk)
        self.use_checkpoint = bool(use_checkpoint)
        self.classnames = [str(c).replace("_", " ") for c in classnames]

        placeholder = " ".join([PLACEHOLDER] * self.n_ctx)
        if context_text is not None:
            context_text = " ".join(context_text.replace("_", " ").split())
            context_len = int(backbone.text.eot_positions(backbone.tokenize([context_text]))[0]) - 1
            if not 1 <= self.n_ctx <= context_len:
                raise RlptuneError(
                    f"n_ctx {self.n_ctx} must be between 1 and the {context_len} tokens of the context text {context_text!r}"
                )
            self.n_fixed = context_len - self.n_ctx  # fixed-word tokens after the learned slot
        else:
            self.n_fixed = 0
        self.context_text = context_text
        texts = [f"{context_text or placeholder} {name}." for name in self.classnames]
        ids = backbone.tokenize(texts)
        eot = backbone.text.eot_positions(ids)
        ctx_len = ids.shape[1]
        too_long = _overflowing(backbone, texts, eot, ctx_len)
        if too_long is not None:
            raise RlptuneError(
                f"class name {self.classnames[too_long]!r} with {self.n_ctx} context tokens exceeds the text context of "
                f"{ctx_len} tokens"
            )
        tokenizer_encode = getattr(backbone.tokenizer, "encode", None)
        if tokenizer_encode is not None:
            name_lens = [len(tokenizer_encode(name)) for name in self.classnames]
        else:  # count tokens between the context and the final "." from the tokenised text
            name_lens = [int(e) - 1 - self.n_ctx - self.n_fixed - 1 for e in eot]
        with torch.no_grad():
            emb = backbone.text.embed(ids).float()
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("eot", eot, persistent=False)
        self.register_buffer("prefix", emb[:, :1].clone(), persistent=False)  # SOS
        self.register_buffer("suffix", emb[:, 1 + self.n_ctx :].clone(), persistent=False)  # [fixed] name . EOT pad
        head = 1 + self.n_ctx + self.n_fixed
        self.register_buffer("fixed", emb[:1, 1 + self.n_ctx : head].clone(), persistent=False)  # (1, m, d)
        self.register_buffer("own", emb[:, head:].clone(), persistent=False)  # name . EOT pad (each class's own)
        self.name_lens = name_lens
        if position != "end":  # where each output position reads from in the "end" layout [SOS][ctx][name . EOT …]
            self.register_buffer("_layout", self._position_layout(ids.shape[1], name_lens), persistent=False)

        # shared-prefix path: why it cannot be used (None = it can), and the class groups it runs
        self.shared_prefix = bool(shared_prefix)
        if position != "end":
            self.shared_prefix_reason: str | None = (
                f"class token position {position!r} puts class tokens inside the prefix"
            )
        elif not bool((self.prefix == self.prefix[:1]).all()):
            self.shared_prefix_reason = "the start-token embeddings differ between classes"
        elif not bool((emb[:, 1 + self.n_ctx : head] == self.fixed).all()):
            self.shared_prefix_reason = "the fixed words tokenise differently between classes"
        else:
            self.shared_prefix_reason = sp.unsupported_reason(backbone.text)
        own_lens = (eot - head + 1).tolist()  # name + "." + EOT tokens of each class (own length to the EOT)
        packs = sp.pack_classes(own_lens, self.own.shape[1], self.chunk)  # classes in order: no reordering needed
        self._groups = [(pack.members, pack) for pack in packs]

    def _position_layout(self, length: int, name_lens: list[int]) -> torch.Tensor:
        """(C, L) source index of every position for the middle / front class-token positions (one gather).
        The context block is the learned slot followed by the fixed words (they move together)."""
        n = self.n_ctx + self.n_fixed
        half = n // 2
        rows = []
        for m in name_lens:
            ctx = list(range(1, 1 + n))
            name = list(range(1 + n, 1 + n + m))
            if self.position == "middle":
                head = [0] + ctx[:half] + name + ctx[half:]
            else:  # front
                head = [0] + name + ctx
            rows.append(head + list(range(len(head), length)))
        return torch.tensor(rows, dtype=torch.long)

    def uses_shared_prefix(self, ctx: torch.Tensor | None = None) -> bool:
        """Whether :meth:`forward` takes the shared-prefix path (for a context of ``ctx``'s shape)."""
        shared_ctx = ctx is None or ctx.dim() == 2
        return self.shared_prefix and shared_ctx and self.shared_prefix_reason is None

    @property
    def backbone(self) -> Backbone:
        return self._backbone[0]

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def assemble(self, ctx: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """Token embeddings (C, L, d) for the given class rows with ``ctx`` (n, d) or (C, n, d) spliced in."""
        rows = rows or slice(0, self.num_classes)
        prefix, suffix = self.prefix[rows], self.suffix[rows]
        count = prefix.shape[0]
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(count, -1, -1)
        else:
            ctx = ctx[rows]
        ctx = ctx.to(prefix.dtype)
        end_layout = torch.cat([prefix, ctx, suffix], dim=1)
        if self.position == "end":
            return end_layout
        index = self._layout[rows].unsqueeze(-1).expand(-1, -1, end_layout.shape[-1])
        return torch.gather(end_layout, 1, index)  # all classes at once, no Python loop over classes

    def _encode_rows(
        self, ctx: torch.Tensor, start: int, stop: int, before_block: BlockHook | None = None
    ) -> torch.Tensor:
        rows = slice(start, stop)
        embeddings = self.assemble(ctx, rows)
        with self.backbone.autocast():
            return self.backbone.text.encode_embeddings(embeddings, self.eot[rows], before_block=before_block).float()

    def forward(self, ctx: torch.Tensor, before_block: BlockHook | None = None) -> torch.Tensor:
        """Unnormalised text features (C, e) of every class with context ``ctx`` (n, d) or (C, n, d).

        ``before_block(i, x) -> x`` may edit the context positions ``1 … n`` of the hidden states before block i
        (deep text prompts); it must leave every other position as it is.
        """
        if self.uses_shared_prefix(ctx):
            return self._forward_shared(ctx, before_block)
        return self._forward_plain(ctx, before_block)

    def encode_contexts(self, contexts: torch.Tensor) -> torch.Tensor:
        """Unnormalised text features (B, C, e) of every class under each of B contexts (B, n, d) — e.g. CoCoOp's
        image-conditioned contexts — in one batched call.

        On the shared-prefix path the B prefixes ``[SOS][ctx_b][fixed words]`` are encoded once each and the B × C class
        suffixes attend to their own prefix, so the cost is B × P + B × Σ_c S_c token positions instead of
        B × C × (P + S). Otherwise the B × C full prompts are assembled and encoded at once.
        """
        if contexts.dim() != 3:
            raise RlptuneError(f"encode_contexts expects contexts of shape (B, n, d), got {tuple(contexts.shape)}")
        if self.uses_shared_prefix():
            return self._forward_shared(contexts)
        count = contexts.shape[0]
        embeddings = torch.cat([self.assemble(contexts[i]) for i in range(count)], dim=0)
        eot = self.eot.repeat(count)
        with self.backbone.autocast():
            feats = self.backbone.text.encode_embeddings(embeddings, eot).float()
        return feats.view(count, self.num_classes, -1)

    # -- shared prefix ------------------------------------------------------------------------------------------
    def _forward_shared(self, ctx: torch.Tensor, before_block: BlockHook | None = None) -> torch.Tensor:
        """(n, d) → (C, e); (B, n, d) → (B, C, e) with one cached prefix per context."""
        tower = self.backbone.text
        batched = ctx.dim() == 3
        contexts = ctx if batched else ctx.unsqueeze(0)
        with self.backbone.autocast():
            count = contexts.shape[0]
            sos = self.prefix[:1].expand(count, -1, -1)  # (B, 1, d)
            fixed = self.fixed.expand(count, -1, -1)  # (B, m, d) fixed words, part of the shared prefix
            prefix = torch.cat([sos, contexts.to(self.prefix.dtype), fixed], dim=1)  # (B, 1 + n + m, d)
            cache = sp.encode_prefix(tower, prefix, before_block)
        kv = cache.tensors()
        outs = []
        for number in range(len(self._groups)):
            if self.use_checkpoint and torch.is_grad_enabled():
                outs.append(checkpoint(self._encode_group, number, cache.length, *kv, use_reentrant=False))
            else:
                outs.append(self._encode_group(number, cache.length, *kv))
        feats = torch.cat(outs, dim=1)  # (B, C, e): packs hold consecutive classes in order
        return feats if batched else feats[0]

    def _encode_group(self, number: int, prefix_len: int, *kv: torch.Tensor) -> torch.Tensor:
        """Features (B, classes, e) of pack ``number`` (consecutive classes' own tokens end to end) under each
        cached prefix."""
        cache = sp.PrefixCache.from_tensors(kv, prefix_len)
        with self.backbone.autocast():
            return sp.encode_pack(self.backbone.text, cache, self.own, self._groups[number][1]).float()

    # -- plain path ---------------------------------------------------------------------------------------------
    def _forward_plain(self, ctx: torch.Tensor, before_block: BlockHook | None = None) -> torch.Tensor:
        step = self.chunk if self.chunk > 0 else self.num_classes
        outs = []
        for start in range(0, self.num_classes, step):
            stop = min(start + step, self.num_classes)
            if self.use_checkpoint and torch.is_grad_enabled():
                outs.append(checkpoint(self._encode_rows, ctx, start, stop, before_block, use_reentrant=False))
            else:
                outs.append(self._encode_rows(ctx, start, stop, before_block))
        return torch.cat(outs, dim=0)
