"""The prompted text path: splice context vectors among class-name tokens and encode all classes at once.

For C classes and a context of n vectors the token sequence of class c is
``[SOS] [ctx₁ … ctxₙ] [name tokens] [.] [EOT] [pad …]`` (class token at the end; CoOp's "middle" and "front"
positions move the name). The name / full stop / EOT embeddings come from the backbone's own token embedding, so
a context equal to the embeddings of "a photo of a" reproduces ``encode_text("a photo of a {name}.")`` exactly.
The transformer runs only over the first 1 + max(EOT position) tokens (exact under the causal mask), optionally in
chunks of classes with activation checkpointing so memory stays bounded for 1,000 classes.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..backbones.base import Backbone
from ..errors import RlptuneError

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
    ) -> None:
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
        texts = [f"{placeholder} {name}." for name in self.classnames]
        ids = backbone.tokenize(texts)
        eot = backbone.text.eot_positions(ids)
        ctx_len = ids.shape[1]
        if int(eot.max()) >= ctx_len - 1:
            longest = self.classnames[int(eot.argmax())]
            raise RlptuneError(
                f"class name {longest!r} with {self.n_ctx} context tokens exceeds the text context of {ctx_len} tokens"
            )
        tokenizer_encode = getattr(backbone.tokenizer, "encode", None)
        if tokenizer_encode is not None:
            name_lens = [len(tokenizer_encode(name)) for name in self.classnames]
        else:  # count tokens between the context and the final "." from the tokenised text
            name_lens = [int(e) - 1 - self.n_ctx - 1 for e in eot]
        with torch.no_grad():
            emb = backbone.text.embed(ids).float()
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("eot", eot, persistent=False)
        self.register_buffer("prefix", emb[:, :1].clone(), persistent=False)  # SOS
        self.register_buffer("suffix", emb[:, 1 + self.n_ctx:].clone(), persistent=False)  # name . EOT pad
        self.name_lens = name_lens

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
        if self.position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        half = self.n_ctx // 2
        pieces = []
        for i in range(count):
            name_len = self.name_lens[rows.start + i]
            name, rest = suffix[i : i + 1, :name_len], suffix[i : i + 1, name_len:]
            c = ctx[i : i + 1]
            if self.position == "middle":
                pieces.append(torch.cat([prefix[i : i + 1], c[:, :half], name, c[:, half:], rest], dim=1))
            else:
                pieces.append(torch.cat([prefix[i : i + 1], name, c, rest], dim=1))
        return torch.cat(pieces, dim=0)

    def _encode_rows(self, ctx: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        rows = slice(start, stop)
        embeddings = self.assemble(ctx, rows)
        with self.backbone.autocast():
            return self.backbone.text.encode_embeddings(embeddings, self.eot[rows]).float()

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        """Unnormalised text features (C, e) of every class with context ``ctx``."""
        step = self.chunk if self.chunk > 0 else self.num_classes
        outs = []
        for start in range(0, self.num_classes, step):
            stop = min(start + step, self.num_classes)
            if self.use_checkpoint and torch.is_grad_enabled():
                outs.append(checkpoint(self._encode_rows, ctx, start, stop, use_reentrant=False))
            else:
                outs.append(self._encode_rows(ctx, start, stop))
        return torch.cat(outs, dim=0)
