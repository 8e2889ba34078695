"""CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024): low-rank adapters on the attention projections of both towers.

Built with the ``peft`` library (``pip install 'rlptune[lora]'``). The official recipe: r = 2, α = 1, the update
scaled by α/√r (the official ``loralib`` scaling; peft's ``use_rslora=True`` is exactly that), dropout 0.25 on the
adapter input, A Kaiming-uniform and B zero (peft's default), on W_q, W_k, W_v of every attention block of the text
and the image transformer, "a photo of a {}." for every dataset, AdamW at lr 2e-4 (``configs/clip_lora.yaml``).

Everything model-specific goes through the backbone interface: :meth:`Backbone.adapter_copy` gives a backbone that
shares every weight with the loaded one (no copy of the data) and whose attention modules expose ``q_proj``/
``k_proj``/``v_proj``/``out_proj`` as ``nn.Linear`` (open_clip's fused ``nn.MultiheadAttention`` is replaced by a
:class:`~rlptune.backbones.SplitAttention` view, whose result equals the original; Hugging Face's ``CLIPAttention``
already has them), and :meth:`Backbone.attention_modules` names them. peft's standard ``Linear`` LoRA then targets
those modules by their exact names (``peft.inject_adapter_in_model``). Why not peft's own ``MultiheadAttention``
LoRA: it puts one joint update on the stacked q/k/v matrix, always adapts ``out_proj`` and rewrites the frozen base
weights in place on every call (they drift by rounding and the backbone's hash changes).

The loaded backbone is never modified and the base stays frozen (only ``lora_A`` / ``lora_B`` require gradients).
On a Hugging Face backbone the trained adapter is also written as a genuine peft adapter of the ``CLIPModel``
(:meth:`ClipLoRA.export_adapter_files`): ``PeftModel.from_pretrained(clip_model, folder)`` loads it. Build the
method after moving the backbone to its device.

Trainable parameters: Σ over adapted projections r·(d_in + d_out) = 2r·width per projection:
  T·L_t·2r·d + T·L_v·2r·w   (T = number of targets, 3 for q,k,v; L_t, L_v = blocks per tower)
184,320 on ViT-B-16 (r=2, 12 + 12 blocks, d=512, w=768), as reported by CLIP-LoRA.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .. import io
from ..backbones import SplitAttention  # noqa: F401  (re-exported: rlptune 0.1 imported it from here)
from ..backbones import attention_block
from ..errors import RlptuneError
from .base import DeclaredSize, Method, register_method
from .options import MAX_TOKENS, option, parse_options
from .shared import formula, handcrafted_template

TARGETS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}
PEFT_PREFIX = "base_model.model."  # how PeftModel names the wrapped model's modules in its files
CLIP_LORA_TEMPLATE = "a photo of a {}."


@dataclass
class ClipLoraOptions:
    r: int = option(2, "LoRA rank of each adapted projection (CLIP-LoRA: 2)", low=1, high=MAX_TOKENS)
    alpha: float = option(
        1.0, "LoRA alpha (CLIP-LoRA: 1); the update is scaled by alpha/sqrt(r) with rslora, else alpha/r"
    )
    rslora: bool = option(
        True, "scale by alpha/sqrt(r) as the official CLIP-LoRA code (peft use_rslora); false = alpha/r"
    )
    dropout: float = option(0.25, "dropout on the adapter input during training (CLIP-LoRA: 0.25)")
    targets: list = option(["q", "k", "v"], "projections to adapt in every attention block: any of q, k, v, o")
    towers: str = option("both", "towers to adapt: both | text | vision")
    template: str = option(
        CLIP_LORA_TEMPLATE,
        "class prompt template ({} = class name; CLIP-LoRA uses 'a photo of a {}.' for every dataset); empty = the dataset's",
    )

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

    def __init__(self, settings, backbone, classnames: list[str], dataset_template: str | None = None) -> None:
        super().__init__(settings, backbone, classnames, dataset_template)
        self.options = opts = parse_options(ClipLoraOptions, self.settings.method.options, "clip_lora")
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError:
            raise RlptuneError(
                "clip_lora needs the peft library: pip install 'rlptune[lora]' (or pip install peft)"
            ) from None
        towers = ("text", "vision") if opts.towers == "both" else (opts.towers,)
        try:
            adapted = backbone.adapter_copy(towers)
        except RlptuneError as exc:
            other = "text" if "vision" in towers else "vision"
            raise RlptuneError(
                f"clip_lora: {exc}; set method.options.towers to {other} or use a ViT backbone"
            ) from None
        attention = {tower: adapted.attention_modules(tower) for tower in towers}
        targets = [
            f"{name}.{TARGETS[t]}" for modules in attention.values() for name, _ in modules for t in opts.targets
        ]
        # a string target is matched by peft as a full regex: exact module names only (a list would also match
        # any module whose name merely ends with one, e.g. the image tower's out_proj for a text target)
        pattern = "|".join(re.escape(t) for t in targets)
        self.lora_config = LoraConfig(
            r=opts.r,
            lora_alpha=opts.alpha,
            lora_dropout=opts.dropout,
            target_modules=f"^(?:{pattern})$",
            bias="none",
            use_rslora=bool(opts.rslora),
        )
        self.clip = inject_adapter_in_model(self.lora_config, adapted.model)
        for name, p in self.clip.named_parameters():
            p.requires_grad_("lora_" in name)
        self._adapted = [adapted]  # a list: the adapted backbone's model is already a submodule (self.clip)
        self.adapted = {tower: len(modules) for tower, modules in attention.items()}
        self.needs_image_tower = "vision" in towers
        self.template = handcrafted_template(dataset_template, opts.template or None)
        self._set_tokens(classnames)
        self.to(backbone.device)
        self.train(False)

    @classmethod
    def declared_sizes(cls, settings, classnames: Sequence[str]) -> list[DeclaredSize]:
        """The LoRA rank r: ``lora_A`` (r, in) and ``lora_B`` (out, r) of every adapted projection."""
        opts = parse_options(ClipLoraOptions, settings.method.options, "clip_lora")
        return [
            DeclaredSize(
                "settings.method.options.r",
                int(opts.r),
                ((r".*\.lora_A\.[^.]+\.weight", 0), (r".*\.lora_B\.[^.]+\.weight", 1)),
            )
        ]

    @property
    def adapted_backbone(self):
        """The backbone whose attention projections carry the LoRA adapters (shares every base weight)."""
        return self._adapted[0]

    def _set_tokens(self, classnames: Sequence[str]) -> None:
        texts = [self.template.format(str(c).replace("_", " ")) for c in classnames]
        ids = self.backbone.tokenize(texts)
        self.register_buffer("token_ids", ids.to(self.backbone.device), persistent=False)
        self.register_buffer("eot", self.backbone.text.eot_positions(ids).to(self.backbone.device), persistent=False)

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
        tower = self.adapted_backbone.text
        step = len(self.token_ids)
        outs = []
        for start in range(0, len(self.token_ids), step):
            ids = self.token_ids[start : start + step]
            with self.backbone.autocast():
                outs.append(tower.encode_embeddings(tower.embed(ids), self.eot[start : start + step]).float())
        return F.normalize(torch.cat(outs, dim=0), dim=-1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        if not self.needs_image_tower:
            return self.backbone.encode_image(images)
        return self.adapted_backbone.encode_image(images)

    # -- a genuine peft adapter ---------------------------------------------------------------------------------
    def peft_state(self) -> dict[str, torch.Tensor]:
        """The LoRA tensors under the names ``PeftModel.save_pretrained`` gives them (adapter name removed)."""
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.clip, adapter_name="default")
        return {PEFT_PREFIX + name: tensor.detach().to("cpu").contiguous() for name, tensor in state.items()}

    def export_adapter_files(self, directory: str | Path) -> Path | None:
        """Write the adapters as a peft adapter of the backbone's own model class (``adapter_config.json`` +
        ``adapter_model.safetensors`` in peft's layout) when the backbone is a Hugging Face ``CLIPModel``;
        ``PeftModel.from_pretrained(clip_model, directory)`` then loads it. Returns None (writes nothing) on
        backbones peft users cannot load into (open_clip: the split attention exists only inside rlptune)."""
        if self.backbone.family.name != "hf":
            return None
        directory = Path(directory)
        config = self.lora_config.to_dict()
        config["base_model_name_or_path"] = self.backbone.info.get("hf_source")
        config["target_modules"] = self.lora_config.target_modules
        config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
        io.write_safetensors(directory / "adapter_model.safetensors", self.peft_state(), {"format": "pt"})
        io.write_json(directory / "adapter_config.json", json.loads(json.dumps(config, default=str)))
        return directory

    # -- the same CLIP in another library ----------------------------------------------------------------------
    _LORA_KEY = re.compile(r"^clip\.(?P<module>.+)\.(?P<rest>(?:q_proj|k_proj|v_proj|out_proj)\.lora_[AB]\..+)$")

    def _by_block(self, names) -> dict[str, str] | None:
        """{``tower.block.rest``: name} for LoRA tensor names, or None when one names no known attention block."""
        out = {}
        for name in names:
            found = self._LORA_KEY.match(name)
            block = attention_block(found["module"]) if found else None
            if block is None:
                return None
            out[f"{block[0]}.{block[1]}.{found['rest']}"] = name
        return out

    def load_adapter_state(self, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
        """Load the LoRA tensors; tensors named after another library's modules of the same CLIP (an adapter
        trained on open_clip's ``micro-v2``, loaded on its Hugging Face export) are matched block by block."""
        own = {n for n, p in self.named_parameters() if p.requires_grad}
        if set(state) != own:
            theirs, ours = self._by_block(state), self._by_block(own)
            if theirs is not None and ours is not None and set(theirs) == set(ours):
                state = {ours[key]: state[name] for key, name in theirs.items()}
        super().load_adapter_state(state, source)

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
