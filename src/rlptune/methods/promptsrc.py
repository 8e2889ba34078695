"""PromptSRC (Khattak et al., ICCV 2023) as its repository ships it, with RLP as a switch on every prompt.

Placement is IVLP's (:class:`rlptune.methods.deep.IVLP`): n = ``text_ctx`` learned text tokens at each of the
first J_t = ``text_depth`` text layers (layer 0 from the first n tokens of ``prompt.ctx_init``, the rest of that text
fixed words; deeper layers N(0, 0.02²) and replaced layer by layer) and n_v = ``vision_ctx`` vision tokens at each of
the first J_v = ``vision_depth`` image layers (layer 0 appended before ``ln_pre``). On top, the three
self-regularisers of ``trainers/promptsrc.py``:

- mutual agreement, each term added to the cross-entropy of the prompted logits:
  ``text_loss_weight · L1(t̂, t̄)`` — mean absolute difference between the normalised prompted class features t̂ and
  the normalised mean t̄ of the frozen CLIP's *unnormalised* text features over the template ensemble;
  ``image_loss_weight · L1(f̂, f)`` — prompted vs frozen normalised image features of the same augmented images;
  ``kl_loss_weight · KL(p_frozen ‖ p_prompted)`` summed over the batch and classes and divided by B·C, where
  p_frozen = softmax(scale · f t̄ᵀ). The official code has no separate KL weight (it multiplies by 1·1 and divides
  by ``logits.numel()``); ``kl_loss_weight`` = 1 is exactly that, and exists so the term can be switched off.
- Gaussian prompt aggregation (GPA): after epoch e (1-based) of N the prompts are added to a running sum with
  weight g(e) / Σ_{k=1..N} g(k), g(x) = exp(−(x − μ)² / 2σ²) / (σ√(2π)), μ = ``gpa_mean``, σ = ``gpa_std``; after
  the last epoch the sum replaces the prompts. rlptune sums the *merged* prompts (one plain (n, d) tensor per
  layer), so with ``prompt.kind lowrank`` the aggregate — a weighted sum of P_fr + A_e B_e, no longer rank r — is
  kept and saved as one plain prompt per layer (adapter tensors ``prompts.text`` (J_t, n, d) and
  ``prompts.vision`` (J_v, n_v, w)); with full-rank prompts it is also copied into the parameters, as the
  official code's ``load_state_dict`` does.
- textual diversity: t̄ averages the 60 ImageNet templates of the repository's ``trainers/imagenet_templates.py``
  (``IMAGENET_TEMPLATES``, the same list for every dataset; :data:`rlptune.method_templates.PROMPTSRC_TEMPLATES`), computed
  once for the training classes.

Official defaults (``configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml``, base-to-new): J_t = J_v = 9,
n = n_v = 4, ctx_init "a photo of a", text weight 25, image weight 10, GPA μ = 15, σ = 1, SGD lr 0.0025, batch 4,
20 epochs, cosine with one constant warm-up epoch at 1e-5. Cross-dataset: depth 3, μ = 6, σ = 10; few-shot: 50
epochs, μ = 30, σ = 30 (μ = 45, σ = 5 for Cars, Flowers, Aircraft, DTD, EuroSAT). The recipes (run settings) live
in :mod:`rlptune.recipes`; the options below default to the base-to-new values.

Trainable parameters (d text width, w vision width; full rank | RLP rank r, each layer's prompt factorised alone):
  J_t·n·d + J_v·n_v·w                       | J_t·r·(n+d) + J_v·r·(n_v+w)
ViT-B-16 (d = 512, w = 768), J_t = J_v = 9, n = n_v = 4: 9·4·512 + 9·4·768 = 18,432 + 27,648 = 46,080 — what the
official code builds: ``prompt_learner.ctx`` (4×512), 8 text ``VPT_shallow`` (4×512, blocks 1–8), ``visual.VPT``
(4×768) and 8 vision ``VPT_shallow`` (4×768, blocks 1–8). RLP r = 1: 9·516 + 9·772 = 4,644 + 6,948 = 11,592.

Deviations from the official code: everything runs in the backbone's precision setting (the official keeps CLIP
and the prompts in fp16, the ensemble's text encoder in fp32); a ``text_ctx`` at or above the token count of
``prompt.ctx_init`` learns the whole init (the official falls back to a random context when n > 4 and reads past
the init's end-of-text token when n exceeds its tokens); the template-ensemble features are computed on the first
training step, not at construction, so building the method for evaluation encodes no templates. Under RLP (no
official counterpart) the deep prompts' frozen part is zero, RLP's rule for prompts without init text, so layers
≥ 1 start at 0 rather than N(0, 0.02²), and after aggregation the factors are no longer used: the plain aggregate is.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import RlptuneError
from ..prompts import FullRankPrompt
from ..method_templates import PROMPTSRC_TEMPLATES  # the official 60-template ensemble, defined once
from .base import Batch, DeclaredSize, StepOutput, check_dtype, register_method
from .deep import DeepPrompts
from .options import MAX_LAYERS, MAX_TOKENS, option
from ..options import checkpoint_text_option, class_token_position_option, shared_prefix_option, text_chunk_option


@dataclass
class PromptSRCOptions:
    text_depth: int = option(
        9, "J_t: text layers with prompts (official PROMPT_DEPTH_TEXT; >= 1)", low=1, high=MAX_LAYERS
    )
    vision_depth: int = option(
        9, "J_v: image layers with prompts (official PROMPT_DEPTH_VISION; 0 = none)", low=0, high=MAX_LAYERS
    )
    text_ctx: int = option(
        4,
        "n: learned text tokens per layer, layer 0 from the first n tokens of prompt.ctx_init (N_CTX_TEXT)",
        low=1,
        high=MAX_TOKENS,
    )
    vision_ctx: int = option(4, "n_v: learned vision tokens per layer (N_CTX_VISION)", low=0, high=MAX_TOKENS)
    text_loss_weight: float = option(
        25.0, "weight of L1(prompted, template-ensemble frozen) text features (TEXT_LOSS_WEIGHT)", low=0
    )
    image_loss_weight: float = option(10.0, "weight of L1(prompted, frozen) image features (IMAGE_LOSS_WEIGHT)", low=0)
    kl_loss_weight: float = option(
        1.0, "weight of KL(frozen || prompted logits) summed and divided by B*C (the official code has none: 1)", low=0
    )
    aggregate: bool = option(True, "Gaussian prompt aggregation over epochs (false = keep the last epoch's prompts)")
    gpa_mean: float = option(15.0, "mu of the Gaussian epoch weights, epochs counted from 1 (GPA_MEAN)")
    gpa_std: float = option(1.0, "sigma of the Gaussian epoch weights (GPA_STD)")
    n_templates: int = option(
        60,
        "templates of the official 60-prompt ImageNet ensemble to average (the first N)",
        low=1,
        high=len(PROMPTSRC_TEMPLATES),
    )
    templates: list = option(
        [], "own template ensemble instead of the official one ({} = class name); empty = official"
    )
    deep_init_std: float = option(
        0.02, "std of the N(0, std^2) init of the text prompts of layers >= 1 and of all vision prompts", low=0
    )
    class_token_position: str = class_token_position_option()
    text_chunk: int = text_chunk_option()
    checkpoint_text: bool = checkpoint_text_option()
    shared_prefix: bool = shared_prefix_option()

    def validate(self) -> None:
        if self.text_depth < 1:
            raise RlptuneError(
                f"method.options.text_depth must be >= 1 for promptsrc (its text prompts carry the classes), got {self.text_depth}"
            )
        if self.vision_depth < 0:
            raise RlptuneError(f"method.options.vision_depth must be >= 0, got {self.vision_depth}")
        if self.text_ctx < 1 or (self.vision_depth > 0 and self.vision_ctx < 1):
            raise RlptuneError("method.options.text_ctx and vision_ctx must be >= 1")
        for name in ("text_loss_weight", "image_loss_weight", "kl_loss_weight", "deep_init_std"):
            if getattr(self, name) < 0:
                raise RlptuneError(f"method.options.{name} must be >= 0, got {getattr(self, name)}")
        if self.gpa_std <= 0:
            raise RlptuneError(f"method.options.gpa_std must be > 0, got {self.gpa_std}")
        if not 1 <= self.n_templates <= len(PROMPTSRC_TEMPLATES):
            raise RlptuneError(
                f"method.options.n_templates must be between 1 and {len(PROMPTSRC_TEMPLATES)}, got {self.n_templates}"
            )
        for template in self.templates:
            if not isinstance(template, str) or template.count("{}") != 1:
                raise RlptuneError(
                    f"method.options.templates: {template!r} must be text with one '{{}}' for the class name"
                )

    def ensemble(self) -> list[str]:
        """The templates whose mean frozen text feature regularises the prompted one."""
        return list(self.templates) if self.templates else list(PROMPTSRC_TEMPLATES[: self.n_templates])


def gpa_weights(total_epochs: int, mean: float, std: float) -> list[float]:
    """PromptSRC's aggregation weights of epochs 1 … N: a Gaussian density at each epoch, normalised to sum 1."""
    density = [
        math.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for e in range(1, total_epochs + 1)
    ]
    total = sum(density)
    if total_epochs < 1 or total <= 0.0 or not math.isfinite(total):
        raise RlptuneError(
            f"method.options.gpa_mean {mean:g} / gpa_std {std:g}: the Gaussian weights of epochs 1..{total_epochs} are all 0; "
            f"put gpa_mean within reach of the epochs or widen gpa_std"
        )
    return [g / total for g in density]


@register_method("promptsrc", options=PromptSRCOptions)
class PromptSRC(DeepPrompts):
    """IVLP prompts trained with PromptSRC's self-regularisers and Gaussian prompt aggregation."""

    options_class = PromptSRCOptions
    text_context_field = "method.options.text_ctx"

    def __init__(self, settings, backbone, classnames: list[str], dataset_template: str | None = None) -> None:
        super().__init__(settings, backbone, classnames, dataset_template)
        self._ensemble_text: torch.Tensor | None = None  # (C, e) normalised template-ensemble features, lazily
        self._gpa_weights: list[float] | None = None
        self._gpa_sum: dict[str, torch.Tensor] | None = None  # running weighted sum of the merged prompts
        self._aggregated: dict[str, torch.Tensor] | None = None  # the final aggregate: plain prompts per layer

    @classmethod
    def declared_text_tokens(cls, settings, options) -> int:
        """n = ``method.options.text_ctx`` (a disagreeing ``prompt.n_ctx`` is refused when the method is built)."""
        return int(options.text_ctx)

    @classmethod
    def declared_sizes(cls, settings, classnames: Sequence[str]) -> list[DeclaredSize]:
        """IVLP's sizes, also carried by the aggregated prompts (``prompts.text`` (J_t, n, d), ``prompts.vision``
        (J_v, n_v, w)) that replace the factors in an adapter saved after aggregation."""
        aggregated = {
            f"settings.{cls.text_context_field}": (r"prompts\.text", -2),
            "settings.method.options.vision_ctx": (r"prompts\.vision", -2),
        }
        return [
            dataclasses.replace(size, carriers=size.carriers + (aggregated[size.field],))
            if size.field in aggregated
            else size
            for size in super().declared_sizes(settings, classnames)
        ]

    def text_context_size(self) -> int:
        """n = ``method.options.text_ctx``; ``prompt.n_ctx`` may only repeat it (or stay at its default)."""
        n = int(self.options.text_ctx)
        given = int(self.settings.prompt.n_ctx)
        default = {f.name: f.default for f in dataclasses.fields(type(self.settings.prompt))}.get("n_ctx", given)
        if given not in (n, default):
            raise RlptuneError(
                f"prompt.n_ctx={given} disagrees with method.options.text_ctx={n}: promptsrc learns text_ctx tokens per "
                f"layer; set method.options.text_ctx={given} or leave prompt.n_ctx unset"
            )
        return n

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self._ensemble_text = None

    # -- frozen targets ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def ensemble_text_features(self) -> torch.Tensor:
        """t̄ (C, e): the frozen CLIP's unnormalised text features averaged over the template ensemble, normalised."""
        if self._ensemble_text is None:
            names = [str(c).replace("_", " ") for c in self.classnames]
            templates = self.options.ensemble()
            total = None
            for template in templates:
                texts = [template.replace("{}", name) for name in names]
                feats = torch.cat(
                    [
                        self.backbone.encode_text_ids(
                            self.backbone.tokenize(texts[i : i + 256]), normalize=False
                        ).float()
                        for i in range(0, len(texts), 256)  # bounded memory for 1,000 classes
                    ]
                )
                total = feats if total is None else total + feats
            self._ensemble_text = F.normalize(total / len(templates), dim=-1)
        return self._ensemble_text

    # -- training ------------------------------------------------------------------------------------------------
    def training_step(self, batch: Batch) -> StepOutput:
        opts = self.options
        text = self.class_features()
        image = self.image_features_of(batch)
        logits = self.scores(image, text)
        loss_ce = F.cross_entropy(logits.float(), batch.labels)
        logs = {"loss_ce": float(loss_ce.detach())}
        loss = loss_ce
        if opts.text_loss_weight > 0 or opts.kl_loss_weight > 0:
            ensemble = self.ensemble_text_features()
        if opts.text_loss_weight > 0:
            loss_text = opts.text_loss_weight * F.l1_loss(text.float(), ensemble)
            logs["loss_text"] = float(loss_text.detach())
            loss = loss + loss_text
        if opts.image_loss_weight > 0 or opts.kl_loss_weight > 0:
            frozen = batch.features if batch.images is None else self.frozen_image_features(batch.images)
            frozen = frozen.float()
        if opts.image_loss_weight > 0:
            loss_image = opts.image_loss_weight * F.l1_loss(image.float(), frozen)
            logs["loss_image"] = float(loss_image.detach())
            loss = loss + loss_image
        if opts.kl_loss_weight > 0:
            frozen_logits = self.scores(frozen, ensemble).float()
            kl = F.kl_div(
                F.log_softmax(logits.float(), dim=1),
                F.log_softmax(frozen_logits, dim=1),
                reduction="sum",
                log_target=True,
            )
            loss_kl = opts.kl_loss_weight * kl / logits.numel()
            logs["loss_kl"] = float(loss_kl.detach())
            loss = loss + loss_kl
        return StepOutput(loss, logits, logs)

    # -- Gaussian prompt aggregation ----------------------------------------------------------------------------
    def on_train_start(self, total_epochs: int, steps_per_epoch: int) -> None:
        opts = self.options
        self._gpa_weights = (
            gpa_weights(total_epochs, opts.gpa_mean, opts.gpa_std) if opts.aggregate and total_epochs > 0 else None
        )

    def on_epoch_start(self, epoch: int) -> None:
        self._aggregated = None  # training again: the parameters are the prompts

    @torch.no_grad()
    def merged_prompts(self) -> dict[str, torch.Tensor]:
        """Every layer's prompt as plain tensors: ``text`` (J_t, n, d) and ``vision`` (J_v, n_v, w)."""
        text = [self.text_prompt.merged()]
        if self.text_depth > 1:
            text += list(self.text_deep.merged().unbind(0))
        out = {"text": torch.stack(text)}
        if self.vision_depth > 0:
            out["vision"] = self.vision_prompt.merged()
        return out

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> None:
        weights = self._gpa_weights
        if weights is None or epoch >= len(weights):
            return
        merged = self.merged_prompts()
        if epoch == 0 or self._gpa_sum is None:
            self._gpa_sum = {k: weights[epoch] * v for k, v in merged.items()}
        else:
            self._gpa_sum = {k: self._gpa_sum[k] + weights[epoch] * v for k, v in merged.items()}
        if epoch == len(weights) - 1:
            self._install_aggregate({k: v.clone() for k, v in self._gpa_sum.items()})
            self._gpa_sum = None

    @torch.no_grad()
    def _install_aggregate(self, prompts: dict[str, torch.Tensor]) -> None:
        """Use ``prompts`` (plain, per layer) from now on; full-rank parameters take the values too."""
        self._aggregated = prompts
        if isinstance(self.text_prompt, FullRankPrompt):
            self.text_prompt.ctx.copy_(prompts["text"][0])
            if self.text_depth > 1:
                self.text_deep.ctx.copy_(prompts["text"][1:])
        if self.vision_depth > 0 and isinstance(self.vision_prompt, FullRankPrompt):
            self.vision_prompt.ctx.copy_(prompts["vision"])
        self.unmerge()

    def text_prompts(self) -> list[torch.Tensor]:
        if self._aggregated is not None:
            return list(self._aggregated["text"].unbind(0))
        return super().text_prompts()

    def vision_prompts(self) -> torch.Tensor:
        if self._aggregated is not None and self._merged_vision is None:
            return self._aggregated["vision"]
        return super().vision_prompts()

    # -- adapters ------------------------------------------------------------------------------------------------
    def adapter_state(self) -> dict[str, torch.Tensor]:
        """After aggregation: one plain prompt per layer (``prompts.text``, ``prompts.vision``). During training
        (checkpoints): the trainable tensors and the running aggregation sum (``gpa_sum.*``), so a resume is exact."""
        if self._aggregated is not None:
            return {f"prompts.{k}": v.detach().clone() for k, v in self._aggregated.items()}
        state = super().adapter_state()
        if self._gpa_sum is not None:
            state.update({f"gpa_sum.{k}": v.detach().clone() for k, v in self._gpa_sum.items()})
        return state

    def load_adapter_state(self, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
        merged = self.merged_prompts()
        shapes = {k: tuple(v.shape) for k, v in merged.items()}
        state = dict(state)
        if any(k.startswith("prompts.") for k in state):
            expected = {f"prompts.{k}" for k in shapes}
            if set(state) != expected:
                raise RlptuneError(
                    f"{source}: tensors {sorted(state)} do not match promptsrc's aggregated prompts ({sorted(expected)})"
                )
            prompts = {}
            for key, tensor in state.items():
                name = key[len("prompts.") :]
                if tuple(tensor.shape) != shapes[name]:
                    raise RlptuneError(
                        f"{source}: tensor {key} has shape {tuple(tensor.shape)}, expected {shapes[name]}"
                    )
                check_dtype(key, tensor, merged[name].dtype, source)
                prompts[name] = tensor.detach().to(self.backbone.device, torch.float32).clone()
            self._gpa_sum = None
            self._install_aggregate(prompts)
            return
        sums = {k[len("gpa_sum.") :]: state.pop(k) for k in list(state) if k.startswith("gpa_sum.")}
        for name, tensor in sums.items():
            if name not in shapes or tuple(tensor.shape) != shapes[name]:
                raise RlptuneError(
                    f"{source}: tensor gpa_sum.{name} of shape {tuple(tensor.shape)} does not match promptsrc's prompts"
                )
            check_dtype(f"gpa_sum.{name}", tensor, merged[name].dtype, source)
        super().load_adapter_state(state, source)
        self._aggregated = None
        self._gpa_sum = {k: v.detach().to(self.backbone.device, torch.float32).clone() for k, v in sums.items()} or None

    def prompt_matrices(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = super().prompt_matrices()
        if self._aggregated is not None:
            for kind, stacked in self._aggregated.items():
                for i in range(stacked.shape[0]):
                    key = f"{kind}.{i}"
                    if key in out:
                        out[key] = (stacked[i].detach().clone(), out[key][1])
        return out

    def describe(self) -> dict:
        opts = self.options
        return {
            **super().describe(),
            "text_loss_weight": opts.text_loss_weight,
            "image_loss_weight": opts.image_loss_weight,
            "kl_loss_weight": opts.kl_loss_weight,
            "aggregated": self._aggregated is not None,
        }
