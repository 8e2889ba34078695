"""CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024): low-rank adapters on the attention projections of both towers.

Built with the ``peft`` library (``pip install 'rlptune[lora]'``), r = 2, α = 1 (scale α/r), dropout 0.25 on
the adapter input, on W_q, W_k, W_v of every attention block of the text and the image transformer, trained with
AdamW at lr 2e-4 (``configs/clip_lora.yaml``).

Why the attention modules are rebuilt first: open_clip's blocks use ``torch.nn.MultiheadAttention``, whose q/k/v
projection is one fused ``in_proj_weight`` *parameter* (not an ``nn.Linear``) fed straight to
``F.multi_head_attention_forward``, and whose ``out_proj`` forward is never called. peft's own LoRA for
``MultiheadAttention`` works around that by merging the adapter into the base weights before every forward and
subtracting it afterwards, which (a) puts one joint rank-r update on the stacked (3d × d) q/k/v matrix instead of
one per projection, (b) always adapts ``out_proj`` too, and (c) rewrites the frozen base weights in place on every
call, so they drift by floating-point rounding and the backbone's weight hash changes. Instead, each
``MultiheadAttention`` of the towers is replaced, in a *structural copy* of the model, by :class:`SplitAttention`:
the same computation (scaled dot-product attention, same masks, same heads) with ``q_proj``/``k_proj``/
``v_proj``/``out_proj`` as ``nn.Linear`` modules whose weights are *views* of the original frozen tensors (no
copy of the data). peft's standard ``Linear`` LoRA then targets those modules by name
(``peft.inject_adapter_in_model``), exactly as CLIP-LoRA does with its own split attention.

The loaded backbone is never modified: the structural copy shares every parameter and buffer with it (no
memory for a second set of weights), nothing is written to disk, and the base stays frozen (only ``lora_A`` /
``lora_B`` require gradients). Build the method after moving the backbone to its device.

Trainable parameters: Σ over adapted projections r·(d_in + d_out) = 2r·width per projection:
  T·L_t·2r·d + T·L_v·2r·w   (T = number of targets, 3 for q,k,v; L_t, L_v = blocks per tower)
184,320 on ViT-B-16 (r=2, 12 + 12 blocks, d=512, w=768), as reported by CLIP-LoRA.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import TextTower
from ..errors import RlptuneError
from .base import Method, register_method
from .options import option, parse_options
from .shared import formula, handcrafted_template

TARGETS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}


class SplitAttention(nn.Module):
    """``nn.MultiheadAttention``'s forward with separate q/k/v/out ``nn.Linear`` projections.

    The projections' weights are views of the original module's (frozen) tensors, so the result equals the
    original attention (to float rounding, tested) and costs no extra memory. Supports what open_clip's blocks
    use: self/cross attention with equal embedding dims, additive or boolean ``attn_mask``, ``need_weights=False``.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not getattr(mha, "_qkv_same_embed_dim", True) or mha.bias_k is not None or mha.add_zero_attn:
            raise RlptuneError("CLIP-LoRA: attention with separate k/v dims, bias_k/bias_v or add_zero_attn is not supported")
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
            raise RlptuneError("CLIP-LoRA: key_padding_mask / need_weights are not supported by the split attention")
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


def _towers(model: nn.Module) -> dict[str, nn.Module | None]:
    """The transformer of each tower of an open_clip model (None where a tower has no transformer blocks)."""
    text_owner = getattr(model, "text", None)
    if text_owner is None or not hasattr(text_owner, "transformer"):
        text_owner = model
    visual = getattr(model, "visual", None)
    return {
        "text": getattr(text_owner, "transformer", None),
        "vision": getattr(visual, "transformer", None) if visual is not None else None,
    }


def structural_copy(model: nn.Module) -> nn.Module:
    """A new module tree that shares every parameter and buffer (the same tensors) with ``model``."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def split_attention(model: nn.Module, towers: Sequence[str], method: str) -> dict[str, list[str]]:
    """Replace each tower's ``MultiheadAttention`` blocks by :class:`SplitAttention`; names of the new modules."""
    found: dict[str, list[str]] = {}
    prefix_of = {id(m): name for name, m in model.named_modules()}
    for tower, transformer in _towers(model).items():
        if tower not in towers:
            continue
        blocks = getattr(transformer, "resblocks", None) if transformer is not None else None
        attn = [b for b in (blocks or []) if isinstance(getattr(b, "attn", None), nn.MultiheadAttention)]
        if not attn:
            kind = type(getattr(model, "visual", None)).__name__ if tower == "vision" else type(transformer).__name__
            raise RlptuneError(
                f"{method}: the {tower} tower ({kind}) has no nn.MultiheadAttention blocks to adapt; "
                f"set method.options.towers to {'text' if tower == 'vision' else 'vision'} or use a ViT backbone"
            )
        names = []
        for block in attn:
            block.attn = SplitAttention(block.attn)
            names.append(f"{prefix_of[id(block)]}.attn")
        found[tower] = names
    return found


@dataclass
class ClipLoraOptions:
    r: int = option(2, "LoRA rank of each adapted projection (CLIP-LoRA: 2)")
    alpha: float = option(1.0, "LoRA alpha; the update is scaled by alpha / r (CLIP-LoRA: 1)")
    dropout: float = option(0.25, "dropout on the adapter input during training (CLIP-LoRA: 0.25)")
    targets: list = option(["q", "k", "v"], "projections to adapt in every attention block: any of q, k, v, o")
    towers: str = option("both", "towers to adapt: both | text | vision")
    template: str = option("", "class prompt template ({} = class name); empty = the dataset's, else 'a photo of a {}.'")

    def validate(self) -> None:
        if self.r < 1:
            raise RlptuneError(f"method.options.r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise RlptuneError(f"method.options.dropout must be in [0, 1), got {self.dropout}")
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets:
            raise RlptuneError(f"method.options.targets: expected a non-empty list of q, k, v, o, got {self.targets!r}")
        if self.towers not in ("both", "text", "vision"):
            raise RlptuneError(f"method.options.towers: expected both, text or vision, got {self.towers!r}")


@register_method("clip_lora")
class ClipLoRA(Method):
    options_class = ClipLoraOptions

    def __init__(self, config, backbone, classnames: list[str], dataset_template: str | None = None) -> None:
        super().__init__(config, backbone, classnames, dataset_template)
        self.options = opts = parse_options(ClipLoraOptions, config.method.options, "clip_lora")
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError:
            raise RlptuneError("clip_lora needs the peft library: pip install 'rlptune[lora]' (or pip install peft)") from None
        towers = ("text", "vision") if opts.towers == "both" else (opts.towers,)
        clip = structural_copy(backbone.model)
        attention = split_attention(clip, towers, "clip_lora")
        targets = [f"{name}.{TARGETS[t]}" for names in attention.values() for name in names for t in opts.targets]
        # a string target is matched by peft as a full regex: exact module names only (a list would also match
        # any module whose name merely ends with one, e.g. the image tower's out_proj for a text target)
        pattern = "|".join(re.escape(t) for t in targets)
        lora = LoraConfig(r=opts.r, lora_alpha=opts.alpha, lora_dropout=opts.dropout, target_modules=f"^(?:{pattern})$", bias="none")
        self.clip = inject_adapter_in_model(lora, clip)
        for name, p in self.clip.named_parameters():
            p.requires_grad_("lora_" in name)
        self.adapted = {tower: len(names) for tower, names in attention.items()}
        self.needs_image_tower = "vision" in towers
        self.template = handcrafted_template(dataset_template, opts.template or None)
        self._text_tower = TextTower(self.clip)
        self._set_tokens(classnames)
        self.to(backbone.device)
        self.train(False)

    def _set_tokens(self, classnames: Sequence[str]) -> None:
        texts = [self.template.format(str(c).replace("_", " ")) for c in classnames]
        ids = self.backbone.tokenize(texts)
        self.register_buffer("token_ids", ids.to(self.backbone.device), persistent=False)
        self.register_buffer("eot", self._text_tower.eot_positions(ids).to(self.backbone.device), persistent=False)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self._set_tokens(classnames)

    def train(self, mode: bool = True) -> "ClipLoRA":
        """Only the adapters' dropout follows ``mode``: the shared CLIP stays in eval (no BatchNorm updates)."""
        super().train(mode)
        if "clip" in self._modules:
            self.clip.eval()
            for name, module in self.clip.named_modules():
                if name.endswith("lora_dropout") or ".lora_dropout." in name:
                    module.train(mode)
        if mode:
            self._merged_features = None
        return self

    def class_features(self) -> torch.Tensor:
        tower = self._text_tower
        step = self.config.method.text_chunk or len(self.token_ids)
        outs = []
        for start in range(0, len(self.token_ids), step):
            ids = self.token_ids[start : start + step]
            with self.backbone.autocast():
                outs.append(tower.encode_embeddings(tower.embed(ids), self.eot[start : start + step]).float())
        return F.normalize(torch.cat(outs, dim=0), dim=-1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        if not self.needs_image_tower:
            return self.backbone.encode_image(images)
        with self.backbone.autocast():
            feats = self.clip.encode_image(images.to(self.backbone.device))
        return F.normalize(feats.float(), dim=-1)

    def parameter_formula(self) -> str:
        r, t = self.options.r, len(self.options.targets)
        terms, symbols = [], {"T": t, "r": r}
        if "text" in self.adapted:
            d, layers = self.backbone.text.width, self.adapted["text"]
            terms.append(("T·L_t·2r·d", t * layers * 2 * r * d))
            symbols.update({"L_t": layers, "d": d})
        if "vision" in self.adapted:
            w, layers = self.backbone.vision.width, self.adapted["vision"]
            terms.append(("T·L_v·2r·w", t * layers * 2 * r * w))
            symbols.update({"L_v": layers, "w": w})
        return formula(terms, symbols)

    def describe(self) -> dict:
        return {**super().describe(), "adapted_blocks": dict(self.adapted), "targets": list(self.options.targets)}
