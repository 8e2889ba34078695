"""Deep prompts: new prompt tokens at each of the first J layers of the text and/or image tower.

One module, four registered names (each with its official recipe in :mod:`rlptune.recipes`; PromptSRC,
:mod:`rlptune.methods.promptsrc`, is IVLP's placement with its own losses):

- ``deep_text``: text prompts at the first J_t layers. Layer 0 is the context after the start token: the first
  n = ``prompt.n_ctx`` tokens of ``prompt.ctx_init`` are learned and the rest of that text stays fixed words, as in
  the official MaPLe / IVLP / PromptSRC code (n = 2 and "a photo of a" give ``[ctx₁ ctx₂] of a {name}.``; without
  ``ctx_init``, n random tokens); before each later layer i < J_t the hidden states at the n learned positions are
  *replaced* by layer i's own learned tokens (MaPLe's "deep language prompting"). Image features are CLIP's (cached).
- ``deep_vision``: VPT-deep on a ViT image tower. n_v tokens are appended to the image tokens *before* the pre-norm
  (``ln_pre``), as the official code does, and replaced before each block 1 ≤ i < J_v; they are dropped before
  pooling. The classifier is the frozen CLIP's hand-crafted prompt (dataset template, else "a photo of a {}.").
- ``ivlp``: both at once, independent (Independent Vision-Language Prompting, from the MaPLe paper).
- ``maple``: MaPLe-style coupling: the vision prompt of layer i is a learned linear map ``F_i: d → w`` of the
  text prompt of layer i (J maps, one per layer); the vision tokens have no parameters of their own. As in the
  official code, F_1 … F_{J−1} start as copies of one ``nn.Linear`` and F_0 is drawn on its own
  (:func:`coupling_maps`; docs/METHODS.md, "Initialisation, audited against the official code").

Every prompt is built by :func:`rlptune.prompts.build_prompt`, so ``prompt.kind: lowrank`` turns all of them
into RLP at once; a deep prompt (J−1, n, d) is factorised per layer (A: (J−1, n, r), B: (J−1, r, d)).

Trainable parameters (d text width, w vision width, n learned text tokens — fixed words are not parameters —,
n_v vision tokens; full rank / low rank):
  deep_text  J_t·n·d                         | J_t·r·(n+d)
  deep_vision J_v·n_v·w                      | J_v·r·(n_v+w)
  ivlp       J_t·n·d + J_v·n_v·w             | J_t·r·(n+d) + J_v·r·(n_v+w)
  maple      J·n·d + J·(d·w + w)             | J·r·(n+d) + J·(d·w + w)
ViT-B-16 (d=512, w=768), n = n_v = 2, J = 9: ivlp 9,216 + 13,824 = 23,040; maple 9,216 + 3,545,856 = 3,555,072.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RlptuneError
from ..prompts import build_prompt
from ..text import PromptedClassText, context_from_init
from ..options import (
    checkpoint_text_option,
    class_token_position_option,
    parse_options,
    shared_prefix_option,
    text_chunk_option,
)
from .base import DeclaredSize, Method, register_method
from .options import MAX_LAYERS, MAX_TOKENS, option
from .shared import (
    formula,
    handcrafted_features,
    handcrafted_template,
    prompt_kind_sizes,
    prompt_term,
    prompt_token_size,
)


@dataclass
class DeepPromptOptions:
    text_depth: int = option(
        9, "J_t: text layers with prompts (1 = CoOp's context only; 0 = no text prompts)", low=0, high=MAX_LAYERS
    )
    vision_depth: int = option(9, "J_v: image layers with prompts (VPT-deep; 0 = none)", low=0, high=MAX_LAYERS)
    vision_ctx: int = option(2, "n_v: prompt tokens in the image tower", low=0, high=MAX_TOKENS)
    deep_init_std: float = option(
        0.02, "std of the N(0, std²) init of the text prompts of layers >= 1 and of all vision prompts", low=0
    )
    template: Optional[str] = option(
        None, "hand-crafted template when there are no text prompts; unset = dataset's, else 'a photo of a {}.'"
    )
    class_token_position: str = class_token_position_option()
    text_chunk: int = text_chunk_option()
    checkpoint_text: bool = checkpoint_text_option()
    shared_prefix: bool = shared_prefix_option()

    def validate(self) -> None:
        if self.text_depth < 0 or self.vision_depth < 0:
            raise RlptuneError("method.options.text_depth and vision_depth must be >= 0")
        if self.text_depth == 0 and self.vision_depth == 0:
            raise RlptuneError("method.options: text_depth and vision_depth are both 0: nothing to learn")
        if self.vision_depth > 0 and self.vision_ctx < 1:
            raise RlptuneError(f"method.options.vision_ctx must be >= 1, got {self.vision_ctx}")
        if self.deep_init_std < 0:
            raise RlptuneError("method.options.deep_init_std must be >= 0")


@dataclass
class DeepTextOptions(DeepPromptOptions):
    vision_depth: int = option(0, "J_v: image layers with prompts (0 for deep_text)", low=0, high=MAX_LAYERS)


@dataclass
class DeepVisionOptions(DeepPromptOptions):
    text_depth: int = option(
        0,
        "J_t: text layers with prompts (0 for deep_vision: the hand-crafted prompt classifies)",
        low=0,
        high=MAX_LAYERS,
    )


@dataclass
class MapleOptions:
    depth: int = option(
        9,
        "J: layers of both towers with prompts; the vision prompt of layer i = F_i(text prompt of layer i)",
        low=1,
        high=MAX_LAYERS,
    )
    deep_init_std: float = option(0.02, "std of the N(0, std²) init of the text prompts of layers >= 1", low=0)
    class_token_position: str = class_token_position_option()
    text_chunk: int = text_chunk_option()
    checkpoint_text: bool = checkpoint_text_option()
    shared_prefix: bool = shared_prefix_option()

    def validate(self) -> None:
        if self.depth < 1:
            raise RlptuneError(f"method.options.depth must be >= 1, got {self.depth}")
        if self.deep_init_std < 0:
            raise RlptuneError("method.options.deep_init_std must be >= 0")


def text_context_init(
    settings, backbone, n_ctx: int, field: str = "prompt.n_ctx"
) -> tuple[torch.Tensor, bool, str | None]:
    """The learned layer-0 text context (n, d), whether it comes from words, and the context text whose tokens after
    the first n stay fixed words (``prompt.ctx_init``; None for a random N(0, init_std²) context)."""
    if settings.ctx_init:
        return context_from_init(backbone, settings.ctx_init, n_ctx, field), True, settings.ctx_init
    return torch.randn(n_ctx, backbone.text.width) * settings.init_std, False, None


def layer_prompts(depth: int, n: int, width: int, std: float) -> torch.Tensor:
    """(depth, n, width) prompts, each layer's (n, width) drawn on its own from N(0, std²), in layer order.

    One draw per layer, as the official MaPLe / IVLP / VPT / PromptSRC code draws each layer's prompt
    (``nn.init.normal_(…, std=0.02)`` per layer), so the same generator state gives the same tensors for any size
    (one (depth, n, width) draw agrees with it only when n·width is a multiple of 16)."""
    return torch.stack([nn.init.normal_(torch.empty(n, width), std=std) for _ in range(depth)])


def coupling_maps(first: nn.Linear, depth: int) -> nn.ModuleList:
    """MaPLe's J text→vision maps as the official ``MultiModalPromptLearner`` builds them: layer 0's own map
    (``proj``, drawn before the deeper text prompts) and, for layers 1 … J−1, ONE further ``nn.Linear`` deep-copied
    J−1 times (``_get_clones``), so the deeper maps start identical to each other and different from layer 0's.
    The copies are separate parameters (they train apart), not one tied map."""
    maps = [first]
    if depth > 1:
        shared = nn.Linear(first.in_features, first.out_features)
        maps += [copy.deepcopy(shared) for _ in range(depth - 1)]
    return nn.ModuleList(maps)


def _replace(x: torch.Tensor, start: int, tokens: torch.Tensor) -> torch.Tensor:
    """x (B, L, w) with positions start … start+n replaced by ``tokens`` (n, w) for every row."""
    n = tokens.shape[0]
    rows = tokens.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :start], rows, x[:, start + n :]], dim=1)


class DeepPrompts(Method):
    """Text and/or vision prompts at the first J layers (see the module docstring)."""

    options_class: type = DeepPromptOptions
    coupled = False
    learns_prompt = True
    text_context_field = "prompt.n_ctx"  # the setting that gives the learned text tokens per layer
    reads = ("prompt",)

    def __init__(self, settings, backbone, classnames: list[str], dataset_template: str | None = None) -> None:
        super().__init__(settings, backbone, classnames, dataset_template)
        opts = self.options
        if self.coupled:
            self.text_depth = self.vision_depth = opts.depth
        else:
            self.text_depth, self.vision_depth = opts.text_depth, opts.vision_depth
        text_layers = backbone.text.num_layers
        if self.text_depth > text_layers:
            raise RlptuneError(
                f"{self.registered_name}: prompt depth {self.text_depth} exceeds the text tower's {text_layers} layers; "
                f"set method.options.{'depth' if self.coupled else 'text_depth'} <= {text_layers}"
            )
        width = backbone.text.width
        vision = None
        if self.vision_depth > 0:  # checked before any prompt is drawn
            vision = backbone.vision  # raises a clear RlptuneError on towers without tokens (ModifiedResNet)
            if self.vision_depth > vision.num_layers:
                raise RlptuneError(
                    f"{self.registered_name}: prompt depth {self.vision_depth} exceeds the image tower's {vision.num_layers} "
                    f"layers; set method.options.{'depth' if self.coupled else 'vision_depth'} <= {vision.num_layers}"
                )
        self.n_ctx: int | None = None  # no text prompt (deep_vision)
        first_map: nn.Linear | None = None
        if self.text_depth > 0:
            if self.text_depth > 1 and opts.class_token_position != "end":
                raise RlptuneError(
                    f"{self.registered_name}: deep text prompts need method.options.class_token_position=end"
                )
            init, from_text, self.context_text = text_context_init(
                self.settings.prompt, backbone, self.text_context_size(), self.text_context_field
            )
            self.n_ctx = int(init.shape[-2])
            self.text_prompt = build_prompt(self.settings.prompt, init, from_text)
            if self.coupled:  # the official draw order: context, layer 0's map, deeper text prompts, deeper maps
                first_map = nn.Linear(width, vision.width)
            if self.text_depth > 1:
                deep = layer_prompts(self.text_depth - 1, self.n_ctx, width, opts.deep_init_std)
                self.text_deep = build_prompt(self.settings.prompt, deep, False)
            self.text = self._make_text(classnames)
        else:
            self.template = handcrafted_template(dataset_template, opts.template)
            self.register_buffer(
                "fixed_text", handcrafted_features(backbone, classnames, self.template), persistent=False
            )

        self.needs_image_tower = self.vision_depth > 0
        if vision is not None:
            self.vision_width = vision.width
            if self.coupled:
                self.n_vision = self.n_ctx
                self.couplers = coupling_maps(first_map, self.vision_depth).to(backbone.device)
            else:
                self.n_vision = int(opts.vision_ctx)
                init = layer_prompts(self.vision_depth, self.n_vision, vision.width, opts.deep_init_std)
                self.vision_prompt = build_prompt(self.settings.prompt, init, False)
        self._merged_vision: torch.Tensor | None = None
        self.to(backbone.device)

    def text_context_size(self) -> int:
        """n: learned text tokens per layer (``prompt.n_ctx``)."""
        return int(self.settings.prompt.n_ctx)

    @classmethod
    def declared_text_tokens(cls, settings, options) -> int:
        """n as the settings declare it (``prompt.n_ctx``), before any init text bounds it."""
        return int(settings.prompt.n_ctx)

    @classmethod
    def declared_sizes(cls, declared, classnames: Sequence[str]) -> list[DeclaredSize]:
        """Text tokens per layer (without an init text), vision tokens per layer and the rank of every prompt.
        Depths are bounded by the backbone's layers before anything is built."""
        opts = parse_options(cls.options_class, declared.method.options, cls.registered_name)
        text_depth = opts.depth if cls.coupled else opts.text_depth
        vision_depth = 0 if cls.coupled else opts.vision_depth
        settings = declared.prompt
        text = ["text_prompt", "text_deep"] if text_depth > 0 else []
        vision = ["vision_prompt"] if vision_depth > 0 else []
        sizes: list[DeclaredSize] = []
        if text and not settings.ctx_init:
            sizes += prompt_token_size(
                settings, text, f"settings.{cls.text_context_field}", cls.declared_text_tokens(declared, opts)
            )
        if vision:
            sizes += prompt_token_size(settings, vision, "settings.method.options.vision_ctx", opts.vision_ctx)
        return sizes + prompt_kind_sizes(settings, text + vision)

    def _make_text(self, classnames: Sequence[str]) -> PromptedClassText:
        o = self.options
        return PromptedClassText(
            self.backbone,
            classnames,
            self.n_ctx,
            o.class_token_position,
            o.text_chunk,
            o.checkpoint_text,
            shared_prefix=o.shared_prefix,
            context_text=self.context_text,
        ).to(self.backbone.device)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        if self.text_depth > 0:
            self.text = self._make_text(classnames)
        else:
            self.fixed_text = handcrafted_features(self.backbone, classnames, self.template)

    # -- prompts per layer ---------------------------------------------------------------------------------------
    def text_prompts(self) -> list[torch.Tensor]:
        """The text prompt (n, d) of each of the first J_t layers."""
        if self.text_depth == 0:
            return []
        layers = [self.text_prompt()]
        if self.text_depth > 1:
            layers += list(self.text_deep().unbind(0))
        return layers

    def vision_prompts(self) -> torch.Tensor:
        """The vision prompt (J_v, n_v, w) of each of the first J_v layers."""
        if self._merged_vision is not None:
            return self._merged_vision
        if self.coupled:
            return torch.stack([f(p) for f, p in zip(self.couplers, self.text_prompts())])
        return self.vision_prompt()

    # -- text side ---------------------------------------------------------------------------------------------
    def class_features(self) -> torch.Tensor:
        if self.text_depth == 0:
            return self.fixed_text
        layers = self.text_prompts()
        deep = layers[1:]

        def hook(i: int, x: torch.Tensor) -> torch.Tensor:  # the learned positions 1 … n only: fixed words stay
            return _replace(x, 1, deep[i - 1]) if 1 <= i <= len(deep) else x

        return F.normalize(self.text(layers[0], before_block=hook if deep else None), dim=-1)

    # -- image side --------------------------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        if self.vision_depth == 0:
            return self.backbone.encode_image(images)
        prompts = self.vision_prompts()
        n = self.n_vision
        vision = self.backbone.vision

        def hook(i: int, x: torch.Tensor) -> torch.Tensor:
            return _replace(x, x.shape[1] - n, prompts[i]) if 1 <= i < prompts.shape[0] else x

        with self.backbone.autocast():
            x = vision.embed_tokens(images.to(vision.device))
            own = x.shape[1]
            first = prompts[0].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
            x = vision.pre_norm(torch.cat([x, first], dim=1))  # layer-0 prompts before ln_pre, as the official code
            x = vision.run_blocks(x, hook)
            feats = vision.head(x[:, :own])
        return F.normalize(feats.float(), dim=-1)

    # -- merge / adapters / diagnostics ----------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self) -> "DeepPrompts":
        """Cache the class features and the vision prompts: inference = prompted image tower + one matmul."""
        super().merge()
        if self.vision_depth > 0:
            self._merged_vision = None
            self._merged_vision = self.vision_prompts().detach()
        return self

    def unmerge(self) -> None:
        super().unmerge()
        self._merged_vision = None

    def load_adapter_state(self, state, source: str = "adapter") -> None:
        super().load_adapter_state(state, source)
        self._merged_vision = None

    def train(self, mode: bool = True) -> "DeepPrompts":
        if mode:
            self._merged_features = None
            self._merged_vision = None
        return super().train(mode)

    def prompt_matrices(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.text_depth > 0:
            out["text.0"] = (self.text_prompt.merged(), self.text_prompt.initial.detach().clone())
            if self.text_depth > 1:
                merged, initial = self.text_deep.merged(), self.text_deep.initial.detach()
                for i in range(self.text_depth - 1):
                    out[f"text.{i + 1}"] = (merged[i], initial[i].clone())
        if self.vision_depth > 0 and not self.coupled:
            merged, initial = self.vision_prompt.merged(), self.vision_prompt.initial.detach()
            for i in range(self.vision_depth):
                out[f"vision.{i}"] = (merged[i], initial[i].clone())
        return out

    def parameter_formula(self) -> str:
        d = self.backbone.text.width
        terms, symbols = [], {}
        if self.text_depth > 0:
            terms.append(prompt_term(self.text_prompt, self.text_depth, copies_sym="J_t" if not self.coupled else "J"))
            symbols.update({"n": self.n_ctx, "d": d})
        if self.vision_depth > 0:
            w = self.vision_width
            symbols["w"] = w
            if self.coupled:
                terms.append(("J·(d·w + w)", self.vision_depth * (d * w + w)))
            else:
                terms.append(
                    prompt_term(self.vision_prompt, self.vision_depth, n_sym="n_v", d_sym="w", copies_sym="J_v")
                )
                symbols["n_v"] = self.n_vision
        if self.coupled:
            symbols["J"] = self.text_depth
        else:
            if self.text_depth:
                symbols["J_t"] = self.text_depth
            if self.vision_depth:
                symbols["J_v"] = self.vision_depth
        prompt = self.text_prompt if self.text_depth > 0 else getattr(self, "vision_prompt", None)
        return formula(terms, {**symbols, **(prompt.formula_symbols() if prompt is not None else {})})

    def describe(self) -> dict:
        return {**super().describe(), "text_depth": self.text_depth, "vision_depth": self.vision_depth}


@register_method("deep_text")
class DeepText(DeepPrompts):
    """Deep text prompts (J_t layers), CLIP's own image features."""

    options_class = DeepTextOptions
    ablation_of = "ivlp"


@register_method("deep_vision")
class DeepVision(DeepPrompts):
    """VPT-deep in the image tower, hand-crafted text classifier."""

    options_class = DeepVisionOptions
    ablation_of = "ivlp"


@register_method("ivlp")
class IVLP(DeepPrompts):
    """Independent deep prompts in both towers."""

    options_class = DeepPromptOptions


@register_method("maple")
class MaPLe(DeepPrompts):
    """Deep text prompts; vision prompts = per-layer linear maps of them."""

    options_class = MapleOptions
    coupled = True
